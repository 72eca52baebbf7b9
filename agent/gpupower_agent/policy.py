"""The per-GPU cap policy, pure: the managed pods on a GPU and their caps in, one decision out.

- One managed pod: its cap. Several that agree: that cap. Several that disagree:
  the safe default, the lowest among the pods involved. Each pod counts once, however
  many processes or containers it has on the GPU.
- The result is clamped to what the GPU accepts (``[min, max]``) and the decision says so.
- A GPU the agent capped earlier that has no managed pod now goes back to its default limit.
- A GPU the agent never capped and that has no managed pod is left alone.
- A GPU the draw guard of an oversubscribed budget holds lower gets the guard's
  limit (never above what the rules above give).
- NVML is called only when the current limit differs from the decided one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from gpupower_agent.cluster import PodKey
from gpupower_agent.nvml import GpuConstraints
from gpupower_agent.trust import PodCap


class Action(StrEnum):
    CAP = "cap"  # hold the GPU at target_watts
    RESTORE = "restore"  # give the GPU its default limit back
    LEAVE = "leave"  # not ours: do not touch


class Reason(StrEnum):
    ONE_POD = "one_pod"
    PODS_AGREE = "pods_agree"
    CONFLICT = "conflict"
    NO_MANAGED_POD = "no_managed_pod"
    UNMANAGED = "unmanaged"
    GUARDED = "guarded"  # the draw guard holds the GPU below its pods' cap


@dataclass(frozen=True)
class GpuDecision:
    uuid: str
    action: Action
    reason: Reason
    target_watts: int | None
    requested_watts: int | None
    pods: tuple[PodKey, ...]
    needs_nvml_call: bool

    @property
    def clamped(self) -> bool:
        """Whether the GPU's range moved the cap (the draw guard's lower limit is not a clamp)."""
        return (
            self.reason is not Reason.GUARDED
            and self.requested_watts is not None
            and self.target_watts is not None
            and self.requested_watts != self.target_watts
        )


def clamp_watts(watts: int, constraints: GpuConstraints) -> int:
    return min(max(watts, constraints.min_watts), constraints.max_watts)


def decide_gpu(
    uuid: str,
    pod_caps: Iterable[PodCap],
    constraints: GpuConstraints,
    current_limit_watts: int | None,
    capped_before: bool,
) -> GpuDecision:
    """The decision for one GPU; ``current_limit_watts`` is None when NVML could not say."""
    unique: dict[PodKey, PodCap] = {}
    for cap in pod_caps:
        unique.setdefault(cap.pod, cap)
    pods = tuple(sorted(unique, key=lambda key: (key.namespace, key.name)))

    if not unique:
        if not capped_before:
            return GpuDecision(uuid, Action.LEAVE, Reason.UNMANAGED, None, None, (), False)
        default = constraints.default_watts
        return GpuDecision(
            uuid, Action.RESTORE, Reason.NO_MANAGED_POD, default, default, (), current_limit_watts != default
        )

    caps = {cap.cap_watts for cap in unique.values()}
    if len(caps) == 1:
        requested = caps.pop()
        reason = Reason.ONE_POD if len(unique) == 1 else Reason.PODS_AGREE
    else:
        requested = min(cap.safe_default_watts for cap in unique.values())
        reason = Reason.CONFLICT
    target = clamp_watts(requested, constraints)
    return GpuDecision(uuid, Action.CAP, reason, target, requested, pods, current_limit_watts != target)


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU as the reconcile saw it: constraints and the limit NVML reported (None: unreadable)."""

    uuid: str
    constraints: GpuConstraints
    current_limit_watts: int | None


@dataclass(frozen=True)
class NodePlan:
    decisions: tuple[GpuDecision, ...]
    pod_caps: Mapping[PodKey, PodCap]


def guarded(
    decision: GpuDecision, guard_limit_watts: int | None, current_limit_watts: int | None
) -> GpuDecision:
    """The decision with the draw guard's limit applied when it is lower than the decided cap."""
    if guard_limit_watts is None or decision.action is not Action.CAP or decision.target_watts is None:
        return decision
    if guard_limit_watts >= decision.target_watts:
        return decision
    return replace(
        decision,
        reason=Reason.GUARDED,
        target_watts=guard_limit_watts,
        needs_nvml_call=current_limit_watts != guard_limit_watts,
    )


def plan_node(
    gpus: Iterable[GpuSnapshot],
    pod_caps: Mapping[PodKey, PodCap],
    assignments: Mapping[str, Collection[PodKey]],
    capped_before: Collection[str],
    guard_limits: Mapping[str, int] | None = None,
) -> NodePlan:
    """Decisions for every GPU of the node, from the managed pods' caps (see ``trust.pod_caps``), under
    the draw guard's limits where it holds a GPU lower (``guard_limits``, by GPU UUID)."""
    guard_limits = guard_limits or {}
    decisions = tuple(
        guarded(
            decide_gpu(
                gpu.uuid,
                (pod_caps[key] for key in assignments.get(gpu.uuid, ()) if key in pod_caps),
                gpu.constraints,
                gpu.current_limit_watts,
                gpu.uuid in capped_before,
            ),
            guard_limits.get(gpu.uuid),
            gpu.current_limit_watts,
        )
        for gpu in gpus
    )
    return NodePlan(decisions=decisions, pod_caps=pod_caps)
