"""How the budgets of a tree of power domains share its limits: the allocation, pure and exact.

A power domain (a rack's PDU, a row's busway, a hall's feed) limits all the GPUs
on its nodes together, and domains nest (``parent``) into trees. Budgets join a
domain; each gets an *allocation*, exactly the watts its plan needs. Plain
values in, an :class:`Allocation` out: no I/O, no clock, no Kubernetes types.

The rule, per tree (README, "How a domain allocates its watts"):

1. What is committed outside budgets on a domain's nodes (idle GPUs at their
   parked limit, unmanaged GPUs at their cap or held limit, GPUs held by pods of
   other domains' budgets) comes off that domain and every domain above it.
2. Then every budget's floor (every target at minReplicas and its lowest cap).
   A domain whose floors do not fit what is left is infeasible: every budget
   under it holds its floor and no more (fail closed), and the domain names them.
3. Then priority tiers, highest first; while a tier is allocated, the lower
   tiers hold their floors.
4. Within a tier, the lexicographic max-min of the budgets' served fractions (a
   budget's is its least served target's, as the planner counts it): all rise
   together, and a budget stops when its next step would break its own
   ``totalWatts`` or a domain anywhere up its chain. Plans live on a cap grid,
   so budgets rise in steps; of two budgets at the same fraction, the one whose
   next step needs fewer watts goes first (then fewer GPUs, then namespace and
   name), which makes the optimum unique.

Each budget's steps are its planner's own (:class:`~gpupower_operator.core.planner.ServedCurve`:
the least milliwatts that serve each fraction), so planning a budget with its
allocation gives back exactly the plan the allocation counted on.

Why it is exact, and fast. Step 4 is this greedy: take the least served budget
(ties as above), raise it to its next step if that fits every limit on its
chain, else stop it for good. It reaches the optimum: as long as every budget
stands no higher than in the optimum, the least served one must be raised there
too when it can be (else raising it would beat the optimum), and a step that
does not fit now cannot fit in the optimum, where every other budget stands at
least as high. Stepping one level at a time would be slow (a budget has
hundreds of steps),
so :func:`_rounds` moves all rising budgets at once to the highest common
fraction that fits (a search over the fraction, like the planner's, aimed at
the tightest domain): every intermediate state fits too, so the greedy passes
through it. Only the budgets at that fraction then step one by one. And a
domain whose subtrees, allocated on their own, fit it as they are, is allocated
that way (:func:`_fill`): the optimum of a problem without the domain's limit
that happens to satisfy it is the optimum with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from gpupower_operator.core.planner import Level, Problem, ServedCurve, budget_milliwatts, percent_text


class Limit(StrEnum):
    """Why a budget's allocation is what it is."""

    DEMAND_SERVED = "DemandServed"
    MAX_REPLICAS = "MaxReplicas"
    OWN_LIMIT = "OwnLimit"
    DOMAIN_LIMIT = "DomainLimit"
    HIGHER_PRIORITY = "HigherPriority"
    INFEASIBLE_FLOOR = "InfeasibleFloor"


@dataclass(frozen=True)
class DomainInput:
    """One domain. The watts committed outside budgets are those on its *own* nodes: the nodes whose
    deepest domain it is (a child domain's nodes are counted in the child, and so in this one too)."""

    name: str
    limit_watts: float
    parent: str | None = None
    idle_watts: float = 0.0
    unmanaged_watts: float = 0.0
    other_domains_watts: float = 0.0


@dataclass(frozen=True)
class BudgetInput:
    """One budget of a domain. ``problem`` is its planner problem; its ``total_watts`` is not read (the
    allocation decides it); ``limit_watts`` is the budget's own ``spec.totalWatts`` when it has one."""

    namespace: str
    name: str
    domain: str
    problem: Problem
    priority: int = 0
    limit_watts: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class BudgetAllocation:
    """A budget's share: ``milliwatts`` is exactly what its plan needs, serving ``served_fraction``."""

    namespace: str
    name: str
    domain: str
    priority: int
    milliwatts: int
    floor_milliwatts: int
    served_fraction: float
    gpus: int
    choices: tuple[tuple[int, int], ...]  # (replicas, per-GPU cap in watts) per target, as planned
    limited_by: Limit
    bound_by: str | None  # the domain that bound it (DomainLimit, HigherPriority, InfeasibleFloor)
    reason: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def watts(self) -> float:
        return self.milliwatts / 1000


