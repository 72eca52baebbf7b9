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
        [{"watts": 300, "throughput": 12}, {"watts": 400, "throughput": 10}],
        "spec.targets[0].profile.points",
        "throughput must not decrease",
    ),
    ("targets.0.profile.points", [], "spec.targets[0].profile.points", "should have at least 1 items"),
    ("targets", [], "spec.targets", "should have at least 1 items"),
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
