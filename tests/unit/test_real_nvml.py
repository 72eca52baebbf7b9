"""The real NVML adapter (pynvml, nvidia-ml-py) on the stand-in ``libnvidia-ml.so.1`` (tests/nvmlstub).

pynvml loads ``CDLL("libnvidia-ml.so.1")``; this process loads the stand-in under that
name first, so pynvml's lookups, argument types and return codes are the real ones and
only the library behind them is simulated. What the GPUs hold is read from the
stand-in's state file.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpupower_agent.cgroups import CgroupMapping
from gpupower_agent.cluster import PodKey
from gpupower_agent.mapping import PodRef
from gpupower_agent.nvml import GPU_MODELS, NvmlError, NvmlErrorKind, RealNvml, fake_gpu_uuid
from gpupower_agent.podresources import FakePodResourcesServer, PodResourcesMapping
from tests.nvmlstub import StubGpu, StubMig, StubState, edit_state, library, read_state, write_state

MIG_A = "MIG-11111111-1111-5111-8111-111111111111"
MIG_B = "MIG-22222222-2222-5222-8222-222222222222"


class Stub:
    """The stand-in's state file for one test: three H100s, the second in MIG mode with two MIG devices."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.uuids = [fake_gpu_uuid("node", i) for i in range(3)]
        gpus = [StubGpu.of_model(uuid, GPU_MODELS["h100-sxm"]) for uuid in self.uuids]
        gpus[1].mig = "enabled"
        gpus[1].migs = [StubMig(MIG_A, "1g.10gb", [4101]), StubMig(MIG_B, "3g.40gb", [4102, 4103])]
        write_state(path, StubState(gpus))

    def edit(self, change: Callable[[StubState], None]) -> None:
        edit_state(self.path, change)

    def gpu(self, index: int) -> StubGpu:
        return read_state(self.path).gpus[index]


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stub]:
    ctypes.CDLL(str(library()))  # from now on this process's libnvidia-ml.so.1
    state = Stub(tmp_path / "nvml.state")
    monkeypatch.setenv("NVML_STUB_STATE", str(state.path))
    yield state
    import pynvml

    while True:  # close every NVML session the test left open
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            break


@pytest.fixture
def nvml(stub: Stub) -> Iterator[RealNvml]:
    adapter = RealNvml()
    yield adapter
    adapter.shutdown()


def test_the_gpus_their_constraints_and_limits_in_watts_milliwatts_only_on_the_far_side(
    stub: Stub, nvml: RealNvml
) -> None:
    gpus = nvml.gpus()
    assert [(g.uuid, g.index, g.model) for g in gpus] == [
        (uuid, i, "NVIDIA H100 80GB HBM3") for i, uuid in enumerate(stub.uuids)
    ]
    assert {
        (g.constraints.min_watts, g.constraints.max_watts, g.constraints.default_watts) for g in gpus
    } == {(200, 700, 700)}
    nvml.set_power_limit_watts(stub.uuids[2], 455)
    assert stub.gpu(2).limit_mw == 455_000
    assert nvml.power_limit_watts(stub.uuids[2]) == 455
    assert nvml.power_limit_watts(stub.uuids[0]) == 700


def test_limits_that_are_not_whole_watts_give_caps_nvml_accepts(stub: Stub, nvml: RealNvml) -> None:
    def odd_constraints(state: StubState) -> None:
        gpu = state.gpus[0]
        gpu.min_mw, gpu.max_mw, gpu.default_mw, gpu.limit_mw = 100_500, 399_500, 250_500, 250_500

    stub.edit(odd_constraints)
    constraints = nvml.gpus()[0].constraints
    assert (constraints.min_watts, constraints.max_watts, constraints.default_watts) == (101, 399, 250)
    for watts in (constraints.min_watts, constraints.max_watts, constraints.default_watts):
        nvml.set_power_limit_watts(stub.uuids[0], watts)  # NVML refuses none of them
        assert stub.gpu(0).limit_mw == watts * 1000


def test_a_limit_a_fraction_of_a_watt_above_a_cap_reads_above_it(stub: Stub, nvml: RealNvml) -> None:
    stub.edit(lambda state: setattr(state.gpus[0], "limit_mw", 450_400))  # set behind the agent's back
    assert nvml.power_limit_watts(stub.uuids[0]) == 451  # so a 450 W cap is set again, exactly


def test_a_limit_outside_the_constraints_is_refused_as_invalid_argument(stub: Stub, nvml: RealNvml) -> None:
    for watts in (199, 701):
        with pytest.raises(NvmlError) as caught:
            nvml.set_power_limit_watts(stub.uuids[0], watts)
        assert (caught.value.kind, caught.value.operation) == (NvmlErrorKind.INVALID_ARGUMENT, "set")
    assert stub.gpu(0).limit_mw == 700_000


