"""The planner: replicas and a per-GPU cap for each target, within a power budget.

Pure: plain values in, a :class:`Plan` out. No I/O, no clock, no Kubernetes types.
The README's "How gpupower plans" section gives the objective in plain words.

Optimize is exact on the cap grid. The objective is separable: a plan serves a
fraction ``s`` when every target serves at least ``s``, and each target's
cheapest way to serve at least ``s`` does not depend on the others. For a
threshold ``s``, a target's cheapest pair (least watts, then fewest GPUs, then
lowest cap) is found cap by cap: with a given cap the fewest replicas reaching
``s`` are the cheapest, and caps are tried most efficient first so that bounds
end the scan after a few (:func:`_cheapest_pair`); a target of few replicas and
many caps is scanned the other way, replica count by replica count, each with a
bisection for its lowest cap reaching ``s``. Whether the cheapest pairs
fit the budget together only falls as ``s`` rises, so a search over ``s``
(:func:`_best_picks`) finds the largest served fraction that fits, ending when
no float lies between a fraction that fits and one that does not. Each target
then keeps its cheapest pair for that fraction, which is the lexicographic
optimum (most served, then least watts, then fewest GPUs, then lowest cap).
Nothing is listed or sorted per (replicas, cap) pair, so a fleet seen for the
first time is planned almost as fast as a known one.

Two accountings. By default power is what the caps allow: a GPU counts at its
cap (at cap x power factor when the correction is above 1, for safety), so the
caps never sum above the budget. A budget that opts into oversubscription
counts each GPU at cap x power factor (its planned *draw*) against the budget,
and bounds the caps' sum by ``cap_budget_watts`` (the budget x the
oversubscription ratio). An oversubscribed target is planned only at caps
whose draw the agents' guard can hold: cap x power factor at least the lowest
limit its GPUs accept (:func:`guardable`), since a GPU cannot be held below
its minimum. Within one target every pair's draw is its caps times
the same factor, so the pair with the least draw is also the one with the least
caps, and the search below stays exact with both bounds.

Every comparison is exact: power is counted in integer milliwatts
(:func:`target_milliwatts`), and a pair's capacity and served fraction are each
computed by one expression (:func:`replica_throughput`, which
:func:`_throughputs_on_grid` repeats operation for operation, and
:func:`served_fraction`) wherever they are needed, so :func:`optimize` and the
exhaustive :func:`brute_force` agree to the last bit.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import accumulate, compress, islice, pairwise, product, repeat
from operator import add, gt, mul, sub, truediv

from gpupower_api.models import BudgetSpec, Strategy


@dataclass(frozen=True)
class ProfilePoint:
    watts: float
    throughput: float


@dataclass(frozen=True)
class TargetProblem:
    """One target as the planner sees it: bounds, profile, demand and corrections."""

    name: str
    min_replicas: int
    max_replicas: int
    cap_min_watts: int
    cap_max_watts: int
    profile: tuple[ProfilePoint, ...]
    demand: float | None = None
    gpus_per_replica: int = 1
    # Closed-loop corrections: how much of its cap a GPU really draws, and how
    # much of the profile's throughput a replica really delivers (1.0 = as profiled).
    power_factor: float = 1.0
    throughput_factor: float = 1.0


@dataclass(frozen=True)
class Problem:
    total_watts: float
    targets: tuple[TargetProblem, ...]
    cap_step_watts: int = 5
    strategy: Strategy = Strategy.OPTIMIZE
    # Oversubscription: the caps' sum may reach this (None: the caps count as power, within total_watts).
    cap_budget_watts: float | None = None
    # Oversubscription: the same budget in the default accounting; the plan is the better of the two.
    plain: Problem | None = None


@dataclass(frozen=True)
class TargetPlan:
    name: str
    desired_replicas: int
    replicas: int
    cap_watts: int
    watts: float  # what the plan counts: the caps, or the planned draw when oversubscribed
    capacity: float
    demand: float | None
    served_fraction: float
    gpus: int
    caps_watts: float = 0.0  # replicas x GPUs x cap
    gpu_draw_watts: float = 0.0  # what one GPU is planned to draw: cap x power factor


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    budget_watts: float
    targets: tuple[TargetPlan, ...]
    watts: float
    served_fraction: float
    binding: bool
    feasible: bool
    infeasible_by_watts: float
    reason: str
    adjustment: str | None = None
    # What the fleet needs when every target runs at its minimum replicas and cap.
    floor_watts: float = 0.0
    caps_watts: float = 0.0  # the caps' sum
    cap_budget_watts: float | None = None  # the bound on it when oversubscribed

    @property
    def utilization(self) -> float:
        return self.watts / self.budget_watts if self.budget_watts > 0 else 0.0

    @property
    def gpus(self) -> int:
        return sum(t.gpus for t in self.targets)

    def target(self, name: str) -> TargetPlan:
        return next(t for t in self.targets if t.name == name)


# ---------------------------------------------------------------------------
# Building and checking a problem


def guardable(target: TargetProblem, gpu_min_watts: int) -> TargetProblem:
    """An oversubscribed target planned only at caps whose draw a guard can hold on GPUs accepting no
    limit below ``gpu_min_watts``: cap x power factor >= that minimum. When even the top cap draws less,
    the target is planned at its top cap with the factor raised to what the minimum allows."""
    if target.power_factor >= 1.0:
        return target
    lowest = math.ceil(gpu_min_watts / target.power_factor)
    if lowest <= target.cap_max_watts:
        return replace(target, cap_min_watts=max(target.cap_min_watts, lowest))
    return replace(
        target,
        cap_min_watts=target.cap_max_watts,
        power_factor=min(1.0, gpu_min_watts / target.cap_max_watts),
    )


def problem_from_spec(
    spec: BudgetSpec,
    demand: Mapping[str, float | None] | None = None,
    cap_ranges: Mapping[str, tuple[int, int]] | None = None,
    corrections: Mapping[str, tuple[float, float]] | None = None,
    strategy: Strategy | None = None,
    gpu_min_watts: Mapping[str, int] | None = None,
    total_watts: float | None = None,
) -> Problem:
    """Build a :class:`Problem` from a validated spec.

    ``demand`` overrides a target's static demand (live demand from Prometheus);
    ``cap_ranges`` replaces a target's cap range (the effective range after the
    nodes' GPU limits); ``corrections`` gives (power_factor, throughput_factor).
    Without ``spec.oversubscription`` a power factor below 1 is not used (the
    caps count in full); with it, the draw counts, the caps' sum is bounded by
    ``totalWatts x maxRatio``, and each target keeps to caps its guard can hold
    (:func:`guardable`, with ``gpu_min_watts``: the lowest limit each target's
    GPUs accept, by default its cap range's minimum). ``total_watts`` replaces
    ``spec.totalWatts`` (what a budget's domain allocates it). Raises
    :class:`ValueError` naming the field when an override makes the problem
    invalid (for example an empty cap range), or when there is no budget at all:
    a budget of a domain without ``totalWatts`` and no allocation given.
    """
    budget_watts = total_watts if total_watts is not None else spec.total_watts
    if budget_watts is None:
        raise ValueError(
            "spec.totalWatts: not set, and no allocation from the budget's domain "
            f"{spec.domain_ref.name if spec.domain_ref else '(none)'} was given to plan within"
        )
    demand = demand or {}
    cap_ranges = cap_ranges or {}
    corrections = corrections or {}
    names = {t.name for t in spec.targets}
    for label, mapping in (("demand", demand), ("cap_ranges", cap_ranges), ("corrections", corrections)):
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"{label}: unknown target(s) {', '.join(unknown)}")
    targets = []
    guarded_targets = []
    for target in spec.targets:
        if target.name in cap_ranges:
            cap_min, cap_max = cap_ranges[target.name]
        else:
            cap_range = target.cap_range()
            cap_min, cap_max = cap_range.min, cap_range.max
        measured, throughput_factor = corrections.get(target.name, (1.0, 1.0))
        power_factor = measured
        if _finite(power_factor) and power_factor >= MIN_POWER_FACTOR:
            power_factor = max(1.0, power_factor)  # a GPU may draw up to its cap: count all of it
        problem_target = TargetProblem(
            name=target.name,
            min_replicas=target.min_replicas,
            max_replicas=target.max_replicas,
            cap_min_watts=cap_min,
            cap_max_watts=cap_max,
            profile=tuple(ProfilePoint(p.watts, p.throughput) for p in target.profile.curve()),
            demand=demand.get(target.name, target.demand),
            gpus_per_replica=target.gpus_per_replica,
            power_factor=power_factor,
            throughput_factor=throughput_factor,
        )
        targets.append(problem_target)
        if (
            spec.oversubscription is not None
            and _finite(measured)
            and measured >= MIN_POWER_FACTOR
            and 0 < cap_min <= cap_max
        ):
            # Planned on what it draws, at caps whose draw the guard can hold.
            minimum = (gpu_min_watts or {}).get(target.name, cap_min)
            problem_target = guardable(replace(problem_target, power_factor=measured), min(minimum, cap_min))
        guarded_targets.append(problem_target)
    problem = Problem(
        total_watts=budget_watts,
        targets=tuple(targets),
        cap_step_watts=spec.cap_step_watts,
        strategy=strategy if strategy is not None else spec.strategy,
    )
    validate_problem(problem)
    if spec.oversubscription is None:
        return problem
    oversubscribed = replace(
        problem,
        targets=tuple(guarded_targets),
        cap_budget_watts=budget_watts * spec.oversubscription.max_ratio,
        plain=problem,
    )
    validate_problem(oversubscribed)
    return oversubscribed


# A GPU draws between 1% and 100x of its cap: anything else is a broken measurement.
MIN_POWER_FACTOR = 0.01
MAX_POWER_FACTOR = 100.0
# Bounds far beyond any real fleet that keep the arithmetic exact and finite.
MAX_TOTAL_WATTS = 1e12
MAX_CAP_WATTS = 100_000
MAX_REPLICAS = 1_000_000
MAX_GPUS_PER_REPLICA = 1024


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _validate_target(field: str, target: TargetProblem) -> None:
    if target.min_replicas < 0:
        raise ValueError(f"{field}.min_replicas must be >= 0, got {target.min_replicas}")
    if target.max_replicas > MAX_REPLICAS:
        raise ValueError(f"{field}.max_replicas must be <= {MAX_REPLICAS}, got {target.max_replicas}")
    if target.max_replicas < target.min_replicas:
        raise ValueError(
            f"{field}.max_replicas ({target.max_replicas}) must be >= min_replicas ({target.min_replicas})"
        )
    if target.cap_min_watts <= 0:
        raise ValueError(f"{field}.cap_min_watts must be > 0, got {target.cap_min_watts}")
    if target.cap_max_watts > MAX_CAP_WATTS:
        raise ValueError(f"{field}.cap_max_watts must be <= {MAX_CAP_WATTS}, got {target.cap_max_watts}")
    if target.cap_max_watts < target.cap_min_watts:
        raise ValueError(
            f"{field}.cap_max_watts ({target.cap_max_watts}) must be >= cap_min_watts "
            f"({target.cap_min_watts}): the cap range is empty"
        )
    if not 1 <= target.gpus_per_replica <= MAX_GPUS_PER_REPLICA:
        raise ValueError(
            f"{field}.gpus_per_replica must be between 1 and {MAX_GPUS_PER_REPLICA}, "
            f"got {target.gpus_per_replica}"
        )
    if target.demand is not None and not (_finite(target.demand) and target.demand >= 0):
        raise ValueError(f"{field}.demand must be a finite number >= 0, got {target.demand}")
    if not (_finite(target.power_factor) and MIN_POWER_FACTOR <= target.power_factor <= MAX_POWER_FACTOR):
        raise ValueError(
            f"{field}.power_factor must be between {MIN_POWER_FACTOR} and {MAX_POWER_FACTOR}, "
            f"got {target.power_factor}"
        )
    if not (_finite(target.throughput_factor) and target.throughput_factor > 0):
        raise ValueError(
            f"{field}.throughput_factor must be a finite number > 0, got {target.throughput_factor}"
        )
    if not target.profile:
        raise ValueError(f"{field}.profile must have at least one point")
    for index, point in enumerate(target.profile):
        if not (_finite(point.watts) and point.watts > 0):
            raise ValueError(f"{field}.profile[{index}].watts must be a finite number > 0, got {point.watts}")
        if not (_finite(point.throughput) and point.throughput >= 0):
            raise ValueError(
                f"{field}.profile[{index}].throughput must be a finite number >= 0, got {point.throughput}"
            )
        if index > 0 and point.watts <= target.profile[index - 1].watts:
            raise ValueError(f"{field}.profile[{index}].watts must be greater than the point before it")


def validate_problem(problem: Problem) -> None:
    """Check what the API models cannot guarantee; raise :class:`ValueError` naming the field."""
    if not (_finite(problem.total_watts) and 0 < problem.total_watts <= MAX_TOTAL_WATTS):
        raise ValueError(f"total_watts must be > 0 and <= {MAX_TOTAL_WATTS:g}, got {problem.total_watts}")
    if problem.cap_step_watts < 1:
        raise ValueError(f"cap_step_watts must be >= 1, got {problem.cap_step_watts}")
    cap_budget = problem.cap_budget_watts
    if cap_budget is not None and not (_finite(cap_budget) and cap_budget <= MAX_TOTAL_WATTS):
        raise ValueError(f"cap_budget_watts must be finite and <= {MAX_TOTAL_WATTS:g}, got {cap_budget}")
    if not problem.targets:
        raise ValueError("targets must not be empty")
    seen: set[str] = set()
    for index, target in enumerate(problem.targets):
        field = f"targets[{index}]"
        if not target.name:
            raise ValueError(f"{field}.name must not be empty")
        if target.name in seen:
            raise ValueError(f"{field}.name {target.name!r} is used by another target")
        seen.add(target.name)
        _validate_target(field, target)


# ---------------------------------------------------------------------------
# The model: one expression for each quantity, shared by every algorithm


def throughput_at(profile: Sequence[ProfilePoint], watts: float) -> float:
    """Per-replica throughput at a per-GPU cap: the profile's monotone envelope.

    The profile is linear between points and flat beyond the ends; the envelope
    is the highest value that reaches at any watts up to ``watts`` (a cap only
    bounds power, so a higher cap never serves less). A piecewise-linear
    function reaches its highest value over ``(-inf, watts]`` either at
    ``watts`` or at a point at or below it, so that is what is compared.
    """
    if watts <= profile[0].watts:
        return profile[0].throughput
    if watts >= profile[-1].watts:
        return max(p.throughput for p in profile)
    index = bisect_right([p.watts for p in profile], watts)
    best_below = max(p.throughput for p in profile[:index])
    return max(_between(profile[index - 1], profile[index], watts), best_below)


def _between(low: ProfilePoint, high: ProfilePoint, watts: float) -> float:
    # The one expression for throughput between two profile points.
    share = (watts - low.watts) / (high.watts - low.watts)
    return low.throughput + share * (high.throughput - low.throughput)


def _throughputs_on_grid(profile: Sequence[ProfilePoint], grid: Sequence[int]) -> list[float]:
    """:func:`throughput_at` at every cap of an ascending grid, a segment at a time.

    The arithmetic is :func:`_between`'s, the same operations in the same order,
    and the envelope takes the same maximum, so every value is bit-for-bit what
    :func:`throughput_at` returns.
    """
    first, last = profile[0], profile[-1]
    start = bisect_right(grid, first.watts)  # caps at or below the first point
    end = max(start, bisect_left(grid, last.watts))  # caps from the last point on
    values = [first.throughput] * start
    for low, high in pairwise(profile):
        # Caps with low.watts <= cap < high.watts, as bisect_right picks the segment.
        inside = grid[max(start, bisect_left(grid, low.watts)) : min(end, bisect_left(grid, high.watts))]
        shares = map(truediv, map(sub, inside, repeat(low.watts)), repeat(high.watts - low.watts))
        values.extend(
            map(add, repeat(low.throughput), map(mul, shares, repeat(high.throughput - low.throughput)))
        )
    values.extend(repeat(max(p.throughput for p in profile), len(grid) - end))
    if not raised_points(profile):
        # Nothing dips: every value is already at least the best point below it (x + y >= x for y >= 0).
        return values
    # The envelope: no cap below the best of the points at or below it.
    best_below = list(accumulate((p.throughput for p in profile), max))
    point_watts = [p.watts for p in profile]
    for k in range(start, end):
        values[k] = max(values[k], best_below[bisect_right(point_watts, grid[k]) - 1])
    return values


@dataclass(frozen=True)
class RaisedPoint:
    """A profile point below the best at a lower cap: the envelope uses ``used_throughput`` there."""

    index: int
    watts: float
    throughput: float
    used_throughput: float


def raised_points(profile: Sequence[ProfilePoint]) -> tuple[RaisedPoint, ...]:
    """The points the monotone envelope raises (empty when throughput never falls as watts rise)."""
    raised = []
    best = -math.inf
    for index, point in enumerate(profile):
        if point.throughput < best:
            raised.append(RaisedPoint(index, point.watts, point.throughput, best))
        best = max(best, point.throughput)
    return tuple(raised)


def cap_grid(cap_min_watts: int, cap_max_watts: int, step_watts: int) -> tuple[int, ...]:
    """Caps the planner may choose: ``min, min+step, ...`` and always ``max``."""
    if not 0 < cap_min_watts <= cap_max_watts or step_watts < 1:
        raise ValueError(
            f"cap grid needs 0 < cap_min_watts <= cap_max_watts and step_watts >= 1, got "
            f"{cap_min_watts}, {cap_max_watts}, {step_watts}"
        )
    caps = list(range(cap_min_watts, cap_max_watts + 1, step_watts))
    if caps[-1] != cap_max_watts:
        caps.append(cap_max_watts)
    return tuple(caps)


def replica_throughput(target: TargetProblem, cap_watts: int) -> float:
    """What one replica of the target delivers at a cap, corrections included."""
    return throughput_at(target.profile, cap_watts) * target.throughput_factor


def target_milliwatts(target: TargetProblem, replicas: int, cap_watts: int) -> int:
    """Power of ``replicas`` replicas at ``cap_watts`` per GPU, in whole milliwatts.

    Integers make every sum and comparison with the budget exact.
    """
    return _milliwatts(replicas * target.gpus_per_replica * cap_watts, target.power_factor)


def _milliwatts(gpu_watts: int, power_factor: float) -> int:
    # The one expression for power: GPUs x cap (an integer), corrected, in milliwatts.
    return round(gpu_watts * 1000 * power_factor)


def caps_milliwatts(target: TargetProblem, replicas: int, cap_watts: int) -> int:
    """The caps of ``replicas`` replicas at ``cap_watts`` per GPU, in whole milliwatts (no correction)."""
    return replicas * target.gpus_per_replica * cap_watts * 1000


def fits(problem: Problem, choices: Sequence[tuple[int, int]]) -> bool:
    """Whether (replicas, cap) per target fit the budget, and the caps' bound when oversubscribed."""
    pairs = list(zip(problem.targets, choices, strict=True))
    if not fits_budget((target_milliwatts(t, r, c) for t, (r, c) in pairs), problem.total_watts):
        return False
    cap_budget = problem.cap_budget_watts
    return cap_budget is None or fits_budget((caps_milliwatts(t, r, c) for t, (r, c) in pairs), cap_budget)


def target_watts(target: TargetProblem, replicas: int, cap_watts: int) -> float:
    """Power of ``replicas`` replicas at ``cap_watts`` per GPU, in watts."""
    return target_milliwatts(target, replicas, cap_watts) / 1000


def served_fraction(capacity: float, demand: float | None) -> float:
    """Share of demand a capacity serves, at most 1; no demand (or zero) counts as served."""
    if not demand:
        return 1.0
    return min(1.0, capacity / demand)


def budget_milliwatts(total_watts: float) -> int:
    """The budget in whole milliwatts, rounded down so that nothing planned can exceed it."""
    # round() first so that a decimal budget such as 1.9 W means 1,900 mW, not 1,899.
    return math.floor(round(total_watts * 1000, 6))


def fits_budget(milliwatts: Iterable[int], total_watts: float) -> bool:
    """Whether powers (in milliwatts) add up to at most the budget (in watts)."""
    return sum(milliwatts) <= budget_milliwatts(total_watts)


def desired_replicas(target: TargetProblem) -> int:
    """Replicas demand alone asks for at the max cap (clamped); no demand asks for the minimum."""
    if not target.demand:
        return target.min_replicas
    per_replica = replica_throughput(target, target.cap_max_watts)
    if per_replica <= 0:
        return target.max_replicas
    ratio = target.demand / per_replica
    if ratio >= target.max_replicas:
        replicas = target.max_replicas
    else:
        # ceil(demand / throughput), made consistent with served_fraction's arithmetic.
        replicas = max(0, math.ceil(ratio))
        while replicas > 0 and served_fraction((replicas - 1) * per_replica, target.demand) >= 1.0:
            replicas -= 1
        while replicas < target.max_replicas and served_fraction(replicas * per_replica, target.demand) < 1.0:
            replicas += 1
    return min(target.max_replicas, max(target.min_replicas, replicas))


def _target_plan(target: TargetProblem, replicas: int, cap_watts: int) -> TargetPlan:
    capacity = replicas * replica_throughput(target, cap_watts)
    return TargetPlan(
        name=target.name,
        desired_replicas=desired_replicas(target),
        replicas=replicas,
        cap_watts=cap_watts,
        watts=target_watts(target, replicas, cap_watts),
        capacity=capacity,
        demand=target.demand,
        served_fraction=served_fraction(capacity, target.demand),
        gpus=replicas * target.gpus_per_replica,
        caps_watts=caps_milliwatts(target, replicas, cap_watts) / 1000,
        gpu_draw_watts=_milliwatts(cap_watts, target.power_factor) / 1000,
    )


# ---------------------------------------------------------------------------
# Assembling a plan and saying why


def _watts_text(watts: float) -> str:
    return f"{watts:,.0f}"


def percent_text(fraction: float) -> str:
    # Round down so that "100%" is only ever said of demand fully served.
    return f"{math.floor(fraction * 100 + 1e-9) if fraction < 1 else 100}%"


def _best_reachable(problem: Problem) -> float:
    """The served fraction with no budget at all: every target at max replicas and max cap."""
    return min(
        served_fraction(t.max_replicas * replica_throughput(t, t.cap_max_watts), t.demand)
        for t in problem.targets
    )


def floor_watts(problem: Problem) -> float:
    """What every target at its minimum replicas and minimum cap needs."""
    return sum(target_milliwatts(t, t.min_replicas, t.cap_min_watts) for t in problem.targets) / 1000


def _assemble(
    problem: Problem,
    strategy: Strategy,
    choices: Sequence[tuple[int, int]],
    adjustment: str | None = None,
) -> Plan:
    targets = tuple(
        _target_plan(target, replicas, cap)
        for target, (replicas, cap) in zip(problem.targets, choices, strict=True)
    )
    milliwatts = sum(
        target_milliwatts(target, replicas, cap)
        for target, (replicas, cap) in zip(problem.targets, choices, strict=True)
    )
    cap_milliwatts = sum(
        caps_milliwatts(target, replicas, cap)
        for target, (replicas, cap) in zip(problem.targets, choices, strict=True)
    )
    watts = milliwatts / 1000
    served = min(t.served_fraction for t in targets)
    budget = problem.total_watts
    over_milliwatts = milliwatts - budget_milliwatts(budget)
    if problem.cap_budget_watts is not None:
        over_milliwatts = max(over_milliwatts, cap_milliwatts - budget_milliwatts(problem.cap_budget_watts))
    feasible = over_milliwatts <= 0
    infeasible_by = 0.0 if feasible else over_milliwatts / 1000
    binding = (not feasible) or served < _best_reachable(problem)
    if not feasible:
        reason = (
            f"infeasible by {_watts_text(infeasible_by)} W: the floor (every target at its minimum "
            f"replicas and minimum cap) needs {_watts_text(watts)} W, the budget is {_watts_text(budget)} W"
        )
    elif served >= 1.0:
        if all(not t.demand for t in problem.targets):
            reason = (
                f"no demand: minimum replicas at the lowest cap with "
                f"{_watts_text(watts)} of {_watts_text(budget)} W"
            )
        else:
            reason = f"all demand served with {_watts_text(watts)} of {_watts_text(budget)} W"
    elif binding:
        reason = (
            f"budget binds: serving {percent_text(served)} of demand with "
            f"{_watts_text(watts)} of {_watts_text(budget)} W"
        )
    else:
        reason = (
            f"maxReplicas binds: serving {percent_text(served)} of demand with "
            f"{_watts_text(watts)} of {_watts_text(budget)} W"
        )
    return Plan(
        strategy=strategy,
        budget_watts=budget,
        targets=targets,
        watts=watts,
        served_fraction=served,
        binding=binding,
        feasible=feasible,
        infeasible_by_watts=infeasible_by,
        reason=reason,
        adjustment=adjustment,
        floor_watts=floor_watts(problem),
        caps_watts=cap_milliwatts / 1000,
        cap_budget_watts=problem.cap_budget_watts,
    )


def _floor_choices(problem: Problem) -> list[tuple[int, int]]:
    return [(t.min_replicas, t.cap_min_watts) for t in problem.targets]


def _floor_fits(problem: Problem) -> bool:
    return fits(problem, _floor_choices(problem))


# ---------------------------------------------------------------------------
# Optimize


@dataclass(frozen=True)
class _CapTable:
    """What one replica of a target's shape delivers at the caps worth choosing.

    ``caps`` are the grid caps that deliver more than every lower cap (a cap that
    delivers no more than a lower one is never the cheaper way to serve anything),
    ``rates`` what one replica delivers at each (rising strictly, computed as
    :func:`replica_throughput` does). ``by_efficiency`` lists the caps that deliver
    anything, fewest watts per unit of throughput first, with that ratio in
    ``watts_per_rate``.
    """

    caps: tuple[int, ...]
    rates: tuple[float, ...]
    by_efficiency: tuple[int, ...]
    watts_per_rate: tuple[float, ...]


def _cap_table(target: TargetProblem, step_watts: int) -> _CapTable:
    """The target's cap table; it depends on neither demand nor budget, so it is memoized."""
    return _memoized_cap_table(
        target.profile, target.cap_min_watts, target.cap_max_watts, step_watts, target.throughput_factor
    )


@lru_cache(maxsize=512)
def _memoized_cap_table(
    profile: tuple[ProfilePoint, ...],
    cap_min_watts: int,
    cap_max_watts: int,
    step_watts: int,
    throughput_factor: float,
) -> _CapTable:
    grid = cap_grid(cap_min_watts, cap_max_watts, step_watts)
    # throughput * factor: replica_throughput's expression.
    on_grid = list(map(mul, _throughputs_on_grid(profile, grid), repeat(throughput_factor)))
    # Keep a cap only if it delivers more than every lower one.
    above_all_below = map(gt, islice(on_grid, 1, None), accumulate(on_grid, max))
    useful = [0, *compress(range(1, len(grid)), above_all_below)]
    caps = list(map(grid.__getitem__, useful))
    rates = list(map(on_grid.__getitem__, useful))
    first = 1 if rates[0] == 0 else 0  # rates rise strictly, so only the first can be zero
    ratios = list(map(truediv, caps[first:], rates[first:]))
    order = sorted(range(len(ratios)), key=ratios.__getitem__)
    return _CapTable(
        caps=tuple(caps),
        rates=tuple(rates),
        by_efficiency=tuple(map(add, order, repeat(first))),
        watts_per_rate=tuple(map(ratios.__getitem__, order)),
    )


def clear_cache() -> None:
    """Forget the memoized cap tables (the speed benchmark uses it to time cold plans)."""
    _memoized_cap_table.cache_clear()


@dataclass(frozen=True)
class _Pick:
    """A target's pair: ``replicas`` at ``cap_watts``, costing ``milliwatts`` (``cap_milliwatts`` of
    caps) and serving ``served``."""

    milliwatts: int
    replicas: int
    cap_watts: int
    served: float
    cap_milliwatts: int = 0


def _floor_pick(target: TargetProblem, table: _CapTable) -> _Pick:
    """Minimum replicas at the minimum cap: the cheapest pair, so the pick for every threshold it serves."""
    replicas = target.min_replicas
    return _Pick(
        milliwatts=target_milliwatts(target, replicas, table.caps[0]),
        replicas=replicas,
        cap_watts=table.caps[0],
        served=served_fraction(replicas * table.rates[0], target.demand),
        cap_milliwatts=caps_milliwatts(target, replicas, table.caps[0]),
    )


def _fewest_replicas(rate: float, demand: float, threshold: float, lowest: int, highest: int) -> int | None:
    """The fewest replicas in ``lowest..highest`` delivering ``rate`` each that serve ``threshold``, if any.

    For a threshold of at most 1, ``r * rate / demand >= threshold`` is exactly
    :func:`served_fraction`'s verdict; the quotient below only gives a start, the
    loops settle the answer with that test.
    """
    guess = threshold * demand / rate
    replicas = highest if guess >= highest else max(lowest, math.ceil(guess))
    if replicas * rate / demand >= threshold:
        while replicas > lowest and (replicas - 1) * rate / demand >= threshold:
            replicas -= 1
        return replicas
    while replicas < highest:
        replicas += 1
        if replicas * rate / demand >= threshold:
            return replicas
    return None


# Lower bounds computed in floats are shrunk by this much to stay below the exact value.
# That holds while rounding errs relatively (about 1e-16), i.e. far from the float
# range's ends: below _BOUNDS_FROM the bounds are not used (slower, still exact).
_BOUND_MARGIN = 1 - 1e-9
_BOUNDS_FROM = 1e-200


def _cheapest_pair(target: TargetProblem, table: _CapTable, threshold: float) -> _Pick | None:
    """The least power, then fewest replicas, then lowest cap serving at least ``threshold`` (0 < it <= 1).

    One of two scans finds it, whichever has fewer candidates: one pair per cap
    (:func:`_cheapest_by_caps`) or one per replica count
    (:func:`_cheapest_by_replicas`, for targets of few replicas and many caps).
    Both give the same pair; a property test holds each to brute force.
    """
    demand = target.demand
    if not demand:
        return None  # unreachable: a target without demand serves 1 at its floor and is never raised
    lowest = max(target.min_replicas, 1)  # zero replicas serve nothing
    if (target.max_replicas - lowest + 1) * _CAPS_PER_REPLICA_SCAN <= len(table.caps):
        found = _cheapest_by_replicas(target, table, threshold, lowest)
    else:
        found = _cheapest_by_caps(target, table, threshold, lowest)
    if found is None:
        return None
    replicas, k = found
    cap = table.caps[k]
    return _Pick(
        milliwatts=target_milliwatts(target, replicas, cap),
        replicas=replicas,
        cap_watts=cap,
        served=served_fraction(replicas * table.rates[k], demand),
        cap_milliwatts=caps_milliwatts(target, replicas, cap),
    )


# A target with at most len(caps) / this many replica counts is scanned replica by replica.
_CAPS_PER_REPLICA_SCAN = 8


def _cheapest_by_caps(
    target: TargetProblem, table: _CapTable, threshold: float, lowest: int
) -> tuple[int, int] | None:
    """:func:`_cheapest_pair`'s (replicas, cap index), one candidate per cap.

    With a given cap the fewest replicas reaching the threshold are the cheapest,
    so one pair per cap competes. A cap needs at least ``threshold x demand /
    rate`` replicas; that bound, computed in floats and shrunk by a margin far
    larger than their error, skips the exact test for caps out of reach or too
    costly. Caps are tried most efficient first, so once the bound times the cap
    exceeds the best power so far, no later cap can win or tie.
    """
    demand = target.demand
    assert demand  # the caller returned for a target without demand
    highest = target.max_replicas
    caps, rates = table.caps, table.rates
    ordered = _power_follows_replica_watts(target, caps[-1])
    need = threshold * demand
    bounded = min(threshold, need) >= _BOUNDS_FROM
    best_power = best_replicas = best_cap = best_k = -1  # -1: none yet
    for k, watts_per_rate in zip(table.by_efficiency, table.watts_per_rate, strict=True):
        cap = caps[k]
        rate = rates[k]
        if bounded:
            if ordered and best_power >= 0 and watts_per_rate * need * _BOUND_MARGIN > best_power:
                break
            at_least = need / rate * _BOUND_MARGIN
            if at_least > highest:
                continue
            fewest = max(lowest, math.ceil(at_least))
            if ordered and best_power >= 0 and (fewest * cap, fewest) >= (best_power, best_replicas):
                continue  # at least as much power, and on a tie at least as many replicas
        replicas = _fewest_replicas(rate, demand, threshold, lowest, highest)
        if replicas is None:
            continue
        power = _pair_power(target, replicas, cap, ordered)
        if best_power < 0 or (power, replicas, cap) < (best_power, best_replicas, best_cap):
            best_power, best_replicas, best_cap, best_k = power, replicas, cap, k
    return None if best_power < 0 else (best_replicas, best_k)


def _cheapest_by_replicas(
    target: TargetProblem, table: _CapTable, threshold: float, lowest: int
) -> tuple[int, int] | None:
    """:func:`_cheapest_pair`'s (replicas, cap index), one candidate per replica count.

    With a given number of replicas the lowest cap reaching the threshold is the
    cheapest, and rates rise with the cap, so a bisection finds it (settled by
    the exact test of :func:`_fewest_replicas`). With power ordered by replicas
    x cap, ``r x`` the lowest cap bounds every pair of ``r`` or more replicas,
    which ends the scan.
    """
    demand = target.demand
    assert demand  # the caller returned for a target without demand
    caps, rates = table.caps, table.rates
    ordered = _power_follows_replica_watts(target, caps[-1])
    top = len(caps) - 1
    best: tuple[int, int, int, int] | None = None  # (power, replicas, cap, index)
    for replicas in range(lowest, target.max_replicas + 1):
        if ordered and best is not None and replicas * caps[0] >= best[0]:
            break  # at least as much power, and more replicas, at any cap
        if replicas * rates[top] / demand < threshold:
            continue  # out of reach even at the best cap
        k = min(bisect_left(rates, threshold * demand / replicas), top)
        while k > 0 and replicas * rates[k - 1] / demand >= threshold:
            k -= 1
        while replicas * rates[k] / demand < threshold:
            k += 1
        cap = caps[k]
        power = _pair_power(target, replicas, cap, ordered)
        if best is None or (power, replicas, cap) < best[:3]:
            best = (power, replicas, cap, k)
    return None if best is None else (best[1], best[3])


def _pair_power(target: TargetProblem, replicas: int, cap: int, ordered: bool) -> int:
    """What the scans compare pairs by: replicas x cap where that orders power, else the milliwatts."""
    return (
        replicas * cap
        if ordered
        else _milliwatts(replicas * target.gpus_per_replica * cap, target.power_factor)
    )


def _reach(targets: Sequence[TargetProblem], tables: Sequence[_CapTable]) -> float:
    """The most any plan serves: every target at max replicas and its best cap."""
    return min(
        served_fraction(t.max_replicas * table.rates[-1], t.demand)
        for t, table in zip(targets, tables, strict=True)
    )


def _power_follows_replica_watts(target: TargetProblem, top_cap_watts: int) -> bool:
    """Whether the target's power rises strictly with replicas x cap, so that this integer orders pairs.

    Power is round(r*g*c * 1000 * pf); with pf >= 0.01 and values this small it
    rises strictly with the integer r*g*c, and g is fixed per target.
    """
    top = target.max_replicas * target.gpus_per_replica * top_cap_watts * 1000
    return top * max(target.power_factor, 1.0) < 2**50


def _raised(
    targets: Sequence[TargetProblem], tables: Sequence[_CapTable], picks: Sequence[_Pick], threshold: float
) -> list[_Pick] | None:
    """Each target's cheapest pair serving ``threshold``, from picks for a lower one; None if out of reach.

    A pick that already serves the threshold stays: the cheapest pair for a lower
    threshold that also serves a higher one is the cheapest for the higher one.
    """
    raised = []
    for target, table, pick in zip(targets, tables, picks, strict=True):
        if pick.served < threshold:
            better = _cheapest_pair(target, table, threshold)
            if better is None:
                return None
            pick = better
        raised.append(pick)
    return raised


def _best_picks(
    targets: Sequence[TargetProblem],
    tables: Sequence[_CapTable],
    budget: int,
    cap_budget: int | None = None,
) -> list[_Pick]:
    """The picks of the largest served fraction whose cheapest pairs fit ``budget`` (milliwatts), and
    whose caps fit ``cap_budget`` when it is given.

    The cheapest pair of a target has both the least power and the least caps (its
    power is its caps times one factor), so both bounds only get harder to meet as
    the served fraction rises, and the search below finds the largest that meets
    both. The probes aim with the tighter of the two, scaled to ``budget``.

    The floor fits (the caller checked). ``low`` is a served fraction known to fit,
    always what its picks serve; ``high`` one known not to. A probe between them
    that fits raises ``low`` to what its picks serve, one that does not lowers
    ``high``; when no float lies between the two, ``low`` is the answer. Probes
    are aimed where power, interpolated between the two ends, meets the budget
    (with the Illinois rule against creeping up on one side), and a probe that
    fits is followed by one just above it, which ends the search when the aim
    was right.
    """
    picks = [_floor_pick(t, table) for t, table in zip(targets, tables, strict=True)]

    def aim_cost(chosen: Sequence[_Pick]) -> float:
        cost: float = sum(p.milliwatts for p in chosen)
        if cap_budget:
            cost = max(cost, sum(p.cap_milliwatts for p in chosen) * budget / cap_budget)
        return cost

    def within(chosen: Sequence[_Pick]) -> bool:
        return sum(p.milliwatts for p in chosen) <= budget and (
            cap_budget is None or sum(p.cap_milliwatts for p in chosen) <= cap_budget
        )

    low = min(p.served for p in picks)
    low_cost: float = aim_cost(picks)
    reach = _reach(targets, tables)
    high = math.nextafter(reach, math.inf)
    high_cost = math.inf  # not measured: aim with the slope below instead
    # Power per unit of served fraction at the most efficient caps, for the first aim.
    slope = sum(
        t.demand * table.watts_per_rate[0] * t.gpus_per_replica * 1000 * t.power_factor
        for t, table in zip(targets, tables, strict=True)
        if t.demand and table.by_efficiency
    )
    confirm = False  # the last probe fitted: try just above it
    last_fitted: bool | None = None  # how the last aimed probe ended
    low_weight = high_weight = 1.0
    while True:
        after = math.nextafter(low, math.inf)
        if after >= high:
            return picks
        if confirm:
            probe = after
        elif high_cost < math.inf:
            below = (budget - low_cost) * low_weight
            above = (high_cost - budget) * high_weight
            probe = low + (high - low) * (below / (below + above))
        elif slope > 0:
            probe = low + (budget - low_cost) / slope
        else:
            probe = low + (high - low) / 2
        if not after <= probe < high:
            probe = after if probe < after else math.nextafter(high, -math.inf)
        raised = _raised(targets, tables, picks, probe)
        cost: float = math.inf if raised is None else aim_cost(raised)
        fitted = raised is not None and within(raised)
        if not confirm:
            # Illinois: an end that stays put for two aims in a row weighs half as much.
            if fitted == last_fitted:
                if fitted:
                    high_weight /= 2
                else:
                    low_weight /= 2
            else:
                low_weight = high_weight = 1.0
            last_fitted = fitted
        if raised is not None and fitted:
            confirm = not confirm
            picks, low, low_cost = raised, min(p.served for p in raised), cost
        else:
            confirm = False
            high, high_cost = probe, cost


def optimize(problem: Problem) -> Plan:
    """The exact lexicographic optimum on the cap grid (see module docstring)."""
    validate_problem(problem)
    if not _floor_fits(problem):
        return _assemble(problem, Strategy.OPTIMIZE, _floor_choices(problem))
    targets = problem.targets
    tables = [_cap_table(t, problem.cap_step_watts) for t in targets]
    cap_budget = problem.cap_budget_watts
    picks = _best_picks(
        targets,
        tables,
        budget_milliwatts(problem.total_watts),
        None if cap_budget is None else budget_milliwatts(cap_budget),
    )
    return _assemble(problem, Strategy.OPTIMIZE, [(p.replicas, p.cap_watts) for p in picks])


# ---------------------------------------------------------------------------
# The served curve: the least power for each served fraction


@dataclass(frozen=True)
class Level:
    """One step of a problem's served curve: each target's cheapest pair for a served fraction.

    ``milliwatts`` is what the pairs need together and ``served_fraction`` what
    they serve (the least served target's). Optimize given exactly
    ``milliwatts`` plans these pairs, unless pairs of the same power serve more
    (then the next level costs no more than this one).
    """

    milliwatts: int
    served_fraction: float
    gpus: int
    picks: tuple[_Pick, ...]

    @property
    def choices(self) -> tuple[tuple[int, int], ...]:
        """(replicas, per-GPU cap in watts) per target."""
        return tuple((p.replicas, p.cap_watts) for p in self.picks)


class ServedCurve:
    """The least power that serves each fraction of a problem's demand, counted as Optimize counts it.

    Optimize's search, opened up for a caller that shares one limit among many
    problems (the domain allocation): ``serving(s)`` is the cheapest level that
    serves at least ``s``, ``within(mw)`` the level Optimize plans within
    ``mw`` milliwatts. ``problem.total_watts`` is not read. An oversubscribed
    problem (a bound on the caps beside the draw) has no such curve: a domain
    counts caps, and its budgets do not oversubscribe.
    """

    def __init__(self, problem: Problem) -> None:
        validate_problem(problem)
        if problem.cap_budget_watts is not None:
            raise ValueError("cap_budget_watts: an oversubscribed problem has no served curve")
        self.problem = problem
        self._targets = problem.targets
        self._tables = tuple(_cap_table(t, problem.cap_step_watts) for t in problem.targets)
        self.floor = self._level(
            tuple(_floor_pick(t, table) for t, table in zip(self._targets, self._tables, strict=True))
        )
        self.reach = _reach(self._targets, self._tables)

    def _level(self, picks: tuple[_Pick, ...]) -> Level:
        return Level(
            milliwatts=sum(p.milliwatts for p in picks),
            served_fraction=min(p.served for p in picks),
            gpus=sum(p.replicas * t.gpus_per_replica for p, t in zip(picks, self._targets, strict=True)),
            picks=picks,
        )

    def serving(self, fraction: float, start: Level | None = None) -> Level | None:
        """The cheapest level serving at least ``fraction``; None when no plan reaches it.

        ``start``, a level of this curve, saves work: its pairs that already
        serve the fraction are the cheapest for it and stay.
        """
        start = start or self.floor
        if fraction <= start.served_fraction:
            return start
        if fraction > self.reach:
            return None
        raised = _raised(self._targets, self._tables, start.picks, fraction)
        return None if raised is None else self._level(tuple(raised))

    def within(self, milliwatts: int) -> Level:
        """The level Optimize plans within ``milliwatts``: the floor when even the floor needs more."""
        if self.floor.milliwatts > milliwatts:
            return self.floor
        return self._level(tuple(_best_picks(self._targets, self._tables, milliwatts)))


def least_milliwatts(problem: Problem, fraction: float) -> int | None:
    """The least power (integer milliwatts) in which Optimize serves at least ``fraction`` of demand."""
    level = ServedCurve(problem).serving(fraction)
    return None if level is None else level.milliwatts


# ---------------------------------------------------------------------------
# Proportional (the classic algorithm)


def _classic_replicas(problem: Problem) -> list[int]:
    """Replicas of the classic algorithm: desired at max caps, scaled down when over the budget."""
    targets = problem.targets
    desired = [desired_replicas(t) for t in targets]
    if fits(problem, [(r, t.cap_max_watts) for t, r in zip(targets, desired, strict=True)]):
        return desired
    # floor(desired * budget / required), in exact integer arithmetic, by the tighter bound.
    required = sum(target_milliwatts(t, r, t.cap_max_watts) for t, r in zip(targets, desired, strict=True))
    budget = budget_milliwatts(problem.total_watts)
    if problem.cap_budget_watts is not None:
        caps = sum(caps_milliwatts(t, r, t.cap_max_watts) for t, r in zip(targets, desired, strict=True))
        cap_budget = budget_milliwatts(problem.cap_budget_watts)
        if caps * budget > required * cap_budget:
            required, budget = caps, cap_budget
    return [
        min(d, max(t.min_replicas, d * budget // required)) for t, d in zip(targets, desired, strict=True)
    ]


def _highest_cap_at_most(target: TargetProblem, level_watts: int, step_watts: int) -> int:
    grid = cap_grid(target.cap_min_watts, target.cap_max_watts, step_watts)
    index = bisect_right(grid, level_watts)
    return grid[max(0, index - 1)]


def _make_fit(problem: Problem, replicas: list[int]) -> tuple[list[tuple[int, int]], str]:
    """Bring an over-budget classic plan within the budget.

    First lower every cap to one common level (the highest that fits, each cap on
    its own grid); if even the minimum caps are over, remove replicas above the
    minimums (the target with the largest surplus first) and raise the common
    level again as far as it fits. Only called when the floor fits, so it ends
    within the budget.
    """
    targets = problem.targets
    step = problem.cap_step_watts
    levels = sorted(
        {c for t in targets for c in cap_grid(t.cap_min_watts, t.cap_max_watts, step)}, reverse=True
    )

    def watts_of(choices: Sequence[tuple[int, int]]) -> list[int]:
        return [target_milliwatts(t, r, c) for t, (r, c) in zip(targets, choices, strict=True)]

    def highest_level(counts: Sequence[int]) -> tuple[list[tuple[int, int]], int] | None:
        for level in levels:
            choices = [
                (r, _highest_cap_at_most(t, level, step)) for t, r in zip(targets, counts, strict=True)
            ]
            if fits(problem, choices):
                return choices, level
        return None

    def describe(choices: Sequence[tuple[int, int]]) -> str:
        return ", ".join(f"{t.name} {r}x{c} W" for t, (r, c) in zip(targets, choices, strict=True))

    found = highest_level(replicas)
    if found is not None:
        choices, level = found
        return choices, f"lowered the caps to at most {level} W ({describe(choices)})"
    counts = list(replicas)
    removed = 0
    while not fits(problem, [(r, t.cap_min_watts) for t, r in zip(targets, counts, strict=True)]):
        surplus, index = max(
            (r - t.min_replicas, -i) for i, (t, r) in enumerate(zip(targets, counts, strict=True))
        )
        if surplus <= 0:
            break  # unreachable while the floor fits
        counts[-index] -= 1
        removed += 1
    found = highest_level(counts)
    if found is None:  # unreachable while the floor fits
        choices = [(r, t.cap_min_watts) for t, r in zip(targets, counts, strict=True)]
        return choices, f"removed {removed} replica(s) ({describe(choices)})"
    choices, level = found
    return choices, (
        f"removed {removed} replica(s) and set the caps to at most {level} W ({describe(choices)})"
    )


def proportional(problem: Problem) -> Plan:
    """The classic algorithm, never above the budget when a plan within it exists."""
    validate_problem(problem)
    if not _floor_fits(problem):
        return _assemble(problem, Strategy.PROPORTIONAL, _floor_choices(problem))
    replicas = _classic_replicas(problem)
    choices = [(r, t.cap_max_watts) for t, r in zip(problem.targets, replicas, strict=True)]
    classic = sum(target_milliwatts(t, r, c) for t, (r, c) in zip(problem.targets, choices, strict=True))
    if fits(problem, choices):
        return _assemble(problem, Strategy.PROPORTIONAL, choices)
    over = classic - budget_milliwatts(problem.total_watts)
    fitted, what = _make_fit(problem, replicas)
    adjustment = (
        f"classic plan needed {_watts_text(classic / 1000)} W, over the budget by "
        f"{_watts_text(over / 1000)} W; {what}"
    )
    return _assemble(problem, Strategy.PROPORTIONAL, fitted, adjustment)


def _plan_one(problem: Problem) -> Plan:
    if problem.strategy == Strategy.PROPORTIONAL:
        return proportional(problem)
    return optimize(problem)


def plan(problem: Problem) -> Plan:
    """Plan with the problem's strategy.

    An oversubscribed problem carries its budget in the default accounting too
    (``plain``): guardable caps can exclude the most efficient ones (a GPU cannot
    be held below its minimum), so the plan is the better of the two by the
    objective — most served, then least power, then fewest GPUs — and
    oversubscription never serves less than the default would.
    """
    result = _plan_one(problem)
    if problem.plain is None:
        return result
    plain = _plan_one(problem.plain)
    if not result.feasible:
        return plain if plain.feasible else result
    if plain.feasible and (-plain.served_fraction, plain.watts, plain.gpus) < (
        -result.served_fraction,
        result.watts,
        result.gpus,
    ):
        return plain
    return result


# ---------------------------------------------------------------------------
# The exhaustive reference


def brute_force(problem: Problem) -> Plan:
    """Every combination of (replicas, cap) per target, scored by the objective; for tests and benchmarks.

    Exponential: use it on small problems only. It shares only the model
    (:func:`target_milliwatts`, :func:`served_fraction`, :func:`cap_grid`) with
    :func:`optimize`, none of its search.
    """
    validate_problem(problem)
    per_target = []
    for target in problem.targets:
        grid = cap_grid(target.cap_min_watts, target.cap_max_watts, problem.cap_step_watts)
        options = []
        for r in range(target.min_replicas, target.max_replicas + 1):
            for c in grid:
                capacity = r * replica_throughput(target, c)
                options.append(
                    (
                        served_fraction(capacity, target.demand),
                        target_milliwatts(target, r, c),
                        r * target.gpus_per_replica,
                        r,
                        c,
                        caps_milliwatts(target, r, c),
                    )
                )
        per_target.append(options)
    budget = budget_milliwatts(problem.total_watts)
    cap_budget = None if problem.cap_budget_watts is None else budget_milliwatts(problem.cap_budget_watts)
    best_key: tuple[float, int, int, tuple[int, ...]] | None = None
    best_choices: list[tuple[int, int]] = []
    for combination in product(*per_target):
        total = sum(option[1] for option in combination)
        if total > budget:
            continue
        if cap_budget is not None and sum(option[5] for option in combination) > cap_budget:
            continue
        served = min(option[0] for option in combination)
        key = (
            -served,
            total,
            sum(option[2] for option in combination),
            tuple(option[4] for option in combination),
        )
        if best_key is None or key < best_key:
            best_key = key
            best_choices = [(option[3], option[4]) for option in combination]
    if best_key is None:
        return _assemble(problem, Strategy.OPTIMIZE, _floor_choices(problem))
    return _assemble(problem, Strategy.OPTIMIZE, best_choices)


__all__ = [
    "Level",
    "Plan",
    "Problem",
    "ProfilePoint",
    "RaisedPoint",
    "ServedCurve",
    "TargetPlan",
    "TargetProblem",
    "brute_force",
    "budget_milliwatts",
    "cap_grid",
    "caps_milliwatts",
    "clear_cache",
    "desired_replicas",
    "fits",
    "fits_budget",
    "floor_watts",
    "guardable",
    "least_milliwatts",
    "optimize",
    "plan",
    "problem_from_spec",
    "proportional",
    "raised_points",
    "replica_throughput",
    "served_fraction",
    "target_milliwatts",
    "target_watts",
    "throughput_at",
    "validate_problem",
]
