"""The draw guard of an oversubscribed budget on one node, pure: readings and state in, limits and state out.

An oversubscribed budget's caps sum above its ``totalWatts``: the plan counts
each GPU at what it is expected to draw (its *share*: cap x power factor). When
the load comes back, the GPUs may draw up to their caps, so every agent guards
its own node's share of each such budget, once a reading period (a second;
NVML's power reading is a one-second average on Ampere and later), in three
bands with hysteresis:

- **engage** (above the share): when the budget's GPUs on this node draw more
  than their summed share for ``guardReadings`` readings in a row, the GPUs
  drawing the most are limited to one common level, the highest at which the
  node draws at most ``guardTargetRatio`` of its share (water-filling: a GPU
  drawing less than the level is not slowed; never below a GPU's minimum, never
  above its current limit, so a cut never raises a GPU). Still above after a cut
  (a GPU under the level surging, a GPU at its minimum): the next readings cut
  again, from where the limits are.
- **hold** (between the release threshold and the share): nothing changes.
- **release** (below ``guardReleaseRatio`` of the share): once the draw has
  stayed there for ``guardHoldSeconds``, every limit rises by
  ``guardReleaseStepRatio`` of its GPU's cap range (never above the planned
  cap), and the hold starts again; when every GPU is back at its cap the guard
  is released.

A failed power reading counts as drawing at the GPU's current limit (the most
it can draw). An agent that has just started does not know what its GPUs drew
before: it starts guarded, each GPU at its share, and releases from there. Each
node holding its share holds the budget; the agents never talk to each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gpupower_api.models import Oversubscription


class GuardEvent(StrEnum):
    ENGAGED = "engaged"
    TIGHTENED = "tightened"  # engaged already, still above the share: cut again
    STEPPED = "stepped"  # one release step
    RELEASED = "released"  # every GPU back at its cap


@dataclass(frozen=True)
class GuardGpu:
    """One GPU of the budget on this node, as one reading period sees it."""

    uuid: str
    cap_watts: int  # the limit the plan gives it (its pods' cap)
    share_watts: float  # what it is planned to draw: cap x power factor
    min_watts: int  # the lowest limit it accepts
    power_watts: float | None  # NVML's reading; None: the reading failed


@dataclass(frozen=True)
class GuardState:
    """One budget's guard on this node between readings."""

    engaged: bool = False
    over_readings: int = 0  # consecutive readings above the share
    low_since: float | None = None  # when the draw went (and stayed) below the release threshold
    limits: Mapping[str, int] = field(default_factory=dict)  # per GPU, while engaged


@dataclass(frozen=True)
class GuardStep:
    state: GuardState
    event: GuardEvent | None
    draw_watts: float
    share_watts: float


def _clamp(watts: float, low: int, high: int) -> int:
    return max(low, min(high, math.floor(watts)))


def _top(gpu: GuardGpu) -> int:
    # The most the guard ever lets a GPU hold: its cap (or its minimum, should the cap be below it).
    return max(gpu.min_watts, gpu.cap_watts)


def at_share(gpu: GuardGpu) -> int:
    """A GPU's limit at its share (within what it accepts and its cap)."""
    return _clamp(gpu.share_watts, gpu.min_watts, _top(gpu))


def starting(gpus: Sequence[GuardGpu]) -> GuardState:
    """The state of an agent that has just started: guarded, each GPU at its share."""
    return GuardState(engaged=True, limits={gpu.uuid: at_share(gpu) for gpu in gpus})


def effective_limit(state: GuardState, gpu: GuardGpu) -> int:
    """What the guard lets the GPU hold now: its cap, or less while engaged."""
    top = _top(gpu)
    if not state.engaged:
        return top
    held = state.limits.get(gpu.uuid)
    return min(top, held) if held is not None else at_share(gpu)  # a GPU new to a guarded budget


def _water_level(
    gpus: Sequence[GuardGpu], draws: Mapping[str, float], limits: Mapping[str, int], target_watts: float
) -> float:
    """The highest common limit at which the GPUs would draw at most ``target_watts``: each GPU draws the
    least of what it draws now, its limit, and the level (not below its minimum). 0 when even the minimums
    draw more."""

    def drawn(level: float) -> float:
        return sum(min(draws[g.uuid], float(limits[g.uuid]), max(float(g.min_watts), level)) for g in gpus)

    low, high = 0.0, float(max(limits.values(), default=0))
    if drawn(high) <= target_watts:
        return high
    for _ in range(40):  # bisection to well under a watt
        middle = (low + high) / 2
        if drawn(middle) <= target_watts:
            low = middle
        else:
            high = middle
    return low


def step(settings: Oversubscription, gpus: Sequence[GuardGpu], state: GuardState, now: float) -> GuardStep:
    """One reading period of the guard (see the module docstring)."""
    limits = {gpu.uuid: effective_limit(state, gpu) for gpu in gpus}
    draw = sum(gpu.power_watts if gpu.power_watts is not None else limits[gpu.uuid] for gpu in gpus)
    share = sum(gpu.share_watts for gpu in gpus)
    over_readings = state.over_readings + 1 if draw > share else 0
    if over_readings >= settings.guard_readings:
        draws = {g.uuid: g.power_watts if g.power_watts is not None else float(limits[g.uuid]) for g in gpus}
        level = _water_level(gpus, draws, limits, settings.guard_target_ratio * share)
        cut = {gpu.uuid: min(limits[gpu.uuid], max(gpu.min_watts, math.floor(level + 1e-6))) for gpu in gpus}
        event = GuardEvent.TIGHTENED if state.engaged else GuardEvent.ENGAGED
        return GuardStep(GuardState(True, 0, None, cut), event, draw, share)
    if not state.engaged:
        return GuardStep(GuardState(False, over_readings, None, {}), None, draw, share)
    if draw > settings.guard_release_ratio * share:
        return GuardStep(GuardState(True, over_readings, None, limits), None, draw, share)
    if state.low_since is None or now - state.low_since < settings.guard_hold_seconds:
        since = state.low_since if state.low_since is not None else now
        return GuardStep(GuardState(True, over_readings, since, limits), None, draw, share)
    raised = {
        gpu.uuid: min(
            _top(gpu),
            limits[gpu.uuid]
            + max(1, math.ceil(settings.guard_release_step_ratio * max(0, gpu.cap_watts - gpu.min_watts))),
        )
        for gpu in gpus
    }
    if all(raised[gpu.uuid] >= _top(gpu) for gpu in gpus):
        return GuardStep(GuardState(), GuardEvent.RELEASED, draw, share)
    return GuardStep(GuardState(True, over_readings, now, raised), GuardEvent.STEPPED, draw, share)
