"""The imperative shell: kopf watches feed the indexes, one worker per budget reconciles it.

Every reconcile is level-triggered: it reads the budget from the watch cache,
each target's ``/scale``, and the pods from the pod index, computes the whole
desired state with :mod:`gpupower_operator.core.reconcile`, and applies the writes
step by step in the order that decision returns. A budget's worker wakes on a
change of its spec, on an event of a pod its targets select (or that carries its
annotation; pods come from :mod:`gpupower_operator.shell.podwatch`), and every
``resync_seconds``. Errors are logged, counted, and
retried with exponential backoff; since every step is safe on its own, a
reconcile cut short (error, restart) leaves the fleet within the budget and the
next one finishes it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from gpupower_api.contract import (
    BUDGET_ANNOTATION,
    POWER_CAPPED_CONDITION,
    POWER_LIMIT_ANNOTATION,
    held_watts_from_message,
)
from gpupower_api.models import GROUP, PLURAL, VERSION, BudgetSpec, BudgetStatus, InvalidSpecError, parse_spec
from gpupower_api.selectors import InvalidSelectorError, parse_selector
from gpupower_operator.adapters.kube import Cluster
from gpupower_operator.core import inventory, oversubscription, sweep
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core.planner import (
    Plan,
    Problem,
    budget_milliwatts,
    floor_watts,
    plan,
    problem_from_spec,
)
from gpupower_operator.shell import domains
from gpupower_operator.shell.index import BudgetKey, PodIndex, SelectorIndex
from gpupower_operator.shell.metrics import OperatorMetrics
from gpupower_operator.shell.profileruns import MeasurementBoard
from gpupower_operator.shell.signalsource import SignalSource

log = logging.getLogger("gpupower_operator")

BACKOFF_MIN_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 30.0
# How long a reconcile waits for the first listing of the Nodes (it never comes without RBAC for them).
NODE_SYNC_WAIT_SECONDS = 10.0
RECHECK_SLACK_SECONDS = 0.1


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def capped_report(status: Mapping[str, Any]) -> rc.CappedReport | None:
    """The agent's ``gpupower.dev/PowerCapped`` condition in a raw pod status, if any."""
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == POWER_CAPPED_CONDITION:
            message = str(condition.get("message") or "")
            return rc.CappedReport(
                status=condition.get("status") == "True",
                reason=str(condition.get("reason") or ""),
                held=held_watts_from_message(message),
                message=message,
            )
    return None


def pod_state(body: Mapping[str, Any]) -> rc.PodState:
    """The fields of a raw pod the operator decides on."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return rc.PodState(
        name=str(metadata.get("name", "")),
        labels=dict(metadata.get("labels") or {}),
        cap_annotation=annotations.get(POWER_LIMIT_ANNOTATION),
        budget_annotation=annotations.get(BUDGET_ANNOTATION),
        phase=str((body.get("status") or {}).get("phase") or "Pending"),
        deleting=metadata.get("deletionTimestamp") is not None,
        node_name=(body.get("spec") or {}).get("nodeName") or None,
        node_selector=dict((body.get("spec") or {}).get("nodeSelector") or {}),
        power_capped=capped_report(body.get("status") or {}),
        deletion_cost=annotations.get(rc.DELETION_COST_ANNOTATION),
        saved_deletion_cost=annotations.get(rc.SAVED_DELETION_COST_ANNOTATION),
    )


def _newly_guarded(before: rc.PodState | None, after: rc.PodState) -> bool:
    """Whether the pod's agent just reported the draw guard holding its GPUs (an engagement)."""

    return after.guarded and not (before is not None and before.guarded)


def _status_of(body: Mapping[str, Any]) -> BudgetStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return BudgetStatus.model_validate(raw)
    except ValidationError:
        return None


def _status_selectors(body: Mapping[str, Any]) -> list[str]:
    targets = (body.get("status") or {}).get("targets") or []
    return [str(t["selector"]) for t in targets if isinstance(t, dict) and t.get("selector")]


def _error_text(error: BaseException) -> str:
    """One line about an error: for API errors, the status and the server's own message."""
    if isinstance(error, ApiException):
        message = ""
        if isinstance(error.body, str | bytes):
            try:
                message = str(json.loads(error.body).get("message", ""))
            except (ValueError, AttributeError):
                message = ""
        return f"status={error.status} reason={error.reason!r} message={message!r}"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"


