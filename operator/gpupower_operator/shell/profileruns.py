"""The shell of GpuPowerProfileRun: one kopf daemon per run steps its sweep and grants its pod's cap.

Each tick the daemon gathers what the sweep decides on — the run's spec, its
budget and target from the budget watch, the measured pod from the pod index
(what its agent reports its GPUs hold), the budget's answer to the cap it asks
for, and, at the end of a hold, Prometheus — calls :func:`sweep.advance`, puts
the grant on the :class:`MeasurementBoard` (the budget's next reconcile plans
around it and moves the pod there in its safe order), writes the run's status
when it changed and posts its events.

Deleting the run stops its daemon (kopf's finalizer waits for it): the grant
leaves the board and the budget is woken at once, so its next plan puts the
pod back on the plan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_api.contract import PowerCappedReason
from gpupower_api.models import (
    GROUP,
    VERSION,
    BudgetSpec,
    InvalidSpecError,
    Mode,
    PrometheusSpec,
    Target,
    parse_spec,
)
from gpupower_api.profilerun import RUN_PLURAL, RunPhase, RunSpec, RunStatus, parse_run_spec, parse_run_status
from gpupower_api.selectors import InvalidSelectorError, parse_selector
from gpupower_operator.adapters.kube import MERGE_PATCH
from gpupower_operator.adapters.prometheus import MetricsReader, PrometheusError, single_value
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core import sweep
from gpupower_operator.core.signals import NoSignal
from gpupower_operator.shell.index import PodIndex
from gpupower_operator.shell.signalsource import SecretError, SignalSource

log = logging.getLogger("gpupower_operator")

BudgetKey = tuple[str, str]
MIN_TICK_SECONDS = 0.2
MAX_TICK_SECONDS = 2.0

REASON_INVALID_SPEC = "InvalidSpec"
REASON_BUDGET_NOT_FOUND = "BudgetNotFound"
REASON_ADVISORY = "AdvisoryBudget"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_NO_PROMETHEUS = "NoPrometheus"
REASON_NO_QUERY = "NoQuery"
REASON_BUDGET_BUSY = "BudgetBusy"


@dataclass
class MeasurementBoard:
    """Which pod each budget's target has granted to a profile run, and the budget's answer to it.

    Written by the run daemons (requests) and the budget reconciles (verdicts);
    read by both. One run per budget at a time.
    """

    _requests: dict[BudgetKey, dict[str, rc.MeasuredPod]] = field(default_factory=dict)
    _verdicts: dict[tuple[BudgetKey, str, str], sweep.Verdict] = field(default_factory=dict)

    def holder(self, budget: BudgetKey) -> str | None:
        """The run measuring the budget now, if any."""
        return next((m.run for m in self._requests.get(budget, {}).values()), None)

    def request(self, budget: BudgetKey, target: str, measured: rc.MeasuredPod) -> bool:
        """Ask the budget to plan around ``measured``; True when that changed the request."""
        targets = self._requests.setdefault(budget, {})
        if targets.get(target) == measured:
            return False
        targets.clear()
        targets[target] = measured
        return True

    def release(self, budget: BudgetKey, run: str) -> bool:
        """End the run's request; True when there was one."""
        targets = self._requests.get(budget, {})
        mine = [name for name, m in targets.items() if m.run == run]
        for name in mine:
            del targets[name]
            self._verdicts.pop((budget, name, run), None)
        if not targets:
            self._requests.pop(budget, None)
        return bool(mine)

    def requested(self, budget: BudgetKey) -> dict[str, rc.MeasuredPod]:
        return dict(self._requests.get(budget, {}))

    def answer(self, budget: BudgetKey, target: str, verdict: sweep.Verdict) -> None:
        measured = self._requests.get(budget, {}).get(target)
        if measured is not None:
            self._verdicts[(budget, target, measured.run)] = verdict

    def verdict(self, budget: BudgetKey, target: str, run: str) -> sweep.Verdict | None:
        return self._verdicts.get((budget, target, run))


