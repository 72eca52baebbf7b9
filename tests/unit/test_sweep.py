"""Measuring on the live fleet: the plan around the measured pod, and the sweep's state machine."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupower_agent.cluster import PodKey, PodView, budget_view
from gpupower_agent.trust import BudgetIndex, Verdict, pod_cap
from gpupower_api.contract import HeldWatts, format_power_limit
from gpupower_api.models import PrometheusSpec, Target, parse_spec
from gpupower_api.profilerun import LevelPhase, RunPhase, RunSpec, RunStatus
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core import sweep
from gpupower_operator.core.planner import Problem, ProfilePoint, TargetProblem, plan, problem_from_spec

START = 1_800_000_000.0


def target_problem(name: str = "decode", **overrides: Any) -> TargetProblem:
    values: dict[str, Any] = {
        "name": name,
        "min_replicas": 1,
        "max_replicas": 6,
        "cap_min_watts": 200,
        "cap_max_watts": 400,
        "profile": (ProfilePoint(200, 10), ProfilePoint(400, 16)),
        "demand": 40.0,
        "gpus_per_replica": 1,
    }
    values.update(overrides)
    return TargetProblem(**values)


# ---------------------------------------------------------------------------
# The plan around the measured pod


def test_the_plan_reserves_the_measured_pod_and_plans_the_rest_of_its_target_with_one_replica_fewer() -> None:
    problem = Problem(1600, (target_problem(), target_problem("prefill", demand=20.0)))
    around = sweep.plan_around(problem, sweep.Reservation("decode", 400))
    assert around is not None and around.feasible
    decode = around.target("decode")
    # The rest of decode is planned within 1,600 - 400 W, for the demand less what the pod serves at 400 W.
    rest = plan(
        Problem(
            1200,
            (
                target_problem(min_replicas=0, max_replicas=5, demand=40.0 - 16),
                target_problem("prefill", demand=20.0),
            ),
        )
    )
    assert decode.replicas == rest.target("decode").replicas + 1
    assert decode.cap_watts == rest.target("decode").cap_watts
    assert decode.watts == rest.target("decode").watts + 400
    assert around.watts == rest.watts + 400 <= 1600
    assert around.target("prefill") == rest.target("prefill")
    assert "measuring one decode pod at 400 W" in around.reason


def test_a_cap_the_budget_cannot_hold_beside_the_rest_of_the_fleet_is_refused_and_says_why() -> None:
    problem = Problem(850, (target_problem(min_replicas=3, max_replicas=3),))
    assert sweep.plan_around(problem, sweep.Reservation("decode", 400)) is not None
    assert sweep.plan_around(problem, sweep.Reservation("decode", 700)) is None
    message = sweep.over_budget_message(problem, sweep.Reservation("decode", 700))
    assert "reserves 700 W" in message and "floor (400 W)" in message and "850 W" in message


def test_an_oversubscribed_budget_holds_the_reservation_within_its_bound_on_the_caps() -> None:
    problem = Problem(
        1000, (target_problem(min_replicas=1, max_replicas=6, demand=80.0),), cap_budget_watts=1300
    )
    around = sweep.plan_around(problem, sweep.Reservation("decode", 400))
    assert around is not None
    assert around.caps_watts <= 1300 and around.cap_budget_watts == 1300
    assert around.target("decode").caps_watts == around.caps_watts
    # Two replicas at least: one beside the pod, whose floor (200 W) does not fit in 500 - 400 W of caps.
    tight = replace(problem, targets=(target_problem(min_replicas=2, demand=80.0),), cap_budget_watts=500)
    assert sweep.plan_around(tight, sweep.Reservation("decode", 400)) is None
    assert sweep.plan_around(tight, sweep.Reservation("decode", 300)) is not None


def test_a_reservation_reserves_every_gpu_of_the_pod() -> None:
    problem = Problem(2000, (target_problem(gpus_per_replica=2),))
    around = sweep.plan_around(problem, sweep.Reservation("decode", 300))
    assert around is not None
    assert sweep.reserved_watts(problem, sweep.Reservation("decode", 300)) == 600
    assert around.target("decode").gpus == 2 * around.target("decode").replicas


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(200, 6000),
    cap=st.integers(1, 1000),
    gpus=st.integers(1, 4),
    min_replicas=st.integers(0, 3),
    extra=st.integers(0, 4),
    demand=st.one_of(st.none(), st.floats(0, 200)),
    other_demand=st.floats(0, 100),
)
def test_a_plan_around_a_measurement_never_takes_the_budget_over_total_watts(
    total: int, cap: int, gpus: int, min_replicas: int, extra: int, demand: float | None, other_demand: float
) -> None:
    measured = target_problem(
        min_replicas=min_replicas,
        max_replicas=max(1, min_replicas + extra),
        demand=demand,
        gpus_per_replica=gpus,
    )
    problem = Problem(total, (measured, target_problem("prefill", min_replicas=0, demand=other_demand)))
    around = sweep.plan_around(problem, sweep.Reservation("decode", cap))
    if around is None:
        return
    assert around.watts <= total + 1e-9
    decode = around.target("decode")
    assert 1 <= decode.replicas <= measured.max_replicas
    assert decode.replicas >= measured.min_replicas
    assert decode.watts >= gpus * cap


# ---------------------------------------------------------------------------
# The sweep


SPEC = RunSpec(budget="llm", target="decode", caps_watts=[200, 300, 400], settle_seconds=10, hold_seconds=30)
SATURATED = sweep.Reading(throughput=12.5, observed_watts=190, samples=30, saturated_samples=30, saturation=3)


def seen(held: int | None = None, verdict: int | None = None, fits: bool = True, **extra: Any) -> sweep.Seen:
    verdicts = sweep.Verdict(verdict, fits, "over" if not fits else "") if verdict is not None else None
    return sweep.Seen(
        sweep.PodSeen("decode-0", "node-a", held), gpus=1, unit="requests/s", verdict=verdicts, **extra
    )


def step(status: RunStatus, now: float, observation: sweep.Seen, spec: RunSpec = SPEC) -> sweep.Step:
    return sweep.advance(spec, status, 1, now, observation)


def test_a_level_is_granted_then_settles_from_when_the_gpus_hold_it_then_holds_then_is_recorded() -> None:
    first = step(RunStatus(), START, seen())
    assert first.status.phase is RunPhase.RUNNING and first.status.pod == "decode-0"
    assert first.grant == sweep.Grant("decode-0", 200)
    assert first.status.levels[0].phase is LevelPhase.GRANTING
    assert [e.reason for e in first.events] == ["MeasurementStarted"]
    # The budget planned around it, but the GPUs do not hold it yet: still granting.
    waiting = step(first.status, START + 3, seen(held=250, verdict=200))
    assert waiting.status.levels[0].phase is LevelPhase.GRANTING
    held = step(waiting.status, START + 5, seen(held=200, verdict=200))
    assert held.status.levels[0].phase is LevelPhase.SETTLING
    assert held.wake_seconds == pytest.approx(0.5)
    settling = step(held.status, START + 14, seen(held=200, verdict=200))
    assert (
        settling.status.levels[0].phase is LevelPhase.SETTLING
    )  # 10 s from when it held, not from the grant
    holding = step(settling.status, START + 15, seen(held=200, verdict=200))
    assert holding.status.levels[0].phase is LevelPhase.HOLDING
    assert holding.wake_seconds == pytest.approx(30)
    assert not step(holding.status, START + 44, seen(held=200, verdict=200)).read
    due = step(holding.status, START + 45, seen(held=200, verdict=200))
    assert due.read and due.grant == sweep.Grant("decode-0", 200)
    recorded = step(due.status, START + 45.2, seen(held=200, verdict=200, reading=SATURATED))
    level = recorded.status.levels[0]
    assert level.phase is LevelPhase.RECORDED
    assert (level.throughput, level.observed_watts, level.samples, level.saturated_samples) == (
        12.5,
        190,
        30,
        30,
    )
    # The next level is granted in the same step.
    assert recorded.grant == sweep.Grant("decode-0", 300)
    assert recorded.status.current_level == 1
    assert [e.reason for e in recorded.events] == ["LevelRecorded"]


def _until(status: RunStatus, now: float, cap: int) -> RunStatus:
    """Walk a level to the end of its hold, as a world whose GPUs hold every cap at once."""
    for moment in (now, now + 1, now + 12, now + 43):
        status = step(status, moment, seen(held=cap, verdict=cap)).status
    return status


def test_a_hold_not_saturated_throughout_is_left_out_of_the_profile() -> None:
    status = _until(step(RunStatus(), START, seen()).status, START, 200)
    partly = replace(SATURATED, saturated_samples=29)
    ended = step(status, START + 44, seen(held=200, verdict=200, reading=partly))
    level = ended.status.levels[0]
    assert level.phase is LevelPhase.UNSATURATED and "29 of 30" in (level.message or "")
    assert ended.status.profile is None


def test_a_level_the_budget_cannot_hold_is_skipped_and_the_next_one_granted() -> None:
    status = step(RunStatus(), START, seen()).status
    refused = step(status, START + 1, seen(held=None, verdict=200, fits=False))
    assert refused.status.levels[0].phase is LevelPhase.OVER_BUDGET
    assert refused.status.levels[0].message == "over"
    assert refused.grant == sweep.Grant("decode-0", 300)
    # A refusal of another cap says nothing of this one.
    still = step(refused.status, START + 2, seen(held=None, verdict=200, fits=False))
    assert still.status.levels[1].phase is LevelPhase.GRANTING


def test_a_cap_never_held_is_skipped_after_the_timeout() -> None:
    status = step(RunStatus(), START, seen()).status
    late = step(status, START + sweep.CAP_TIMEOUT_SECONDS, seen(held=250, verdict=200))
    assert late.status.levels[0].phase is LevelPhase.CAP_NOT_HELD
    assert "250 W" in (late.status.levels[0].message or "")


def test_a_failed_read_is_retried_then_the_level_has_no_data() -> None:
    status = _until(step(RunStatus(), START, seen()).status, START, 200)
    failing = sweep.Reading(error="connection refused")
    retry = step(status, START + 44, seen(held=200, verdict=200, reading=failing))
    assert retry.status.levels[0].phase is LevelPhase.HOLDING and retry.wake_seconds == 2.0
    ends = START + 12 + 30 + sweep.READ_RETRY_SECONDS
    given_up = step(retry.status, ends + 1, seen(held=200, verdict=200, reading=failing))
    assert given_up.status.levels[0].phase is LevelPhase.NO_DATA


def test_the_sweep_ends_with_the_profile_of_the_recorded_levels_and_no_grant() -> None:
    status = step(RunStatus(), START, seen()).status
    now = START
    readings = {
        200: SATURATED,
        300: replace(SATURATED, saturated_samples=3),
        400: replace(SATURATED, throughput=17),
    }
    for cap in (200, 300, 400):
        status = _until(status, now, cap)
        last = step(status, now + 44, seen(held=cap, verdict=cap, reading=readings[cap]))
        status, now = last.status, now + 44
    assert status.phase is RunPhase.SUCCEEDED and last.grant is None
    assert status.profile is not None and status.profile.source == "Measured"
    assert [(p.watts, p.throughput) for p in status.profile.points or []] == [(200, 12.5), (400, 17)]
    complete = status.condition(sweep.COMPLETE)
    assert complete is not None and complete.status == "True" and complete.reason == sweep.REASON_MEASURED
    assert status.completion_time is not None
    assert "MeasurementSucceeded" in [e.reason for e in last.events]
    # A finished run stays finished.
    assert step(status, now + 100, seen(held=400)).status == status


def test_a_sweep_with_nothing_recorded_fails_saying_so() -> None:
    spec = RunSpec(budget="llm", target="decode", caps_watts=[700])
    status = step(RunStatus(), START, seen(), spec).status
    ended = step(status, START + 1, seen(verdict=700, fits=False), spec)
    assert ended.status.phase is RunPhase.FAILED and ended.grant is None
    complete = ended.status.condition(sweep.COMPLETE)
    assert complete is not None and complete.reason == sweep.REASON_NOTHING_RECORDED


def test_a_stop_fails_the_run_skips_its_levels_and_grants_nothing() -> None:
    status = step(RunStatus(), START, seen()).status
    stopped = step(
        status, START + 1, replace(seen(), stop=sweep.Stop("AdvisoryBudget", "budget llm is Advisory"))
    )
    assert stopped.status.phase is RunPhase.FAILED and stopped.grant is None
    assert all(level.phase is LevelPhase.SKIPPED for level in stopped.status.levels)
    complete = stopped.status.condition(sweep.COMPLETE)
    assert complete is not None and (complete.status, complete.reason) == ("False", "AdvisoryBudget")
    assert [(e.type, e.reason) for e in stopped.events] == [("Warning", "AdvisoryBudget")]


def test_no_pod_to_measure_and_a_pod_that_goes_away_fail_the_run() -> None:
    none = step(RunStatus(), START, sweep.Seen(None))
    assert none.status.phase is RunPhase.FAILED
    assert none.status.condition(sweep.COMPLETE).reason == sweep.REASON_POD_NOT_FOUND  # type: ignore[union-attr]
    status = step(RunStatus(), START, seen()).status
    gone = step(status, START + 1, sweep.Seen(None))
    assert gone.status.phase is RunPhase.FAILED and gone.grant is None
    assert gone.status.condition(sweep.COMPLETE).reason == sweep.REASON_POD_GONE  # type: ignore[union-attr]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[RunSpec, list[tuple[float, int | None, bool, sweep.Reading | None]]]:
    """A run and a sequence of ticks: how long after the last, what the GPUs hold, the verdict, a reading."""
    caps = draw(st.lists(st.integers(100, 700), min_size=1, max_size=5, unique=True))
    spec = RunSpec(
        budget="b",
        target="t",
        caps_watts=caps,
        settle_seconds=draw(st.integers(0, 20)),
        hold_seconds=draw(st.integers(5, 40)),
    )
    ticks = draw(
        st.lists(
            st.tuples(
                st.floats(0, 60),
                st.one_of(st.none(), st.sampled_from(caps)),
                st.booleans(),
                st.one_of(
                    st.none(),
                    st.builds(
                        sweep.Reading,
                        throughput=st.one_of(st.none(), st.floats(0, 100)),
                        samples=st.integers(0, 40),
                        saturated_samples=st.integers(0, 40),
                        saturation=st.one_of(st.none(), st.floats(-1, 5)),
                    ),
                ),
            ),
            max_size=60,
        )
    )
    return spec, ticks


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_whatever_happens_a_level_is_recorded_only_when_saturated_throughout_and_only_its_cap_is_granted(
    world: tuple[RunSpec, list[tuple[float, int | None, bool, sweep.Reading | None]]],
) -> None:
    spec, ticks = world
    status, now = RunStatus(), START
    asked: dict[int, bool] = {}
    for wait, held_watts, fits, reading in ticks:
        now += wait
        current = (
            status.levels[status.current_level]
            if status.current_level is not None and status.levels
            else None
        )
        verdict = sweep.Verdict(current.cap_watts, fits) if current is not None else None
        if verdict is not None:
            asked[verdict.cap_watts] = fits
        out = sweep.advance(
            spec,
            status,
            1,
            now,
            sweep.Seen(sweep.PodSeen("p", "n", held_watts), verdict=verdict, reading=reading),
        )
        if out.grant is not None:
            level = out.status.levels[out.status.current_level or 0]
            assert out.grant.cap_watts == level.cap_watts and not level.phase.done
            assert asked.get(level.cap_watts, True), "a cap the budget refused is never granted again"
        else:
            assert out.status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED)
        for level in out.status.levels:
            if level.phase is LevelPhase.RECORDED:
                assert level.samples and level.saturated_samples is not None
                assert level.saturated_samples >= level.samples
                assert level.saturation is not None and level.saturation > 0
            if level.phase is LevelPhase.HOLDING or (level.phase.done and level.hold_started_at):
                held_at = sweep.seconds_of(level.held_at)
                started = sweep.seconds_of(level.hold_started_at)
                assert (
                    held_at is not None
                    and started is not None
                    and started >= held_at + spec.settle_seconds - 1e-3
                )
        recorded = sorted(
            level.cap_watts for level in out.status.levels if level.phase is LevelPhase.RECORDED
        )
        points = [p.watts for p in out.status.profile.points or []] if out.status.profile is not None else []
        if out.status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
            assert points == recorded
        status = out.status


# ---------------------------------------------------------------------------
# The queries


def decode_target(**extra: Any) -> Target:
    """A decode target of a small budget, with ``extra`` fields."""
    target = {
        "name": "decode",
        "workloadRef": {"name": "decode"},
        "maxReplicas": 3,
        "profile": {"points": [{"watts": 200, "throughput": 1}, {"watts": 400, "throughput": 2}]},
        **extra,
    }
    return parse_spec({"totalWatts": 1000, "safeDefaultWatts": 200, "targets": [target]}).targets[0]


def test_the_preset_gives_the_pods_throughput_and_waiting_requests_over_the_hold() -> None:
    target = decode_target(preset={"engine": "vllm", "windowSeconds": 120})
    run = RunSpec(budget="llm", target="decode", caps_watts=[300], hold_seconds=45)
    queries = sweep.level_queries(run, target, "inference", "decode-7d9-x.1", PrometheusSpec())
    assert queries.throughput == (
        'sum(rate(vllm:request_success_total{namespace="inference",pod=~"decode-7d9-x\\\\.1"}[45s]))'
    )
    waiting = 'sum(vllm:num_requests_waiting{namespace="inference",pod=~"decode-7d9-x\\\\.1"})'
    assert queries.saturation_min == f"min_over_time(({waiting})[45s:1s])"
    assert queries.saturated_samples == f"count_over_time((({waiting}) > 0)[45s:1s])"
    assert "exported_pod=~" in queries.power_watts and "[45s]" in queries.power_watts


def test_queries_of_the_run_fill_in_the_pod_and_the_window_and_a_target_without_preset_needs_them() -> None:
    target = decode_target()
    bare = RunSpec(budget="llm", target="decode", caps_watts=[300])
    with pytest.raises(sweep.QueryError, match=r"spec\.throughputQuery"):
        sweep.level_queries(bare, target, "ns", "p", PrometheusSpec())
    given_queries = bare.model_copy(
        update={
            "throughput_query": 'sum(rate(done_total{namespace="$namespace",pod="$pod"}[$window]))',
            "saturation_query": 'sum(queue{pod="$pod"})',
        }
    )
    queries = sweep.level_queries(given_queries, target, "ns", "p-1", PrometheusSpec())
    assert queries.throughput == 'sum(rate(done_total{namespace="ns",pod="p-1"}[60s]))'
    assert queries.samples == 'count_over_time((sum(queue{pod="p-1"}))[60s:1s])'


# ---------------------------------------------------------------------------
# The budget and the agents while a pod is measured, with the real trust rule


BUDGET = rc.BudgetRef(name="llm", namespace="ns", created="2026-01-01T00:00:00Z", generation=1)
SPEC_DOC: dict[str, Any] = {
    "totalWatts": 850,
    "safeDefaultWatts": 200,
    "targets": [
        {
            "name": "decode",
            "workloadRef": {"name": "decode"},
            "minReplicas": 3,
            "maxReplicas": 3,
            "capWatts": {"min": 200, "max": 400},
            "profile": {"points": [{"watts": 200, "throughput": 8}, {"watts": 400, "throughput": 12}]},
            "demand": 40,
        }
    ],
}


class World:
    """Three pods on one node; each round the operator reconciles and the agents apply the real trust rule."""

    def __init__(self) -> None:
        self.spec = parse_spec(SPEC_DOC)
        self.pods = {
            f"decode-{i}": rc.PodState(
                name=f"decode-{i}", labels={"app": "decode"}, phase="Running", node_name="n"
            )
            for i in range(3)
        }
        self.held = {name: 700 for name in self.pods}  # the GPUs' default until an agent caps them
        self.status: Any = None
        self.protects: list[rc.ProtectPod] = []

    def round(self, measuring: rc.MeasuredPod | None, check: bool = True) -> rc.Outcome:
        problem = problem_from_spec(self.spec)
        the_plan = plan(problem)
        measurements = {}
        if measuring is not None:
            around = sweep.plan_around(problem, sweep.Reservation("decode", measuring.cap_watts))
            if around is not None:
                the_plan, measurements = around, {"decode": measuring}
        observed = rc.Observed(
            BUDGET,
            self.spec,
            self.status,
            {"decode": rc.WorkloadState(replicas=3, selector="app=decode")},
            list(self.pods.values()),
            node_max_watts={"n": 700},
            measurements=measurements,
        )
        outcome = rc.reconcile(observed, the_plan, "2026-01-01T00:00:10Z")
        for write_step in outcome.steps:
            for write in write_step:
                if isinstance(write, rc.AnnotatePod):
                    self.pods[write.pod] = replace(
                        self.pods[write.pod],
                        cap_annotation=format_power_limit(write.cap_watts),
                        budget_annotation="llm",
                    )
                elif isinstance(write, rc.ProtectPod):
                    self.protects.append(write)
                    changes = write.annotations()
                    self.pods[write.pod] = replace(
                        self.pods[write.pod],
                        deletion_cost=changes[rc.DELETION_COST_ANNOTATION],
                        saved_deletion_cost=changes[rc.SAVED_DELETION_COST_ANNOTATION],
                    )
                elif isinstance(write, rc.WriteStatus):
                    self.status = write.status
            self.agents()
            if check:
                assert sum(self.held.values()) <= 850, f"the GPUs hold {self.held} after a step"
        return outcome

    def agents(self) -> None:
        """What every agent applies: the real trust rule over the budget's status as the API holds it."""
        if self.status is None:
            return
        raw = {
            "metadata": {"name": "llm", "namespace": "ns", "creationTimestamp": BUDGET.created},
            "spec": SPEC_DOC,
            "status": rc.status_body(self.status),
        }
        budgets = BudgetIndex.build([budget_view(raw)])
        for name, pod in self.pods.items():
            view = PodView(
                PodKey("ns", name), name, pod.labels, pod.budget_annotation, pod.cap_annotation, False
            )
            decided = pod_cap(view, budgets, 200)
            assert decided is not None
            self.held[name] = decided.cap_watts
            self.pods[name] = replace(
                pod, power_capped=rc.CappedReport(True, "Capped", HeldWatts(1, decided.cap_watts))
            )

    def settle(self, measuring: rc.MeasuredPod | None, rounds: int = 6, check: bool = True) -> None:
        for _ in range(rounds):
            self.round(measuring, check)


