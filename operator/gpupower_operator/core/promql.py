"""PromQL for one target: demand, served throughput, latency quantiles and GPU power.

Pure string building. Every query is scoped to the target's pods (a Dynamo
target's engine series to its graph's frontend: :func:`engine_series_scope`):
engine series by the ``namespace``/``pod`` labels that Prometheus's Kubernetes service
discovery gives them, DCGM series by the exporter's pod labels
(``exported_namespace``/``exported_pod`` under the usual relabeling; both names
configurable). Pods are matched by a regular expression derived from the
workload (a Deployment's pods are ``<name>-<hash>-<suffix>``), so the counters
of pods that left within the rate window still count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gpupower_api.models import DemandPreset, Engine, PresetMetric, PrometheusSpec, Target

ENGINE_NAMESPACE_LABEL = "namespace"
ENGINE_POD_LABEL = "pod"
DCGM_POWER_METRIC = "DCGM_FI_DEV_POWER_USAGE"


@dataclass(frozen=True)
class EngineMetrics:
    """The metric names one serving engine exports."""

    requests_counter: str
    prompt_tokens_counter: str
    generation_tokens_counter: str
    ttft_histograms: tuple[str, ...]
    inter_token_histograms: tuple[str, ...]
    # Requests waiting for a slot: the part of demand that completions do not show yet.
    waiting_gauge: str | None


ENGINES: dict[Engine, EngineMetrics] = {
    Engine.VLLM: EngineMetrics(
        requests_counter="vllm:request_success_total",
        prompt_tokens_counter="vllm:prompt_tokens_total",
        generation_tokens_counter="vllm:generation_tokens_total",
        ttft_histograms=("vllm:time_to_first_token_seconds",),
        # Newer vLLM renamed time_per_output_token to inter_token_latency; the first that exists wins.
        inter_token_histograms=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        waiting_gauge="vllm:num_requests_waiting",
    ),
    Engine.SGLANG: EngineMetrics(
        requests_counter="sglang:num_requests_total",
        prompt_tokens_counter="sglang:prompt_tokens_total",
        generation_tokens_counter="sglang:generation_tokens_total",
        ttft_histograms=("sglang:time_to_first_token_seconds",),
        inter_token_histograms=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        waiting_gauge="sglang:num_queue_reqs",
    ),
    Engine.DYNAMO: EngineMetrics(
        requests_counter="dynamo_frontend_requests_total",
        # The frontend records sequence lengths as histograms: their _sum counts tokens.
        prompt_tokens_counter="dynamo_frontend_input_sequence_tokens_sum",
        generation_tokens_counter="dynamo_frontend_output_sequence_tokens_sum",
        ttft_histograms=("dynamo_frontend_time_to_first_token_seconds",),
        inter_token_histograms=("dynamo_frontend_inter_token_latency_seconds",),
        # The frontend counts requests as they arrive, so there is no backlog to add.
        waiting_gauge=None,
    ),
}

_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def label_value(value: str) -> str:
    """A PromQL string literal (double-quoted, escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def regex_literal(text: str) -> str:
    """``text`` as an RE2 pattern matching exactly itself."""
    return _RE2_SPECIAL.sub(r"\\\1", text)


def pod_regex_for_workload(kind: str, name: str) -> str:
    """The names a workload's pods get: Deployment ``name-hash-suffix``, StatefulSet ``name-N``."""
    base = regex_literal(name)
    if kind == "Deployment":
        return f"{base}-[a-z0-9]+-[a-z0-9]+"
    if kind == "StatefulSet":
        return f"{base}-[0-9]+"
    # Other kinds (LeaderWorkerSet, custom resources): any pod whose name starts with the workload's.
    return f"{base}-.+"


def pod_regex_for_names(names: Iterable[str]) -> str:
    """Exactly these pods (sorted, deduplicated); a pattern matching nothing when there are none."""
    unique = sorted(set(names))
    if not unique:
        return "a^"  # never matches, not even a series without the label
    return "|".join(regex_literal(name) for name in unique)


@dataclass(frozen=True)
class PodScope:
    """The pods of one target: their namespace and a regular expression over their names."""

    namespace: str
    pod_regex: str

    def matchers(self, namespace_label: str, pod_label: str) -> str:
        """``{ns_label="ns",pod_label=~"regex"}``."""
        return (
            f"{{{namespace_label}={label_value(self.namespace)},{pod_label}=~{label_value(self.pod_regex)}}}"
        )


def _rate_sum(metric: str, matchers: str, window_seconds: int) -> str:
    return f"sum(rate({metric}{matchers}[{window_seconds}s]))"


def throughput_query(preset: DemandPreset, scope: PodScope) -> str:
    """Served throughput of the target's pods in the preset's unit (per second)."""
    engine = ENGINES[preset.engine]
    matchers = scope.matchers(ENGINE_NAMESPACE_LABEL, ENGINE_POD_LABEL)
    window = preset.window_seconds
    if preset.metric == PresetMetric.REQUESTS:
        return _rate_sum(engine.requests_counter, matchers, window)
    if preset.metric == PresetMetric.PROMPT_TOKENS:
        return _rate_sum(engine.prompt_tokens_counter, matchers, window)
    if preset.metric == PresetMetric.GENERATION_TOKENS:
        return _rate_sum(engine.generation_tokens_counter, matchers, window)
    return (
        f"({_rate_sum(engine.prompt_tokens_counter, matchers, window)}"
        f" + {_rate_sum(engine.generation_tokens_counter, matchers, window)})"
    )


def demand_query(preset: DemandPreset, scope: PodScope) -> str:
    """Demand in the preset's unit: what is served, plus (for requests) the backlog drained over the window.

    An absent backlog gauge adds nothing; absent throughput series leave the
    result empty, which reads as "no signal", never as zero demand.
    """
    served = throughput_query(preset, scope)
    engine = ENGINES[preset.engine]
    if preset.metric != PresetMetric.REQUESTS or engine.waiting_gauge is None:
        return served
    matchers = scope.matchers(ENGINE_NAMESPACE_LABEL, ENGINE_POD_LABEL)
    backlog = f"sum({engine.waiting_gauge}{matchers}) / {preset.window_seconds}"
    return f"({served} + ({backlog} or vector(0)))"


def latency_quantile_query(
    histograms: tuple[str, ...], quantile: float, scope: PodScope, window_seconds: int
) -> str:
    """The ``quantile`` of a latency histogram over the pods; the first of ``histograms`` that exists wins."""
    matchers = scope.matchers(ENGINE_NAMESPACE_LABEL, ENGINE_POD_LABEL)
    buckets = " or ".join(
        f"sum by (le) (rate({name}_bucket{matchers}[{window_seconds}s]))" for name in histograms
    )
    return f"histogram_quantile({quantile:g}, {buckets})"


def power_query(scope: PodScope, prometheus: PrometheusSpec) -> str:
    """Per-GPU power draw (watts) of the target's pods, one series per GPU."""
    matchers = scope.matchers(prometheus.namespace_label, prometheus.pod_label)
    return f"max by (UUID, gpu, {prometheus.pod_label}) ({DCGM_POWER_METRIC}{matchers})"


@dataclass(frozen=True)
class TargetQueries:
    """Everything read for one target; ``None`` where the target asks for nothing."""

    demand: str | None
    served: str | None
    ttft_seconds: str | None
    inter_token_latency_seconds: str | None
    power_watts: str


def target_queries(target: Target, namespace: str, prometheus: PrometheusSpec) -> TargetQueries:
    """The queries for one target of a budget in ``namespace``."""
    scope = PodScope(namespace, pod_regex_for_workload(target.workload_ref.kind, target.workload_ref.name))
    engine_scope = engine_series_scope(target, namespace) or scope
    demand: str | None = None
    served: str | None = None
    ttft: str | None = None
    inter_token: str | None = None
    if target.demand_query is not None:
        # A hand-written demand query is also the best measure of traffic the target serves.
        demand = served = target.demand_query
    elif target.preset is not None:
        demand = demand_query(target.preset, engine_scope)
        served = throughput_query(target.preset, engine_scope)
        engine = ENGINES[target.preset.engine]
        sla = target.sla
        window = target.preset.window_seconds
        if sla is not None and sla.ttft_seconds is not None:
            ttft = latency_quantile_query(engine.ttft_histograms, sla.quantile, engine_scope, window)
        if sla is not None and sla.inter_token_latency_seconds is not None:
            inter_token = latency_quantile_query(
                engine.inter_token_histograms, sla.quantile, engine_scope, window
            )
    return TargetQueries(
        demand=demand,
        served=served,
        ttft_seconds=ttft,
        inter_token_latency_seconds=inter_token,
        power_watts=power_query(scope, prometheus),
    )


def engine_series_scope(target: Target, namespace: str) -> PodScope | None:
    """Where a preset's engine series come from when that is not the target's own pods.

    A Dynamo graph's workers export no ``dynamo_frontend_*`` series: its frontend
    does (a Deployment, pods ``<frontend>-<hash>-<suffix>``), for every request
    the graph serves. So a dynamo target reads them from the frontend the preset
    names; the GPU power it reads stays the target's own pods'.
    """
    if target.preset is None or target.preset.frontend is None:
        return None
    return PodScope(namespace, pod_regex_for_workload("Deployment", target.preset.frontend))


def uses_prometheus(target: Target) -> bool:
    """Whether a target's demand comes from Prometheus (power is read for every target of such a budget)."""
    return target.demand_query is not None or target.preset is not None
