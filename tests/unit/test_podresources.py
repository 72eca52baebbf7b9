"""The PodResources client against real gRPC servers on a unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from gpupower_agent.cluster import PodKey
from gpupower_agent.mapping import MappingError, PodRef
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
