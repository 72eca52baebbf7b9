"""The NVML adapters: the fake (GPUs, persistence, injected errors) and the real one on a GPU-less host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpupower_agent.nvml import (
    GPU_MODELS,
    FakeGpuSpec,
    FakeNvml,
    InvalidFakeGpusError,
    NvmlError,
    NvmlErrorKind,
    RealNvml,
    fake_gpu_uuid,
    parse_fake_gpus,
)


def test_fake_gpu_uuids_are_deterministic_per_node_and_index() -> None:
    assert fake_gpu_uuid("node-a", 0) == fake_gpu_uuid("node-a", 0)
    uuids = {fake_gpu_uuid(node, i) for node in ("node-a", "node-b") for i in range(8)}
    assert len(uuids) == 16
    assert all(u.startswith("GPU-") and len(u) == 40 for u in uuids)
    nvml = FakeNvml("node-a", parse_fake_gpus("8:h100-sxm"))
    assert [g.uuid for g in nvml.gpus()] == [fake_gpu_uuid("node-a", i) for i in range(8)]


@pytest.mark.parametrize(
    ("value", "model", "low", "high", "default"),
    [("8:h100-sxm", "h100-sxm", 200, 700, 700), ("4:a100-pcie", "a100-pcie", 150, 250, 250)],
)
def test_fake_models_have_realistic_constraints(
    value: str, model: str, low: int, high: int, default: int
) -> None:
    spec = parse_fake_gpus(value)
    nvml = FakeNvml("n", spec)
    gpu = nvml.gpus()[0]
    assert (gpu.model, gpu.constraints.min_watts, gpu.constraints.max_watts) == (model, low, high)
    assert nvml.power_limit_watts(gpu.uuid) == default
    assert len(nvml.gpus()) == spec.count


@pytest.mark.parametrize(
    "value", ["8", "x:h100-sxm", "0:h100-sxm", "65:h100-sxm", "8:b200", "", "-1:a100-pcie"]
)
def test_bad_fake_gpus_values_name_the_flag(value: str) -> None:
    with pytest.raises(InvalidFakeGpusError, match="--fake-gpus"):
        parse_fake_gpus(value)


def test_fake_limits_survive_a_restart_through_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    first = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]), state)
    uuid = first.gpus()[1].uuid
    first.set_power_limit_watts(uuid, 420)
    on_disk = json.loads(state.read_text())
    assert on_disk[1] == {"uuid": uuid, "index": 1, "model": "h100-sxm", "limitWatts": 420}
    second = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]), state)
    assert second.power_limit_watts(uuid) == 420
    assert second.power_limit_watts(second.gpus()[0].uuid) == 700


@pytest.mark.parametrize("content", ["", "{", '{"uuid": 1}', '[{"uuid": "x", "limitWatts": "hot"}]'])
def test_an_unreadable_fake_state_file_means_factory_defaults(tmp_path: Path, content: str) -> None:
    state = tmp_path / "gpus.json"
    state.write_text(content)
    nvml = FakeNvml("n", FakeGpuSpec(1, GPU_MODELS["a100-pcie"]), state)
    assert nvml.power_limit_watts(nvml.gpus()[0].uuid) == 250


def test_the_fake_refuses_limits_outside_the_constraints_like_nvml() -> None:
    nvml = FakeNvml("n", FakeGpuSpec(1, GPU_MODELS["a100-pcie"]))
    uuid = nvml.gpus()[0].uuid
    with pytest.raises(NvmlError):
        nvml.set_power_limit_watts(uuid, 300)
    assert nvml.power_limit_watts(uuid) == 250


@pytest.mark.parametrize("kind", list(NvmlErrorKind))
def test_injected_errors_fail_the_given_number_of_calls(kind: NvmlErrorKind) -> None:
    nvml = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]))
    target, other = (g.uuid for g in nvml.gpus())
    nvml.inject_error("set", kind, uuid=target, times=2)
    for _ in range(2):
        with pytest.raises(NvmlError) as caught:
            nvml.set_power_limit_watts(target, 400)
        assert (caught.value.kind, caught.value.uuid, caught.value.operation) == (kind, target, "set")
    nvml.set_power_limit_watts(other, 400)  # other GPUs unaffected
    nvml.set_power_limit_watts(target, 400)  # third call succeeds
    assert nvml.power_limit_watts(target) == 400


def test_an_unknown_gpu_is_a_lost_gpu() -> None:
    nvml = FakeNvml("n", FakeGpuSpec(1, GPU_MODELS["h100-sxm"]))
    with pytest.raises(NvmlError) as caught:
        nvml.power_limit_watts("GPU-missing")
    assert caught.value.kind is NvmlErrorKind.GPU_LOST


def test_the_real_nvml_fails_with_an_nvml_error_on_a_host_without_the_driver() -> None:
    try:
        nvml = RealNvml()
    except NvmlError as error:
        assert error.operation == "init"
        return
    # A host with the driver: the adapter must at least list GPUs with sane constraints.
    for gpu in nvml.gpus():
        assert 0 < gpu.constraints.min_watts <= gpu.constraints.default_watts <= gpu.constraints.max_watts
    nvml.shutdown()


def _edit_state(path: Path, index: int, **changes: object) -> None:
    """Act on the fake hardware from outside, as a test or an administrator would (atomic replace)."""
    gpus = json.loads(path.read_text())
    gpus[index].update(changes)
    tmp = path.with_suffix(".edit")
    tmp.write_text(json.dumps(gpus))
    tmp.replace(path)


def test_faults_written_into_the_state_file_fail_calls_until_removed(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    nvml = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]), state)
    first, second = (g.uuid for g in nvml.gpus())
    _edit_state(state, 0, faults={"set": "no_permission", "get": "bogus"})
    with pytest.raises(NvmlError) as caught:
        nvml.set_power_limit_watts(first, 450)
    assert caught.value.kind is NvmlErrorKind.NO_PERMISSION
    assert nvml.power_limit_watts(first) == 700  # an unknown kind is ignored
    nvml.set_power_limit_watts(second, 450)  # the other GPU works, and the fault survives this write
    assert json.loads(state.read_text())[0]["faults"] == {"set": "no_permission"}
    _edit_state(state, 0, faults={})
    nvml.set_power_limit_watts(first, 450)
    assert nvml.power_limit_watts(first) == 450


def test_a_limit_changed_behind_the_fakes_back_is_what_it_reports(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    nvml = FakeNvml("n", FakeGpuSpec(1, GPU_MODELS["h100-sxm"]), state)
    _edit_state(state, 0, limitWatts=555)
    assert nvml.power_limit_watts(nvml.gpus()[0].uuid) == 555
