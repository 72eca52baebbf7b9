"""The reconcile decision: from what is observed now and a plan, the status to write and the writes to make.

Pure: no I/O, no clock (the caller passes ``now``). The shell (``shell/budgets.py``)
gathers the observed state, runs the planner, calls :func:`reconcile` and
applies the returned writes in the returned order.

The order of writes is the safety policy. The agent trusts a pod's cap only
when the budget's status grants its target at least that cap, and the fleet
must never be pushed above the budget on its way to a new plan. So:

1. caps DOWN on pods (each new cap is at most the cap the *old* status grants);
2. replicas DOWN through ``/scale``;
3. the STATUS (the new grants);
4. replicas UP;
5. caps UP on pods (needing the new grants), then annotations removed from pods
   the budget no longer selects.

After steps 1-2 every target runs at most min(old, new) replicas at at most
min(old, new) cap, which is within both plans; steps 4-5 only climb to the new
plan. A pod that has no cap yet (a new replica) is capped in step 1 when the old
grant allows it, so a hand-scaled replica is capped before anything else.

An order of API writes is not yet an order on the hardware: a lowered cap holds
only once the pod's agent has applied it. So steps 4-5 are gated on what the
agents report (the ``gpupower.dev/PowerCapped`` pod condition, see
:mod:`gpupower_api.contract`): every pod counts at the most its GPUs can hold
now (:func:`pod_bound_watts`: what its agent reports, or the caps on their way,
or the node's GPU maximum when no agent vouches for it), and a raise is made only
when the fleet, counted that way, stays within the budget after it. Until then
the raises wait for the next reconcile (the agents' reports wake it); a pod that
stays unconfirmed longer than the enforcement timeout shows as
``EnforcementStalled``, naming the pods and nodes, and keeps holding the raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from gpupower_api.contract import (
    BUDGET_ANNOTATION,
    MAX_CAP_WATTS,
    POWER_LIMIT_ANNOTATION,
    HeldWatts,
    PowerCappedReason,
    format_power_limit,
)
from gpupower_api.models import (
    BudgetDomainStatus,
    BudgetSpec,
    BudgetStatus,
    ConditionStatus,
    InvalidSpecError,
    Mode,
    TargetMeasurement,
    TargetStatus,
    WorkloadRef,
)
from gpupower_api.selectors import InvalidSelectorError, Selector, parse_selector
from gpupower_operator.core import conditions as cond
from gpupower_operator.core import inventory, profiles
from gpupower_operator.core.oversubscription import GuardMemory
from gpupower_operator.core.planner import Plan
from gpupower_operator.core.signals import METRICS_AVAILABLE, Signals

MAX_NAMED_CONFLICTS = 3
MAX_NAMED_PODS = 5
DEFAULT_ENFORCEMENT_TIMEOUT_SECONDS = 60.0

# The pod a profile run measures is the last its ReplicaSet deletes on a scale-down (the run needs it):
# it gets the highest deletion cost, and the value it had is kept beside it ("" for none) and put back.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SAVED_DELETION_COST_ANNOTATION = "gpupower.dev/saved-pod-deletion-cost"
MEASURED_DELETION_COST = str(2**31 - 1)


# ---------------------------------------------------------------------------
# What is observed


@dataclass(frozen=True)
class CappedReport:
    """The agent's ``gpupower.dev/PowerCapped`` condition on a pod: its verdict and what the GPUs hold."""

    status: bool
    reason: str
    held: HeldWatts | None  # None: the agent could not say (GPUs unreadable, none allocated yet)
    message: str = ""


@dataclass(frozen=True)
class PodState:
    """A pod as the operator sees it: labels, the two contract annotations, liveness, the agent's report."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cap_annotation: str | None = None
    budget_annotation: str | None = None
    phase: str = "Pending"
    deleting: bool = False
    node_name: str | None = None  # the node it is bound to; None while pending
    node_selector: Mapping[str, str] = field(default_factory=dict)
    power_capped: CappedReport | None = None
    deletion_cost: str | None = None  # controller.kubernetes.io/pod-deletion-cost
    saved_deletion_cost: str | None = None  # what it was before a profile run measured the pod

    @property
    def guarded(self) -> bool:
        """Whether its agent reports the draw guard holding its GPUs below their caps."""
        return self.power_capped is not None and self.power_capped.reason == PowerCappedReason.GUARDED

    @property
    def active(self) -> bool:
        return not self.deleting and self.phase not in ("Succeeded", "Failed")

    def carries(self, cap_watts: int, budget: str) -> bool:
        return self.cap_annotation == format_power_limit(cap_watts) and self.budget_annotation == budget

    def cap_watts_from(self, budget: str) -> int | None:
        """The cap this budget wrote on the pod, or None when it wrote none (or something unparsable)."""
        if self.budget_annotation != budget or self.cap_annotation is None:
            return None
        return int(self.cap_annotation) if self.cap_annotation.isdecimal() else None


@dataclass(frozen=True)
class WorkloadState:
    """A target's workload as its ``/scale`` subresource reports it."""

    replicas: int
    selector: str


@dataclass(frozen=True)
class WorkloadMissing:
    """A target whose workload cannot be used; ``reason`` is a condition reason."""

    reason: str
    message: str


@dataclass(frozen=True)
class BudgetRef:
    name: str
    namespace: str
    created: str  # RFC 3339 creationTimestamp; sorts chronologically
    generation: int | None = None