@dataclass(frozen=True)
class DomainAllocation:
    """A domain's accounts, each over its whole subtree (its own nodes and its children's)."""

    name: str
    parent: str | None
    limit_milliwatts: int
    idle_milliwatts: int
    unmanaged_milliwatts: int
    other_domains_milliwatts: int
    floor_milliwatts: int  # the floors of the budgets under it
    allocated_milliwatts: int  # what the budgets under it are allocated
    feasible: bool
    budgets: tuple[str, ...]  # namespace/name of the budgets that join it directly
    infeasible_budgets: tuple[str, ...]  # when infeasible: every budget under it, each holding its floor
    reason: str

    @property
    def committed_milliwatts(self) -> int:
        """Watts committed outside budgets: idle, unmanaged and other domains' GPUs."""
        return self.idle_milliwatts + self.unmanaged_milliwatts + self.other_domains_milliwatts

    @property
    def headroom_milliwatts(self) -> int:
        """What is left of the limit; negative when the floors of an infeasible domain exceed it."""
        return self.limit_milliwatts - self.committed_milliwatts - self.allocated_milliwatts

    @property
    def infeasible_by_milliwatts(self) -> int:
        return max(0, self.committed_milliwatts + self.floor_milliwatts - self.limit_milliwatts)


@dataclass(frozen=True)
class Allocation:
    domains: tuple[DomainAllocation, ...]  # in input order
    budgets: tuple[BudgetAllocation, ...]  # in input order

    def domain(self, name: str) -> DomainAllocation:
        return next(d for d in self.domains if d.name == name)

    def budget(self, namespace: str, name: str) -> BudgetAllocation:
        return next(b for b in self.budgets if b.namespace == namespace and b.name == name)


@dataclass(frozen=True)
class TreeProblem:
    """A domain that cannot be allocated, and why (``reason`` is one CamelCase word)."""

    domain: str
    reason: str  # DuplicateName, ParentNotFound, ParentCycle, ParentInvalid
    message: str


class DomainTreeError(ValueError):
    """The domains do not form a forest; ``problem`` names the first domain at fault."""

    def __init__(self, problem: TreeProblem) -> None:
        self.problem = problem
        super().__init__(f"domain {problem.domain}: {problem.message}")


def tree_problems(domains: Sequence[DomainInput]) -> tuple[TreeProblem, ...]:
    """Every domain the allocation cannot use: a name used twice, a missing parent, a cycle of parents,
    or an ancestor with one of these (its chain is broken). The shell leaves them out and says why."""
    problems: dict[str, TreeProblem] = {}
    names = [d.name for d in domains]
    for name in names:
        if names.count(name) > 1:
            problems[name] = TreeProblem(name, "DuplicateName", "another domain has this name")
    parents = {d.name: d.parent for d in domains}
    for domain in domains:
        if domain.name in problems:
            continue
        path = [domain.name]
        parent = domain.parent
        while parent is not None:
            if parent not in parents:
                if len(path) == 1:
                    problems[domain.name] = TreeProblem(
                        domain.name, "ParentNotFound", f"its parent {parent} does not exist"
                    )
                else:
                    problems[domain.name] = TreeProblem(
                        domain.name,
                        "ParentInvalid",
                        f"its ancestor {path[-1]} has a parent that does not exist",
                    )
                break
            if parent in path:
                cycle = path[path.index(parent) :]
                if domain.name in cycle:
                    message = "its parents form a cycle: " + " -> ".join([*cycle, parent])
                    problems[domain.name] = TreeProblem(domain.name, "ParentCycle", message)
                else:
                    message = f"its ancestor {cycle[0]} is in a cycle of parents"
                    problems[domain.name] = TreeProblem(domain.name, "ParentInvalid", message)
                break
            if parent in problems and problems[parent].reason == "DuplicateName":
                problems[domain.name] = TreeProblem(
                    domain.name, "ParentInvalid", f"its ancestor {parent} has a name another domain has"
                )
                break
            path.append(parent)
            parent = parents[parent]
    return tuple(problems[name] for name in dict.fromkeys(names) if name in problems)


