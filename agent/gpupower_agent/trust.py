"""The trust rule: which per-GPU cap a pod gets, so that no pod can raise its own power.

The budget that manages a pod is decided by selection, never by the pod: it is
the oldest Enforce budget in the pod's namespace whose status has a target
selecting the pod (the operator's ownership rule: the older budget wins). That
target's cap is the pod's *grant*. Then:

- the pod carries ``gpupower.dev/budget`` naming that budget and a
  ``gpupower.dev/power-limit-watts`` cap C with C <= grant: its cap is C (trusted);
- the pod carries no annotation yet (a new replica): the lower of the grant and
  the budget's safe default, at once (awaiting its cap);
- anything else (C above the grant, C unparsable, no cap, the budget annotation
  naming another budget, a missing one or an Advisory one): the lower of the
  grant and the safe default, with a warning (untrusted).

So a selected pod never holds more than its grant, whatever it writes on itself.
While a profile run measures one pod of a target, the budget's status grants
that pod (by name, in ``targets[].measurement``) its own cap; that is then its
grant, and only its: the other pods of the target keep the target's.

A pod that no Enforce budget selects is managed only if it carries the
annotations (a pod the operator has not released yet, or one claiming a cap):
it gets the safe default of the budget it names (the agent's own when that
budget does not exist) and a warning; a pod naming an Advisory budget, or
neither annotated nor selected, is not managed. Budgets in Advisory mode change
nothing on the fleet: they select and grant nothing.

The operator lowers caps on pods before it lowers a grant, and raises a grant
before the caps, so a correct operator never trips this rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from gpupower_agent.cluster import BudgetView, Grant, PodKey, PodView
from gpupower_api.contract import InvalidCapError, parse_power_limit


class Verdict(StrEnum):
    TRUSTED = "trusted"
    AWAITING_CAP = "awaiting_cap"  # selected by a budget, no cap yet: grant or safe default, no warning
    UNTRUSTED = "untrusted"  # grant or safe default, warning and metric


class UntrustedReason(StrEnum):
    BUDGET_MISSING = "budget_missing"
    NO_GRANT = "no_grant"
    ABOVE_GRANT = "above_grant"
    UNPARSABLE = "unparsable"
    NO_BUDGET_ANNOTATION = "no_budget_annotation"
    OTHER_BUDGET = "other_budget"  # selected by one budget, names another (missing and Advisory included)
    NO_CAP = "no_cap"  # names its budget but carries no cap


@dataclass(frozen=True)
class PodCap:
    """The cap a managed pod is entitled to, and why."""

    pod: PodKey
    cap_watts: int
    safe_default_watts: int
    verdict: Verdict
    reason: UntrustedReason | None = None
    detail: str = ""
    budget: tuple[str, str] | None = None  # (namespace, name) of the budget that manages the pod
    gpu_draw_watts: float | None = None  # oversubscribed: what each of its GPUs is planned to draw


@dataclass(frozen=True)
class BudgetIndex:
    """Budgets by namespace and name."""

    by_namespace: Mapping[str, Mapping[str, BudgetView]]
    enforcing: Mapping[str, tuple[BudgetView, ...]]  # per namespace, Enforce budgets oldest first

    @staticmethod
    def build(budgets: Iterable[BudgetView]) -> BudgetIndex:
        index: dict[str, dict[str, BudgetView]] = {}
        for budget in budgets:
            index.setdefault(budget.namespace, {})[budget.name] = budget
        enforcing = {
            namespace: tuple(
                sorted((b for b in named.values() if not b.advisory), key=lambda b: (b.created, b.name))
            )
            for namespace, named in index.items()
        }
        return BudgetIndex(index, enforcing)

    def get(self, namespace: str, name: str) -> BudgetView | None:
        return self.by_namespace.get(namespace, {}).get(name)

    def enforcing_in(self, namespace: str) -> tuple[BudgetView, ...]:
        """The namespace's budgets in Enforce mode, oldest first (Advisory ones change nothing)."""
        return self.enforcing.get(namespace, ())


def _safe_default(budget: BudgetView | None, agent_default_watts: int) -> int:
    if budget is not None and budget.safe_default_watts is not None:
        return budget.safe_default_watts
    return agent_default_watts


