"""Which physical GPU a PodResources device id is on, for the ids the NVIDIA device plugin hands out.

The forms (k8s-device-plugin with its default ``deviceIDStrategy: uuid``):

- ``GPU-<uuid>``: a whole GPU (resource ``nvidia.com/gpu``);
- ``<id>::<n>``: replica ``n`` of a GPU shared by time-slicing or MPS (``nvidia.com/gpu``, or
  ``nvidia.com/gpu.shared`` with ``renameByDefault``); every replica is the same GPU;
- ``MIG-<uuid>``: a MIG device (``nvidia.com/gpu`` with the ``single`` MIG strategy,
  ``nvidia.com/mig-<profile>`` such as ``nvidia.com/mig-1g.10gb`` with ``mixed``), on the
  parent GPU that only NVML knows; power limits are set on that parent.

Anything else (``deviceIDStrategy: index`` gives ``0``, ``1``, ...) names no GPU the agent can
tell, and is reported, never dropped in silence. Which resources are GPUs at all is
configurable (``--gpu-resource-names``, shell-style patterns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpupower_agent.cluster import PodKey

REPLICA_SEPARATOR = "::"


class DeviceResolver(Protocol):
    """What NVML says a device UUID is on (see :meth:`gpupower_agent.nvml.PowerControl.physical_gpu`)."""

    def physical_gpu(self, device_uuid: str) -> str | None: ...


def device_uuid(device_id: str) -> str:
    """The device an id names, without a time-slicing replica suffix (``GPU-x::3`` -> ``GPU-x``)."""
    return device_id.partition(REPLICA_SEPARATOR)[0]


@dataclass(frozen=True)
class UnmappedDevice:
    """A GPU device of a pod that maps to no GPU of this node, and why."""

    pod: PodKey
    container: str
    resource: str
    device_id: str
    reason: str


def placement(device_id: str, resolver: DeviceResolver | None) -> tuple[str | None, str]:
    """(the physical GPU's UUID, "") for a device id, or (None, why not).

    Without a resolver (no NVML at hand) GPU UUIDs are taken as they are and MIG devices
    cannot be placed. :class:`~gpupower_agent.nvml.NvmlError` from the resolver passes through.
    """
    uuid = device_uuid(device_id)
    if not uuid.startswith(("GPU-", "MIG-")):
        return None, "not a GPU or MIG device UUID (the device plugin's deviceIDStrategy must be uuid)"
    if resolver is None:
        if uuid.startswith("MIG-"):
            return None, "a MIG device, and no NVML to find its GPU"
        return uuid, ""
    gpu = resolver.physical_gpu(uuid)
    if gpu is None:
        what = "MIG device" if uuid.startswith("MIG-") else "GPU"
        return None, f"no {what} of this node's NVML has that UUID"
    return gpu, ""
