"""Signals per budget: no signal is never zero demand, failures fall back and flip MetricsAvailable."""

from __future__ import annotations

from typing import Any

import pytest

from gpupower_api.models import BudgetSpec, BudgetStatus, ConditionStatus, TargetStatus, parse_spec
from gpupower_operator.adapters.prometheus import FakeMetrics, PrometheusError, Series
from gpupower_operator.core import planner, promql, signals
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core.correction import Factors
from gpupower_operator.core.signals import DemandSource, Memory, NoSignal, Reading, TargetReading, advance
from gpupower_operator.shell import signalsource


def spec(**prometheus: Any) -> BudgetSpec:
    return parse_spec(
        {
            "totalWatts": 4000,
            "safeDefaultWatts": 300,
            "prometheus": {"url": "http://127.0.0.1:9", "failuresBeforeFallback": 2, **prometheus},
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "maxReplicas": 8,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {
                        "points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 10}]
                    },
                    "preset": {"engine": "vllm", "windowSeconds": 5},
                    "sla": {"ttftSeconds": 0.5},
                    "demand": 7,
                },
                {
                    "name": "prefill",
                    "workloadRef": {"name": "prefill"},
                    "maxReplicas": 4,
                    "profile": {"points": [{"watts": 300, "throughput": 4}]},
                    "demand": 3,
                },
            ],
        }
    )


def status_for(budget: BudgetSpec, demand: dict[str, float | None], sources: dict[str, str]) -> BudgetStatus:
    """The status a reconcile would write for the plan of ``demand``."""
    plan = planner.plan(planner.problem_from_spec(budget, demand=demand))
    return BudgetStatus(
        targets=[
            TargetStatus(
                name=t.name,
                desired_replicas=t.desired_replicas,
                planned_replicas=t.replicas,
                current_replicas=t.replicas,  # enforced at once
                pods_annotated=t.replicas,
                pods_enforced=t.replicas,
                cap_watts=t.cap_watts,
                projected_watts=t.watts,
                capacity=t.capacity,
                demand=t.demand,
                served_fraction=t.served_fraction,
                demand_source=sources.get(t.name),
            )
            for t in plan.targets
        ]
    )


def reading(demand: float | NoSignal, power_watts: float | None = None, gpus: int = 0) -> Reading:
    return Reading(
        targets={
            "decode": TargetReading(
                demand=demand,
                served=demand,
                ttft_seconds=NoSignal("quiet"),
                power_watts=power_watts,
                gpus_reporting=gpus,
            ),
            "prefill": TargetReading(power_watts=None),
        }
    )


def test_fresh_demand_is_used_and_remembered() -> None:
    memory, result = advance(Memory(), spec(), None, reading(24.0), 0.0)
    assert result.targets["decode"].demand == 24.0
    assert result.targets["decode"].demand_source == DemandSource.PROMETHEUS
    assert result.demand() == {"decode": 24.0, "prefill": 3}
    assert result.targets["prefill"].demand_source == DemandSource.STATIC
    assert memory.last_good_demand == {"decode": 24.0}
    assert result.condition is not None and result.condition.status == ConditionStatus.TRUE


def test_no_signal_keeps_the_last_good_demand_never_zero() -> None:
    memory, _ = advance(Memory(), spec(), None, reading(24.0), 0.0)
    _, quiet = advance(memory, spec(), None, reading(NoSignal("no series")), 1.0)
    assert quiet.targets["decode"].demand == 24.0
    assert quiet.targets["decode"].demand_source == DemandSource.LAST_GOOD
    assert quiet.condition is not None and quiet.condition.status == ConditionStatus.TRUE
    assert "no series" in quiet.condition.message


def test_no_signal_without_history_falls_back_to_static_demand() -> None:
    _, quiet = advance(Memory(), spec(), None, reading(NoSignal("no series")), 0.0)
    assert (quiet.targets["decode"].demand, quiet.targets["decode"].demand_source) == (7, DemandSource.STATIC)


def test_failures_flip_the_condition_only_after_k_and_keep_the_last_plan_inputs() -> None:
    budget = spec()
    memory, good = advance(Memory(), budget, None, reading(24.0), 0.0)
    failed = Reading(error="cannot reach http://127.0.0.1:9: ConnectionError")
    memory, first = advance(memory, budget, None, failed, 1.0)
    assert first.condition == good.condition  # one failure (K=2) changes nothing yet
    memory, second = advance(memory, budget, None, failed, 2.0)
    assert second.condition is not None
    assert (second.condition.status, second.condition.reason) == (ConditionStatus.FALSE, "QueriesFailing")
    assert "2 consecutive reads failed" in second.condition.message
    assert "ConnectionError" in second.condition.message
    assert second.demand() == good.demand()
    assert second.targets["decode"].demand_source == DemandSource.LAST_GOOD
    before = planner.plan(
        planner.problem_from_spec(budget, demand=good.demand(), corrections=good.corrections())
    )
    after = planner.plan(
        planner.problem_from_spec(budget, demand=second.demand(), corrections=second.corrections())
    )
    assert after == before
    _, recovered = advance(memory, budget, None, reading(30.0), 3.0)
    assert recovered.condition is not None and recovered.condition.status == ConditionStatus.TRUE
    assert recovered.targets["decode"].demand == 30.0


