"""Moving watts between a domain's budgets: what the GPUs may hold never exceeds a limit on the way."""

from __future__ import annotations

import random as stdlib_random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpupower_operator.core.handover import BudgetHold, DomainRoom, Grant, grants

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ROW = "row"


@st.composite
def domains_and_budgets(draw: st.DrawFn) -> tuple[list[DomainRoom], list[BudgetHold], dict[str, int]]:
    """A row of racks, budgets in racks or the row; holds and allocations that each fit every limit.

    Returns the domains, the budgets (holds as they are now) and each budget's held watts (hardware).
    """
    racks = [f"rack-{i}" for i in range(draw(st.integers(1, 3)))]
    chains = {rack: (rack, ROW) for rack in racks} | {ROW: (ROW,)}
    count = draw(st.integers(1, 5))
    homes = [draw(st.sampled_from([*racks, ROW])) for _ in range(count)]
    held = [draw(st.integers(0, 5000)) for _ in range(count)]
    allocated = [draw(st.integers(0, 5000)) for _ in range(count)]
    priorities = [draw(st.sampled_from([0, 50, 100])) for _ in range(count)]

    def under(domain: str, values: list[int]) -> int:
        return sum(v for v, home in zip(values, homes, strict=True) if domain in chains[home])

    rooms = []
    for name in [*racks, ROW]:
        committed = draw(st.integers(0, 2000))
        # The limit holds what the GPUs hold now, and the allocation (its guarantee).
        least = committed + max(under(name, held), under(name, allocated))
        rooms.append(DomainRoom(name, least + draw(st.integers(0, 1500)), committed))
    budgets = [
        BudgetHold(f"ns/b{i}", chains[homes[i]], allocated[i], held[i], priorities[i]) for i in range(count)
    ]
    return rooms, budgets, {b.key: b.hold_milliwatts for b in budgets}


def footprint(domain: DomainRoom, budgets: list[BudgetHold], amount: dict[str, int]) -> int:
    return domain.committed_milliwatts + sum(amount[b.key] for b in budgets if domain.name in b.chain)


@SETTINGS
@given(domains_and_budgets())
def test_grants_are_within_the_allocation_and_keep_every_domain_within_its_limit(
    case: tuple[list[DomainRoom], list[BudgetHold], dict[str, int]],
) -> None:
    rooms, budgets, _ = case
    granted = grants(rooms, budgets)
    assert set(granted) == {b.key for b in budgets}
    for budget in budgets:
        grant = granted[budget.key]
        assert min(budget.allocated_milliwatts, budget.hold_milliwatts) <= grant.milliwatts
        assert grant.milliwatts <= budget.allocated_milliwatts
        assert grant.waiting == (grant.bound_by is not None)
    may_hold = {b.key: max(b.hold_milliwatts, granted[b.key].milliwatts) for b in budgets}
    for domain in rooms:
        assert footprint(domain, budgets, may_hold) <= domain.limit_milliwatts


@SETTINGS
@given(domains_and_budgets())
def test_where_holds_and_allocations_fit_together_every_budget_gets_its_allocation(
    case: tuple[list[DomainRoom], list[BudgetHold], dict[str, int]],
) -> None:
    rooms, budgets, _ = case
    larger = {b.key: max(b.hold_milliwatts, b.allocated_milliwatts) for b in budgets}
    assume(all(footprint(d, budgets, larger) <= d.limit_milliwatts for d in rooms))
    assert all(not g.waiting for g in grants(rooms, budgets).values())


@SETTINGS
@given(domains_and_budgets(), st.randoms(use_true_random=False))
def test_moving_to_the_allocation_never_overshoots_and_arrives(
    case: tuple[list[DomainRoom], list[BudgetHold], dict[str, int]], random: stdlib_random.Random
) -> None:
    """Rounds of grants while the hardware follows at its own pace: raising within the grant, lowering
    late. What the GPUs hold is within every limit at every step, and the allocation is reached."""
    rooms, budgets, held = case
    issued = dict(held)
    for round_ in range(40):
        holds = [
            BudgetHold(b.key, b.chain, b.allocated_milliwatts, max(held[b.key], issued[b.key]), b.priority)
            for b in budgets
        ]
        granted = grants(rooms, holds)
        issued = {key: grant.milliwatts for key, grant in granted.items()}
        late = round_ < 30  # for 30 rounds agents confirm at random; then every one catches up
        for budget in random.sample(budgets, len(budgets)):
            target = issued[budget.key]
            if target < held[budget.key] and (not late or random.random() < 0.5):
                held[budget.key] = target
            elif target > held[budget.key]:
                held[budget.key] = target if not late else random.randint(held[budget.key], target)
            for domain in rooms:
                assert footprint(domain, budgets, held) <= domain.limit_milliwatts, (round_, domain.name)
    assert issued == {b.key: b.allocated_milliwatts for b in budgets}
    assert held == issued


def test_the_receiver_waits_for_the_giver_then_gets_the_watts() -> None:
    rack = [DomainRoom("rack", 8000, 0)]
    giver = BudgetHold("ns/batch", ("rack",), allocated_milliwatts=3000, hold_milliwatts=5000)
    receiver = BudgetHold("ns/chat", ("rack",), allocated_milliwatts=5000, hold_milliwatts=3000, priority=100)
    first = grants(rack, [giver, receiver])
    assert first["ns/batch"] == Grant("ns/batch", 3000, 3000)
    assert first["ns/chat"] == Grant("ns/chat", 3000, 5000, bound_by="rack")
    lowered = BudgetHold("ns/batch", ("rack",), 3000, 3000)
    assert grants(rack, [lowered, receiver])["ns/chat"] == Grant("ns/chat", 5000, 5000)


def test_higher_priority_rises_first_and_the_tightest_domain_is_named() -> None:
    rooms = [DomainRoom("rack-a", 4000, 0), DomainRoom("row", 6000, 500)]
    low = BudgetHold("ns/low", ("rack-a", "row"), 3000, 1000, priority=0)
    high = BudgetHold("ns/high", ("row",), 4000, 2000, priority=100)
    result = grants(rooms, [low, high])
    # Row room: 6000 - 500 - 3000 held = 2500; high takes 2000 of it, low gets the 500 left.
    assert result["ns/high"] == Grant("ns/high", 4000, 4000)
    assert result["ns/low"] == Grant("ns/low", 1500, 3000, bound_by="row")


def test_an_overcommitted_domain_grants_no_rise_but_lets_givers_lower() -> None:
    rack = [DomainRoom("rack", 5000, 2000)]  # an unmanaged pod came in: 2000 + 4000 held > 5000
    giver = BudgetHold("ns/a", ("rack",), 1500, 2000)
    riser = BudgetHold("ns/b", ("rack",), 1500, 2000 - 1000)
    result = grants(rack, [giver, riser])
    assert result["ns/a"].milliwatts == 1500
    assert result["ns/b"].milliwatts == 1000 and result["ns/b"].bound_by == "rack"


@pytest.mark.parametrize(
    ("budget", "words"),
    [
        (BudgetHold("ns/a", ("gone",), 1, 1), "domain gone on its chain was not given"),
        (BudgetHold("ns/a", (), 1, 1), "no domain on its chain"),
        (BudgetHold("ns/a", ("rack",), -1, 1), "must not be negative"),
    ],
)
def test_bad_input_is_refused_naming_the_budget(budget: BudgetHold, words: str) -> None:
    with pytest.raises(ValueError, match="budget ns/a") as caught:
        grants([DomainRoom("rack", 1000, 0)], [budget])
    assert words in str(caught.value)
