"""The generated CRDs on a real API server: examples accepted, invalid objects rejected naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.envtest import ControlPlane

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def load(path: Path, namespace: str) -> dict[str, Any]:
    """The first budget of an example, in ``namespace``."""
    document = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "GpuPowerBudget")
    document["metadata"]["namespace"] = namespace
    return document


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_is_accepted(crd_installed: ControlPlane, namespace: str, example: Path) -> None:
    documents = list(yaml.safe_load_all(example.read_text()))
    suffix = namespace.rsplit("-", 1)[-1]
    for document in documents:
        if document["kind"] == "GpuPowerBudget":
            document["metadata"]["namespace"] = namespace
        else:  # cluster-scoped: a name of this test's own, parents renamed alike
            document["metadata"]["name"] += f"-{suffix}"
            if "parent" in document["spec"]:
                document["spec"]["parent"] += f"-{suffix}"
    crd_installed.apply(documents)
    for document in documents:
        name = document["metadata"]["name"]
        if document["kind"] == "GpuPowerBudget":
            stored = crd_installed.get_json("gpb", name, "-n", namespace)
            # Defaults come from the schema, as the models define them.
            assert stored["spec"]["capStepWatts"] >= 1
            assert stored["spec"]["strategy"] in {"Optimize", "Proportional"}
            assert stored["spec"]["priority"] == document["spec"].get("priority", 0)
            assert all("gpusPerReplica" in target for target in stored["spec"]["targets"])
        else:
            stored = crd_installed.get_json("gpd", name)
            assert stored["spec"] == document["spec"]
            crd_installed.kubectl("delete", "gpd", name, "--wait=false")


def _spec_change(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    node: Any = changed["spec"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return changed


INVALID = [
    ("totalWatts", 0, "spec.totalWatts", "should be greater than or equal to 1"),
    ("safeDefaultWatts", -10, "spec.safeDefaultWatts", "should be greater than or equal to 1"),
    ("mode", "DryRun", "spec.mode", 'Unsupported value: "DryRun"'),
    ("strategy", "Greedy", "spec.strategy", 'Unsupported value: "Greedy"'),
    ("targets.0.minReplicas", 99, "spec.targets[0].minReplicas", "minReplicas must be <= maxReplicas"),
    ("targets.0.capWatts.min", 900, "spec.targets[0].capWatts.min", "capWatts.min must be <= capWatts.max"),
    ("targets.0.name", "Prefill", "spec.targets[0].name", "should match"),
    ("targets.1.name", "prefill", "spec.targets[1]", "Duplicate value"),
    ("targets.0.gpusPerReplica", 0, "spec.targets[0].gpusPerReplica", "greater than or equal to 1"),
    (
        "targets.0.profile.points",
        [{"watts": 400, "throughput": 10}, {"watts": 300, "throughput": 12}],
        "spec.targets[0].profile.points",
        "strictly increasing watts",
    ),
    (
        "targets.0.profile.points",
        [{"watts": 300, "throughput": 12}, {"watts": 300, "throughput": 13}],
        "spec.targets[0].profile.points",
        "strictly increasing watts",
    ),
    ("targets.0.profile.points.0.watts", 20000, "spec.targets[0].profile.points[0].watts", "10000"),
    ("targets.0.profile.points.0.throughput", -1, "spec.targets[0].profile.points[0].throughput", "0"),
    (
        "targets.0.profile",
        {"unit": "requests/s"},
        "spec.targets[0].profile",
        "exactly one of points or preset",
    ),
    (
        "targets.0.profile",
        {"preset": "decode", "maxWatts": 700},
        "spec.targets[0].profile.preset",
        "needs peakThroughput and maxWatts",
    ),
    ("targets.0.profile.preset", "sparse", "spec.targets[0].profile.preset", 'Unsupported value: "sparse"'),
    (
        "targets.0.profile.maxWatts",
        700,
        "spec.targets[0].profile",
        "go with a preset",
    ),
    (
        "targets.0.profile",
        {"preset": "prefill", "peakThroughput": 9, "maxWatts": 700, "naturalWatts": 300},
        "spec.targets[0].profile.naturalWatts",
        "goes with the decode preset",
    ),
    (
        "targets.0.profile",
        {"preset": "decode", "peakThroughput": 9, "maxWatts": 700, "minWatts": 200, "naturalWatts": 150},
        "spec.targets[0].profile.naturalWatts",
        "within minWatts..maxWatts",
    ),
    (
        "targets.0.profile",
        {"preset": "decode", "peakThroughput": 9, "maxWatts": 700, "minWatts": 700},
        "spec.targets[0].profile.minWatts",
        "must be < maxWatts",
    ),
    ("targets.0.profile.source", "Preset", "spec.targets[0].profile.source", "Preset goes with a preset"),
    ("targets.0.profile.points", [], "spec.targets[0].profile.points", "should have at least 1 items"),
    ("targets", [], "spec.targets", "should have at least 1 items"),
    (
        "targets.0.preset",
        {"engine": "dynamo"},
        "spec.targets[0].preset.frontend",
        "preset.frontend is required for engine dynamo",
    ),
    (
        "targets.0.preset",
        {"engine": "vllm", "frontend": "llama-frontend"},
        "spec.targets[0].preset.frontend",
        "preset.frontend applies to engine dynamo only",
    ),
    (
        "oversubscription",
        {"maxRatio": 0.8},
        "spec.oversubscription.maxRatio",
        "oversubscription.maxRatio must be between 1.0 and 3",
    ),
    (
        "oversubscription",
        {"maxRatio": 12},
        "spec.oversubscription.maxRatio",
        "oversubscription.maxRatio must be between 1.0 and 3",
    ),
    (
        "oversubscription",
        {"maxRatio": 1.3, "guardTargetRatio": 0.85, "guardReleaseRatio": 0.9},
        "spec.oversubscription.guardReleaseRatio",
        "must be below guardTargetRatio",
    ),
    (
        "safeDefaultWatts",
        750,
        "spec.safeDefaultWatts",
        "safeDefaultWatts must not be above any target's capWatts.max",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), INVALID, ids=[case[0] + ":" + case[3] for case in INVALID]
)
def test_invalid_budget_is_rejected_naming_the_field(
    crd_installed: ControlPlane, namespace: str, path: str, value: Any, field: str, words: str
) -> None:
    document = _spec_change(load(EXAMPLES[0], namespace), path, value)
    document["metadata"]["name"] = "invalid"
    result = crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(document), check=False)
    assert result.returncode != 0, f"the API server accepted an invalid budget ({path}={value!r})"
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


ACCEPTED_PROFILES = [
    # Measured points that dip (benchmark noise): the planner raises them, the API keeps them.
    {
        "points": [
            {"watts": 200, "throughput": 14.0},
            {"watts": 350, "throughput": 25.626},
            {"watts": 425, "throughput": 25.595},
        ]
    },
    {"source": "Measured", "points": [{"watts": 200, "throughput": 3}, {"watts": 400, "throughput": 2.9}]},
    {"preset": "prefill", "peakThroughput": 20, "maxWatts": 700},
    {"preset": "decode", "peakThroughput": 8, "maxWatts": 700, "minWatts": 200, "naturalWatts": 300},
]


@pytest.mark.parametrize("profile", ACCEPTED_PROFILES, ids=["dipping", "measured", "prefill", "decode"])
def test_dipping_points_and_presets_are_accepted(
    crd_installed: ControlPlane, namespace: str, profile: dict[str, Any]
) -> None:
    document = _spec_change(load(EXAMPLES[0], namespace), "targets.0.profile", profile)
    document["metadata"]["name"] = "profile"
    crd_installed.apply(document)
    stored = crd_installed.get_json("gpb", "profile", "-n", namespace)
    assert {k: v for k, v in stored["spec"]["targets"][0]["profile"].items() if k != "unit"} == profile


@pytest.mark.parametrize(
    ("profile", "safe", "accepted"),
    [
        ({"points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 9}]}, 400, True),
        ({"points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 9}]}, 401, False),
        ({"preset": "decode", "peakThroughput": 10, "maxWatts": 700}, 700, True),
        ({"preset": "decode", "peakThroughput": 10, "maxWatts": 700}, 701, False),
    ],
)
def test_a_safe_default_above_a_range_without_cap_watts_is_rejected_too(
    crd_installed: ControlPlane, namespace: str, profile: dict[str, Any], safe: int, accepted: bool
) -> None:
    document = load(EXAMPLES[0], namespace)
    document["metadata"]["name"] = f"safe-{safe}"
    document["spec"]["safeDefaultWatts"] = safe
    for target in document["spec"]["targets"]:
        target.pop("capWatts", None)
        target["profile"] = profile
    result = crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(document), check=False)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert "spec.safeDefaultWatts" in result.stderr and "must not be above" in result.stderr


def test_a_budget_in_a_domain_needs_no_total_watts_but_one_outside_a_domain_does(
    crd_installed: ControlPlane, namespace: str
) -> None:
    document = load(EXAMPLES[0], namespace)
    del document["spec"]["totalWatts"]
    result = crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(document), check=False)
    assert result.returncode != 0
    assert "spec.totalWatts" in result.stderr, result.stderr
    assert "totalWatts is required unless the budget joins a domain (domainRef)" in result.stderr
    document["spec"]["domainRef"] = {"name": "rack-a12"}
    crd_installed.apply(document)
    stored = crd_installed.get_json("gpb", document["metadata"]["name"], "-n", namespace)
    assert (stored["spec"]["domainRef"], stored["spec"]["priority"]) == ({"name": "rack-a12"}, 0)
    document["spec"]["oversubscription"] = {"maxRatio": 1.2}
    result = crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(document), check=False)
    assert result.returncode != 0, "oversubscription in a domain was accepted"
    assert "spec.oversubscription" in result.stderr, result.stderr
    assert "cannot be combined with domainRef" in result.stderr, result.stderr


def domain(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "totalWatts": 9000,
        "nodeSelector": {"matchLabels": {"topology.gpupower.dev/rack": "a12"}},
    }
    body.update(spec)
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": name},
        "spec": body,
    }


INVALID_DOMAINS = [
    ({"totalWatts": -500}, "spec.totalWatts", "totalWatts must be a positive number of watts"),
    ({"totalWatts": 0}, "spec.totalWatts", "totalWatts must be a positive number of watts"),
    ({"parent": "SELF"}, "spec.parent", "cannot contain itself"),
    ({"nodeSelector": {}}, "spec.nodeSelector", "at least one label"),
    (
        {"nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "In"}]}},
        "spec.nodeSelector.matchExpressions[0].values",
        "values must be set for In and NotIn",
    ),
    (
        {"nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Near", "values": ["a"]}]}},
        "spec.nodeSelector.matchExpressions[0].operator",
        'Unsupported value: "Near"',
    ),
    ({"idleGpuWatts": 0}, "spec.idleGpuWatts", "greater than or equal to 1"),
    ({"parent": "Row_3"}, "spec.parent", "should match"),
]


@pytest.mark.parametrize(("change", "field", "words"), INVALID_DOMAINS, ids=[c[2] for c in INVALID_DOMAINS])
def test_invalid_domain_is_rejected_naming_the_field(
    crd_installed: ControlPlane, namespace: str, change: dict[str, Any], field: str, words: str
) -> None:
    name = f"bad-{namespace}"
    if change.get("parent") == "SELF":
        change = {"parent": name}
    result = crd_installed.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(domain(name, **change)), check=False
    )
    assert result.returncode != 0, f"the API server accepted an invalid domain ({change})"
    assert field in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


def test_kubectl_get_gpd_shows_the_printer_columns(crd_installed: ControlPlane, namespace: str) -> None:
    name = f"rack-{namespace}"
    crd_installed.apply(domain(name))
    status = {"committedWatts": 900, "allocatedWatts": 7400.5, "budgets": 3, "nodes": 2, "gpus": 16,
              "conditions": [{"type": "Ready", "status": "True", "reason": "Allocated", "message": "",
                              "lastTransitionTime": "2026-12-01T10:00:00Z"}]}  # fmt: skip
    crd_installed.kubectl(
        "patch", "gpd", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )
    table = crd_installed.kubectl("get", "gpd", name).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "LIMIT",
        "COMMITTED",
        "ALLOCATED",
        "BUDGETS",
        "NODES",
        "GPUS",
        "READY",
        "AGE",
    ]
    assert table[1].split()[:8] == [name, "9000", "900", "7400.5", "3", "2", "16", "True"]
    crd_installed.kubectl("delete", "gpd", name, "--wait=false")


def _run(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerProfileRun",
        "metadata": {"name": "sweep", "namespace": namespace},
        "spec": {"budget": "llm", "target": "decode", "capsWatts": [250, 350], **spec},
    }


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"capsWatts": [250, 250]}, "spec.capsWatts", "capsWatts must not repeat a cap"),
        ({"capsWatts": [0]}, "spec.capsWatts[0]", "should be greater than or equal to 1"),
        ({"capsWatts": []}, "spec.capsWatts", "should have at least 1 items"),
        ({"holdSeconds": 1}, "spec.holdSeconds", "should be greater than or equal to 5"),
        ({"target": "Decode"}, "spec.target", "should match"),
    ],
)
def test_an_invalid_profile_run_is_rejected_naming_the_field(
    crd_installed: ControlPlane, namespace: str, spec: dict[str, Any], field: str, words: str
) -> None:
    result = crd_installed.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(_run(namespace, **spec)), check=False
    )
    assert result.returncode != 0
    assert field in result.stderr and words in result.stderr, result.stderr


def test_a_profile_runs_spec_cannot_change_once_created(crd_installed: ControlPlane, namespace: str) -> None:
    crd_installed.apply(_run(namespace))
    stored = crd_installed.get_json("gpr", "sweep", "-n", namespace)
    assert stored["spec"]["settleSeconds"] == 30 and stored["spec"]["holdSeconds"] == 60  # the defaults
    changed = _run(namespace, capsWatts=[250, 700])
    result = crd_installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert result.returncode != 0
    assert "a run's spec cannot change: delete the run and create another" in result.stderr, result.stderr