@dataclass(frozen=True)
class OtherBudget:
    """Another budget in the namespace: its age and the selectors its status publishes."""

    name: str
    created: str
    selectors: tuple[str, ...]


@dataclass(frozen=True)
class MeasuredPod:
    """A pod of a target that a profile run measures: the cap it alone is granted (the plan reserves it)."""

    pod: str
    cap_watts: int
    run: str


def measured_in(observed: Observed, target: str) -> MeasuredPod | None:
    return observed.measurements.get(target)


def pod_cap_watts(plan_cap_watts: int, measured: MeasuredPod | None, pod: str) -> int:
    """The cap one pod of a target should hold: the measured pod's own, every other pod the plan's."""
    return measured.cap_watts if measured is not None and measured.pod == pod else plan_cap_watts


@dataclass(frozen=True)
class Observed:
    budget: BudgetRef
    spec: BudgetSpec
    old_status: BudgetStatus | None
    workloads: Mapping[str, WorkloadState | WorkloadMissing]
    pods: Sequence[PodState]
    others: Sequence[OtherBudget] = ()
    signals: Signals | None = None  # from Prometheus, when the budget reads it
    cap_ranges: Sequence[inventory.EffectiveRange] = ()  # each target's range after its nodes' limits
    # The highest limit each node's GPUs accept (its inventory): what an unconfirmed pod's GPU may hold.
    node_max_watts: Mapping[str, int] = field(default_factory=dict)
    # How long each pod (by name) has been unconfirmed, as the shell remembers it from earlier reconciles.
    unconfirmed_seconds: Mapping[str, float] = field(default_factory=dict)
    enforcement_timeout_seconds: float = DEFAULT_ENFORCEMENT_TIMEOUT_SECONDS
    # Oversubscribed budgets: each target's draw-guard record, updated for this reconcile by the shell.
    guard_memory: Mapping[str, GuardMemory] = field(default_factory=dict)
    # Per target, the pod a profile run measures (the plan was made around it).
    measurements: Mapping[str, MeasuredPod] = field(default_factory=dict)
    # A budget of a power domain: its share, as the shell got it from the domain allocation.
    domain: DomainContext | None = None


@dataclass(frozen=True)
class DomainContext:
    """What a budget's domain gave it: the share for its status, and what the reconcile checks."""

    status: BudgetDomainStatus
    admitted: cond.ConditionUpdate  # DomainAdmitted
    nodes: frozenset[str] | None = None  # the domain's nodes; a pod bound elsewhere is OutsideDomain
    waiting: str | None = None  # the grant is below the allocation: why, for Ready


# ---------------------------------------------------------------------------
# What to do


class Phase(IntEnum):
    CAPS_DOWN = 1
    REPLICAS_DOWN = 2
    STATUS = 3
    REPLICAS_UP = 4
    CAPS_UP = 5
    RELEASE = 6


@dataclass(frozen=True)
class AnnotatePod:
    pod: str
    target: str
    cap_watts: int
    budget: str
    previous_cap_watts: int | None

    def annotations(self) -> dict[str, str | None]:
        return {POWER_LIMIT_ANNOTATION: format_power_limit(self.cap_watts), BUDGET_ANNOTATION: self.budget}


@dataclass(frozen=True)
class ReleasePod:
    """Remove the contract annotations from a pod the budget no longer owns (and put back the deletion
    cost a profile run replaced, when ``restore_deletion_cost`` is not None)."""

    pod: str
    restore_deletion_cost: str | None = None

    def annotations(self) -> dict[str, str | None]:
        changes: dict[str, str | None] = {POWER_LIMIT_ANNOTATION: None, BUDGET_ANNOTATION: None}
        if self.restore_deletion_cost is not None:
            changes.update(_restored_deletion_cost(self.restore_deletion_cost))
        return changes


@dataclass(frozen=True)
class ProtectPod:
    """Give the measured pod the highest deletion cost (``protect``, saving ``saved``), or put back the
    cost it had (``saved``) once no run measures it. ``""`` stands for no deletion cost."""

    pod: str
    protect: bool
    saved: str

    def annotations(self) -> dict[str, str | None]:
        if self.protect:
            return {
                DELETION_COST_ANNOTATION: MEASURED_DELETION_COST,
                SAVED_DELETION_COST_ANNOTATION: self.saved,
            }
        return _restored_deletion_cost(self.saved)


def _restored_deletion_cost(saved: str) -> dict[str, str | None]:
    return {DELETION_COST_ANNOTATION: saved or None, SAVED_DELETION_COST_ANNOTATION: None}


def deletion_cost_write(pod: PodState, measured: bool) -> ProtectPod | None:
    """What keeps a measured pod last in line for deletion, or gives a pod back its own deletion cost."""
    if measured:
        if pod.deletion_cost == MEASURED_DELETION_COST and pod.saved_deletion_cost is not None:
            return None
        saved = pod.saved_deletion_cost if pod.saved_deletion_cost is not None else pod.deletion_cost or ""
        return ProtectPod(pod.name, True, saved)
    if pod.saved_deletion_cost is not None:
        return ProtectPod(pod.name, False, pod.saved_deletion_cost)
    return None


@dataclass(frozen=True)
class ScaleWorkload:
    target: str
    workload: WorkloadRef
    from_replicas: int
    to_replicas: int


