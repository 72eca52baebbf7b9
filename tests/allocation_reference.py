"""The exhaustive reference for the domain allocation: every combination of every budget's plans.

It shares only the planner's model (power, throughput and served fraction of one
pair) with :mod:`gpupower_operator.core.allocation`, none of its search: each
budget's levels come from every combination of (replicas, cap) of its targets,
and the allocation is the best combination of levels by the rule itself
(priority tiers, then the lexicographic max-min of served fractions with the
documented tie order). Exponential: small trees only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

from gpupower_operator.core.allocation import BudgetInput, DomainInput
from gpupower_operator.core.planner import (
    Level,
    Problem,
    ServedCurve,
    budget_milliwatts,
    cap_grid,
    replica_throughput,
    served_fraction,
    target_milliwatts,
)


@dataclass(frozen=True)
class Step:
    """The cheapest combination of a budget's pairs that serves at least some fraction."""

    milliwatts: int
    served_fraction: float
    gpus: int
    choices: tuple[tuple[int, int], ...]


def levels(problem: Problem, limit_watts: float | None = None) -> list[Step]:
    """Every level of a budget, by exhaustion, lowest first; cut at its own limit (the floor stays)."""
    per_target = []
    for target in problem.targets:
        grid = cap_grid(target.cap_min_watts, target.cap_max_watts, problem.cap_step_watts)
        per_target.append(
            [
                (
                    served_fraction(r * replica_throughput(target, c), target.demand),
                    target_milliwatts(target, r, c),
                    r * target.gpus_per_replica,
                    (r, c),
                )
                for r in range(target.min_replicas, target.max_replicas + 1)
                for c in grid
            ]
        )
    combinations = [
        Step(
            milliwatts=sum(option[1] for option in combination),
            served_fraction=min(option[0] for option in combination),
            gpus=sum(option[2] for option in combination),
            choices=tuple(option[3] for option in combination),
        )
        for combination in product(*per_target)
    ]
    found: list[Step] = []
    for fraction in sorted({c.served_fraction for c in combinations}):
        cheapest = min(
            (c for c in combinations if c.served_fraction >= fraction),
            key=lambda c: (c.milliwatts, c.gpus, tuple(cap for _, cap in c.choices)),
        )
        if not found or cheapest != found[-1]:
            found.append(cheapest)
    if limit_watts is not None:
        within = [s for s in found if s.milliwatts <= budget_milliwatts(limit_watts)]
        found = within or found[:1]
    return found


def _outside_milliwatts(domain: DomainInput) -> int:
    return sum(
        math.ceil(round(w * 1000, 6))
        for w in (domain.idle_watts, domain.unmanaged_watts, domain.other_domains_watts)
    )


Order = tuple[float, float, float, str, str]


def ordered(budget: BudgetInput, here: Step | Level, after: Step | Level | None) -> Order:
    """The rule's order of a budget standing at ``here`` with ``after`` its next step (None at its top):
    served fraction, then the step's watts and GPUs, then namespace and name."""
    if after is None:
        return (here.served_fraction, math.inf, math.inf, budget.namespace, budget.name)
    step = (after.milliwatts - here.milliwatts, after.gpus - here.gpus)
    return (here.served_fraction, *step, budget.namespace, budget.name)


def chain_of(domains: list[DomainInput], name: str) -> list[str]:
    """A domain and every domain above it, nearest first."""
    parent = {d.name: d.parent for d in domains}
    names = [name]
    while (up := parent[names[-1]]) is not None:
        names.append(up)
    return names


def room_of(domains: list[DomainInput]) -> dict[str, int]:
    """Each domain's limit in milliwatts less what is committed outside budgets under it."""
    room = {d.name: budget_milliwatts(d.limit_watts) for d in domains}
    for d in domains:
        for name in chain_of(domains, d.name):
            room[name] -= _outside_milliwatts(d)
    return room