def test_the_measured_pod_holds_its_level_the_others_the_plan_around_it_and_back_on_deletion() -> None:
    world = World()
    world.settle(None, check=False)  # from the GPUs' defaults to the plan
    normal = plan(problem_from_spec(world.spec)).target("decode").cap_watts
    assert set(world.held.values()) == {normal}
    for cap in (400, 200, 300):
        measuring = rc.MeasuredPod("decode-1", cap, "sweep")
        world.settle(measuring)
        assert world.held["decode-1"] == cap
        around = sweep.plan_around(problem_from_spec(world.spec), sweep.Reservation("decode", cap))
        assert around is not None
        others = {world.held[name] for name in ("decode-0", "decode-2")}
        assert others == {around.target("decode").cap_watts}
        assert sum(world.held.values()) <= 850
        entry = world.status.target("decode")
        assert entry.measurement is not None and (entry.measurement.pod, entry.measurement.cap_watts) == (
            "decode-1",
            cap,
        )
    # The run is deleted: the pod goes back on the plan, its grant leaves the status.
    world.settle(None)
    assert set(world.held.values()) == {normal}
    assert world.status.target("decode").measurement is None


def test_the_measured_pod_is_the_last_its_replicaset_deletes_and_gets_its_own_deletion_cost_back() -> None:
    world = World()
    world.pods["decode-1"] = replace(world.pods["decode-1"], deletion_cost="5")
    world.settle(None, check=False)
    assert not world.protects  # nothing measured: no deletion cost is touched
    world.settle(rc.MeasuredPod("decode-1", 300, "sweep"))
    measured = world.pods["decode-1"]
    assert (measured.deletion_cost, measured.saved_deletion_cost) == (rc.MEASURED_DELETION_COST, "5")
    assert all(world.pods[n].deletion_cost is None for n in ("decode-0", "decode-2"))
    assert len(world.protects) == 1  # written once, not every round
    # The next level measures another pod: the first gets its own cost back, the second none saved.
    world.settle(rc.MeasuredPod("decode-2", 300, "sweep"))
    assert (world.pods["decode-1"].deletion_cost, world.pods["decode-1"].saved_deletion_cost) == ("5", None)
    assert world.pods["decode-2"].deletion_cost == rc.MEASURED_DELETION_COST
    assert world.pods["decode-2"].saved_deletion_cost == ""
    world.settle(None)
    assert all(
        (pod.deletion_cost, pod.saved_deletion_cost) == (None if name != "decode-1" else "5", None)
        for name, pod in world.pods.items()
    )
    assert len(world.protects) == 4


