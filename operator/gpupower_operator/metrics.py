"""The operator's Prometheus metrics on their own registry, and the HTTP server for /metrics and /healthz."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gpupower_api.models import BudgetStatus

_BUDGET_LABELS = ("namespace", "budget")


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

    def record_status(self, namespace: str, name: str, status: BudgetStatus) -> None:
        labels = (namespace, name)
        pairs: list[tuple[Gauge, float | None]] = [
            (self.budget_watts, status.budget_watts),
            (self.planned_watts, status.planned_watts),
            (self.enforced_watts, status.enforced_watts),
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

    def forget(self, namespace: str, name: str) -> None:
        for gauge in (
            self.budget_watts,
            self.planned_watts,
            self.enforced_watts,
            self.observed_watts,
            self.served_fraction,
            self.utilization,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)


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
