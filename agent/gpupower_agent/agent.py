"""The agent's imperative shell: gather pods, budgets, GPU mapping and limits; apply the decisions.

Level-triggered: every reconcile computes every GPU's limit from what is observed
now, so a missed event or a restart never leaves a GPU wrong for long. Fail-safe:
an unreadable API or mapping keeps the last caps; NVML errors are counted and
retried with backoff per GPU. Each reconcile also says, per managed pod, what its
GPUs hold once the decisions are applied (the PowerCapped condition, read back
from NVML), and which pods ask for GPUs the mapping does not show yet, so the
loop can look again soon (the kubelet allocates a pod's devices after the agent
first sees the pod).

On a node in a power domain (its place, from the domains and the Node's labels)
the decisions park idle GPUs and cap unmanaged pods' GPUs (see ``policy``), and
each reconcile also sums what every GPU holds by who holds it, read back from
NVML (see ``held``), for the Node's ``gpupower.dev/gpu-power-held`` annotation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpupower_agent import guard
from gpupower_agent.cluster import BudgetView, PodKey, PodView
from gpupower_agent.held import IDLE, UNMANAGED, HeldGpu, gpu_holder, node_held
from gpupower_agent.mapping import Assignments, GpuMapping, MappingError, resolve, unseen_holders
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import Gpu, NvmlError, PowerControl
from gpupower_agent.policy import (
    NO_OTHERS,
    Action,
    GpuDecision,
    GpuSnapshot,
    NodePlan,
    OtherHolders,
    Reason,
    guarded,
    plan_node,
)
from gpupower_agent.powercapped import PodCondition, awaiting_devices, pod_conditions
from gpupower_agent.state import CorruptStateError, load_state, save_state
from gpupower_agent.trust import BudgetIndex, PodCap, Verdict, pod_cap
from gpupower_api.contract import NodeHeld
from gpupower_api.domains import NodePlace

log = logging.getLogger(__name__)

RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Retry:
    failures: int
    next_attempt: float


def next_retry(previous: Retry | None, now: float) -> Retry:
    """Exponential backoff per GPU: 0.5 s, 1 s, 2 s ... up to a minute."""
    failures = 1 if previous is None else previous.failures + 1
    delay = min(RETRY_MIN_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
    return Retry(failures, now + delay)


class TrustCache:
    """The trust rule's answers, reused for pods whose view is the very object seen last time.

    The informers replace a view only when the object changed, and any change of
    the budgets drops the whole cache, so an answer is never stale.
    """

    def __init__(self, agent_default_watts: int) -> None:
        self._agent_default_watts = agent_default_watts
        self._budgets: tuple[BudgetView, ...] = ()
        self._index = BudgetIndex.build(())
        self._entries: dict[PodKey, tuple[PodView, PodCap | None]] = {}

    def caps(self, pods: Iterable[PodView], budgets: Iterable[BudgetView]) -> dict[PodKey, PodCap]:
        current = tuple(budgets)
        if len(current) != len(self._budgets) or any(
            a is not b for a, b in zip(current, self._budgets, strict=True)
        ):
            self._budgets = current
            self._index = BudgetIndex.build(current)
            self._entries = {}
        entries: dict[PodKey, tuple[PodView, PodCap | None]] = {}
        caps: dict[PodKey, PodCap] = {}
        for pod in pods:
            if pod.finished:
                continue
            entry = self._entries.get(pod.key)
            cap = (
                entry[1]
                if entry is not None and entry[0] is pod
                else pod_cap(pod, self._index, self._agent_default_watts)
            )
            entries[pod.key] = (pod, cap)
            if cap is not None:
                caps[pod.key] = cap
        self._entries = entries
        return caps


@dataclass(frozen=True)
class Reconciled:
    """One reconcile's outcome: the decisions, each managed pod's condition, the pods awaiting GPUs, and,
    while the node is in a power domain, what its GPUs hold by who holds them (None outside any)."""

    plan: NodePlan
    conditions: dict[PodKey, PodCondition]
    awaiting_devices: frozenset[PodKey]
    held: NodeHeld | None = None


def _pods_text(pods: Iterable[PodKey]) -> str:
    return ",".join(str(p) for p in pods) or "-"


class Agent:
    """Holds what must survive between reconciles: the GPUs capped, retries, what was already reported."""

    def __init__(
        self,
        node_name: str,
        nvml: PowerControl,
        mapping: GpuMapping,
        metrics: AgentMetrics,
        safe_default_watts: int,
        state_file: Path | None,
        clock: Callable[[], float] = time.monotonic,
        device_wait_seconds: float = 300.0,
        draw_guard: bool = True,
    ) -> None:
        self.node_name = node_name
        self.nvml = nvml
        self.mapping = mapping
        self.metrics = metrics
        self.safe_default_watts = safe_default_watts
        self.state_file = state_file
        self._clock = clock
        self._gpus: dict[str, Gpu] = {gpu.uuid: gpu for gpu in nvml.gpus()}
        self.managed: set[str] = set()
        self._retries: dict[str, Retry] = {}
        self._trust = TrustCache(safe_default_watts)
        self._assignments: Assignments | None = None
        self._mapping_failing = False
        self._reported_untrusted: set[tuple[PodKey, str]] = set()
        self._reported_awaiting: set[PodKey] = set()
        self._reported_conflicts: dict[str, tuple[PodKey, ...]] = {}
        self._reported_clamps: set[tuple[str, int, int]] = set()
        self.device_wait_seconds = device_wait_seconds
        # Pods asking for GPUs the mapping does not show yet, and since when (by this agent's clock).
        self._awaiting_since: dict[PodKey, float] = {}
        # The draw guard of each oversubscribed budget with GPUs here; until the first reading the agent
        # cannot know what its GPUs drew before it started, so budgets seen at that reading start guarded.
        self._guards: dict[tuple[str, str], guard.GuardState] = {}
        self._guard_read_once = False
        self.draw_guard = draw_guard
        # Whether the last reconcile was in a power domain, and who held each GPU then.
        self._in_domain = False
        self._holders: dict[str, str] = {}
        for gpu in self._gpus.values():
            self.metrics.gpu_managed.labels(gpu.uuid, str(gpu.index)).set(0)
            limit = self._read_limit(gpu)
            if limit is not None:  # one series per GPU from the start, not only after the first reconcile
                self.metrics.gpu_power_limit_watts.labels(gpu.uuid, str(gpu.index)).set(limit)

    def refresh_gpus(self, gpus: Iterable[Gpu]) -> None:
        """Take the GPUs' constraints as NVML reports them now (a GPU replaced, a driver reloaded)."""
        for gpu in gpus:
            before = self._gpus.get(gpu.uuid)
            if before != gpu:
                log.info(
                    "event=gpu_changed uuid=%s index=%d product=%s min_watts=%d max_watts=%d "
                    "default_watts=%d",
                    gpu.uuid,
                    gpu.index,
                    gpu.model,
                    gpu.constraints.min_watts,
                    gpu.constraints.max_watts,
                    gpu.constraints.default_watts,
                )
                self._gpus[gpu.uuid] = gpu

    # -- state file

    def load_state(self) -> None:
        """Adopt the GPUs a previous run capped; a corrupt file is reported and ignored."""
        if self.state_file is None:
            return
        try:
            state = load_state(self.state_file)
        except CorruptStateError as error:
            log.warning(
                "event=state_file_corrupt path=%s error=%r action=ignored", self.state_file, str(error)
            )
            return
        if state is None:
            log.info("event=state_file_missing path=%s action=start_empty", self.state_file)
            return
        if state.node_name != self.node_name:
            log.warning(
                "event=state_file_other_node path=%s state_node=%s node=%s",
                self.state_file,
                state.node_name,
                self.node_name,
            )
        known = state.managed_gpu_uuids & self._gpus.keys()
        self.managed = set(known)
        log.info("event=state_loaded path=%s managed_gpus=%d", self.state_file, len(known))

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        try:
            save_state(self.state_file, self.node_name, self.managed)
        except OSError as error:
            log.error("event=state_file_write_failed path=%s error=%r", self.state_file, str(error))

    # -- reconcile

    def next_retry_at(self) -> float | None:
        return min((r.next_attempt for r in self._retries.values()), default=None)

    def guarding(self) -> bool:
        """Whether an oversubscribed budget has GPUs on this node (so its guard reads power every period)."""
        return self.draw_guard and (bool(self._guards) or not self._guard_read_once)

    def looking_for_devices(self) -> bool:
        """Whether a pod still awaits its GPUs within the wait bound (so the mapping is read again soon)."""
        now = self._clock()
        return any(now - since < self.device_wait_seconds for since in self._awaiting_since.values())

    def _track_awaiting(self, awaiting: frozenset[PodKey]) -> None:
        now = self._clock()
        for key in awaiting - self._awaiting_since.keys():
            log.info("event=pod_awaiting_devices pod=%s", key)
        for key in self._awaiting_since.keys() - awaiting:
            log.info(
                "event=pod_devices_found pod=%s after_seconds=%.2f", key, now - self._awaiting_since[key]
            )
        self._awaiting_since = {key: self._awaiting_since.get(key, now) for key in awaiting}
        self.metrics.pods_awaiting_devices.set(len(awaiting))

    async def _read_assignments(self) -> Assignments | None:
        try:
            assignments = await self.mapping.assignments()
        except MappingError as error:
            self.metrics.mapping_errors_total.labels(error.source).inc()
            if not self._mapping_failing:
                log.warning("event=mapping_error error=%r action=keep_last_mapping", str(error))
            self._mapping_failing = True
            return self._assignments
        if self._mapping_failing:
            log.info("event=mapping_recovered source=%s", self.mapping.source)
        self._mapping_failing = False
        self._assignments = assignments
        return assignments

    def _read_limit(self, gpu: Gpu) -> int | None:
        try:
            return self.nvml.power_limit_watts(gpu.uuid)
        except NvmlError as error:
            self.metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
            log.warning(
                "event=nvml_error op=get uuid=%s index=%d kind=%s", gpu.uuid, gpu.index, error.kind.value
            )
            return None

    async def reconcile(
        self,
        pods: Collection[PodView],
        budgets: Iterable[BudgetView],
        guard_reading: bool = False,
        place: NodePlace | None = None,
    ) -> Reconciled | None:
        """One full pass over the node's GPUs; None when the GPU mapping has never been readable.

        ``guard_reading``: this pass is a reading period of the draw guard (the loop makes one a period).
        ``place``: where the node sits among the power domains (None: in none).
        """
        started = time.perf_counter()
        assignments = await self._read_assignments()
        if assignments is None:
            return None
        budgets = list(budgets)
        on_gpu = resolve(assignments, pods)
        snapshots = [
            GpuSnapshot(gpu.uuid, gpu.constraints, self._read_limit(gpu)) for gpu in self._gpus.values()
        ]
        caps = self._trust.caps(pods, budgets)
        in_domain = place is not None and place.in_domain
        others = self._other_holders(assignments, pods, on_gpu, caps) if in_domain else {}
        base = plan_node(snapshots, caps, on_gpu, self.managed, place=place, others=others)
        limits = {snapshot.uuid: snapshot.current_limit_watts for snapshot in snapshots}
        limits_held = self._guard(base, {b.key: b for b in budgets}, guard_reading)
        plan = NodePlan(
            tuple(guarded(d, limits_held.get(d.uuid), limits[d.uuid]) for d in base.decisions), base.pod_caps
        )
        self._report(plan)
        for decision in plan.decisions:
            limits[decision.uuid] = self._apply(decision, limits[decision.uuid])
        self._export(limits, on_gpu)
        conditions = pod_conditions(
            pods,
            plan.pod_caps,
            on_gpu,
            {decision.uuid: decision for decision in plan.decisions},
            limits,
            {uuid: gpu.constraints.min_watts for uuid, gpu in self._gpus.items()},
        )
        awaiting = frozenset(awaiting_devices(pods, on_gpu))
        self._track_awaiting(awaiting)
        held: NodeHeld | None = None
        self._in_domain = in_domain
        if in_domain:
            self._holders = {
                uuid: gpu_holder(
                    (plan.pod_caps[key] for key in on_gpu.get(uuid, ()) if key in plan.pod_caps),
                    others.get(uuid, NO_OTHERS),
                )
                for uuid in self._gpus
            }
            held = self._held(limits)
            parked = sum(
                1
                for d in plan.decisions
                if d.reason is Reason.PARKED and limits.get(d.uuid) == d.target_watts
            )
            self.metrics.parked_gpus.set(parked)
        else:
            self._holders = {}
            self.metrics.parked_gpus.set(0)
        self._export_held(held)
        self.metrics.reconcile_duration_seconds.observe(time.perf_counter() - started)
        return Reconciled(plan, conditions, awaiting, held)

    def _other_holders(
        self,
        assignments: Assignments,
        pods: Collection[PodView],
        on_gpu: Mapping[str, tuple[PodKey, ...]],
        caps: Mapping[PodKey, PodCap],
    ) -> dict[str, OtherHolders]:
        """Per GPU, who holds it besides the pods the trust rule manages (what a power domain counts)."""
        finished = {pod.key for pod in pods if pod.finished}
        unseen = unseen_holders(assignments, pods)
        return {
            uuid: OtherHolders(
                tuple(key for key in on_gpu.get(uuid, ()) if key not in caps and key not in finished),
                unseen.get(uuid, 0),
            )
            for uuid in self._gpus
        }

    def _held(self, limits: Mapping[str, int | None]) -> NodeHeld:
        """What every GPU holds by who held it at the last reconcile in a domain (``limits`` read back)."""
        return node_held(
            HeldGpu(self._holders.get(uuid, IDLE), limits.get(uuid), gpu.constraints.max_watts)
            for uuid, gpu in self._gpus.items()
        )

    def held_now(self) -> NodeHeld | None:
        """What the GPUs hold now (read from NVML again), by who held them at the last reconcile in a domain;
        None when the node was in none. For the report after the agent restores the GPUs on exit."""
        if not self._in_domain:
            return None
        held = self._held({uuid: self._read_limit(gpu) for uuid, gpu in self._gpus.items()})
        self._export_held(held)
        return held

    def _export_held(self, held: NodeHeld | None) -> None:
        if held is None:
            self.metrics.set_held(None)
            return
        budgets = (sum(g.gpus for g in held.budgets.values()), sum(g.watts for g in held.budgets.values()))
        self.metrics.set_held(
            {
                IDLE: (held.idle.gpus, held.idle.watts),
                UNMANAGED: (held.unmanaged.gpus, held.unmanaged.watts),
                "budgets": budgets,
            }
        )

    def _guarded_gpus(
        self, plan: NodePlan, oversubscribed: Mapping[tuple[str, str], BudgetView]
    ) -> dict[tuple[str, str], list[tuple[GpuDecision, float]]]:
        """Per oversubscribed budget, its capped GPUs here and each one's share (planned draw)."""
        members: dict[tuple[str, str], list[tuple[GpuDecision, float]]] = {}
        for decision in plan.decisions:
            if decision.action is not Action.CAP or decision.target_watts is None or not decision.pods:
                continue
            pod_caps = [plan.pod_caps[key] for key in decision.pods]
            owners = {cap.budget for cap in pod_caps}
            owner = next(iter(owners)) if len(owners) == 1 else None
            if owner is None or owner not in oversubscribed:
                continue  # no budget, or pods of several budgets on one GPU: the caps alone hold it
            shares = [cap.gpu_draw_watts for cap in pod_caps if cap.gpu_draw_watts is not None]
            share = min(shares) if shares else float(decision.target_watts)
            members.setdefault(owner, []).append((decision, min(share, float(decision.target_watts))))
        return members

    def _guard(
        self, plan: NodePlan, budgets: Mapping[tuple[str, str], BudgetView], reading: bool
    ) -> dict[str, int]:
        """The draw guard's limits by GPU, after one reading period when ``reading`` (see ``guard``)."""
        if not self.draw_guard:
            return {}
        oversubscribed = {key: b for key, b in budgets.items() if b.oversubscription is not None}
        members = self._guarded_gpus(plan, oversubscribed)
        now = self._clock()
        limits: dict[str, int] = {}
        for key in set(self._guards) - set(members):
            del self._guards[key]
            self.metrics.forget_guard(*key)
        for key, gpus_of in members.items():
            settings = oversubscribed[key].oversubscription
            assert settings is not None
            gpus = [
                guard.GuardGpu(
                    d.uuid,
                    d.target_watts or 0,
                    share,
                    self._gpus[d.uuid].constraints.min_watts,
                    self._read_power(d.uuid) if reading else None,
                )
                for d, share in gpus_of
            ]
            state = self._guards.get(key)
            if state is None:
                self.metrics.guard_engagements_total.labels(*key)  # the series exists from the start
                state = guard.starting(gpus) if not self._guard_read_once else guard.GuardState()
                if state.engaged:
                    self._guard_event(key, guard.GuardEvent.ENGAGED, gpus, state, None)
            if reading:
                result = guard.step(settings, gpus, state, now)
                if result.event is not None:
                    self._guard_event(key, result.event, gpus, result.state, result)
                self.metrics.guard_draw_watts.labels(*key).set(result.draw_watts)
                self.metrics.guard_share_watts.labels(*key).set(result.share_watts)
                state = result.state
            self._guards[key] = state
            self.metrics.guard_engaged.labels(*key).set(1 if state.engaged else 0)
            if state.engaged:
                limits.update({gpu.uuid: guard.effective_limit(state, gpu) for gpu in gpus})
        if reading:
            self._guard_read_once = True
        return limits

    def _read_power(self, uuid: str) -> float | None:
        try:
            return self.nvml.power_usage_watts(uuid)
        except NvmlError as error:
            self.metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
            return None  # counts as drawing at its limit

    def _guard_event(
        self,
        key: tuple[str, str],
        event: guard.GuardEvent,
        gpus: list[guard.GuardGpu],
        state: guard.GuardState,
        result: guard.GuardStep | None,
    ) -> None:
        if event is guard.GuardEvent.ENGAGED:
            self.metrics.guard_engagements_total.labels(*key).inc()
        held = sum(guard.effective_limit(state, gpu) for gpu in gpus)
        log.info(
            "event=guard_%s budget=%s/%s gpus=%d draw_watts=%s share_watts=%.0f limits_watts=%d why=%s",
            event.value,
            key[0],
            key[1],
            len(gpus),
            f"{result.draw_watts:.0f}" if result is not None else "unknown",
            sum(gpu.share_watts for gpu in gpus),
            held,
            "agent started: what its GPUs drew before is unknown" if result is None else "readings",
        )

    def _report(self, plan: NodePlan) -> None:
        """Log and count what is new since the last reconcile (one line per change, not per tick)."""
        untrusted = {
            (cap.pod, str(cap.reason)) for cap in plan.pod_caps.values() if cap.verdict is Verdict.UNTRUSTED
        }
        for cap in plan.pod_caps.values():
            if (
                cap.verdict is Verdict.UNTRUSTED
                and (cap.pod, str(cap.reason)) not in self._reported_untrusted
            ):
                self.metrics.untrusted_caps_total.labels(str(cap.reason)).inc()
                self.metrics.safe_default_fallbacks_total.labels("untrusted").inc()
                log.warning(
                    "event=cap_untrusted pod=%s reason=%s detail=%r applied_watts=%d",
                    cap.pod,
                    cap.reason,
                    cap.detail,
                    cap.cap_watts,
                )
        self._reported_untrusted = untrusted
        awaiting = {cap.pod for cap in plan.pod_caps.values() if cap.verdict is Verdict.AWAITING_CAP}
        for pod in awaiting - self._reported_awaiting:
            self.metrics.safe_default_fallbacks_total.labels("awaiting_cap").inc()
            # The trust rule's fallback (grant or safe default); a parked GPU in a power domain holds lower.
            log.info("event=pod_awaiting_cap pod=%s fallback_watts=%d", pod, plan.pod_caps[pod].cap_watts)
        self._reported_awaiting = awaiting
        conflicts = {d.uuid: d.pods for d in plan.decisions if d.reason is Reason.CONFLICT}
        for uuid, pods in conflicts.items():
            if self._reported_conflicts.get(uuid) != pods:
                self.metrics.conflicts_total.inc()
                self.metrics.safe_default_fallbacks_total.labels("conflict").inc()
                caps = ",".join(f"{p}={plan.pod_caps[p].cap_watts}" for p in pods)
                log.warning("event=cap_conflict uuid=%s pods=%s action=safe_default", uuid, caps)
        self._reported_conflicts = conflicts
        clamps = {(d.uuid, d.requested_watts or 0, d.target_watts or 0) for d in plan.decisions if d.clamped}
        for uuid, requested, target in clamps - self._reported_clamps:
            self.metrics.clamps_total.inc()
            gpu = self._gpus[uuid]
            log.info(
                "event=cap_clamped uuid=%s requested_watts=%d applied_watts=%d min_watts=%d max_watts=%d",
                uuid,
                requested,
                target,
                gpu.constraints.min_watts,
                gpu.constraints.max_watts,
            )
        self._reported_clamps = clamps

    def _apply(self, decision: GpuDecision, current_watts: int | None) -> int | None:
        """Carry out one decision; return the limit the GPU holds afterwards (None: unknown)."""
        uuid = decision.uuid
        if decision.action is Action.LEAVE or decision.target_watts is None:
            self._retries.pop(uuid, None)
            return current_watts
        if decision.action is Action.CAP and uuid not in self.managed:
            # Recorded before the change, so a crash right after it still knows this GPU is ours.
            self.managed.add(uuid)
            self._save_state()
        if decision.needs_nvml_call:
            retry = self._retries.get(uuid)
            if retry is not None and self._clock() < retry.next_attempt:
                return current_watts
            gpu = self._gpus[uuid]
            try:
                self.nvml.set_power_limit_watts(uuid, decision.target_watts)
            except NvmlError as error:
                retry = next_retry(retry, self._clock())
                self._retries[uuid] = retry
                self.metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
                log.warning(
                    "event=nvml_error op=set uuid=%s index=%d kind=%s target_watts=%d failures=%d "
                    "retry_in_seconds=%.1f",
                    uuid,
                    gpu.index,
                    error.kind.value,
                    decision.target_watts,
                    retry.failures,
                    retry.next_attempt - self._clock(),
                )
                return current_watts
            self._retries.pop(uuid, None)
            self.metrics.limit_changes_total.labels(decision.action.value).inc()
            log.info(
                "event=limit_set uuid=%s index=%d from_watts=%s to_watts=%d action=%s reason=%s pods=%s",
                uuid,
                gpu.index,
                current_watts,
                decision.target_watts,
                decision.action.value,
                decision.reason.value,
                _pods_text(decision.pods),
            )
            current_watts = self._read_limit(gpu)
        else:
            self._retries.pop(uuid, None)
        if decision.action is Action.RESTORE and current_watts == decision.target_watts:
            self.managed.discard(uuid)
            self._save_state()
        return current_watts

    def _export(self, limits: dict[str, int | None], on_gpu: dict[str, tuple[PodKey, ...]]) -> None:
        holders: list[tuple[str, str, str]] = []
        for uuid, gpu in self._gpus.items():
            index = str(gpu.index)
            limit = limits.get(uuid)
            if limit is not None:
                self.metrics.gpu_power_limit_watts.labels(uuid, index).set(limit)
            self.metrics.gpu_managed.labels(uuid, index).set(1 if uuid in self.managed else 0)
            try:
                self.metrics.gpu_power_usage_watts.labels(uuid, index).set(self.nvml.power_usage_watts(uuid))
            except NvmlError as error:
                self.metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
            holders.extend((uuid, pod.namespace, pod.name) for pod in on_gpu.get(uuid, ()))
        self.metrics.set_gpu_pods(holders)

    def restore_all(self) -> dict[str, int]:
        """Give every GPU the agent capped its default limit back (on SIGTERM); the GPUs restored."""
        restored: dict[str, int] = {}
        for uuid in sorted(self.managed):
            gpu = self._gpus[uuid]
            default = gpu.constraints.default_watts
            try:
                current = self.nvml.power_limit_watts(uuid)
                if current != default:
                    self.nvml.set_power_limit_watts(uuid, default)
                    log.info(
                        "event=limit_set uuid=%s index=%d from_watts=%d to_watts=%d action=restore "
                        "reason=exit",
                        uuid,
                        gpu.index,
                        current,
                        default,
                    )
            except NvmlError as error:
                self.metrics.nvml_errors_total.labels(error.operation, error.kind.value).inc()
                log.error("event=restore_failed uuid=%s index=%d kind=%s", uuid, gpu.index, error.kind.value)
                continue
            self.managed.discard(uuid)
            restored[uuid] = default
        self._save_state()
        return restored


async def wait_for_wake(wake: asyncio.Event, timeout_seconds: float) -> None:
    """Return when ``wake`` is set or after ``timeout_seconds``."""
    try:
        await asyncio.wait_for(wake.wait(), timeout=max(timeout_seconds, 0.0))
    except TimeoutError:
        return
