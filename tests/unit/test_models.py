"""Validation of the GpuPowerBudget spec: every bad field gets an error that names it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpupower_api.models import (
    API_VERSION,
    KIND,
    BudgetSpec,
    InvalidSpecError,
    Mode,
    ProfileSource,
    Strategy,
    parse_budget,
    parse_spec,
)


def valid_spec() -> dict[str, Any]:
    return {
        "totalWatts": 6000,
        "safeDefaultWatts": 300,
        "targets": [
            {
                "name": "prefill",
                "workloadRef": {"name": "prefill"},
                "maxReplicas": 8,
                "capWatts": {"min": 200, "max": 700},
                "profile": {"points": [{"watts": 200, "throughput": 5}, {"watts": 700, "throughput": 10}]},
                "demand": 40,
            },
            {
                "name": "decode",
                "workloadRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "decode"},
                "gpusPerReplica": 2,
                "minReplicas": 0,
                "maxReplicas": 4,
                "profile": {"points": [{"watts": 300, "throughput": 3}]},
            },
        ],
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A valid spec with one value replaced (``path`` like ``targets.0.capWatts.min``); DELETE removes it."""
    spec = valid_spec()
    node: Any = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return spec


DELETE = object()


def test_valid_spec_gets_defaults() -> None:
    spec = parse_spec(valid_spec())
    assert spec.mode is Mode.ENFORCE
    assert spec.strategy is Strategy.OPTIMIZE
    assert spec.cap_step_watts == 5
    decode = spec.targets[1]
    assert decode.workload_ref.kind == "StatefulSet"
    assert decode.demand is None
    assert spec.targets[0].min_replicas == 1
    assert spec.targets[0].gpus_per_replica == 1


def test_cap_range_defaults_to_the_profile_span() -> None:
    spec = parse_spec(valid_spec())
    assert (spec.targets[0].cap_range().min, spec.targets[0].cap_range().max) == (200, 700)
    assert (spec.targets[1].cap_range().min, spec.targets[1].cap_range().max) == (300, 300)


def test_measured_points_may_dip() -> None:
    # Benchmark noise: 425 W measured 0.1 % below 350 W; the planner raises it, the API keeps it.
    points = [(200, 14.0), (350, 25.626), (425, 25.595), (500, 26.4)]
    spec = parse_spec(
        with_change("targets.0.profile.points", [{"watts": w, "throughput": t} for w, t in points])
    )
    assert [(p.watts, p.throughput) for p in spec.targets[0].profile.curve()] == points
    assert spec.targets[0].profile.origin() is ProfileSource.POINTS


def test_a_measured_profile_says_so() -> None:
    spec = parse_spec(with_change("targets.0.profile.source", "Measured"))
    assert spec.targets[0].profile.origin() is ProfileSource.MEASURED


