"""A real Prometheus for tests: the Debian ``prometheus`` binary on loopback, scraping a synthetic exporter.

The exporter (prometheus-client) serves what vLLM and DCGM would: per pod
request and token counters growing at rates the test sets, TTFT and
inter-token latency histograms, a waiting-requests gauge, and per GPU
``DCGM_FI_DEV_POWER_USAGE`` with ``exported_pod``/``exported_namespace``/
``gpu``/``UUID`` labels. Engine series carry ``namespace``/``pod`` labels as
Prometheus's Kubernetes service discovery would give them.

Both listen on 127.0.0.1 only. The Prometheus process dies with the test
process (``PR_SET_PDEATHSIG``) and is killed in the fixture's finalizer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest

from tests.children import tied_to_this_process

SCRAPE_INTERVAL_SECONDS = 1
# Latency buckets 10 % apart: a quantile read back is within 10 % of the latency set.
LATENCY_BUCKETS_SECONDS = tuple(round(0.001 * 1.1**k, 6) for k in range(0, 125))


def prometheus_binary() -> str | None:
    return os.environ.get("GPUPOWER_PROMETHEUS") or shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PodTraffic:
    """What one engine pod reports; rates per second, latencies in seconds (None: no such series)."""

    requests_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0
    generation_tokens_per_second: float = 0.0
    ttft_seconds: float | None = None
    inter_token_latency_seconds: float | None = None
    waiting: float = 0.0


@dataclass
class _PodCounters:
    traffic: PodTraffic
    requests: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    ttft_buckets: list[float] | None = None
    ttft_sum: float = 0.0
    itl_buckets: list[float] | None = None
    itl_sum: float = 0.0
    tokens_for_itl: float = 0.0


def _observe(buckets: list[float] | None, value: float, count: float) -> list[float]:
    counts = buckets if buckets is not None else [0.0] * (len(LATENCY_BUCKETS_SECONDS) + 1)
    for index, upper in enumerate(LATENCY_BUCKETS_SECONDS):
        if value <= upper:
            counts[index] += count
    counts[-1] += count  # +Inf
    return counts


class SyntheticExporter:
    """A prometheus-client collector whose counters grow at the rates the test sets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _PodCounters] = {}
        self._gpus: dict[tuple[str, str, int], tuple[str, float]] = {}
        self._dynamo_frontends: dict[tuple[str, str], _PodCounters] = {}
        self._dynamo_workers: dict[tuple[str, str], tuple[str, float, float]] = {}
        self._last = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None
        self.port = 0

    # -- what the test drives

    def set_traffic(self, namespace: str, pod: str, traffic: PodTraffic) -> None:
        self._set(self._pods, namespace, pod, traffic)

    def _set(
        self, table: dict[tuple[str, str], _PodCounters], namespace: str, pod: str, traffic: PodTraffic
    ) -> None:
        with self._lock:
            self._advance()
            counters = table.get((namespace, pod))
            if counters is None:
                table[(namespace, pod)] = _PodCounters(traffic)
            else:
                counters.traffic = traffic

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._advance()
            self._pods.pop((namespace, pod), None)
            for key in [k for k in self._gpus if k[:2] == (namespace, pod)]:
                del self._gpus[key]

    def set_dynamo_frontend(self, namespace: str, pod: str, traffic: PodTraffic) -> None:
        """A Dynamo graph's frontend pod: it reports the dynamo_frontend_* series for the whole graph."""
        self._set(self._dynamo_frontends, namespace, pod, traffic)

    def set_dynamo_worker(self, namespace: str, pod: str, component: str, requests_per_second: float) -> None:
        """A Dynamo worker pod: only the dynamo_component_* series of its backend endpoint."""
        with self._lock:
            self._advance()
            self._dynamo_workers[(namespace, pod)] = (component, requests_per_second, 0.0)

    def set_gpu_power(self, namespace: str, pod: str, gpu: int, watts: float) -> None:
        with self._lock:
            uuid = f"GPU-{abs(hash((namespace, pod, gpu))) % 10**12:012d}"
            self._gpus[(namespace, pod, gpu)] = (uuid, watts)

    # -- the collector

    def _advance(self) -> None:
        now = time.monotonic()
        seconds = now - self._last
        self._last = now
        for key, (component, rate, total) in self._dynamo_workers.items():
            self._dynamo_workers[key] = (component, rate, total + rate * seconds)
        for counters in [*self._pods.values(), *self._dynamo_frontends.values()]:
            traffic = counters.traffic
            requests = traffic.requests_per_second * seconds
            counters.requests += requests
            counters.prompt_tokens += traffic.prompt_tokens_per_second * seconds
            generated = traffic.generation_tokens_per_second * seconds
            counters.generation_tokens += generated
            if traffic.ttft_seconds is not None and requests > 0:
                counters.ttft_buckets = _observe(counters.ttft_buckets, traffic.ttft_seconds, requests)
                counters.ttft_sum += traffic.ttft_seconds * requests
            if traffic.inter_token_latency_seconds is not None and generated > 0:
                counters.itl_buckets = _observe(
                    counters.itl_buckets, traffic.inter_token_latency_seconds, generated
                )
                counters.itl_sum += traffic.inter_token_latency_seconds * generated

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        with self._lock:
            self._advance()
            labels = ["namespace", "pod", "model_name"]
            success = CounterMetricFamily("vllm:request_success", "Finished requests.", labels=labels)
            prompt = CounterMetricFamily("vllm:prompt_tokens", "Prefill tokens.", labels=labels)
            generation = CounterMetricFamily("vllm:generation_tokens", "Generated tokens.", labels=labels)
            waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Waiting requests.", labels=labels)
            ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds", "TTFT.", labels=labels)
            itl = HistogramMetricFamily(
                "vllm:time_per_output_token_seconds", "Inter-token latency.", labels=labels
            )
            for (namespace, pod), counters in sorted(self._pods.items()):
                values = [namespace, pod, "llama"]
                success.add_metric(values, counters.requests)
                prompt.add_metric(values, counters.prompt_tokens)
                generation.add_metric(values, counters.generation_tokens)
                waiting.add_metric(values, counters.traffic.waiting)
                for family, buckets, total in (
                    (ttft, counters.ttft_buckets, counters.ttft_sum),
                    (itl, counters.itl_buckets, counters.itl_sum),
                ):
                    if buckets is None:
                        continue
                    finite = zip(LATENCY_BUCKETS_SECONDS, buckets[:-1], strict=True)
                    pairs = [(f"{upper:g}", count) for upper, count in finite]
                    pairs.append(("+Inf", buckets[-1]))
                    family.add_metric(values, pairs, total)
            power = GaugeMetricFamily(
                "DCGM_FI_DEV_POWER_USAGE",
                "Power draw (in W).",
                labels=[
                    "gpu",
                    "UUID",
                    "Hostname",
                    "exported_namespace",
                    "exported_pod",
                    "exported_container",
                ],
            )
            for (namespace, pod, gpu), (uuid, watts) in sorted(self._gpus.items()):
                power.add_metric([str(gpu), uuid, "gpu-node-1", namespace, pod, "engine"], watts)
        yield from (success, prompt, generation, waiting, ttft, itl, power)
        yield from self._collect_dynamo()

    def _collect_dynamo(self) -> Iterator[Any]:
        """Series shaped like a real Dynamo graph's (names and labels of Dynamo's metrics reference)."""
        with self._lock:
            requests = CounterMetricFamily(
                "dynamo_frontend_requests",
                "Total number of LLM requests processed",
                labels=["namespace", "pod", "endpoint", "model", "request_type", "status"],
            )
            model_labels = ["namespace", "pod", "model"]
            families = {
                name: HistogramMetricFamily(f"dynamo_frontend_{name}", help_text, labels=model_labels)
                for name, help_text in (
                    ("input_sequence_tokens", "Input sequence length in tokens"),
                    ("output_sequence_tokens", "Output sequence length in tokens"),
                    ("time_to_first_token_seconds", "Time to first token in seconds"),
                    ("inter_token_latency_seconds", "Inter-token latency in seconds"),
                )
            }
            worker = CounterMetricFamily(
                "dynamo_component_requests",
                "Total requests processed by work handler",
                labels=["namespace", "pod", "dynamo_namespace", "dynamo_component", "dynamo_endpoint"],
            )
            for (namespace, pod), counters in sorted(self._dynamo_frontends.items()):
                model = "meta-llama/llama-3.1-70b-instruct"
                # Most requests succeed and stream; a few fail: all of them are demand.
                for request_type, status, share in (("stream", "success", 0.9), ("stream", "error", 0.1)):
                    labels = [namespace, pod, "chat_completions", model, request_type, status]
                    requests.add_metric(labels, counters.requests * share)
                values = [namespace, pod, model]
                for name, total in (
                    ("input_sequence_tokens", counters.prompt_tokens),
                    ("output_sequence_tokens", counters.generation_tokens),
                ):
                    # Token histograms: only their _sum counts tokens; buckets are sequence lengths.
                    families[name].add_metric(values, [("+Inf", counters.requests)], total)
                for name, buckets, total in (
                    ("time_to_first_token_seconds", counters.ttft_buckets, counters.ttft_sum),
                    ("inter_token_latency_seconds", counters.itl_buckets, counters.itl_sum),
                ):
                    if buckets is None:
                        continue
                    finite = zip(LATENCY_BUCKETS_SECONDS, buckets[:-1], strict=True)
                    pairs = [(f"{upper:g}", count) for upper, count in finite]
                    pairs.append(("+Inf", buckets[-1]))
                    families[name].add_metric(values, pairs, total)
            for (namespace, pod), (component, _, total) in sorted(self._dynamo_workers.items()):
                worker.add_metric([namespace, pod, f"{namespace}-llama", component, "generate"], total)
        yield requests
        yield from families.values()
        yield worker

    # -- serving

    def start(self) -> None:
        # The classic text format, whatever the scraper asks for: prometheus-client's OpenMetrics
        # output rewrites the colons of vLLM's metric names, which the real vLLM exporter does not.
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="synthetic-exporter", daemon=True).start()
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class PrometheusServer:
    """The real ``prometheus`` binary on 127.0.0.1, 1 s scrape and evaluation, temp storage."""

    def __init__(
        self,
        scrape_port: int,
        workdir: Path,
        extra_scrape_configs: list[dict[str, Any]] | None = None,
        rule_files: list[Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.scrape_port = scrape_port
        self.process: subprocess.Popen[bytes] | None = None
        self.config = workdir / "prometheus.yml"
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
            },
            "scrape_configs": [
                {
                    "job_name": "synthetic",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}],
                },
                *(extra_scrape_configs or []),
            ],
        }
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        self.config.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_seconds: float = 30.0) -> None:
        binary = prometheus_binary()
        assert binary is not None, "prometheus not installed (apt-get install prometheus)"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                tied_to_this_process(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=warn",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout_seconds:g}s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def api(self, path: str, **params: str) -> Any:
        """GET one endpoint of the HTTP API (``/api/v1/...``); the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]


@dataclass
class PrometheusStack:
    exporter: SyntheticExporter
    server: PrometheusServer

    @property
    def url(self) -> str:
        return self.server.url


def start_stack() -> Iterator[PrometheusStack]:
    """Exporter + Prometheus for a test session or module; both stopped afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="gpupower-prometheus-"))
    exporter = SyntheticExporter()
    exporter.start()
    server = PrometheusServer(exporter.port, workdir)
    try:
        server.start()
        yield PrometheusStack(exporter, server)
    finally:
        server.stop()
        exporter.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def close_to(value: float | None, expected: float, relative: float = 0.1) -> bool:
    return value is not None and math.isfinite(value) and abs(value - expected) <= relative * abs(expected)
