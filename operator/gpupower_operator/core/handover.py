"""Moving watts between the budgets of a domain without overshooting it on the way: the grants, pure.

The allocation (:mod:`gpupower_operator.core.allocation`) says where a domain's watts
should be; the hardware says where they are. When the allocation takes watts
from one budget and gives them to another, the giver's GPUs hold their old
limits until its agents have lowered them, and the receiver must not raise
before that: a breaker trips on what the GPUs hold on the way, not on the plan.

So each budget plans within its *grant*, not its allocation:

- a budget's *hold* is the most its GPUs may hold now: what the agents report
  they hold, or more when the budget was granted more and may still be
  raising to it (the shell keeps those figures);
- a budget whose allocation is at most its hold (a giver, or one that stays)
  is granted its allocation: lowering is always safe;
- every domain's *room* is its limit less what is committed outside budgets
  and every budget's hold under it; the budgets that want to rise (allocation
  above hold) share the room, highest priority first (then the smallest rise,
  then namespace/name), each up to its allocation and within the room of every
  domain up its chain.

What the GPUs under a domain may hold is then at most its committed watts
plus every budget's larger of hold and grant, which is within the limit
whenever the holds were; once the givers' lower limits are reported, their
holds fall and the receivers get the rest. When every budget holds what it is
allocated, every grant is its allocation. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DomainRoom:
    """A domain's limit and what is committed outside budgets on its nodes (its whole subtree)."""

    name: str
    limit_milliwatts: int
    committed_milliwatts: int


@dataclass(frozen=True)
class BudgetHold:
    """A budget of a domain: its allocation and the most its GPUs may hold now."""

    key: str  # namespace/name
    chain: tuple[str, ...]  # its domain and every domain above it
    allocated_milliwatts: int
    hold_milliwatts: int
    priority: int = 0


@dataclass(frozen=True)
class Grant:
    """What a budget may plan within now; below its allocation while others still hold the watts."""

    key: str
    milliwatts: int
    allocated_milliwatts: int
    bound_by: str | None = None  # the domain whose room held the budget below its allocation

    @property
    def waiting(self) -> bool:
        return self.milliwatts < self.allocated_milliwatts


def grants(domains: Sequence[DomainRoom], budgets: Sequence[BudgetHold]) -> dict[str, Grant]:
    """Each budget's grant (see the module docstring), by key.

    Raises :class:`ValueError` naming the budget when its chain names a domain
    not given, or when a figure is negative.
    """
    room = {d.name: d.limit_milliwatts - d.committed_milliwatts for d in domains}
    for budget in budgets:
        if not budget.chain:
            raise ValueError(f"budget {budget.key}: no domain on its chain")
        if min(budget.allocated_milliwatts, budget.hold_milliwatts) < 0:
            raise ValueError(f"budget {budget.key}: allocated and held milliwatts must not be negative")
        for name in budget.chain:
            if name not in room:
                raise ValueError(f"budget {budget.key}: domain {name} on its chain was not given")
            room[name] -= budget.hold_milliwatts
    result: dict[str, Grant] = {}
    rising = []
    for budget in budgets:
        if budget.allocated_milliwatts <= budget.hold_milliwatts:
            result[budget.key] = Grant(budget.key, budget.allocated_milliwatts, budget.allocated_milliwatts)
        else:
            rising.append(budget)
    rising.sort(key=lambda b: (-b.priority, b.allocated_milliwatts - b.hold_milliwatts, b.key))
    for budget in rising:
        want = budget.allocated_milliwatts - budget.hold_milliwatts
        tightest = min(budget.chain, key=room.__getitem__)  # the nearest of the tightest
        extra = max(0, min(want, room[tightest]))
        for name in budget.chain:
            room[name] -= extra
        result[budget.key] = Grant(
            budget.key,
            budget.hold_milliwatts + extra,
            budget.allocated_milliwatts,
            bound_by=tightest if extra < want else None,
        )
    return result


__all__ = ["BudgetHold", "DomainRoom", "Grant", "grants"]