@dataclass(frozen=True)
class WriteStatus:
    status: BudgetStatus


Write = AnnotatePod | ReleasePod | ProtectPod | ScaleWorkload | WriteStatus


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """The status to hold and the writes to make: ``steps`` in order, the writes of a step in any order."""

    status: BudgetStatus
    steps: tuple[tuple[Write, ...], ...]
    events: tuple[Event, ...] = ()
    selectors: Mapping[str, str] = field(default_factory=dict)
    unconfirmed: tuple[str, ...] = ()  # pods whose GPUs are not confirmed to hold what they should
    recheck_seconds: float | None = None  # look again then, even if nothing changes (a stall to report)

    @property
    def writes(self) -> list[Write]:
        return [write for step in self.steps for write in step]


# ---------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class _TargetPods:
    target: str
    selector: Selector | None
    pods: tuple[PodState, ...]
    contested: tuple[tuple[str, str], ...]  # (pod, owning budget)


def _parse(selector: str) -> Selector | None:
    try:
        parsed = parse_selector(selector)
    except InvalidSelectorError:
        return None
    return parsed if parsed.requirements else None


def _older(other: OtherBudget, budget: BudgetRef) -> bool:
    return (other.created, other.name) < (budget.created, budget.name)


def _select_pods(observed: Observed) -> list[_TargetPods]:
    """Each target's active pods, and those an older budget owns (the older budget wins)."""
    older = [
        (other.name, [s for s in map(_parse, other.selectors) if s is not None])
        for other in sorted(observed.others, key=lambda o: (o.created, o.name))
        if other.name != observed.budget.name and _older(other, observed.budget)
    ]
    taken: set[str] = set()
    result: list[_TargetPods] = []
    for target in observed.spec.targets:
        workload = observed.workloads.get(target.name)
        selector = _parse(workload.selector) if isinstance(workload, WorkloadState) else None
        mine: list[PodState] = []
        contested: list[tuple[str, str]] = []
        for pod in sorted(observed.pods, key=lambda p: p.name):
            if selector is None or pod.name in taken or not pod.active or not selector.matches(pod.labels):
                continue
            owner = next((name for name, sels in older if any(s.matches(pod.labels) for s in sels)), None)
            if owner is not None:
                contested.append((pod.name, owner))
                continue
            taken.add(pod.name)
            mine.append(pod)
        result.append(_TargetPods(target.name, selector, tuple(mine), tuple(contested)))
    return result


def _granted_watts(old_status: BudgetStatus | None, target: str, pod: str) -> int | None:
    """What the current status grants one pod of a target (a measured pod has its own grant)."""
    if old_status is None:
        return None
    granted = old_status.target(target)
    if granted is None:
        return None
    measured = granted.measurement
    return measured.cap_watts if measured is not None and measured.pod == pod else granted.cap_watts


def order_writes(
    budget: str,
    spec: BudgetSpec,
    plan: Plan,
    old_status: BudgetStatus | None,
    workloads: Mapping[str, WorkloadState | WorkloadMissing],
    target_pods: Sequence[_TargetPods],
    all_pods: Sequence[PodState],
    measurements: Mapping[str, MeasuredPod] | None = None,
) -> list[tuple[Phase, Write]]:
    """The pod and workload writes of an Enforce reconcile, each tagged with its phase (status excluded)."""
    writes: list[tuple[Phase, Write]] = []
    selected: set[str] = set()
    for target, found in zip(spec.targets, target_pods, strict=True):
        planned = plan.target(target.name)
        workload = workloads.get(target.name)
        selected.update(pod.name for pod in found.pods)
        if not isinstance(workload, WorkloadState) or found.contested:
            continue
        if workload.replicas != planned.replicas:
            phase = Phase.REPLICAS_DOWN if planned.replicas < workload.replicas else Phase.REPLICAS_UP
            writes.append(
                (phase, ScaleWorkload(target.name, target.workload_ref, workload.replicas, planned.replicas))
            )
        measured = (measurements or {}).get(target.name)
        for pod in found.pods:
            protect = deletion_cost_write(pod, measured is not None and measured.pod == pod.name)
            if protect is not None:
                # Before any scale-down, so that the ReplicaSet deletes another pod than the measured one.
                writes.append((Phase.CAPS_DOWN if protect.protect else Phase.RELEASE, protect))
            cap = pod_cap_watts(planned.cap_watts, measured, pod.name)
            if pod.carries(cap, budget):
                continue
            granted = _granted_watts(old_status, target.name, pod.name)
            current = pod.cap_watts_from(budget)
            trusted_now = current is not None and granted is not None and current <= granted
            lowers = granted is not None and cap <= granted
            if trusted_now and current is not None and cap > current:
                lowers = False
            phase = Phase.CAPS_DOWN if lowers else Phase.CAPS_UP
            writes.append((phase, AnnotatePod(pod.name, target.name, cap, budget, current)))
    for pod in sorted(all_pods, key=lambda p: p.name):
        if pod.name not in selected and pod.budget_annotation == budget and not pod.deleting:
            writes.append((Phase.RELEASE, ReleasePod(pod.name, pod.saved_deletion_cost)))
    return writes


# ---------------------------------------------------------------------------
# What the hardware holds, as the agents report it


