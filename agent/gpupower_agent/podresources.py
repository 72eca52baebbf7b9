"""GPU-to-pod mapping from the kubelet PodResources v1 API, and a fake kubelet server speaking it.

The kubelet serves ``List`` on a unix socket (by default
``/var/lib/kubelet/pod-resources/kubelet.sock``). Which of a container's resources are
GPUs is configurable (``--gpu-resource-names``); what their device ids mean (whole GPUs,
time-slicing replicas, MIG devices) is in :mod:`gpupower_agent.deviceids`. The kubelet
knows a pod's GPUs as soon as they are allocated, before the workload starts, so the
agent can cap a GPU before it draws full power.

The fake server lives here (not in tests) because the demo's node simulator uses it too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gpupower_agent.cluster import DEFAULT_GPU_RESOURCE_NAMES, PodKey, is_gpu_resource
from gpupower_agent.deviceids import DeviceResolver, UnmappedDevice, placement
from gpupower_agent.mapping import Assignments, MappingError, PodRef
from gpupower_agent.nvml import NvmlError
from gpupower_agent.podresources_pb import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ContainerGpus:
    """Device ids of one GPU resource allocated to one container of a pod."""

    pod: PodKey
    container: str
    device_ids: tuple[str, ...]
    resource_name: str = GPU_RESOURCE


@dataclass(frozen=True)
class DeviceAssignments:
    """What one ``List`` says: GPU UUID -> pods on it, and the GPU devices that are on no GPU here."""

    gpus: dict[str, list[PodRef]]
    unmapped: tuple[UnmappedDevice, ...] = field(default=())


def gpu_assignments(
    response: api_pb2.ListPodResourcesResponse,
    resource_names: Sequence[str] = DEFAULT_GPU_RESOURCE_NAMES,
    resolver: DeviceResolver | None = None,
) -> DeviceAssignments:
    """Physical GPU UUID -> pods it is allocated to (each pod once per GPU), from a ``List`` response.

    Raises :class:`MappingError` when NVML cannot place a device: the agent then keeps the
    last mapping rather than take a pod off its GPU.
    """
    gpus: dict[str, list[PodRef]] = {}
    unmapped: list[UnmappedDevice] = []
    for pod in response.pod_resources:
        key = PodKey(pod.namespace, pod.name)
        ref = PodRef(key=key)
        for container in pod.containers:
            for devices in container.devices:
                if not is_gpu_resource(devices.resource_name, resource_names):
                    continue
                for device_id in devices.device_ids:
                    try:
                        uuid, reason = placement(device_id, resolver)
                    except NvmlError as error:
                        raise MappingError(
                            "pod-resources", f"placing device {device_id} of pod {key}: {error}"
                        ) from error
                    if uuid is None:
                        unmapped.append(
                            UnmappedDevice(key, container.name, devices.resource_name, device_id, reason)
                        )
                        continue
                    refs = gpus.setdefault(uuid, [])
                    if ref not in refs:
                        refs.append(ref)
    return DeviceAssignments(gpus, tuple(unmapped))


class PodResourcesMapping:
    """Pods per physical GPU from the kubelet's PodResources ``List``, over its unix socket.

    ``resolver`` (the agent's NVML) places MIG devices on their GPUs and tells GPUs of this
    node from others; without it GPU UUIDs are taken as they are. A GPU device that is on no
    GPU here is logged once (until it goes away) and passed to ``on_unmapped`` to be counted.
    """

    def __init__(
        self,
        socket_path: Path,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        *,
        resolver: DeviceResolver | None = None,
        resource_names: Sequence[str] = DEFAULT_GPU_RESOURCE_NAMES,
        on_unmapped: Callable[[UnmappedDevice], None] | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._timeout_seconds = timeout_seconds
        self._resolver = resolver
        self._resource_names = tuple(resource_names)
        self._on_unmapped = on_unmapped
        self._reported: set[UnmappedDevice] = set()
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
        result = gpu_assignments(await self.list(), self._resource_names, self._resolver)
        self._report(result.unmapped)
        return result.gpus

    def _report(self, unmapped: Iterable[UnmappedDevice]) -> None:
        current = set(unmapped)
        for device in sorted(current - self._reported, key=lambda d: (str(d.pod), d.container, d.device_id)):
            log.warning(
                "event=device_unmapped pod=%s container=%s resource=%s device=%s reason=%r",
                device.pod,
                device.container,
                device.resource,
                device.device_id,
                device.reason,
            )
            if self._on_unmapped is not None:
                self._on_unmapped(device)
        self._reported = current

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

    def allocate(
        self,
        pod: PodKey,
        device_ids: Iterable[str],
        container: str = "main",
        resource: str = GPU_RESOURCE,
    ) -> None:
        """Give ``pod``'s ``container`` these devices of ``resource`` (replacing what that container had)."""
        with self._lock:
            containers = [c for c in self._allocations.get(pod, []) if c.container != container]
            containers.append(ContainerGpus(pod, container, tuple(device_ids), resource))
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
                                    resource_name=c.resource_name, device_ids=list(c.device_ids)
                                )
                            ],
                        )
                        for c in containers
                    ],
                )
                for pod, containers in self._allocations.items()
            ]
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)
