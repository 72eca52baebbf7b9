"""The reconcile decision: from what is observed now and a plan, the status to write and the writes to make.

Pure: no I/O, no clock (the caller passes ``now``). The shell (``handlers.py``)
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from gpupower_api.contract import (
    BUDGET_ANNOTATION,
    MAX_CAP_WATTS,
    POWER_LIMIT_ANNOTATION,
    format_power_limit,
)
from gpupower_api.models import (
    BudgetSpec,
    BudgetStatus,
    ConditionStatus,
    InvalidSpecError,
    Mode,
    TargetStatus,
    WorkloadRef,
)
from gpupower_api.selectors import InvalidSelectorError, Selector, parse_selector
from gpupower_operator import conditions as cond
from gpupower_operator import inventory, profiles
from gpupower_operator.planner import Plan
from gpupower_operator.signals import METRICS_AVAILABLE, Signals

MAX_NAMED_CONFLICTS = 3


# ---------------------------------------------------------------------------
# What is observed


@dataclass(frozen=True)
class PodState:
    """A pod as the operator sees it: labels, the two contract annotations, liveness."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cap_annotation: str | None = None
    budget_annotation: str | None = None
    phase: str = "Pending"
    deleting: bool = False
    node_name: str | None = None  # the node it is bound to; None while pending
    node_selector: Mapping[str, str] = field(default_factory=dict)

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
class Observed:
    budget: BudgetRef
    spec: BudgetSpec
    old_status: BudgetStatus | None
    workloads: Mapping[str, WorkloadState | WorkloadMissing]
    pods: Sequence[PodState]
    others: Sequence[OtherBudget] = ()
    signals: Signals | None = None  # from Prometheus, when the budget reads it
    cap_ranges: Sequence[inventory.EffectiveRange] = ()  # each target's range after its nodes' limits


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
    """Remove the contract annotations from a pod the budget no longer owns."""

    pod: str

    def annotations(self) -> dict[str, str | None]:
        return {POWER_LIMIT_ANNOTATION: None, BUDGET_ANNOTATION: None}


@dataclass(frozen=True)
class ScaleWorkload:
    target: str
    workload: WorkloadRef
    from_replicas: int
    to_replicas: int


@dataclass(frozen=True)
class WriteStatus:
    status: BudgetStatus


Write = AnnotatePod | ReleasePod | ScaleWorkload | WriteStatus


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


def _granted_watts(old_status: BudgetStatus | None, target: str) -> int | None:
    if old_status is None:
        return None
    granted = old_status.target(target)
    return granted.cap_watts if granted is not None else None