def pod_bound_watts(pod: PodState, cap_watts: int, gpus: int, node_max_watts: int) -> float:
    """The most the GPUs of ``pod`` can hold now, in watts, when it should hold ``cap_watts`` per GPU.

    - not bound to a node yet, or reported ``AwaitingDevices``: no GPU holds anything
      for it yet, and its agent caps a GPU as the kubelet allocates it, before the
      containers start: its cap;
    - reported with what its GPUs hold: the higher of that and its cap (the cap
      may be on its way up; a lowered cap counts only once reported);
    - no report, or a report that cannot say (GPUs unreadable, an unmanaged pod):
      the highest limit its node's GPUs accept.
    """
    report = pod.power_capped
    if pod.node_name is None or (report is not None and report.reason == PowerCappedReason.AWAITING_DEVICES):
        return float(cap_watts * gpus)
    if report is None or report.held is None:
        return float(node_max_watts * gpus)
    return float(max(report.held.max_watts, cap_watts) * max(gpus, report.held.gpus))


def confirmed(pod: PodState, cap_watts: int) -> bool:
    """Whether the pod's agent reports every GPU of it holding at most ``cap_watts``."""
    report = pod.power_capped
    return (
        report is not None
        and report.status
        and report.held is not None
        and report.held.max_watts <= cap_watts
    )


def _why_unconfirmed(pod: PodState) -> str:
    report = pod.power_capped
    if report is None:
        return "no report from an agent on its node"
    detail = report.message.split(": ", 1)[-1][:80] if report.message else ""
    return f"{report.reason}: {detail}" if detail else report.reason


@dataclass(frozen=True)
class _Enforcement:
    """What the gate decided: raises held back, the watts the GPUs can hold, the pods not confirmed."""

    deferred: frozenset[int]  # indexes into the phased writes
    enforced_watts: float  # existing pods, after the writes made now
    target_watts: Mapping[str, float]
    pods_enforced: Mapping[str, int]
    unconfirmed: tuple[PodState, ...]
    prospective_watts: float  # what the gate compared: the enforced watts, replicas to come, raises made
    held_raises: int


def _enforcement(
    observed: Observed,
    plan: Plan,
    target_pods: Sequence[_TargetPods],
    phased: Sequence[tuple[Phase, Write]],
) -> _Enforcement:
    """Gate the raises on what the agents report (see the module docstring)."""
    spec = observed.spec
    budget = observed.budget.name
    known_max = max(observed.node_max_watts.values(), default=None)
    annotate = {
        w.pod: (phase, index, w) for index, (phase, w) in enumerate(phased) if isinstance(w, AnnotatePod)
    }

    def node_max(pod: PodState, target_max: int) -> int:
        found = observed.node_max_watts.get(pod.node_name or "")
        return found if found is not None else (known_max if known_max is not None else target_max)

    ranges = {r.target: r for r in observed.cap_ranges}
    baseline = 0.0
    by_target: dict[str, float] = {}
    enforced_count: dict[str, int] = {}
    unconfirmed: list[PodState] = []
    increments: dict[int, float] = {}
    for target, found in zip(spec.targets, target_pods, strict=True):
        planned = plan.target(target.name)
        gpus = target.gpus_per_replica
        effective = ranges.get(target.name)
        target_max = (
            effective.max_watts if effective is not None and not effective.empty else target.cap_range().max
        )
        fallback = min(planned.cap_watts, spec.safe_default_watts)
        watts = 0.0
        enforced_count[target.name] = 0
        measured = observed.measurements.get(target.name)
        for pod in found.pods:
            cap = pod_cap_watts(planned.cap_watts, measured, pod.name)
            current = pod.cap_watts_from(budget)
            write = annotate.get(pod.name)
            now_cap = current if current is not None else fallback
            after_cap = now_cap
            if write is not None and write[0] == Phase.CAPS_DOWN:
                after_cap = write[2].cap_watts
            bound = pod_bound_watts(pod, after_cap, gpus, node_max(pod, target_max))
            watts += bound
            if write is not None and write[0] == Phase.CAPS_UP:
                raised = pod_bound_watts(pod, write[2].cap_watts, gpus, node_max(pod, target_max))
                increments[write[1]] = raised - bound
            if pod.carries(cap, budget) and confirmed(pod, cap):
                enforced_count[target.name] += 1
            report = pod.power_capped
            waiting_for_devices = report is not None and report.reason == PowerCappedReason.AWAITING_DEVICES
            if pod.node_name is not None and not waiting_for_devices and not confirmed(pod, after_cap):
                unconfirmed.append(pod)
        # Pods being deleted hold their GPUs until they are gone.
        selector = found.selector
        for pod in observed.pods:
            if (
                pod.deleting
                and pod.node_name is not None
                and selector is not None
                and selector.matches(pod.labels)
            ):
                current = pod.cap_watts_from(budget)
                watts += pod_bound_watts(pod, current or fallback, gpus, node_max(pod, target_max))
        by_target[target.name] = watts
        baseline += watts
    enforced_watts = baseline
    # Replicas the workloads run or will run that have no pod yet: capped at their grant as they arrive.
    for target, found in zip(spec.targets, target_pods, strict=True):
        workload = observed.workloads.get(target.name)
        if isinstance(workload, WorkloadState) and not found.contested:
            planned = plan.target(target.name)
            coming = max(0, min(workload.replicas, planned.replicas) - len(found.pods))
            baseline += coming * target.gpus_per_replica * planned.cap_watts
    for index, (phase, item) in enumerate(phased):
        if phase == Phase.REPLICAS_UP and isinstance(item, ScaleWorkload):
            scaled = next(t for t in spec.targets if t.name == item.target)
            added = item.to_replicas - max(item.from_replicas, 0)
            increments[index] = added * scaled.gpus_per_replica * plan.target(item.target).cap_watts
    raising = {index: watts for index, watts in increments.items() if watts > 0}
    # What the caps may sum to: the budget, or its oversubscription bound (the agents' guard holds the draw).
    limit = plan.cap_budget_watts if plan.cap_budget_watts is not None else plan.budget_watts
    threshold = max(limit, plan.caps_watts)
    prospective = baseline + sum(raising.values())
    deferred = frozenset(raising) if raising and prospective > threshold + 1e-6 else frozenset()
    if deferred:
        prospective = baseline
    else:
        enforced_watts += sum(w for i, w in raising.items() if isinstance(phased[i][1], AnnotatePod))
    return _Enforcement(
        deferred=deferred,
        enforced_watts=enforced_watts,
        target_watts=by_target,
        pods_enforced=enforced_count,
        unconfirmed=tuple(unconfirmed),
        prospective_watts=prospective,
        held_raises=len(deferred),
    )


