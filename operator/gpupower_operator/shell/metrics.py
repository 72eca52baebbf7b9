"""The operator's Prometheus metrics on their own registry, and the HTTP server for /metrics and /healthz."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gpupower_api.domains import DomainSpec, DomainStatus
from gpupower_api.models import BudgetStatus, Condition, ConditionStatus, TargetStatus

_BUDGET_LABELS = ("namespace", "budget")
_TARGET_LABELS = ("namespace", "budget", "target")
_CONDITION_LABELS = ("namespace", "budget", "type", "status")
_CONDITION_STATUSES = tuple(status.value for status in ConditionStatus)


def record_conditions(
    gauge: Gauge, labels: tuple[str, ...], conditions: Sequence[Condition], before: set[str]
) -> set[str]:
    """One object's condition series: 1 for the status each condition has, 0 for the others, and
    none left for a type it no longer has (``before``: the types recorded last). Returns the types now."""
    types = {condition.type for condition in conditions}
    for gone in before - types:
        for value in _CONDITION_STATUSES:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels, gone, value)
    for condition in conditions:
        for value in _CONDITION_STATUSES:
            gauge.labels(*labels, condition.type, value).set(1.0 if condition.status.value == value else 0.0)
    return types


class OperatorMetrics:
    """Per-budget gauges (bounded by the number of budgets), reconcile duration, errors and writes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.budget_watts = Gauge(
            "gpupower_operator_budget_watts", "Power budget of a GpuPowerBudget.", _BUDGET_LABELS, registry=r
        )
        self.planned_watts = Gauge(
            "gpupower_operator_planned_watts",
            "Planned power of a budget's fleet.",
            _BUDGET_LABELS,
            registry=r,
        )
        self.enforced_watts = Gauge(
            "gpupower_operator_enforced_watts",
            "What a budget's GPUs can hold at most now, from what the agents report they hold.",
            _BUDGET_LABELS,
            registry=r,
        )
        self.caps_watts = Gauge(
            "gpupower_operator_caps_watts",
            "The planned caps summed over a budget's GPUs.",
            _BUDGET_LABELS,
            registry=r,
        )
        self.caps_limit_watts = Gauge(
            "gpupower_operator_caps_limit_watts",
            "What a budget's caps may sum to: totalWatts, or totalWatts x maxRatio when oversubscribed.",
            _BUDGET_LABELS,
            registry=r,
        )
        self.planned_draw_watts = Gauge(
            "gpupower_operator_planned_draw_watts",
            "What a budget's plan expects its GPUs to draw (caps x power factors).",
            _BUDGET_LABELS,
            registry=r,
        )
        self.observed_watts = Gauge(
            "gpupower_operator_observed_watts",
            "Observed power of a budget's fleet (absent until measured).",
            _BUDGET_LABELS,
            registry=r,
        )
        self.served_fraction = Gauge(
            "gpupower_operator_served_ratio",
            "Fraction of demand the plan serves (0..1).",
            _BUDGET_LABELS,
            registry=r,
        )
        self.utilization = Gauge(
            "gpupower_operator_utilization_ratio",
            "Planned watts over budget watts.",
            _BUDGET_LABELS,
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "gpupower_operator_reconcile_duration_seconds",
            "Time to reconcile one budget.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter(
            "gpupower_operator_errors_total", "Reconcile errors by kind.", ("kind",), registry=r
        )
        self.writes = Counter(
            "gpupower_operator_writes_total",
            "Writes to the API by kind (pod, scale, status, release).",
            ("kind",),
            registry=r,
        )
        self.budgets = Gauge("gpupower_operator_budgets", "Budgets the operator reconciles.", registry=r)
        self.condition = Gauge(
            "gpupower_operator_condition",
            "1 for the status a budget's condition has (True, False or Unknown), 0 for the other two.",
            _CONDITION_LABELS,
            registry=r,
        )
        # Per target: the plan and what it serves (series absent where the status has no value).
        self.target_gauges: dict[str, tuple[Gauge, Callable[[TargetStatus], float | None]]] = {
            name: (Gauge(f"gpupower_operator_target_{name}", help_text, _TARGET_LABELS, registry=r), read)
            for name, help_text, read in _TARGET_SERIES
        }
        self._targets: dict[tuple[str, str], set[str]] = {}
        self._conditions: dict[tuple[str, str], set[str]] = {}
        self.leader = Gauge(
            "gpupower_operator_leader",
            "1 while this replica is the active one (holds the Lease, or runs standalone), 0 on standby.",
            registry=r,
        )
        self.domains = DomainMetrics(r)

    def record_status(self, namespace: str, name: str, status: BudgetStatus) -> None:
        labels = (namespace, name)
        pairs: list[tuple[Gauge, float | None]] = [
            (self.budget_watts, status.budget_watts),
            (self.planned_watts, status.planned_watts),
            (self.enforced_watts, status.enforced_watts),
            (self.caps_watts, status.caps_watts),
            (self.planned_draw_watts, status.planned_draw_watts),
            (self.caps_limit_watts, status.caps_limit_watts),
            (self.observed_watts, status.observed_watts),
            (self.served_fraction, status.served_fraction),
            (self.utilization, status.utilization),
        ]
        for gauge, value in pairs:
            if value is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            else:
                gauge.labels(*labels).set(value)
        self._record_conditions(namespace, name, status)
        self._record_targets(namespace, name, status)

    def _record_conditions(self, namespace: str, name: str, status: BudgetStatus) -> None:
        key = (namespace, name)
        self._conditions[key] = record_conditions(
            self.condition, (namespace, name), status.conditions, self._conditions.get(key, set())
        )

    def _record_targets(self, namespace: str, name: str, status: BudgetStatus) -> None:
        names = {target.name for target in status.targets}
        for gone in self._targets.get((namespace, name), set()) - names:
            for gauge, _ in self.target_gauges.values():
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name, gone)
        for target in status.targets:
            for gauge, read in self.target_gauges.values():
                value = read(target)
                if value is None:
                    with contextlib.suppress(KeyError):
                        gauge.remove(namespace, name, target.name)
                else:
                    gauge.labels(namespace, name, target.name).set(value)
        self._targets[(namespace, name)] = names

    def forget(self, namespace: str, name: str) -> None:
        for gauge in (
            self.budget_watts,
            self.planned_watts,
            self.enforced_watts,
            self.caps_watts,
            self.caps_limit_watts,
            self.planned_draw_watts,
            self.observed_watts,
            self.served_fraction,
            self.utilization,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        self._record_conditions(namespace, name, BudgetStatus())
        self._record_targets(namespace, name, BudgetStatus())
        self._conditions.pop((namespace, name), None)
        self._targets.pop((namespace, name), None)


class DomainMetrics:
    """Per power domain: its limit, what its GPUs hold, the committed and allocated watts, conditions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.allocation_seconds = Histogram(
            "gpupower_domain_allocation_duration_seconds",
            "Time to decide one allocation round of every domain.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        domain = ("domain",)
        self.gauges: dict[str, tuple[Gauge, Callable[[DomainStatus], float | None]]] = {
            name: (Gauge(f"gpupower_domain_{name}", help_text, domain, registry=r), read)
            for name, help_text, read in _DOMAIN_SERIES
        }
        self.limit_watts = Gauge(
            "gpupower_domain_limit_watts",
            "The domain's totalWatts: the limit of all its GPUs.",
            domain,
            registry=r,
        )
        self.committed_watts = Gauge(
            "gpupower_domain_committed_watts",
            "Watts committed outside the domain's budgets, by kind (idle, unmanaged, other_domains).",
            ("domain", "kind"),
            registry=r,
        )
        self.budget_allocated_watts = Gauge(
            "gpupower_domain_budget_allocated_watts",
            "Watts the domain allocates a budget that draws from it directly.",
            ("domain", "namespace", "budget"),
            registry=r,
        )
        self.condition = Gauge(
            "gpupower_domain_condition",
            "1 for the status a domain's condition has (True, False or Unknown), 0 for the other two.",
            ("domain", "type", "status"),
            registry=r,
        )
        self._budgets: dict[str, set[tuple[str, str]]] = {}
        self._conditions: dict[str, set[str]] = {}

    def record(self, name: str, spec: DomainSpec | None, status: DomainStatus) -> None:
        if spec is not None:
            self.limit_watts.labels(name).set(spec.total_watts)
        for gauge, read in self.gauges.values():
            value = read(status)
            if value is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            else:
                gauge.labels(name).set(value)
        if status.committed is not None:
            for kind, watts in (
                ("idle", status.committed.idle_watts),
                ("unmanaged", status.committed.unmanaged_watts),
                ("other_domains", status.committed.other_domains_watts),
            ):
                self.committed_watts.labels(name, kind).set(watts)
        shares = {(a.namespace, a.name): a.allocated_watts for a in status.allocations}
        for gone in self._budgets.get(name, set()) - set(shares):
            with contextlib.suppress(KeyError):
                self.budget_allocated_watts.remove(name, *gone)
        for (namespace, budget), allocated in shares.items():
            self.budget_allocated_watts.labels(name, namespace, budget).set(allocated)
        self._budgets[name] = set(shares)
        self._conditions[name] = record_conditions(
            self.condition, (name,), status.conditions, self._conditions.get(name, set())
        )

    def forget(self, name: str) -> None:
        self.record(name, None, DomainStatus())
        for gauge in (self.limit_watts, *(g for g, _ in self.gauges.values())):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for kind in ("idle", "unmanaged", "other_domains"):
            with contextlib.suppress(KeyError):
                self.committed_watts.remove(name, kind)
        self._budgets.pop(name, None)
        self._conditions.pop(name, None)


# name (after gpupower_domain_), help, how to read it from a domain's status.
_DOMAIN_SERIES: tuple[tuple[str, str, Callable[[DomainStatus], float | None]], ...] = (
    (
        "held_watts",
        "What every GPU on the domain's nodes holds, by the agents' reports.",
        lambda s: s.held_watts,
    ),
    ("allocated_watts", "Watts allocated to the budgets under the domain.", lambda s: s.allocated_watts),
    ("floor_watts", "What the floors of the budgets under the domain need.", lambda s: s.floor_watts),
    (
        "planned_watts",
        "Watts of the current plans of the budgets under the domain.",
        lambda s: s.planned_watts,
    ),
    ("headroom_watts", "The limit less committed and allocated watts.", lambda s: s.headroom_watts),
    ("nodes", "Nodes in the domain, its children's included.", lambda s: s.nodes),
    ("gpus", "GPUs on the domain's nodes.", lambda s: s.gpus),
)


# name (after gpupower_operator_target_), help, how to read it from a target's status.
_TARGET_SERIES: tuple[tuple[str, str, Callable[[TargetStatus], float | None]], ...] = (
    ("demand", "Demand planned for, in the profile's unit (absent without demand).", lambda t: t.demand),
    ("capacity", "Planned throughput, in the profile's unit.", lambda t: t.capacity),
    ("served_ratio", "Planned capacity over demand, at most 1.", lambda t: t.served_fraction),
    ("cap_watts", "Planned per-GPU cap in watts.", lambda t: t.cap_watts),
    ("planned_replicas", "Replicas of the plan.", lambda t: t.planned_replicas),
    ("desired_replicas", "Replicas demand alone asks for at the highest cap.", lambda t: t.desired_replicas),
    ("projected_watts", "Planned power of the target in watts.", lambda t: t.projected_watts),
    ("observed_watts", "Power the target's GPUs draw (absent until measured).", lambda t: t.observed_watts),
    ("pods_annotated", "Pods of the target that carry the planned cap.", lambda t: t.pods_annotated),
    (
        "pods_enforced",
        "Pods of the target whose agent reports their GPUs holding the planned cap.",
        lambda t: t.pods_enforced,
    ),
    ("enforced_watts", "What the target's GPUs can hold at most now, in watts.", lambda t: t.enforced_watts),
    (
        "guard_engagements",
        "Oversubscribed: times the agents' draw guard engaged on the target's pods.",
        lambda t: t.guard_engagements,
    ),
    (
        "gpu_share_watts",
        "Oversubscribed: the draw guard's share per GPU, in watts.",
        lambda t: t.gpu_share_watts,
    ),
)


def metrics_app(metrics: OperatorMetrics, healthy: Callable[[], bool]) -> web.Application:
    """``/metrics`` in the Prometheus text format; ``/healthz`` 200 while the operator runs, else 503."""

    async def serve_metrics(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def serve_health(_: web.Request) -> web.Response:
        if healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="starting\n")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", serve_health)
    return app
