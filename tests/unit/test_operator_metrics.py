"""The operator's per-budget series: conditions and per-target figures follow the status, and go with it."""

from __future__ import annotations

from gpupower_api.models import BudgetStatus, Condition, ConditionStatus, TargetStatus
from gpupower_operator.shell.metrics import OperatorMetrics


def target(name: str, demand: float | None = 30.0) -> TargetStatus:
    return TargetStatus(
        name=name,
        desired_replicas=3,
        planned_replicas=4,
        cap_watts=250,
        projected_watts=1000.0,
        capacity=28.0,
        demand=demand,
        served_fraction=0.93,
    )


def status(*targets: TargetStatus, ready: ConditionStatus = ConditionStatus.FALSE) -> BudgetStatus:
    return BudgetStatus(
        budget_watts=2000,
        planned_watts=1000.0,
        conditions=[Condition(type="Ready", status=ready, reason="Enforcing")],
        targets=list(targets),
    )


def series(metrics: OperatorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every labelled gpupower_operator_* series: (name, its labels) -> value."""
    found = {}
    for sample_family in metrics.registry.collect():
        for sample in sample_family.samples:
            if sample.name.startswith("gpupower_operator_") and sample.labels:
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def test_a_condition_has_one_series_per_status_and_only_the_current_one_is_1() -> None:
    metrics = OperatorMetrics()
    metrics.record_status("ns", "llm", status(target("decode")))
    ready = {"namespace": "ns", "budget": "llm", "type": "Ready"}
    found = series(metrics)
    assert found[key("gpupower_operator_condition", **ready, status="False")] == 1
    assert found[key("gpupower_operator_condition", **ready, status="True")] == 0
    assert found[key("gpupower_operator_condition", **ready, status="Unknown")] == 0
    metrics.record_status("ns", "llm", status(target("decode"), ready=ConditionStatus.TRUE))
    found = series(metrics)
    assert found[key("gpupower_operator_condition", **ready, status="True")] == 1
    assert found[key("gpupower_operator_condition", **ready, status="False")] == 0


def test_per_target_series_follow_the_status_and_leave_with_the_target_or_the_budget() -> None:
    metrics = OperatorMetrics()
    metrics.record_status("ns", "llm", status(target("decode"), target("prefill", demand=None)))
    found = series(metrics)
    decode = {"namespace": "ns", "budget": "llm", "target": "decode"}
    prefill = {**decode, "target": "prefill"}
    assert found[key("gpupower_operator_target_demand", **decode)] == 30
    assert found[key("gpupower_operator_target_served_ratio", **decode)] == 0.93
    assert found[key("gpupower_operator_target_cap_watts", **decode)] == 250
    assert found[key("gpupower_operator_target_planned_replicas", **decode)] == 4
    assert found[key("gpupower_operator_target_cap_watts", **prefill)] == 250
    assert key("gpupower_operator_target_demand", **prefill) not in found, "no demand: absent"
    assert key("gpupower_operator_target_observed_watts", **decode) not in found, "absent until measured"

    metrics.record_status("ns", "llm", status(target("decode")))
    assert not [k for k in series(metrics) if ("target", "prefill") in k[1]]
    metrics.forget("ns", "llm")
    assert not [k for k in series(metrics) if ("budget", "llm") in k[1]]


def test_budget_series_carry_both_accountings_and_what_the_gpus_hold() -> None:
    metrics = OperatorMetrics()
    oversubscribed = status(target("decode")).model_copy(
        update={
            "caps_watts": 2300.0,
            "caps_limit_watts": 2400.0,
            "planned_draw_watts": 1950.0,
            "enforced_watts": 2100.0,
        }
    )
    metrics.record_status("ns", "llm", oversubscribed)
    found = series(metrics)
    budget = {"namespace": "ns", "budget": "llm"}
    assert found[key("gpupower_operator_caps_watts", **budget)] == 2300
    assert found[key("gpupower_operator_caps_limit_watts", **budget)] == 2400
    assert found[key("gpupower_operator_planned_draw_watts", **budget)] == 1950
    assert found[key("gpupower_operator_enforced_watts", **budget)] == 2100
    metrics.record_status("ns", "llm", status(target("decode")))
    assert key("gpupower_operator_enforced_watts", **budget) not in series(metrics), "absent with the field"
