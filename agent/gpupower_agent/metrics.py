"""The agent's Prometheus metrics, and the HTTP server for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping

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
        self.unmapped_devices_total = Counter(
            "gpupower_agent_unmapped_devices_total",
            "GPU devices of pods (PodResources) that are on no GPU of this node, by resource name.",
            ["resource"],
            registry=r,
        )
        self.limit_changes_total = Counter(
            "gpupower_agent_limit_changes_total",
            "Power limits set through NVML, by action (cap or restore).",
            ["action"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "gpupower_agent_reconcile_errors_total",
            "Reconciles that failed unexpectedly (the caps in place were kept).",
            registry=r,
        )
        self.api_unreachable_seconds = Gauge(
            "gpupower_agent_api_unreachable_seconds",
            "How long the Kubernetes API has been unreachable (0 when reachable).",
            registry=r,
        )
        self.condition_patches_total = Counter(
            "gpupower_agent_condition_patches_total",
            "Patches of the gpupower.dev/PowerCapped pod condition, by result (ok, failed, gone).",
            ["result"],
            registry=r,
        )
        self.pods_awaiting_devices = Gauge(
            "gpupower_agent_pods_awaiting_devices",
            "Pods on the node that ask for GPUs the GPU mapping does not show yet.",
            registry=r,
        )
        guard_labels = ["budget_namespace", "budget"]
        self.guard_engaged = Gauge(
            "gpupower_agent_guard_engaged",
            "1 while the draw guard of an oversubscribed budget holds this node's GPUs below their caps.",
            guard_labels,
            registry=r,
        )
        self.guard_engagements_total = Counter(
            "gpupower_agent_guard_engagements_total",
            "Times the draw guard of an oversubscribed budget engaged on this node.",
            guard_labels,
            registry=r,
        )
        self.guard_draw_watts = Gauge(
            "gpupower_agent_guard_draw_watts",
            "What an oversubscribed budget's GPUs on this node drew at the guard's last reading.",
            guard_labels,
            registry=r,
        )
        self.guard_share_watts = Gauge(
            "gpupower_agent_guard_share_watts",
            "What an oversubscribed budget's GPUs on this node are planned to draw (the node's share).",
            guard_labels,
            registry=r,
        )
        self.domain_info = Gauge(
            "gpupower_agent_domain_info",
            "1 for each power domain the node counts in (those that select it and every one above them).",
            ["domain"],
            registry=r,
        )
        self.domains_skipped = Gauge(
            "gpupower_agent_domains_skipped",
            "GpuPowerDomains whose spec does not validate, skipped when placing the node.",
            registry=r,
        )
        self.parked_gpus = Gauge(
            "gpupower_agent_parked_gpus",
            "GPUs no pod holds that hold their parked limit (idleGpuWatts) while the node is in a domain.",
            registry=r,
        )
        self.held_watts = Gauge(
            "gpupower_agent_held_watts",
            "Sum of the limits the node's GPUs hold, by who holds them (idle, unmanaged, budgets), "
            "while the node is in a power domain: what its gpupower.dev/gpu-power-held annotation says.",
            ["kind"],
            registry=r,
        )
        self.held_gpus = Gauge(
            "gpupower_agent_held_gpus",
            "The node's GPUs by who holds them (idle, unmanaged, budgets), while the node is in a domain.",
            ["kind"],
            registry=r,
        )
        self.held_report_patches_total = Counter(
            "gpupower_agent_held_report_patches_total",
            "Patches of the Node's gpupower.dev/gpu-power-held annotation, by result (set, removed, failed).",
            ["result"],
            registry=r,
        )
        self._pod_info_labels: set[tuple[str, str, str]] = set()
        self._domains: frozenset[str] = frozenset()

    def set_gpu_pods(self, holders: Iterable[tuple[str, str, str]]) -> None:
        """Make ``gpu_pod_info`` exactly the given (uuid, namespace, pod) series."""
        current = set(holders)
        for labels in self._pod_info_labels - current:
            self.gpu_pod_info.remove(*labels)
        for labels in current - self._pod_info_labels:
            self.gpu_pod_info.labels(*labels).set(1)
        self._pod_info_labels = current

    def set_domains(self, domains: Iterable[str]) -> None:
        """Make ``domain_info`` exactly one series per domain the node counts in."""
        current = frozenset(domains)
        for name in self._domains - current:
            self.domain_info.remove(name)
        for name in current - self._domains:
            self.domain_info.labels(name).set(1)
        self._domains = current

    def set_held(self, by_kind: Mapping[str, tuple[int, int]] | None) -> None:
        """The held gauges: (GPUs, watts) by kind while the node is in a domain; no series outside one."""
        if by_kind is None:
            self.held_watts.clear()
            self.held_gpus.clear()
            return
        for kind, (gpus, watts) in by_kind.items():
            self.held_gpus.labels(kind).set(gpus)
            self.held_watts.labels(kind).set(watts)

    def forget_guard(self, namespace: str, name: str) -> None:
        """Drop a budget's guard series (its GPUs left this node); the counter keeps its total."""
        for gauge in (self.guard_engaged, self.guard_draw_watts, self.guard_share_watts):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


REQUEST_TIMEOUT_SECONDS = 5.0


def _response(status: int, reason: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def route(path: str, metrics: AgentMetrics, healthy: Callable[[], tuple[bool, str]]) -> bytes:
    """The whole HTTP response for a GET of ``path``."""
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return _response(200, "OK", CONTENT_TYPE_LATEST, metrics.exposition())
    if path == "/healthz":
        ok, message = healthy()
        status, reason = (200, "OK") if ok else (503, "Service Unavailable")
        return _response(status, reason, "text/plain; charset=utf-8", (message + "\n").encode())
    return _response(404, "Not Found", "text/plain; charset=utf-8", b"not found\n")


async def start_http_server(
    metrics: AgentMetrics, port: int, healthy: Callable[[], tuple[bool, str]], host: str = "0.0.0.0"
) -> tuple[asyncio.Server, int]:
    """Serve ``/metrics`` and ``/healthz`` (HTTP/1.1, one request per connection); return the port bound."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            method, path, *_ = [*head.decode("latin-1").split("\r\n", 1)[0].split(" "), "", ""]
            if method in ("GET", "HEAD"):
                response = route(path, metrics, healthy)
                if method == "HEAD":
                    response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            else:
                response = _response(405, "Method Not Allowed", "text/plain", b"GET only\n")
            writer.write(response)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ) as error:
            log.debug("event=metrics_request_dropped error=%r", str(error))
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
    return server, bound
