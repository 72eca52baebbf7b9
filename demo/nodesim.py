"""A simulated GPU node: what a kubelet and the NVIDIA device plugin would do, in their order and with delays.

For the pods the real scheduler binds to its Node, the simulator does, like a
kubelet, one step at a time, each a separate status change:

1. ``admit_seconds`` after it first sees the pod bound: admits it and allocates
   its GPUs (the UUIDs the agent's fake NVML gives this node), served over a
   local kubelet PodResources socket; the pod is ``Pending`` with its containers
   ``ContainerCreating``;
2. ``start_seconds`` later: starts the containers; the pod is ``Running``,
   ``ContainersReady``;
3. from then on, evaluates the pod's ``readinessGates`` as a kubelet does:
   ``Ready`` is True only while the containers are ready and every gate's
   condition is True (a condition set by someone else, e.g. the gpupower agent's
   ``gpupower.dev/PowerCapped``, is kept: status is patched by strategic merge,
   one condition at a time).

It confirms the deletion of a terminating pod (grace period 0), as KWOK does, and
frees its GPUs. No container runs and no GPU exists: this is the simulated part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_agent.cluster import PodKey
from gpupower_agent.nvml import fake_gpu_uuid
from gpupower_agent.podresources import FakePodResourcesServer

GPU_RESOURCE = "nvidia.com/gpu"
log = logging.getLogger("gpupower.demo.node")


def gpus_requested(pod: dict[str, Any]) -> int:
    """GPUs a pod asks for: the sum of its containers' ``nvidia.com/gpu`` limits."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU_RESOURCE, 0))
    return total


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: bool, now: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now}


def readiness_gates_pass(pod: dict[str, Any]) -> bool:
    """Whether every readiness gate's condition is True (a pod without gates passes)."""
    gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or []]
    conditions = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return all(conditions.get(gate) == "True" for gate in gates)


