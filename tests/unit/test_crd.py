"""The committed CRDs are what the models generate, and the examples validate against them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gpupower_api import crd
from gpupower_api.domains import parse_domain
from gpupower_api.models import parse_budget

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "gpupowerbudgets.yaml"
DOMAIN_CRD_FILE = REPO / "crds" / "gpupowerdomains.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


def schema(path: Path = CRD_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", list(crd.CRDS))
def test_committed_crds_match_the_models(name: str) -> None:
    text = (REPO / "crds" / name).read_text()
    assert text == crd.render(name), "crds/ is stale: run `make crds` and commit the result"


def test_every_crd_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((REPO / "crds" / "Kustomization").read_text())
    assert kustomization["resources"] == list(crd.CRDS)


def test_crd_has_the_documented_shape() -> None:
    document = yaml.safe_load(CRD_FILE.read_text())
    spec = document["spec"]
    assert document["metadata"]["name"] == "gpupowerbudgets.gpupower.dev"
    assert spec["names"]["shortNames"] == ["gpb"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Budget", "Planned", "Enforced", "Observed", "Replicas", "Ready", "Age"]
    rules = [
        rule["rule"]
        for node in _walk(version["schema"]["openAPIV3Schema"])
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert any("minReplicas <= self.maxReplicas" in rule for rule in rules)
    assert any("self.min <= self.max" in rule for rule in rules)
    assert any("isSorted" in rule for rule in rules)
    spec_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec_props["mode"]["enum"] == ["Enforce", "Advisory"]
    assert spec_props["mode"]["default"] == "Enforce"
    assert spec_props["totalWatts"]["minimum"] == 1
    assert spec_props["targets"]["x-kubernetes-list-map-keys"] == ["name"]


def test_domain_crd_has_the_documented_shape() -> None:
    spec = yaml.safe_load(DOMAIN_CRD_FILE.read_text())["spec"]
    assert (spec["scope"], spec["names"]["plural"], spec["names"]["shortNames"]) == (
        "Cluster",
        "gpupowerdomains",
        ["gpd"],
    )
    version = spec["versions"][0]
    assert (version["name"], version["subresources"]) == ("v1alpha1", {"status": {}})
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Limit", "Committed", "Allocated", "Budgets", "Nodes", "GPUs", "Ready", "Age"]
    root = version["schema"]["openAPIV3Schema"]
    messages = [rule["message"] for node in _walk(root) for rule in node.get("x-kubernetes-validations", [])]
    for words in (
        "positive number of watts",
        "cannot contain itself",
        "at least one label",
        "values must be set",
    ):
        assert any(words in message for message in messages), words
    properties = root["properties"]["spec"]["properties"]
    assert properties["nodeSelector"]["properties"]["matchLabels"]["additionalProperties"] == {
        "type": "string"
    }
    assert root["properties"]["status"]["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def _structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Kubernetes structural-schema rules: every node has a type, no combinators or refs."""
    problems = []
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path or '.'}: no type")
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "not", "title"):
        if banned in node:
            problems.append(f"{path}: {banned}")
    # A map's value schema is structural; ``additionalProperties: false`` or beside properties is not.
    extra = node.get("additionalProperties")
    if extra is not None and (not isinstance(extra, dict) or "properties" in node):
        problems.append(f"{path}: additionalProperties")
    for name, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{name}")
    if "items" in node:
        problems += _structural_problems(node["items"], f"{path}[]")
    if isinstance(extra, dict):
        problems += _structural_problems(extra, f"{path}{{}}")
    return problems


@pytest.mark.parametrize("path", [CRD_FILE, DOMAIN_CRD_FILE], ids=lambda p: p.name)
def test_schema_is_structural(path: Path) -> None:
    assert _structural_problems(schema(path)) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_examples_validate_against_the_generated_schema(example: Path) -> None:
    assert EXAMPLES, "no examples under manifests/examples"
    for document in yaml.safe_load_all(example.read_text()):
        if document["kind"] == "GpuPowerDomain":
            jsonschema.Draft4Validator(schema(DOMAIN_CRD_FILE)).validate(document)
            parse_domain(document)
        else:
            jsonschema.Draft4Validator(schema()).validate(document)
            parse_budget(document)


def test_schema_rejects_what_the_models_reject() -> None:
    document = yaml.safe_load(EXAMPLES[0].read_text())
    document["spec"]["totalWatts"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minimum"):
        jsonschema.Draft4Validator(schema()).validate(document)
    document["spec"]["totalWatts"] = 100
    document["spec"]["mode"] = "DryRun"
    with pytest.raises(jsonschema.ValidationError, match="DryRun"):
        jsonschema.Draft4Validator(schema()).validate(document)


RUN_CRD_FILE = REPO / "crds" / "gpupowerprofileruns.yaml"


def test_profile_run_crd_is_structural_and_has_the_documented_shape() -> None:
    document = yaml.safe_load(RUN_CRD_FILE.read_text())
    spec = document["spec"]
    assert document["metadata"]["name"] == "gpupowerprofileruns.gpupower.dev"
    assert spec["names"]["kind"] == "GpuPowerProfileRun" and spec["names"]["shortNames"] == ["gpr"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert _structural_problems(schema) == []
    run_spec = schema["properties"]["spec"]
    assert set(run_spec["required"]) == {"budget", "target", "capsWatts"}
    assert run_spec["properties"]["capsWatts"]["items"] == {"type": "integer", "minimum": 1, "maximum": 10000}
    rules = {rule["rule"] for rule in run_spec["x-kubernetes-validations"]}
    assert "self == oldSelf" in rules
