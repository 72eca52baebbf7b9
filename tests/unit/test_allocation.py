"""Table tests for the domain allocation: what is counted, floors, priorities, the chain, and why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpupower_operator.core.allocation import (
    BudgetInput,
    DomainInput,
    DomainTreeError,
    Limit,
    allocate,
    planned_problem,
    static_split,
    tree_problems,
)
from gpupower_operator.core.planner import Problem, ProfilePoint, TargetProblem, optimize

# Requests/s of one replica of a model on H100-class GPUs at each per-GPU cap (concave, flat near TDP).
H100 = tuple(
    ProfilePoint(w, t)
    for w, t in ((200, 9.0), (300, 14.0), (400, 17.2), (500, 19.0), (600, 19.8), (700, 20.0))
)


def model(demand: float, max_replicas: int = 8, min_replicas: int = 1, gpus: int = 1) -> Problem:
    """One serving role on H100s; ``total_watts`` is ignored by the allocation."""
    role = TargetProblem(
        name="serve",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cap_min_watts=200,
        cap_max_watts=700,
        profile=H100,
        demand=demand,
        gpus_per_replica=gpus,
    )
    return Problem(total_watts=1.0, targets=(role,))


def budget(name: str, domain: str, problem: Problem, priority: int = 0, **fields: object) -> BudgetInput:
    return BudgetInput("inference", name, domain, problem, priority, **fields)  # type: ignore[arg-type]


def test_a_domain_with_one_budget_gives_it_what_todays_plan_would_use() -> None:
    problem = model(demand=100.0)
    for limit in (300, 1000, 2500, 4000, 10000):
        allocation = allocate([DomainInput("rack", limit)], [budget("llama", "rack", problem)])
        share = allocation.budget("inference", "llama")
        today = optimize(replace(problem, total_watts=limit))
        assert share.milliwatts == round(today.watts * 1000)
        assert share.served_fraction == today.served_fraction
        assert list(share.choices) == [(t.replicas, t.cap_watts) for t in today.targets]
        # Planning the budget with its allocation gives that plan back.
        again = optimize(planned_problem(budget("llama", "rack", problem), share.milliwatts))
        assert (again.targets, again.watts, again.served_fraction) == (
            today.targets,
            today.watts,
            today.served_fraction,
        )


def test_watts_committed_outside_budgets_come_off_the_domain_and_every_domain_above_it() -> None:
    problem = model(demand=1000.0)  # more than 8 replicas can serve: wants everything
    domains = [
        DomainInput("row", 10000),
        DomainInput("rack", 6000, parent="row", idle_watts=600, unmanaged_watts=700, other_domains_watts=200),
    ]
    allocation = allocate(domains, [budget("llama", "rack", problem)])
    share = allocation.budget("inference", "llama")
    assert share.milliwatts <= (6000 - 1500) * 1000
    assert share.milliwatts == round(optimize(replace(problem, total_watts=4500)).watts * 1000)
    rack, row = allocation.domain("rack"), allocation.domain("row")
    assert (rack.idle_milliwatts, rack.unmanaged_milliwatts, rack.other_domains_milliwatts) == (
        600_000,
        700_000,
        200_000,
    )
    assert row.committed_milliwatts == 1_500_000  # the rack's nodes are the row's nodes too
    assert rack.headroom_milliwatts == 6_000_000 - 1_500_000 - share.milliwatts
    assert share.limited_by is Limit.DOMAIN_LIMIT and share.bound_by == "rack"
    assert share.reason.startswith("domain rack binds: serving ")


def test_the_higher_priority_is_served_first_and_the_lower_gets_what_is_left() -> None:
    chat, batch = model(demand=80.0), model(demand=80.0)  # each needs about 2 kW for all its demand
    allocation = allocate(
        [DomainInput("rack", 3000)],
        [budget("batch", "rack", batch, priority=0), budget("chat", "rack", chat, priority=100)],
    )
    high, low = allocation.budget("inference", "chat"), allocation.budget("inference", "batch")
    assert high.served_fraction == 1.0 and high.limited_by is Limit.DEMAND_SERVED
    assert high.milliwatts + low.milliwatts <= 3_000_000
    assert low.served_fraction < 1.0
    assert low.limited_by is Limit.HIGHER_PRIORITY and low.bound_by == "rack"
    assert "went to higher-priority budgets" in low.reason
    # The lower tier gets exactly what its planner serves most with, within what is left.
    left = 3_000_000 - high.milliwatts
    assert low.milliwatts == round(optimize(replace(batch, total_watts=left / 1000)).watts * 1000)


def test_equal_priorities_share_so_that_the_least_served_is_served_most() -> None:
    small, large = model(demand=40.0), model(demand=160.0, max_replicas=16)
    allocation = allocate(
        [DomainInput("rack", 4000)], [budget("small", "rack", small), budget("large", "rack", large)]
    )
    a, b = allocation.budget("inference", "small"), allocation.budget("inference", "large")
    # Max-min: neither could serve more without the other, already served less or as much, serving less.
    assert abs(a.served_fraction - b.served_fraction) < 0.1
    assert a.milliwatts + b.milliwatts <= 4_000_000
    static = 4_000_000 // 2  # an even split would leave the large model far behind
    assert (
        min(a.served_fraction, b.served_fraction)
        > optimize(replace(large, total_watts=static / 1000)).served_fraction
    )


def test_a_row_binds_budgets_in_both_its_racks() -> None:
    domains = [DomainInput("row", 5000), DomainInput("a12", 4000, "row"), DomainInput("a13", 4000, "row")]
    budgets = [budget("one", "a12", model(demand=120.0)), budget("two", "a13", model(demand=120.0))]
    allocation = allocate(domains, budgets)
    one, two = allocation.budget("inference", "one"), allocation.budget("inference", "two")
    assert one.milliwatts + two.milliwatts <= 5_000_000
    assert {one.bound_by, two.bound_by} == {"row"}
    # The same models rise together; the last step that fits goes to the first by name.
    assert one.served_fraction > two.served_fraction > 0.95
    assert (one.milliwatts, two.milliwatts) == (2_520_000, 2_480_000)
    assert allocation.domain("row").allocated_milliwatts == one.milliwatts + two.milliwatts


def test_a_budget_that_joins_the_row_itself_is_bounded_by_the_row_only() -> None:
    domains = [DomainInput("row", 6000), DomainInput("a12", 1000, "row")]
    allocation = allocate(domains, [budget("wide", "row", model(demand=1000.0, max_replicas=6))])
    wide = allocation.budget("inference", "wide")
    assert wide.milliwatts == 6 * 700 * 1000  # all replicas at their highest cap: the rack plays no part
    assert wide.limited_by is Limit.MAX_REPLICAS
    assert allocation.domain("row").budgets == ("inference/wide",)
    assert allocation.domain("a12").allocated_milliwatts == 0


def test_floors_that_do_not_fit_a_domain_hold_every_budget_under_it_at_its_floor() -> None:
    domains = [
        DomainInput("row", 20000),
        DomainInput("a12", 1000, "row", idle_watts=200),
        DomainInput("a13", 9000, "row"),
    ]
    budgets = [
        budget("one", "a12", model(demand=120.0, min_replicas=2)),  # floor 400 W
        budget("two", "a12", model(demand=120.0, min_replicas=3)),  # floor 600 W: 200 + 1,000 > 1,000
        budget("three", "a13", model(demand=120.0)),
    ]
    allocation = allocate(domains, budgets)
    rack = allocation.domain("a12")
    assert not rack.feasible
    assert rack.infeasible_budgets == ("inference/one", "inference/two")
    assert rack.infeasible_by_milliwatts == 200_000
    assert rack.reason.startswith("infeasible by 200 W")
    for name, floor in (("one", 400_000), ("two", 600_000)):
        share = allocation.budget("inference", name)
        assert share.milliwatts == share.floor_milliwatts == floor
        assert share.limited_by is Limit.INFEASIBLE_FLOOR and share.bound_by == "a12"
    # The other rack is unaffected: its budget serves all its demand.
    assert allocation.budget("inference", "three").limited_by is Limit.DEMAND_SERVED
    assert allocation.domain("row").feasible


def test_a_budgets_own_total_watts_bounds_it_on_top_of_the_domain() -> None:
    allocation = allocate(
        [DomainInput("rack", 20000)], [budget("capped", "rack", model(demand=150.0), limit_watts=1500.0)]
    )
    share = allocation.budget("inference", "capped")
    assert share.milliwatts <= 1_500_000
    assert share.limited_by is Limit.OWN_LIMIT and share.bound_by is None
    assert share.reason.startswith("its totalWatts (1,500 W) binds")


def test_an_own_total_watts_below_the_floor_holds_the_floor() -> None:
    allocation = allocate(
        [DomainInput("rack", 20000)],
        [budget("tiny", "rack", model(demand=150.0, min_replicas=4), limit_watts=500.0)],
    )
    share = allocation.budget("inference", "tiny")
    assert share.milliwatts == share.floor_milliwatts == 800_000
    assert "is below its floor" in share.reason


def test_of_two_budgets_at_the_same_fraction_the_cheaper_step_goes_first() -> None:
    # Two identical budgets and room for one more step: the tie goes by step cost, then by name.
    twins = [budget("b", "rack", model(demand=100.0)), budget("a", "rack", model(demand=100.0))]
    for limit in range(400, 3000, 37):
        allocation = allocate([DomainInput("rack", limit)], twins)
        a, b = allocation.budget("inference", "a"), allocation.budget("inference", "b")
        assert a.served_fraction >= b.served_fraction
        assert a.milliwatts + b.milliwatts <= limit * 1000


def test_budgets_without_demand_hold_their_floor() -> None:
    allocation = allocate(
        [DomainInput("rack", 5000)], [budget("idle", "rack", model(demand=0.0, min_replicas=2))]
    )
    share = allocation.budget("inference", "idle")
    assert share.milliwatts == 400_000 and share.limited_by is Limit.DEMAND_SERVED


def test_trees_are_allocated_independently() -> None:
    domains = [DomainInput("hall-1", 3000), DomainInput("hall-2", 30000)]
    budgets = [budget("one", "hall-1", model(demand=500.0)), budget("two", "hall-2", model(demand=100.0))]
    allocation = allocate(domains, budgets)
    assert allocation.budget("inference", "one").bound_by == "hall-1"
    assert allocation.budget("inference", "two").served_fraction == 1.0


@pytest.mark.parametrize(
    ("domains", "expected"),
    [
        (
            [DomainInput("a", 1, parent="nowhere")],
            [("a", "ParentNotFound", "its parent nowhere does not exist")],
        ),
        (
            [
                DomainInput("a", 1, parent="b"),
                DomainInput("b", 1, parent="a"),
                DomainInput("c", 1, parent="a"),
            ],
            [
                ("a", "ParentCycle", "its parents form a cycle: a -> b -> a"),
                ("b", "ParentCycle", "its parents form a cycle: b -> a -> b"),
                ("c", "ParentInvalid", "its ancestor a is in a cycle of parents"),
            ],
        ),
        ([DomainInput("a", 1, parent="a")], [("a", "ParentCycle", "its parents form a cycle: a -> a")]),
        (
            [DomainInput("a", 1), DomainInput("a", 2), DomainInput("b", 1, parent="a")],
            [
                ("a", "DuplicateName", "another domain has this name"),
                ("b", "ParentInvalid", "its ancestor a has a name another domain has"),
            ],
        ),
        (
            [DomainInput("a", 1, parent="gone"), DomainInput("b", 1, parent="a")],
            [
                ("a", "ParentNotFound", "its parent gone does not exist"),
                ("b", "ParentInvalid", "its ancestor a has a parent that does not exist"),
            ],
        ),
        ([DomainInput("row", 1), DomainInput("rack", 1, parent="row")], []),
    ],
)
def test_tree_problems_name_each_broken_domain_and_why(
    domains: list[DomainInput], expected: list[tuple[str, str, str]]
) -> None:
    assert [(p.domain, p.reason, p.message) for p in tree_problems(domains)] == expected
    if expected:
        with pytest.raises(DomainTreeError) as raised:
            allocate(domains, [])
        assert raised.value.problem.domain == expected[0][0]


@pytest.mark.parametrize(
    ("domains", "budgets", "words"),
    [
        (
            [DomainInput("rack", 1000)],
            [budget("x", "elsewhere", model(10.0))],
            "budget inference/x: domain elsewhere",
        ),
        ([DomainInput("rack", 0)], [], "domain rack: limit_watts must be a finite number > 0"),
        (
            [DomainInput("rack", 100, idle_watts=-1)],
            [],
            "domain rack: idle_watts must be a finite number >= 0",
        ),
        (
            [DomainInput("rack", 1000)],
            [budget("x", "rack", model(10.0)), budget("x", "rack", model(10.0))],
            "budget inference/x: listed twice",
        ),
        (
            [DomainInput("rack", 1000)],
            [budget("x", "rack", model(10.0), limit_watts=-5.0)],
            "budget inference/x: limit_watts must be",
        ),
        (
            [DomainInput("rack", 1000)],
            [budget("x", "rack", model(10.0, min_replicas=5, max_replicas=2))],
            r"budget inference/x: targets\[0\]\.max_replicas",
        ),
    ],
)
def test_bad_input_raises_naming_the_budget_or_domain(
    domains: list[DomainInput], budgets: list[BudgetInput], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        allocate(domains, budgets)


def test_the_static_split_shares_each_domain_by_gpus_and_takes_the_least_share_up_the_chain() -> None:
    domains = [
        DomainInput("row", 9000),
        DomainInput("a12", 8000, "row", idle_watts=2000),
        DomainInput("a13", 8000, "row"),
    ]
    budgets = [
        budget("four", "a12", model(demand=10.0, max_replicas=4)),  # 4 GPUs
        budget("twelve", "a12", model(demand=10.0, max_replicas=6, gpus=2)),  # 12 GPUs
        budget("eight", "a13", model(demand=10.0, max_replicas=8), limit_watts=1000.0),  # 8 GPUs
    ]
    shares = static_split(domains, budgets)
    # The row has 7,000 W left for 24 GPUs; rack a12 has 6,000 W for 16.
    assert shares["inference/four"] == min(6_000_000 * 4 // 16, 7_000_000 * 4 // 24)
    assert shares["inference/twelve"] == min(6_000_000 * 12 // 16, 7_000_000 * 12 // 24) == 3_500_000
    assert shares["inference/eight"] == 1_000_000  # its own totalWatts
    assert sum(shares.values()) <= 7_000_000
