"""The API server enforces the Prometheus fields' schema and CEL rules with messages a user can act on."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.envtest import ControlPlane

pytestmark = pytest.mark.envtest


def budget(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llama", "namespace": namespace},
        "spec": {
            "totalWatts": 4000,
            "safeDefaultWatts": 250,
            "prometheus": {"url": "http://prometheus.monitoring:9090"},
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "maxReplicas": 4,
                    "profile": {"points": [{"watts": 300, "throughput": 5}]},
                    "preset": {"engine": "vllm"},
                    "sla": {"ttftSeconds": 0.5},
                }
            ],
        },
    }


def dry_run(cp: ControlPlane, doc: dict[str, Any]) -> tuple[int, str]:
    result = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    return result.returncode, result.stderr


def test_a_valid_prometheus_budget_is_accepted_with_defaults(
    crd_installed: ControlPlane, namespace: str
) -> None:
    crd_installed.apply(budget(namespace))
    stored = crd_installed.get_json("gpb", "llama", "-n", namespace)["spec"]
    assert stored["prometheus"]["podLabel"] == "exported_pod"
    assert stored["prometheus"]["intervalSeconds"] == 30
    assert stored["targets"][0]["preset"] == {"engine": "vllm", "metric": "requests", "windowSeconds": 60}
    assert stored["targets"][0]["sla"]["quantile"] == 0.9


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"targets.0.demandQuery": "vector(1)"}, "demandQuery and preset are mutually exclusive"),
        ({"targets.0.preset": None}, "sla needs a preset"),
        ({"prometheus.url": "prometheus:9090"}, "spec.prometheus.url"),
        (
            {
                "prometheus.caSecretRef": {"name": "ca", "key": "ca.crt"},
                "prometheus.insecureSkipVerify": True,
            },
            "caSecretRef and insecureSkipVerify are mutually exclusive",
        ),
        ({"targets.0.preset": {"engine": "triton"}}, "spec.targets[0].preset.engine"),
        ({"targets.0.sla": {"ttftSeconds": 0.5, "quantile": 1.5}}, "spec.targets[0].sla.quantile"),
    ],
)
def test_invalid_prometheus_fields_are_refused_naming_them(
    crd_installed: ControlPlane, namespace: str, change: dict[str, Any], words: str
) -> None:
    doc = copy.deepcopy(budget(namespace))
    for path, value in change.items():
        node: Any = doc["spec"]
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    code, stderr = dry_run(crd_installed, doc)
    assert code != 0
    assert words in stderr, stderr
