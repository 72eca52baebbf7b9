"""Budgets as the end-to-end tests write them, and reading them (and their pods) back through kubectl."""

from __future__ import annotations

from typing import Any

from gpupower_api.models import parse_spec
from gpupower_operator.core.planner import Plan, plan, problem_from_spec
from tests.envtest import ControlPlane, wait_for


def target(name: str, workload: str, demand: float, gpus: int = 1, max_replicas: int = 5) -> dict[str, Any]:
    return {
        "name": name,
        "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
        "gpusPerReplica": gpus,
        "minReplicas": 1,
        "maxReplicas": max_replicas,
        "capWatts": {"min": 200, "max": 400},
        "profile": {
            "unit": "requests/s",
            "points": [
                {"watts": 200, "throughput": 10},
                {"watts": 300, "throughput": 14},
                {"watts": 400, "throughput": 16},
            ],
        },
        "demand": demand,
    }


def budget(
    name: str, namespace: str, total_watts: int, targets: list[dict[str, Any]], mode: str = "Enforce"
) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"totalWatts": total_watts, "mode": mode, "safeDefaultWatts": 250, "targets": targets},
    }


def expected_plan(doc: dict[str, Any]) -> Plan:
    return plan(problem_from_spec(parse_spec(doc["spec"])))


def get_budget(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return cp.get_json("gpb", name, "-n", ns)


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return None


def wait_ready(cp: ControlPlane, ns: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for Ready=True at the budget's current generation; return the budget."""

    def ready() -> dict[str, Any] | None:
        body = get_budget(cp, ns, name)
        found = condition(body, "Ready")
        generation = body["metadata"].get("generation")
        if found and found["status"] == "True" and body["status"].get("observedGeneration") == generation:
            return body
        return None

    return wait_for(ready, timeout=timeout, interval=0.2, what=f"budget {ns}/{name} Ready=True")


def live_pods(cp: ControlPlane, ns: str, app: str) -> list[dict[str, Any]]:
    items = cp.get_json("pods", "-n", ns, "-l", f"app={app}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("annotations") or {})


def replicas_of(cp: ControlPlane, ns: str, name: str) -> int:
    return int(cp.get_json("deployment", name, "-n", ns)["spec"]["replicas"])
