"""Closed-loop corrections of a target's profile, and when they are worth a new plan.

Pure: observations in, factors out; the caller passes the clock.

Two factors per target, each an exponentially weighted moving average (EWMA)
of per-check samples, clamped to ``[min_factor, max_factor]``:

- **power**: observed watts per GPU / the planned cap. A role that runs well
  below its cap leaves watts the planner may give to others.
- **throughput**: real capacity / the profile's capacity at the current plan.
  Capacity is only visible when the fleet is at its limit, so a sample is taken
  only then: when the fleet serves *more* than the corrected profile predicts
  (sample: served / predicted, the capacity is at least that), or when it
  misses its latency goal (sample: the current factor / how far over the goal
  the worst latency is, so the next plan adds capacity). A fleet that serves
  less than it could, within its goals, says nothing about its capacity.

Both are updated only with enough traffic: the served throughput must be at
least ``min_traffic_fraction`` of the predicted capacity.

Hysteresis: the plan uses *applied* factors. They follow the EWMA only after it
has drifted more than ``drift_tolerance`` from them for ``drift_checks``
consecutive checks, and at most once per ``replan_interval_seconds``, so a
noisy signal never makes the fleet flap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Factors:
    power: float = 1.0
    throughput: float = 1.0

    def as_pair(self) -> tuple[float, float]:
        """(power_factor, throughput_factor), the planner's order."""
        return (self.power, self.throughput)


@dataclass(frozen=True)
class CorrectionSettings:
    alpha: float = 0.3
    min_factor: float = 0.5
    max_factor: float = 1.5
    min_traffic_fraction: float = 0.1
    drift_tolerance: float = 0.05
    drift_checks: int = 3
    replan_interval_seconds: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError(
                f"min_factor ({self.min_factor}) and max_factor ({self.max_factor}) must bracket 1"
            )
        if self.drift_checks < 1:
            raise ValueError(f"drift_checks must be >= 1, got {self.drift_checks}")
        if self.min_traffic_fraction < 0 or self.drift_tolerance < 0 or self.replan_interval_seconds < 0:
            raise ValueError("min_traffic_fraction, drift_tolerance and replan_interval_seconds must be >= 0")


@dataclass(frozen=True)
class Observation:
    """One check of one target against the plan in force.

    ``predicted_capacity`` is the profile's capacity of that plan *without*
    corrections (replicas x profile(cap)); ``latency_ratio`` is the worst
    observed latency quantile divided by its goal (above 1: the goal is missed).
    """

    cap_watts: float | None = None
    watts_per_gpu: float | None = None
    served: float | None = None
    predicted_capacity: float | None = None
    latency_ratio: float | None = None


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def clamp(value: float, settings: CorrectionSettings) -> float:
    return min(settings.max_factor, max(settings.min_factor, value))


def ewma(previous: float, sample: float, alpha: float) -> float:
    return (1 - alpha) * previous + alpha * sample


def enough_traffic(observation: Observation, settings: CorrectionSettings) -> bool:
    """Whether the target served enough of its predicted capacity for its numbers to mean something."""
    served, predicted = observation.served, observation.predicted_capacity
    if not (_usable(served) and _usable(predicted)) or predicted is None or served is None or predicted <= 0:
        return False
    return served > 0 and served >= settings.min_traffic_fraction * predicted


def power_sample(observation: Observation) -> float | None:
    """Observed watts per GPU / planned cap, or None without both."""
    cap, watts = observation.cap_watts, observation.watts_per_gpu
    if cap is None or watts is None or not (_usable(cap) and _usable(watts)) or cap <= 0 or watts < 0:
        return None
    return watts / cap


def throughput_sample(observation: Observation, current: float) -> float | None:
    """A capacity sample when the fleet is at its limit (see the module docstring), else None."""
    served, predicted = observation.served, observation.predicted_capacity
    if served is None or predicted is None or predicted <= 0:
        return None
    latency = observation.latency_ratio
    if latency is not None and _usable(latency) and latency > 1:
        return current / latency
    ratio = served / predicted
    if ratio > current:
        return ratio
    return None


def update(current: Factors, observation: Observation, settings: CorrectionSettings) -> Factors:
    """The factors after one check; unchanged without enough traffic."""
    if not enough_traffic(observation, settings):
        return current
    power = current.power
    sample = power_sample(observation)
    if sample is not None:
        power = clamp(ewma(current.power, sample, settings.alpha), settings)
    throughput = current.throughput
    sample = throughput_sample(observation, current.throughput)
    if sample is not None:
        throughput = clamp(ewma(current.throughput, sample, settings.alpha), settings)
    return Factors(power=power, throughput=throughput)


def drifted(current: Factors, applied: Factors, tolerance: float) -> bool:
    return (
        abs(current.power - applied.power) > tolerance
        or abs(current.throughput - applied.throughput) > tolerance
    )


@dataclass(frozen=True)
class CorrectionState:
    """Per target: the running EWMA, the factors the plan uses, and how many checks in a row they differ."""

    current: Mapping[str, Factors] = field(default_factory=dict)
    applied: Mapping[str, Factors] = field(default_factory=dict)
    drift_checks: Mapping[str, int] = field(default_factory=dict)
    last_replan_seconds: float | None = None

    def applied_for(self, target: str) -> Factors:
        return self.applied.get(target, Factors())


@dataclass(frozen=True)
class StepResult:
    state: CorrectionState
    replan: bool  # the applied factors changed: the next plan differs because of corrections
    changed: tuple[str, ...] = ()


def step(
    state: CorrectionState,
    observations: Mapping[str, Observation | None],
    now_seconds: float,
    settings: CorrectionSettings,
) -> StepResult:
    """One check of every target: update the EWMAs, then apply them when the drift has persisted."""
    current = dict(state.current)
    counts = dict(state.drift_checks)
    for name, observation in observations.items():
        before = current.get(name, Factors())
        current[name] = update(before, observation, settings) if observation is not None else before
        counts[name] = (
            counts.get(name, 0) + 1
            if drifted(current[name], state.applied_for(name), settings.drift_tolerance)
            else 0
        )
    persisted = sorted(name for name, count in counts.items() if count >= settings.drift_checks)
    rested = (
        state.last_replan_seconds is None
        or now_seconds - state.last_replan_seconds >= settings.replan_interval_seconds
    )
    if not persisted or not rested:
        return StepResult(replace(state, current=current, drift_checks=counts), replan=False)
    applied = dict(state.applied)
    for name in persisted:
        applied[name] = current[name]
        counts[name] = 0
    new_state = CorrectionState(
        current=current, applied=applied, drift_checks=counts, last_replan_seconds=now_seconds
    )
    return StepResult(new_state, replan=True, changed=tuple(persisted))