def test_last_good_demand_survives_a_restart_through_the_status() -> None:
    budget = spec()
    old = status_for(budget, {"decode": 31.0}, {"decode": "Prometheus"})
    _, result = advance(Memory(), budget, old, Reading(error="timed out"), 0.0)
    assert (result.targets["decode"].demand, result.targets["decode"].demand_source) == (
        31.0,
        DemandSource.LAST_GOOD,
    )
    static_before = status_for(budget, {"decode": 31.0}, {"decode": "Static"})
    _, result = advance(Memory(), budget, static_before, Reading(error="timed out"), 0.0)
    assert result.targets["decode"].demand_source == DemandSource.STATIC


def test_power_below_cap_moves_the_applied_power_factor_after_drift_checks() -> None:
    budget = spec(driftChecks=2, replanIntervalSeconds=0)
    old = status_for(budget, {"decode": 24.0}, {"decode": "Prometheus"})
    decode = old.target("decode")
    assert decode is not None
    gpus = decode.planned_replicas
    memory = Memory()
    applied = []
    settle = signals.settle_seconds(budget.targets[0])
    assert settle == 5  # the preset's rate window
    for second in range(int(settle) + 4):
        memory, result = advance(
            memory, budget, old, reading(24.0, 0.6 * decode.cap_watts * gpus, gpus), second
        )
        applied.append(result.targets["decode"].factors.power)
    # Readings within a rate window of the plan's start still describe the plan before it.
    assert applied[: int(settle)] == [1.0] * int(settle)
    assert applied[int(settle)] == 1.0  # the first drifting check is not enough
    assert applied[-1] < 0.9
    assert result.target_status("decode")["power_factor"] == round(applied[-1], 4)
    assert result.observed_watts == pytest.approx(0.6 * decode.cap_watts * gpus)


def test_a_new_plan_must_settle_for_a_window_before_its_readings_correct_the_profile() -> None:
    budget = spec(driftChecks=1, replanIntervalSeconds=0)
    old = status_for(budget, {"decode": 24.0}, {"decode": "Prometheus"})
    decode = old.target("decode")
    assert decode is not None
    gpus = decode.planned_replicas
    low = reading(24.0, 0.5 * decode.cap_watts * gpus, gpus)
    memory, _ = advance(Memory(), budget, old, low, 100.0)
    memory, early = advance(memory, budget, old, low, 104.0)
    assert early.targets["decode"].factors.power == 1.0
    # The plan changes (a new cap): the clock starts again.
    moved = old.model_copy(
        update={"targets": [decode.model_copy(update={"cap_watts": decode.cap_watts - 5}), *old.targets[1:]]}
    )
    memory, after_change = advance(memory, budget, moved, low, 106.0)
    assert after_change.targets["decode"].factors.power == 1.0
    memory, still = advance(memory, budget, moved, low, 110.0)
    assert still.targets["decode"].factors.power == 1.0
    _, settled = advance(memory, budget, moved, low, 111.0)
    assert settled.targets["decode"].factors.power < 1.0


def test_read_budget_turns_a_failed_query_into_a_failed_reading() -> None:
    down = FakeMetrics(failure="cannot reach http://127.0.0.1:9: ConnectionRefusedError")
    result = signalsource.read_budget(down, spec(), "serving")
    assert result.error is not None and "ConnectionRefusedError" in result.error


def test_read_budget_reads_every_query_of_every_target() -> None:
    budget = spec()
    queries = promql.target_queries(budget.targets[0], "serving", signals.prometheus_settings(budget))
    fake = FakeMetrics(
        answers={
            queries.demand or "": [Series({}, 12.5)],
            queries.served or "": [Series({}, 12.0)],
            queries.power_watts: [Series({"gpu": "0"}, 250.0), Series({"gpu": "1"}, 230.0)],
        }
    )
    result = signalsource.read_budget(fake, budget, "serving")
    decode = result.targets["decode"]
    assert (decode.demand, decode.served, decode.power_watts, decode.gpus_reporting) == (12.5, 12.0, 480.0, 2)
    assert isinstance(decode.ttft_seconds, NoSignal)
    assert result.targets["prefill"].demand is None


def test_fake_failure_is_a_prometheus_error() -> None:
    with pytest.raises(PrometheusError):
        FakeMetrics(failure="down").vector("up")


