"""The planner: replicas and a per-GPU cap for each target, within a power budget.

Pure: plain values in, a :class:`Plan` out. No I/O, no clock, no Kubernetes types.
See DESIGN.md, "The planner's objective", and the README for the objective in
plain words.

Optimize is exact on the cap grid. The objective is separable: a plan serves a
fraction ``s`` when every target serves at least ``s``, and each target's
cheapest way to serve at least ``s`` does not depend on the others. So, per
target, the planner keeps the *frontier* of (replicas, cap) pairs: sorted by
(watts, GPUs, cap), each pair that serves strictly more than every cheaper one.
The best ``s`` is the largest frontier value whose cheapest pairs fit the budget
together (feasibility falls as ``s`` rises, so a binary search finds it); each
target then takes its cheapest pair serving at least ``s``, which is the
lexicographic optimum (most served, then least watts, then fewest GPUs, then
lowest cap).

Every comparison is exact: power is counted in integer milliwatts
(:func:`target_milliwatts`), and a pair's capacity and served fraction are each
computed by one expression (:func:`replica_throughput`, :func:`served_fraction`)
wherever they are needed, so :func:`optimize` and the exhaustive
:func:`brute_force` agree to the last bit.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import product, repeat
from operator import add, mod, mul

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


@dataclass(frozen=True)
class TargetPlan:
    name: str
    desired_replicas: int
    replicas: int
    cap_watts: int
    watts: float
    capacity: float
    demand: float | None
    served_fraction: float
    gpus: int


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


def problem_from_spec(
    spec: BudgetSpec,
    demand: Mapping[str, float | None] | None = None,
    cap_ranges: Mapping[str, tuple[int, int]] | None = None,
    corrections: Mapping[str, tuple[float, float]] | None = None,
    strategy: Strategy | None = None,
) -> Problem:
    """Build a :class:`Problem` from a validated spec.

    ``demand`` overrides a target's static demand (live demand from Prometheus);
    ``cap_ranges`` replaces a target's cap range (the effective range after the
    nodes' GPU limits); ``corrections`` gives (power_factor, throughput_factor).
    Raises :class:`ValueError` naming the field when an override makes the
    problem invalid (for example an empty cap range).
    """
    demand = demand or {}
    cap_ranges = cap_ranges or {}
    corrections = corrections or {}
    names = {t.name for t in spec.targets}
    for label, mapping in (("demand", demand), ("cap_ranges", cap_ranges), ("corrections", corrections)):
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise ValueError(f"{label}: unknown target(s) {', '.join(unknown)}")
    targets = []
    for target in spec.targets:
        if target.name in cap_ranges:
            cap_min, cap_max = cap_ranges[target.name]
        else:
            cap_range = target.cap_range()
            cap_min, cap_max = cap_range.min, cap_range.max
        power_factor, throughput_factor = corrections.get(target.name, (1.0, 1.0))
        targets.append(
            TargetProblem(
                name=target.name,
                min_replicas=target.min_replicas,
                max_replicas=target.max_replicas,
                cap_min_watts=cap_min,
                cap_max_watts=cap_max,
                profile=tuple(ProfilePoint(p.watts, p.throughput) for p in target.profile.points),
                demand=demand.get(target.name, target.demand),
                gpus_per_replica=target.gpus_per_replica,
                power_factor=power_factor,
                throughput_factor=throughput_factor,
            )
        )
    problem = Problem(
        total_watts=spec.total_watts,
        targets=tuple(targets),
        cap_step_watts=spec.cap_step_watts,
        strategy=strategy if strategy is not None else spec.strategy,
    )
    validate_problem(problem)
    return problem


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
        if index > 0:
            before = target.profile[index - 1]
            if point.watts <= before.watts:
                raise ValueError(f"{field}.profile[{index}].watts must be greater than the point before it")
            if point.throughput < before.throughput:
                raise ValueError(f"{field}.profile[{index}].throughput must not be below the point before it")


def validate_problem(problem: Problem) -> None:
    """Check what the API models cannot guarantee; raise :class:`ValueError` naming the field."""
    if not (_finite(problem.total_watts) and 0 < problem.total_watts <= MAX_TOTAL_WATTS):
        raise ValueError(f"total_watts must be > 0 and <= {MAX_TOTAL_WATTS:g}, got {problem.total_watts}")
    if problem.cap_step_watts < 1:
        raise ValueError(f"cap_step_watts must be >= 1, got {problem.cap_step_watts}")
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
    """Per-replica throughput at a per-GPU cap: linear between points, flat beyond the ends."""
    if watts <= profile[0].watts:
        return profile[0].throughput
    if watts >= profile[-1].watts:
        return profile[-1].throughput
    index = bisect_right([p.watts for p in profile], watts)
    low, high = profile[index - 1], profile[index]
    share = (watts - low.watts) / (high.watts - low.watts)
    return low.throughput + share * (high.throughput - low.throughput)


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
    )


# ---------------------------------------------------------------------------
# Assembling a plan and saying why


def _watts_text(watts: float) -> str:
    return f"{watts:,.0f}"


def _percent_text(fraction: float) -> str:
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
    watts = milliwatts / 1000
    served = min(t.served_fraction for t in targets)
    budget = problem.total_watts
    over_milliwatts = milliwatts - budget_milliwatts(budget)
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
            f"budget binds: serving {_percent_text(served)} of demand with "
            f"{_watts_text(watts)} of {_watts_text(budget)} W"
        )
    else:
        reason = (
            f"maxReplicas binds: serving {_percent_text(served)} of demand with "
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
    )


def _floor_choices(problem: Problem) -> list[tuple[int, int]]:
    return [(t.min_replicas, t.cap_min_watts) for t in problem.targets]


def _floor_fits(problem: Problem) -> bool:
    return fits_budget(
        (target_milliwatts(t, t.min_replicas, t.cap_min_watts) for t in problem.targets), problem.total_watts
    )


# ---------------------------------------------------------------------------
# Optimize


@dataclass(frozen=True)
class _Frontier:
    """A target's pairs worth choosing, cheapest first, each serving more than the one before.

    ``replicas[k]`` replicas at ``caps[k]`` deliver ``capacities[k]`` for
    ``milliwatts[k]``; both rise strictly with ``k``, and no pair outside the
    frontier delivers as much for as little (milliwatts, then GPUs, then cap).
    """

    capacities: tuple[float, ...]
    milliwatts: tuple[int, ...]
    replicas: tuple[int, ...]
    caps: tuple[int, ...]


@lru_cache(maxsize=512)
def _capacity_frontier(shape: TargetProblem, step_watts: int) -> _Frontier:
    """The frontier of a target's shape (its name and demand blanked, so changes of demand reuse it)."""
    grid = cap_grid(shape.cap_min_watts, shape.cap_max_watts, step_watts)
    per_replica = [replica_throughput(shape, cap) for cap in grid]
    # Within one replica count a higher cap costs more, so only caps that add capacity count.
    useful = [0] + [k for k in range(1, len(grid)) if per_replica[k] > per_replica[k - 1]]
    caps = [grid[k] for k in useful]
    rates = [per_replica[k] for k in useful]
    width = len(caps)
    rows = range(shape.min_replicas, shape.max_replicas + 1)
    span = len(rows) * width
    g = shape.gpus_per_replica
    pf = shape.power_factor
    # Pair (r, k) sits at index (r - min_replicas) * width + k of the flat lists.
    capacity: list[float] = []
    for r in rows:
        capacity.extend(map(mul, repeat(r), rates))  # r * rate, as everywhere else
    if shape.max_replicas * g * caps[-1] * 1000 * max(pf, 1.0) < 2**50:
        # Power is round(r*g*c * 1000 * pf); with pf >= 0.01 and values this small it rises
        # strictly with the integer r*g*c, so that integer orders pairs by power exactly.
        # One integer key per pair, r*g*c * span + index, sorts by (power, replicas, cap)
        # far faster than tuples or a key function.
        slopes = [g * c * span + width for c in caps]
        offsets = [k - shape.min_replicas * width for k in range(width)]
        keys: list[int] = []
        for r in rows:
            keys.extend(map(add, map(mul, repeat(r), slopes), offsets))
        keys.sort()
        order = list(map(mod, keys, repeat(span)))
    else:
        power = [_milliwatts(r * g * c, pf) for r in rows for c in caps]
        # Stable: equal power stays in (replicas, cap) order, i.e. fewer GPUs, then lower cap.
        order = sorted(range(span), key=power.__getitem__)
    top = capacity[-1]  # max replicas at the highest useful cap: nothing delivers more
    chosen: list[int] = []
    best = -1.0
    for index in order:
        value = capacity[index]
        if value > best:
            best = value
            chosen.append(index)
            if value >= top:
                break
    replicas = [shape.min_replicas + i // width for i in chosen]
    chosen_caps = [caps[i % width] for i in chosen]
    return _Frontier(
        capacities=tuple(capacity[i] for i in chosen),
        milliwatts=tuple(_milliwatts(r * g * c, pf) for r, c in zip(replicas, chosen_caps, strict=True)),
        replicas=tuple(replicas),
        caps=tuple(chosen_caps),
    )


def _strictly_rising(items: Sequence[int], values: Sequence[float]) -> list[int]:
    """The items whose value exceeds every value before it."""
    chosen: list[int] = []
    best = -math.inf
    for item, value in zip(items, values, strict=True):
        if value > best:
            best = value
            chosen.append(item)
    return chosen


def clear_cache() -> None:
    """Forget the memoized frontiers (the speed benchmark uses it to time cold plans)."""
    _capacity_frontier.cache_clear()


@dataclass(frozen=True)
class _ServedFrontier:
    served: tuple[float, ...]
    milliwatts: tuple[int, ...]
    replicas: tuple[int, ...]
    caps: tuple[int, ...]


def _served_frontier(target: TargetProblem, step_watts: int) -> _ServedFrontier:
    """The capacity frontier seen through this target's demand (served fraction strictly rising)."""
    frontier = _capacity_frontier(replace(target, name="", demand=None), step_watts)
    demand = target.demand
    values = [served_fraction(c, demand) for c in frontier.capacities]
    if demand:
        # Past full service nothing serves more: keep the frontier up to its first 1.0.
        end = bisect_left(values, 1.0) + 1
        values = values[:end]
    else:
        values = values[:1]
    keep = _strictly_rising(range(len(values)), values)
    return _ServedFrontier(
        served=tuple(values[k] for k in keep),
        milliwatts=tuple(frontier.milliwatts[k] for k in keep),
        replicas=tuple(frontier.replicas[k] for k in keep),
        caps=tuple(frontier.caps[k] for k in keep),
    )


def optimize(problem: Problem) -> Plan:
    """The exact lexicographic optimum on the cap grid (see module docstring)."""
    validate_problem(problem)
    if not _floor_fits(problem):
        return _assemble(problem, Strategy.OPTIMIZE, _floor_choices(problem))
    frontiers = [_served_frontier(t, problem.cap_step_watts) for t in problem.targets]
    candidates = sorted({value for f in frontiers for value in f.served})
    budget = budget_milliwatts(problem.total_watts)

    def cheapest(threshold: float) -> list[int] | None:
        picks = []
        for frontier in frontiers:
            index = bisect_left(frontier.served, threshold)
            if index == len(frontier.served):
                return None
            picks.append(index)
        return picks

    def feasible(threshold: float) -> bool:
        picks = cheapest(threshold)
        return (
            picks is not None
            and sum(f.milliwatts[k] for f, k in zip(frontiers, picks, strict=True)) <= budget
        )

    # candidates[0] is at most every target's cheapest pair, i.e. the floor, which fits.
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if feasible(candidates[middle]):
            low = middle
        else:
            high = middle - 1
    picks = cheapest(candidates[low])
    if picks is None:  # unreachable: candidates[0] is reached by the floor, which fits
        raise RuntimeError(f"planner found no plan at served fraction {candidates[low]}")
    choices = [(f.replicas[k], f.caps[k]) for f, k in zip(frontiers, picks, strict=True)]
    return _assemble(problem, Strategy.OPTIMIZE, choices)


# ---------------------------------------------------------------------------
# Proportional (the classic algorithm)


def _classic_replicas(problem: Problem) -> list[int]:
    """Replicas of the classic algorithm: desired at max caps, scaled down when over the budget."""
    targets = problem.targets
    desired = [desired_replicas(t) for t in targets]
    required = sum(target_milliwatts(t, r, t.cap_max_watts) for t, r in zip(targets, desired, strict=True))
    budget = budget_milliwatts(problem.total_watts)
    if required <= budget:
        return desired
    # floor(desired * budget / required), in exact integer arithmetic.
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
            if fits_budget(watts_of(choices), problem.total_watts):
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
    while not fits_budget(
        watts_of([(r, t.cap_min_watts) for t, r in zip(targets, counts, strict=True)]), problem.total_watts
    ):
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
    over = classic - budget_milliwatts(problem.total_watts)
    if over <= 0:
        return _assemble(problem, Strategy.PROPORTIONAL, choices)
    fitted, what = _make_fit(problem, replicas)
    adjustment = (
        f"classic plan needed {_watts_text(classic / 1000)} W, over the budget by "
        f"{_watts_text(over / 1000)} W; {what}"
    )
    return _assemble(problem, Strategy.PROPORTIONAL, fitted, adjustment)


def plan(problem: Problem) -> Plan:
    """Plan with the problem's strategy."""
    if problem.strategy == Strategy.PROPORTIONAL:
        return proportional(problem)
    return optimize(problem)


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
                    )
                )
        per_target.append(options)
    budget = budget_milliwatts(problem.total_watts)
    best_key: tuple[float, int, int, tuple[int, ...]] | None = None
    best_choices: list[tuple[int, int]] = []
    for combination in product(*per_target):
        total = sum(option[1] for option in combination)
        if total > budget:
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
    "Plan",
    "Problem",
    "ProfilePoint",
    "TargetPlan",
    "TargetProblem",
    "brute_force",
    "budget_milliwatts",
    "cap_grid",
    "clear_cache",
    "desired_replicas",
    "fits_budget",
    "floor_watts",
    "optimize",
    "plan",
    "problem_from_spec",
    "proportional",
    "replica_throughput",
    "served_fraction",
    "target_milliwatts",
    "target_watts",
    "throughput_at",
    "validate_problem",
]
