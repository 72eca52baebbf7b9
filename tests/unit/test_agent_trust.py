"""The trust rule: a pod cannot raise its own power by annotating itself."""

from __future__ import annotations

from typing import Any

import pytest

from gpupower_agent.cluster import BudgetView, Grant, PodKey, PodView, budget_view, pod_view
from gpupower_agent.trust import BudgetIndex, UntrustedReason, Verdict, pod_cap
from gpupower_api.selectors import parse_selector

AGENT_DEFAULT = 250


def pod(
    labels: dict[str, str], budget: str | None = None, value: str | None = None, ns: str = "ns"
) -> PodView:
    return PodView(PodKey(ns, "p"), "uid", labels, budget, value, finished=False)


def budgets(*views: BudgetView) -> BudgetIndex:
    return BudgetIndex.build(views)


LLM = BudgetView(
    "ns",
    "llm",
    300,
    (
        Grant("decode", parse_selector("app=llm,role=decode"), 500),
        Grant("prefill", parse_selector("app=llm,role in (prefill)"), 400),
    ),
)
OTHER = BudgetView("ns", "other", 280, (Grant("decode", parse_selector("app=llm,role=decode"), 450),))
DECODE = {"app": "llm", "role": "decode"}


@pytest.mark.parametrize(
    ("view", "index", "verdict", "reason", "watts"),
    [
        (pod(DECODE, "llm", "450"), budgets(LLM), Verdict.TRUSTED, None, 450),
        (pod(DECODE, "llm", "500"), budgets(LLM), Verdict.TRUSTED, None, 500),
        (pod(DECODE, "llm", "501"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.ABOVE_GRANT, 300),
        (pod(DECODE, "gone", "450"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.BUDGET_MISSING, 250),
        # a budget of the same name in another namespace grants nothing here
        (
            pod(DECODE, "llm", "450", ns="x"),
            budgets(LLM),
            Verdict.UNTRUSTED,
            UntrustedReason.BUDGET_MISSING,
            250,
        ),
        (pod({"app": "web"}, "llm", "450"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.NO_GRANT, 300),
        (pod(DECODE, "llm", "450W"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", "-1"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", "99999"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", ""), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (
            pod(DECODE, None, "450"),
            budgets(LLM),
            Verdict.UNTRUSTED,
            UntrustedReason.NO_BUDGET_ANNOTATION,
            300,
        ),
        (
            pod({"app": "web"}, None, "450"),
            budgets(LLM),
            Verdict.UNTRUSTED,
            UntrustedReason.NO_BUDGET_ANNOTATION,
            250,
        ),
        # a budget annotation but no cap yet, and a target selects the pod: waiting for the operator
        (pod(DECODE, "llm", None), budgets(LLM), Verdict.AWAITING_CAP, None, 300),
        (pod({"app": "web"}, "llm", None), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.NO_GRANT, 300),
        # a new replica: no annotations, selected -> the safe default at once
        (pod(DECODE), budgets(LLM), Verdict.AWAITING_CAP, None, 300),
        # selected by two budgets: the lower safe default
        (pod(DECODE), budgets(LLM, OTHER), Verdict.AWAITING_CAP, None, 280),
        # a grant of another budget does not vouch for this budget's pod
        (
            pod({"app": "llm", "role": "prefill"}, "other", "400"),
            budgets(LLM, OTHER),
            Verdict.UNTRUSTED,
            UntrustedReason.NO_GRANT,
            280,
        ),
        # the highest grant of the budget's targets that select the pod counts
        (pod({"app": "llm", "role": "prefill"}, "llm", "400"), budgets(LLM), Verdict.TRUSTED, None, 400),
    ],
)
def test_trust_rule_table(
    view: PodView, index: BudgetIndex, verdict: Verdict, reason: UntrustedReason | None, watts: int
) -> None:
    result = pod_cap(view, index, AGENT_DEFAULT)
    assert result is not None
    assert (result.verdict, result.reason, result.cap_watts) == (verdict, reason, watts)


ADVISORY = BudgetView("ns", "preview", 200, (Grant("decode", parse_selector("app=llm"), 450),), advisory=True)


def test_an_advisory_budget_changes_nothing_on_the_fleet() -> None:
    # it selects no new replica, vouches for no cap, and a pod naming it is not managed
    assert pod_cap(pod(DECODE), budgets(ADVISORY), AGENT_DEFAULT) is None
    assert pod_cap(pod(DECODE, "preview", "450"), budgets(ADVISORY), AGENT_DEFAULT) is None
    # beside an enforcing budget, only the enforcing one counts
    result = pod_cap(pod(DECODE), budgets(ADVISORY, LLM), AGENT_DEFAULT)
    assert result is not None and result.cap_watts == 300


def test_budget_view_reads_the_mode_even_from_an_invalid_spec() -> None:
    raw = raw_budget({})
    raw["spec"]["mode"] = "Advisory"
    assert budget_view(raw).advisory
    raw["spec"]["safeDefaultWatts"] = "high"
    assert budget_view(raw).advisory
    assert not budget_view(raw_budget({})).advisory


def test_pods_neither_annotated_nor_selected_are_not_managed() -> None:
    assert pod_cap(pod({"app": "web"}), budgets(LLM), AGENT_DEFAULT) is None
    assert pod_cap(pod(DECODE), budgets(), AGENT_DEFAULT) is None


def test_a_budget_with_an_unknown_safe_default_falls_back_to_the_agents() -> None:
    broken = BudgetView("ns", "llm", None, ())
    result = pod_cap(pod(DECODE, "llm", "450"), budgets(broken), AGENT_DEFAULT)
    assert result is not None
    assert (result.verdict, result.cap_watts) == (Verdict.UNTRUSTED, AGENT_DEFAULT)


def raw_budget(status: Any, safe: Any = 300) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llm", "namespace": "ns"},
        "spec": {
            "totalWatts": 1000,
            "safeDefaultWatts": safe,
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "maxReplicas": 2,
                    "profile": {"points": [{"watts": 200, "throughput": 1}]},
                }
            ],
        },
        "status": status,
    }


def target_status(selector: str | None, cap: Any) -> dict[str, Any]:
    return {
        "name": "decode",
        "selector": selector,
        "desiredReplicas": 1,
        "plannedReplicas": 1,
        "capWatts": cap,
        "projectedWatts": 1.0,
        "capacity": 1.0,
        "servedFraction": 1.0,
    }


def test_budget_view_reads_grants_from_status() -> None:
    view = budget_view(raw_budget({"targets": [target_status("app=llm", 450)]}))
    assert view.safe_default_watts == 300
    assert [(g.target_name, g.cap_watts) for g in view.grants] == [("decode", 450)]


@pytest.mark.parametrize(
    "status",
    [
        None,
        {},
        {"targets": [target_status(None, 450)]},
        {"targets": [target_status("app in (", 450)]},
        {"targets": [target_status("app=llm", "lots")]},
        {"targets": "nonsense"},
    ],
)
def test_a_missing_or_bad_status_grants_nothing(status: Any) -> None:
    assert budget_view(raw_budget(status)).grants == ()


def test_a_bad_spec_leaves_the_safe_default_unknown() -> None:
    assert budget_view(raw_budget({}, safe="high")).safe_default_watts is None


def test_pod_view_reads_the_contract_annotations() -> None:
    view = pod_view(
        {
            "metadata": {
                "name": "p",
                "namespace": "ns",
                "uid": "u-1",
                "labels": {"app": "llm"},
                "annotations": {"gpupower.dev/budget": "llm", "gpupower.dev/power-limit-watts": "450"},
            },
            "status": {"phase": "Running"},
        }
    )
    assert (view.key, view.uid, view.budget_name, view.cap_value, view.finished) == (
        PodKey("ns", "p"),
        "u-1",
        "llm",
        "450",
        False,
    )
    assert pod_view({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Succeeded"}}).finished