def read_level(reader: MetricsReader, queries: sweep.LevelQueries) -> sweep.Reading:
    """The hold's figures from Prometheus (blocking); a failed query gives a reading with the error."""

    def value(query: str) -> float | None:
        found = single_value(reader.vector(query), query)
        return None if isinstance(found, NoSignal) else found

    try:
        samples = value(queries.samples)
        saturated = value(queries.saturated_samples)
        return sweep.Reading(
            throughput=value(queries.throughput),
            observed_watts=value(queries.power_watts),
            samples=round(samples or 0),
            saturated_samples=round(saturated or 0),
            saturation=value(queries.saturation_min),
        )
    except PrometheusError as error:
        return sweep.Reading(error=str(error))


@dataclass(frozen=True)
class _Context:
    """What one tick found of the run's budget and target (or why it cannot go on)."""

    budget_key: BudgetKey
    spec: BudgetSpec | None = None
    target: Target | None = None
    selector: str | None = None
    stop: sweep.Stop | None = None
    holder: str | None = None  # the run measuring the budget now


class BudgetWorkers(Protocol):
    """What the run daemons need of the budget workers beside them (the budgets' shell)."""

    @property
    def budgets(self) -> Mapping[BudgetKey, Mapping[str, Any]]: ...

    @property
    def board(self) -> MeasurementBoard: ...

    @property
    def pods(self) -> PodIndex: ...

    @property
    def signals(self) -> SignalSource | None: ...

    @property
    def pods_synced(self) -> asyncio.Event: ...

    def wake(self, keys: set[BudgetKey] | list[BudgetKey]) -> None: ...