def _ready(pod: dict[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


@dataclass(frozen=True)
class Allocation:
    """A pod's GPUs and when the simulated kubelet allocated them (``time.monotonic()``)."""

    gpu_uuids: tuple[str, ...]
    allocated_at: float


@dataclass(frozen=True)
class Steps:
    """When the simulated kubelet took each step for a pod (``time.monotonic()``; None: not yet)."""

    allocated_at: float | None = None
    started_at: float | None = None
    ready_at: float | None = None


@dataclass
class NodeSimulator:
    """One simulated node; run it with :meth:`run` in an event loop."""

    node_name: str
    gpu_count: int
    socket_path: Path
    admit_seconds: float = 0.3
    start_seconds: float = 0.5
    _server: FakePodResourcesServer = field(init=False)
    _free: list[str] = field(init=False)
    _held: dict[PodKey, Allocation] = field(default_factory=dict, init=False)
    _seen: set[PodKey] = field(default_factory=set, init=False)
    _running: set[PodKey] = field(default_factory=set, init=False)
    _steps: dict[PodKey, Steps] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._server = FakePodResourcesServer(self.socket_path).start()
        self._free = [fake_gpu_uuid(self.node_name, index) for index in range(self.gpu_count)]

    def running_gpus(self) -> dict[str, PodKey]:
        """GPU UUID -> the Running pod that holds it (the GPUs that can draw power)."""
        with self._lock:
            return {
                uuid: pod
                for pod, held in self._held.items()
                if pod in self._running
                for uuid in held.gpu_uuids
            }

    def allocations(self) -> dict[PodKey, Allocation]:
        """Every pod holding GPUs now, with when they were allocated."""
        with self._lock:
            return dict(self._held)

    def steps(self) -> dict[PodKey, Steps]:
        """When each pod seen so far was allocated its GPUs, started and turned Ready."""
        with self._lock:
            return dict(self._steps)

    def _step(self, key: PodKey, **when: float) -> None:
        with self._lock:
            before = self._steps.get(key, Steps())
            self._steps[key] = replace(
                before, **{k: v for k, v in when.items() if getattr(before, k) is None}
            )

    def stop(self) -> None:
        self._server.stop()

    async def run(self, api: client.CoreV1Api, stop: asyncio.Event) -> None:
        """List, then watch the pods bound to this node until ``stop`` is set; relist after any error."""
        selector = f"spec.nodeName={self.node_name}"
        while not stop.is_set():
            try:
                listing = await api.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    await self._handle(api, api.api_client.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(
                    api.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=30,
                )
                async with asyncio.timeout(35):
                    async for event in stream:
                        if stop.is_set():
                            return
                        pod = event["raw_object"]
                        if event["type"] == "DELETED":
                            self._release(PodKey(pod["metadata"]["namespace"], pod["metadata"]["name"]))
                        elif event["type"] in {"ADDED", "MODIFIED"}:
                            await self._handle(api, pod)
            except (ApiException, TimeoutError, OSError) as error:
                log.info("node=%s watch restarted: %s", self.node_name, error)
                await asyncio.sleep(0.2)

    async def _handle(self, api: client.CoreV1Api, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = PodKey(meta["namespace"], meta["name"])
        if meta.get("deletionTimestamp"):
            self._release(key)
            try:
                await api.delete_namespaced_pod(key.name, key.namespace, grace_period_seconds=0)
            except ApiException as error:
                if error.status != 404:
                    raise
            return
        if key in self._running:
            await self._evaluate_readiness(api, key, pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if key in self._seen or phase not in (None, "Pending"):
            return
        self._seen.add(key)
        asyncio.get_running_loop().create_task(self._admit(api, key, gpus_requested(pod)))

    async def _patch_status(self, api: client.CoreV1Api, key: PodKey, status: dict[str, Any]) -> bool:
        """Patch the pod's status (strategic merge: other writers' conditions stay); False when it is gone."""
        try:
            await api.patch_namespaced_pod_status(key.name, key.namespace, {"status": status})
        except ApiException as error:
            if error.status != 404:
                raise
            self._release(key)
            return False
        return True

    async def _admit(self, api: client.CoreV1Api, key: PodKey, wanted: int) -> None:
        await asyncio.sleep(self.admit_seconds)
        with self._lock:
            if wanted > len(self._free):
                log.warning(
                    "node=%s pod=%s wants %d GPUs, %d free", self.node_name, key, wanted, len(self._free)
                )
                return
            uuids, self._free = self._free[:wanted], self._free[wanted:]
            self._held[key] = Allocation(tuple(uuids), time.monotonic())
            self._steps[key] = Steps(allocated_at=self._held[key].allocated_at)
        # The kubelet allocates the devices when it admits the pod, before any container starts.
        self._server.allocate(key, uuids)
        now = _now()
        admitted = await self._patch_status(
            api,
            key,
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "conditions": [
                    _condition("PodScheduled", True, now),
                    _condition("Initialized", True, now),
                    _condition("ContainersReady", False, now),
                    _condition("Ready", False, now),
                ],
                "containerStatuses": [
                    {
                        "name": "main",
                        "image": "registry.invalid/simulated:1",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
        )
        if admitted:
            asyncio.get_running_loop().create_task(self._start(api, key))

    async def _start(self, api: client.CoreV1Api, key: PodKey) -> None:
        await asyncio.sleep(self.start_seconds)
        if key not in self._held:
            return
        try:
            pod = api.api_client.sanitize_for_serialization(
                await api.read_namespaced_pod(key.name, key.namespace)
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self._release(key)
            return
        now = _now()
        ready = readiness_gates_pass(pod)
        started = await self._patch_status(
            api,
            key,
            {
                "phase": "Running",
                "startTime": now,
                "podIP": "127.0.0.1",
                "conditions": [
                    _condition("ContainersReady", True, now),
                    _condition("Ready", ready, now),
                ],
                "containerStatuses": [
                    {
                        "name": "main",
                        "image": "registry.invalid/simulated:1",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
        )
        if started:
            with self._lock:
                if key in self._held:
                    self._running.add(key)
            at = time.monotonic()
            self._step(key, started_at=at, **({"ready_at": at} if ready else {}))

    async def _evaluate_readiness(self, api: client.CoreV1Api, key: PodKey, pod: dict[str, Any]) -> None:
        """Ready follows the containers (ready since started) and every readiness gate."""
        ready = "True" if readiness_gates_pass(pod) else "False"
        if _ready(pod) != ready:
            patched = await self._patch_status(
                api, key, {"conditions": [_condition("Ready", ready == "True", _now())]}
            )
            if patched and ready == "True":
                self._step(key, ready_at=time.monotonic())

    def _release(self, key: PodKey) -> None:
        with self._lock:
            held = self._held.pop(key, None)
            self._running.discard(key)
            self._seen.discard(key)
            if held is not None:
                self._free.extend(held.gpu_uuids)
        if held is not None:
            self._server.release(key)


@contextmanager
def running_simulators(kubeconfig: Path, simulators: Sequence[NodeSimulator]) -> Iterator[None]:
    """Run ``simulators`` in a background event loop, as ``kubeconfig``'s user, until the block ends."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run_all() -> None:
        await config.load_kube_config(config_file=str(kubeconfig))
        async with client.ApiClient() as api_client:
            api = client.CoreV1Api(api_client)
            watches = [asyncio.create_task(simulator.run(api, stop)) for simulator in simulators]
            await stop.wait()
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run_all(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        for simulator in simulators:
            simulator.stop()
