"""The Argo CD health check for domains (Lua) run for real against status documents of every state."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.manifests.test_argocd_health import ARGOCD, REPO, condition, health

HEALTH_LUA = (ARGOCD / "health-domain.lua").read_text()
HEALTH_KEY = "resource.customizations.health.gpupower.dev_GpuPowerDomain"


def domain(status: dict[str, Any] | None = None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": "rack-a12", "generation": generation},
        "spec": {"totalWatts": 9000, "nodeSelector": {"matchLabels": {"topology.gpupower.dev/rack": "a12"}}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def allocated(*conditions: dict[str, Any], observed_generation: int = 2) -> dict[str, Any]:
    return {
        "observedGeneration": observed_generation,
        "allocatedWatts": 7400,
        "reason": "7,400 W allocated to 3 budget(s), 900 W committed outside budgets, 700 W of 9,000 W left",
        "conditions": list(conditions),
    }


CALM = [
    condition("Ready", "True", "Allocated", "allocation applied"),
    condition("Infeasible", "False", "Feasible"),
    condition("Overlap", "False", "NoOverlap"),
    condition("Overcommitted", "False", "WithinLimit"),
]


@pytest.mark.parametrize(
    ("obj", "expected_status", "expected_words"),
    [
        (domain(), "Progressing", "Waiting for the gpupower operator to allocate"),
        (domain({"observedGeneration": 2}), "Progressing", "Waiting"),
        (domain(allocated(*CALM, observed_generation=1)), "Progressing", "generation 2"),
        (domain(allocated(*CALM)), "Healthy", "7,400 W allocated to 3 budget(s)"),
        (
            domain(
                allocated(condition("Ready", "False", "Moving", "lowering rack-a12's caps before raising"))
            ),
            "Progressing",
            "lowering rack-a12's caps",
        ),
        (
            domain(
                allocated(
                    *CALM[:1], condition("Infeasible", "True", "FloorsExceedLimit", "infeasible by 350 W")
                )
            ),
            "Degraded",
            "infeasible by 350 W",
        ),
        (
            domain(
                allocated(
                    *CALM[:1], condition("Overlap", "True", "NodesInTwoChains", "node gpu-7 is in rack-a13")
                )
            ),
            "Degraded",
            "node gpu-7",
        ),
        (
            domain(
                allocated(
                    *CALM[:1],
                    condition("Overcommitted", "True", "HeldAboveLimit", "GPUs hold 9,350 W of 9,000 W"),
                )
            ),
            "Degraded",
            "9,350 W of 9,000 W",
        ),
        (
            domain(
                allocated(condition("Ready", "False", "ParentNotFound", "its parent row-r4 does not exist"))
            ),
            "Degraded",
            "row-r4",
        ),
        (
            domain(
                allocated(condition("Ready", "False", "ParentCycle", "its parents form a cycle: a -> b -> a"))
            ),
            "Degraded",
            "cycle",
        ),
        (domain(allocated(condition("Ready", "True", "Allocated", generation=1))), "Progressing", ""),
    ],
    ids=[
        "no-status",
        "no-conditions",
        "old-generation",
        "ready",
        "moving",
        "infeasible",
        "overlap",
        "overcommitted",
        "missing-parent",
        "parent-cycle",
        "ready-for-old-generation",
    ],
)
def test_domain_health_of_each_state(obj: dict[str, Any], expected_status: str, expected_words: str) -> None:
    status, message = health(obj, script=HEALTH_LUA)
    assert status == expected_status
    assert expected_words in message


def test_argocd_cm_snippet_carries_the_same_domain_script() -> None:
    document = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert document["kind"] == "ConfigMap" and document["metadata"]["name"] == "argocd-cm"
    assert document["data"][HEALTH_KEY] == HEALTH_LUA
    status, _ = health(domain(allocated(*CALM)), script=document["data"][HEALTH_KEY])
    assert status == "Healthy"


def test_the_domain_crd_syncs_before_the_domains() -> None:
    crd = yaml.safe_load((REPO / "crds" / "gpupowerdomains.yaml").read_text())
    assert int(crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < 0