def test_a_preset_profile_spans_its_estimate_and_sets_the_cap_range() -> None:
    spec = parse_spec(
        with_change("targets.1.profile", {"preset": "decode", "peakThroughput": 3, "maxWatts": 700})
    )
    decode = spec.targets[1]
    assert decode.profile.origin() is ProfileSource.PRESET
    assert (decode.cap_range().min, decode.cap_range().max) == (200, 700)


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("totalWatts", 0, "spec.totalWatts", "greater than 0"),
        ("totalWatts", -5, "spec.totalWatts", "greater than 0"),
        ("totalWatts", "lots", "spec.totalWatts", "integer"),
        ("totalWatts", DELETE, "spec.totalWatts", "required"),
        ("safeDefaultWatts", 0, "spec.safeDefaultWatts", "greater than 0"),
        ("safeDefaultWatts", DELETE, "spec.safeDefaultWatts", "required"),
        ("mode", "DryRun", "spec.mode", "Enforce"),
        ("strategy", "Greedy", "spec.strategy", "Optimize"),
        ("capStepWatts", 0, "spec.capStepWatts", "greater than or equal to 1"),
        ("targets", [], "spec.targets", "at least 1"),
        ("targets.0.name", "Prefill_1", "spec.targets[0].name", "pattern"),
        ("targets.1.name", "prefill", "spec.targets", "targets[1].name 'prefill' is used by another target"),
        ("targets.0.workloadRef", DELETE, "spec.targets[0].workloadRef", "required"),
        ("targets.0.workloadRef.name", "", "spec.targets[0].workloadRef.name", "at least 1"),
        ("targets.0.gpusPerReplica", 0, "spec.targets[0].gpusPerReplica", "greater than or equal to 1"),
        ("targets.0.minReplicas", -1, "spec.targets[0].minReplicas", "greater than or equal to 0"),
        ("targets.0.minReplicas", 9, "spec.targets[0]", "minReplicas (9) must be <= maxReplicas (8)"),
        ("targets.0.maxReplicas", DELETE, "spec.targets[0].maxReplicas", "required"),
        ("targets.0.capWatts.min", 800, "spec.targets[0].capWatts", "min (800) must be <= max (700)"),
        ("targets.0.capWatts.min", 0, "spec.targets[0].capWatts.min", "greater than 0"),
        ("targets.0.profile.points", [], "spec.targets[0].profile.points", "at least 1"),
        (
            "targets.0.profile.points.0.watts",
            0,
            "spec.targets[0].profile.points[0].watts",
            "greater than or equal to 1",
        ),
        ("targets.0.profile.points.0.watts", 700, "spec.targets[0].profile.points", "points[1].watts (700)"),
        ("targets.0.profile.points.1.watts", 200, "spec.targets[0].profile.points", "points[1].watts (200)"),
        ("targets.0.profile.points.1.watts", 20000, "spec.targets[0].profile.points[1].watts", "10000"),
        ("targets.0.profile.points.0.throughput", -1, "spec.targets[0].profile.points[0].throughput", ">= 0"),
        (
            "targets.0.profile.points.0.throughput",
            float("nan"),
            "spec.targets[0].profile.points[0].throughput",
            "finite",
        ),
        (
            "targets.0.profile.points.0.throughput",
            float("inf"),
            "spec.targets[0].profile.points[0].throughput",
            "finite",
        ),
        (
            "targets.0.profile.points.0.throughput",
            5e9,
            "spec.targets[0].profile.points[0].throughput",
            "1000000000",
        ),
        (
            "targets.0.profile",
            {"unit": "tokens/s"},
            "spec.targets[0].profile",
            "exactly one of points or preset",
        ),
        (
            "targets.0.profile",
            {
                "points": [{"watts": 300, "throughput": 3}],
                "preset": "decode",
                "peakThroughput": 3,
                "maxWatts": 700,
            },
            "spec.targets[0].profile",
            "exactly one of points or preset",
        ),
        (
            "targets.0.profile",
            {"preset": "decode", "maxWatts": 700},
            "spec.targets[0].profile",
            "peakThroughput and maxWatts",
        ),
        (
            "targets.0.profile",
            {"preset": "sparse", "peakThroughput": 3, "maxWatts": 700},
            "spec.targets[0].profile.preset",
            "prefill",
        ),
        (
            "targets.0.profile",
            {"points": [{"watts": 300, "throughput": 3}], "maxWatts": 700},
            "spec.targets[0].profile",
            "maxWatts go with a preset",
        ),
        (
            "targets.0.profile",
            {"preset": "prefill", "peakThroughput": 3, "maxWatts": 700, "minWatts": 700},
            "spec.targets[0].profile",
            "minWatts (700) must be < maxWatts (700)",
        ),
        (
            "targets.0.profile",
            {"preset": "prefill", "peakThroughput": 3, "maxWatts": 700, "naturalWatts": 300},
            "spec.targets[0].profile",
            "naturalWatts goes with the decode preset",
        ),
        (
            "targets.0.profile",
            {"preset": "decode", "peakThroughput": 3, "maxWatts": 700, "minWatts": 200, "naturalWatts": 150},
            "spec.targets[0].profile",
            "naturalWatts (150) must be within minWatts..maxWatts",
        ),
        (
            "targets.0.profile",
            {"preset": "decode", "peakThroughput": 0, "maxWatts": 700},
            "spec.targets[0].profile.peakThroughput",
            "greater than 0",
        ),
        (
            "targets.0.profile",
            {"preset": "decode", "peakThroughput": 3, "maxWatts": 700, "source": "Measured"},
            "spec.targets[0].profile",
            "source Preset goes with a preset",
        ),
        ("targets.0.profile.source", "Preset", "spec.targets[0].profile", "source Preset goes with a preset"),
        ("targets.0.demand", -3, "spec.targets[0].demand", "greater than or equal to 0"),
        ("targets.0.surprise", 1, "spec.targets[0].surprise", "not permitted"),
        ("targets.0.preset", {"engine": "triton"}, "spec.targets[0].preset.engine", "vllm"),
        (
            "targets.0.preset",
            {"engine": "vllm", "metric": "joules"},
            "spec.targets[0].preset.metric",
            "requests",
        ),
        (
            "targets.0.preset",
            {"engine": "vllm", "windowSeconds": 1},
            "spec.targets[0].preset.windowSeconds",
            "5",
        ),
        ("targets.0.preset", {"engine": "dynamo"}, "spec.targets[0].preset", "frontend is required"),
        (
            "targets.0.preset",
            {"engine": "vllm", "frontend": "llama-frontend"},
            "spec.targets[0].preset",
            "frontend applies to engine dynamo only",
        ),
        (
            "targets.0.preset",
            {"engine": "dynamo", "frontend": "Llama_Frontend"},
            "spec.targets[0].preset.frontend",
            "pattern",
        ),
        ("targets.0.demandQuery", "", "spec.targets[0].demandQuery", "at least 1"),
        ("targets.0.sla", {"ttftSeconds": 0.5}, "spec.targets[0]", "sla needs a preset"),
        ("prometheus", {"url": "prom:9090"}, "spec.prometheus.url", "pattern"),
        ("prometheus", {"timeoutSeconds": 0}, "spec.prometheus.timeoutSeconds", "greater than 0"),
        (
            "prometheus",
            {"intervalSeconds": 0},
            "spec.prometheus.intervalSeconds",
            "greater than or equal to 1",
        ),
        (
            "prometheus",
            {"bearerTokenSecretRef": {"name": "t"}},
            "spec.prometheus.bearerTokenSecretRef.key",
            "required",
        ),
        (
            "prometheus",
            {"caSecretRef": {"name": "ca", "key": "ca.crt"}, "insecureSkipVerify": True},
            "spec.prometheus",
            "mutually exclusive",
        ),
    ],
)
def test_each_invalid_field_is_named(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(with_change(path, value))
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"{field}: ")
    if words == ">= 0":
        words = "greater than or equal to 0"
    assert words in message


