"""The agent's Prometheus metrics, and the HTTP server for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)


class AgentMetrics:
    """Every metric the agent exports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "gpupower_agent_info",
            "The agent's configuration; nvml=fake when --fake-gpus replaces NVML.",
            ["node", "nvml", "gpu_model", "gpu_mapping"],
            registry=r,
        )
        self.gpu_power_limit_watts = Gauge(
            "gpupower_agent_gpu_power_limit_watts",
            "Power limit NVML reports for the GPU after the last reconcile.",
            ["uuid", "index"],
            registry=r,
        )
        self.gpu_power_usage_watts = Gauge(
            "gpupower_agent_gpu_power_usage_watts", "Power the GPU draws.", ["uuid", "index"], registry=r
        )
        self.gpu_managed = Gauge(
            "gpupower_agent_gpu_managed",
            "1 while the agent holds a cap on the GPU, else 0.",
            ["uuid", "index"],
            registry=r,
        )
        self.gpu_pod_info = Gauge(
            "gpupower_agent_gpu_pod_info",
            "1 while the pod holds the GPU.",
            ["uuid", "namespace", "pod"],
            registry=r,
        )
        self.reconcile_duration_seconds = Histogram(
            "gpupower_agent_reconcile_duration_seconds",
            "Time of one full reconcile of the node.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.conflicts_total = Counter(
            "gpupower_agent_cap_conflicts_total",
            "Times pods on one GPU disagreed on its cap (the safe default was applied).",
            registry=r,
        )
        self.safe_default_fallbacks_total = Counter(
            "gpupower_agent_safe_default_fallbacks_total",
            "Times a GPU or pod fell back to a safe default, by reason.",
            ["reason"],
            registry=r,
        )
        self.untrusted_caps_total = Counter(
            "gpupower_agent_untrusted_caps_total",
            "Pod caps not backed by their budget's status, by reason.",
            ["reason"],
            registry=r,
        )
        self.clamps_total = Counter(
            "gpupower_agent_clamps_total",
            "Caps clamped to what the GPU accepts.",
            registry=r,
        )
        self.nvml_errors_total = Counter(
            "gpupower_agent_nvml_errors_total",
            "NVML calls that failed, by operation and kind.",
            ["operation", "kind"],
            registry=r,
        )
        self.api_errors_total = Counter(
            "gpupower_agent_api_errors_total",
            "Failed lists or watches of the Kubernetes API, by resource.",
            ["resource"],
            registry=r,
        )
        self.mapping_errors_total = Counter(
            "gpupower_agent_mapping_errors_total",
            "Failed reads of the GPU-to-pod mapping, by source.",
            ["source"],
            registry=r,
        )
        self.limit_changes_total = Counter(
            "gpupower_agent_limit_changes_total",
            "Power limits set through NVML, by action (cap or restore).",
            ["action"],
            registry=r,
        )
        self.api_unreachable_seconds = Gauge(
            "gpupower_agent_api_unreachable_seconds",
            "How long the Kubernetes API has been unreachable (0 when reachable).",
            registry=r,
        )
        self._pod_info_labels: set[tuple[str, str, str]] = set()

    def set_gpu_pods(self, holders: Iterable[tuple[str, str, str]]) -> None:
        """Make ``gpu_pod_info`` exactly the given (uuid, namespace, pod) series."""
        current = set(holders)
        for labels in self._pod_info_labels - current:
            self.gpu_pod_info.remove(*labels)
        for labels in current - self._pod_info_labels:
            self.gpu_pod_info.labels(*labels).set(1)
        self._pod_info_labels = current

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def start_http_server(
    metrics: AgentMetrics, port: int, healthy: Callable[[], tuple[bool, str]], host: str = "0.0.0.0"
) -> tuple[web.AppRunner, int]:
    """Serve ``/metrics`` and ``/healthz``; return the runner and the port bound (for port 0)."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz_handler(_: web.Request) -> web.Response:
        ok, message = healthy()
        return web.Response(status=200 if ok else 503, text=message + "\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    return runner, bound