class Curve(Protocol):
    """What the allocation asks of a budget's served curve (the planner's :class:`ServedCurve`)."""

    floor: Level
    reach: float

    def serving(self, fraction: float, start: Level | None = None) -> Level | None: ...

    def within(self, milliwatts: int) -> Level: ...


# ---------------------------------------------------------------------------
# Working state


class _Budget:
    """A budget while the allocation runs: its curve, its floor and top, where it stands."""

    __slots__ = ("bound_by", "chain", "checked", "curve", "floor", "input", "level", "step", "top")

    def __init__(self, budget: BudgetInput, curve: Curve, chain: tuple[int, ...]) -> None:
        self.input = budget
        self.curve = curve
        self.chain = chain  # its domain and every domain above it, nearest first
        self.checked = chain  # the part of the chain the current subproblem constrains
        self.floor = curve.floor
        self.level = self.floor
        self.top = self.floor  # the highest level its own limit allows
        self.step: Level | None = None  # the level just above ``level``, once known
        self.bound_by: int | None = None  # the domain that stopped it

    def next_step(self) -> Level:
        """The cheapest level serving more than ``level`` (below the top there always is one)."""
        if self.step is None:
            step = self.curve.serving(math.nextafter(self.level.served_fraction, math.inf), self.level)
            assert step is not None  # the top serves more
            self.step = step
        return self.step


def _move(budget: _Budget, level: Level, slack: list[int]) -> None:
    delta = level.milliwatts - budget.level.milliwatts
    if delta:
        for d in budget.chain:
            slack[d] -= delta
    if level is not budget.level:
        budget.level = level
        budget.step = None


def _probe(
    rising: Sequence[_Budget], slack: Sequence[int], fraction: float
) -> tuple[list[tuple[_Budget, Level]], dict[int, int]]:
    """Every rising budget at its cheapest level serving ``fraction`` (or its top, below it).

    Returns the moves and, per domain they would overfill, by how many milliwatts.
    """
    moves: list[tuple[_Budget, Level]] = []
    need: dict[int, int] = {}
    for budget in rising:
        level = budget.level
        if level.served_fraction >= fraction:
            continue
        top = budget.top
        if top.served_fraction <= fraction:
            new = top
        elif budget.step is not None and fraction <= budget.step.served_fraction:
            new = budget.step
        else:
            found = budget.curve.serving(fraction, level)
            assert found is not None  # the top serves the fraction, so some level does
            new = found
        moves.append((budget, new))
        delta = new.milliwatts - level.milliwatts
        if delta:
            for d in budget.checked:
                need[d] = need.get(d, 0) + delta
    excess = {d: n - slack[d] for d, n in need.items() if n > slack[d]}
    return moves, excess


def _lowest(rising: Sequence[_Budget]) -> float:
    """The least served fraction among the budgets below their tops (the highest top when none is)."""
    below = [b.level.served_fraction for b in rising if b.level.served_fraction < b.top.served_fraction]
    return min(below) if below else max(b.top.served_fraction for b in rising)


def _crossing(ramps: Sequence[tuple[float, float, int]], load: float) -> float:
    """Where a sum of ramps first reaches ``load``: each ramp rises linearly by ``rise`` milliwatts
    from fraction ``start`` to ``end`` (at once when they are equal), flat before and after."""
    events: list[tuple[float, float, float]] = []  # (fraction, change of slope, jump)
    for start, end, rise in ramps:
        if end > start:
            events.append((start, rise / (end - start), 0.0))
            events.append((end, -rise / (end - start), 0.0))
        else:
            events.append((start, 0.0, float(rise)))
    events.sort()
    total = slope = 0.0
    at = events[0][0]
    if load <= 0:
        return at
    for fraction, change, jump in events:
        reached = total + slope * (fraction - at)
        if reached >= load:
            return at + (load - total) / slope
        total, at = reached + jump, fraction
        if total >= load:
            return fraction
        slope += change
    return math.inf


