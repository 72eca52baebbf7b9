"""GPU-to-pod mapping from NVML's running processes and ``/proc/<pid>/cgroup`` (needs the host PID namespace).

The pod UID is recovered from the cgroup path, which depends on the cgroup
version (v1 lines ``N:controllers:/path``, v2 line ``0::/path``), the kubelet's
cgroup driver and the QoS class:

- cgroupfs driver: ``/kubepods[/burstable|/besteffort]/pod<uid>/<container-id>``
  with dashes in the UID;
- systemd driver: ``/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid>.slice/
  <runtime>-<container-id>.scope`` with the UID's dashes turned into underscores
  (``cri-containerd-``, ``crio-``, ``docker-``);
- both may sit under a prefix (nested or rootless setups) or end in a
  ``:runtime:id`` suffix (containerd's systemd cgroup paths).

Static (mirror) pods have a 32-hex-digit UID without dashes.

MIG: NVML's processes of a GPU in MIG mode are those of all its MIG devices
(:meth:`~gpupower_agent.nvml.PowerControl.running_pids`), so a pod on any MIG
device of a GPU is a pod on that GPU, which is where its power is capped.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from gpupower_agent.mapping import Assignments, MappingError, PodRef
from gpupower_agent.nvml import NvmlError, PowerControl

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_POD_SEGMENT = re.compile(rf"(?:^|[/\-])pod(?P<uid>{_UID})(?:\.slice)?(?=$|[/:])", re.IGNORECASE)


def pod_uid_from_cgroup(content: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` file's content, with dashes; None for non-pod processes."""
    for line in content.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        for segment in parts[2].split("/"):
            match = _POD_SEGMENT.search(segment)
            if match:
                return match["uid"].replace("_", "-").lower()
    return None


def pod_uid_of_pid(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The UID of the pod ``pid`` belongs to; None when the process is gone or not in a pod."""
    try:
        content = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    return pod_uid_from_cgroup(content)


class CgroupMapping:
    """Pods per GPU from the processes NVML sees on it. Knows a pod only once its process runs."""

    def __init__(self, nvml: PowerControl, proc_root: Path = Path("/proc")) -> None:
        self._nvml = nvml
        self._proc_root = proc_root

    @property
    def source(self) -> str:
        return "cgroup"

    def _read(self) -> dict[str, list[PodRef]]:
        result: dict[str, list[PodRef]] = {}
        for gpu in self._nvml.gpus():
            try:
                pids = self._nvml.running_pids(gpu.uuid)
            except NvmlError as error:
                raise MappingError(self.source, str(error)) from error
            refs: list[PodRef] = []
            for pid in pids:
                uid = pod_uid_of_pid(pid, self._proc_root)
                if uid is not None and PodRef(uid=uid) not in refs:
                    refs.append(PodRef(uid=uid))
            result[gpu.uuid] = refs
        return result

    async def assignments(self) -> Assignments:
        return await asyncio.to_thread(self._read)

    async def close(self) -> None:
        return None
