"""Measuring a target's profile on the live fleet: the sweep of one pod through caps, and the plan around it.

Pure: plain values in, plain values out; the caller passes ``now`` (seconds
since the epoch) and what it observed. The shell
(:mod:`gpupower_operator.shell.profileruns`) reads the run, the pod and Prometheus,
calls :func:`advance`, grants what it returns and writes the status.

The sweep, level by level (one level per cap, in the order given):

- **Granting**: the cap is granted to the pod alone. The budget plans the rest
  of the fleet around it (:func:`plan_around`: the pod's GPUs at that cap are
  reserved, the rest of its target is planned with one replica fewer, within
  ``totalWatts`` minus the reservation), and moves there in its safe order. A
  cap the budget cannot hold beside the rest of the fleet's floor is skipped
  (``OverBudget``); one the pod's GPUs are not seen holding within
  :data:`CAP_TIMEOUT_SECONDS` is skipped (``CapNotHeld``).
- **Settling**: from when the pod's agent reports its GPUs holding the cap, for
  ``settleSeconds``: the engine's batch and the rates adapt to the new limit.
- **Holding**: ``holdSeconds`` over which Prometheus's own range functions read
  the pod's throughput, its GPUs' mean power and its saturation.
- **Recorded** when every saturation sample of the hold was above 0 (requests
  waiting: the replica served all it could), else **Unsaturated**: a replica
  that was not saturated shows the load it got, not what it can serve, so the
  level is left out of the profile.

Cancelling (deleting the run) ends the grant: the budget's next plan is its
normal one, and its safe order puts the pod back on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from gpupower_api.models import (
    Condition,
    ConditionStatus,
    Profile,
    ProfilePoint,
    ProfileSource,
    PrometheusSpec,
    Target,
)
from gpupower_api.profilerun import LevelPhase, LevelStatus, RunPhase, RunSpec, RunStatus
from gpupower_operator.core import planner, promql
from gpupower_operator.core.conditions import ConditionUpdate, merge_conditions

# How long a granted cap may take to hold on the pod's GPUs (the budget's safe order and the agent).
CAP_TIMEOUT_SECONDS = 120.0
# How long after the hold a failed Prometheus read is retried before the level counts as NoData.
READ_RETRY_SECONDS = 30.0
POLL_SECONDS = 0.5

COMPLETE = "Complete"
REASON_MEASURING = "Measuring"
REASON_MEASURED = "Measured"
REASON_NOTHING_RECORDED = "NothingRecorded"
REASON_POD_NOT_FOUND = "PodNotFound"
REASON_POD_GONE = "PodGone"


# ---------------------------------------------------------------------------
# Planning around the measured pod


@dataclass(frozen=True)
class Reservation:
    """The measured pod: its target, and the cap its GPUs are granted."""

    target: str
    cap_watts: int


def reserved_watts(problem: planner.Problem, reservation: Reservation) -> float:
    """What the measured pod's GPUs may draw: every GPU of one replica at the level's cap."""
    target = next(t for t in problem.targets if t.name == reservation.target)
    return float(target.gpus_per_replica * reservation.cap_watts)


def plan_around(problem: planner.Problem, reservation: Reservation) -> planner.Plan | None:
    """The plan with the measured pod reserved, or None when the budget cannot hold it (OverBudget).

    The pod's GPUs at the level's cap are reserved out of ``totalWatts``; its
    target's other replicas are planned with one replica fewer (bounds lowered
    by one) and the demand less what the profile says the pod serves at that
    cap; every other target as usual. The result counts the pod back in: its
    target's replicas, watts and capacity include it, so ``/scale`` keeps it.
    None when the rest of the fleet's floor does not fit beside the
    reservation: never more power than ``totalWatts``. The reservation counts
    the pod's caps in full, also against an oversubscribed budget's bound on
    the caps (``totalWatts`` x ``maxRatio``), whatever its GPUs draw.
    """
    names = [t.name for t in problem.targets]
    if reservation.target not in names:
        return None
    index = names.index(reservation.target)
    target = problem.targets[index]
    reserved = reserved_watts(problem, reservation)
    remaining = problem.total_watts - reserved
    # Oversubscribed: the caps' own bound (totalWatts x maxRatio) holds the reservation too.
    cap_budget = None if problem.cap_budget_watts is None else problem.cap_budget_watts - reserved
    if remaining <= 0 or (cap_budget is not None and cap_budget <= 0):
        return None
    served_by_pod = planner.replica_throughput(target, reservation.cap_watts)
    rest_target = replace(
        target,
        min_replicas=max(0, target.min_replicas - 1),
        max_replicas=max(0, target.max_replicas - 1),
        demand=None if target.demand is None else max(0.0, target.demand - served_by_pod),
    )
    rest = planner.plan(
        replace(
            problem,
            total_watts=remaining,
            cap_budget_watts=cap_budget,
            targets=(*problem.targets[:index], rest_target, *problem.targets[index + 1 :]),
        )
    )
    if not rest.feasible:
        return None
    planned = rest.targets[index]
    capacity = planned.capacity + served_by_pod
    whole = replace(
        planned,
        desired_replicas=planner.desired_replicas(target),
        replicas=planned.replicas + 1,
        watts=planned.watts + reserved,
        capacity=capacity,
        demand=target.demand,
        served_fraction=planner.served_fraction(capacity, target.demand),
        gpus=planned.gpus + target.gpus_per_replica,
        caps_watts=planned.caps_watts + reserved,
    )
    targets = (*rest.targets[:index], whole, *rest.targets[index + 1 :])
    return replace(
        rest,
        budget_watts=problem.total_watts,
        targets=targets,
        watts=rest.watts + reserved,
        served_fraction=min(t.served_fraction for t in targets),
        reason=f"measuring one {target.name} pod at {reservation.cap_watts} W per GPU "
        f"({reserved:g} W reserved); the rest: {rest.reason}",
        floor_watts=rest.floor_watts + reserved,
        caps_watts=rest.caps_watts + reserved,
        cap_budget_watts=problem.cap_budget_watts,
    )


def over_budget_message(problem: planner.Problem, reservation: Reservation) -> str:
    """Why a level cannot be held: the reservation and the rest of the fleet's floor."""
    reserved = reserved_watts(problem, reservation)
    floor = sum(
        planner.target_watts(
            t, max(0, t.min_replicas - (1 if t.name == reservation.target else 0)), t.cap_min_watts
        )
        for t in problem.targets
    )
    return (
        f"{reservation.cap_watts} W per GPU for the measured pod reserves {reserved:g} W; with the rest of "
        f"the fleet at its floor ({floor:g} W) that is over the budget of {problem.total_watts:g} W"
    )


