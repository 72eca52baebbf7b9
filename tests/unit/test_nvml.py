"""The NVML adapters: the fake (GPUs, persistence, injected errors, MIG devices, a draw model) and the
real one's unit conversions and behaviour on a host without a driver (on the stand-in: test_real_nvml.py)."""

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
    constraints_from_milliwatts,
    fake_gpu_uuid,
    fake_mig_uuid,
    limit_from_milliwatts,
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
    with pytest.raises(NvmlError) as caught:
        nvml.set_power_limit_watts(uuid, 300)
    assert caught.value.kind is NvmlErrorKind.INVALID_ARGUMENT
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


# ---------------------------------------------------------------------------
# MIG devices of the fake


def test_mig_devices_in_the_state_file_are_on_their_parent_gpu(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    nvml = FakeNvml("node-a", FakeGpuSpec(3, GPU_MODELS["h100-sxm"]), state)
    whole, partitioned, lost = (g.uuid for g in nvml.gpus())
    _edit_state(state, 1, migDevices=["1g.10gb", "1g.10gb", "3g.40gb"])
    _edit_state(state, 2, migDevices=["7g.80gb"], lost=True)
    migs = [fake_mig_uuid("node-a", 1, i) for i in range(3)]
    assert len(set(migs)) == 3 and all(m.startswith("MIG-") and len(m) == 40 for m in migs)
    assert [nvml.physical_gpu(m) for m in migs] == [partitioned] * 3
    assert nvml.physical_gpu(whole) == whole
    assert nvml.physical_gpu(fake_mig_uuid("node-a", 2, 0)) is None  # its GPU is lost
    assert nvml.physical_gpu(lost) is None
    assert nvml.physical_gpu(fake_mig_uuid("node-b", 1, 0)) is None  # another node's
    assert nvml.physical_gpu("MIG-unknown") is None
    # The GPUs are still the three physical ones, limits on the parent; the partitioning persists.
    assert [g.uuid for g in nvml.gpus()] == [whole, partitioned]
    nvml.set_power_limit_watts(partitioned, 400)
    on_disk = json.loads(state.read_text())[1]
    assert on_disk["migDevices"] == ["1g.10gb", "1g.10gb", "3g.40gb"] and on_disk["limitWatts"] == 400
    again = FakeNvml("node-a", FakeGpuSpec(3, GPU_MODELS["h100-sxm"]), state)
    assert again.physical_gpu(migs[2]) == partitioned


def test_mig_devices_set_in_code_and_a_fault_on_resolving_them() -> None:
    nvml = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["a100-sxm"]))
    gpu = nvml.gpus()[1].uuid
    migs = nvml.set_mig_devices(gpu, ["3g.20gb", "3g.20gb"])
    assert migs == [fake_mig_uuid("n", 1, 0), fake_mig_uuid("n", 1, 1)]
    nvml.inject_error("mig", NvmlErrorKind.UNINITIALIZED, uuid=gpu, times=1)
    with pytest.raises(NvmlError) as caught:
        nvml.physical_gpu(migs[0])
    assert (caught.value.kind, caught.value.operation, caught.value.uuid) == (
        NvmlErrorKind.UNINITIALIZED,
        "mig",
        gpu,
    )
    assert nvml.physical_gpu(migs[0]) == gpu
    nvml.set_mig_devices(gpu, None)  # MIG mode off: the MIG devices are gone
    assert nvml.physical_gpu(migs[0]) is None


# ---------------------------------------------------------------------------
# The fake's draw: min(limit, load), idle without a load


def _write_load(path: Path, loads: dict[str, object]) -> None:
    tmp = path.with_suffix(".edit")
    tmp.write_text(json.dumps(loads))
    tmp.replace(path)


def test_a_fake_gpu_draws_its_load_up_to_its_limit_and_idles_without_one(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    nvml = FakeNvml("n", FakeGpuSpec(3, GPU_MODELS["h100-sxm"]), load_path=load)
    busy, light, idle = (g.uuid for g in nvml.gpus())
    assert nvml.power_usage_watts(busy) == 70.0  # no load file yet: idle power
    _write_load(load, {busy: 650, light: 123.5})
    nvml.set_power_limit_watts(busy, 400)
    assert [nvml.power_usage_watts(u) for u in (busy, light, idle)] == [400.0, 123.5, 70.0]
    nvml.set_power_limit_watts(busy, 700)
    assert nvml.power_usage_watts(busy) == 650.0  # uncapped, it draws what the workload asks


def test_the_load_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load = tmp_path / "load.json"
    _write_load(load, {})
    nvml = FakeNvml("n", FakeGpuSpec(2, GPU_MODELS["a100-pcie"]), load_path=load)
    first, second = (g.uuid for g in nvml.gpus())
    _write_load(load, {first: 200})
    assert nvml.power_usage_watts(first) == 200.0
    _write_load(load, {first: 150, second: 300})
    assert (nvml.power_usage_watts(first), nvml.power_usage_watts(second)) == (150.0, 250.0)
    load.write_text("{not json")
    assert nvml.power_usage_watts(first) == 150.0
    _write_load(load, {first: 90, "GPU-elsewhere": 100, second: -5})
    assert (nvml.power_usage_watts(first), nvml.power_usage_watts(second)) == (90.0, 40.0)
    warnings = [r.getMessage() for r in caplog.records if "event=fake_gpu_load_invalid" in r.getMessage()]
    assert len(warnings) == 2 and "GPU-elsewhere" in warnings[1] and second in warnings[1]
    load.unlink()  # no file: every GPU idles
    assert nvml.power_usage_watts(first) == 40.0


# ---------------------------------------------------------------------------
# The real adapter's units


@pytest.mark.parametrize(
    ("milliwatts", "watts"),
    [
        ((200_000, 700_000, 700_000), (200, 700, 700)),
        ((100_500, 399_500, 250_500), (101, 399, 250)),  # inward: every whole-watt cap fits NVML
        ((150_001, 250_999, 250_999), (151, 250, 250)),  # the default brought into the range
    ],
)
def test_constraints_in_milliwatts_become_whole_watts_nvml_accepts(
    milliwatts: tuple[int, int, int], watts: tuple[int, int, int]
) -> None:
    constraints = constraints_from_milliwatts(*milliwatts)
    assert (constraints.min_watts, constraints.max_watts, constraints.default_watts) == watts
    assert constraints.min_watts * 1000 >= milliwatts[0] and constraints.max_watts * 1000 <= milliwatts[1]


def test_a_limit_read_back_is_rounded_up_so_a_fraction_above_the_cap_is_corrected() -> None:
    assert [limit_from_milliwatts(mw) for mw in (450_000, 450_001, 450_400, 449_999)] == [450, 451, 451, 450]