def _highest_grant(budget: BudgetView, pod: PodView) -> Grant | None:
    grants = [grant for grant in budget.grants if grant.selector.matches(pod.labels)]
    return max(grants, key=lambda grant: grant.cap_for(pod.key.name)) if grants else None


def _managing(pod: PodView, budgets: BudgetIndex) -> tuple[BudgetView, Grant] | None:
    for budget in budgets.enforcing_in(pod.key.namespace):
        grant = _highest_grant(budget, pod)
        if grant is not None:
            return budget, grant
    return None


def managing_budget(pod: PodView, budgets: BudgetIndex) -> tuple[BudgetView, int] | None:
    """The budget that manages ``pod`` and its grant: the oldest Enforce budget whose status selects it."""
    found = _managing(pod, budgets)
    return None if found is None else (found[0], found[1].cap_for(pod.key.name))


def _selected_cap(pod: PodView, budget: BudgetView, grant: int, agent_default_watts: int) -> PodCap:
    fallback = min(grant, _safe_default(budget, agent_default_watts))
    owner = (budget.namespace, budget.name)

    def untrusted(reason: UntrustedReason, detail: str) -> PodCap:
        return PodCap(pod.key, fallback, fallback, Verdict.UNTRUSTED, reason, detail, owner)

    if not pod.annotated:
        return PodCap(
            pod.key,
            fallback,
            fallback,
            Verdict.AWAITING_CAP,
            detail="selected by a budget, no cap yet",
            budget=owner,
        )
    if pod.budget_name != budget.name:
        named = "no budget" if pod.budget_name is None else f"budget {pod.budget_name!r}"
        return untrusted(
            UntrustedReason.OTHER_BUDGET,
            f"selected by budget {budget.name!r}, but its annotation names {named}",
        )
    if pod.cap_value is None:
        return PodCap(
            pod.key,
            fallback,
            fallback,
            Verdict.AWAITING_CAP,
            detail="budget annotation, no cap yet",
            budget=owner,
        )
    try:
        cap_watts = parse_power_limit(pod.cap_value)
    except InvalidCapError as error:
        return untrusted(UntrustedReason.UNPARSABLE, str(error))
    if cap_watts > grant:
        return untrusted(UntrustedReason.ABOVE_GRANT, f"cap {cap_watts} W above the grant of {grant} W")
    return PodCap(pod.key, cap_watts, fallback, Verdict.TRUSTED, budget=owner)


def _unselected_cap(pod: PodView, budgets: BudgetIndex, agent_default_watts: int) -> PodCap | None:
    if not pod.annotated:
        return None
    if pod.budget_name is None:
        safe = agent_default_watts
        return PodCap(
            pod.key,
            safe,
            safe,
            Verdict.UNTRUSTED,
            UntrustedReason.NO_BUDGET_ANNOTATION,
            "cap annotation without a budget annotation",
        )
    budget = budgets.get(pod.key.namespace, pod.budget_name)
    if budget is not None and budget.advisory:
        return None
    safe = _safe_default(budget, agent_default_watts)
    if budget is None:
        reason, detail = UntrustedReason.BUDGET_MISSING, f"budget {pod.budget_name!r} not found"
    else:
        reason, detail = UntrustedReason.NO_GRANT, f"no target of budget {budget.name!r} selects the pod"
    return PodCap(pod.key, safe, safe, Verdict.UNTRUSTED, reason, detail)


def pod_cap(pod: PodView, budgets: BudgetIndex, agent_default_watts: int) -> PodCap | None:
    """The cap ``pod`` gets under the trust rule, or ``None`` when no budget manages it."""
    managing = _managing(pod, budgets)
    if managing is None:
        return _unselected_cap(pod, budgets, agent_default_watts)
    budget, grant = managing
    cap = _selected_cap(pod, budget, grant.cap_for(pod.key.name), agent_default_watts)
    if budget.oversubscription is not None and grant.gpu_draw_watts is not None:
        cap = replace(cap, gpu_draw_watts=grant.gpu_draw_watts)
    return cap


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
