"""A simulated GPU node: what a kubelet and the NVIDIA device plugin would do, and nothing more.

For the pods the real scheduler binds to its Node, the simulator
- allocates fake GPUs (the UUIDs the agent's fake NVML gives this node) and
  serves the allocation over a local kubelet PodResources socket, as the
  kubelet does as soon as a pod is admitted;
- marks the pod Running after a container start-up delay;
- confirms the deletion of a terminating pod (grace period 0), as KWOK does,
  and frees its GPUs.

No container runs and no GPU exists: this is the simulated part of the demo.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, watch
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


@dataclass
class NodeSimulator:
    """One simulated node; run it with :meth:`run` in an event loop."""

    node_name: str
    gpu_count: int
    socket_path: Path
    startup_seconds: float = 0.5
    _server: FakePodResourcesServer = field(init=False)
    _free: list[str] = field(init=False)
    _held: dict[PodKey, list[str]] = field(default_factory=dict, init=False)
    _running: set[PodKey] = field(default_factory=set, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._server = FakePodResourcesServer(self.socket_path).start()
        self._free = [fake_gpu_uuid(self.node_name, index) for index in range(self.gpu_count)]

    def running_gpus(self) -> dict[str, PodKey]:
        """GPU UUID -> the Running pod that holds it (the GPUs that can draw power)."""
        with self._lock:
            return {uuid: pod for pod, uuids in self._held.items() if pod in self._running for uuid in uuids}

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
        if key in self._held or (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            return
        wanted = gpus_requested(pod)
        with self._lock:
            if wanted > len(self._free):
                log.warning(
                    "node=%s pod=%s wants %d GPUs, %d free", self.node_name, key, wanted, len(self._free)
                )
                return
            uuids, self._free = self._free[:wanted], self._free[wanted:]
            self._held[key] = uuids
        # The kubelet reports the allocation as soon as the pod is admitted,
        # before any container starts: the agent can cap the GPU first.
        self._server.allocate(key, uuids)
        asyncio.get_running_loop().create_task(self._start(api, key))

    async def _start(self, api: client.CoreV1Api, key: PodKey) -> None:
        await asyncio.sleep(self.startup_seconds)
        if key not in self._held:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "status": {
                "phase": "Running",
                "startTime": now,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
            }
        }
        try:
            await api.patch_namespaced_pod_status(key.name, key.namespace, status)
        except ApiException as error:
            if error.status != 404:
                raise
            self._release(key)
            return
        with self._lock:
            if key in self._held:
                self._running.add(key)

    def _release(self, key: PodKey) -> None:
        with self._lock:
            uuids = self._held.pop(key, [])
            self._running.discard(key)
            self._free.extend(uuids)
        if uuids:
            self._server.release(key)