def _stalled_condition(
    observed: Observed, unconfirmed: Sequence[PodState]
) -> tuple[cond.ConditionUpdate, float | None]:
    """EnforcementStalled, and when to look again for a pod that may stall."""
    timeout = observed.enforcement_timeout_seconds
    waited = {pod.name: observed.unconfirmed_seconds.get(pod.name, 0.0) for pod in unconfirmed}
    stalled = [pod for pod in unconfirmed if waited[pod.name] >= timeout]
    pending = [timeout - waited[pod.name] for pod in unconfirmed if waited[pod.name] < timeout]
    recheck = min(pending) if pending else None
    if stalled:
        nodes = sorted({pod.node_name or "-" for pod in stalled})
        named = "; ".join(
            f"pod {observed.budget.namespace}/{pod.name} on node {pod.node_name} ({_why_unconfirmed(pod)})"
            for pod in stalled[:MAX_NAMED_PODS]
        )
        more = len(stalled) - MAX_NAMED_PODS
        return (
            cond.true(
                cond.ENFORCEMENT_STALLED,
                cond.REASON_PODS_UNCONFIRMED,
                f"{len(stalled)} pod(s) on node(s) {', '.join(nodes)} have not confirmed their caps on the "
                f"hardware for {timeout:g}s or more; raises wait for them: {named}"
                + (f" and {more} more" if more > 0 else ""),
            ),
            recheck,
        )
    if unconfirmed:
        return (
            cond.false(
                cond.ENFORCEMENT_STALLED,
                cond.REASON_AWAITING_CONFIRMATION,
                f"{len(unconfirmed)} pod(s) awaiting their agents' confirmation (for less than {timeout:g}s)",
            ),
            recheck,
        )
    return cond.false(cond.ENFORCEMENT_STALLED, cond.REASON_CONFIRMED, "every pod's caps are confirmed"), None