def _rise(rising: Sequence[_Budget], slack: list[int]) -> tuple[float, bool]:
    """Move every rising budget to the highest common served fraction that fits; return that fraction.

    Or stop short, when stepping the rest of the way is likely cheaper than
    searching it (about as few steps left as budgets between ``low`` and
    ``high``): then the fraction returned is ``low`` and the flag says so.

    ``low`` is a fraction known to fit (what the budgets serve now), ``high`` one
    known not to. A probe between them that fits is committed and raises
    ``low`` to what the budgets then serve; one that does not lowers ``high``.
    Probes are aimed where the tightest overfilled domain meets its limit,
    modelling each budget's power as linear between where it stands and the
    lowest point of its curve known above it (its top, or what a probe that did
    not fit found); an aim that fails again pulls the next one lower. Every
    aimed probe is followed by one just above ``low``, which ends the search
    when the aim was right or nothing can rise, and otherwise climbs one step.
    """
    low = _lowest(rising)
    high = max(b.top.served_fraction for b in rising)
    moves, excess = _probe(rising, slack, high)
    if not excess:
        for budget, level in moves:
            _move(budget, level, slack)
        return high, False
    # The lowest known point of each budget's curve above where it stands: (fraction, milliwatts).
    upper = {id(b): (b.top.served_fraction, b.top.milliwatts) for b in rising}
    confirm = True  # first, whether anything can rise at all
    pull = 1.0
    last_fitted: bool | None = None
    while True:
        after = math.nextafter(low, math.inf)
        if after >= high:
            return low, False
        if confirm:
            probe = after
        else:
            # Each budget's power: its next step, exactly, then linear up to the point known above it.
            ramps: dict[int, list[tuple[float, float, int]]] = {d: [] for d in excess}
            crossing = steps_left = 0.0
            for budget in rising:
                level = budget.level
                if level.served_fraction < budget.top.served_fraction and any(
                    d in ramps for d in budget.checked
                ):
                    step = budget.next_step()
                    crossing += 1
                    gap = min(high, budget.top.served_fraction) - level.served_fraction
                    steps_left += gap / max(step.served_fraction - level.served_fraction, gap / 1e6)
                    end, milliwatts = upper[id(budget)]
                    pieces = [
                        (level.served_fraction, level.served_fraction, step.milliwatts - level.milliwatts)
                    ]
                    if end > step.served_fraction and milliwatts > step.milliwatts:
                        pieces.append((step.served_fraction, end, milliwatts - step.milliwatts))
                    for d in budget.checked:
                        if d in ramps:
                            ramps[d].extend(pieces)
            if steps_left <= 2 * crossing:
                return low, True
            probe = min(_crossing(ramps[d], slack[d] * pull) for d in excess if ramps[d])
            if not after <= probe < high:
                probe = after if probe < after else math.nextafter(high, -math.inf)
        moves, new_excess = _probe(rising, slack, probe)
        fitted = not new_excess
        if not confirm:
            # Aims that keep falling short (or long) reach further (or less far) each time.
            stretch = 2.0 if fitted else 0.5
            pull = pull * stretch if fitted == last_fitted else 1.0
            last_fitted = fitted
        if fitted:
            for budget, level in moves:
                _move(budget, level, slack)
                if upper[id(budget)][0] <= level.served_fraction:
                    upper[id(budget)] = (budget.top.served_fraction, budget.top.milliwatts)
            low = _lowest(rising)
        else:
            high, excess = probe, new_excess
            for budget, level in moves:
                if probe < upper[id(budget)][0]:
                    upper[id(budget)] = (probe, level.milliwatts)
        # After an aimed probe, one just above ``low``: it ends the search (the aim was right, or
        # nothing can rise) or climbs one step, so the aim never creeps through the floats near ``low``.
        confirm = not confirm


