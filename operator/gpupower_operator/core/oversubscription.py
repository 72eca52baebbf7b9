"""What the operator learns from the draw guard of oversubscribed budgets, pure.

An oversubscribed budget is planned on what its GPUs draw (cap x power factor),
so its caps sum above ``totalWatts``; the agents' draw guard holds each node to
its share when the load comes back. The guard is a safety net, not the steady
state: when it engages on a target's pods, the operator plans that target with
less oversubscription. Its power factor is planned at no less than a *floor*
that moves halfway to 1 at each engagement (at most once per
:data:`RAISE_INTERVAL_SECONDS`), and the floor is dropped once no engagement
has been seen for the budget's ``relaxSeconds``. The agents report an
engagement through the pods' ``gpupower.dev/PowerCapped`` condition (reason
``Guarded``); the count and the floor live in the target's status, so they
survive an operator restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gpupower_api.models import TargetStatus

RAISE_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class GuardMemory:
    """One target's guard record: engagements counted, the power factor floor, the last engagement."""

    engagements: int = 0
    floor: float | None = None
    last_engagement: str | None = None  # RFC 3339


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def remembered(status: TargetStatus | None) -> GuardMemory:
    """The record a target's status carries."""
    if status is None:
        return GuardMemory()
    return GuardMemory(status.guard_engagements or 0, status.draw_factor_floor, status.last_guard_engagement)


def next_memory(
    before: GuardMemory, new_engagements: int, factor: float, now: str, relax_seconds: float
) -> GuardMemory:
    """The record after ``new_engagements`` engagements seen since the last reconcile, at ``now``.

    ``factor`` is the power factor the plan would use without a floor.
    """
    if new_engagements > 0:
        count = before.engagements + new_engagements
        due = before.last_engagement is None or (
            _seconds_between(before.last_engagement, now) >= RAISE_INTERVAL_SECONDS
        )
        floor = before.floor
        if due or floor is None:
            start = max(factor, floor if floor is not None else 0.0)
            floor = min(1.0, start + (1.0 - start) / 2) if start < 1.0 else floor
        return GuardMemory(count, floor, now)
    if before.last_engagement is not None and _seconds_between(before.last_engagement, now) >= relax_seconds:
        return GuardMemory(before.engagements, None, before.last_engagement)
    return before


def floored(factor: float, memory: GuardMemory) -> float:
    """The power factor to plan with: never below the floor."""
    return factor if memory.floor is None else max(factor, memory.floor)