CALLS: dict[str, Callable[[RealNvml, str], object]] = {
    "get": lambda nvml, uuid: nvml.power_limit_watts(uuid),
    "set": lambda nvml, uuid: nvml.set_power_limit_watts(uuid, 400),
    "usage": lambda nvml, uuid: nvml.power_usage_watts(uuid),
    "processes": lambda nvml, uuid: nvml.running_pids(uuid),
}


@pytest.mark.parametrize("operation", sorted(CALLS))
@pytest.mark.parametrize(
    "kind",
    [
        NvmlErrorKind.NO_PERMISSION,
        NvmlErrorKind.NOT_SUPPORTED,
        NvmlErrorKind.GPU_LOST,
        NvmlErrorKind.UNINITIALIZED,
        NvmlErrorKind.INVALID_ARGUMENT,
        NvmlErrorKind.OTHER,
    ],
)
def test_each_nvml_return_code_is_an_error_of_its_kind_on_its_gpu_only(
    stub: Stub, nvml: RealNvml, operation: str, kind: NvmlErrorKind
) -> None:
    stub.edit(lambda state: state.gpus[2].faults.update({operation: kind.value}))
    with pytest.raises(NvmlError) as caught:
        CALLS[operation](nvml, stub.uuids[2])
    assert (caught.value.kind, caught.value.operation, caught.value.uuid) == (kind, operation, stub.uuids[2])
    CALLS[operation](nvml, stub.uuids[0])  # the other GPUs answer
    stub.edit(lambda state: state.gpus[2].faults.clear())
    CALLS[operation](nvml, stub.uuids[2])