def test_the_measured_pod_is_protected_before_the_workload_scales_down() -> None:
    spec = parse_spec(SPEC_DOC)
    problem = problem_from_spec(spec)
    around = sweep.plan_around(problem, sweep.Reservation("decode", 300))
    assert around is not None and around.target("decode").replicas == 3
    pods = [
        rc.PodState(name=f"decode-{i}", labels={"app": "decode"}, phase="Running", node_name="n")
        for i in range(4)
    ]
    observed = rc.Observed(
        BUDGET,
        spec,
        None,
        {"decode": rc.WorkloadState(replicas=4, selector="app=decode")},  # one more than maxReplicas
        pods,
        node_max_watts={"n": 700},
        measurements={"decode": rc.MeasuredPod("decode-3", 300, "sweep")},
    )
    outcome = rc.reconcile(observed, around, "2026-01-01T00:00:10Z")
    flat = [(index, w) for index, step_ in enumerate(outcome.steps) for w in step_]
    protect = next(index for index, w in flat if isinstance(w, rc.ProtectPod))
    scale = next(index for index, w in flat if isinstance(w, rc.ScaleWorkload))
    assert protect < scale
    assert [w for _, w in flat if isinstance(w, rc.ProtectPod)] == [rc.ProtectPod("decode-3", True, "")]


