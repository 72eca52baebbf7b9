"""The exhaustive reference for the domain allocation: every combination of every budget's plans.

It shares only the planner's model (power, throughput and served fraction of one
pair) with :mod:`gpupower_operator.allocation`, none of its search: each
budget's levels come from every combination of (replicas, cap) of its targets,
and the allocation is the best combination of levels by the rule itself
(priority tiers, then the lexicographic max-min of served fractions with the
documented tie order). Exponential: small trees only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

from gpupower_operator.allocation import BudgetInput, DomainInput
from gpupower_operator.planner import (
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


def reference_allocation(domains: list[DomainInput], budgets: list[BudgetInput]) -> dict[str, Step]:
    """Each budget's level in the best combination (by key ``namespace/name``)."""
    parent = {d.name: d.parent for d in domains}

    def chain(name: str) -> list[str]:
        names = [name]
        while parent[names[-1]] is not None:
            names.append(str(parent[names[-1]]))
        return names

    chains = {b.key: chain(b.domain) for b in budgets}
    staircases = {b.key: levels(b.problem, b.limit_watts) for b in budgets}
    room = {d.name: budget_milliwatts(d.limit_watts) for d in domains}
    for d in domains:
        for name in chain(d.name):
            room[name] -= _outside_milliwatts(d)
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

    def order(b: BudgetInput, index: int) -> tuple[float, float, float, str, str]:
        steps = options[b.key]
        step = steps[index]
        if index + 1 < len(steps):
            after = steps[index + 1]
            return (
                step.served_fraction,
                after.milliwatts - step.milliwatts,
                after.gpus - step.gpus,
                b.namespace,
                b.name,
            )
        return (step.served_fraction, math.inf, math.inf, b.namespace, b.name)

    best: tuple[list[list[tuple[float, float, float, str, str]]], dict[str, Step]] | None = None
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
    parent = {d.name: d.parent for d in domains}

    def chain(name: str) -> list[str]:
        names = [name]
        while parent[names[-1]] is not None:
            names.append(str(parent[names[-1]]))
        return names

    room = {d.name: budget_milliwatts(d.limit_watts) for d in domains}
    for d in domains:
        for name in chain(d.name):
            room[name] -= _outside_milliwatts(d)
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