# ---------------------------------------------------------------------------
# The queries


class QueryError(ValueError):
    """A run that cannot be read: no query for its throughput or saturation; names the field."""


@dataclass(frozen=True)
class LevelQueries:
    """What is read at the end of a hold, each evaluated by Prometheus over the hold's window."""

    throughput: str
    power_watts: str
    saturation_min: str
    samples: str
    saturated_samples: str


def _fill(query: str, namespace: str, pod: str, window_seconds: int) -> str:
    return (
        query.replace("$namespace", namespace).replace("$pod", pod).replace("$window", f"{window_seconds}s")
    )


def sample_step_seconds(hold_seconds: int) -> int:
    """The step of the saturation subquery: 1 s, coarser for long holds (at most 600 samples)."""
    return max(1, math.ceil(hold_seconds / 600))


def level_queries(
    spec: RunSpec, target: Target, namespace: str, pod: str, prometheus: PrometheusSpec
) -> LevelQueries:
    """The queries for the measured pod; raise :class:`QueryError` when the target gives none."""
    window = spec.hold_seconds
    scope = promql.PodScope(namespace, promql.regex_literal(pod))
    if spec.throughput_query is not None:
        throughput = _fill(spec.throughput_query, namespace, pod, window)
    elif target.preset is not None:
        throughput = promql.throughput_query(
            target.preset.model_copy(update={"window_seconds": window}), scope
        )
    else:
        raise QueryError(
            "spec.throughputQuery: the target has no preset to read the pod's throughput from: give a "
            "throughputQuery"
        )
    if spec.saturation_query is not None:
        saturation = _fill(spec.saturation_query, namespace, pod, window)
    else:
        engine = promql.ENGINES[target.preset.engine] if target.preset is not None else None
        if engine is None or engine.waiting_gauge is None:
            raise QueryError(
                "spec.saturationQuery: the target's preset gives no waiting-requests gauge for the pod: "
                "give a saturationQuery"
            )
        matchers = scope.matchers(promql.ENGINE_NAMESPACE_LABEL, promql.ENGINE_POD_LABEL)
        saturation = f"sum({engine.waiting_gauge}{matchers})"
    over = f"[{window}s:{sample_step_seconds(window)}s]"
    power_matchers = scope.matchers(prometheus.namespace_label, prometheus.pod_label)
    return LevelQueries(
        throughput=throughput,
        power_watts=f"avg(avg_over_time({promql.DCGM_POWER_METRIC}{power_matchers}[{window}s]))",
        saturation_min=f"min_over_time(({saturation}){over})",
        samples=f"count_over_time(({saturation}){over})",
        saturated_samples=f"count_over_time((({saturation}) > 0){over})",
    )


