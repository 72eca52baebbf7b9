"""PromQL building: presets per engine, scoping to the target's pods, escaping, DCGM labels."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gpupower_api.models import DemandPreset, PrometheusSpec, Target
from gpupower_operator.core import promql
from gpupower_operator.core.promql import PodScope


def target(**extra: Any) -> Target:
    raw: dict[str, Any] = {
        "name": "decode",
        "workloadRef": {"name": "decode"},
        "maxReplicas": 4,
        "profile": {"points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 10}]},
    }
    raw.update(extra)
    return Target.model_validate(raw)


SCOPE = PodScope("serving", "decode-[a-z0-9]+-[a-z0-9]+")


@pytest.mark.parametrize(
    ("engine", "metric", "counters"),
    [
        ("vllm", "requests", ["vllm:request_success_total"]),
        ("vllm", "prompt-tokens", ["vllm:prompt_tokens_total"]),
        ("vllm", "generation-tokens", ["vllm:generation_tokens_total"]),
        ("vllm", "tokens", ["vllm:prompt_tokens_total", "vllm:generation_tokens_total"]),
        ("sglang", "requests", ["sglang:num_requests_total"]),
        ("sglang", "generation-tokens", ["sglang:generation_tokens_total"]),
        ("dynamo", "requests", ["dynamo_frontend_requests_total"]),
        ("dynamo", "prompt-tokens", ["dynamo_frontend_input_sequence_tokens_sum"]),
    ],
)
def test_each_preset_rates_its_engines_counters_over_the_targets_pods(
    engine: str, metric: str, counters: list[str]
) -> None:
    frontend = {"frontend": "llama-frontend"} if engine == "dynamo" else {}
    preset = DemandPreset.model_validate(
        {"engine": engine, "metric": metric, "windowSeconds": 30, **frontend}
    )
    query = promql.throughput_query(preset, SCOPE)
    found = re.findall(r"rate\(([^{]+)\{([^}]*)\}\[(\d+)s\]\)", query)
    assert [name for name, _, _ in found] == counters
    for _, matchers, window in found:
        assert matchers == 'namespace="serving",pod=~"decode-[a-z0-9]+-[a-z0-9]+"'
        assert window == "30"


def test_request_demand_adds_the_waiting_backlog_drained_over_the_window() -> None:
    preset = DemandPreset.model_validate({"engine": "vllm", "windowSeconds": 60})
    query = promql.demand_query(preset, SCOPE)
    assert query.startswith("(sum(rate(vllm:request_success_total{")
    # An absent gauge must add nothing rather than empty the whole sum.
    assert 'sum(vllm:num_requests_waiting{namespace="serving"' in query
    assert query.endswith("/ 60 or vector(0)))")


def test_token_demand_and_dynamo_demand_have_no_backlog_term() -> None:
    tokens = DemandPreset.model_validate({"engine": "vllm", "metric": "tokens"})
    assert promql.demand_query(tokens, SCOPE) == promql.throughput_query(tokens, SCOPE)
    dynamo = DemandPreset.model_validate({"engine": "dynamo", "frontend": "llama-frontend"})
    assert "waiting" not in promql.demand_query(dynamo, SCOPE)


def test_latency_quantile_prefers_the_first_histogram_that_exists() -> None:
    query = promql.latency_quantile_query(
        ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"), 0.95, SCOPE, 60
    )
    assert query.startswith(
        "histogram_quantile(0.95, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{"
    )
    assert " or sum by (le) (rate(vllm:time_per_output_token_seconds_bucket{" in query


@pytest.mark.parametrize(
    ("kind", "name", "matches", "misses"),
    [
        (
            "Deployment",
            "decode",
            ["decode-7d9f8b6c4-x2k9p"],
            ["decode-large-7d9f8b6c4-x2k9p", "decode-0", "xdecode-a-b"],
        ),
        ("StatefulSet", "prefill", ["prefill-0", "prefill-12"], ["prefill-a", "prefill-0-x"]),
        ("LeaderWorkerSet", "llama.v2", ["llama.v2-0-1"], ["llamaXv2-0-1"]),
    ],
)
def test_pod_regex_matches_the_workloads_pods_only(
    kind: str, name: str, matches: list[str], misses: list[str]
) -> None:
    pattern = promql.pod_regex_for_workload(kind, name)
    for pod in matches:
        assert re.fullmatch(pattern, pod), pod
    for pod in misses:
        assert not re.fullmatch(pattern, pod), pod


def test_pod_regex_for_names_is_exact_and_empty_matches_nothing() -> None:
    pattern = promql.pod_regex_for_names(["b.pod-1", "a-pod", "a-pod"])
    assert pattern == r"a-pod|b\.pod-1"
    assert re.fullmatch(pattern, "b.pod-1") and not re.fullmatch(pattern, "bxpod-1")
    nothing = promql.pod_regex_for_names([])
    assert not re.fullmatch(nothing, "") and not re.fullmatch(nothing, "a")


def test_label_values_are_escaped() -> None:
    assert promql.label_value('we"ird\\ns\n') == '"we\\"ird\\\\ns\\n"'


def test_power_query_uses_the_configured_dcgm_labels() -> None:
    default = promql.power_query(SCOPE, PrometheusSpec())
    assert default == (
        "max by (UUID, gpu, exported_pod) (DCGM_FI_DEV_POWER_USAGE"
        '{exported_namespace="serving",exported_pod=~"decode-[a-z0-9]+-[a-z0-9]+"})'
    )
    custom = promql.power_query(SCOPE, PrometheusSpec(pod_label="pod", namespace_label="namespace"))
    assert '{namespace="serving",pod=~"decode-' in custom


def test_target_queries_follow_the_demand_source() -> None:
    spec = PrometheusSpec()
    static = promql.target_queries(target(demand=10), "serving", spec)
    assert (static.demand, static.served, static.ttft_seconds) == (None, None, None)
    assert "DCGM_FI_DEV_POWER_USAGE" in static.power_watts

    custom = promql.target_queries(target(demandQuery="sum(rate(my_requests_total[1m]))"), "serving", spec)
    assert custom.demand == custom.served == "sum(rate(my_requests_total[1m]))"

    with_sla = promql.target_queries(
        target(preset={"engine": "vllm"}, sla={"ttftSeconds": 0.5, "quantile": 0.99}), "serving", spec
    )
    assert with_sla.ttft_seconds is not None and with_sla.ttft_seconds.startswith("histogram_quantile(0.99,")
    assert "vllm:time_to_first_token_seconds_bucket" in with_sla.ttft_seconds
    assert with_sla.inter_token_latency_seconds is None
    assert promql.uses_prometheus(target(preset={"engine": "sglang"}))
    assert not promql.uses_prometheus(target(demand=3))


def test_a_dynamo_target_reads_its_graphs_frontend_and_the_power_of_its_own_pods() -> None:
    """A Dynamo graph's workers export no dynamo_frontend_* series: the frontend's pods do."""
    decode = target(
        workloadRef={"name": "llama-vllmdecodeworker"},
        preset={"engine": "dynamo", "frontend": "llama-frontend", "metric": "generation-tokens"},
        sla={"ttftSeconds": 1.0, "interTokenLatencySeconds": 0.05},
    )
    queries = promql.target_queries(decode, "serving", PrometheusSpec())
    frontend = 'namespace="serving",pod=~"llama-frontend-[a-z0-9]+-[a-z0-9]+"'
    for query in (queries.demand, queries.served, queries.ttft_seconds, queries.inter_token_latency_seconds):
        assert query is not None and "dynamo_frontend_" in query
        assert re.findall(r"\{([^}]*)\}", query) == [frontend] * query.count("dynamo_frontend_")
    assert "llama-vllmdecodeworker-[a-z0-9]+-[a-z0-9]+" in queries.power_watts
    assert "frontend" not in queries.power_watts