def _step_order(budget: _Budget, step: Level) -> tuple[int, int, str, str]:
    return (
        step.milliwatts - budget.level.milliwatts,
        step.gpus - budget.level.gpus,
        budget.input.namespace,
        budget.input.name,
    )


_CLEAR_ROUNDS_BEFORE_SEARCH = 3


def _rounds(members: Sequence[_Budget], slack: list[int]) -> None:
    """The greedy of the module docstring over ``members``, each constrained by its ``checked`` domains.

    A round steps the least served budgets one by one. Before it, a search moves
    everyone up at once, except after a step failed: then a limit is nearly
    full, few steps can still fit, and stepping is cheaper than searching, until
    a few rounds in a row have stepped without a failure.
    """
    rising = [b for b in members if b.level.served_fraction < b.top.served_fraction]
    clear_rounds = _CLEAR_ROUNDS_BEFORE_SEARCH  # rounds since a step failed
    while rising:
        if clear_rounds >= _CLEAR_ROUNDS_BEFORE_SEARCH:
            fraction, short = _rise(rising, slack)
            if short:
                clear_rounds = -len(rising)  # step on: the search found few steps left
            rising = [b for b in rising if b.level.served_fraction < b.top.served_fraction]
            if not rising:
                break
        else:
            fraction = min(b.level.served_fraction for b in rising)
        steps: list[tuple[_Budget, Level]] = []
        for budget in rising:
            if budget.level.served_fraction == fraction:
                steps.append((budget, budget.next_step()))
        steps.sort(key=lambda item: _step_order(*item))
        stopped: set[int] = set()
        for budget, step in steps:
            delta = step.milliwatts - budget.level.milliwatts
            blocked = next((d for d in budget.checked if slack[d] < delta), None)
            if blocked is None:
                _move(budget, step, slack)
            else:
                budget.bound_by = blocked
                stopped.add(id(budget))
        rising = [
            b for b in rising if id(b) not in stopped and b.level.served_fraction < b.top.served_fraction
        ]
        clear_rounds = 0 if stopped else clear_rounds + 1


def _fill(
    domain: int, by_domain: dict[int, list[_Budget]], children: Sequence[Sequence[int]], slack: list[int]
) -> list[_Budget]:
    """Allocate one tier's budgets under ``domain``, constrained by it and the domains below it.

    Each child's subtree is allocated on its own first, and the budgets that join
    ``domain`` directly take their tops; if that fits ``domain``, it is the
    answer. Otherwise the subtree is allocated again, together, and the first
    part of that is already known: until ``domain`` first stops a step, the
    greedy does in each subtree what it did there alone. So one search, with
    every budget capped at its result alone and only ``domain`` to check, finds
    where ``domain`` binds; the budgets stopped below that stay as they were, and
    the greedy goes on from there with every limit.
    """
    mine = by_domain.get(domain, [])
    subtree = list(mine)
    for child in children[domain]:
        subtree.extend(_fill(child, by_domain, children, slack))
    if not subtree:
        return subtree
    for budget in mine:
        _move(budget, budget.top, slack)
    if slack[domain] >= 0:
        return subtree
    alone = [(budget, budget.level, budget.top, budget.bound_by) for budget in subtree]
    for budget, result, _, _ in alone:
        _move(budget, budget.floor, slack)
        budget.top, budget.checked = result, (domain,)
    rising = [b for b in subtree if b.level.served_fraction < b.top.served_fraction]
    binds = _rise(rising, slack)[0] if rising else math.inf  # (floors fit: some budget can rise)
    going_on = []
    for budget, result, top, bound in alone:
        budget.top, budget.checked = top, budget.chain[: budget.chain.index(domain) + 1]
        if budget.level.served_fraction == result.served_fraction < binds:
            budget.bound_by = bound  # stopped (or at its top) before ``domain`` bound: as it was alone
        else:
            budget.bound_by = None
            going_on.append(budget)
    _rounds(going_on, slack)
    return subtree


# ---------------------------------------------------------------------------
# The allocation