class Measurements:
    """The run daemons, beside the budget workers of ``runtime``."""

    def __init__(
        self, runtime: BudgetWorkers, api: client.ApiClient | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.runtime = runtime
        self.api = api
        self.clock = clock

    def _context(self, namespace: str, spec: RunSpec) -> _Context:
        key = (namespace, spec.budget)
        body = self.runtime.budgets.get(key)
        if body is None:
            return _Context(
                key, stop=sweep.Stop(REASON_BUDGET_NOT_FOUND, f"budget {namespace}/{spec.budget} not found")
            )
        try:
            budget = parse_spec(body.get("spec") or {})
        except InvalidSpecError as error:
            return _Context(key, stop=sweep.Stop(REASON_BUDGET_NOT_FOUND, f"budget {spec.budget}: {error}"))
        if budget.mode is Mode.ADVISORY:
            return _Context(
                key,
                stop=sweep.Stop(
                    REASON_ADVISORY,
                    f"budget {spec.budget} is Advisory: nothing is enforced under it, so no cap can be "
                    "granted to measure; measure under an Enforce budget",
                ),
            )
        target = next((t for t in budget.targets if t.name == spec.target), None)
        if target is None:
            names = ", ".join(t.name for t in budget.targets)
            return _Context(
                key,
                stop=sweep.Stop(
                    REASON_TARGET_NOT_FOUND,
                    f"spec.target: budget {spec.budget} has no target {spec.target!r} (targets: {names})",
                ),
            )
        status_targets = (body.get("status") or {}).get("targets") or []
        selector = next(
            (
                str(t.get("selector"))
                for t in status_targets
                if isinstance(t, dict) and t.get("name") == target.name and t.get("selector")
            ),
            None,
        )
        return _Context(key, budget, target, selector, holder=self.runtime.board.holder(key))

    def _pod(
        self, namespace: str, spec: RunSpec, status: RunStatus, context: _Context
    ) -> sweep.PodSeen | None:
        """The measured pod: the one the status names, else the one the spec names, else one picked."""
        pods = self.runtime.pods
        wanted = status.pod or spec.pod
        if wanted is not None:
            found = pods.get(namespace, wanted)
            candidates = [found] if found is not None else []
        elif context.selector is not None:
            try:
                selector = parse_selector(context.selector)
            except InvalidSelectorError:
                return None
            candidates = sorted(pods.selected(namespace, selector), key=lambda p: p.name)
        else:
            return None
        for pod in candidates:
            report = pod.power_capped
            held = (
                report.held.max_watts
                if report is not None and report.status and report.held is not None
                else None
            )
            if status.pod is None and (pod.phase != "Running" or held is None):
                continue  # start on a running pod whose agent reports on it
            if not pod.active or pod.node_name is None:
                continue
            if report is not None and report.reason == PowerCappedReason.AWAITING_DEVICES:
                held = None
            return sweep.PodSeen(pod.name, pod.node_name, held)
        return None

    async def _reader(self, namespace: str, budget: BudgetSpec) -> MetricsReader | sweep.Stop:
        signals = self.runtime.signals
        if signals is None:
            return sweep.Stop(REASON_NO_PROMETHEUS, "the operator reads no Prometheus")
        try:
            reader = await signals.reader(namespace, budget)
        except SecretError as error:
            return sweep.Stop(REASON_NO_PROMETHEUS, f"Prometheus for budget: {error}")
        if reader is None:
            return sweep.Stop(
                REASON_NO_PROMETHEUS,
                "neither the budget's spec.prometheus.url nor the operator's --prometheus-url is set: "
                "a sweep reads the pod's throughput from Prometheus",
            )
        return reader

    async def tick(
        self, namespace: str, name: str, raw_spec: Any, generation: int | None, status: RunStatus
    ) -> tuple[sweep.Step, tuple[BudgetKey, str] | None]:
        """One step of a run's sweep, with Prometheus read when the sweep asks for it."""
        now = self.clock()
        try:
            spec = parse_run_spec(dict(raw_spec or {}))
        except InvalidSpecError as error:
            invalid = sweep.Seen(None, stop=sweep.Stop(REASON_INVALID_SPEC, str(error)))
            placeholder = RunSpec(budget="-", target="-", caps_watts=[1])
            return sweep.advance(placeholder, status, generation, now, invalid), None
        context = self._context(namespace, spec)
        stop = context.stop
        if stop is None and context.holder not in (None, name):
            stop = sweep.Stop(
                REASON_BUDGET_BUSY, f"run {context.holder} is measuring budget {spec.budget}: one at a time"
            )
        queries: sweep.LevelQueries | None = None
        reader: MetricsReader | None = None
        pod: sweep.PodSeen | None = None
        if stop is None and context.spec is not None and context.target is not None:
            found = await self._reader(namespace, context.spec)
            if isinstance(found, sweep.Stop):
                stop = found
            else:
                reader = found
                pod = self._pod(namespace, spec, status, context)
                if pod is not None:
                    try:
                        prometheus = context.spec.prometheus or PrometheusSpec()
                        queries = sweep.level_queries(spec, context.target, namespace, pod.name, prometheus)
                    except sweep.QueryError as error:
                        stop = sweep.Stop(REASON_NO_QUERY, str(error))
        target = context.target
        verdict = self.runtime.board.verdict(context.budget_key, spec.target, name)
        seen = sweep.Seen(
            pod=pod,
            gpus=target.gpus_per_replica if target is not None else 1,
            unit=target.profile.unit if target is not None else "requests/s",
            verdict=verdict,
            stop=stop,
        )
        step = sweep.advance(spec, status, generation, now, seen)
        if step.read and reader is not None and queries is not None:
            reading = await asyncio.to_thread(read_level, reader, queries)
            step = sweep.advance(
                spec,
                step.status,
                generation,
                self.clock(),
                sweep.Seen(pod, seen.gpus, seen.unit, verdict, reading),
            )
        return step, (context.budget_key, spec.target)

    async def run_worker(
        self, namespace: str, name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        """Step one run's sweep until it ends or the run is deleted; release its pod either way."""
        await self.runtime.pods_synced.wait()
        status = sweep.resumed(parse_run_status(dict(body.get("status") or {})))
        granted: BudgetKey | None = None
        try:
            while not stopped:
                metadata = body.get("metadata") or {}
                try:
                    step, key = await self.tick(
                        namespace, name, body.get("spec"), metadata.get("generation"), status
                    )
                except (ValueError, ArithmeticError) as error:
                    log.warning("profile run step failed run=%s/%s error=%s", namespace, name, error)
                    await stopped.wait(MAX_TICK_SECONDS)
                    continue
                if key is not None:
                    granted = self._grant(key[0], key[1], name, step.grant, granted)
                if step.status != status:
                    try:
                        await self._patch_status(namespace, name, step.status)
                    except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                        log.warning("profile run status failed run=%s/%s error=%s", namespace, name, error)
                        await stopped.wait(MAX_TICK_SECONDS)
                        continue
                    self._log_change(namespace, name, status, step.status)
                    status = step.status
                for event in step.events:
                    kopf.event(body, type=event.type, reason=event.reason, message=event.message)
                if status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
                    break
                await stopped.wait(min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, step.wake_seconds)))
        finally:
            if granted is not None and self.runtime.board.release(granted, name):
                log.info("profile run released run=%s/%s budget=%s/%s", namespace, name, *granted)
                self.runtime.wake([granted])
        if status.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED):
            await stopped.wait()  # a finished run keeps its status; nothing more to do until it is deleted

    def _grant(
        self, key: BudgetKey, target: str, run: str, grant: sweep.Grant | None, granted: BudgetKey | None
    ) -> BudgetKey | None:
        """Put the sweep's grant on the board (or take it off), waking the budget when that changed."""
        board = self.runtime.board
        if grant is None:
            if granted is not None and board.release(granted, run):
                self.runtime.wake([granted])
            return None
        if board.request(key, target, rc.MeasuredPod(grant.pod, grant.cap_watts, run)):
            log.info(
                "profile run grant run=%s budget=%s/%s pod=%s cap_watts=%d",
                run,
                *key,
                grant.pod,
                grant.cap_watts,
            )
            self.runtime.wake([key])
        return key

    async def _patch_status(self, namespace: str, name: str, status: RunStatus) -> None:
        if self.api is None:
            return
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RUN_PLURAL}/{name}/status"
        body = {"status": status.model_dump(by_alias=True, exclude_none=True, mode="json")}
        await self.api.call_api(
            path,
            "PATCH",
            header_params={"Accept": "application/json", "Content-Type": MERGE_PATCH},
            body=body,
            response_types_map={200: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

    @staticmethod
    def _log_change(namespace: str, name: str, before: RunStatus, after: RunStatus) -> None:
        level = (
            after.levels[after.current_level]
            if after.current_level is not None and after.current_level < len(after.levels)
            else None
        )
        old = (
            before.levels[before.current_level]
            if before.current_level is not None and before.current_level < len(before.levels)
            else None
        )
        if before.phase != after.phase or (
            level is not None
            and (old is None or (old.cap_watts, old.phase) != (level.cap_watts, level.phase))
        ):
            log.info(
                "profile run run=%s/%s phase=%s pod=%s level_watts=%s level_phase=%s",
                namespace,
                name,
                after.phase,
                after.pod,
                level.cap_watts if level is not None else None,
                level.phase if level is not None else None,
            )


def register(registry: kopf.OperatorRegistry, measurements: Measurements) -> None:
    """Register the run daemon explicitly on ``registry``."""
    kopf.daemon(
        GROUP,
        VERSION,
        RUN_PLURAL,
        registry=registry,
        id="measure",
        cancellation_backoff=0.0,
        cancellation_timeout=5.0,
    )(measurements.run_worker)  # type: ignore[arg-type]  # kopf passes every kwarg by name


__all__ = ["MeasurementBoard", "Measurements", "read_level", "register"]
