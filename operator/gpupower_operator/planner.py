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

Every comparison is exact: a pair's watts, capacity and served fraction are each
computed by one expression (:func:`target_watts`, :func:`served_fraction`)
wherever they are needed, and sums of watts are compared with the budget
exactly (:func:`fits_budget`), so :func:`optimize` and the exhaustive
:func:`brute_force` agree to the last bit.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import product

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


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _validate_target(field: str, target: TargetProblem) -> None:
    if target.min_replicas < 0:
        raise ValueError(f"{field}.min_replicas must be >= 0, got {target.min_replicas}")
    if target.max_replicas < target.min_replicas:
        raise ValueError(
            f"{field}.max_replicas ({target.max_replicas}) must be >= min_replicas ({target.min_replicas})"
        )
    if target.cap_min_watts <= 0:
        raise ValueError(f"{field}.cap_min_watts must be > 0, got {target.cap_min_watts}")
    if target.cap_max_watts < target.cap_min_watts:
        raise ValueError(
            f"{field}.cap_max_watts ({target.cap_max_watts}) must be >= cap_min_watts "
            f"({target.cap_min_watts}): the cap range is empty"
        )
    if target.gpus_per_replica < 1:
        raise ValueError(f"{field}.gpus_per_replica must be >= 1, got {target.gpus_per_replica}")
    if target.demand is not None and not (_finite(target.demand) and target.demand >= 0):
        raise ValueError(f"{field}.demand must be a finite number >= 0, got {target.demand}")
    for name in ("power_factor", "throughput_factor"):
        value = getattr(target, name)
        if not (_finite(value) and value > 0):
            raise ValueError(f"{field}.{name} must be a finite number > 0, got {value}")
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
    if not (_finite(problem.total_watts) and problem.total_watts > 0):
        raise ValueError(f"total_watts must be a finite number > 0, got {problem.total_watts}")
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


def target_watts(target: TargetProblem, replicas: int, cap_watts: int) -> float:
    """Power of ``replicas`` replicas at ``cap_watts`` per GPU."""
    return replicas * target.gpus_per_replica * cap_watts * target.power_factor


def served_fraction(capacity: float, demand: float | None) -> float:
    """Share of demand a capacity serves, at most 1; no demand (or zero) counts as served."""
    if not demand:
        return 1.0
    return min(1.0, capacity / demand)


def fits_budget(watts: Iterable[float], budget_watts: float) -> bool:
    """Whether the exact sum of ``watts`` is at most the budget (no rounding error either way)."""
    values = list(watts)
    total = math.fsum(values)
    if total != budget_watts:
        # fsum is correctly rounded, so a strict inequality after rounding holds exactly.
        return total < budget_watts
    return sum(map(Fraction, values), Fraction(0)) <= Fraction(budget_watts)


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
    return math.fsum(target_watts(t, t.min_replicas, t.cap_min_watts) for t in problem.targets)


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
    watts = math.fsum(t.watts for t in targets)
    served = min(t.served_fraction for t in targets)
    budget = problem.total_watts
    floor = floor_watts(problem)
    feasible = fits_budget((t.watts for t in targets), budget)
    infeasible_by = 0.0 if feasible else watts - budget
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
        floor_watts=floor,
    )


def _floor_choices(problem: Problem) -> list[tuple[int, int]]:
    return [(t.min_replicas, t.cap_min_watts) for t in problem.targets]


def _floor_fits(problem: Problem) -> bool:
    return fits_budget(
        (target_watts(t, t.min_replicas, t.cap_min_watts) for t in problem.targets), problem.total_watts
    )


# ---------------------------------------------------------------------------
# Optimize


@dataclass(frozen=True)
class _Frontier:
    """A target's pairs worth choosing, cheapest first, each serving more than the one before.

    ``capacities[k]`` is served by ``replicas[k]`` at ``caps[k]`` for ``watts[k]``;
    all are strictly increasing in ``k``, and no pair outside the frontier serves as
    much for as little (watts, then GPUs, then cap).
    """

    capacities: tuple[float, ...]
    watts: tuple[float, ...]
    replicas: tuple[int, ...]
    caps: tuple[int, ...]


