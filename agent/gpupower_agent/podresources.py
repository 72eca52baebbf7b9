"""GPU-to-pod mapping from the kubelet PodResources v1 API, and a fake kubelet server speaking it.

The kubelet serves ``List`` on a unix socket (by default
``/var/lib/kubelet/pod-resources/kubelet.sock``). Device ids of resource
``nvidia.com/gpu`` are GPU UUIDs with the NVIDIA device plugin's default
settings. The kubelet knows a pod's GPUs as soon as they are allocated, before
the workload starts, so the agent can cap a GPU before it draws full power.

The fake server lives here (not in tests) because the demo's node simulator uses it too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from gpupower_agent.cluster import PodKey
from gpupower_agent.mapping import Assignments, MappingError, PodRef
from gpupower_agent.podresources_pb import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ContainerGpus:
    """GPU UUIDs allocated to one container of a pod."""

    pod: PodKey
    container: str
    gpu_uuids: tuple[str, ...]


def gpu_assignments(response: api_pb2.ListPodResourcesResponse) -> dict[str, list[PodRef]]:
    """GPU UUID -> pods it is allocated to, from a ``List`` response (each pod once per GPU)."""
    result: dict[str, list[PodRef]] = {}
    for pod in response.pod_resources:
        ref = PodRef(key=PodKey(pod.namespace, pod.name))
        for container in pod.containers:
            for devices in container.devices:
                if devices.resource_name != GPU_RESOURCE:
                    continue
                for uuid in devices.device_ids:
                    refs = result.setdefault(uuid, [])
                    if ref not in refs:
                        refs.append(ref)
    return result


class PodResourcesMapping:
    """Pods per GPU from the kubelet's PodResources ``List``, over its unix socket."""

    def __init__(self, socket_path: Path, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._socket_path = socket_path
        self._timeout_seconds = timeout_seconds
        self._channel = grpc.aio.insecure_channel(f"unix://{socket_path}")
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def source(self) -> str:
        return "pod-resources"

    async def list(self) -> api_pb2.ListPodResourcesResponse:
        try:
            response: api_pb2.ListPodResourcesResponse = await self._stub.List(
                api_pb2.ListPodResourcesRequest(), timeout=self._timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            raise MappingError(
                self.source, f"List on {self._socket_path}: {error.code().name} {error.details()}"
            ) from error
        return response

    async def assignments(self) -> Assignments:
        return gpu_assignments(await self.list())

    async def close(self) -> None:
        await self._channel.close()


async def pod_resources_answers(socket_path: Path, timeout_seconds: float = 1.0) -> bool:
    """Whether a PodResources server answers ``List`` on ``socket_path`` (for ``--gpu-mapping auto``)."""
    if not socket_path.exists():
        return False
    mapping = PodResourcesMapping(socket_path, timeout_seconds)
    try:
        await mapping.list()
    except MappingError:
        return False
    finally:
        await mapping.close()
    return True


# ---------------------------------------------------------------------------
# The fake kubelet side


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, server: FakePodResourcesServer) -> None:
        self._server = server

    def List(  # the gRPC method name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        return self._server.response()


class FakePodResourcesServer:
    """A kubelet PodResources v1 server on a unix socket, serving the allocations it is given."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._allocations: dict[PodKey, list[ContainerGpus]] = {}
        self.list_calls = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), self._server)  # type: ignore[no-untyped-call]
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        self._server.add_insecure_port(f"unix://{socket_path}")

    def start(self) -> FakePodResourcesServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> FakePodResourcesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def allocate(self, pod: PodKey, gpu_uuids: Iterable[str], container: str = "main") -> None:
        """Give ``pod``'s ``container`` these GPUs (replacing what that container had)."""
        with self._lock:
            containers = [c for c in self._allocations.get(pod, []) if c.container != container]
            containers.append(ContainerGpus(pod, container, tuple(gpu_uuids)))
            self._allocations[pod] = containers

    def release(self, pod: PodKey) -> None:
        with self._lock:
            self._allocations.pop(pod, None)

    def set_allocations(self, allocations: Mapping[PodKey, Iterable[str]]) -> None:
        with self._lock:
            self._allocations = {
                pod: [ContainerGpus(pod, "main", tuple(uuids))] for pod, uuids in allocations.items()
            }

    def response(self) -> api_pb2.ListPodResourcesResponse:
        with self._lock:
            self.list_calls += 1
            pods = [
                api_pb2.PodResources(
                    name=pod.name,
                    namespace=pod.namespace,
                    containers=[
                        api_pb2.ContainerResources(
                            name=c.container,
                            devices=[
                                api_pb2.ContainerDevices(
                                    resource_name=GPU_RESOURCE, device_ids=list(c.gpu_uuids)
                                )
                            ],
                        )
                        for c in containers
                    ],
                )
                for pod, containers in self._allocations.items()
            ]
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)