# ---------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True)
class PodSeen:
    """The pod being measured, as the operator sees it now."""

    name: str
    node: str | None
    # What its GPUs hold, as its agent confirms it (PowerCapped True); None while unconfirmed.
    held_watts: int | None


@dataclass(frozen=True)
class Verdict:
    """The budget's answer to a granted cap: whether it plans the fleet around it."""

    cap_watts: int
    fits: bool
    message: str = ""


@dataclass(frozen=True)
class Reading:
    """What Prometheus answered for one level's hold (None: no data)."""

    throughput: float | None = None
    observed_watts: float | None = None
    samples: int = 0
    saturated_samples: int = 0
    saturation: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Stop:
    """Why the run cannot go on: a condition reason and a message naming what is wrong."""

    reason: str
    message: str


@dataclass(frozen=True)
class Seen:
    """Everything the sweep decides on, gathered by the shell."""

    pod: PodSeen | None  # None: no such pod (any more)
    gpus: int = 1
    unit: str = "requests/s"
    verdict: Verdict | None = None
    reading: Reading | None = None
    stop: Stop | None = None


@dataclass(frozen=True)
class Grant:
    """The cap the measured pod alone is granted now."""

    pod: str
    cap_watts: int


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Step:
    """What the sweep decided: the status, the grant, whether to read Prometheus now, when to look again."""

    status: RunStatus
    grant: Grant | None
    read: bool
    wake_seconds: float
    events: tuple[Event, ...] = ()


def rfc3339(seconds: float) -> str:
    """A time as the status writes it: UTC, milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def seconds_of(text: str | None) -> float | None:
    """A status time back in seconds since the epoch (None for none, or a time that cannot be read)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def measured_profile(levels: Sequence[LevelStatus], unit: str) -> Profile | None:
    """The profile of the recorded levels, by watts; None while none is recorded."""
    recorded = sorted(
        (level for level in levels if level.phase is LevelPhase.RECORDED and level.throughput is not None),
        key=lambda level: level.cap_watts,
    )
    if not recorded:
        return None
    return Profile(
        unit=unit,
        source=ProfileSource.MEASURED,
        points=[
            ProfilePoint(watts=level.cap_watts, throughput=round(level.throughput or 0.0, 6))
            for level in recorded
        ],
    )


def _with_condition(
    status: RunStatus,
    generation: int | None,
    now: float,
    status_value: ConditionStatus,
    reason: str,
    message: str,
) -> RunStatus:
    conditions: list[Condition] = merge_conditions(
        status.conditions,
        [ConditionUpdate(COMPLETE, status_value, reason, message)],
        generation,
        rfc3339(now),
    )
    return status.model_copy(update={"conditions": conditions, "observed_generation": generation})


def _progress(status: RunStatus) -> str:
    done = sum(1 for level in status.levels if level.phase.done)
    recorded = sum(1 for level in status.levels if level.phase is LevelPhase.RECORDED)
    current = status.current_level
    where = ""
    if current is not None and current < len(status.levels):
        level = status.levels[current]
        where = f"; now {level.cap_watts} W ({level.phase})"
    return f"{done} of {len(status.levels)} level(s) done, {recorded} recorded{where}"


def _finish(
    status: RunStatus, now: float, generation: int | None, phase: RunPhase, reason: str, message: str
) -> RunStatus:
    levels = [
        level
        if level.phase.done
        else level.model_copy(
            update={"phase": LevelPhase.SKIPPED, "ended_at": rfc3339(now), "message": message}
        )
        for level in status.levels
    ]
    ended = status.model_copy(
        update={
            "phase": phase,
            "levels": levels,
            "current_level": None,
            "completion_time": rfc3339(now),
            "profile": measured_profile(levels, status.unit or "requests/s"),
        }
    )
    value = ConditionStatus.TRUE if phase is RunPhase.SUCCEEDED else ConditionStatus.FALSE
    return _with_condition(ended, generation, now, value, reason, message)