def _milliwatts_up(watts: float, field: str) -> int:
    """Watts committed outside budgets, rounded up to whole milliwatts: never counted short."""
    if not (math.isfinite(watts) and watts >= 0):
        raise ValueError(f"{field} must be a finite number >= 0, got {watts}")
    return math.ceil(round(watts * 1000, 6))


def _watts_text(milliwatts: int) -> str:
    watts = milliwatts / 1000
    return f"{watts:,.0f}" if abs(watts) >= 10 or watts.is_integer() else f"{watts:,.1f}"


def allocate(
    domains: Sequence[DomainInput],
    budgets: Sequence[BudgetInput],
    curve: Callable[[Problem], Curve] = ServedCurve,
    subtree_counts: bool = False,
) -> Allocation:
    """Allocate every tree of ``domains`` among ``budgets`` (see the module docstring).

    Raises :class:`DomainTreeError` when the domains do not form a forest (the
    shell leaves out what :func:`tree_problems` names first), and
    :class:`ValueError` naming the budget or domain for any other bad input.
    ``curve`` makes each budget's served curve: the planner's, unless a
    benchmark measures another way of answering the same questions.
    ``subtree_counts``: each domain's committed watts are already counted over
    its whole subtree (the shell does, because "another domain's" depends on the
    domain asking: a row's budget on a rack's node is outside the rack, not the
    row), rather than over its own nodes and summed up the chain here.
    """
    problems = tree_problems(domains)
    if problems:
        raise DomainTreeError(problems[0])
    index = {d.name: i for i, d in enumerate(domains)}
    parents = [index[d.parent] if d.parent is not None else None for d in domains]
    children: list[list[int]] = [[] for _ in domains]
    for i, parent in enumerate(parents):
        if parent is not None:
            children[parent].append(i)
    chains: list[tuple[int, ...]] = []
    for i in range(len(domains)):
        chain = [i]
        while (up := parents[chain[-1]]) is not None:
            chain.append(up)
        chains.append(tuple(chain))

    limits: list[int] = []
    outside: list[tuple[int, int, int]] = []  # own nodes: idle, unmanaged, other domains'
    for domain in domains:
        field = f"domain {domain.name}"
        if not (math.isfinite(domain.limit_watts) and domain.limit_watts > 0):
            raise ValueError(f"{field}: limit_watts must be a finite number > 0, got {domain.limit_watts}")
        limits.append(budget_milliwatts(domain.limit_watts))
        outside.append(
            (
                _milliwatts_up(domain.idle_watts, f"{field}: idle_watts"),
                _milliwatts_up(domain.unmanaged_watts, f"{field}: unmanaged_watts"),
                _milliwatts_up(domain.other_domains_watts, f"{field}: other_domains_watts"),
            )
        )
    sub_outside = [list(own) if subtree_counts else [0, 0, 0] for own in outside]
    for i, own in enumerate(outside):
        for d in chains[i] if not subtree_counts else ():
            for kind in range(3):
                sub_outside[d][kind] += own[kind]

    working: list[_Budget] = []
    keys: set[str] = set()
    for budget in budgets:
        if budget.domain not in index:
            raise ValueError(f"budget {budget.key}: domain {budget.domain} does not exist")
        if budget.key in keys:
            raise ValueError(f"budget {budget.key}: listed twice")
        keys.add(budget.key)
        if budget.limit_watts is not None and not (
            math.isfinite(budget.limit_watts) and budget.limit_watts > 0
        ):
            raise ValueError(
                f"budget {budget.key}: limit_watts must be a finite number > 0, got {budget.limit_watts}"
            )
        try:
            served = curve(replace(budget.problem, total_watts=1.0))
        except ValueError as error:
            raise ValueError(f"budget {budget.key}: {error}") from None
        working.append(_Budget(budget, served, chains[index[budget.domain]]))

    floors = [0] * len(domains)
    for b in working:
        for d in b.chain:
            floors[d] += b.floor.milliwatts
    feasible = [sum(sub_outside[d]) + floors[d] <= limits[d] for d in range(len(domains))]
    slack = [limits[d] - sum(sub_outside[d]) - floors[d] for d in range(len(domains))]

    free: list[_Budget] = []
    for b in working:
        infeasible = next((d for d in b.chain if not feasible[d]), None)
        if infeasible is not None:
            b.bound_by = infeasible
            continue
        top = b.curve.serving(b.curve.reach)
        assert top is not None  # the reach is reachable by definition
        if b.input.limit_watts is not None and top.milliwatts > budget_milliwatts(b.input.limit_watts):
            top = b.curve.within(budget_milliwatts(b.input.limit_watts))
        b.top = top
        free.append(b)

    # One tree and one tier at a time, highest priority first.
    tiers: dict[tuple[int, int], dict[int, list[_Budget]]] = {}
    for b in free:
        tier = tiers.setdefault((b.chain[-1], b.input.priority), {})
        tier.setdefault(b.chain[0], []).append(b)
    for (root, _), by_domain in sorted(tiers.items(), key=lambda item: (item[0][0], -item[0][1])):
        _fill(root, by_domain, children, slack)

    allocated = [0] * len(domains)
    for b in working:
        for d in b.chain:
            allocated[d] += b.level.milliwatts
    # Per domain and priority: what its budgets hold above their floors (for "higher priority took it").
    surplus: list[dict[int, int]] = [{} for _ in domains]
    for b in working:
        for d in b.chain:
            priority = b.input.priority
            surplus[d][priority] = surplus[d].get(priority, 0) + b.level.milliwatts - b.floor.milliwatts
    results = tuple(_budget_result(b, surplus, domains, feasible) for b in working)
    under: list[list[str]] = [[] for _ in domains]
    direct: list[list[str]] = [[] for _ in domains]
    for b in working:
        direct[b.chain[0]].append(b.input.key)
        for d in b.chain:
            under[d].append(b.input.key)
    domain_results = []
    for d, domain in enumerate(domains):
        idle, unmanaged, other = sub_outside[d]
        result = DomainAllocation(
            name=domain.name,
            parent=domain.parent,
            limit_milliwatts=limits[d],
            idle_milliwatts=idle,
            unmanaged_milliwatts=unmanaged,
            other_domains_milliwatts=other,
            floor_milliwatts=floors[d],
            allocated_milliwatts=allocated[d],
            feasible=feasible[d],
            budgets=tuple(direct[d]),
            infeasible_budgets=() if feasible[d] else tuple(under[d]),
            reason="",
        )
        domain_results.append(replace(result, reason=_domain_reason(result, len(under[d]))))
    return Allocation(domains=tuple(domain_results), budgets=results)