def test_releasing_a_measured_pod_gives_back_its_deletion_cost() -> None:
    pod = rc.PodState(
        name="decode-0",
        budget_annotation="llm",
        cap_annotation="300",
        deletion_cost=rc.MEASURED_DELETION_COST,
        saved_deletion_cost="-10",
    )
    (release,) = rc.release_writes("llm", [pod])
    assert release.annotations() == {
        "gpupower.dev/power-limit-watts": None,
        "gpupower.dev/budget": None,
        rc.DELETION_COST_ANNOTATION: "-10",
        rc.SAVED_DELETION_COST_ANNOTATION: None,
    }
    plain = rc.release_writes("llm", [replace(pod, deletion_cost=None, saved_deletion_cost=None)])
    assert rc.DELETION_COST_ANNOTATION not in plain[0].annotations()


def test_the_measured_pods_own_annotation_never_takes_it_above_its_grant() -> None:
    world = World()
    world.settle(None, check=False)
    world.settle(rc.MeasuredPod("decode-1", 300, "sweep"))
    raw = {
        "metadata": {"name": "llm", "namespace": "ns", "creationTimestamp": BUDGET.created},
        "spec": SPEC_DOC,
        "status": rc.status_body(world.status),
    }
    budgets = BudgetIndex.build([budget_view(raw)])
    greedy = PodView(PodKey("ns", "decode-1"), "u", {"app": "decode"}, "llm", "400", False)
    assert pod_cap(greedy, budgets, 200).verdict is Verdict.UNTRUSTED  # type: ignore[union-attr]
    other = PodView(PodKey("ns", "decode-0"), "u", {"app": "decode"}, "llm", "300", False)
    grant = world.status.target("decode").cap_watts
    assert grant < 300
    assert pod_cap(other, budgets, 200).verdict is Verdict.UNTRUSTED  # type: ignore[union-attr]
    measured = PodView(PodKey("ns", "decode-1"), "u", {"app": "decode"}, "llm", "300", False)
    assert pod_cap(measured, budgets, 200).cap_watts == 300  # type: ignore[union-attr]


def test_a_run_picked_up_again_measures_its_current_level_again_from_the_grant() -> None:
    status = _until(step(RunStatus(), START, seen()).status, START, 200)
    assert status.levels[0].phase is LevelPhase.HOLDING
    again = sweep.resumed(status)
    assert again.levels[0].phase is LevelPhase.PENDING and again.levels[0].hold_started_at is None
    assert step(again, START + 50, seen(held=200, verdict=200)).status.levels[0].phase is LevelPhase.SETTLING
    finished = step(status, START + 44, seen(held=200, verdict=200, reading=SATURATED)).status
    assert sweep.resumed(finished).levels[0] == finished.levels[0]