def _round(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def _guard_fields(spec: BudgetSpec, pods: Sequence[PodState], memory: GuardMemory) -> dict[str, Any]:
    if spec.oversubscription is None:
        return {}
    guarded = sum(1 for pod in pods if pod.guarded)
    return {
        "guard_engagements": memory.engagements,
        "guarded_pods": guarded,
        "draw_factor_floor": None if memory.floor is None else _round(memory.floor),
        "last_guard_engagement": memory.last_engagement,
    }


def _guard_share(spec: BudgetSpec, plan: Plan, cap_watts: int, gpu_draw_watts: float) -> float | None:
    """The guard's share per GPU: the planned draw scaled so that all the shares sum to the budget (the
    slack the plan leaves is the guard's too), never above the cap. None without oversubscription."""
    if spec.oversubscription is None:
        return None
    scale = plan.budget_watts / plan.watts if plan.watts > 0 else 1.0
    return _round(min(float(cap_watts), gpu_draw_watts * max(1.0, scale)), 1)


def _target_statuses(
    spec: BudgetSpec,
    plan: Plan,
    workloads: Mapping[str, WorkloadState | WorkloadMissing],
    target_pods: Sequence[_TargetPods],
    annotated_after: set[str],
    guard_memory: Mapping[str, GuardMemory],
) -> list[TargetStatus]:
    statuses: list[TargetStatus] = []
    for target, found in zip(spec.targets, target_pods, strict=True):
        planned = plan.target(target.name)
        workload = workloads.get(target.name)
        resolved = isinstance(workload, WorkloadState)
        statuses.append(
            TargetStatus(
                name=target.name,
                selector=workload.selector if isinstance(workload, WorkloadState) else None,
                current_replicas=workload.replicas if isinstance(workload, WorkloadState) else None,
                desired_replicas=planned.desired_replicas,
                planned_replicas=planned.replicas,
                cap_watts=planned.cap_watts,
                projected_watts=_round(planned.watts, 1),
                capacity=_round(planned.capacity),
                demand=None if planned.demand is None else _round(planned.demand),
                served_fraction=_round(planned.served_fraction),
                pods_annotated=sum(1 for pod in found.pods if pod.name in annotated_after) if resolved else 0,
                caps_watts=_round(planned.caps_watts, 1),
                gpu_draw_watts=_round(planned.gpu_draw_watts, 1)
                if spec.oversubscription is not None
                else None,
                gpu_share_watts=_guard_share(spec, plan, planned.cap_watts, planned.gpu_draw_watts),
                **_guard_fields(spec, found.pods, guard_memory.get(target.name, GuardMemory())),
            )
        )
    return statuses


def _plan_summary(plan: Plan) -> str:
    parts = [f"{t.name} {t.replicas}x{t.cap_watts}W" for t in plan.targets]
    return f"planned {plan.watts:g} W of {plan.budget_watts:g} W: " + ", ".join(parts)


def _plan_changed(old: BudgetStatus | None, new: Sequence[TargetStatus]) -> bool:
    if old is None:
        return True
    before = {(t.name, t.planned_replicas, t.cap_watts) for t in old.targets}
    return before != {(t.name, t.planned_replicas, t.cap_watts) for t in new}


def reconcile(observed: Observed, plan: Plan, now: str) -> Outcome:
    """The whole desired state of one budget: its status and the ordered writes (status included)."""
    spec = observed.spec
    budget = observed.budget
    target_pods = _select_pods(observed)
    enforce = spec.mode == Mode.ENFORCE
    phased = (
        order_writes(
            budget.name,
            spec,
            plan,
            observed.old_status,
            observed.workloads,
            target_pods,
            observed.pods,
            observed.measurements,
        )
        if enforce
        else []
    )
    enforcement = _enforcement(observed, plan, target_pods, phased) if enforce else None
    if enforcement is not None and enforcement.deferred:
        phased = [item for index, item in enumerate(phased) if index not in enforcement.deferred]

    # Pods counted as annotated in the status: those already right, and those capped before the status.
    annotated_after = {
        pod.name
        for found, target in zip(target_pods, spec.targets, strict=True)
        for pod in found.pods
        if pod.carries(
            pod_cap_watts(plan.target(target.name).cap_watts, measured_in(observed, target.name), pod.name),
            budget.name,
        )
    }
    annotated_after.update(
        w.pod for phase, w in phased if phase == Phase.CAPS_DOWN and isinstance(w, AnnotatePod)
    )
    targets = _target_statuses(
        spec, plan, observed.workloads, target_pods, annotated_after, observed.guard_memory
    )
    if enforcement is not None:
        targets = [
            t.model_copy(
                update={
                    "pods_enforced": enforcement.pods_enforced.get(t.name, 0),
                    "enforced_watts": _round(enforcement.target_watts.get(t.name, 0.0), 1),
                }
            )
            for t in targets
        ]
    signals = observed.signals
    if signals is not None:
        targets = [t.model_copy(update=signals.target_status(t.name)) for t in targets]
    ranges = {r.target: r for r in observed.cap_ranges}
    targets = [
        t.model_copy(update=inventory.target_status(ranges[t.name])) if t.name in ranges else t
        for t in targets
    ]
    targets = [
        t.model_copy(update=profiles.target_status(target.profile))
        for t, target in zip(targets, spec.targets, strict=True)
    ]
    targets = [
        t.model_copy(update={"measurement": TargetMeasurement(pod=m.pod, cap_watts=m.cap_watts, run=m.run)})
        if (m := observed.measurements.get(t.name)) is not None
        else t
        for t in targets
    ]

    updates: list[cond.ConditionUpdate] = []
    missing = {name: w for name, w in observed.workloads.items() if isinstance(w, WorkloadMissing)} | {
        t.name: None for t in spec.targets if t.name not in observed.workloads
    }
    if missing:
        first = next(iter(missing.items()))
        reason = first[1].reason if first[1] is not None else cond.REASON_WORKLOAD_NOT_FOUND
        message = "; ".join(
            f"target {name}: {w.message}" if w is not None else f"target {name}: workload not observed"
            for name, w in missing.items()
        )
        updates.append(cond.false(cond.TARGETS_RESOLVED, reason, message))
    else:
        updates.append(
            cond.true(
                cond.TARGETS_RESOLVED, cond.REASON_ALL_RESOLVED, f"{len(spec.targets)} target(s) resolved"
            )
        )

    if plan.binding:
        updates.append(
            cond.true(
                cond.BUDGET_BINDING,
                cond.REASON_BUDGET_LIMITS_SERVICE,
                f"the budget limits service to {plan.served_fraction:.1%} of demand: {plan.reason}",
            )
        )
    else:
        updates.append(cond.false(cond.BUDGET_BINDING, cond.REASON_DEMAND_MET, plan.reason or "demand met"))

    if plan.feasible:
        updates.append(cond.false(cond.INFEASIBLE, cond.REASON_FEASIBLE, "the plan fits within the budget"))
    else:
        updates.append(
            cond.true(
                cond.INFEASIBLE,
                cond.REASON_FLOOR_EXCEEDS_BUDGET,
                f"every target at minReplicas and capWatts.min needs {plan.watts:g} W, "
                f"{plan.infeasible_by_watts:g} W over the budget of {plan.budget_watts:g} W; "
                "the plan holds that floor",
            )
        )

    contested = [(found.target, pod, owner) for found in target_pods for pod, owner in found.contested]
    if contested:
        named = ", ".join(
            f"pod {budget.namespace}/{pod} (target {target}) is owned by older budget {owner}"
            for target, pod, owner in contested[:MAX_NAMED_CONFLICTS]
        )
        more = len(contested) - MAX_NAMED_CONFLICTS
        suffix = f" and {more} more" if more > 0 else ""
        updates.append(
            cond.true(
                cond.CONFLICT,
                cond.REASON_POD_OWNED_ELSEWHERE,
                f"{named}{suffix}; this budget leaves those targets alone",
            )
        )
    else:
        updates.append(
            cond.false(cond.CONFLICT, cond.REASON_NO_CONFLICT, "no pod is selected by another budget")
        )

    pending = [w for phase, w in phased if phase != Phase.CAPS_DOWN]
    # Replicas whose pods do not exist yet will need their caps too.
    unseen = sum(
        max(0, plan.target(found.target).replicas - len(found.pods))
        for found in target_pods
        if isinstance(observed.workloads.get(found.target), WorkloadState) and not found.contested
    )
    running = sum(len(found.pods) for found in target_pods)
    pods_enforced = sum(enforcement.pods_enforced.values()) if enforcement is not None else 0
    stalled, recheck = (
        _stalled_condition(observed, enforcement.unconfirmed)
        if enforcement is not None
        else (
            cond.false(cond.ENFORCEMENT_STALLED, cond.REASON_NOT_ENFORCING, "Advisory: nothing is enforced"),
            None,
        )
    )
    conflict = updates[-1]
    updates.append(stalled)
    domain = observed.domain
    if domain is not None:
        updates.append(domain.admitted)
        updates.append(_outside_domain(observed, target_pods, domain))
    if missing:
        ready = cond.false(cond.READY, cond.REASON_WORKLOAD_NOT_FOUND, updates[0].message)
    elif contested:
        ready = cond.false(cond.READY, cond.REASON_POD_OWNED_ELSEWHERE, conflict.message)
    elif domain is not None and domain.admitted.status != ConditionStatus.TRUE:
        ready = cond.false(cond.READY, domain.admitted.reason, domain.admitted.message)
    elif not plan.feasible:
        ready = cond.false(cond.READY, cond.REASON_FLOOR_EXCEEDS_BUDGET, updates[2].message)
    elif not enforce:
        ready = cond.true(
            cond.READY, cond.REASON_ADVISORY, _plan_summary(plan) + " (advisory: nothing enforced)"
        )
    elif (
        pending
        or unseen
        or (enforcement is not None and enforcement.held_raises)
        or pods_enforced < running
        or (domain is not None and domain.waiting)
    ):
        held = enforcement.held_raises if enforcement is not None else 0
        waiting = (
            f"{held} raise(s) held until the lowered caps are confirmed "
            f"({enforcement.prospective_watts:g} W could be held now, budget {plan.budget_watts:g} W); "
            if enforcement is not None and held
            else ""
        )
        if domain is not None and domain.waiting:
            waiting = f"{domain.waiting}; {waiting}"
        ready = cond.false(
            cond.READY,
            cond.REASON_ENFORCING,
            f"{waiting}{len(pending)} write(s) in progress, {unseen} planned pod(s) not created yet, "
            f"{pods_enforced} of {running} pod(s) confirmed on the hardware; " + _plan_summary(plan),
        )
    else:
        ready = cond.true(
            cond.READY,
            cond.REASON_ENFORCED,
            _plan_summary(plan) + f"; every pod's GPUs hold it ({pods_enforced} pod(s) confirmed)",
        )
    updates.insert(0, ready)

    old = observed.old_status
    # A budget that no longer reads Prometheus loses its MetricsAvailable condition rather than keeping
    # a stale one.
    old_conditions = [
        c for c in (old.conditions if old else []) if signals is not None or c.type != METRICS_AVAILABLE
    ]
    status = BudgetStatus(
        observed_generation=budget.generation,
        conditions=cond.merge_conditions(
            old_conditions,
            [
                *updates,
                *([signals.condition] if signals is not None and signals.condition else []),
                *(inventory.conditions(observed.cap_ranges) if observed.cap_ranges else []),
            ],
            budget.generation,
            now,
        ),
        strategy=str(plan.strategy),
        budget_watts=math.floor(plan.budget_watts),
        planned_watts=_round(plan.watts, 1),
        enforced_watts=_round(enforcement.enforced_watts, 1) if enforcement is not None else None,
        caps_watts=_round(plan.caps_watts, 1),
        caps_limit_watts=_round(
            plan.cap_budget_watts if plan.cap_budget_watts is not None else plan.budget_watts, 1
        ),
        planned_draw_watts=_round(plan.watts, 1),
        observed_watts=None
        if signals is None or signals.observed_watts is None
        else _round(signals.observed_watts, 1),
        utilization=_round(plan.utilization),
        served_fraction=_round(plan.served_fraction),
        replicas=f"{sum(t.planned_replicas for t in targets)}/{sum(t.desired_replicas for t in targets)}",
        reason=plan.reason,
        targets=targets,
        domain=domain.status if domain is not None else None,
    )

    events: list[Event] = []
    if _plan_changed(old, targets):
        events.append(Event("Normal", "PlanChanged", _plan_summary(plan)))
    old_conflict = old.condition(cond.CONFLICT) if old else None
    if contested and (old_conflict is None or old_conflict.status != ConditionStatus.TRUE):
        events.append(Event("Warning", "Conflict", conflict.message))
    old_stalled = old.condition(cond.ENFORCEMENT_STALLED) if old else None
    if stalled.status == ConditionStatus.TRUE and (
        old_stalled is None or old_stalled.status != ConditionStatus.TRUE
    ):
        events.append(Event("Warning", cond.ENFORCEMENT_STALLED, stalled.message))

    if status_differs(old, status):
        phased.append((Phase.STATUS, WriteStatus(status)))
    steps = tuple(
        tuple(w for p, w in phased if p == phase) for phase in Phase if any(p == phase for p, _ in phased)
    )
    selectors = {name: w.selector for name, w in observed.workloads.items() if isinstance(w, WorkloadState)}
    return Outcome(
        status=status,
        steps=steps,
        events=tuple(events),
        selectors=selectors,
        unconfirmed=tuple(pod.name for pod in enforcement.unconfirmed) if enforcement is not None else (),
        recheck_seconds=recheck,
    )


def cap_error(spec: BudgetSpec, plan: Plan) -> InvalidSpecError | None:
    """A planned cap the pod contract cannot carry comes from a cap range the contract forbids."""
    for index, target in enumerate(spec.targets):
        cap_watts = plan.target(target.name).cap_watts
        if not 1 <= cap_watts <= MAX_CAP_WATTS:
            field_name = f"spec.targets[{index}].capWatts.max"
            return InvalidSpecError(field_name, f"a per-GPU cap must be within 1..{MAX_CAP_WATTS} W")
    return None


def _outside_domain(
    observed: Observed, target_pods: Sequence[_TargetPods], domain: DomainContext
) -> cond.ConditionUpdate:
    """OutsideDomain: the budget's pods on nodes its domain does not cover (they count where they run)."""
    name = domain.status.name
    if domain.nodes is None:
        return cond.false(
            cond.OUTSIDE_DOMAIN, cond.REASON_DOMAIN_UNKNOWN, f"the nodes of domain {name} are not known"
        )
    outside = sorted(
        f"{pod.name} on {pod.node_name}"
        for found in target_pods
        for pod in found.pods
        if pod.node_name and pod.node_name not in domain.nodes
    )
    if not outside:
        return cond.false(
            cond.OUTSIDE_DOMAIN, cond.REASON_ALL_INSIDE, f"every pod runs on a node of domain {name}"
        )
    shown = ", ".join(outside[:MAX_NAMED_CONFLICTS])
    more = len(outside) - MAX_NAMED_CONFLICTS
    return cond.true(
        cond.OUTSIDE_DOMAIN,
        cond.REASON_PODS_OUTSIDE_DOMAIN,
        f"pod(s) {shown}{f' and {more} more' if more > 0 else ''} run on nodes domain {name} does not cover: "
        "they keep their caps and count against the domain of the node they run on; pin the pods to the "
        "domain's nodes (nodeSelector or affinity)",
    )


def reconcile_invalid(
    budget: BudgetRef, old_status: BudgetStatus | None, error: InvalidSpecError, now: str
) -> Outcome:
    """A spec the models refuse: Ready=False naming the field; the last good plan and grants stay."""
    ready = cond.false(cond.READY, cond.REASON_INVALID_SPEC, f"{error}; fix the spec, nothing was changed")
    base = old_status or BudgetStatus()
    status = base.model_copy(
        update={
            "observed_generation": budget.generation,
            "conditions": cond.merge_conditions(base.conditions, [ready], budget.generation, now),
        }
    )
    steps: tuple[tuple[Write, ...], ...] = (
        ((WriteStatus(status),),) if status_differs(old_status, status) else ()
    )
    events = (Event("Warning", cond.REASON_INVALID_SPEC, str(error)),) if steps else ()
    return Outcome(status=status, steps=steps, events=events)


def reconcile_plan_failed(
    budget: BudgetRef,
    old_status: BudgetStatus | None,
    message: str,
    now: str,
    reason: str = cond.REASON_PLAN_FAILED,
    also: Sequence[cond.ConditionUpdate] = (),
) -> Outcome:
    """The planner refused the problem (or was given none): Ready=False with the message; grants stay."""
    ready = cond.false(cond.READY, reason, message)
    base = old_status or BudgetStatus()
    status = base.model_copy(
        update={
            "observed_generation": budget.generation,
            "conditions": cond.merge_conditions(base.conditions, [ready, *also], budget.generation, now),
        }
    )
    steps: tuple[tuple[Write, ...], ...] = (
        ((WriteStatus(status),),) if status_differs(old_status, status) else ()
    )
    return Outcome(status=status, steps=steps)


def release_writes(budget: str, pods: Sequence[PodState]) -> list[ReleasePod]:
    """On deletion: remove the annotations this budget wrote, from every pod that still carries them."""
    return [
        ReleasePod(pod.name, pod.saved_deletion_cost)
        for pod in sorted(pods, key=lambda p: p.name)
        if pod.budget_annotation == budget
    ]


def status_body(status: BudgetStatus) -> dict[str, object]:
    """The status as the API stores it (camelCase, no nulls)."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def status_differs(old: BudgetStatus | None, new: BudgetStatus) -> bool:
    return old is None or status_body(old) != status_body(new)
