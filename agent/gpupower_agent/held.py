"""What a node's GPUs hold, by who holds them, pure: the report its power domains count it by.

A breaker trips on what every GPU on its circuit may draw, so the operator counts
each GPU of a domain at the limit it holds. Per GPU, after a reconcile:

- who holds it: no pod (``idle``); pods of a budget (the budget the trust rule
  gives them, ``namespace/name``; a GPU that pods of several budgets share counts
  once, for the first of them by that key); otherwise pods no Enforce budget
  manages, and pods the agent does not see (``unmanaged``). Finished pods hold
  no GPU. The same classification as the cap policy's (``policy.OtherHolders``).
- what it holds: the limit NVML reads back; a GPU whose limit cannot be read
  counts at its maximum (it may be drawing that much).

The sums go on the Node as ``gpupower.dev/gpu-power-held`` (``contract.format_held_report``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gpupower_agent.policy import OtherHolders
from gpupower_agent.trust import PodCap
from gpupower_api.contract import HeldGroup, NodeHeld

IDLE = "idle"
UNMANAGED = "unmanaged"


def gpu_holder(caps: Iterable[PodCap], others: OtherHolders) -> str:
    """Who a GPU counts for: ``idle``, ``unmanaged``, or the key ``namespace/name`` of a budget."""
    caps = list(caps)
    budgets = sorted(f"{cap.budget[0]}/{cap.budget[1]}" for cap in caps if cap.budget is not None)
    if budgets:
        return budgets[0]
    return UNMANAGED if caps or others.any else IDLE


@dataclass(frozen=True)
class HeldGpu:
    """One GPU for the report: who holds it, the limit NVML reads back (None: unreadable), its maximum."""

    holder: str
    limit_watts: int | None
    max_watts: int

    @property
    def counted_watts(self) -> int:
        return self.max_watts if self.limit_watts is None else self.limit_watts


def node_held(gpus: Iterable[HeldGpu]) -> NodeHeld:
    """The sums by holder of what ``gpus`` hold."""
    idle, unmanaged = HeldGroup(), HeldGroup()
    budgets: dict[str, HeldGroup] = {}
    for gpu in gpus:
        one = HeldGroup(1, gpu.counted_watts)
        if gpu.holder == IDLE:
            idle += one
        elif gpu.holder == UNMANAGED:
            unmanaged += one
        else:
            budgets[gpu.holder] = budgets.get(gpu.holder, HeldGroup()) + one
    return NodeHeld(idle, unmanaged, budgets)