def test_all_errors_are_reported_not_only_the_first() -> None:
    spec = with_change("totalWatts", 0)
    spec["safeDefaultWatts"] = -1
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec)
    fields = [field for field, _ in caught.value.errors]
    assert fields == ["spec.totalWatts", "spec.safeDefaultWatts"]


def test_whole_object_checks_api_version_and_kind() -> None:
    obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "b"}, "spec": valid_spec()}
    assert parse_budget(obj).name == "b"
    wrong_kind = copy.deepcopy(obj) | {"kind": "Deployment"}
    with pytest.raises(InvalidSpecError, match=r"^kind: must be 'GpuPowerBudget'"):
        parse_budget(wrong_kind)
    wrong_version = copy.deepcopy(obj) | {"apiVersion": "gpupower.dev/v1"}
    with pytest.raises(InvalidSpecError, match=r"^apiVersion: must be 'gpupower.dev/v1alpha1'"):
        parse_budget(wrong_version)
    with pytest.raises(InvalidSpecError, match=r"^object: expected a mapping"):
        parse_budget(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_models_round_trip_through_camel_case() -> None:
    spec = parse_spec(valid_spec())
    again = BudgetSpec.model_validate(spec.model_dump(by_alias=True))
    assert again == spec
    assert "totalWatts" in spec.model_dump(by_alias=True)


def test_prometheus_demand_and_sla_fields_parse_with_defaults() -> None:
    raw = valid_spec()
    raw["prometheus"] = {"url": "https://prometheus.monitoring:9090"}
    raw["targets"][0]["preset"] = {"engine": "vllm"}
    raw["targets"][0]["sla"] = {"ttftSeconds": 0.5}
    raw["targets"][1]["demandQuery"] = "sum(rate(my_requests_total[1m]))"
    spec = parse_spec(raw)
    assert spec.prometheus is not None
    assert (spec.prometheus.pod_label, spec.prometheus.namespace_label) == (
        "exported_pod",
        "exported_namespace",
    )
    assert spec.prometheus.interval_seconds == 30
    preset = spec.targets[0].preset
    assert preset is not None and (preset.metric, preset.window_seconds) == ("requests", 60)
    assert spec.targets[0].sla is not None and spec.targets[0].sla.quantile == 0.9
    assert spec.targets[1].demand_query == "sum(rate(my_requests_total[1m]))"


def test_demand_query_and_preset_are_mutually_exclusive() -> None:
    raw = valid_spec()
    raw["targets"][0]["preset"] = {"engine": "sglang"}
    raw["targets"][0]["demandQuery"] = "vector(1)"
    with pytest.raises(InvalidSpecError, match="demandQuery and preset are mutually exclusive"):
        parse_spec(raw)


@pytest.mark.parametrize(
    ("oversubscription", "words"),
    [
        ({"maxRatio": 0.5}, "maxRatio (0.5) must be between 1.0 and 3"),
        ({"maxRatio": 3.5}, "maxRatio (3.5) must be between 1.0 and 3"),
        (
            {"maxRatio": 1.2, "guardReleaseRatio": 0.95},
            "guardReleaseRatio (0.95) must be below guardTargetRatio",
        ),
        ({"maxRatio": 1.2, "guardReadings": 0}, "greater than or equal to 1"),
    ],
)
def test_an_unusable_oversubscription_is_refused_naming_the_field(
    oversubscription: dict[str, object], words: str
) -> None:
    spec = {
        "totalWatts": 4000,
        "safeDefaultWatts": 200,
        "oversubscription": oversubscription,
        "targets": [
            {
                "name": "decode",
                "workloadRef": {"name": "decode"},
                "maxReplicas": 4,
                "profile": {"points": [{"watts": 200, "throughput": 1}, {"watts": 400, "throughput": 2}]},
            }
        ],
    }
    with pytest.raises(InvalidSpecError) as raised:
        parse_spec(spec)
    assert raised.value.field.startswith("spec.oversubscription")
    assert words in str(raised.value)
