"""What a target's profile is, as the status and `gpupower plan` report it: its source and its adjustments.

Pure. The planner uses a profile's monotone envelope (a higher cap never serves
less); when measured points dip, the budget says so per target, naming every
point the envelope raised, so that nobody mistakes the planned capacity for
what was measured.
"""

from __future__ import annotations

from typing import Any

from gpupower_api.models import Profile, RaisedPoint
from gpupower_operator.core import planner


def raised_points(profile: Profile) -> tuple[planner.RaisedPoint, ...]:
    """The profile's points that the planner's envelope raises (never any for a preset)."""
    return planner.raised_points([planner.ProfilePoint(p.watts, p.throughput) for p in profile.curve()])


def target_status(profile: Profile) -> dict[str, Any]:
    """The profile fields of a target's status: ``profileSource`` and, when points dip, what was raised."""
    raised = raised_points(profile)
    return {
        "profile_source": str(profile.origin()),
        "profile_adjusted": bool(raised),
        "profile_raised_points": [
            RaisedPoint(
                index=r.index, watts=r.watts, throughput=r.throughput, used_throughput=r.used_throughput
            )
            for r in raised
        ]
        or None,
    }


def document(profile: Profile) -> dict[str, Any]:
    """The same fields as plain camelCase data, for ``gpupower plan -o json|yaml``."""
    status = target_status(profile)
    raised: list[RaisedPoint] = status["profile_raised_points"] or []
    return {
        "profileSource": status["profile_source"],
        "profileAdjusted": status["profile_adjusted"],
        "profileRaisedPoints": [r.model_dump(by_alias=True) for r in raised],
    }


def note(target: str | None, profile: Profile) -> str | None:
    """One line saying which points of a target's profile the plan raised, or None."""
    raised = raised_points(profile)
    if not raised:
        return None
    points = "; ".join(
        f"points[{r.index}] at {r.watts:g} W from {r.throughput:g} to {r.used_throughput:g}" for r in raised
    )
    whose = f"target {target}: profile" if target is not None else "profile"
    return (
        f"{whose} adjusted, a higher cap never serves less than a lower one: raised {points} {profile.unit}"
    )


def source_note(target: str, profile: Profile) -> str | None:
    """One line reminding that a preset is an estimate, or None for points."""
    if profile.preset is None:
        return None
    return (
        f"target {target}: profile is the {profile.preset} preset, an estimate from published "
        "measurements: measure this role (gpupower profile import)"
    )
