"""Which pods use which GPU: one interface, two sources (PodResources, or NVML processes + cgroups)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gpupower_agent.cluster import PodKey, PodView


class MappingMode(StrEnum):
    AUTO = "auto"
    POD_RESOURCES = "pod-resources"
    CGROUP = "cgroup"


class MappingError(Exception):
    """The GPU-to-pod mapping could not be read this time (the agent keeps the last one)."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        super().__init__(f"gpu mapping via {source} failed: {detail}")


@dataclass(frozen=True)
class PodRef:
    """A pod as a mapping source names it: PodResources knows namespace/name, cgroups know the UID."""

    key: PodKey | None = None
    uid: str | None = None


Assignments = Mapping[str, Collection[PodRef]]


class GpuMapping(Protocol):
    @property
    def source(self) -> str: ...

    async def assignments(self) -> Assignments:
        """GPU UUID -> the pods using it; raise :class:`MappingError` when it cannot be read."""
        ...

    async def close(self) -> None: ...


def resolve(assignments: Assignments, pods: Iterable[PodView]) -> dict[str, tuple[PodKey, ...]]:
    """GPU UUID -> keys of known pods on it; references to pods the agent does not know are dropped."""
    pods = list(pods)
    by_key = {pod.key for pod in pods}
    by_uid = {pod.uid: pod.key for pod in pods if pod.uid}
    resolved: dict[str, tuple[PodKey, ...]] = {}
    for uuid, refs in assignments.items():
        keys: dict[PodKey, None] = {}
        for ref in refs:
            key = ref.key if ref.key in by_key else by_uid.get(ref.uid or "")
            if key is not None:
                keys[key] = None
        resolved[uuid] = tuple(keys)
    return resolved


def unseen_holders(assignments: Assignments, pods: Iterable[PodView]) -> dict[str, int]:
    """GPU UUID -> how many pods on it the agent does not know (another namespace, or not watched yet)."""
    pods = list(pods)
    keys = {pod.key for pod in pods}
    uids = {pod.uid for pod in pods if pod.uid}
    unseen: dict[str, int] = {}
    for uuid, refs in assignments.items():
        count = sum(1 for ref in set(refs) if ref.key not in keys and (ref.uid or "") not in uids)
        if count:
            unseen[uuid] = count
    return unseen