def _error_kind(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"api_{error.status}"
    if isinstance(error, aiohttp.ClientError | OSError):
        return "connection"
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


class Runtime:
    """The operator's state: watch caches, indexes, one wake-up per budget worker."""

    def __init__(
        self,
        cluster: Cluster,
        metrics: OperatorMetrics,
        resync_seconds: float,
        clock: Callable[[], str] = utc_now,
        max_concurrent_reconciles: int = 16,
        signals: SignalSource | None = None,
        enforcement_timeout_seconds: float = rc.DEFAULT_ENFORCEMENT_TIMEOUT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.pods = PodIndex()
        self.selectors = SelectorIndex()
        self.budgets: dict[BudgetKey, dict[str, Any]] = {}
        self.wakeups: dict[BudgetKey, asyncio.Event] = {}
        self.locks: dict[BudgetKey, asyncio.Lock] = {}
        self.pods_synced = asyncio.Event()
        # Nodes' GPU power limits (inventory labels), and which budgets planned with which nodes.
        self.nodes: dict[str, inventory.NodeInfo] = {}
        self.nodes_synced = asyncio.Event()
        self.node_users: dict[BudgetKey, frozenset[str]] = {}
        self.any_gpu_node_users: set[BudgetKey] = set()
        # A bound on reconciles in flight: at startup every budget wants one at once, and a herd of
        # half-done reconciles holds memory and makes each one slow.
        self._gate = asyncio.Semaphore(max_concurrent_reconciles)
        # The status this operator last wrote per budget: the newest truth, since it is the only writer,
        # even when the watch delivers an older copy of the object afterwards.
        self.written: dict[BudgetKey, BudgetStatus] = {}
        # Demand, observed power and corrections from Prometheus, for budgets that read it.
        self.signals = signals
        # Since when each budget's pods have been unconfirmed by their agents (this process's clock).
        self.enforcement_timeout_seconds = enforcement_timeout_seconds
        self.unconfirmed_since: dict[BudgetKey, dict[str, float]] = {}
        self.monotonic = monotonic
        # Pods whose agent reported the draw guard engaging (PowerCapped reason Guarded), not yet counted.
        self.guard_events: dict[tuple[str, str], int] = {}
        # The pods profile runs measure, and the budgets' answers to the caps they ask for.
        self.board = MeasurementBoard()
        # The power domains: their allocation, and each budget's grant (the watts it plans within).
        self.domain_runtime = domains.DomainRuntime(
            cluster,
            metrics,
            wake_budgets=self.wake,
            planned_watts=lambda key: self.written[key].planned_watts if key in self.written else None,
            clock=clock,
            resync_seconds=resync_seconds,
        )
        self._planned_within: dict[BudgetKey, int] = {}

    def wake(self, keys: set[BudgetKey] | list[BudgetKey]) -> None:
        for key in keys:
            event = self.wakeups.get(key)
            if event is not None:
                event.set()

    def _lock(self, key: BudgetKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    # -- watch events ------------------------------------------------------

    async def on_budget_event(self, event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        if event.get("type") == "DELETED":
            self.domain_runtime.forget_budget(key)
            self.budgets.pop(key, None)
            self.written.pop(key, None)
            self.unconfirmed_since.pop(key, None)
            self.selectors.remove(key)
            self.node_users.pop(key, None)
            self.any_gpu_node_users.discard(key)
            if self.signals is not None:
                self.signals.forget(*key)
            self.metrics.forget(*key)
            self.metrics.budgets.set(len(self.budgets))
            self.wake(self.selectors.budgets_in(key[0]))
            return
        before = self.budgets.get(key)
        current = copy.deepcopy(dict(body))
        self.budgets[key] = current
        self.metrics.budgets.set(len(self.budgets))
        if not self.selectors.known(key):
            self.selectors.set_selectors(key, _status_selectors(current))
        before_meta = (before or {}).get("metadata") or {}
        if (
            before is None
            or before_meta.get("generation") != metadata.get("generation")
            or before_meta.get("deletionTimestamp") != metadata.get("deletionTimestamp")
        ):
            self.wake([key])
        if before is not None and _status_selectors(before) != _status_selectors(current):
            # Selectors decide who owns shared pods: the budgets selecting the same pods look again.
            self.wake(self._sharing_pods_with(key, _status_selectors(before) + _status_selectors(current)))

    def _sharing_pods_with(self, key: BudgetKey, selectors: list[str]) -> set[BudgetKey]:
        """Other budgets with a target selecting a pod that one of ``selectors`` selects."""
        namespace = key[0]
        keys: set[BudgetKey] = set()
        for text in set(selectors):
            try:
                selector = parse_selector(text)
            except InvalidSelectorError:
                continue
            for pod in self.pods.selected(namespace, selector):
                keys |= self.selectors.budgets_for(namespace, pod.labels)
        return keys - {key}

    def on_pod(self, namespace: str, name: str, raw: Mapping[str, Any] | None) -> None:
        """A pod appeared, changed or went away: update the index and wake the budgets it concerns."""
        if raw is None:
            before = self.pods.remove(namespace, name)
            after = None
        else:
            after = pod_state(raw)
            before = self.pods.upsert(namespace, after)
            if before == after:
                return
            if _newly_guarded(before, after):
                self.guard_events[(namespace, name)] = self.guard_events.get((namespace, name), 0) + 1
        keys: set[BudgetKey] = set()
        for pod in (before, after):
            if pod is None:
                continue
            keys |= self.selectors.budgets_for(namespace, pod.labels)
            if pod.budget_annotation:
                keys.add((namespace, pod.budget_annotation))
        self.wake(keys)

    def on_node(self, _: str, name: str, raw: Mapping[str, Any] | None) -> None:
        """A Node appeared, changed or went away: wake the budgets whose cap ranges depend on it."""
        self.domain_runtime.on_node(name, raw)
        before = self.nodes.get(name)
        if raw is None:
            self.nodes.pop(name, None)
            after = None
        else:
            after = inventory.node_info(name, (raw.get("metadata") or {}).get("labels"))
            if after == before:
                return
            self.nodes[name] = after
        if after is not None and after.error is not None and (before is None or before.error != after.error):
            log.warning("node labels invalid node=%s error=%s", name, after.error)
        keys = {key for key, names in self.node_users.items() if name in names}
        if (before is not None and before.gpu_node) or (after is not None and after.gpu_node):
            keys |= self.any_gpu_node_users
        self.wake(keys)

    def _placements(
        self, namespace: str, workloads: Mapping[str, rc.WorkloadState | rc.WorkloadMissing]
    ) -> dict[str, inventory.Placement]:
        """Where each target's pods are: bound nodes, and the nodeSelectors of those still pending."""
        placements: dict[str, inventory.Placement] = {}
        for target, workload in workloads.items():
            if not isinstance(workload, rc.WorkloadState):
                continue
            pods = [pod for pod in self._workload_pods(namespace, workload) if pod.active]
            placements[target] = inventory.Placement(
                bound_nodes=frozenset(pod.node_name for pod in pods if pod.node_name),
                pending_selectors=tuple(pod.node_selector for pod in pods if not pod.node_name),
                pods=len(pods),
            )
        return placements

    def _workload_pods(self, namespace: str, workload: rc.WorkloadState) -> list[rc.PodState]:
        """The pods the workload's selector picks ([] for a selector that does not parse)."""
        try:
            selector = parse_selector(workload.selector)
        except InvalidSelectorError:
            return []
        return self.pods.selected(namespace, selector)

    # -- the worker --------------------------------------------------------

    async def budget_worker(self, namespace: str, name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        """Reconcile one budget whenever woken, every resync period, and after errors with backoff."""
        key = (namespace, name)
        wakeup = self.wakeups.setdefault(key, asyncio.Event())
        wakeup.set()
        delay_seconds = self.resync_seconds
        backoff_seconds = BACKOFF_MIN_SECONDS
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            # No decision on a half-filled pod index: wait for the pod watch's first listing.
            synced = asyncio.ensure_future(self.pods_synced.wait())
            await asyncio.wait({synced, stopping}, return_when=FIRST_COMPLETED)
            synced.cancel()
            # Nor on cap ranges from a half-read node list (bounded: without RBAC for Nodes it never comes).
            nodes = asyncio.ensure_future(self.nodes_synced.wait())
            await asyncio.wait({nodes, stopping}, timeout=NODE_SYNC_WAIT_SECONDS, return_when=FIRST_COMPLETED)
            nodes.cancel()
            while True:
                waking = asyncio.ensure_future(wakeup.wait())
                await asyncio.wait({waking, stopping}, timeout=delay_seconds, return_when=FIRST_COMPLETED)
                waking.cancel()
                if stopped:
                    return
                wakeup.clear()
                try:
                    outcome = await self.reconcile(key)
                except (ApiException, aiohttp.ClientError, OSError, TimeoutError, LookupError) as error:
                    kind = _error_kind(error)
                    self.metrics.errors.labels(kind).inc()
                    log.warning(
                        "reconcile failed budget=%s/%s error_kind=%s retry_in_seconds=%.1f error=%s",
                        namespace,
                        name,
                        kind,
                        backoff_seconds,
                        _error_text(error),
                    )
                    delay_seconds = backoff_seconds
                    backoff_seconds = min(backoff_seconds * 2, BACKOFF_MAX_SECONDS)
                else:
                    delay_seconds = self.resync_seconds
                    if outcome is not None and outcome.recheck_seconds is not None:
                        # A pod may stall: look again when its wait runs out, to say so on time.
                        delay_seconds = min(delay_seconds, outcome.recheck_seconds + RECHECK_SLACK_SECONDS)
                    backoff_seconds = BACKOFF_MIN_SECONDS
        finally:
            stopping.cancel()
            if self.wakeups.get(key) is wakeup:
                del self.wakeups[key]

    async def reconcile(self, key: BudgetKey) -> rc.Outcome | None:
        async with self._gate, self._lock(key):
            body = self.budgets.get(key)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return None
            started = time.monotonic()
            self._planned_within.pop(key, None)
            outcome = await self._decide(key, body)
            await self._apply(key, body, outcome)
            planned_within = self._planned_within.pop(key, None)
            if planned_within is not None:
                self.domain_runtime.completed(key, planned_within)
            now = self.monotonic()
            since = self.unconfirmed_since.get(key, {})
            self.unconfirmed_since[key] = {name: since.get(name, now) for name in outcome.unconfirmed}
            if any(not isinstance(write, rc.WriteStatus) for write in outcome.writes):
                # The status went out before the last writes landed: look again to record them.
                self.wake([key])
            self.metrics.record_status(key[0], key[1], outcome.status)
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            return outcome

    async def _decide(self, key: BudgetKey, body: Mapping[str, Any]) -> rc.Outcome:
        namespace, name = key
        metadata = body.get("metadata") or {}
        ref = rc.BudgetRef(
            name=name,
            namespace=namespace,
            created=str(metadata.get("creationTimestamp", "")),
            generation=metadata.get("generation"),
        )
        old_status = self.written.get(key) or _status_of(body)
        now = self.clock()
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpecError as error:
            log.warning("invalid spec budget=%s/%s field=%s error=%s", namespace, name, error.field, error)
            self.metrics.errors.labels("invalid_spec").inc()
            return rc.reconcile_invalid(ref, old_status, error, now)

        reads = await asyncio.gather(
            *(self.cluster.read_scale(namespace, t.workload_ref) for t in spec.targets)
        )
        workloads = {target.name: state for target, state in zip(spec.targets, reads, strict=True)}
        resolved = [w.selector for w in workloads.values() if isinstance(w, rc.WorkloadState)]
        if self.selectors.set_selectors(key, resolved):
            log.info("selectors budget=%s/%s selectors=%s", namespace, name, ";".join(resolved))

        placements = self._placements(namespace, workloads)
        ranges = [
            inventory.effective_range(t, placements.get(t.name, inventory.Placement()), self.nodes)
            for t in spec.targets
        ]
        self.node_users[key] = frozenset(name for r in ranges for name in r.considered)
        if any(r.candidates for r in ranges):
            self.any_gpu_node_users.add(key)
        else:
            self.any_gpu_node_users.discard(key)
        empty = inventory.empty_range_message(ranges)
        if empty is not None:
            log.warning("cap range empty budget=%s/%s message=%s", namespace, name, empty)
            return rc.reconcile_plan_failed(
                ref, old_status, empty, now, inventory.REASON_CAP_RANGE_EMPTY, inventory.conditions(ranges)
            )
        signals = (
            await self.signals.signals(namespace, name, spec, old_status)
            if self.signals is not None
            else None
        )
        corrections = dict(signals.corrections()) if signals is not None else {}
        guard_memory = self._guard_memory(key, spec, workloads, old_status, corrections, now)
        for target_name, memory in guard_memory.items():
            power, throughput = corrections.get(target_name, (1.0, 1.0))
            corrections[target_name] = (oversubscription.floored(power, memory), throughput)
        domain: rc.DomainContext | None = None
        try:
            problem = problem_from_spec(
                spec,
                cap_ranges=inventory.cap_ranges(ranges),
                demand=signals.demand() if signals is not None else None,
                corrections=corrections or None,
                gpu_min_watts={r.target: r.node_min_watts for r in ranges if r.node_min_watts is not None},
                # In a domain the watts come from its allocation (below), not from totalWatts.
                total_watts=1.0 if spec.domain_ref is not None else None,
            )
            if spec.domain_ref is not None:
                problem, domain = await self._domain_share(key, spec, problem, old_status)
            else:
                self.domain_runtime.forget_budget(key)
            the_plan = plan(problem)
            the_plan, measurements = self._plan_around_measurements(key, problem, the_plan)
        except (ValueError, ArithmeticError) as error:
            log.warning("plan failed budget=%s/%s error=%s", namespace, name, error)
            self.metrics.errors.labels("plan_failed").inc()
            return rc.reconcile_plan_failed(ref, old_status, f"the planner refused the spec: {error}", now)
        cap_error = rc.cap_error(spec, the_plan)
        if cap_error is not None:
            return rc.reconcile_invalid(ref, old_status, cap_error, now)

        pods: dict[str, rc.PodState] = {}
        for text in self.selectors.selectors_of(key):
            for pod in self.pods.selected(namespace, parse_selector(text)):
                pods[pod.name] = pod
        for pod in self.pods.annotated_by(namespace, name):
            pods[pod.name] = pod
        others: list[rc.OtherBudget] = []
        neighbours: set[BudgetKey] = set()
        for pod in pods.values():
            neighbours |= self.selectors.budgets_for(namespace, pod.labels)
        for other in sorted(neighbours - {key}):
            other_body = self.budgets.get(other)
            if other_body is None:
                continue
            other_meta = other_body.get("metadata") or {}
            if other_meta.get("deletionTimestamp"):
                continue
            others.append(
                rc.OtherBudget(
                    name=other[1],
                    created=str(other_meta.get("creationTimestamp", "")),
                    selectors=self.selectors.selectors_of(other),
                )
            )
        waiting_since = self.unconfirmed_since.get(key, {})
        clock = self.monotonic()
        observed = rc.Observed(
            budget=ref,
            spec=spec,
            old_status=old_status,
            workloads=workloads,
            pods=list(pods.values()),
            others=others,
            cap_ranges=ranges,
            signals=signals,
            node_max_watts={
                n: info.max_watts for n, info in self.nodes.items() if info.max_watts is not None
            },
            unconfirmed_seconds={pod: clock - since for pod, since in waiting_since.items()},
            enforcement_timeout_seconds=self.enforcement_timeout_seconds,
            guard_memory=guard_memory,
            measurements=measurements,
            domain=domain,
        )
        outcome = rc.reconcile(observed, the_plan, now)
        if domain is not None:
            # Once these writes are applied, the budget acts on this grant only (and older ones are over).
            self._planned_within[key] = budget_milliwatts(the_plan.budget_watts)
        if spec.prometheus is not None:
            # Prometheus is read inside a reconcile: read it (and plan) every intervalSeconds, not only on
            # events and resyncs.
            interval = float(spec.prometheus.interval_seconds)
            soonest = interval if outcome.recheck_seconds is None else min(outcome.recheck_seconds, interval)
            outcome = replace(outcome, recheck_seconds=soonest)
        return outcome

    async def _domain_share(
        self, key: BudgetKey, spec: BudgetSpec, problem: Problem, old_status: BudgetStatus | None
    ) -> tuple[Problem, rc.DomainContext]:
        """The problem within the budget's grant from its domain, and the share for its status.

        Without an answer in time, or in a frozen tree that has never allocated it, the budget plans
        within what it planned within last (its floor the first time): nothing moves until it knows.
        """
        share = await self.domain_runtime.share(key, spec, problem, old_status)
        if share is not None and share.grant_milliwatts is not None:
            milliwatts = share.grant_milliwatts
        else:
            milliwatts = budget_milliwatts(domains.fallback_watts(old_status, floor_watts(problem)))
        context = domains.budget_context(share, spec) if share is not None else domains.waiting_context(spec)
        self.domain_runtime.taken(key, milliwatts)
        return replace(problem, total_watts=max(milliwatts, 1) / 1000), context

    def _guard_memory(
        self,
        key: BudgetKey,
        spec: BudgetSpec,
        workloads: Mapping[str, rc.WorkloadState | rc.WorkloadMissing],
        old_status: BudgetStatus | None,
        corrections: Mapping[str, tuple[float, float]],
        now: str,
    ) -> dict[str, oversubscription.GuardMemory]:
        """Each target's draw-guard record, with the engagements seen on its pods since the last reconcile."""
        if spec.oversubscription is None:
            return {}
        namespace = key[0]
        memory: dict[str, oversubscription.GuardMemory] = {}
        for target in spec.targets:
            workload = workloads.get(target.name)
            engaged = 0
            if isinstance(workload, rc.WorkloadState):
                for pod in self._workload_pods(namespace, workload):
                    engaged += self.guard_events.pop((namespace, pod.name), 0)
            before = oversubscription.remembered(old_status.target(target.name) if old_status else None)
            factor = corrections.get(target.name, (1.0, 1.0))[0]
            memory[target.name] = oversubscription.next_memory(
                before, engaged, factor, now, spec.oversubscription.relax_seconds
            )
            if engaged:
                log.info(
                    "guard engaged budget=%s/%s target=%s pods=%d power_factor_floor=%s",
                    namespace,
                    key[1],
                    target.name,
                    engaged,
                    memory[target.name].floor,
                )
        return memory

    def _plan_around_measurements(
        self, key: BudgetKey, problem: Problem, the_plan: Plan
    ) -> tuple[Plan, dict[str, rc.MeasuredPod]]:
        """The plan around the pod a profile run measures when the budget can hold its cap, else the plan."""
        measurements: dict[str, rc.MeasuredPod] = {}
        # One run measures a budget at a time (the board sees to it), so one reservation at most.
        for target, measured in self.board.requested(key).items():
            reservation = sweep.Reservation(target, measured.cap_watts)
            around = sweep.plan_around(problem, reservation) if the_plan.feasible else None
            message = "" if around is not None else sweep.over_budget_message(problem, reservation)
            self.board.answer(key, target, sweep.Verdict(measured.cap_watts, around is not None, message))
            if around is not None:
                the_plan = around
                measurements[target] = measured
        return the_plan, measurements

    async def _apply(self, key: BudgetKey, body: dict[str, Any], outcome: rc.Outcome) -> None:
        namespace, name = key
        for step in outcome.steps:
            await asyncio.gather(*(self._write(key, body, write) for write in step))
        for event in outcome.events:
            kopf.event(
                kopf.Body(cast(kopf.RawBody, body)),
                type=event.type,
                reason=event.reason,
                message=event.message,
            )
            log.info("event budget=%s/%s reason=%s message=%s", namespace, name, event.reason, event.message)

    async def _write(self, key: BudgetKey, body: dict[str, Any], write: rc.Write) -> None:
        namespace, name = key
        if isinstance(write, rc.AnnotatePod | rc.ReleasePod):
            found = await self.cluster.patch_pod_annotations(namespace, write.pod, write.annotations())
            kind = "pod" if isinstance(write, rc.AnnotatePod) else "release"
            self.metrics.writes.labels(kind).inc()
            cached = self.pods.get(namespace, write.pod)
            if found and cached is not None:
                if isinstance(write, rc.AnnotatePod):
                    cap = write.annotations()[POWER_LIMIT_ANNOTATION]
                    self.pods.upsert(namespace, replace(cached, cap_annotation=cap, budget_annotation=name))
                else:
                    released = replace(cached, cap_annotation=None, budget_annotation=None)
                    if write.restore_deletion_cost is not None:
                        released = replace(
                            released,
                            deletion_cost=write.restore_deletion_cost or None,
                            saved_deletion_cost=None,
                        )
                    self.pods.upsert(namespace, released)
            if isinstance(write, rc.AnnotatePod):
                log.info(
                    "pod cap budget=%s/%s pod=%s target=%s from_watts=%s to_watts=%d",
                    namespace,
                    name,
                    write.pod,
                    write.target,
                    write.previous_cap_watts,
                    write.cap_watts,
                )
            else:
                log.info("pod released budget=%s/%s pod=%s", namespace, name, write.pod)
        elif isinstance(write, rc.ProtectPod):
            changes = write.annotations()
            found = await self.cluster.patch_pod_annotations(namespace, write.pod, changes)
            self.metrics.writes.labels("pod").inc()
            cached = self.pods.get(namespace, write.pod)
            if found and cached is not None:
                cost, saved = changes[rc.DELETION_COST_ANNOTATION], changes[rc.SAVED_DELETION_COST_ANNOTATION]
                self.pods.upsert(namespace, replace(cached, deletion_cost=cost, saved_deletion_cost=saved))
            log.info(
                "pod deletion cost budget=%s/%s pod=%s %s",
                namespace,
                name,
                write.pod,
                f"set to {rc.MEASURED_DELETION_COST} while it is measured (saved {write.saved or 'none'})"
                if write.protect
                else f"restored to {write.saved or 'none'}",
            )
        elif isinstance(write, rc.ScaleWorkload):
            await self.cluster.patch_scale(namespace, write.workload, write.to_replicas)
            self.metrics.writes.labels("scale").inc()
            log.info(
                "scaled budget=%s/%s target=%s workload=%s/%s from_replicas=%d to_replicas=%d",
                namespace,
                name,
                write.target,
                write.workload.kind,
                write.workload.name,
                write.from_replicas,
                write.to_replicas,
            )
        else:
            patch = write.status.model_dump(by_alias=True, mode="json")
            stored = await self.cluster.patch_budget_status(namespace, name, patch)
            self.metrics.writes.labels("status").inc()
            self.written[key] = write.status
            if "status" in stored:
                body["status"] = stored["status"]
            ready = write.status.condition("Ready")
            log.info(
                "status budget=%s/%s planned_watts=%s budget_watts=%s replicas=%s ready=%s reason=%s",
                namespace,
                name,
                write.status.planned_watts,
                write.status.budget_watts,
                write.status.replicas,
                ready.status if ready else None,
                ready.reason if ready else None,
            )

    # -- deletion ----------------------------------------------------------

    async def on_budget_delete(self, namespace: str, name: str, **_: Any) -> None:
        """Remove the annotations the budget wrote (agents then restore defaults); leave replicas alone."""
        key = (namespace, name)
        async with self._lock(key):
            for write in rc.release_writes(name, self.pods.annotated_by(namespace, name)):
                await self._write(key, {}, write)
        self.budgets.pop(key, None)
        self.written.pop(key, None)
        self.unconfirmed_since.pop(key, None)
        self.selectors.remove(key)
        self.domain_runtime.forget_budget(key)
        self.metrics.forget(namespace, name)
        log.info("budget deleted budget=%s/%s", namespace, name)


def register(
    registry: kopf.OperatorRegistry,
    runtime: Runtime,
    login: Callable[..., Awaitable[kopf.ConnectionInfo]],
) -> None:
    """Register every handler explicitly on ``registry``."""
    kopf.on.login(registry=registry)(login)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(runtime.on_budget_event)
    kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        id="reconcile",
        cancellation_backoff=2.0,
        cancellation_timeout=5.0,
    )(runtime.budget_worker)  # type: ignore[arg-type]  # kopf passes every kwarg by name
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="release-pods", backoff=1.0)(
        runtime.on_budget_delete  # type: ignore[arg-type]
    )
