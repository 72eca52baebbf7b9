"""The trust rule: a pod cannot raise its own power by annotating itself."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupower_agent.cluster import (
    BudgetView,
    Grant,
    PodKey,
    PodView,
    ReportedCondition,
    budget_view,
    pod_view,
)
from gpupower_agent.trust import BudgetIndex, UntrustedReason, Verdict, managing_budget, pod_cap
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
    created="2026-01-01T00:00:00Z",
)
OTHER = BudgetView(
    "ns",
    "other",
    280,
    (Grant("decode", parse_selector("app=llm,role=decode"), 450),),
    created="2026-02-01T00:00:00Z",
)
OLDER_OTHER = BudgetView(
    "ns",
    "other",
    280,
    (Grant("decode", parse_selector("app=llm,role=decode"), 450),),
    created="2025-12-01T00:00:00Z",
)
ADVISORY = BudgetView(
    "ns",
    "preview",
    200,
    (Grant("decode", parse_selector("app=llm"), 650),),
    advisory=True,
    created="2025-01-01T00:00:00Z",
)
# The README's example: a planned cap of 205 W under a safe default of 350 W.
LOW_GRANT = BudgetView("ns", "llm", 350, (Grant("decode", parse_selector("app=llm,role=decode"), 205),))
DECODE = {"app": "llm", "role": "decode"}
PREFILL = {"app": "llm", "role": "prefill"}


@pytest.mark.parametrize(
    ("view", "index", "verdict", "reason", "watts"),
    [
        (pod(DECODE, "llm", "450"), budgets(LLM), Verdict.TRUSTED, None, 450),
        (pod(DECODE, "llm", "500"), budgets(LLM), Verdict.TRUSTED, None, 500),
        (pod(DECODE, "llm", "501"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.ABOVE_GRANT, 300),
        (pod(DECODE, "llm", "450W"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", "-1"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", "99999"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        (pod(DECODE, "llm", ""), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.UNPARSABLE, 300),
        # a selected pod naming another budget (missing, Advisory, none) stays with the budget selecting it
        (pod(DECODE, "gone", "450"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.OTHER_BUDGET, 300),
        (
            pod(DECODE, "preview", "650"),
            budgets(LLM, ADVISORY),
            Verdict.UNTRUSTED,
            UntrustedReason.OTHER_BUDGET,
            300,
        ),
        (pod(DECODE, None, "450"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.OTHER_BUDGET, 300),
        (
            pod(DECODE, "other", "450"),
            budgets(LLM, OTHER),
            Verdict.UNTRUSTED,
            UntrustedReason.OTHER_BUDGET,
            300,
        ),
        (
            pod(PREFILL, "other", "400"),
            budgets(LLM, OTHER),
            Verdict.UNTRUSTED,
            UntrustedReason.OTHER_BUDGET,
            300,
        ),
        # the oldest selecting budget manages the pod
        (pod(DECODE, "other", "450"), budgets(LLM, OLDER_OTHER), Verdict.TRUSTED, None, 450),
        (pod(DECODE), budgets(LLM, OTHER), Verdict.AWAITING_CAP, None, 300),
        (pod(DECODE), budgets(LLM, OLDER_OTHER), Verdict.AWAITING_CAP, None, 280),
        # a budget annotation but no cap yet: waiting for the operator
        (pod(DECODE, "llm", None), budgets(LLM), Verdict.AWAITING_CAP, None, 300),
        # a new replica: no annotations, selected -> the lower of grant and safe default, at once
        (pod(DECODE), budgets(LLM), Verdict.AWAITING_CAP, None, 300),
        (pod(DECODE), budgets(LOW_GRANT), Verdict.AWAITING_CAP, None, 205),
        (pod(DECODE, "llm", "700"), budgets(LOW_GRANT), Verdict.UNTRUSTED, UntrustedReason.ABOVE_GRANT, 205),
        # the highest grant of the budget's targets that select the pod counts
        (pod(PREFILL, "llm", "400"), budgets(LLM), Verdict.TRUSTED, None, 400),
        # not selected by any Enforce budget, but annotated: the named budget's safe default (or the agent's)
        (
            pod(DECODE, "llm", "450", ns="x"),
            budgets(LLM),
            Verdict.UNTRUSTED,
            UntrustedReason.BUDGET_MISSING,
            250,
        ),
        (pod({"app": "web"}, "llm", "450"), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.NO_GRANT, 300),
        (pod({"app": "web"}, "llm", None), budgets(LLM), Verdict.UNTRUSTED, UntrustedReason.NO_GRANT, 300),
        (
            pod({"app": "web"}, None, "450"),
            budgets(LLM),
            Verdict.UNTRUSTED,
            UntrustedReason.NO_BUDGET_ANNOTATION,
            250,
        ),
    ],
)
def test_trust_rule_table(
    view: PodView, index: BudgetIndex, verdict: Verdict, reason: UntrustedReason | None, watts: int
) -> None:
    result = pod_cap(view, index, AGENT_DEFAULT)
    assert result is not None
    assert (result.verdict, result.reason, result.cap_watts) == (verdict, reason, watts)


@given(
    labels=st.sampled_from([DECODE, PREFILL]),
    named=st.sampled_from([None, "llm", "other", "preview", "gone"]),
    value=st.one_of(st.none(), st.sampled_from(["1", "205", "400", "450", "500", "501", "700", "9999", "x"])),
    index=st.sampled_from([budgets(LLM), budgets(LLM, OTHER), budgets(OLDER_OTHER, LLM, ADVISORY)]),
)
def test_a_selected_pod_never_gets_more_than_its_grant_whatever_it_writes_on_itself(
    labels: dict[str, str], named: str | None, value: str | None, index: BudgetIndex
) -> None:
    view = pod(labels, named, value)
    managing = managing_budget(view, index)
    assert managing is not None
    budget, grant = managing
    result = pod_cap(view, index, AGENT_DEFAULT)
    assert result is not None and result.budget == (budget.namespace, budget.name)
    assert result.cap_watts <= grant
    assert result.safe_default_watts <= grant
    if result.verdict is not Verdict.TRUSTED:
        assert result.cap_watts == min(grant, budget.safe_default_watts or AGENT_DEFAULT)


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
    granting = BudgetView("ns", "llm", None, (Grant("decode", parse_selector("app=llm"), 400),))
    result = pod_cap(pod(DECODE), budgets(granting), AGENT_DEFAULT)
    assert result is not None
    assert (result.verdict, result.cap_watts) == (Verdict.AWAITING_CAP, AGENT_DEFAULT)


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
                    "profile": {"points": [{"watts": 200, "throughput": 1}, {"watts": 400, "throughput": 2}]},
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


KUBELET_STEPS: list[dict[str, Any]] = [
    {},  # bound by the scheduler, not yet seen by the kubelet
    {"phase": "Pending"},
    {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "main", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    },
    {
        "phase": "Running",
        "startTime": "2026-12-01T10:00:00Z",
        "containerStatuses": [
            {"name": "main", "ready": False, "state": {"running": {"startedAt": "2026-12-01T10:00:01Z"}}}
        ],
    },
    {
        "phase": "Running",
        "startTime": "2026-12-01T10:00:00Z",
        "containerStatuses": [
            {"name": "main", "ready": True, "state": {"running": {"startedAt": "2026-12-01T10:00:01Z"}}}
        ],
    },
]


def _raw_pod(status: dict[str, Any], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "resources": {"limits": {"nvidia.com/gpu": 1}} if resources is None else resources,
                }
            ]
        },
        "status": status,
    }


def test_every_step_the_kubelet_reports_changes_the_pods_view() -> None:
    views = [pod_view(_raw_pod(status)) for status in KUBELET_STEPS]
    assert all(before != after for before, after in pairwise(views))
    # Without following the kubelet, only the end of a pod (finished) would show.
    blind = [pod_view(_raw_pod(status), kubelet_steps=False) for status in KUBELET_STEPS]
    assert all(before == after for before, after in pairwise(blind))


@pytest.mark.parametrize(
    ("resources", "asks"),
    [
        ({"limits": {"nvidia.com/gpu": 2}}, True),
        ({"limits": {"nvidia.com/gpu.shared": "1"}}, True),
        ({"requests": {"nvidia.com/mig-1g.10gb": 1}}, True),
        ({"limits": {"nvidia.com/gpu": 0}}, False),
        ({"limits": {"cpu": "2"}}, False),
        ({}, False),
    ],
)
def test_a_pod_asks_for_gpus_by_the_device_plugins_resource_names(
    resources: dict[str, Any], asks: bool
) -> None:
    assert pod_view(_raw_pod({}, resources)).requests_gpus is asks


def test_pod_view_reads_its_power_capped_condition() -> None:
    status = {
        "conditions": [
            {"type": "Ready", "status": "True"},
            {
                "type": "gpupower.dev/PowerCapped",
                "status": "True",
                "reason": "Capped",
                "message": "1 GPU(s) hold at most 205 W",
                "lastTransitionTime": "2026-12-01T10:00:00Z",
            },
        ]
    }
    reported = pod_view(_raw_pod(status)).power_capped
    assert reported == ReportedCondition(
        "True", "Capped", "1 GPU(s) hold at most 205 W", "2026-12-01T10:00:00Z"
    )
    assert pod_view(_raw_pod({})).power_capped is None


def test_budget_view_reads_its_age() -> None:
    raw = raw_budget({})
    raw["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    assert budget_view(raw).created == "2026-01-01T00:00:00Z"


def test_a_measured_pod_gets_its_own_grant_and_only_it() -> None:
    target = {
        "name": "decode",
        "workloadRef": {"name": "d"},
        "maxReplicas": 4,
        "capWatts": {"min": 200, "max": 400},
        "profile": {"points": [{"watts": 200, "throughput": 1}]},
    }
    planned = {
        "name": "decode",
        "selector": "app=llm,role=decode",
        "desiredReplicas": 3,
        "plannedReplicas": 3,
        "capWatts": 250,
        "projectedWatts": 1000,
        "capacity": 3,
        "servedFraction": 1,
        "measurement": {"pod": "measured", "capWatts": 500, "run": "sweep"},
    }
    raw = {
        "metadata": {"name": "llm", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"totalWatts": 2000, "safeDefaultWatts": 200, "targets": [target]},
        "status": {"targets": [planned]},
    }
    index = budgets(budget_view(raw))

    def cap_of(name: str, value: str) -> tuple[Verdict, int]:
        view = PodView(PodKey("ns", name), "uid", DECODE, "llm", value, finished=False)
        decided = pod_cap(view, index, AGENT_DEFAULT)
        assert decided is not None
        return decided.verdict, decided.cap_watts

    assert cap_of("measured", "500") == (Verdict.TRUSTED, 500)
    assert cap_of("measured", "501") == (Verdict.UNTRUSTED, 200)  # its own annotation never raises it
    assert cap_of("other", "500") == (Verdict.UNTRUSTED, 200)  # the others keep the target's grant
    assert cap_of("other", "250") == (Verdict.TRUSTED, 250)
