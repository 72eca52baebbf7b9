"""Property tests for the planner: budget, bounds, exactness against brute force, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import product

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpupower_operator.core.planner import (
    Plan,
    Problem,
    ProfilePoint,
    RaisedPoint,
    ServedCurve,
    TargetProblem,
    brute_force,
    budget_milliwatts,
    cap_grid,
    caps_milliwatts,
    clear_cache,
    desired_replicas,
    fits,
    fits_budget,
    floor_watts,
    least_milliwatts,
    optimize,
    proportional,
    raised_points,
    replica_throughput,
    served_fraction,
    target_milliwatts,
    target_watts,
    throughput_at,
)
from gpupower_operator.core.planner import _cap_table as cap_table
from gpupower_operator.core.planner import _cheapest_by_caps as cheapest_by_caps
from gpupower_operator.core.planner import _cheapest_by_replicas as cheapest_by_replicas
from gpupower_operator.core.planner import _cheapest_pair as cheapest_pair
from gpupower_operator.core.planner import _throughputs_on_grid as throughputs_on_grid

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


STEPS = [0.0, 0.5, 1.0, 2.5, 3.0, 7.25]
# Measured points may dip: noise of a fraction of a percent, or a real fall.
DIPS = [-0.01, -0.5, -2.5, -6.0]


@st.composite
def profiles(draw: st.DrawFn, dips: bool = True) -> tuple[ProfilePoint, ...]:
    """1-4 points, increasing watts; throughput rising, flat, or (with ``dips``) falling between points."""
    count = draw(st.integers(1, 4))
    watts = sorted(draw(st.sets(st.integers(50, 800), min_size=count, max_size=count)))
    throughput = 0.0
    points = []
    for w in watts:
        throughput = max(0.0, throughput + draw(st.sampled_from(STEPS + DIPS if dips else STEPS)))
        points.append(ProfilePoint(float(w), throughput))
    return tuple(points)


def interpolated(profile: tuple[ProfilePoint, ...], watts: float) -> float:
    """The profile before the envelope: linear between points, flat beyond the ends."""
    if watts <= profile[0].watts:
        return profile[0].throughput
    if watts >= profile[-1].watts:
        return profile[-1].throughput
    high = next(i for i, p in enumerate(profile) if p.watts > watts)
    low_point, high_point = profile[high - 1], profile[high]
    share = (watts - low_point.watts) / (high_point.watts - low_point.watts)
    return low_point.throughput + share * (high_point.throughput - low_point.throughput)


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
        power_factor=draw(st.sampled_from([1.0, 1.0, 0.85, 0.9, 1.1, 0.333, 0.5, 0.6])),
        throughput_factor=draw(st.sampled_from([1.0, 1.0, 0.5, 0.7, 1.3])),
    )


@st.composite
def medium_targets(draw: st.DrawFn, name: str) -> TargetProblem:
    """Up to 13 caps and 9 replicas: enough for Optimize's bounds to skip caps, few enough for brute force."""
    small = draw(targets(name, small=True))
    low = small.min_replicas
    return replace(
        small,
        max_replicas=low + draw(st.integers(0, 8)),
        cap_max_watts=small.cap_min_watts + draw(st.sampled_from([0, 100, 200, 300])),
    )


@st.composite
def problems(draw: st.DrawFn, small: bool = True, medium: bool = False) -> Problem:
    if medium:
        members = tuple(draw(medium_targets(f"t{i}")) for i in range(draw(st.integers(1, 2))))
        step = 25
    else:
        members = tuple(draw(targets(f"t{i}", small)) for i in range(draw(st.integers(1, 3))))
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
    # Oversubscribed now and then: the caps' sum bounded too, above the budget by a ratio.
    ratio = draw(st.sampled_from([None, None, 1.0, 1.25, 1.5, 3.0]))
    cap_budget = None if ratio is None else budget * ratio
    return Problem(total_watts=budget, targets=members, cap_step_watts=step, cap_budget_watts=cap_budget)