@lru_cache(maxsize=512)
def _capacity_frontier(
    profile: tuple[ProfilePoint, ...],
    throughput_factor: float,
    gpus_per_replica: int,
    power_factor: float,
    min_replicas: int,
    max_replicas: int,
    grid: tuple[int, ...],
) -> _Frontier:
    # Demand-independent, so a budget or demand change reuses it.
    shape = TargetProblem(
        name="frontier",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cap_min_watts=grid[0],
        cap_max_watts=grid[-1],
        profile=profile,
        gpus_per_replica=gpus_per_replica,
        power_factor=power_factor,
        throughput_factor=throughput_factor,
    )
    per_replica = [replica_throughput(shape, cap) for cap in grid]
    # Within one replica count a higher cap costs more, so only caps that add capacity count.
    useful = [0] + [k for k in range(1, len(grid)) if per_replica[k] > per_replica[k - 1]]
    caps = [grid[k] for k in useful]
    rates = [per_replica[k] for k in useful]
    width = len(caps)
    rows = range(min_replicas, max_replicas + 1)
    span = len(rows) * width
    # Pair (r, k) sits at index (r - min_replicas) * width + k of the flat lists.
    capacity = [r * f for r in rows for f in rates]
    top = capacity[-1]  # max replicas at the highest useful cap: nothing serves more
    g = gpus_per_replica
    if max_replicas * g * caps[-1] < 2**52:
        # Watts are (r * g * c) * power_factor: below 2**52 the integer r * g * c orders
        # them exactly, ties included. One integer per pair, key = r*g*c * span + index,
        # sorts by (watts, replicas, cap) far faster than tuples or a key function.
        coefficients = [(g * c * span + width, k - min_replicas * width) for k, c in enumerate(caps)]
        order = [key % span for key in sorted([r * a + b for r in rows for a, b in coefficients])]
    else:
        watts = [r * g * c * power_factor for r in rows for c in caps]
        # Stable: equal watts stay in (replicas, cap) order, i.e. fewer GPUs, then lower cap.
        order = sorted(range(span), key=watts.__getitem__)
    chosen: list[int] = []
    best = -1.0
    for index in order:
        value = capacity[index]
        if value > best:
            best = value
            chosen.append(index)
            if value >= top:
                break
    out_capacity = [capacity[i] for i in chosen]
    out_replicas = [min_replicas + i // width for i in chosen]
    out_caps = [caps[i % width] for i in chosen]
    out_watts = [r * g * c * power_factor for r, c in zip(out_replicas, out_caps, strict=True)]
    return _Frontier(tuple(out_capacity), tuple(out_watts), tuple(out_replicas), tuple(out_caps))


@dataclass(frozen=True)
class _ServedFrontier:
    served: tuple[float, ...]
    watts: tuple[float, ...]
    replicas: tuple[int, ...]
    caps: tuple[int, ...]


def _served_frontier(target: TargetProblem, step_watts: int) -> _ServedFrontier:
    """The capacity frontier seen through this target's demand (served fraction strictly rising)."""
    frontier = _capacity_frontier(
        target.profile,
        target.throughput_factor,
        target.gpus_per_replica,
        target.power_factor,
        target.min_replicas,
        target.max_replicas,
        cap_grid(target.cap_min_watts, target.cap_max_watts, step_watts),
    )
    served: list[float] = []
    watts: list[float] = []
    replicas: list[int] = []
    caps: list[int] = []
    best = -1.0
    demand = target.demand
    for k, capacity in enumerate(frontier.capacities):
        value = served_fraction(capacity, demand)
        if value > best:
            best = value
            served.append(value)
            watts.append(frontier.watts[k])
            replicas.append(frontier.replicas[k])
            caps.append(frontier.caps[k])
            if value >= 1.0:
                break
    return _ServedFrontier(tuple(served), tuple(watts), tuple(replicas), tuple(caps))


def optimize(problem: Problem) -> Plan:
    """The exact lexicographic optimum on the cap grid (see module docstring)."""
    validate_problem(problem)
    if not _floor_fits(problem):
        return _assemble(problem, Strategy.OPTIMIZE, _floor_choices(problem))
    frontiers = [_served_frontier(t, problem.cap_step_watts) for t in problem.targets]
    candidates = sorted({value for f in frontiers for value in f.served})
    budget = problem.total_watts

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
        return picks is not None and fits_budget(
            (f.watts[k] for f, k in zip(frontiers, picks, strict=True)), budget
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
    assert picks is not None  # the floor fits, so the lowest candidate is always reachable
    choices = [(f.replicas[k], f.caps[k]) for f, k in zip(frontiers, picks, strict=True)]
    return _assemble(problem, Strategy.OPTIMIZE, choices)


# ---------------------------------------------------------------------------
# Proportional (the classic algorithm)


def _classic_replicas(problem: Problem) -> list[int]:
    """Replicas of the classic algorithm: desired at max caps, scaled down when over the budget."""
    targets = problem.targets
    desired = [desired_replicas(t) for t in targets]
    needed = [target_watts(t, r, t.cap_max_watts) for t, r in zip(targets, desired, strict=True)]
    if fits_budget(needed, problem.total_watts):
        return desired
    required = math.fsum(needed)
    return [
        min(d, max(t.min_replicas, math.floor(d * problem.total_watts / required)))
        for t, d in zip(targets, desired, strict=True)
    ]


def _highest_cap_at_most(target: TargetProblem, level_watts: int, step_watts: int) -> int:
    grid = cap_grid(target.cap_min_watts, target.cap_max_watts, step_watts)
    index = bisect_right(grid, level_watts)
    return grid[max(0, index - 1)]


def _make_fit(problem: Problem, replicas: list[int]) -> tuple[list[tuple[int, int]], str]:
    """Bring an over-budget classic plan within the budget: one common lower cap, then fewer replicas.

    Only called when the floor fits, so both loops end within the budget.
    """
    targets = problem.targets
    step = problem.cap_step_watts
    levels = sorted(
        {c for t in targets for c in cap_grid(t.cap_min_watts, t.cap_max_watts, step)}, reverse=True
    )

    def watts_of(choices: Sequence[tuple[int, int]]) -> list[float]:
        return [target_watts(t, r, c) for t, (r, c) in zip(targets, choices, strict=True)]

    for level in levels:
        choices = [(r, _highest_cap_at_most(t, level, step)) for t, r in zip(targets, replicas, strict=True)]
        if fits_budget(watts_of(choices), problem.total_watts):
            caps = ", ".join(f"{t.name} {c} W" for t, (_, c) in zip(targets, choices, strict=True))
            return choices, f"lowered the caps to at most {level} W ({caps})"
    # Every cap at its minimum and still over: remove replicas above the minimums, largest surplus first.
    current = [(r, t.cap_min_watts) for t, r in zip(targets, replicas, strict=True)]
    removed = 0
    while not fits_budget(watts_of(current), problem.total_watts):
        surplus = [
            (r - t.min_replicas, -i) for i, (t, (r, _)) in enumerate(zip(targets, current, strict=True))
        ]
        most, negative_index = max(surplus)
        if most <= 0:
            break  # cannot happen while the floor fits
        index = -negative_index
        r, c = current[index]
        current[index] = (r - 1, c)
        removed += 1
    caps = ", ".join(f"{t.name} {r}x{c} W" for t, (r, c) in zip(targets, current, strict=True))
    return current, f"lowered every cap to its minimum and removed {removed} replica(s) ({caps})"


def proportional(problem: Problem) -> Plan:
    """The classic algorithm, never above the budget when a plan within it exists."""
    validate_problem(problem)
    if not _floor_fits(problem):
        return _assemble(problem, Strategy.PROPORTIONAL, _floor_choices(problem))
    replicas = _classic_replicas(problem)
    choices = [(r, t.cap_max_watts) for t, r in zip(problem.targets, replicas, strict=True)]
    classic_watts = [target_watts(t, r, c) for t, (r, c) in zip(problem.targets, choices, strict=True)]
    if fits_budget(classic_watts, problem.total_watts):
        return _assemble(problem, Strategy.PROPORTIONAL, choices)
    over = math.fsum(classic_watts) - problem.total_watts
    fitted, what = _make_fit(problem, replicas)
    adjustment = (
        f"classic plan needed {_watts_text(math.fsum(classic_watts))} W, over the budget by "
        f"{_watts_text(over)} W; {what}"
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
    (:func:`target_watts`, :func:`served_fraction`, :func:`cap_grid`) with
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
                        Fraction(target_watts(target, r, c)),
                        r * target.gpus_per_replica,
                        r,
                        c,
                    )
                )
        per_target.append(options)
    budget = Fraction(problem.total_watts)
    best_key: tuple[float, Fraction, int, tuple[int, ...]] | None = None
    best_choices: list[tuple[int, int]] = []
    for combination in product(*per_target):
        total = sum((option[1] for option in combination), Fraction(0))
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
    "cap_grid",
    "desired_replicas",
    "fits_budget",
    "floor_watts",
    "optimize",
    "plan",
    "problem_from_spec",
    "proportional",
    "replica_throughput",
    "served_fraction",
    "target_watts",
    "throughput_at",
    "validate_problem",
]
