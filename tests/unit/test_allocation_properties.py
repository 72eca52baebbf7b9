"""Property tests for the domain allocation: equal to the exhaustive reference, never over a limit."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpupower_operator.core.allocation import (
    Allocation,
    BudgetInput,
    DomainInput,
    allocate,
    planned_problem,
    static_split,
)
from gpupower_operator.core.planner import (
    Problem,
    ProfilePoint,
    TargetProblem,
    budget_milliwatts,
    floor_watts,
    optimize,
)
from tests.allocation_reference import (
    by_tier,
    chain_of,
    levels,
    outside_milliwatts,
    reference_allocation,
    stepwise_allocation,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def roles(draw: st.DrawFn, name: str) -> TargetProblem:
    """A role with a handful of (replicas, cap) pairs, so that every combination can be tried."""
    watts = sorted(draw(st.sets(st.integers(50, 400), min_size=1, max_size=3)))
    throughput = 0.0
    points = []
    for w in watts:
        throughput += draw(st.sampled_from([0.0, 1.0, 2.5, 4.0, 8.0]))
        points.append(ProfilePoint(float(w), throughput))
    low = draw(st.integers(0, 1))
    cap_min = draw(st.sampled_from([100, 150, 200]))
    return TargetProblem(
        name=name,
        min_replicas=low,
        max_replicas=low + draw(st.integers(0, 3)),
        cap_min_watts=cap_min,
        cap_max_watts=cap_min + draw(st.sampled_from([0, 50, 100])),
        profile=tuple(points),
        demand=draw(st.one_of(st.floats(0.5, 20.0), st.sampled_from([None, 0.0, 4.0, 10.0]))),
        gpus_per_replica=draw(st.sampled_from([1, 1, 2])),
        power_factor=draw(st.sampled_from([1.0, 1.0, 0.85])),
        throughput_factor=draw(st.sampled_from([1.0, 0.7])),
    )


@st.composite
def trees(draw: st.DrawFn, max_budgets: int = 4) -> tuple[list[DomainInput], list[BudgetInput]]:
    """1-4 domains in one or more trees, 1-4 budgets on any of them; each limit a share, from tight to
    ample, of what the budgets under it could draw at most."""
    names = [f"d{i}" for i in range(draw(st.integers(1, 4)))]
    parents = [None] + [draw(st.one_of(st.none(), st.sampled_from(names[:i]))) for i in range(1, len(names))]
    budgets = []
    for j in range(draw(st.integers(1, max_budgets))):
        problem = Problem(
            total_watts=1.0,
            targets=tuple(draw(roles(f"t{k}")) for k in range(draw(st.integers(1, 2)))),
            cap_step_watts=50,
        )
        budgets.append(
            BudgetInput(
                namespace=draw(st.sampled_from(["a", "b"])),
                name=f"m{j}",
                domain=draw(st.sampled_from(names)),
                problem=problem,
                priority=draw(st.sampled_from([0, 0, 10])),
                limit_watts=draw(st.one_of(st.none(), st.none(), st.sampled_from([250.0, 700.0]))),
            )
        )
    shape = [DomainInput(name, 1.0, parent) for name, parent in zip(names, parents, strict=True)]
    domains: list[DomainInput] = []
    for domain in shape:
        under = [b for b in budgets if domain.name in chain_of(shape, b.domain)]
        floor = sum(floor_watts(b.problem) for b in under)
        most = sum(levels(b.problem, b.limit_watts)[-1].milliwatts for b in under) / 1000  # every top
        outside = [draw(st.sampled_from([0.0, 0.0, 0.0, 25.0, 60.5])) for _ in range(3)]
        # From below the floor (infeasible) to more than every budget could draw.
        share = draw(st.sampled_from([0.5, -0.1, 0.0, 0.1, 0.3, 0.7, 0.9, 1.1]))
        limit = max(10.0, round(sum(outside) + floor + share * (most - floor), draw(st.sampled_from([0, 3]))))
        domains.append(
            replace(
                domain,
                limit_watts=limit,
                idle_watts=outside[0],
                unmanaged_watts=outside[1],
                other_domains_watts=outside[2],
            )
        )
    return domains, budgets


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(trees())
def test_allocation_equals_the_exhaustive_reference(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = tree
    assume(math.prod(len(levels(b.problem, b.limit_watts)) for b in budgets) <= 4000)
    allocation = allocate(domains, budgets)
    expected = reference_allocation(domains, budgets)
    for share in allocation.budgets:
        step = expected[share.key]
        assert (share.milliwatts, share.served_fraction, share.gpus, share.choices) == (
            step.milliwatts,
            step.served_fraction,
            step.gpus,
            step.choices,
        ), share.key


# Relative throughput of datacenter GPUs against their power cap: concave, flat near the top.
SHAPES = (
    ((0.3, 0.45), (0.5, 0.72), (0.75, 0.93), (1.0, 1.0)),
    ((0.3, 0.6), (0.5, 0.86), (0.75, 0.97), (1.0, 1.0)),
)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[DomainInput], list[BudgetInput]]:
    """Up to 7 domains and 12 budgets of production-like roles (hundreds of steps each)."""
    names = [f"d{i}" for i in range(draw(st.integers(1, 7)))]
    parents = [None] + [draw(st.one_of(st.none(), st.sampled_from(names[:i]))) for i in range(1, len(names))]
    budgets = []
    for j in range(draw(st.integers(2, 12))):
        roles = []
        for k in range(draw(st.integers(1, 2))):
            peak = draw(st.sampled_from([8.0, 20.0, 35.0]))
            low = draw(st.integers(0, 1))
            most = low + draw(st.integers(1, 6))
            roles.append(
                TargetProblem(
                    name=f"t{k}",
                    min_replicas=low,
                    max_replicas=most,
                    cap_min_watts=200,
                    cap_max_watts=700,
                    profile=tuple(ProfilePoint(700 * f, peak * t) for f, t in draw(st.sampled_from(SHAPES))),
                    demand=peak * most * draw(st.sampled_from([0.2, 0.5, 0.8, 1.0, 1.5])),
                    gpus_per_replica=draw(st.sampled_from([1, 2])),
                )
            )
        budgets.append(
            BudgetInput(
                namespace="ns",
                name=f"m{j:02d}",
                domain=draw(st.sampled_from(names)),
                problem=Problem(
                    total_watts=1.0, targets=tuple(roles), cap_step_watts=draw(st.sampled_from([5, 25]))
                ),
                priority=draw(st.sampled_from([0, 0, 50, 100])),
                limit_watts=draw(st.one_of(st.none(), st.none(), st.sampled_from([1500.0, 4000.0]))),
            )
        )
    shape = [DomainInput(name, 1.0, parent) for name, parent in zip(names, parents, strict=True)]
    domains = []
    for domain in shape:
        under = [b for b in budgets if domain.name in chain_of(shape, b.domain)]
        floor = sum(floor_watts(b.problem) for b in under)
        most = sum(sum(t.max_replicas * t.gpus_per_replica * 700 for t in b.problem.targets) for b in under)
        share = draw(st.sampled_from([0.1, 0.25, 0.4, 0.55, 0.7, 0.9, -0.05]))
        domains.append(
            replace(
                domain,
                limit_watts=max(10.0, round(floor + share * (most - floor))),
                idle_watts=draw(st.sampled_from([0.0, 350.0])),
            )
        )
    return domains, budgets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_allocation_equals_the_rule_taken_one_step_at_a_time_on_production_sized_fleets(
    fleet: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = fleet
    allocation = allocate(domains, budgets)
    expected = stepwise_allocation(domains, budgets)
    for share in allocation.budgets:
        level = expected[share.key]
        assert (share.milliwatts, share.served_fraction, share.choices) == (
            level.milliwatts,
            level.served_fraction,
            level.choices,
        ), share.key
    assert_within_every_limit(domains, budgets, allocation)


def assert_within_every_limit(
    domains: list[DomainInput], budgets: list[BudgetInput], result: Allocation
) -> None:
    for domain in result.domains:
        under = [b for b in result.budgets if domain.name in chain_of(domains, b.domain)]
        assert domain.allocated_milliwatts == sum(b.milliwatts for b in under)
        assert domain.committed_milliwatts == outside_milliwatts(domains, domain.name)
        if domain.feasible:
            assert domain.committed_milliwatts + domain.allocated_milliwatts <= domain.limit_milliwatts
            assert domain.headroom_milliwatts >= 0 and domain.infeasible_budgets == ()
        else:
            # Fail closed: everything under it holds its floor, which is more than fits.
            assert domain.committed_milliwatts + domain.floor_milliwatts > domain.limit_milliwatts
            assert all(b.milliwatts == b.floor_milliwatts for b in under)
            assert set(domain.infeasible_budgets) == {b.key for b in under}
    for budget, share in zip(budgets, result.budgets, strict=True):
        assert share.milliwatts >= share.floor_milliwatts
        if budget.limit_watts is not None and share.milliwatts > budget_milliwatts(budget.limit_watts):
            assert share.milliwatts == share.floor_milliwatts  # an own limit below the floor


@SETTINGS
@given(trees(max_budgets=6))
def test_never_over_any_domains_limit_and_floors_held(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = tree
    assert_within_every_limit(domains, budgets, allocate(domains, budgets))


@SETTINGS
@given(trees(max_budgets=6))
def test_planning_a_budget_with_its_allocation_serves_exactly_what_was_promised(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = tree
    for budget, share in zip(budgets, allocate(domains, budgets).budgets, strict=True):
        plan = optimize(planned_problem(budget, share.milliwatts))
        assert plan.served_fraction == share.served_fraction
        assert round(plan.watts * 1000) == share.milliwatts
        assert [(t.replicas, t.cap_watts) for t in plan.targets] == list(share.choices)


@SETTINGS
@given(trees(max_budgets=1))
def test_a_domain_with_one_budget_allocates_what_todays_plan_uses(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, (budget,) = tree
    # Every limit up the chain, less what is committed outside budgets, is the budget today's plan has.
    room = min(
        budget_milliwatts(d.limit_watts) - outside_milliwatts(domains, d.name)
        for d in domains
        if d.name in chain_of(domains, budget.domain)
    )
    if budget.limit_watts is not None:
        room = min(room, budget_milliwatts(budget.limit_watts))
    today = optimize(replace(budget.problem, total_watts=max(room, 1) / 1000))
    (share,) = allocate(domains, [budget]).budgets
    assert share.served_fraction == today.served_fraction
    assert share.milliwatts == round(today.watts * 1000)
    assert list(share.choices) == [(t.replicas, t.cap_watts) for t in today.targets]


@SETTINGS
@given(trees(max_budgets=5), st.randoms(use_true_random=False))
def test_the_allocation_does_not_depend_on_the_order_of_its_inputs(
    tree: tuple[list[DomainInput], list[BudgetInput]], random: object
) -> None:
    domains, budgets = tree
    first = allocate(domains, budgets)
    shuffled_domains, shuffled_budgets = list(domains), list(budgets)
    random.shuffle(shuffled_domains)  # type: ignore[attr-defined]
    random.shuffle(shuffled_budgets)  # type: ignore[attr-defined]
    second = allocate(shuffled_domains, shuffled_budgets)
    assert sorted(first.budgets, key=lambda b: b.key) == sorted(second.budgets, key=lambda b: b.key)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(trees(max_budgets=5))
def test_the_allocation_never_serves_less_than_the_static_split_by_gpus(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = tree
    shares = static_split(domains, budgets)
    static = {b.key: optimize(planned_problem(b, shares[b.key])) for b in budgets}
    # Where the split leaves every budget its floor, it is one way to share the watts the allocation had.
    assume(all(plan.feasible for plan in static.values()))
    allocation = allocate(domains, budgets)
    for domain in allocation.domains:
        under = [b for b in budgets if domain.name in chain_of(domains, b.domain)]
        if domain.feasible:
            assert sum(round(static[b.key].watts * 1000) for b in under) + domain.committed_milliwatts <= (
                domain.limit_milliwatts
            )
    if not all(d.feasible for d in allocation.domains):
        return  # there the allocation holds floors where the split may not
    ours = by_tier(budgets, {b.key: b.milliwatts for b in allocation.budgets})
    theirs = by_tier(budgets, {key: round(plan.watts * 1000) for key, plan in static.items()})
    # Tier by tier, in the rule's order, the allocation is never behind; in particular the highest
    # tier's least served budget is never served less. (On served fractions alone a tie can go
    # either way: two budgets at one fraction, room for one step, the cheaper step goes first.)
    assert ours >= theirs
    assert ours[0][0][0] >= theirs[0][0][0]


def _summed_up_the_chain(domains: list[DomainInput]) -> list[DomainInput]:
    """The same domains with their committed watts counted over each one's whole subtree."""
    summed = []
    for domain in domains:
        below = [d for d in domains if domain.name in chain_of(domains, d.name)]
        summed.append(
            replace(
                domain,
                idle_watts=sum(d.idle_watts for d in below),
                unmanaged_watts=sum(d.unmanaged_watts for d in below),
                other_domains_watts=sum(d.other_domains_watts for d in below),
            )
        )
    return summed


@SETTINGS
@given(trees(max_budgets=4))
def test_committed_watts_counted_over_subtrees_allocate_as_own_nodes_summed_up_the_chain(
    tree: tuple[list[DomainInput], list[BudgetInput]],
) -> None:
    domains, budgets = tree
    summed = _summed_up_the_chain(domains)
    assert allocate(summed, budgets, subtree_counts=True) == allocate(domains, budgets)
    assert static_split(summed, budgets, subtree_counts=True) == static_split(domains, budgets)
