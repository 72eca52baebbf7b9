"""The Argo CD health check (Lua) run for real against status documents of every state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua54 as lupa
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
HEALTH_LUA = (ARGOCD / "health.lua").read_text()
HEALTH_KEY = "resource.customizations.health.gpupower.dev_GpuPowerBudget"


def health(obj: dict[str, Any], script: str = HEALTH_LUA) -> tuple[str, str]:
    """Run the script as Argo CD does: ``obj`` is a global table, the script returns ``hs``."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=False)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(script)
    return str(result["status"]), str(result["message"])


def budget(generation: int = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llama", "namespace": "inference", "generation": generation},
        "spec": {"totalWatts": 16000},
    }
    if status is not None:
        obj["status"] = status
    return obj


def condition(type_: str, status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def planned(*conditions: dict[str, Any], observed_generation: int = 2) -> dict[str, Any]:
    return {
        "observedGeneration": observed_generation,
        "plannedWatts": 15800,
        "reason": "budget binds: serving 93% of demand with 15,800 of 16,000 W",
        "conditions": list(conditions),
    }


HEALTHY = [
    condition("Ready", "True", "Enforced", "plan applied"),
    condition("TargetsResolved", "True", "AllTargetsResolved"),
    condition("Infeasible", "False", "Feasible"),
    condition("Conflict", "False", "NoConflict"),
]


@pytest.mark.parametrize(
    ("obj", "expected_status", "expected_words"),
    [
        (budget(status=None), "Progressing", "Waiting for the gpupower operator"),
        (budget(status={"observedGeneration": 2}), "Progressing", "Waiting"),
        (budget(status=planned(*HEALTHY, observed_generation=1)), "Progressing", "generation 2"),
        (budget(status=planned(*HEALTHY)), "Healthy", "budget binds"),
        (
            budget(status=planned(condition("Ready", "True", "Advisory", "advisory plan"))),
            "Healthy",
            "budget binds",
        ),
        (
            budget(status=planned(condition("Ready", "False", "Enforcing", "annotating 3 pods"))),
            "Progressing",
            "annotating 3 pods",
        ),
        (
            budget(
                status=planned(
                    condition("Ready", "False", "Enforcing"),
                    condition("Infeasible", "True", "FloorExceedsBudget", "infeasible by 350 W"),
                )
            ),
            "Degraded",
            "infeasible by 350 W",
        ),
        (
            budget(
                status=planned(
                    condition("Ready", "False", "Enforcing"),
                    condition("TargetsResolved", "False", "WorkloadNotFound", "deployment decode not found"),
                )
            ),
            "Degraded",
            "deployment decode not found",
        ),
        (
            budget(
                status=planned(condition("Ready", "False", "InvalidSpec", "spec.totalWatts: must be > 0"))
            ),
            "Degraded",
            "spec.totalWatts",
        ),
        (
            budget(
                status=planned(
                    condition("Ready", "True", "Enforced"),
                    condition("Conflict", "True", "PodOwnedByOtherBudget", "pod p-1 is owned by budget a"),
                )
            ),
            "Degraded",
            "owned by budget a",
        ),
        (
            budget(status=planned(condition("Ready", "True", "Enforced", generation=1))),
            "Progressing",
            "",
        ),
        (
            budget(
                status=planned(
                    condition("Ready", "False", "CapRangeEmpty", "target decode: no cap in 800-900 W fits"),
                    condition("TargetsResolved", "True", "AllTargetsResolved"),
                    condition("CapRangeAdjusted", "True", "CapRangeEmpty", "no cap fits"),
                )
            ),
            "Degraded",
            "no cap in 800-900 W fits",
        ),
    ],
    ids=[
        "no-status",
        "no-conditions",
        "old-generation",
        "ready",
        "advisory-ready",
        "applying",
        "infeasible",
        "missing-target",
        "invalid-spec",
        "conflict",
        "ready-for-old-generation",
        "cap-range-empty",
    ],
)
def test_health_of_each_state(obj: dict[str, Any], expected_status: str, expected_words: str) -> None:
    status, message = health(obj)
    assert status == expected_status
    assert expected_words in message


def test_argocd_cm_snippet_carries_the_same_script() -> None:
    document = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert document["kind"] == "ConfigMap" and document["metadata"]["name"] == "argocd-cm"
    assert document["data"][HEALTH_KEY] == HEALTH_LUA
    status, _ = health(budget(status=planned(*HEALTHY)), script=document["data"][HEALTH_KEY])
    assert status == "Healthy"


def test_application_ignores_replicas_and_crd_syncs_first() -> None:
    apps = list(yaml.safe_load_all((ARGOCD / "application.yaml").read_text()))
    apps = [app for app in apps if app]
    assert {app["metadata"]["name"] for app in apps} == {"gpupower", "llm-inference"}
    workloads = next(app for app in apps if app["metadata"]["name"] == "llm-inference")
    pointers = {p for item in workloads["spec"]["ignoreDifferences"] for p in item["jsonPointers"]}
    assert pointers == {"/spec/replicas"}
    assert "RespectIgnoreDifferences=true" in workloads["spec"]["syncPolicy"]["syncOptions"]
    crd = yaml.safe_load((REPO / "crds" / "gpupowerbudgets.yaml").read_text())
    assert int(crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < 0