def _end_level(
    level: LevelStatus, now: float, phase: LevelPhase, message: str, **fields: object
) -> LevelStatus:
    return level.model_copy(update={"phase": phase, "ended_at": rfc3339(now), "message": message, **fields})


def _level_event(level: LevelStatus, unit: str) -> Event:
    if level.phase is LevelPhase.RECORDED:
        return Event(
            "Normal", "LevelRecorded", f"{level.cap_watts} W: {level.throughput:g} {unit}; {level.message}"
        )
    return Event("Normal", f"Level{level.phase}", f"{level.cap_watts} W: {level.message}")


def _judge(level: LevelStatus, reading: Reading, now: float, unit: str) -> LevelStatus:
    """A hold's reading: Recorded only when every saturation sample was above 0 (their lowest too)."""
    facts = {
        "throughput": None if reading.throughput is None else round(reading.throughput, 6),
        "observed_watts": None if reading.observed_watts is None else round(reading.observed_watts, 1),
        "samples": reading.samples,
        "saturated_samples": reading.saturated_samples,
        "saturation": reading.saturation,
    }
    if reading.samples <= 0 or reading.saturation is None:
        return _end_level(
            level, now, LevelPhase.UNSATURATED, "no saturation samples over the hold: left out", **facts
        )
    if reading.saturation <= 0 or reading.saturated_samples < reading.samples:
        return _end_level(
            level,
            now,
            LevelPhase.UNSATURATED,
            f"saturated in {min(reading.saturated_samples, reading.samples)} of {reading.samples} samples: "
            "the pod served the load it got, not what it can serve; left out",
            **facts,
        )
    if reading.throughput is None or not math.isfinite(reading.throughput) or reading.throughput < 0:
        return _end_level(
            level, now, LevelPhase.NO_DATA, "no throughput for the pod over the hold: left out", **facts
        )
    watts = f", {reading.observed_watts:.0f} W per GPU drawn" if reading.observed_watts is not None else ""
    return _end_level(
        level,
        now,
        LevelPhase.RECORDED,
        f"saturated in all {reading.samples} samples{watts}",
        **facts,
    )


def resumed(status: RunStatus) -> RunStatus:
    """A run picked up again (the operator restarted): the level it was in is measured again from its grant.

    Until the new process grants the pod its cap again, the budget may have put it
    back on the plan, so what was read of that level so far may be of another cap.
    """
    if status.phase is not RunPhase.RUNNING:
        return status
    levels = [
        level if level.phase.done else LevelStatus(cap_watts=level.cap_watts) for level in status.levels
    ]
    return status.model_copy(update={"levels": levels})