def test_a_gpu_that_stops_answering_the_scan_is_left_out_and_said_so_once(
    stub: Stub, nvml: RealNvml, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gpupower_agent.nvml")
    stub.edit(lambda state: state.gpus[1].faults.update({"constraints": "not_supported"}))
    for _ in range(3):
        assert [g.uuid for g in nvml.gpus()] == [stub.uuids[0], stub.uuids[2]]
    stub.edit(lambda state: state.gpus[1].faults.clear())
    assert [g.uuid for g in nvml.gpus()] == stub.uuids
    lines = [r.getMessage() for r in caplog.records]
    assert sum("event=gpu_unanswered index=1" in line and "not_supported" in line for line in lines) == 1
    assert sum("event=gpu_answers_again index=1" in line for line in lines) == 1


def test_a_lost_gpu_leaves_the_scan_and_every_call_on_it_fails_as_lost(stub: Stub, nvml: RealNvml) -> None:
    stub.edit(lambda state: setattr(state.gpus[0], "lost", True))
    with pytest.raises(NvmlError) as caught:
        nvml.power_limit_watts(stub.uuids[0])  # its handle from the last scan
    assert caught.value.kind is NvmlErrorKind.GPU_LOST
    assert [g.uuid for g in nvml.gpus()] == stub.uuids[1:]
    stub.edit(lambda state: setattr(state.gpus[0], "lost", False))
    assert [g.uuid for g in nvml.gpus()] == stub.uuids
    nvml.set_power_limit_watts(stub.uuids[0], 300)
    assert stub.gpu(0).limit_mw == 300_000


def test_a_driver_reload_is_followed_once_nvml_initialises_again(stub: Stub, nvml: RealNvml) -> None:
    def reload(state: StubState) -> None:
        state.generation += 1
        state.init_failures = 2

    stub.edit(reload)
    with pytest.raises(NvmlError) as caught:
        nvml.power_limit_watts(stub.uuids[0])  # the old session is gone
    assert caught.value.kind is NvmlErrorKind.UNINITIALIZED
    for _ in range(2):  # the driver is not back yet
        with pytest.raises(NvmlError) as caught:
            nvml.gpus()
        assert (caught.value.kind, caught.value.operation) == (NvmlErrorKind.DRIVER_NOT_LOADED, "scan")
    assert [g.uuid for g in nvml.gpus()] == stub.uuids
    nvml.set_power_limit_watts(stub.uuids[0], 333)
    assert (stub.gpu(0).limit_mw, read_state(stub.path).init_failures) == (333_000, 0)


def test_an_init_that_fails_is_an_init_error_and_the_next_one_may_succeed(stub: Stub) -> None:
    stub.edit(lambda state: setattr(state, "init_failures", 1))
    with pytest.raises(NvmlError) as caught:
        RealNvml()
    assert (caught.value.kind, caught.value.operation) == (NvmlErrorKind.DRIVER_NOT_LOADED, "init")
    nvml = RealNvml()
    try:
        assert len(nvml.gpus()) == 3
    finally:
        nvml.shutdown()


def test_power_usage_is_the_load_held_to_the_limit_and_idle_without_a_load(
    stub: Stub, nvml: RealNvml
) -> None:
    assert nvml.power_usage_watts(stub.uuids[0]) == 70.0
    stub.edit(lambda state: setattr(state.gpus[0], "load_mw", 612_345))
    assert nvml.power_usage_watts(stub.uuids[0]) == 612.345
    nvml.set_power_limit_watts(stub.uuids[0], 400)
    assert nvml.power_usage_watts(stub.uuids[0]) == 400.0


def test_mig_devices_are_placed_on_their_parent_gpu(stub: Stub, nvml: RealNvml) -> None:
    nvml.gpus()
    assert nvml.physical_gpu(MIG_A) == stub.uuids[1]
    assert nvml.physical_gpu(MIG_B) == stub.uuids[1]
    assert nvml.physical_gpu(stub.uuids[2]) == stub.uuids[2]
    assert nvml.physical_gpu("MIG-33333333-3333-5333-8333-333333333333") is None
    assert nvml.physical_gpu("GPU-not-here") is None
    stub.edit(lambda state: state.gpus[0].migs.append(StubMig("MIG-on-a-gpu-not-in-mig-mode", "1g.10gb")))
    assert nvml.physical_gpu("MIG-on-a-gpu-not-in-mig-mode") is None


def test_nvml_failing_to_place_a_mig_device_is_an_error_not_an_answer(stub: Stub, nvml: RealNvml) -> None:
    nvml.gpus()
    stub.edit(lambda state: state.gpus[1].faults.update({"mig": "uninitialized"}))
    with pytest.raises(NvmlError) as caught:
        nvml.physical_gpu(MIG_A)
    assert (caught.value.kind, caught.value.operation) == (NvmlErrorKind.UNINITIALIZED, "mig")
    stub.edit(lambda state: state.gpus[1].faults.clear())
    assert nvml.physical_gpu(MIG_A) == stub.uuids[1]


def test_processes_of_a_gpu_in_mig_mode_are_those_of_all_its_mig_devices(stub: Stub, nvml: RealNvml) -> None:
    stub.edit(lambda state: setattr(state.gpus[0], "pids", [7, 8]))
    assert nvml.running_pids(stub.uuids[0]) == [7, 8]
    assert nvml.running_pids(stub.uuids[1]) == [4101, 4102, 4103]
    assert nvml.running_pids(stub.uuids[2]) == []
    # Where NVML refuses the aggregate, each MIG device is asked; a GPU without MIG has no such way.
    for index in (0, 1):
        stub.edit(lambda state, index=index: state.gpus[index].faults.update({"processes": "no_permission"}))
    assert nvml.running_pids(stub.uuids[1]) == [4101, 4102, 4103]
    with pytest.raises(NvmlError) as caught:
        nvml.running_pids(stub.uuids[0])
    assert caught.value.kind is NvmlErrorKind.NO_PERMISSION


async def test_the_pod_resources_mapping_places_mig_and_time_sliced_devices_through_pynvml(
    stub: Stub, nvml: RealNvml, tmp_path: Path
) -> None:
    nvml.gpus()
    with FakePodResourcesServer(tmp_path / "kubelet.sock") as kubelet:
        kubelet.allocate(PodKey("llm", "whole"), [stub.uuids[0]])
        kubelet.allocate(PodKey("llm", "single"), [MIG_A])
        kubelet.allocate(PodKey("llm", "mixed"), [f"{MIG_B}::2"], resource="nvidia.com/mig-3g.40gb")
        kubelet.allocate(PodKey("llm", "sliced"), [f"{stub.uuids[2]}::0"], resource="nvidia.com/gpu.shared")
        mapping = PodResourcesMapping(kubelet.socket_path, resolver=nvml)
        try:
            assignments = {uuid: list(refs) for uuid, refs in (await mapping.assignments()).items()}
        finally:
            await mapping.close()

    def ref(name: str) -> PodRef:
        return PodRef(key=PodKey("llm", name))

    assert assignments == {
        stub.uuids[0]: [ref("whole")],
        stub.uuids[1]: [ref("single"), ref("mixed")],
        stub.uuids[2]: [ref("sliced")],
    }


async def test_the_cgroup_mapping_puts_pods_on_mig_devices_on_their_parent_gpu(
    stub: Stub, nvml: RealNvml, tmp_path: Path
) -> None:
    uids = {4101: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", 4102: "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"}
    for pid, uid in {**uids, 4103: uids[4102]}.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/0123abcd\n")
    assignments = await CgroupMapping(nvml, tmp_path).assignments()
    assert assignments == {
        stub.uuids[0]: [],
        stub.uuids[1]: [PodRef(uid=uids[4101]), PodRef(uid=uids[4102])],
        stub.uuids[2]: [],
    }