def order_writes(
    budget: str,
    spec: BudgetSpec,
    plan: Plan,
    old_status: BudgetStatus | None,
    workloads: Mapping[str, WorkloadState | WorkloadMissing],
    target_pods: Sequence[_TargetPods],
    all_pods: Sequence[PodState],
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
        granted = _granted_watts(old_status, target.name)
        for pod in found.pods:
            if pod.carries(planned.cap_watts, budget):
                continue
            current = pod.cap_watts_from(budget)
            trusted_now = current is not None and granted is not None and current <= granted
            lowers = granted is not None and planned.cap_watts <= granted
            if trusted_now and current is not None and planned.cap_watts > current:
                lowers = False
            phase = Phase.CAPS_DOWN if lowers else Phase.CAPS_UP
            writes.append((phase, AnnotatePod(pod.name, target.name, planned.cap_watts, budget, current)))
    for pod in sorted(all_pods, key=lambda p: p.name):
        if pod.name not in selected and pod.budget_annotation == budget and not pod.deleting:
            writes.append((Phase.RELEASE, ReleasePod(pod.name)))
    return writes


def _round(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def _target_statuses(
    spec: BudgetSpec,
    plan: Plan,
    workloads: Mapping[str, WorkloadState | WorkloadMissing],
    target_pods: Sequence[_TargetPods],
    annotated_after: set[str],
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
            budget.name, spec, plan, observed.old_status, observed.workloads, target_pods, observed.pods
        )
        if enforce
        else []
    )

    # Pods counted as annotated in the status: those already right, and those capped before the status.
    annotated_after = {
        pod.name
        for found, target in zip(target_pods, spec.targets, strict=True)
        for pod in found.pods
        if pod.carries(plan.target(target.name).cap_watts, budget.name)
    }
    annotated_after.update(
        w.pod for phase, w in phased if phase == Phase.CAPS_DOWN and isinstance(w, AnnotatePod)
    )
    targets = _target_statuses(spec, plan, observed.workloads, target_pods, annotated_after)
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
    if missing:
        ready = cond.false(cond.READY, cond.REASON_WORKLOAD_NOT_FOUND, updates[0].message)
    elif contested:
        ready = cond.false(cond.READY, cond.REASON_POD_OWNED_ELSEWHERE, updates[-1].message)
    elif not plan.feasible:
        ready = cond.false(cond.READY, cond.REASON_FLOOR_EXCEEDS_BUDGET, updates[2].message)
    elif not enforce:
        ready = cond.true(
            cond.READY, cond.REASON_ADVISORY, _plan_summary(plan) + " (advisory: nothing enforced)"
        )
    elif pending or unseen:
        ready = cond.false(
            cond.READY,
            cond.REASON_ENFORCING,
            f"{len(pending)} write(s) in progress, {unseen} planned pod(s) not created yet; "
            + _plan_summary(plan),
        )
    else:
        ready = cond.true(cond.READY, cond.REASON_ENFORCED, _plan_summary(plan))
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
        budget_watts=spec.total_watts,
        planned_watts=_round(plan.watts, 1),
        observed_watts=None
        if signals is None or signals.observed_watts is None
        else _round(signals.observed_watts, 1),
        utilization=_round(plan.utilization),
        served_fraction=_round(plan.served_fraction),
        replicas=f"{sum(t.planned_replicas for t in targets)}/{sum(t.desired_replicas for t in targets)}",
        reason=plan.reason,
        targets=targets,
    )

    events: list[Event] = []
    if _plan_changed(old, targets):
        events.append(Event("Normal", "PlanChanged", _plan_summary(plan)))
    old_conflict = old.condition(cond.CONFLICT) if old else None
    if contested and (old_conflict is None or old_conflict.status != ConditionStatus.TRUE):
        events.append(Event("Warning", "Conflict", updates[-1].message))

    if status_differs(old, status):
        phased.append((Phase.STATUS, WriteStatus(status)))
    steps = tuple(
        tuple(w for p, w in phased if p == phase) for phase in Phase if any(p == phase for p, _ in phased)
    )
    selectors = {name: w.selector for name, w in observed.workloads.items() if isinstance(w, WorkloadState)}
    return Outcome(status=status, steps=steps, events=tuple(events), selectors=selectors)


def cap_error(spec: BudgetSpec, plan: Plan) -> InvalidSpecError | None:
    """A planned cap the pod contract cannot carry comes from a cap range the contract forbids."""
    for index, target in enumerate(spec.targets):
        cap_watts = plan.target(target.name).cap_watts
        if not 1 <= cap_watts <= MAX_CAP_WATTS:
            field_name = f"spec.targets[{index}].capWatts.max"
            return InvalidSpecError(field_name, f"a per-GPU cap must be within 1..{MAX_CAP_WATTS} W")
    return None


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
        ReleasePod(pod.name) for pod in sorted(pods, key=lambda p: p.name) if pod.budget_annotation == budget
    ]


def status_body(status: BudgetStatus) -> dict[str, object]:
    """The status as the API stores it (camelCase, no nulls)."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def status_differs(old: BudgetStatus | None, new: BudgetStatus) -> bool:
    return old is None or status_body(old) != status_body(new)
