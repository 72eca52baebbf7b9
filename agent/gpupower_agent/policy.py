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

On a node in a power domain (``gpupower_api.domains.place_node``) every GPU is
accounted for, so on top of the rules above:

- A GPU no pod holds is *parked*: held at the domain's ``idleGpuWatts``, clamped
  into what the GPU accepts (unset: the GPU's minimum), not given its default back.
- A GPU held by pods no Enforce budget manages (pods the trust rule does not
  manage, pods it manages only through their own annotations, and pods the GPU
  mapping names that the agent does not see) is capped at ``unmanagedGpuWatts``
  (clamped) when the domain sets it, or at the lower of that and the rules above
  when it shares the GPU with managed pods. Unset, such a GPU is handled as
  outside a domain, except that a GPU held by a pod the agent cannot see is left
  as it is: the agent never raises a GPU for a pod it cannot see (one the watch
  has not delivered yet would otherwise take its parked GPU to the default).
- A GPU held by a pod awaiting its cap (selected by a budget, not annotated yet)
  holds the lower of the rules above and its parked limit, until the cap is
  trusted: a new replica landing on a parked GPU starts parked, not at the default.

Outside any domain the decision is exactly the one above.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from gpupower_agent.cluster import PodKey
from gpupower_agent.nvml import GpuConstraints
from gpupower_agent.trust import PodCap, Verdict
from gpupower_api.domains import NodePlace


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
    PARKED = "parked"  # in a power domain, no pod holds the GPU: held at its parked limit
    UNMANAGED_CAP = "unmanaged_cap"  # in a power domain, pods no budget manages: unmanagedGpuWatts
    AWAITING_CAP_PARKED = "awaiting_cap_parked"  # in a power domain, a pod awaiting its cap: parked


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


@dataclass(frozen=True)
class OtherHolders:
    """Who holds a GPU besides the pods the trust rule manages (what a power domain accounts for)."""

    unmanaged: tuple[PodKey, ...] = ()  # running pods the agent sees that the trust rule does not manage
    unseen: int = 0  # pods the GPU mapping names that the agent does not see (not watched yet, or elsewhere)

    @property
    def any(self) -> bool:
        return bool(self.unmanaged) or self.unseen > 0


NO_OTHERS = OtherHolders()


def parked_watts(place: NodePlace, constraints: GpuConstraints) -> int:
    """Where an idle GPU of a node in a domain is parked: ``idleGpuWatts`` clamped, else its minimum."""
    if place.idle_gpu_watts is None:
        return constraints.min_watts
    return clamp_watts(place.idle_gpu_watts, constraints)


def _at_most(
    decision: GpuDecision,
    requested_watts: int,
    constraints: GpuConstraints,
    reason: Reason,
    current_limit_watts: int | None,
) -> GpuDecision:
    """``decision``, or a cap at ``requested_watts`` (clamped) when that is lower or nothing caps the GPU."""
    target = clamp_watts(requested_watts, constraints)
    if (
        decision.action is Action.CAP
        and decision.target_watts is not None
        and decision.target_watts <= target
    ):
        return decision
    return GpuDecision(
        decision.uuid,
        Action.CAP,
        reason,
        target,
        requested_watts,
        decision.pods,
        current_limit_watts != target,
    )


def decide_gpu_in_domain(
    uuid: str,
    pod_caps: Iterable[PodCap],
    constraints: GpuConstraints,
    current_limit_watts: int | None,
    capped_before: bool,
    place: NodePlace,
    others: OtherHolders = NO_OTHERS,
) -> GpuDecision:
    """The decision for one GPU of a node in a power domain (see the module docstring)."""
    caps = list(pod_caps)
    if not caps and not others.any:
        target = parked_watts(place, constraints)
        requested = place.idle_gpu_watts if place.idle_gpu_watts is not None else target
        return GpuDecision(
            uuid, Action.CAP, Reason.PARKED, target, requested, (), current_limit_watts != target
        )
    decision = decide_gpu(uuid, caps, constraints, current_limit_watts, capped_before)
    unmanaged = others.any or any(cap.budget is None for cap in caps)
    if unmanaged and place.unmanaged_gpu_watts is not None:
        decision = _at_most(
            decision, place.unmanaged_gpu_watts, constraints, Reason.UNMANAGED_CAP, current_limit_watts
        )
    elif others.unseen and not caps and decision.action is Action.RESTORE:
        decision = GpuDecision(uuid, Action.LEAVE, Reason.UNMANAGED, None, None, (), False)
    if any(cap.verdict is Verdict.AWAITING_CAP for cap in caps):
        decision = _at_most(
            decision,
            parked_watts(place, constraints),
            constraints,
            Reason.AWAITING_CAP_PARKED,
            current_limit_watts,
        )
    return decision


def plan_node(
    gpus: Iterable[GpuSnapshot],
    pod_caps: Mapping[PodKey, PodCap],
    assignments: Mapping[str, Collection[PodKey]],
    capped_before: Collection[str],
    place: NodePlace | None = None,
    others: Mapping[str, OtherHolders] | None = None,
) -> NodePlan:
    """Decisions for every GPU of the node, from the managed pods' caps (see ``trust.pod_caps``); the
    draw guard's limits are applied on top of them with :func:`guarded`.

    In a power domain (``place``), ``others`` says who else holds each GPU (by GPU UUID).
    """
    others = others or {}
    in_domain = place is not None and place.in_domain

    def decide(gpu: GpuSnapshot) -> GpuDecision:
        caps = [pod_caps[key] for key in assignments.get(gpu.uuid, ()) if key in pod_caps]
        capped = gpu.uuid in capped_before
        if in_domain:
            assert place is not None
            held_by = others.get(gpu.uuid, NO_OTHERS)
            return decide_gpu_in_domain(
                gpu.uuid, caps, gpu.constraints, gpu.current_limit_watts, capped, place, held_by
            )
        return decide_gpu(gpu.uuid, caps, gpu.constraints, gpu.current_limit_watts, capped)

    return NodePlan(decisions=tuple(decide(gpu) for gpu in gpus), pod_caps=pod_caps)