def advance(spec: RunSpec, status: RunStatus, generation: int | None, now: float, seen: Seen) -> Step:
    """One step of the sweep: the new status, the grant for the pod, and what the shell does next."""
    events: list[Event] = []
    if status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
        return Step(status, None, False, math.inf)
    if seen.stop is not None:
        ended = _finish(status, now, generation, RunPhase.FAILED, seen.stop.reason, seen.stop.message)
        return Step(ended, None, False, math.inf, (Event("Warning", seen.stop.reason, seen.stop.message),))
    if status.phase is RunPhase.PENDING:
        if seen.pod is None:
            message = (
                f"pod {spec.pod} not found among the target's running pods"
                if spec.pod
                else ("the target has no running pod whose GPUs its agent confirms")
            )
            ended = _finish(status, now, generation, RunPhase.FAILED, REASON_POD_NOT_FOUND, message)
            return Step(ended, None, False, math.inf, (Event("Warning", REASON_POD_NOT_FOUND, message),))
        status = status.model_copy(
            update={
                "phase": RunPhase.RUNNING,
                "pod": seen.pod.name,
                "node": seen.pod.node,
                "gpus": seen.gpus,
                "unit": seen.unit,
                "start_time": rfc3339(now),
                "levels": [LevelStatus(cap_watts=cap) for cap in spec.caps_watts],
                "current_level": 0,
            }
        )
        events.append(
            Event(
                "Normal",
                "MeasurementStarted",
                f"measuring pod {seen.pod.name} at {', '.join(f'{c} W' for c in spec.caps_watts)}",
            )
        )
    if seen.pod is None or seen.pod.name != status.pod:
        message = f"pod {status.pod} is gone: the measurement cannot go on"
        ended = _finish(status, now, generation, RunPhase.FAILED, REASON_POD_GONE, message)
        return Step(ended, None, False, math.inf, (*events, Event("Warning", REASON_POD_GONE, message)))
    pod = seen.pod
    unit = status.unit or seen.unit
    levels = list(status.levels)
    while True:
        index = next((i for i, level in enumerate(levels) if not level.phase.done), None)
        if index is None:
            status = status.model_copy(update={"levels": levels})
            recorded = [level for level in levels if level.phase is LevelPhase.RECORDED]
            curve = ", ".join(
                f"{level.cap_watts} W: {level.throughput:g}"
                for level in sorted(recorded, key=lambda lv: lv.cap_watts)
            )
            if recorded:
                message = f"{len(recorded)} of {len(levels)} level(s) recorded ({unit}): {curve}"
                ended = _finish(status, now, generation, RunPhase.SUCCEEDED, REASON_MEASURED, message)
                return Step(
                    ended, None, False, math.inf, (*events, Event("Normal", "MeasurementSucceeded", message))
                )
            message = f"none of the {len(levels)} level(s) could be recorded: see each level's message"
            ended = _finish(status, now, generation, RunPhase.FAILED, REASON_NOTHING_RECORDED, message)
            return Step(
                ended, None, False, math.inf, (*events, Event("Warning", REASON_NOTHING_RECORDED, message))
            )
        level = levels[index]
        status = status.model_copy(update={"current_level": index})
        grant = Grant(pod.name, level.cap_watts)
        wake = POLL_SECONDS
        read = False
        if level.phase is LevelPhase.PENDING:
            level = level.model_copy(update={"phase": LevelPhase.GRANTING, "granted_at": rfc3339(now)})
        verdict = seen.verdict
        if verdict is not None and verdict.cap_watts == level.cap_watts and not verdict.fits:
            # Refused when granted, or later (the budget was lowered): the pod is back on the plan.
            level = _end_level(level, now, LevelPhase.OVER_BUDGET, verdict.message)
        if level.phase is LevelPhase.GRANTING:
            granted_at = seconds_of(level.granted_at) or now
            if (
                pod.held_watts == level.cap_watts
                and verdict is not None
                and verdict.cap_watts == level.cap_watts
            ):
                level = level.model_copy(update={"phase": LevelPhase.SETTLING, "held_at": rfc3339(now)})
            elif now - granted_at >= CAP_TIMEOUT_SECONDS:
                held = "unconfirmed" if pod.held_watts is None else f"{pod.held_watts} W"
                level = _end_level(
                    level,
                    now,
                    LevelPhase.CAP_NOT_HELD,
                    f"the pod's GPUs did not hold {level.cap_watts} W within {CAP_TIMEOUT_SECONDS:g}s "
                    f"(they hold {held}): see the budget's EnforcementStalled condition",
                )
        if level.phase is LevelPhase.SETTLING:
            held_at = seconds_of(level.held_at) or now
            if now >= held_at + spec.settle_seconds:
                level = level.model_copy(
                    update={"phase": LevelPhase.HOLDING, "hold_started_at": rfc3339(now)}
                )
            else:
                wake = min(wake, held_at + spec.settle_seconds - now) if spec.settle_seconds else 0.0
                wake = max(wake, 0.0)
        if level.phase is LevelPhase.HOLDING:
            started = seconds_of(level.hold_started_at) or now
            ends = started + spec.hold_seconds
            if now < ends:
                wake = ends - now
            elif seen.reading is None:
                read = True
                wake = 0.0
            elif seen.reading.error is not None and now < ends + READ_RETRY_SECONDS:
                level = level.model_copy(
                    update={"message": f"reading failed, retrying: {seen.reading.error}"}
                )
                wake = 2.0
            elif seen.reading.error is not None:
                level = _end_level(
                    level, now, LevelPhase.NO_DATA, f"Prometheus could not be read: {seen.reading.error}"
                )
            else:
                level = _judge(level, seen.reading, now, unit)  # always a done phase: cleared below
        levels[index] = level
        if level.phase.done:
            events.append(_level_event(level, unit))
            seen = replace(seen, reading=None)
            continue
        status = status.model_copy(update={"levels": levels})
        status = _with_condition(
            status, generation, now, ConditionStatus.FALSE, REASON_MEASURING, _progress(status)
        )
        return Step(status, grant, read, wake, tuple(events))