def _domain_reason(domain: DomainAllocation, budgets: int) -> str:
    committed = domain.committed_milliwatts
    if not domain.feasible:
        held = ", ".join(domain.infeasible_budgets) or "none"
        return (
            f"infeasible by {_watts_text(domain.infeasible_by_milliwatts)} W: {_watts_text(committed)} W "
            f"committed outside budgets and {_watts_text(domain.floor_milliwatts)} W of floors exceed the "
            f"limit of {_watts_text(domain.limit_milliwatts)} W; holding their floors: {held}"
        )
    return (
        f"{_watts_text(domain.allocated_milliwatts)} W allocated to {budgets} budget(s), "
        f"{_watts_text(committed)} W committed outside budgets, "
        f"{_watts_text(domain.headroom_milliwatts)} W of {_watts_text(domain.limit_milliwatts)} W left"
    )


def _budget_result(
    b: _Budget, surplus: Sequence[dict[int, int]], domains: Sequence[DomainInput], feasible: Sequence[bool]
) -> BudgetAllocation:
    level = b.level
    serving = (
        f"serving {percent_text(level.served_fraction)} of demand with {_watts_text(level.milliwatts)} W"
    )
    bound = None if b.bound_by is None else domains[b.bound_by].name
    if b.bound_by is not None and not feasible[b.bound_by]:
        limited_by = Limit.INFEASIBLE_FLOOR
        reason = f"domain {bound} is infeasible: holds its floor, {_watts_text(level.milliwatts)} W"
    elif b.bound_by is not None:
        higher = sum(held for priority, held in surplus[b.bound_by].items() if priority > b.input.priority)
        if higher > 0:
            limited_by = Limit.HIGHER_PRIORITY
            took = f"{_watts_text(higher)} W went to higher-priority budgets"
            reason = f"domain {bound} binds after {took}: {serving}"
        else:
            limited_by = Limit.DOMAIN_LIMIT
            reason = f"domain {bound} binds: {serving}"
    elif level.served_fraction >= 1:
        limited_by = Limit.DEMAND_SERVED
        reason = f"all demand served with {_watts_text(level.milliwatts)} W"
    elif b.input.limit_watts is not None and level.served_fraction < b.curve.reach:
        limited_by = Limit.OWN_LIMIT
        own = f"its totalWatts ({b.input.limit_watts:,.0f} W)"
        if level.milliwatts > budget_milliwatts(b.input.limit_watts):
            reason = f"{own} is below its floor: holds its floor, {_watts_text(level.milliwatts)} W"
        else:
            reason = f"{own} binds: {serving}"
    else:
        limited_by = Limit.MAX_REPLICAS
        reason = f"maxReplicas binds: {serving}"
    return BudgetAllocation(
        namespace=b.input.namespace,
        name=b.input.name,
        domain=b.input.domain,
        priority=b.input.priority,
        milliwatts=level.milliwatts,
        floor_milliwatts=b.floor.milliwatts,
        served_fraction=level.served_fraction,
        gpus=level.gpus,
        choices=level.choices,
        limited_by=limited_by,
        bound_by=bound,
        reason=reason,
    )


