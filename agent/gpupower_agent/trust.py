"""The trust rule: which per-GPU cap a pod gets, so that no pod can raise its own power.

A pod annotated ``gpupower.dev/budget: B`` and ``gpupower.dev/power-limit-watts: C``
is trusted only when budget B exists in the pod's namespace and one of B's status
targets selects the pod with ``capWatts >= C``; then the pod's cap is C. Anything
else (budget missing, no granting target, C above the grant, C unparsable, only
one of the two annotations) caps the pod at the safe default: B's
``safeDefaultWatts`` when B exists, else the agent's own. A pod without the
annotations that a budget's status target selects (a replica the operator has
not annotated yet) gets that budget's safe default at once. Pods neither
annotated nor selected are not managed.

Budgets in Advisory mode change nothing on the fleet: the agent ignores them,
so they select and grant nothing, and a pod naming one is not managed.

The operator lowers caps on pods before it lowers a grant, and raises a grant
before the caps, so a correct operator never trips this rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gpupower_agent.cluster import BudgetView, PodKey, PodView
from gpupower_api.contract import InvalidCapError, parse_power_limit


class Verdict(StrEnum):
    TRUSTED = "trusted"
    AWAITING_CAP = "awaiting_cap"  # selected by a budget, no cap yet: safe default, no warning
    UNTRUSTED = "untrusted"  # safe default, warning and metric


class UntrustedReason(StrEnum):
    BUDGET_MISSING = "budget_missing"
    NO_GRANT = "no_grant"
    ABOVE_GRANT = "above_grant"
    UNPARSABLE = "unparsable"
    NO_BUDGET_ANNOTATION = "no_budget_annotation"


@dataclass(frozen=True)
class PodCap:
    """The cap a managed pod is entitled to, and why."""

    pod: PodKey
    cap_watts: int
    safe_default_watts: int
    verdict: Verdict
    reason: UntrustedReason | None = None
    detail: str = ""


@dataclass(frozen=True)
class BudgetIndex:
    """Budgets by namespace and name."""

    by_namespace: Mapping[str, Mapping[str, BudgetView]]

    @staticmethod
    def build(budgets: Iterable[BudgetView]) -> BudgetIndex:
        index: dict[str, dict[str, BudgetView]] = {}
        for budget in budgets:
            index.setdefault(budget.namespace, {})[budget.name] = budget
        return BudgetIndex(index)

    def get(self, namespace: str, name: str) -> BudgetView | None:
        return self.by_namespace.get(namespace, {}).get(name)

    def enforcing_in(self, namespace: str) -> Iterable[BudgetView]:
        """The namespace's budgets in Enforce mode (Advisory ones change nothing on the fleet)."""
        return (b for b in self.by_namespace.get(namespace, {}).values() if not b.advisory)


def _safe_default(budget: BudgetView | None, agent_default_watts: int) -> int:
    if budget is not None and budget.safe_default_watts is not None:
        return budget.safe_default_watts
    return agent_default_watts


def _highest_grant(budget: BudgetView, pod: PodView) -> int | None:
    caps = [grant.cap_watts for grant in budget.grants if grant.selector.matches(pod.labels)]
    return max(caps) if caps else None


def pod_cap(pod: PodView, budgets: BudgetIndex, agent_default_watts: int) -> PodCap | None:
    """The cap ``pod`` gets under the trust rule, or ``None`` when no budget manages it."""
    namespace = pod.key.namespace
    if not pod.annotated:
        selecting = [b for b in budgets.enforcing_in(namespace) if _highest_grant(b, pod) is not None]
        if not selecting:
            return None
        safe = min(_safe_default(b, agent_default_watts) for b in selecting)
        return PodCap(pod.key, safe, safe, Verdict.AWAITING_CAP, detail="selected by a budget, no cap yet")

    if pod.budget_name is None:
        selecting = [b for b in budgets.enforcing_in(namespace) if _highest_grant(b, pod) is not None]
        safe = min((_safe_default(b, agent_default_watts) for b in selecting), default=agent_default_watts)
        return PodCap(
            pod.key,
            safe,
            safe,
            Verdict.UNTRUSTED,
            UntrustedReason.NO_BUDGET_ANNOTATION,
            "cap annotation without a budget annotation",
        )

    budget = budgets.get(namespace, pod.budget_name)
    if budget is not None and budget.advisory:
        return None
    safe = _safe_default(budget, agent_default_watts)

    def untrusted(reason: UntrustedReason, detail: str) -> PodCap:
        return PodCap(pod.key, safe, safe, Verdict.UNTRUSTED, reason, detail)

    if budget is None:
        return untrusted(UntrustedReason.BUDGET_MISSING, f"budget {pod.budget_name!r} not found")
    grant = _highest_grant(budget, pod)
    if pod.cap_value is None:
        if grant is not None:
            return PodCap(pod.key, safe, safe, Verdict.AWAITING_CAP, detail="budget annotation, no cap yet")
        return untrusted(UntrustedReason.NO_GRANT, f"no target of budget {budget.name!r} selects the pod")
    try:
        cap_watts = parse_power_limit(pod.cap_value)
    except InvalidCapError as error:
        return untrusted(UntrustedReason.UNPARSABLE, str(error))
    if grant is None:
        return untrusted(UntrustedReason.NO_GRANT, f"no target of budget {budget.name!r} selects the pod")
    if cap_watts > grant:
        return untrusted(UntrustedReason.ABOVE_GRANT, f"cap {cap_watts} W above the grant of {grant} W")
    return PodCap(pod.key, cap_watts, safe, Verdict.TRUSTED)


def pod_caps(pods: Iterable[PodView], budgets: BudgetIndex, agent_default_watts: int) -> dict[PodKey, PodCap]:
    """The caps of the managed pods among ``pods`` (finished pods hold no GPU and are skipped)."""
    caps: dict[PodKey, PodCap] = {}
    for pod in pods:
        if pod.finished:
            continue
        cap = pod_cap(pod, budgets, agent_default_watts)
        if cap is not None:
            caps[pod.key] = cap
    return caps
