"""The GpuPowerDomain models: what they accept, what they refuse naming the field, how selectors match."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupower_api.domains import (
    KIND,
    DomainSpec,
    DomainStatus,
    LabelSelector,
    parse_domain,
    parse_domain_spec,
)
from gpupower_api.models import API_VERSION, InvalidSpecError

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "row-with-two-racks.yaml"


def rack(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "totalWatts": 9000,
        "parent": "row-r3",
        "nodeSelector": {"matchLabels": {"topology.gpupower.dev/rack": "a12"}},
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "rack-a12"}, "spec": body}


def test_a_rack_parses_with_its_defaults() -> None:
    domain = parse_domain(rack())
    assert domain.name == "rack-a12"
    assert (domain.spec.total_watts, domain.spec.parent) == (9000, "row-r3")
    assert (domain.spec.idle_gpu_watts, domain.spec.unmanaged_gpu_watts, domain.spec.namespace_selector) == (
        None,
        None,
        None,
    )
    assert domain.spec.node_selector.matches({"topology.gpupower.dev/rack": "a12", "other": "x"})
    assert not domain.spec.node_selector.matches({"topology.gpupower.dev/rack": "a13"})


def test_the_example_domains_parse() -> None:
    documents = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == KIND]
    assert [parse_domain(d).name for d in documents] == ["row-r3", "rack-a12", "rack-a13"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"totalWatts": -100}, "spec.totalWatts", "totalWatts must be a positive number of watts"),
        ({"totalWatts": 0}, "spec.totalWatts", "positive"),
        ({"nodeSelector": {}}, "spec.nodeSelector", "at least one label"),
        ({"nodeSelector": {"matchLabels": {}}}, "spec.nodeSelector", "at least one label"),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions[0]",
            "values must be set for In and NotIn",
        ),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Exists", "values": ["a"]}]}},
            "spec.nodeSelector.matchExpressions[0]",
            "empty for Exists and DoesNotExist",
        ),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Near", "values": ["a"]}]}},
            "spec.nodeSelector.matchExpressions[0].operator",
            "'In', 'NotIn', 'Exists' or 'DoesNotExist'",
        ),
        ({"parent": "Row_3"}, "spec.parent", "pattern"),
        ({"idleGpuWatts": 0}, "spec.idleGpuWatts", "greater than 0"),
        ({"unmanagedGpuWatts": -1}, "spec.unmanagedGpuWatts", "greater than 0"),
        ({"surprise": 1}, "spec.surprise", "not permitted"),
    ],
)
def test_each_invalid_field_is_named(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_domain(rack(**change))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


def test_a_domain_cannot_be_its_own_parent() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.parent must name another domain"):
        parse_domain(rack(parent="rack-a12"))


def test_the_whole_object_checks_api_version_and_kind() -> None:
    with pytest.raises(InvalidSpecError, match=r"^kind: must be 'GpuPowerDomain'"):
        parse_domain(rack() | {"kind": "GpuPowerBudget"})
    with pytest.raises(InvalidSpecError, match=r"^object: expected a mapping"):
        parse_domain(["a list"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"team": "ml"}}, {"team": "ml"}, True),
        ({"matchLabels": {"team": "ml"}}, {"team": "web"}, False),
        (
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["ml", "ai"]}]},
            {"team": "ai"},
            True,
        ),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["web"]}]}, {}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": "h100"}, False),
        (
            {"matchLabels": {"team": "ml"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            {"team": "ml"},
            False,
        ),
        ({}, {"anything": "at all"}, True),  # an empty namespaceSelector admits every namespace
    ],
)
def test_label_selectors_match_as_kubernetes_does(
    selector: dict[str, Any], labels: dict[str, str], matches: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is matches


def test_namespace_selector_decides_which_budgets_may_draw() -> None:
    open_to_all = parse_domain_spec(rack()["spec"])
    assert open_to_all.admits({"kubernetes.io/metadata.name": "anyone"})
    only_inference = parse_domain_spec(
        rack(namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "inference"}})["spec"]
    )
    assert only_inference.admits({"kubernetes.io/metadata.name": "inference"})
    assert not only_inference.admits({"kubernetes.io/metadata.name": "batch"})
    assert not only_inference.admits(None)


def test_models_round_trip_through_camel_case() -> None:
    spec = parse_domain_spec(rack(idleGpuWatts=100, unmanagedGpuWatts=300)["spec"])
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["idleGpuWatts"] == 100 and "nodeSelector" in dumped
    assert DomainSpec.model_validate(copy.deepcopy(dumped)) == spec


def test_status_reads_what_the_operator_writes_and_ignores_the_rest() -> None:
    status = DomainStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Allocated"}],
            "committedWatts": 900.0,
            "committed": {"idleWatts": 600.0, "unmanagedWatts": 300.0},
            "allocations": [
                {"namespace": "inference", "name": "llama-chat", "priority": 100, "allocatedWatts": 4300.0}
            ],
            "futureField": True,
        }
    )
    assert status.condition("Ready") is not None and status.condition("Overlap") is None
    assert status.committed is not None and status.committed.other_domains_watts == 0.0
    assert status.allocations[0].planned_watts is None