def assert_within_budget_or_exactly_the_floor(problem: Problem, result: Plan) -> None:
    caps = sum(
        caps_milliwatts(spec, t.replicas, t.cap_watts)
        for spec, t in zip(problem.targets, result.targets, strict=True)
    )
    assert result.caps_watts == caps / 1000
    if result.feasible:
        assert fits_budget(
            [
                target_milliwatts(spec, t.replicas, t.cap_watts)
                for spec, t in zip(problem.targets, result.targets, strict=True)
            ],
            problem.total_watts,
        )
        assert result.watts <= problem.total_watts
        if problem.cap_budget_watts is not None:
            assert fits_budget([caps], problem.cap_budget_watts)
        assert result.infeasible_by_watts == 0
    else:
        floor = [(t.min_replicas, t.cap_min_watts) for t in problem.targets]
        assert not fits(problem, floor)
        assert [(t.replicas, t.cap_watts) for t in result.targets] == floor
        assert result.infeasible_by_watts > 0
        over = result.watts - problem.total_watts
        if problem.cap_budget_watts is not None:
            over = max(over, result.caps_watts - problem.cap_budget_watts)
        assert result.infeasible_by_watts == pytest.approx(over, abs=0.002)
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(small=True), st.lists(st.sampled_from([0.3, 0.5, 0.6, 0.8]), min_size=3, max_size=3))
def test_optimize_equals_brute_force_when_oversubscription_bounds_the_caps(
    problem: Problem, factors: list[float]
) -> None:
    """GPUs drawing well under their caps, the caps' sum bounded at 1.2 x the budget: often the caps bind."""
    drawing_less = replace(
        problem,
        targets=tuple(replace(t, power_factor=f) for t, f in zip(problem.targets, factors, strict=False)),
        cap_budget_watts=problem.total_watts * 1.2,
    )
    result = optimize(drawing_less)
    unbounded = optimize(replace(drawing_less, cap_budget_watts=None))
    event("the caps bound binds" if result != unbounded else "the caps bound does not bind")
    assert result == brute_force(drawing_less)
    assert result.caps_watts <= drawing_less.total_watts * 1.2 or not result.feasible


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(medium=True))
def test_optimize_equals_brute_force_on_medium_instances(problem: Problem) -> None:
    clear_cache()
    assert optimize(problem) == brute_force(problem)


@SETTINGS
@given(problems(small=True), st.sampled_from([0.0, -0.001, 0.001]))
def test_optimize_equals_brute_force_with_the_budget_at_a_plans_exact_power(
    problem: Problem, offset_watts: float
) -> None:
    # A budget equal to what a plan draws (or a milliwatt either side) is where ties are decided.
    watts = brute_force(problem).watts + offset_watts
    at_power = replace(problem, total_watts=max(1.0, watts))
    assert optimize(at_power) == brute_force(at_power)


@SETTINGS
@given(profiles(), st.integers(10, 400), st.integers(0, 700), st.sampled_from([1, 5, 7, 25, 50, 100]))
def test_throughputs_on_a_cap_grid_are_throughput_at_bit_for_bit(
    profile: tuple[ProfilePoint, ...], cap_min: int, span: int, step: int
) -> None:
    grid = cap_grid(cap_min, cap_min + span, step)
    assert throughputs_on_grid(profile, grid) == [throughput_at(profile, cap) for cap in grid]


@SETTINGS
@given(profiles(), st.integers(1, 900))
def test_throughput_at_is_the_highest_the_interpolated_profile_reaches_at_or_below_the_cap(
    profile: tuple[ProfilePoint, ...], cap: int
) -> None:
    # Brute force over where a piecewise-linear function can peak: the cap and every point below it.
    candidates = [cap] + [p.watts for p in profile if p.watts <= cap]
    assert throughput_at(profile, cap) == max(interpolated(profile, w) for w in candidates)
    # And no watts at or below the cap, sampled every half watt, reaches more.
    sampled = max(interpolated(profile, w / 2) for w in range(0, 2 * cap + 1))
    assert sampled <= throughput_at(profile, cap) * (1 + 1e-12)


@SETTINGS
@given(profiles(), st.integers(1, 900), st.integers(0, 300))
def test_a_higher_cap_never_delivers_less(profile: tuple[ProfilePoint, ...], cap: int, more: int) -> None:
    assert throughput_at(profile, cap + more) >= throughput_at(profile, cap)


@SETTINGS
@given(profiles(dips=False), st.integers(1, 900))
def test_a_profile_that_never_dips_is_used_as_interpolated(
    profile: tuple[ProfilePoint, ...], cap: int
) -> None:
    assert throughput_at(profile, cap) == interpolated(profile, cap)
    assert raised_points(profile) == ()


@SETTINGS
@given(profiles())
def test_raised_points_are_those_below_the_best_at_a_lower_cap(profile: tuple[ProfilePoint, ...]) -> None:
    raised = {r.index: r for r in raised_points(profile)}
    for index, point in enumerate(profile):
        best = max(p.throughput for p in profile[: index + 1])
        assert throughput_at(profile, point.watts) == best
        if point.throughput < best:
            assert raised[index] == RaisedPoint(index, point.watts, point.throughput, best)
        else:
            assert index not in raised


