"""The PodResources client against real gRPC servers on a unix socket: whole, time-sliced and MIG GPUs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from gpupower_agent.cluster import PodKey
from gpupower_agent.deviceids import UnmappedDevice
from gpupower_agent.mapping import MappingError, PodRef
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml, NvmlErrorKind
from gpupower_agent.podresources import (
    FakePodResourcesServer,
    PodResourcesMapping,
    pod_resources_answers,
)
from gpupower_agent.podresources_pb import api_pb2, api_pb2_grpc


class KubeletLike(api_pb2_grpc.PodResourcesListerServicer):
    """What a kubelet answers on a busy node: several containers, other devices, CPUs, memory."""

    def List(  # the gRPC method name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        gpu = "nvidia.com/gpu"
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(
                    name="decode-0",
                    namespace="llm",
                    containers=[
                        api_pb2.ContainerResources(
                            name="engine",
                            devices=[
                                api_pb2.ContainerDevices(resource_name=gpu, device_ids=["GPU-a", "GPU-b"]),
                                api_pb2.ContainerDevices(resource_name="rdma/hca", device_ids=["mlx5_0"]),
                            ],
                            cpu_ids=[2, 3],
                        ),
                        # a sidecar sharing a GPU with its own container: the pod counts once
                        api_pb2.ContainerResources(
                            name="sidecar",
                            devices=[api_pb2.ContainerDevices(resource_name=gpu, device_ids=["GPU-b"])],
                        ),
                    ],
                ),
                api_pb2.PodResources(
                    name="shared",
                    namespace="llm",
                    containers=[
                        api_pb2.ContainerResources(
                            name="main",
                            devices=[api_pb2.ContainerDevices(resource_name=gpu, device_ids=["GPU-b"])],
                        )
                    ],
                ),
                api_pb2.PodResources(
                    name="cpu-only", namespace="web", containers=[api_pb2.ContainerResources()]
                ),
            ]
        )


@pytest.fixture
def kubelet_socket(tmp_path: Path) -> Iterator[Path]:
    socket_path = tmp_path / "kubelet.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(KubeletLike(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    yield socket_path
    server.stop(grace=None)


async def test_gpu_uuids_per_pod_come_from_list(kubelet_socket: Path) -> None:
    mapping = PodResourcesMapping(kubelet_socket)
    try:
        assignments = await mapping.assignments()
    finally:
        await mapping.close()
    decode, shared = PodRef(key=PodKey("llm", "decode-0")), PodRef(key=PodKey("llm", "shared"))
    assert {uuid: list(refs) for uuid, refs in assignments.items()} == {
        "GPU-a": [decode],
        "GPU-b": [decode, shared],
    }


async def test_auto_mode_probe_sees_a_serving_socket(kubelet_socket: Path, tmp_path: Path) -> None:
    assert await pod_resources_answers(kubelet_socket)
    assert not await pod_resources_answers(tmp_path / "absent.sock")


async def test_a_dead_socket_is_a_mapping_error_not_a_crash(tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    dead.touch()  # a stale socket file with nobody listening
    mapping = PodResourcesMapping(dead, timeout_seconds=0.5)
    try:
        with pytest.raises(MappingError, match="pod-resources"):
            await mapping.assignments()
    finally:
        await mapping.close()
    assert not await pod_resources_answers(dead, timeout_seconds=0.5)


async def test_the_fake_kubelet_serves_what_it_is_given(tmp_path: Path) -> None:
    with FakePodResourcesServer(tmp_path / "fake.sock") as server:
        server.allocate(PodKey("ns", "a"), ["GPU-1", "GPU-2"])
        server.allocate(PodKey("ns", "b"), ["GPU-2"])
        mapping = PodResourcesMapping(server.socket_path)
        try:
            first = await mapping.assignments()
            server.release(PodKey("ns", "a"))
            second = await mapping.assignments()
        finally:
            await mapping.close()
    a, b = PodRef(key=PodKey("ns", "a")), PodRef(key=PodKey("ns", "b"))
    assert {k: list(v) for k, v in first.items()} == {"GPU-1": [a], "GPU-2": [a, b]}
    assert {k: list(v) for k, v in second.items()} == {"GPU-2": [b]}
    assert server.list_calls == 2


def test_the_wire_format_matches_the_kubelet_field_numbers() -> None:
    """Field numbers from k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, checked on the encoded bytes."""
    message = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            api_pb2.PodResources(
                name="p",
                namespace="n",
                containers=[
                    api_pb2.ContainerResources(
                        name="c", devices=[api_pb2.ContainerDevices(resource_name="r", device_ids=["d"])]
                    )
                ],
            )
        ]
    )
    devices = b"\x0a\x01r" + b"\x12\x01d"  # resource_name = 1, device_ids = 2
    container = b"\x0a\x01c" + b"\x12" + bytes([len(devices)]) + devices  # name = 1, devices = 2
    pod = b"\x0a\x01p" + b"\x12\x01n" + b"\x1a" + bytes([len(container)]) + container  # containers = 3
    assert message.SerializeToString() == b"\x0a" + bytes([len(pod)]) + pod  # pod_resources = 1
    assert api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name == "v1.PodResourcesLister"


# ---------------------------------------------------------------------------
# Shared and partitioned GPUs, through a real gRPC server and the fake NVML's MIG devices


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[FakePodResourcesServer]:
    with FakePodResourcesServer(tmp_path / "kubelet.sock") as server:
        yield server


async def _assignments(mapping: PodResourcesMapping) -> dict[str, list[PodRef]]:
    try:
        return {uuid: list(refs) for uuid, refs in (await mapping.assignments()).items()}
    finally:
        await mapping.close()


def _ref(name: str) -> PodRef:
    return PodRef(key=PodKey("llm", name))


async def test_time_sliced_replicas_of_one_gpu_are_that_gpu_for_every_pod_on_it(
    kubelet: FakePodResourcesServer,
) -> None:
    nvml = FakeNvml("node", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]))
    gpu0, gpu1 = (g.uuid for g in nvml.gpus())
    kubelet.allocate(PodKey("llm", "a"), [f"{gpu0}::0", f"{gpu0}::3"])  # two replicas: one pod on one GPU
    kubelet.allocate(PodKey("llm", "b"), [f"{gpu0}::1"])
    kubelet.allocate(PodKey("llm", "c"), [f"{gpu1}::0"], resource="nvidia.com/gpu.shared")  # renameByDefault
    mapping = PodResourcesMapping(kubelet.socket_path, resolver=nvml)
    assert await _assignments(mapping) == {gpu0: [_ref("a"), _ref("b")], gpu1: [_ref("c")]}


async def test_mig_devices_are_their_parent_gpu_with_the_single_and_the_mixed_strategy(
    kubelet: FakePodResourcesServer,
) -> None:
    nvml = FakeNvml("node", FakeGpuSpec(3, GPU_MODELS["a100-sxm"]))
    whole, single, mixed = (g.uuid for g in nvml.gpus())
    single_migs = nvml.set_mig_devices(single, ["3g.20gb", "3g.20gb"])
    mixed_migs = nvml.set_mig_devices(mixed, ["1g.10gb", "1g.10gb", "2g.20gb"])
    kubelet.allocate(PodKey("llm", "whole"), [whole])
    kubelet.allocate(PodKey("llm", "s0"), [single_migs[0]])  # single strategy: nvidia.com/gpu
    kubelet.allocate(PodKey("llm", "s1"), [single_migs[1]])
    kubelet.allocate(PodKey("llm", "m0"), [mixed_migs[0]], resource="nvidia.com/mig-1g.10gb")
    kubelet.allocate(PodKey("llm", "m1"), [f"{mixed_migs[2]}::1"], resource="nvidia.com/mig-2g.20gb.shared")
    mapping = PodResourcesMapping(kubelet.socket_path, resolver=nvml)
    assert await _assignments(mapping) == {
        whole: [_ref("whole")],
        single: [_ref("s0"), _ref("s1")],
        mixed: [_ref("m0"), _ref("m1")],
    }


async def test_resource_names_are_configurable_with_shell_patterns(kubelet: FakePodResourcesServer) -> None:
    nvml = FakeNvml("node", FakeGpuSpec(2, GPU_MODELS["h100-sxm"]))
    gpu0, gpu1 = (g.uuid for g in nvml.gpus())
    kubelet.allocate(PodKey("llm", "a"), [gpu0], resource="example.com/accelerator")
    kubelet.allocate(PodKey("llm", "b"), [gpu1])  # nvidia.com/gpu, no longer a GPU resource here
    default = PodResourcesMapping(kubelet.socket_path, resolver=nvml)
    assert await _assignments(default) == {gpu1: [_ref("b")]}
    custom = PodResourcesMapping(kubelet.socket_path, resolver=nvml, resource_names=["example.com/acc*"])
    assert await _assignments(custom) == {gpu0: [_ref("a")]}


async def test_devices_on_no_gpu_of_the_node_are_reported_once_each_and_counted(
    kubelet: FakePodResourcesServer, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml("node", FakeGpuSpec(1, GPU_MODELS["h100-sxm"]))
    gpu = nvml.gpus()[0].uuid
    kubelet.allocate(PodKey("llm", "ok"), [f"{gpu}::0"])
    kubelet.allocate(PodKey("llm", "index"), ["0"])  # deviceIDStrategy: index
    kubelet.allocate(PodKey("llm", "gone"), ["MIG-0f0f0f0f-0000-0000-0000-000000000000"], container="c")
    kubelet.allocate(PodKey("llm", "elsewhere"), ["GPU-ffffffff-0000-0000-0000-000000000000"])
    counted: list[UnmappedDevice] = []
    mapping = PodResourcesMapping(kubelet.socket_path, resolver=nvml, on_unmapped=counted.append)
    try:
        for _ in range(3):
            assert {u: list(r) for u, r in (await mapping.assignments()).items()} == {gpu: [_ref("ok")]}
        kubelet.release(PodKey("llm", "index"))
        await mapping.assignments()
        kubelet.allocate(PodKey("llm", "index"), ["0"])  # back again: reported again
        await mapping.assignments()
    finally:
        await mapping.close()
    assert sorted((d.pod.name, d.container, d.resource, d.device_id) for d in counted) == [
        ("elsewhere", "main", "nvidia.com/gpu", "GPU-ffffffff-0000-0000-0000-000000000000"),
        ("gone", "c", "nvidia.com/gpu", "MIG-0f0f0f0f-0000-0000-0000-000000000000"),
        ("index", "main", "nvidia.com/gpu", "0"),
        ("index", "main", "nvidia.com/gpu", "0"),
    ]
    logged = [r.getMessage() for r in caplog.records if "event=device_unmapped" in r.getMessage()]
    assert len(logged) == 4
    assert any("pod=llm/index" in line and "deviceIDStrategy must be uuid" in line for line in logged)
    assert any("pod=llm/gone container=c" in line and "no MIG device" in line for line in logged)


async def test_nvml_failing_to_place_a_mig_device_is_a_mapping_error(kubelet: FakePodResourcesServer) -> None:
    nvml = FakeNvml("node", FakeGpuSpec(1, GPU_MODELS["h100-sxm"]))
    gpu = nvml.gpus()[0].uuid
    mig = nvml.set_mig_devices(gpu, ["1g.10gb"])[0]
    kubelet.allocate(PodKey("llm", "a"), [mig], resource="nvidia.com/mig-1g.10gb")
    nvml.inject_error("mig", NvmlErrorKind.UNINITIALIZED, uuid=gpu)
    mapping = PodResourcesMapping(kubelet.socket_path, resolver=nvml)
    try:
        with pytest.raises(MappingError, match=f"placing device {mig} of pod llm/a"):
            await mapping.assignments()
    finally:
        await mapping.close()


async def test_without_nvml_gpu_uuids_are_taken_as_they_are_and_mig_devices_are_reported(
    kubelet: FakePodResourcesServer,
) -> None:
    kubelet.allocate(PodKey("llm", "a"), ["GPU-1::2", "MIG-2"])
    counted: list[UnmappedDevice] = []
    mapping = PodResourcesMapping(kubelet.socket_path, on_unmapped=counted.append)
    assert await _assignments(mapping) == {"GPU-1": [_ref("a")]}
    assert [(d.device_id, d.reason) for d in counted] == [
        ("MIG-2", "a MIG device, and no NVML to find its GPU")
    ]
