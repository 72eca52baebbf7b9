"""Table tests for the planner: the model, the fail-closed floor, both strategies and their reasons."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest

from gpupower_api.models import Strategy, parse_spec
from gpupower_operator.core.planner import (
    Problem,
    ProfilePoint,
    ServedCurve,
    TargetProblem,
    brute_force,
    budget_milliwatts,
    cap_grid,
    clear_cache,
    desired_replicas,
    fits_budget,
    floor_watts,
    optimize,
    plan,
    problem_from_spec,
    proportional,
    served_fraction,
    target_milliwatts,
    target_watts,
    throughput_at,
    validate_problem,
)

# Relative throughput of an H100-class GPU against its power cap: concave, flat near TDP.
H100_SHAPE = ((200, 0.45), (300, 0.70), (400, 0.86), (500, 0.95), (600, 0.99), (700, 1.0))


def profile(*points: tuple[float, float]) -> tuple[ProfilePoint, ...]:
    return tuple(ProfilePoint(w, t) for w, t in points)


def h100(peak: float) -> tuple[ProfilePoint, ...]:
    return profile(*((w, share * peak) for w, share in H100_SHAPE))


def target(name: str = "a", **fields: object) -> TargetProblem:
    values: dict[str, object] = {
        "name": name,
        "min_replicas": 0,
        "max_replicas": 10,
        "cap_min_watts": 100,
        "cap_max_watts": 400,
        "profile": profile((100, 10.0), (400, 20.0)),
        "demand": None,
    }
    values.update(fields)
    return TargetProblem(**values)  # type: ignore[arg-type]


def choices(result_plan: object) -> list[tuple[str, int, int]]:
    return [(t.name, t.replicas, t.cap_watts) for t in result_plan.targets]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# The model


@pytest.mark.parametrize(
    ("watts", "expected"),
    [
        (50, 10.0),  # below the first point: flat
        (100, 10.0),
        (175, 12.5),  # a quarter of the way from 100 W to 400 W
        (250, 15.0),
        (400, 20.0),
        (900, 20.0),  # beyond the last point: flat
    ],
)
def test_throughput_is_linear_between_points_and_flat_beyond(watts: float, expected: float) -> None:
    assert throughput_at(profile((100, 10.0), (400, 20.0)), watts) == pytest.approx(expected)


def test_throughput_of_a_multi_point_profile_uses_the_enclosing_segment() -> None:
    points = profile((200, 9.0), (300, 14.0), (400, 17.2))
    assert throughput_at(points, 350) == pytest.approx(15.6)
    assert throughput_at(points, 300) == 14.0


def test_a_measured_dip_is_raised_to_the_best_throughput_at_a_lower_cap() -> None:
    # Benchmark noise: 425 W measured 0.1 % below 350 W.
    points = profile((200, 14.0), (350, 25.626), (425, 25.595), (500, 26.4))
    assert throughput_at(points, 425) == 25.626
    assert throughput_at(points, 400) == 25.626  # the interpolated 25.605 is below what 350 W serves
    assert throughput_at(points, 490) == pytest.approx(25.595 + 65 / 75 * (26.4 - 25.595))
    assert throughput_at(points, 900) == 26.4


def test_a_profile_that_falls_at_its_end_stays_at_its_best_beyond() -> None:
    points = profile((200, 10.0), (300, 16.0), (400, 12.0))
    assert [throughput_at(points, w) for w in (300, 350, 400, 700)] == [16.0, 16.0, 16.0, 16.0]


def test_a_plan_never_pays_for_a_cap_that_serves_less_than_a_lower_one() -> None:
    dipping = target(profile=profile((100, 10.0), (200, 20.0), (300, 15.0), (400, 22.0)), demand=20.0)
    result = optimize(Problem(total_watts=10_000, targets=(dipping,), cap_step_watts=50))
    assert choices(result) == [("a", 1, 200)]
    assert result.targets[0].capacity == 20.0
    assert result == brute_force(Problem(total_watts=10_000, targets=(dipping,), cap_step_watts=50))


def test_single_point_profile_is_flat_everywhere() -> None:
    points = profile((300, 7.0))
    assert [throughput_at(points, w) for w in (100, 300, 700)] == [7.0, 7.0, 7.0]


@pytest.mark.parametrize(
    ("low", "high", "step", "expected"),
    [
        (200, 220, 5, (200, 205, 210, 215, 220)),
        (200, 212, 5, (200, 205, 210, 212)),  # the max is always on the grid
        (300, 300, 5, (300,)),
        (100, 700, 300, (100, 400, 700)),
        (100, 150, 1000, (100, 150)),
    ],
)
def test_cap_grid_starts_at_min_steps_and_always_ends_at_max(
    low: int, high: int, step: int, expected: tuple[int, ...]
) -> None:
    assert cap_grid(low, high, step) == expected


def test_cap_grid_over_h100_range_has_101_caps() -> None:
    grid = cap_grid(200, 700, 5)
    assert (len(grid), grid[0], grid[-1]) == (101, 200, 700)


@pytest.mark.parametrize(("low", "high", "step"), [(300, 200, 5), (0, 200, 5), (100, 200, 0)])
def test_cap_grid_rejects_an_empty_range_or_step(low: int, high: int, step: int) -> None:
    with pytest.raises(ValueError, match="cap grid"):
        cap_grid(low, high, step)


@pytest.mark.parametrize(
    ("capacity", "demand", "expected"),
    [(5.0, None, 1.0), (0.0, 0.0, 1.0), (50.0, 100.0, 0.5), (150.0, 100.0, 1.0), (0.0, 10.0, 0.0)],
)
def test_served_fraction_is_capped_at_one_and_no_demand_counts_as_served(
    capacity: float, demand: float | None, expected: float
) -> None:
    assert served_fraction(capacity, demand) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"demand": 100.0}, 5),  # 100 / 20 at the max cap: exactly 5, not 6
        ({"demand": 101.0}, 6),
        ({"demand": 1000.0}, 10),  # clamped to maxReplicas
        ({"demand": 5.0, "min_replicas": 2}, 2),  # clamped to minReplicas
        ({"demand": None, "min_replicas": 3}, 3),  # no demand asks for the minimum
        ({"demand": 0.0, "min_replicas": 1}, 1),
        ({"demand": 100.0, "throughput_factor": 0.5}, 10),  # replicas deliver half the profile
        ({"demand": 30.0, "profile": profile((100, 0.0), (400, 0.0))}, 10),  # nothing helps: max
        ({"demand": 0.3, "profile": profile((100, 0.1), (400, 0.1))}, 3),  # 3 * 0.1 serves 0.3 in floats
    ],
)
def test_desired_replicas_is_what_demand_asks_at_the_max_cap(
    fields: dict[str, object], expected: int
) -> None:
    assert desired_replicas(target(**fields)) == expected


def test_power_is_counted_in_whole_milliwatts_so_sums_are_exact() -> None:
    corrected = target(power_factor=1.1)
    assert target_milliwatts(corrected, 1, 100) == 110_000  # 100 * 1.1 is 110.00000000000001 in floats
    assert target_watts(corrected, 3, 333) == 1098.9
    assert fits_budget([100_000, 110_000], 210)
    assert not fits_budget([100_000, 110_001], 210)
    assert budget_milliwatts(210.0005) == 210_000  # rounded down: nothing planned may exceed the budget


def test_a_corrected_floor_exactly_at_the_budget_is_feasible() -> None:
    problem = Problem(
        total_watts=210,
        targets=(target("a", min_replicas=1), target("b", min_replicas=1, power_factor=1.1)),
    )
    result = optimize(problem)
    assert (result.feasible, result.watts, result.infeasible_by_watts) == (True, 210, 0)


# ---------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("problem", "field"),
    [
        (Problem(total_watts=0, targets=(target(),)), "total_watts"),
        (Problem(total_watts=float("nan"), targets=(target(),)), "total_watts"),
        (Problem(total_watts=1e13, targets=(target(),)), "total_watts"),
        (Problem(total_watts=1000, targets=()), "targets"),
        (Problem(total_watts=1000, targets=(target(),), cap_step_watts=0), "cap_step_watts"),
        (Problem(total_watts=1000, targets=(target("a"), target("a"))), "targets[1].name"),
        (Problem(total_watts=1000, targets=(target(min_replicas=-1),)), "targets[0].min_replicas"),
        (
            Problem(total_watts=1000, targets=(target(max_replicas=-1, min_replicas=0),)),
            "targets[0].max_replicas",
        ),
        (Problem(total_watts=1000, targets=(target(cap_min_watts=0),)), "targets[0].cap_min_watts"),
        (Problem(total_watts=1000, targets=(target(cap_max_watts=50),)), "targets[0].cap_max_watts"),
        (Problem(total_watts=1000, targets=(target(cap_max_watts=10**6),)), "targets[0].cap_max_watts"),
        (Problem(total_watts=1000, targets=(target(max_replicas=10**7),)), "targets[0].max_replicas"),
        (Problem(total_watts=1000, targets=(target(gpus_per_replica=4096),)), "targets[0].gpus_per_replica"),
        (Problem(total_watts=1000, targets=(target(gpus_per_replica=0),)), "targets[0].gpus_per_replica"),
        (Problem(total_watts=1000, targets=(target(demand=-1.0),)), "targets[0].demand"),
        (Problem(total_watts=1000, targets=(target(demand=float("inf")),)), "targets[0].demand"),
        (Problem(total_watts=1000, targets=(target(power_factor=0.0),)), "targets[0].power_factor"),
        (Problem(total_watts=1000, targets=(target(power_factor=250.0),)), "targets[0].power_factor"),
        (
            Problem(total_watts=1000, targets=(target(throughput_factor=-2.0),)),
            "targets[0].throughput_factor",
        ),
        (Problem(total_watts=1000, targets=(target(profile=()),)), "targets[0].profile"),
        (
            Problem(total_watts=1000, targets=(target(profile=profile((200, 1.0), (100, 2.0))),)),
            "targets[0].profile[1].watts",
        ),
        (
            Problem(total_watts=1000, targets=(target(profile=profile((100, 2.0), (200, -1.0))),)),
            "targets[0].profile[1].throughput",
        ),
        (
            Problem(total_watts=1000, targets=(target(profile=profile((100, 2.0), (200, math.nan))),)),
            "targets[0].profile[1].throughput",
        ),
    ],
)
def test_invalid_problem_raises_value_error_naming_the_field(problem: Problem, field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        validate_problem(problem)
    for algorithm in (optimize, proportional, brute_force):
        with pytest.raises(ValueError):
            algorithm(problem)


SPEC = {
    "totalWatts": 16000,
    "safeDefaultWatts": 350,
    "targets": [
        {
            "name": "prefill",
            "workloadRef": {"name": "prefill"},
            "minReplicas": 1,
            "maxReplicas": 16,
            "capWatts": {"min": 200, "max": 700},
            "profile": {"points": [{"watts": 200, "throughput": 9.0}, {"watts": 700, "throughput": 20.0}]},
            "demand": 120,
        },
        {
            "name": "decode",
            "workloadRef": {"name": "decode"},
            "gpusPerReplica": 2,
            "maxReplicas": 24,
            "profile": {"points": [{"watts": 250, "throughput": 5.0}, {"watts": 650, "throughput": 8.0}]},
        },
    ],
}


def test_problem_from_spec_copies_the_spec() -> None:
    problem = problem_from_spec(parse_spec(SPEC))
    prefill, decode = problem.targets
    assert (problem.total_watts, problem.cap_step_watts, problem.strategy) == (16000, 5, Strategy.OPTIMIZE)
    assert (prefill.cap_min_watts, prefill.cap_max_watts, prefill.demand) == (200, 700, 120)
    assert prefill.profile == profile((200, 9.0), (700, 20.0))
    # Without capWatts the profile's span is the cap range; minReplicas defaults to 1.
    assert (decode.cap_min_watts, decode.cap_max_watts, decode.min_replicas) == (250, 650, 1)
    assert (decode.gpus_per_replica, decode.demand, decode.power_factor) == (2, None, 1.0)


def test_problem_from_spec_applies_live_demand_cap_ranges_corrections_and_strategy() -> None:
    problem = problem_from_spec(
        parse_spec(SPEC),
        demand={"prefill": None, "decode": 40.0},
        cap_ranges={"prefill": (250, 600)},
        corrections={"decode": (0.9, 1.1)},
        strategy=Strategy.PROPORTIONAL,
    )
    prefill, decode = problem.targets
    assert problem.strategy == Strategy.PROPORTIONAL
    assert (prefill.demand, prefill.cap_min_watts, prefill.cap_max_watts) == (None, 250, 600)
    # Without oversubscription a GPU counts at its whole cap, however little it draws.
    assert (decode.demand, decode.power_factor, decode.throughput_factor) == (40.0, 1.0, 1.1)
    assert problem.cap_budget_watts is None
    above = problem_from_spec(parse_spec(SPEC), corrections={"decode": (1.2, 1.0)})
    assert above.targets[1].power_factor == 1.2  # drawing above the cap still counts, for safety


def test_an_oversubscribed_spec_plans_on_the_draw_and_bounds_the_caps() -> None:
    spec = parse_spec({**SPEC, "oversubscription": {"maxRatio": 1.5}})
    problem = problem_from_spec(spec, corrections={"decode": (0.5, 1.0)})
    assert problem.targets[1].power_factor == 0.5
    assert problem.cap_budget_watts == pytest.approx(SPEC["totalWatts"] * 1.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cap_ranges": {"prefill": (500, 400)}}, r"targets\[0\]\.cap_max_watts .*empty"),
        ({"demand": {"nobody": 3.0}}, "demand: unknown target"),
        ({"corrections": {"decode": (0.0, 1.0)}}, r"targets\[1\]\.power_factor"),
        ({"demand": {"decode": -5.0}}, r"targets\[1\]\.demand"),
    ],
)
def test_problem_from_spec_rejects_bad_overrides_naming_the_field(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        problem_from_spec(parse_spec(SPEC), **overrides)  # type: ignore[arg-type]


def test_problem_from_spec_plans_within_an_explicit_budget() -> None:
    problem = problem_from_spec(parse_spec(SPEC), total_watts=4200.5)
    assert problem.total_watts == 4200.5


def test_a_domain_budget_without_total_watts_needs_its_allocation_and_says_so() -> None:
    spec = parse_spec(
        {**{k: v for k, v in SPEC.items() if k != "totalWatts"}, "domainRef": {"name": "rack-a12"}}
    )
    assert spec.total_watts is None
    with pytest.raises(ValueError, match=r"^spec\.totalWatts: not set, .*domain rack-a12"):
        problem_from_spec(spec)
    assert problem_from_spec(spec, total_watts=3000).total_watts == 3000


# ---------------------------------------------------------------------------
# Fail closed


FLOORED = (
    target("prefill", min_replicas=2, gpus_per_replica=2, cap_min_watts=200, cap_max_watts=700, demand=50.0),
    target("decode", min_replicas=3, gpus_per_replica=1, cap_min_watts=250, cap_max_watts=700, demand=80.0),
)  # floor: 2 * 2 * 200 + 3 * 1 * 250 = 1,550 W


@pytest.mark.parametrize("algorithm", [optimize, proportional, brute_force])
def test_floor_above_budget_returns_exactly_the_floor_and_says_by_how_much(algorithm: object) -> None:
    result = algorithm(Problem(total_watts=1200, targets=FLOORED, cap_step_watts=50))  # type: ignore[operator]
    assert choices(result) == [("prefill", 2, 200), ("decode", 3, 250)]
    assert (result.watts, result.floor_watts) == (1550, 1550)
    assert not result.feasible
    assert result.binding
    assert result.infeasible_by_watts == 350
    assert result.reason.startswith("infeasible by 350 W: the floor")
    assert "needs 1,550 W, the budget is 1,200 W" in result.reason


@pytest.mark.parametrize("algorithm", [optimize, proportional])
def test_floor_exactly_at_the_budget_is_feasible(algorithm: object) -> None:
    result = algorithm(Problem(total_watts=1550, targets=FLOORED))  # type: ignore[operator]
    assert result.feasible
    assert result.infeasible_by_watts == 0
    assert result.watts == 1550


# ---------------------------------------------------------------------------
# Optimize


def test_optimize_serves_all_demand_with_the_least_power() -> None:
    # Need 100 units; 10 replicas at 100 W (10 each) cost 1,000 W, every other way costs more.
    single = target(
        max_replicas=12, cap_min_watts=100, cap_max_watts=200, profile=profile((100, 10), (200, 16))
    )
    problem = Problem(total_watts=1500, targets=(replace(single, demand=100.0),), cap_step_watts=50)
    result = optimize(problem)
    assert choices(result) == [("a", 10, 100)]
    assert (result.watts, result.served_fraction, result.binding) == (1000, 1.0, False)
    assert result.reason == "all demand served with 1,000 of 1,500 W"


def test_optimize_under_a_binding_budget_serves_the_most_it_can() -> None:
    single = target(
        max_replicas=12, cap_min_watts=100, cap_max_watts=200, profile=profile((100, 10), (200, 16))
    )
    problem = Problem(total_watts=999, targets=(replace(single, demand=100.0),), cap_step_watts=50)
    result = optimize(problem)
    # 9 x 100 W serves 90 for 900 W; 6 x 150 W serves only 78 for the same; 4 x 200 W serves 64.
    assert choices(result) == [("a", 9, 100)]
    assert (result.watts, result.served_fraction, result.binding) == (900, 0.9, True)
    assert result.reason == "budget binds: serving 90% of demand with 900 of 999 W"


def test_optimize_prefers_fewer_gpus_when_power_ties() -> None:
    # Throughput proportional to the cap: 4 x 100 W, 2 x 200 W and 1 x 400 W all serve 40 for
    # 400 W, so only the GPU count separates them.
    linear = target(
        max_replicas=8, cap_min_watts=100, cap_max_watts=400, profile=profile((100, 10), (400, 40))
    )
    problem = Problem(total_watts=1000, targets=(replace(linear, demand=40.0),), cap_step_watts=100)
    result = optimize(problem)
    assert choices(result) == [("a", 1, 400)]
    assert result.gpus == 1
    assert brute_force(problem) == result


def test_optimize_with_zero_min_replicas_and_no_demand_runs_nothing() -> None:
    problem = Problem(total_watts=1000, targets=(target(demand=None), target("b", demand=0.0)))
    result = optimize(problem)
    assert choices(result) == [("a", 0, 100), ("b", 0, 100)]
    assert (result.watts, result.served_fraction) == (0, 1.0)
    assert result.reason == "no demand: minimum replicas at the lowest cap with 0 of 1,000 W"


def test_optimize_reports_replica_limits_not_the_budget_when_max_replicas_binds() -> None:
    problem = Problem(total_watts=100_000, targets=(target(max_replicas=2, demand=100.0),))
    result = optimize(problem)
    assert choices(result) == [("a", 2, 400)]
    assert result.served_fraction == pytest.approx(0.4)
    assert not result.binding
    assert result.reason == "maxReplicas binds: serving 40% of demand with 800 of 100,000 W"


def test_optimize_applies_power_and_throughput_corrections() -> None:
    # GPUs draw 80% of their cap and deliver half the profile: 10 replicas at 100 W (5 each) serve 50.
    corrected = target(
        max_replicas=10,
        cap_min_watts=100,
        cap_max_watts=200,
        profile=profile((100, 10), (200, 16)),
        demand=50.0,
        power_factor=0.8,
        throughput_factor=0.5,
    )
    result = optimize(Problem(total_watts=800, targets=(corrected,), cap_step_watts=50))
    assert choices(result) == [("a", 10, 100)]
    assert (result.watts, result.served_fraction) == (800, 1.0)
    assert result.targets[0].capacity == 50


def test_plan_dispatches_on_the_strategy() -> None:
    problem = Problem(total_watts=5000, targets=FLOORED)
    assert plan(problem) == optimize(problem)
    assert plan(replace(problem, strategy=Strategy.PROPORTIONAL)) == proportional(problem)
    assert proportional(problem).strategy == Strategy.PROPORTIONAL


def disaggregated(total_watts: float) -> Problem:
    """Prefill and decode on H100-class GPUs, 200-700 W caps (as in the shipped llama example)."""
    return Problem(
        total_watts=total_watts,
        targets=(
            target(
                "prefill",
                min_replicas=1,
                max_replicas=16,
                cap_min_watts=200,
                cap_max_watts=700,
                profile=h100(20.0),
                demand=120.0,
            ),
            target(
                "decode",
                min_replicas=1,
                max_replicas=24,
                gpus_per_replica=2,
                cap_min_watts=200,
                cap_max_watts=700,
                profile=h100(8.0),
                demand=120.0,
            ),
        ),
    )


@pytest.mark.parametrize("total_watts", [8000, 12000, 16000])
def test_optimize_serves_clearly_more_than_proportional_within_the_same_budget(total_watts: float) -> None:
    problem = disaggregated(total_watts)
    best, classic = optimize(problem), proportional(problem)
    assert best.served_fraction >= classic.served_fraction + 0.25
    assert best.watts <= total_watts
    assert classic.watts <= total_watts
    assert best.binding or best.served_fraction == 1.0


def test_every_plan_reports_desired_replicas_from_demand_alone() -> None:
    problem = disaggregated(16000)
    for result in (optimize(problem), proportional(problem)):
        # ceil(120 / 20) = 6 prefill replicas, ceil(120 / 8) = 15 decode replicas at 700 W.
        assert [t.desired_replicas for t in result.targets] == [6, 15]
        for planned in result.targets:
            assert planned.demand == 120.0
            assert planned.served_fraction == min(1.0, planned.capacity / 120.0)
        assert result.utilization == pytest.approx(result.watts / 16000)


# ---------------------------------------------------------------------------
# Proportional


def test_proportional_runs_desired_replicas_at_max_caps_when_the_budget_allows() -> None:
    result = proportional(disaggregated(30000))
    # 6 x 700 W + 15 x 2 x 700 W = 25,200 W.
    assert choices(result) == [("prefill", 6, 700), ("decode", 15, 700)]
    assert (result.watts, result.served_fraction, result.adjustment) == (25200, 1.0, None)
    assert result.reason == "all demand served with 25,200 of 30,000 W"


def test_proportional_scales_replicas_down_by_budget_over_required() -> None:
    result = proportional(disaggregated(16000))
    # floor(6 * 16000 / 25200) = 3, floor(15 * 16000 / 25200) = 9, caps stay at 700 W.
    assert choices(result) == [("prefill", 3, 700), ("decode", 9, 700)]
    assert result.watts == 3 * 700 + 9 * 2 * 700
    assert result.served_fraction == pytest.approx(0.5)
    assert result.adjustment is None
    assert result.reason == "budget binds: serving 50% of demand with 14,700 of 16,000 W"


def test_proportional_keeps_minimums_and_never_exceeds_desired() -> None:
    targets = (
        target("a", min_replicas=2, max_replicas=10, demand=60.0),  # desired 3 (60 / 20)
        target("b", min_replicas=0, max_replicas=10, demand=200.0),  # desired 10
    )
    result = proportional(Problem(total_watts=3000, targets=targets))
    # required = 13 x 400 = 5,200 W: a -> max(2, floor(1.73)) = 2, b -> floor(5.77) = 5.
    assert choices(result) == [("a", 2, 400), ("b", 5, 400)]
    assert result.adjustment is None
    result = proportional(Problem(total_watts=100_000, targets=targets))
    assert choices(result) == [("a", 3, 400), ("b", 10, 400)]


def test_proportional_lowers_caps_when_minimums_would_push_it_over() -> None:
    targets = (
        target("a", min_replicas=3, max_replicas=10, demand=200.0),  # desired 10
        target("b", min_replicas=0, max_replicas=10, demand=200.0),  # desired 10
    )
    result = proportional(Problem(total_watts=1500, targets=targets))
    # required 8,000 W; a -> max(3, floor(1.875)) = 3, b -> 1: 4 x 400 W = 1,600 W, 100 W over.
    assert choices(result) == [("a", 3, 375), ("b", 1, 375)]
    assert result.watts == 1500
    assert result.feasible
    assert result.adjustment == (
        "classic plan needed 1,600 W, over the budget by 100 W; "
        "lowered the caps to at most 375 W (a 3x375 W, b 1x375 W)"
    )


def test_proportional_removes_replicas_when_even_minimum_caps_are_over() -> None:
    targets = (
        target("a", min_replicas=0, max_replicas=10, gpus_per_replica=4, cap_min_watts=390, demand=200.0),
        target("b", min_replicas=5, max_replicas=10, demand=100.0),  # desired 5
    )
    # required = 10 x 4 x 400 + 5 x 400 = 18,000 W; a -> floor(10 * 2000 / 18000) = 1, b -> 5.
    # At minimum caps that is 1,560 + 500 = 2,060 W > 2,000 W, so a's replica goes.
    result = proportional(Problem(total_watts=2000, targets=targets))
    assert choices(result) == [("a", 0, 400), ("b", 5, 400)]
    assert result.watts == 2000
    assert result.adjustment is not None
    assert result.adjustment.startswith("classic plan needed 3,600 W, over the budget by 1,600 W; removed 1")
    assert optimize(Problem(total_watts=2000, targets=targets)).served_fraction >= result.served_fraction


@pytest.mark.parametrize("total_watts", [1e10, 1e11, 5e11, 1e12])
def test_optimize_equals_brute_force_on_huge_values_beyond_the_integer_fast_path(total_watts: float) -> None:
    # Above 2**50 mW, power is no longer ordered through the integer replicas x GPUs x cap shortcut.
    huge = target(
        max_replicas=120,
        gpus_per_replica=1024,
        cap_min_watts=99_000,
        cap_max_watts=100_000,
        profile=profile((99_000, 1.0), (99_500, 1.5), (100_000, 1.6)),
        demand=150.0,
        power_factor=99.5,
    )
    assert target_milliwatts(huge, 120, 100_000) >= 2**50
    problem = Problem(
        total_watts=total_watts, targets=(huge, target("b", max_replicas=3, demand=50.0)), cap_step_watts=500
    )
    result = optimize(problem)
    assert result.feasible
    assert result == brute_force(problem)


# Fleets whose shapes stress Optimize's search: each is planned at budgets from the
# floor to everything, and at exactly the power of brute force's plan and 1 mW below it.
EDGE_FLEETS: dict[str, tuple[TargetProblem, ...]] = {
    "zero minimum replicas": (
        target("a", max_replicas=6, demand=47.0),
        target("b", max_replicas=4, gpus_per_replica=2, demand=20.0),
    ),
    "flat profile": (
        target("a", max_replicas=6, profile=profile((100, 5.0), (400, 5.0)), demand=22.0),
        target("b", max_replicas=5, demand=60.0),
    ),
    "flat stretch inside the cap range": (
        target(
            "a",
            max_replicas=6,
            cap_max_watts=500,
            profile=profile((100, 4.0), (200, 8.0), (350, 8.0), (450, 11.0)),
            demand=50.0,
        ),
        target("b", min_replicas=1, max_replicas=3, demand=25.0),
    ),
    "single-point profiles": (
        target("a", max_replicas=7, profile=profile((250, 6.0)), demand=31.0),
        target("b", min_replicas=2, max_replicas=5, profile=profile((50, 9.0)), demand=45.0),
    ),
    "no throughput at the lowest caps": (
        target("a", min_replicas=1, max_replicas=6, profile=profile((150, 0.0), (400, 12.0)), demand=40.0),
        target("b", max_replicas=4, profile=profile((300, 0.0)), demand=5.0),
    ),
    "no demand and zero demand beside demand": (
        target("a", min_replicas=1, max_replicas=2, cap_max_watts=200, demand=None),
        target("b", max_replicas=2, cap_max_watts=200, demand=0.0),
        target("c", max_replicas=6, demand=33.0),
    ),
    "power and throughput corrections": (
        target("a", max_replicas=6, demand=70.0, power_factor=0.85, throughput_factor=1.3),
        target(
            "b", max_replicas=5, gpus_per_replica=4, demand=40.0, power_factor=0.333, throughput_factor=0.7
        ),
    ),
    "minimum cap equal to the maximum": (
        target("a", max_replicas=8, cap_min_watts=250, cap_max_watts=250, demand=90.0),
        target("b", min_replicas=1, max_replicas=6, demand=30.0),
    ),
    "demand beyond maxReplicas": (
        target("a", max_replicas=3, demand=500.0),
        target("b", max_replicas=5, demand=10.0),
    ),
    "power ties between more replicas and higher caps": (
        target("a", max_replicas=8, profile=profile((100, 10.0), (400, 40.0)), demand=55.0),
        target(
            "b", max_replicas=8, gpus_per_replica=2, profile=profile((100, 10.0), (400, 40.0)), demand=35.0
        ),
    ),
    "served fractions far below the range of the float bounds": (
        target("a", max_replicas=6, demand=1e250),
        target("b", max_replicas=4, demand=12.0),
    ),
}


@pytest.mark.parametrize("name", sorted(EDGE_FLEETS))
def test_optimize_equals_brute_force_on_edge_shapes_at_every_budget(name: str) -> None:
    fleet = Problem(total_watts=1.0, targets=EDGE_FLEETS[name], cap_step_watts=50)
    floor = floor_watts(fleet)
    ceiling = sum(target_watts(t, t.max_replicas, t.cap_max_watts) for t in fleet.targets)
    budgets = {max(1.0, floor + (ceiling - floor) * share / 8) for share in range(10)}
    for total_watts in sorted(budgets):
        problem = replace(fleet, total_watts=total_watts)
        exact = brute_force(problem)
        cases = [(problem, exact)]
        for watts in (exact.watts, exact.watts - 0.001):
            case = replace(problem, total_watts=max(1.0, watts))
            cases.append((case, brute_force(case)))
        for case, expected in cases:
            clear_cache()
            assert optimize(case) == expected, case.total_watts
            assert optimize(case) == expected  # warm: memoized cap tables change nothing


def test_an_oversubscribed_problem_has_no_served_curve() -> None:
    target = TargetProblem(
        name="decode",
        min_replicas=1,
        max_replicas=2,
        cap_min_watts=200,
        cap_max_watts=400,
        profile=(ProfilePoint(200, 5), ProfilePoint(400, 8)),
        demand=10,
    )
    problem = Problem(total_watts=800, targets=(target,), cap_step_watts=50, cap_budget_watts=960)
    with pytest.raises(ValueError, match="cap_budget_watts"):
        ServedCurve(problem)
