"""The power domains' shell: watch the domains, namespaces and nodes, allocate, hand each budget its share.

One allocator task runs while this replica leads. It wakes when a domain, a
namespace's labels, a Node (its labels, or what its agent reports its GPUs
hold) or a budget's offer changes, decides everything at once with
:func:`gpupower_operator.core.domainstate.decide`, writes each domain's status,
and wakes the budgets whose share changed.

A budget of a domain does not plan within ``totalWatts``: its reconcile
offers its planner problem (:meth:`DomainRuntime.share`), waits for the
allocation round that includes it (bounded), and plans within its grant.
Grants are what make moving watts between budgets safe, so the runtime keeps,
per budget, every grant it may still be acting on: the one issued last, the
one a reconcile in flight took, and the one its last completed reconcile
planned within (after a restart, the caps its status says it planned). Until
the agents report that its GPUs hold less, those count against the domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_api.domains import DomainStatus, parse_domain_spec
from gpupower_api.models import (
    BudgetDomainStatus,
    BudgetSpec,
    BudgetStatus,
    ConditionStatus,
    InvalidSpecError,
)
from gpupower_operator.adapters.kube import Cluster
from gpupower_operator.core import conditions as cond
from gpupower_operator.core import domainstate as ds
from gpupower_operator.core.planner import Problem, budget_milliwatts
from gpupower_operator.core.reconcile import DomainContext
from gpupower_operator.shell.metrics import OperatorMetrics

log = logging.getLogger("gpupower_operator")

BudgetKey = tuple[str, str]

# Offers that arrive together are decided together.
DEBOUNCE_SECONDS = 0.05
# How long a budget's reconcile waits for the round that includes its offer.
SHARE_WAIT_SECONDS = 5.0
# How long the allocator waits for the first listing of domains and nodes.
SYNC_WAIT_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 30.0


def domains_path(_: str | None) -> str:
    return "/apis/gpupower.dev/v1alpha1/gpupowerdomains"


def namespaces_path(_: str | None) -> str:
    return "/api/v1/namespaces"


@dataclass
class _Grants:
    """The grants a budget may still be acting on, in milliwatts."""

    issued: int = 0
    taken: int = 0  # by a reconcile in flight
    planned: int = 0  # by its last completed reconcile

    @property
    def most(self) -> int:
        return max(self.issued, self.taken, self.planned)


def _domain_status(body: Mapping[str, Any]) -> DomainStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return DomainStatus.model_validate(raw)
    except ValueError:
        return None


class DomainRuntime:
    """The domains' watch caches, the allocator, and each budget's share."""

    def __init__(
        self,
        cluster: Cluster,
        metrics: OperatorMetrics,
        wake_budgets: Callable[[set[BudgetKey]], None],
        planned_watts: Callable[[BudgetKey], float | None],
        clock: Callable[[], str],
        resync_seconds: float = 60.0,
    ) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self.wake_budgets = wake_budgets
        self.planned_watts = planned_watts
        self.clock = clock
        self.resync_seconds = resync_seconds
        self.domains: dict[str, ds.DomainFacts] = {}
        self.domain_statuses: dict[str, DomainStatus | None] = {}
        self.nodes: dict[str, ds.NodeFacts] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.offers: dict[BudgetKey, ds.BudgetFacts] = {}
        self.grants: dict[BudgetKey, _Grants] = {}
        self.shares: dict[BudgetKey, ds.BudgetShare] = {}
        self.domains_synced = asyncio.Event()
        self.namespaces_synced = asyncio.Event()
        self.nodes_synced = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._rounds = asyncio.Condition()
        self._requested = 0
        self._completed = 0
        self._written: dict[str, DomainStatus] = {}

    # -- watch events ------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def on_domain(self, _: str, name: str, raw: Mapping[str, Any] | None) -> None:
        if raw is None:
            self.domains.pop(name, None)
            self.domain_statuses.pop(name, None)
            self._written.pop(name, None)
            self.metrics.domains.forget(name)
            self.wake()
            return
        metadata = raw.get("metadata") or {}
        generation = int(metadata.get("generation") or 0)
        try:
            facts = ds.DomainFacts(name, generation, parse_domain_spec(dict(raw.get("spec") or {})))
        except InvalidSpecError as error:
            facts = ds.DomainFacts(name, generation, error=str(error))
            if self.domains.get(name) != facts:
                log.warning("invalid domain domain=%s field=%s error=%s", name, error.field, error)
        self.domain_statuses[name] = _domain_status(raw)
        if self.domains.get(name) != facts:
            self.domains[name] = facts
            self.wake()

    def on_namespace(self, _: str, name: str, raw: Mapping[str, Any] | None) -> None:
        labels = None if raw is None else dict((raw.get("metadata") or {}).get("labels") or {})
        if self.namespaces.get(name) == labels:
            return
        if labels is None:
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = labels
        if any(key[0] == name for key in self.offers):
            self.wake()

    def on_node(self, name: str, raw: Mapping[str, Any] | None) -> None:
        facts = None if raw is None else ds.node_facts(name, raw.get("metadata") or {})
        if self.nodes.get(name) == facts:
            return
        if facts is None:
            self.nodes.pop(name, None)
        else:
            if facts.report_error is not None:
                log.warning("node report invalid node=%s error=%s", name, facts.report_error)
            self.nodes[name] = facts
        self.wake()

    def forget_budget(self, key: BudgetKey) -> None:
        """A budget went away (or left its domain): its watts are free once its GPUs report so."""
        if self.offers.pop(key, None) is not None:
            self.wake()
        self.grants.pop(key, None)
        self.shares.pop(key, None)

    # -- the budgets' side ----------------------------------------------------

    async def share(
        self,
        key: BudgetKey,
        spec: BudgetSpec,
        problem: Problem,
        old_status: BudgetStatus | None,
        wait_seconds: float = SHARE_WAIT_SECONDS,
    ) -> ds.BudgetShare | None:
        """Offer the budget's problem and return its share from a round that includes it (None on timeout)."""
        assert spec.domain_ref is not None
        grants = self.grants.get(key)
        if grants is None:
            # After a restart: the caps its status says it planned may still be on their way to the GPUs.
            planned = old_status.caps_watts if old_status is not None else None
            grants = self.grants[key] = _Grants(planned=budget_milliwatts(planned or 0.0))
        offer = ds.BudgetFacts(
            key[0],
            key[1],
            spec.domain_ref.name,
            spec.priority,
            float(spec.total_watts) if spec.total_watts is not None else None,
            problem,
        )
        current = self.shares.get(key)
        if self.offers.get(key) == offer and current is not None and current.domain == offer.domain:
            return current
        self.offers[key] = offer
        self._requested += 1
        wanted = self._requested
        self.wake()
        async with self._rounds:
            try:
                await asyncio.wait_for(self._rounds.wait_for(lambda: self._completed >= wanted), wait_seconds)
            except TimeoutError:
                log.warning(
                    "no domain allocation in time budget=%s/%s domain=%s waited_seconds=%g",
                    key[0],
                    key[1],
                    offer.domain,
                    wait_seconds,
                )
        return self.shares.get(key)

    def taken(self, key: BudgetKey, milliwatts: int) -> None:
        grants = self.grants.setdefault(key, _Grants())
        grants.taken = max(grants.taken, milliwatts)

    def completed(self, key: BudgetKey, milliwatts: int) -> None:
        """A reconcile planned within ``milliwatts`` and applied its writes: older grants are over."""
        grants = self.grants.setdefault(key, _Grants())
        before = grants.most
        grants.planned = milliwatts
        grants.taken = 0
        if grants.most != before:
            self.wake()

    # -- the allocator --------------------------------------------------------

    async def run(self) -> None:
        """Allocate whenever woken and every resync period; never returns (cancel it)."""
        for synced in (self.domains_synced, self.nodes_synced, self.namespaces_synced):
            try:
                await asyncio.wait_for(synced.wait(), SYNC_WAIT_SECONDS)
            except TimeoutError:
                log.warning("domain allocator starting before a watch listed everything")
        backoff = DEBOUNCE_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.resync_seconds)
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wakeup.clear()
            wanted = self._requested
            try:
                await self.allocate_once()
                backoff = DEBOUNCE_SECONDS
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                self.metrics.errors.labels("domain_status").inc()
                log.warning("domain status write failed retry_in_seconds=%.1f error=%s", backoff, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                self.wake()
            except Exception:
                # A bug must not end the allocator: the budgets would wait for it in vain. Say it loudly.
                self.metrics.errors.labels("domain_allocation").inc()
                log.exception("domain allocation failed retry_in_seconds=%.1f", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                self.wake()
            finally:
                async with self._rounds:
                    self._completed = max(self._completed, wanted)
                    self._rounds.notify_all()

    def decide(self) -> ds.Decision:
        offers = [
            replace(offer, granted_milliwatts=self.grants.get(key, _Grants()).most)
            for key, offer in sorted(self.offers.items())
        ]
        return ds.decide(
            sorted(self.domains.values(), key=lambda d: d.name),
            sorted(self.nodes.values(), key=lambda n: n.name),
            offers,
            self.namespaces,
        )

    async def allocate_once(self) -> ds.Decision:
        """One round: decide, keep the shares, wake the budgets whose share changed, write the statuses."""
        started = time.monotonic()
        decision = self.decide()
        changed: set[BudgetKey] = set()
        for key_text, share in decision.budgets.items():
            namespace, name = key_text.split("/", 1)
            key = (namespace, name)
            before = self.shares.get(key)
            if share.grant_milliwatts is None and before is not None:
                share = replace(share, grant_milliwatts=before.grant_milliwatts, allocation=before.allocation)
            if share.grant_milliwatts is not None:
                self.grants.setdefault(key, _Grants()).issued = share.grant_milliwatts
            if before != share:
                changed.add(key)
            self.shares[key] = share
        self.metrics.domains.allocation_seconds.observe(time.monotonic() - started)
        if changed:
            self.wake_budgets(changed)
        for name, report in decision.domains.items():
            await self._write_status(name, report)
        return decision

    async def _write_status(self, name: str, report: ds.DomainReport) -> None:
        old = self._written.get(name) or self.domain_statuses.get(name)
        status = domain_status(report, old, self.planned_watts, self.clock())
        facts = self.domains.get(name)
        if facts is None:
            return  # deleted meanwhile
        self.metrics.domains.record(name, facts.spec, status)
        if old is not None and old == status:
            return
        await self.cluster.patch_domain_status(name, status.model_dump(by_alias=True, mode="json"))
        self._written[name] = status
        ready = status.condition(cond.READY)
        log.info(
            "domain status domain=%s allocated_watts=%s committed_watts=%s held_watts=%s ready=%s reason=%s",
            name,
            status.allocated_watts,
            status.committed_watts,
            status.held_watts,
            ready.status if ready else None,
            ready.reason if ready else None,
        )


def domain_status(
    report: ds.DomainReport,
    old: DomainStatus | None,
    planned_watts: Callable[[BudgetKey], float | None],
    now: str,
) -> DomainStatus:
    """A domain's status from its report; a frozen domain keeps its last allocation's figures."""
    conditions = cond.merge_conditions(
        old.conditions if old is not None else [], list(report.conditions), report.generation, now
    )
    counted: dict[str, Any] = {
        "observed_generation": report.generation,
        "conditions": conditions,
    }
    if report.nodes or not report.frozen:
        counted |= {
            "nodes": report.nodes,
            "gpus": report.gpus,
            "held_watts": ds.watts(report.held_milliwatts),
            "committed_watts": ds.watts(report.committed_milliwatts),
            "committed": {
                "idle_watts": ds.watts(report.idle_milliwatts),
                "unmanaged_watts": ds.watts(report.unmanaged_milliwatts),
                "other_domains_watts": ds.watts(report.other_milliwatts),
            },
        }
    result = report.allocation
    if result is None:
        base = old if old is not None else DomainStatus()
        return DomainStatus.model_validate({**base.model_dump(), **counted})
    allocations = []
    planned_total = 0.0
    for budget in report.budgets:
        planned = planned_watts((budget.namespace, budget.name))
        planned_total += planned or 0.0
        allocations.append(
            {
                "namespace": budget.namespace,
                "name": budget.name,
                "priority": budget.priority,
                "allocated_watts": ds.watts(budget.milliwatts),
                "planned_watts": planned,
                "limited_by": str(budget.limited_by),
            }
        )
    return DomainStatus.model_validate(
        {
            **counted,
            "floor_watts": ds.watts(result.floor_milliwatts),
            "allocated_watts": ds.watts(result.allocated_milliwatts),
            "planned_watts": round(planned_total, 1),
            "headroom_watts": ds.watts(result.headroom_milliwatts),
            "budgets": len(result.budgets),
            "allocations": allocations,
            "reason": result.reason,
        }
    )


def budget_context(share: ds.BudgetShare, spec: BudgetSpec) -> DomainContext:
    """What a budget's reconcile needs of its share: the status block, the conditions, the nodes."""
    assert spec.domain_ref is not None
    allocation = share.allocation
    status = BudgetDomainStatus(
        name=spec.domain_ref.name,
        priority=spec.priority,
        allocated_watts=ds.watts(allocation.milliwatts) if allocation is not None else None,
        limited_by=str(allocation.limited_by) if allocation is not None else None,
        bound_by=allocation.bound_by if allocation is not None else None,
        message=share.message or share.admitted.message,
    )
    waiting = None
    if share.handover is not None and share.handover.waiting:
        waiting = (
            f"allocated {share.handover.allocated_milliwatts / 1000:,g} W by domain {spec.domain_ref.name}, "
            f"planning within {share.handover.milliwatts / 1000:,g} W until other budgets' GPUs under "
            f"{share.handover.bound_by} hold less"
        )
    return DomainContext(status=status, admitted=share.admitted, nodes=share.nodes, waiting=waiting)


def waiting_context(spec: BudgetSpec) -> DomainContext:
    """No allocation round answered in time: the budget keeps what it planned within last."""
    assert spec.domain_ref is not None
    message = f"waiting for domain {spec.domain_ref.name}'s allocation; the last plan stays"
    return DomainContext(
        status=BudgetDomainStatus(name=spec.domain_ref.name, priority=spec.priority, message=message),
        admitted=cond.ConditionUpdate(
            cond.DOMAIN_ADMITTED, ConditionStatus.UNKNOWN, "AwaitingAllocation", message
        ),
    )


def fallback_watts(old_status: BudgetStatus | None, floor: float) -> float:
    """What a budget plans within without a share: the last budget it planned within, else its floor."""
    if old_status is not None and old_status.domain is not None and old_status.budget_watts is not None:
        return float(old_status.budget_watts)
    return floor if floor > 0 and math.isfinite(floor) else 0.001