async def test_a_budget_without_a_url_says_so_and_uses_static_demand() -> None:
    source = signalsource.SignalSource(default_url=None)
    budget = parse_spec(spec().model_dump(by_alias=True, exclude={"prometheus"}))
    result = await source.signals("serving", "b", budget, None)
    assert result is not None and result.condition is not None
    assert (result.condition.status, result.condition.reason) == (ConditionStatus.FALSE, "NoPrometheusUrl")
    assert result.demand()["decode"] == 7


async def test_reads_are_spaced_by_the_interval() -> None:
    now = [0.0]
    fake = FakeMetrics()
    calls: list[str] = []

    class Counting:
        def vector(self, query: str) -> list[Series]:
            calls.append(query)
            return fake.vector(query)

    source = signalsource.SignalSource(
        default_url="http://127.0.0.1:9", reader_factory=lambda _: Counting(), clock=lambda: now[0]
    )
    budget = spec(intervalSeconds=10)
    await source.signals("serving", "b", budget, None)
    first = len(calls)
    now[0] = 5.0
    await source.signals("serving", "b", budget, None)
    assert len(calls) == first
    now[0] = 10.0
    await source.signals("serving", "b", budget, None)
    assert len(calls) == 2 * first


def test_reconcile_writes_observed_watts_corrections_and_metrics_available() -> None:
    budget = spec()
    _, result = advance(Memory(), budget, None, reading(24.0, power_watts=500.0, gpus=2), 0.0)
    the_plan = planner.plan(
        planner.problem_from_spec(budget, demand=result.demand(), corrections=result.corrections())
    )
    observed = rc.Observed(
        budget=rc.BudgetRef(name="b", namespace="serving", created="2026-01-01T00:00:00Z", generation=1),
        spec=budget,
        old_status=None,
        workloads={
            "decode": rc.WorkloadState(replicas=2, selector="app=decode"),
            "prefill": rc.WorkloadState(replicas=1, selector="app=prefill"),
        },
        pods=[],
        signals=result,
    )
    status = rc.reconcile(observed, the_plan, "2026-01-01T00:00:00Z").status
    assert status.observed_watts == 500.0
    decode = status.target("decode")
    assert decode is not None
    assert (decode.observed_watts, decode.demand, decode.demand_source) == (500.0, 24.0, "Prometheus")
    assert (decode.power_factor, decode.throughput_factor) == (1.0, 1.0)
    available = status.condition(signals.METRICS_AVAILABLE)
    assert available is not None and available.status == ConditionStatus.TRUE
    body = rc.status_body(status)
    assert body["targets"][0]["demandSource"] == "Prometheus"
    assert BudgetStatus.model_validate(body) == status


def test_demand_rises_at_once_and_falls_only_after_the_stabilization_window() -> None:
    budget = spec(demandStabilizationSeconds=30)
    memory = Memory()
    planned = []
    for second, value in [(0, 20.0), (5, 35.0), (10, 12.0), (20, 15.0), (36, 14.0), (41, 11.0), (60, 13.0)]:
        memory, result = advance(memory, budget, None, reading(value), float(second))
        planned.append(result.targets["decode"].demand)
    # 35 read at 5 s holds until 35 s; then the highest read of the last 30 s.
    assert planned == [20.0, 35.0, 35.0, 35.0, 15.0, 15.0, 14.0]
    _, immediate = advance(Memory(), spec(demandStabilizationSeconds=0), None, reading(3.0), 0.0)
    assert immediate.targets["decode"].demand == 3.0


async def test_failed_reads_are_counted() -> None:
    failures: list[int] = []
    now = [0.0]
    source = signalsource.SignalSource(
        default_url="http://127.0.0.1:9",
        reader_factory=lambda _: FakeMetrics(failure="cannot reach http://127.0.0.1:9"),
        clock=lambda: now[0],
        count_failure=lambda: failures.append(1),
    )
    for second in (0.0, 60.0):
        now[0] = second
        await source.signals("serving", "b", spec(), None)
    assert len(failures) == 2


@pytest.mark.parametrize(
    "moving_field",
    # A pod not annotated yet; or every pod annotated, one not yet confirmed on the hardware by its agent.
    ["pods_annotated", "pods_enforced"],
)
def test_no_correction_while_the_plan_is_not_yet_enforced(moving_field: str) -> None:
    budget = spec(driftChecks=1, replanIntervalSeconds=0)
    old = status_for(budget, {"decode": 24.0}, {"decode": "Prometheus"})
    decode = old.target("decode")
    assert decode is not None
    behind: dict[str, int] = {"pods_enforced": decode.planned_replicas - 1}
    if moving_field == "pods_annotated":
        behind["pods_annotated"] = decode.planned_replicas - 1
    moving = old.model_copy(update={"targets": [decode.model_copy(update=behind)]})
    gpus = decode.planned_replicas
    memory = Memory()
    for second in range(5):
        memory, result = advance(
            memory, budget, moving, reading(24.0, 0.5 * decode.cap_watts * gpus, gpus), second
        )
    assert result.targets["decode"].factors == Factors()
