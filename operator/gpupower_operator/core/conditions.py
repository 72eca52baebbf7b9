"""The status conditions of a GpuPowerBudget: their types, reasons, and how a new set replaces the old.

Reasons are stable CamelCase words a program can branch on; messages are for people.
``lastTransitionTime`` only moves when a condition's status flips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpupower_api.models import Condition, ConditionStatus

READY = "Ready"
TARGETS_RESOLVED = "TargetsResolved"
BUDGET_BINDING = "BudgetBinding"
INFEASIBLE = "Infeasible"
CONFLICT = "Conflict"
ENFORCEMENT_STALLED = "EnforcementStalled"
# Budgets of a power domain only.
DOMAIN_ADMITTED = "DomainAdmitted"
OUTSIDE_DOMAIN = "OutsideDomain"

# The order conditions are listed in status.
ORDER = (
    READY,
    TARGETS_RESOLVED,
    BUDGET_BINDING,
    INFEASIBLE,
    CONFLICT,
    ENFORCEMENT_STALLED,
    DOMAIN_ADMITTED,
    OUTSIDE_DOMAIN,
)

# Ready
REASON_ENFORCED = "Enforced"
REASON_ADVISORY = "Advisory"
REASON_ENFORCING = "Enforcing"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_PLAN_FAILED = "PlanFailed"
# TargetsResolved
REASON_ALL_RESOLVED = "AllTargetsResolved"
REASON_WORKLOAD_NOT_FOUND = "WorkloadNotFound"
REASON_NO_SCALE = "NoScaleSubresource"
REASON_NO_SELECTOR = "NoSelector"
# BudgetBinding
REASON_BUDGET_LIMITS_SERVICE = "BudgetLimitsService"
REASON_DEMAND_MET = "DemandMet"
# Infeasible
REASON_FLOOR_EXCEEDS_BUDGET = "FloorExceedsBudget"
REASON_FEASIBLE = "Feasible"
# Conflict
REASON_POD_OWNED_ELSEWHERE = "PodOwnedByOtherBudget"
REASON_NO_CONFLICT = "NoConflict"
# EnforcementStalled
REASON_PODS_UNCONFIRMED = "PodsUnconfirmed"
REASON_AWAITING_CONFIRMATION = "AwaitingConfirmation"
REASON_CONFIRMED = "AllConfirmed"
REASON_NOT_ENFORCING = "NotEnforcing"
# OutsideDomain
REASON_PODS_OUTSIDE_DOMAIN = "PodsOutsideDomain"
REASON_ALL_INSIDE = "AllPodsInside"
REASON_DOMAIN_UNKNOWN = "DomainNodesUnknown"


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition as a reconcile decides it, before transition times are attached."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


def true(type_: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(type_, ConditionStatus.TRUE, reason, message)


def false(type_: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(type_, ConditionStatus.FALSE, reason, message)


def merge_conditions(
    old: Sequence[Condition],
    updates: Sequence[ConditionUpdate],
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Old conditions with ``updates`` applied; a condition keeps its transition time unless it flips."""
    by_type = {condition.type: condition for condition in old}
    for update in updates:
        before = by_type.get(update.type)
        transitioned = before is None or before.status != update.status
        by_type[update.type] = Condition(
            type=update.type,
            status=update.status,
            reason=update.reason,
            message=update.message,
            observed_generation=generation,
            last_transition_time=now if transitioned or before is None else before.last_transition_time,
        )
    known = [by_type.pop(type_) for type_ in ORDER if type_ in by_type]
    return known + sorted(by_type.values(), key=lambda condition: condition.type)