def reference_allocation(domains: list[DomainInput], budgets: list[BudgetInput]) -> dict[str, Step]:
    """Each budget's level in the best combination (by key ``namespace/name``)."""
    chains = {b.key: chain_of(domains, b.domain) for b in budgets}
    staircases = {b.key: levels(b.problem, b.limit_watts) for b in budgets}
    room = room_of(domains)
    floors = {d.name: 0 for d in domains}
    for b in budgets:
        for name in chains[b.key]:
            floors[name] += staircases[b.key][0].milliwatts
    feasible = {name for name in room if floors[name] <= room[name]}
    options = {
        b.key: staircases[b.key] if all(n in feasible for n in chains[b.key]) else staircases[b.key][:1]
        for b in budgets
    }
    priorities = sorted({b.priority for b in budgets}, reverse=True)

    def order(b: BudgetInput, index: int) -> Order:
        steps = options[b.key]
        return ordered(b, steps[index], steps[index + 1] if index + 1 < len(steps) else None)

    best: tuple[list[list[Order]], dict[str, Step]] | None = None
    for combination in product(*(range(len(options[b.key])) for b in budgets)):
        load = {name: 0 for name in room}
        for b, index in zip(budgets, combination, strict=True):
            for name in chains[b.key]:
                load[name] += options[b.key][index].milliwatts
        if any(load[name] > room[name] for name in feasible):
            continue
        score = [
            sorted(order(b, i) for b, i in zip(budgets, combination, strict=True) if b.priority == priority)
            for priority in priorities
        ]
        if best is None or score > best[0]:
            best = (score, {b.key: options[b.key][i] for b, i in zip(budgets, combination, strict=True)})
    assert best is not None  # every budget at its floor fits every feasible domain
    return best[1]


def stepwise_allocation(domains: list[DomainInput], budgets: list[BudgetInput]) -> dict[str, Level]:
    """The rule's greedy taken literally, one step of one budget at a time, on the planner's curves.

    No search and no splitting into subtrees: the least served budget (ties by
    its next step's watts, GPUs, then namespace and name) takes its next step if
    every limit on its chain has room, else stops for good. Slow, but fine for a
    dozen budgets of hundreds of steps each: a check of the allocation's
    shortcuts where the exhaustive reference cannot go.
    """

    def chain(name: str) -> list[str]:
        return chain_of(domains, name)

    room = room_of(domains)
    curves = {b.key: ServedCurve(b.problem) for b in budgets}
    level = {b.key: curves[b.key].floor for b in budgets}
    for b in budgets:
        for name in chain(b.domain):
            room[name] -= level[b.key].milliwatts
    feasible = {name for name, left in room.items() if left >= 0}
    tops: dict[str, Level] = {}
    for b in budgets:
        curve = curves[b.key]
        top = curve.serving(curve.reach)
        assert top is not None
        if b.limit_watts is not None and top.milliwatts > budget_milliwatts(b.limit_watts):
            top = curve.within(budget_milliwatts(b.limit_watts))
        tops[b.key] = top
    for priority in sorted({b.priority for b in budgets}, reverse=True):
        rising = [
            b for b in budgets if b.priority == priority and all(n in feasible for n in chain(b.domain))
        ]
        steps: dict[str, Level] = {}
        while True:
            rising = [b for b in rising if level[b.key].served_fraction < tops[b.key].served_fraction]
            if not rising:
                break
            for b in rising:
                if b.key not in steps:
                    here = level[b.key]
                    step = curves[b.key].serving(math.nextafter(here.served_fraction, 2), here)
                    assert step is not None  # below its top a budget has a next step
                    steps[b.key] = step
            least = min(
                rising,
                key=lambda b: (
                    level[b.key].served_fraction,
                    steps[b.key].milliwatts - level[b.key].milliwatts,
                    steps[b.key].gpus - level[b.key].gpus,
                    b.namespace,
                    b.name,
                ),
            )
            step = steps.pop(least.key)
            delta = step.milliwatts - level[least.key].milliwatts
            if all(room[n] >= delta for n in chain(least.domain)):
                for n in chain(least.domain):
                    room[n] -= delta
                level[least.key] = step
            else:
                rising.remove(least)
    return level


def order_key(budget: BudgetInput, milliwatts: int) -> Order:
    """Where a budget planned within ``milliwatts`` stands in the rule's order: its served fraction, then
    its next step's watts and GPUs (none at its top), then its namespace and name."""
    curve = ServedCurve(budget.problem)
    level = curve.within(milliwatts)
    step = curve.serving(math.nextafter(level.served_fraction, 2), level)
    if step is not None and budget.limit_watts is not None:
        step = step if step.milliwatts <= budget_milliwatts(budget.limit_watts) else None
    return ordered(budget, level, step)


def by_tier(budgets: list[BudgetInput], milliwatts: dict[str, int]) -> list[list[Order]]:
    """Each priority tier's budgets in the rule's order, highest tier first, least served first."""
    tiers = sorted({b.priority for b in budgets}, reverse=True)
    return [sorted(order_key(b, milliwatts[b.key]) for b in budgets if b.priority == tier) for tier in tiers]


def outside_milliwatts(domains: list[DomainInput], name: str) -> int:
    """What is committed outside budgets on a domain's nodes and its descendants'."""
    return sum(_outside_milliwatts(d) for d in domains if name in chain_of(domains, d.name))
