"""Per budget: demand, observed power and corrections from Prometheus readings, pure.

The core (:func:`advance`) is pure: the memory of a budget and one reading in,
the new memory and the :class:`Signals` for the planner out. The shell
(:class:`gpupower_operator.shell.signalsource.SignalSource`) reads Prometheus at most
once per ``intervalSeconds`` per budget and keeps the memory between reconciles.

Degradation policy:
- an empty result or NaN is "no signal": the target keeps its last good demand
  (then its static ``demand``), never zero, and the condition stays True;
- a failed read (unreachable, timeout, HTTP error, malformed answer, missing
  Secret) counts as a failure; demand falls back the same way, corrections
  freeze, and after ``failuresBeforeFallback`` consecutive failures
  ``MetricsAvailable`` turns False with the error. The plan then follows the
  same demand as before, so the last plan stays in force;
- the last good demand survives an operator restart through the status
  (``demand`` with ``demandSource`` Prometheus or LastGood).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from gpupower_api.models import BudgetSpec, BudgetStatus, PrometheusSpec, Target, TargetStatus
from gpupower_operator.core import promql
from gpupower_operator.core.conditions import ConditionUpdate, false, true
from gpupower_operator.core.correction import (
    CorrectionSettings,
    CorrectionState,
    Factors,
    Observation,
    step,
)
from gpupower_operator.core.planner import ProfilePoint, throughput_at


@dataclass(frozen=True)
class NoSignal:
    """A query that answered with nothing usable (no series, or NaN)."""

    reason: str


METRICS_AVAILABLE = "MetricsAvailable"
REASON_QUERIES_SUCCEEDED = "QueriesSucceeded"
REASON_QUERIES_FAILING = "QueriesFailing"
REASON_NO_PROMETHEUS_URL = "NoPrometheusUrl"


class DemandSource(StrEnum):
    PROMETHEUS = "Prometheus"
    LAST_GOOD = "LastGood"
    STATIC = "Static"
    NONE = "None"


Value = float | NoSignal | None  # None: not asked for


@dataclass(frozen=True)
class TargetReading:
    demand: Value = None
    served: Value = None
    ttft_seconds: Value = None
    inter_token_latency_seconds: Value = None
    power_watts: float | None = None  # summed over the target's GPUs
    gpus_reporting: int = 0


@dataclass(frozen=True)
class Reading:
    """One read of a budget's queries: every target's values, or the error that stopped it."""

    targets: Mapping[str, TargetReading] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class TargetSignals:
    demand: float | None
    demand_source: DemandSource
    factors: Factors
    observed_watts: float | None = None
    observed_throughput: float | None = None
    ttft_seconds: float | None = None
    inter_token_latency_seconds: float | None = None
    no_signal: str | None = None


@dataclass(frozen=True)
class Signals:
    targets: Mapping[str, TargetSignals]
    condition: ConditionUpdate | None  # None: leave MetricsAvailable as it is
    observed_watts: float | None = None
    corrections_applied: tuple[str, ...] = ()

    def demand(self) -> dict[str, float | None]:
        """The planner's ``demand`` override (static demands included, unchanged)."""
        return {name: t.demand for name, t in self.targets.items() if t.demand_source != DemandSource.NONE}

    def corrections(self) -> dict[str, tuple[float, float]]:
        """The planner's ``corrections``: the applied (power, throughput) factors."""
        return {name: t.factors.as_pair() for name, t in self.targets.items()}

    def target_status(self, name: str) -> dict[str, Any]:
        """Fields for the target's status entry (a ``model_copy(update=...)`` of TargetStatus)."""
        signals = self.targets.get(name)
        if signals is None:
            return {}
        return {
            "observed_watts": _round(signals.observed_watts, 1),
            "demand_source": str(signals.demand_source),
            "observed_throughput": _round(signals.observed_throughput, 4),
            "observed_ttft_seconds": _round(signals.ttft_seconds, 4),
            "observed_inter_token_latency_seconds": _round(signals.inter_token_latency_seconds, 5),
            "power_factor": round(signals.factors.power, 4),
            "throughput_factor": round(signals.factors.throughput, 4),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Memory:
    """What a budget's signals remember between reads."""

    last_good_demand: Mapping[str, float] = field(default_factory=dict)
    # Per target, the (seconds, demand) reads within the stabilization window.
    recent_demand: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    failures: int = 0
    corrections: CorrectionState = field(default_factory=CorrectionState)
    last_read_seconds: float | None = None
    last_signals: Signals | None = None
    # Per target, the plan in force ((cap, replicas)) and when it was first seen enforced.
    enforced_since: Mapping[str, tuple[tuple[int, int], float]] = field(default_factory=dict)


def wants_prometheus(spec: BudgetSpec) -> bool:
    """A budget reads Prometheus when it has a ``prometheus`` section or a target's demand comes from it."""
    return spec.prometheus is not None or any(promql.uses_prometheus(t) for t in spec.targets)


def prometheus_settings(spec: BudgetSpec) -> PrometheusSpec:
    return spec.prometheus if spec.prometheus is not None else PrometheusSpec()


def correction_settings(prometheus: PrometheusSpec) -> CorrectionSettings:
    return CorrectionSettings(
        drift_checks=prometheus.drift_checks,
        replan_interval_seconds=float(prometheus.replan_interval_seconds),
    )


def _number(value: Value) -> float | None:
    return value if isinstance(value, float | int) and math.isfinite(value) else None


def _latency_ratio(target: Target, reading: TargetReading) -> float | None:
    if target.sla is None:
        return None
    ratios = []
    ttft, itl = _number(reading.ttft_seconds), _number(reading.inter_token_latency_seconds)
    if target.sla.ttft_seconds is not None and ttft is not None:
        ratios.append(ttft / target.sla.ttft_seconds)
    if target.sla.inter_token_latency_seconds is not None and itl is not None:
        ratios.append(itl / target.sla.inter_token_latency_seconds)
    return max(ratios) if ratios else None


DEFAULT_SETTLE_SECONDS = 60.0


def settle_seconds(target: Target) -> float:
    """How long a plan must have been enforced before the fleet's readings describe it.

    A rate over a window still counts the previous plan until a whole window has
    passed under the new one (and the power readings lag by a scrape), so a
    preset's window; a ``demandQuery``, whose window is unknown, gets 60 s.
    """
    return float(target.preset.window_seconds) if target.preset is not None else DEFAULT_SETTLE_SECONDS


def _enforced_since(
    memory: Memory, spec: BudgetSpec, old_status: BudgetStatus | None, now_seconds: float
) -> dict[str, tuple[tuple[int, int], float]]:
    """Per target whose plan in force is enforced: that plan and since when (kept while it stays)."""
    since: dict[str, tuple[tuple[int, int], float]] = {}
    for target in spec.targets:
        planned = old_status.target(target.name) if old_status is not None else None
        if planned is None or not enforced(planned):
            continue
        key = (planned.cap_watts, planned.planned_replicas)
        before = memory.enforced_since.get(target.name)
        since[target.name] = before if before is not None and before[0] == key else (key, now_seconds)
    return since


def _observation(
    target: Target,
    reading: TargetReading,
    old_status: BudgetStatus | None,
    enforced_for_seconds: float | None,
) -> Observation | None:
    """The check of one target against the plan in force (the one the old status holds).

    None until that plan has been enforced (every planned replica running and
    carrying its cap) for :func:`settle_seconds`: while replicas or caps are
    still moving, just after they moved, or in Advisory mode, what the fleet
    draws and serves says nothing about the profile at the plan.
    """
    planned = old_status.target(target.name) if old_status is not None else None
    if planned is None or enforced_for_seconds is None or enforced_for_seconds < settle_seconds(target):
        return None
    profile = tuple(ProfilePoint(p.watts, p.throughput) for p in target.profile.curve())
    predicted = planned.planned_replicas * throughput_at(profile, planned.cap_watts)
    watts_per_gpu = (
        reading.power_watts / reading.gpus_reporting
        if reading.power_watts is not None and reading.gpus_reporting > 0
        else None
    )
    return Observation(
        cap_watts=float(planned.cap_watts),
        watts_per_gpu=watts_per_gpu,
        served=_number(reading.served),
        predicted_capacity=predicted,
        latency_ratio=_latency_ratio(target, reading),
    )


def recent_window(
    window: tuple[tuple[float, float], ...], now_seconds: float, value: float, stabilization_seconds: float
) -> tuple[tuple[float, float], ...]:
    """The reads of the last ``stabilization_seconds``, this one included.

    Demand planned for is the highest of them (as the HorizontalPodAutoscaler's
    scale-down stabilization does): a rise is followed at once, a fall only once
    it has lasted the window, so pods coming and going (whose counters enter and
    leave the rate window) never make the fleet flap.
    """
    kept = tuple((at, v) for at, v in window if now_seconds - at < stabilization_seconds)
    return (*kept, (now_seconds, value))


def enforced(planned: TargetStatus) -> bool:
    """Whether the fleet runs the target's plan: its replicas, each pod's GPUs holding the planned cap
    as its agent reports it (not only annotated with it)."""
    return (
        planned.current_replicas == planned.planned_replicas
        and planned.pods_enforced >= planned.planned_replicas
    )


def _status_demand(old_status: BudgetStatus | None, name: str) -> float | None:
    """The last good demand a previous operator run wrote to the status."""
    entry = old_status.target(name) if old_status is not None else None
    if entry is None or entry.demand is None:
        return None
    if entry.demand_source in (DemandSource.PROMETHEUS, DemandSource.LAST_GOOD):
        return entry.demand
    return None


def _fallback(
    target: Target, memory: Memory, old_status: BudgetStatus | None
) -> tuple[float | None, DemandSource]:
    last_good = memory.last_good_demand.get(target.name, _status_demand(old_status, target.name))
    if last_good is not None:
        return last_good, DemandSource.LAST_GOOD
    if target.demand is not None:
        return target.demand, DemandSource.STATIC
    return None, DemandSource.NONE


def advance(
    memory: Memory,
    spec: BudgetSpec,
    old_status: BudgetStatus | None,
    reading: Reading,
    now_seconds: float,
) -> tuple[Memory, Signals]:
    """Fold one reading into a budget's memory; the signals the next plan uses."""
    prometheus = prometheus_settings(spec)
    failed = reading.error is not None
    failures = memory.failures + 1 if failed else 0
    last_good = dict(memory.last_good_demand)
    recent = dict(memory.recent_demand)
    corrections = memory.corrections
    applied_now: tuple[str, ...] = ()
    enforced_since = _enforced_since(memory, spec, old_status, now_seconds)
    if not failed:
        observations = {
            t.name: _observation(
                t,
                reading.targets.get(t.name, TargetReading()),
                old_status,
                now_seconds - enforced_since[t.name][1] if t.name in enforced_since else None,
            )
            for t in spec.targets
        }
        result = step(corrections, observations, now_seconds, correction_settings(prometheus))
        corrections, applied_now = result.state, result.changed

    targets: dict[str, TargetSignals] = {}
    quiet: list[str] = []
    for target in spec.targets:
        target_reading = reading.targets.get(target.name, TargetReading())
        demand_value = _number(target_reading.demand)
        if promql.uses_prometheus(target) and demand_value is not None and not failed:
            window = recent_window(
                recent.get(target.name, ()),
                now_seconds,
                max(0.0, demand_value),
                prometheus.demand_stabilization_seconds,
            )
            recent[target.name] = window
            fresh = max(value for _, value in window)
            demand: float | None = fresh
            source = DemandSource.PROMETHEUS
            last_good[target.name] = fresh
        elif promql.uses_prometheus(target):
            demand, source = _fallback(target, replace(memory, last_good_demand=last_good), old_status)
        else:
            demand = target.demand
            source = DemandSource.STATIC if demand is not None else DemandSource.NONE
        no_signal = next(
            (
                value.reason
                for value in (target_reading.demand, target_reading.ttft_seconds)
                if isinstance(value, NoSignal)
            ),
            None,
        )
        if no_signal is not None and not failed:
            quiet.append(f"{target.name} ({no_signal})")
        targets[target.name] = TargetSignals(
            demand=demand,
            demand_source=source,
            factors=corrections.applied_for(target.name),
            observed_watts=None if failed else target_reading.power_watts,
            observed_throughput=None if failed else _number(target_reading.served),
            ttft_seconds=None if failed else _number(target_reading.ttft_seconds),
            inter_token_latency_seconds=None
            if failed
            else _number(target_reading.inter_token_latency_seconds),
            no_signal=no_signal,
        )

    condition: ConditionUpdate | None
    if not failed:
        message = f"read {len(spec.targets)} target(s) from Prometheus"
        if quiet:
            message += "; no signal (planning with the last good or static demand) for " + ", ".join(quiet)
        condition = true(METRICS_AVAILABLE, REASON_QUERIES_SUCCEEDED, message)
    elif failures >= prometheus.failures_before_fallback:
        kept = ", ".join(
            f"{name} {t.demand:g} ({t.demand_source})" for name, t in targets.items() if t.demand is not None
        )
        condition = false(
            METRICS_AVAILABLE,
            REASON_QUERIES_FAILING,
            f"{failures} consecutive reads failed, last: {reading.error}; "
            f"keeping the last plan's inputs (demand: {kept or 'none'})",
        )
    else:
        condition = memory.last_signals.condition if memory.last_signals is not None else None

    observed = [t.observed_watts for t in targets.values() if t.observed_watts is not None]
    signals = Signals(
        targets=targets,
        condition=condition,
        observed_watts=math.fsum(observed) if observed else None,
        corrections_applied=applied_now,
    )
    new_memory = Memory(
        last_good_demand=last_good,
        recent_demand=recent,
        failures=failures,
        corrections=corrections,
        last_read_seconds=now_seconds,
        last_signals=signals,
        enforced_since=enforced_since,
    )
    return new_memory, signals


def no_url_signals(spec: BudgetSpec) -> Signals:
    """A budget that wants Prometheus but has no URL (neither in its spec nor --prometheus-url)."""
    targets = {}
    for target in spec.targets:
        source = DemandSource.STATIC if target.demand is not None else DemandSource.NONE
        targets[target.name] = TargetSignals(demand=target.demand, demand_source=source, factors=Factors())
    condition = false(
        METRICS_AVAILABLE,
        REASON_NO_PROMETHEUS_URL,
        "spec.prometheus.url is not set and the operator has no --prometheus-url; using static demand",
    )
    return Signals(targets=targets, condition=condition)
