"""The dynamo preset against series shaped like a real Dynamo graph's, in the real Prometheus.

A DynamoGraphDeployment ``llama`` runs a frontend Deployment (``llama-frontend``)
and worker Deployments (``llama-vllmdecodeworker``, ...). Only the frontend's
pods export ``dynamo_frontend_*`` (labels ``model``, and ``endpoint``,
``request_type``, ``status`` on the request counter); the workers export
``dynamo_component_*`` with ``dynamo_namespace``/``dynamo_component``/
``dynamo_endpoint``, and DCGM reports their GPUs. The synthetic exporter
serves exactly that; :class:`SignalSource` reads it from the real server.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gpupower_api.models import BudgetSpec, parse_spec
from gpupower_operator.core import promql
from gpupower_operator.core.signals import DemandSource
from gpupower_operator.shell.signalsource import SignalSource
from tests.e2e.promkit import PodTraffic, PrometheusStack, close_to
from tests.envtest import unique_name

pytestmark = pytest.mark.prometheus

WINDOW_SECONDS = 5
FRONTENDS = {"llama-frontend-7d9f8c6b5-x2k4p": 7.0, "llama-frontend-7d9f8c6b5-q8m2z": 5.0}
WORKERS = ("llama-vllmdecodeworker-6c5d9f7b8-a1b2c", "llama-vllmdecodeworker-6c5d9f7b8-d3e4f")


def spec(url: str, metric: str) -> BudgetSpec:
    return parse_spec(
        {
            "totalWatts": 4000,
            "safeDefaultWatts": 300,
            "prometheus": {"url": url, "intervalSeconds": 1, "timeoutSeconds": 2},
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "llama-vllmdecodeworker"},
                    "maxReplicas": 8,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {"points": [{"watts": 200, "throughput": 3}, {"watts": 400, "throughput": 6}]},
                    "preset": {
                        "engine": "dynamo",
                        "metric": metric,
                        "windowSeconds": WINDOW_SECONDS,
                        "frontend": "llama-frontend",
                    },
                    "sla": {"ttftSeconds": 1.0},
                }
            ],
        }
    )


def play_the_graph(stack: PrometheusStack, namespace: str) -> None:
    for pod, rate in FRONTENDS.items():
        traffic = PodTraffic(
            requests_per_second=rate, generation_tokens_per_second=rate * 200, ttft_seconds=0.3
        )
        stack.exporter.set_dynamo_frontend(namespace, pod, traffic)
    for pod in WORKERS:
        stack.exporter.set_dynamo_worker(namespace, pod, "VllmDecodeWorker", requests_per_second=6.0)
        stack.exporter.set_gpu_power(namespace, pod, 0, 320.0)


async def test_dynamo_demand_latency_and_power_come_from_the_frontend_and_the_workers(
    prometheus: PrometheusStack,
) -> None:
    namespace = unique_name("dynamo")
    play_the_graph(prometheus, namespace)
    source = SignalSource(default_url=None)
    budget = spec(prometheus.url, "requests")
    deadline = time.monotonic() + 30
    decode = None
    while time.monotonic() < deadline:
        signals = await source.signals(namespace, "llama", budget, None)
        assert signals is not None
        decode = signals.targets["decode"]
        # Both frontend pods' requests (successes and errors: all are demand), the workers' GPUs.
        if close_to(decode.demand, 12.0) and decode.observed_watts is not None and decode.ttft_seconds:
            break
        await asyncio.sleep(1)
    assert decode is not None and close_to(decode.demand, 12.0), decode
    assert decode.demand_source == DemandSource.PROMETHEUS
    assert decode.observed_watts == pytest.approx(640.0)
    assert close_to(decode.ttft_seconds, 0.3, 0.15)

    tokens = await source.signals(namespace, "tokens", spec(prometheus.url, "generation-tokens"), None)
    assert tokens is not None and close_to(tokens.targets["decode"].demand, 2400.0)


def test_scoped_to_the_workers_as_before_the_frontend_field_the_dynamo_series_are_not_there(
    prometheus: PrometheusStack,
) -> None:
    """What the preset used to read: the workers' pods carry no frontend series, so it saw no demand."""
    namespace = unique_name("dynamo")
    play_the_graph(prometheus, namespace)
    preset = spec(prometheus.url, "requests").targets[0].preset
    assert preset is not None

    def vector(query: str) -> list[object]:
        return list(prometheus.server.api("/api/v1/query", query=query)["result"])

    workers = promql.PodScope(
        namespace, promql.pod_regex_for_workload("Deployment", "llama-vllmdecodeworker")
    )
    frontend = promql.PodScope(namespace, promql.pod_regex_for_workload("Deployment", "llama-frontend"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not vector(promql.demand_query(preset, frontend)):
        time.sleep(0.5)
    assert vector(promql.demand_query(preset, frontend)), "the frontend's series are scraped"
    assert vector(promql.demand_query(preset, workers)) == []
    worker_series = vector(f'dynamo_component_requests_total{{namespace="{namespace}"}}')
    assert len(worker_series) == len(WORKERS), "the workers report only their component series"