@SETTINGS
@given(
    targets("a", small=False).filter(lambda t: bool(t.demand)),
    st.sampled_from([5, 10, 25]),
    st.randoms(use_true_random=False),
)
def test_cheapest_pair_for_a_threshold_is_the_least_power_then_fewest_replicas_then_lowest_cap(
    target: TargetProblem, step: int, random: object
) -> None:
    pairs = [
        (
            target_milliwatts(target, r, c),
            r,
            c,
            served_fraction(r * replica_throughput(target, c), target.demand),
        )
        for r in range(target.min_replicas, target.max_replicas + 1)
        for c in cap_grid(target.cap_min_watts, target.cap_max_watts, step)
    ]
    # Thresholds exactly at what some pair serves, and one float either side of it.
    served = sorted({p[3] for p in pairs if p[3] > 0})
    chosen = random.sample(served, min(len(served), 6))  # type: ignore[attr-defined]
    thresholds = {t for v in chosen for t in (math.nextafter(v, 0), v, math.nextafter(v, 2)) if 0 < t <= 1}
    table = cap_table(target, step)
    for threshold in sorted(thresholds):
        reaching = [p for p in pairs if p[3] >= threshold]
        pick = cheapest_pair(target, table, threshold)
        lowest = max(target.min_replicas, 1)
        if not reaching:
            assert pick is None
            assert cheapest_by_caps(target, table, threshold, lowest) is None
            assert cheapest_by_replicas(target, table, threshold, lowest) is None
            continue
        assert pick is not None
        assert (pick.milliwatts, pick.replicas, pick.cap_watts, pick.served) == min(reaching)
        # Both scans find that pair, whichever the dispatch chose.
        best = (pick.replicas, table.caps.index(pick.cap_watts))
        assert cheapest_by_caps(target, table, threshold, lowest) == best
        assert cheapest_by_replicas(target, table, threshold, lowest) == best


def _combinations(problem: Problem) -> list[tuple[int, float, tuple[tuple[int, int], ...]]]:
    """(milliwatts, served fraction, choices) of every combination of every target's pairs."""
    per_target = [
        [
            (target_milliwatts(t, r, c), served_fraction(r * replica_throughput(t, c), t.demand), (r, c))
            for r in range(t.min_replicas, t.max_replicas + 1)
            for c in cap_grid(t.cap_min_watts, t.cap_max_watts, problem.cap_step_watts)
        ]
        for t in problem.targets
    ]
    return [
        (sum(o[0] for o in combo), min(o[1] for o in combo), tuple(o[2] for o in combo))
        for combo in product(*per_target)
    ]


@SETTINGS
@given(problems(small=True), st.randoms(use_true_random=False))
def test_served_curve_gives_the_least_power_that_serves_a_fraction(problem: Problem, random: object) -> None:
    problem = replace(problem, cap_budget_watts=None)  # a domain's budgets do not oversubscribe
    curve = ServedCurve(problem)
    combinations = _combinations(problem)
    served = sorted({c[1] for c in combinations if c[1] > 0})
    chosen = random.sample(served, min(len(served), 5))  # type: ignore[attr-defined]
    fractions = {f for v in chosen for f in (math.nextafter(v, 0), v, math.nextafter(v, 2)) if 0 < f <= 1}
    for fraction in sorted(fractions):
        reaching = [c for c in combinations if c[1] >= fraction]
        level = curve.serving(fraction)
        if not reaching:
            assert level is None
            continue
        assert level is not None
        assert level.served_fraction >= fraction
        assert level.milliwatts == min(c[0] for c in reaching) == least_milliwatts(problem, fraction)
        # Optimize given exactly that power uses all of it and serves at least as much: exactly that
        # level when no pairs of the same power serve more (a budget must be above zero, and one
        # milliwatt buys no more than none).
        at_level = optimize(replace(problem, total_watts=max(level.milliwatts, 1) / 1000))
        assert at_level.watts * 1000 == pytest.approx(level.milliwatts, abs=1e-6)
        assert at_level.served_fraction >= level.served_fraction
        step = curve.serving(math.nextafter(level.served_fraction, 2), level)
        if step is None or step.milliwatts > level.milliwatts:
            assert [(t.replicas, t.cap_watts) for t in at_level.targets] == list(level.choices)
            assert at_level.served_fraction == level.served_fraction


@SETTINGS
@given(problems(small=False))
def test_served_curve_within_a_budget_is_what_optimize_plans(problem: Problem) -> None:
    problem = replace(problem, cap_budget_watts=None)
    curve = ServedCurve(problem)
    level = curve.within(budget_milliwatts(problem.total_watts))
    result = optimize(problem)
    assert list(level.choices) == [(t.replicas, t.cap_watts) for t in result.targets]
    assert (level.served_fraction, level.gpus) == (result.served_fraction, result.gpus)
    assert curve.floor.choices == tuple((t.min_replicas, t.cap_min_watts) for t in problem.targets)