def static_split(
    domains: Sequence[DomainInput], budgets: Sequence[BudgetInput], subtree_counts: bool = False
) -> dict[str, int]:
    """The classic multi-deployment sizing, kept for comparison: milliwatts per budget (by key).

    Each domain's room (its limit less what is committed outside budgets) is
    split among the budgets under it by their GPUs at maxReplicas; a budget gets
    the least share any domain on its chain gives it, and no more than its own
    ``totalWatts``. Blind to priority and demand, never over a limit.
    """
    problems = tree_problems(domains)
    if problems:
        raise DomainTreeError(problems[0])
    by_name = {d.name: d for d in domains}

    def chain(name: str) -> list[str]:
        names = [name]
        while (parent := by_name[names[-1]].parent) is not None:
            names.append(parent)
        return names

    room = {d.name: budget_milliwatts(d.limit_watts) for d in domains}
    for d in domains:
        outside = sum(
            _milliwatts_up(w, f"domain {d.name}")
            for w in (d.idle_watts, d.unmanaged_watts, d.other_domains_watts)
        )
        for name in chain(d.name) if not subtree_counts else (d.name,):
            room[name] -= outside
    gpus = {b.key: sum(t.max_replicas * t.gpus_per_replica for t in b.problem.targets) for b in budgets}
    under = dict.fromkeys(room, 0)
    for b in budgets:
        if b.domain not in by_name:
            raise ValueError(f"budget {b.key}: domain {b.domain} does not exist")
        for name in chain(b.domain):
            under[name] += gpus[b.key]
    shares = {}
    for b in budgets:
        share = min(max(0, room[n]) * gpus[b.key] // under[n] if under[n] else 0 for n in chain(b.domain))
        if b.limit_watts is not None:
            share = min(share, budget_milliwatts(b.limit_watts))
        shares[b.key] = share
    return shares


def planned_problem(budget: BudgetInput, milliwatts: int) -> Problem:
    """The budget's problem planned within ``milliwatts`` (its allocation): what the shell plans it with.

    A zero allocation (a floor of no replicas) is planned within one milliwatt,
    which buys nothing more: the planner wants a budget above zero.
    """
    return replace(budget.problem, total_watts=max(milliwatts, 1) / 1000)


__all__ = [
    "Allocation",
    "BudgetAllocation",
    "BudgetInput",
    "Curve",
    "DomainAllocation",
    "DomainInput",
    "DomainTreeError",
    "Limit",
    "TreeProblem",
    "allocate",
    "planned_problem",
    "static_split",
    "tree_problems",
]
