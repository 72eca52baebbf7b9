"""Property tests for the planner: budget, bounds, exactness against brute force, determinism."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupower_operator.planner import (
    Plan,
    Problem,
    ProfilePoint,
    TargetProblem,
    brute_force,
    cap_grid,
    clear_cache,
    desired_replicas,
    fits_budget,
    floor_watts,
    optimize,
    proportional,
    target_milliwatts,
    target_watts,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def profiles(draw: st.DrawFn) -> tuple[ProfilePoint, ...]:
    """1-4 points, increasing watts, non-decreasing throughput (flat stretches included)."""
    count = draw(st.integers(1, 4))
    watts = sorted(draw(st.sets(st.integers(50, 800), min_size=count, max_size=count)))
    throughput = 0.0
    points = []
    for w in watts:
        throughput += draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 7.25]))
        points.append(ProfilePoint(float(w), throughput))
    return tuple(points)


@st.composite
def targets(draw: st.DrawFn, name: str, small: bool) -> TargetProblem:
    low = draw(st.integers(0, 2))
    cap_min = draw(st.sampled_from([100, 150, 200, 250]))
    span = draw(st.sampled_from([0, 50, 100, 150, 300]) if small else st.integers(0, 600))
    return TargetProblem(
        name=name,
        min_replicas=low,
        max_replicas=low + draw(st.integers(0, 3 if small else 20)),
        cap_min_watts=cap_min,
        cap_max_watts=cap_min + span,
        profile=draw(profiles()),
        demand=draw(
            st.one_of(st.none(), st.just(0.0), st.floats(0.1, 60.0), st.sampled_from([3.0, 10.0, 12.5]))
        ),
        gpus_per_replica=draw(st.sampled_from([1, 1, 2, 4])),
        power_factor=draw(st.sampled_from([1.0, 1.0, 0.85, 0.9, 1.1, 0.333])),
        throughput_factor=draw(st.sampled_from([1.0, 1.0, 0.5, 0.7, 1.3])),
    )


@st.composite
def problems(draw: st.DrawFn, small: bool = True) -> Problem:
    count = draw(st.integers(1, 3))
    members = tuple(draw(targets(f"t{i}", small)) for i in range(count))
    step = draw(st.sampled_from([50, 75, 100]) if small else st.sampled_from([5, 10, 25]))
    floor = floor_watts(Problem(total_watts=1, targets=members))
    ceiling = sum(target_watts(t, t.max_replicas, t.cap_max_watts) for t in members)
    # Budgets from well below the floor to above everything, plus the boundaries themselves.
    budget = draw(
        st.one_of(
            st.floats(1.0, max(2.0, ceiling * 1.2)),
            st.sampled_from([max(1.0, floor), max(1.0, ceiling), max(1.0, floor - 1), floor + 0.5]),
        )
    )
    return Problem(total_watts=budget, targets=members, cap_step_watts=step)


def assert_within_budget_or_exactly_the_floor(problem: Problem, result: Plan) -> None:
    if result.feasible:
        assert fits_budget(
            [
                target_milliwatts(spec, t.replicas, t.cap_watts)
                for spec, t in zip(problem.targets, result.targets, strict=True)
            ],
            problem.total_watts,
        )
        assert result.watts <= problem.total_watts
        assert result.infeasible_by_watts == 0
    else:
        assert not fits_budget(
            [target_milliwatts(t, t.min_replicas, t.cap_min_watts) for t in problem.targets],
            problem.total_watts,
        )
        assert [(t.replicas, t.cap_watts) for t in result.targets] == [
            (t.min_replicas, t.cap_min_watts) for t in problem.targets
        ]
        assert result.infeasible_by_watts > 0
        assert result.infeasible_by_watts == pytest.approx(result.watts - problem.total_watts, abs=0.001)
        assert result.binding
        assert result.reason.startswith("infeasible by ")


def assert_bounds(problem: Problem, result: Plan) -> None:
    assert [t.name for t in result.targets] == [t.name for t in problem.targets]
    for spec, planned in zip(problem.targets, result.targets, strict=True):
        assert spec.min_replicas <= planned.replicas <= spec.max_replicas
        assert planned.cap_watts in cap_grid(spec.cap_min_watts, spec.cap_max_watts, problem.cap_step_watts)
        assert planned.gpus == planned.replicas * spec.gpus_per_replica
        assert planned.desired_replicas == desired_replicas(spec)
        assert 0.0 <= planned.served_fraction <= 1.0
    assert result.served_fraction == min(t.served_fraction for t in result.targets)


@SETTINGS
@given(problems(small=False))
def test_every_plan_is_within_budget_or_exactly_the_floor(problem: Problem) -> None:
    for algorithm in (optimize, proportional):
        result = algorithm(problem)
        assert_within_budget_or_exactly_the_floor(problem, result)
        assert_bounds(problem, result)


@SETTINGS
@given(problems(small=False))
def test_optimize_never_serves_less_than_proportional(problem: Problem) -> None:
    assert optimize(problem).served_fraction >= proportional(problem).served_fraction


@SETTINGS
@given(problems(small=False))
def test_proportional_without_adjustment_is_the_classic_plan(problem: Problem) -> None:
    result = proportional(problem)
    if result.feasible and result.adjustment is None:
        for spec, planned in zip(problem.targets, result.targets, strict=True):
            assert planned.cap_watts == spec.cap_max_watts
            assert spec.min_replicas <= planned.replicas <= planned.desired_replicas


@SETTINGS
@given(problems(small=False), st.randoms(use_true_random=False))
def test_optimize_is_deterministic_and_independent_of_target_order(problem: Problem, random: object) -> None:
    clear_cache()
    first = optimize(problem)  # cold
    assert optimize(problem) == first  # warm: the memoized frontiers change nothing
    assert optimize(problem) == first
    order = list(range(len(problem.targets)))
    random.shuffle(order)  # type: ignore[attr-defined]
    renamed = {t.name: f"role-{i}" for i, t in enumerate(problem.targets)}
    shuffled = replace(
        problem,
        targets=tuple(replace(problem.targets[i], name=renamed[problem.targets[i].name]) for i in order),
    )
    second = optimize(shuffled)
    assert (second.served_fraction, second.watts, second.gpus) == (
        first.served_fraction,
        first.watts,
        first.gpus,
    )
    for planned in first.targets:
        assert replace(second.target(renamed[planned.name]), name=planned.name) == planned


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(small=True))
def test_optimize_equals_brute_force_on_small_instances(problem: Problem) -> None:
    # The whole plan must match: served, watts, GPUs, every target's replicas and cap, the reason.
    assert optimize(problem) == brute_force(problem)
