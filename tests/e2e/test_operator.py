"""The operator end to end: the real process, under its own ServiceAccount's RBAC, against the real
control plane (API server, controller-manager creating pods, scheduler binding them to simulated nodes).

One operator process serves the whole module; each test works in its own namespace. The operator
talks to the API server through a loopback proxy that records every write (so tests can check the
order of writes and that Advisory makes none) and can inject errors.
"""

from __future__ import annotations

import copy
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupower_api.contract import BUDGET_ANNOTATION, POWER_LIMIT_ANNOTATION
from gpupower_operator.core.planner import Plan
from tests.e2e.budgetkit import (
    annotations,
    budget,
    condition,
    expected_plan,
    get_budget,
    live_pods,
    replicas_of,
    target,
    wait_ready,
)
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import ApiProxy, OperatorProcess, Recorded, proxied_kubeconfig, upstream_of
from tests.envtest import REPO, ControlPlane, kubectl_binary, unique_name, wait_for
from tests.fleet_power import FleetModel, walk_is_safe
from tests.workloads import gpu_deployment, gpu_statefulset

pytestmark = [pytest.mark.envtest, pytest.mark.controllers]

SYSTEM_NAMESPACE = "gpupower-system"
ACCOUNT = "gpupower-operator"


@dataclass
class Harness:
    control_plane: ControlPlane
    proxy: ApiProxy
    operator: OperatorProcess
    fleet: SimulatedFleet


@pytest.fixture(scope="module")
def harness(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    control_plane = crd_installed
    if not control_plane.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    control_plane.apply(yaml.safe_load((REPO / "manifests" / "base" / "namespace.yaml").read_text()))
    control_plane.kubectl("apply", "-f", str(REPO / "manifests" / "operator" / "rbac.yaml"))
    # Two nodes with a simulated kubelet and a real agent each: the operator orders on their reports.
    fleet = SimulatedFleet(
        control_plane,
        tmp_path_factory.mktemp("fleet"),
        [unique_name("gpu-node") for _ in range(2)],
        gpus=64,
    ).start()
    directory = tmp_path_factory.mktemp("operator")
    proxy = ApiProxy(*upstream_of(control_plane.kubeconfig)).start()
    kubeconfig = proxied_kubeconfig(control_plane, SYSTEM_NAMESPACE, ACCOUNT, directory, proxy.url)
    operator = OperatorProcess(kubeconfig, directory / "operator.log", resync_seconds=2.0)
    try:
        operator.start()
        yield Harness(control_plane, proxy, operator, fleet)
    finally:
        operator.stop()
        proxy.stop()
        fleet.stop()
        print(f"operator log: {operator.log_path}\n{operator.log_tail(40)}")


@pytest.fixture
def ns(harness: Harness, namespace: str) -> Iterator[str]:
    """The test's namespace; afterwards its budgets, workloads and (never running) pods are removed."""
    yield namespace
    harness.proxy.fault = None
    kubectl = harness.control_plane.kubectl
    kubectl("delete", "gpb", "--all", "-n", namespace, "--timeout=30s", check=False)
    kubectl("scale", "deployment", "--all", "--replicas=0", "-n", namespace, check=False)
    kubectl("delete", "deployment,statefulset", "--all", "-n", namespace, "--wait=false", check=False)
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)


def fleet_enforced(cp: ControlPlane, ns: str, budget_name: str, the_plan: Plan, apps: dict[str, str]) -> bool:
    """Every target's Deployment at its planned replicas, with that many pods, each carrying its cap."""
    for target_plan in the_plan.targets:
        app = apps[target_plan.name]
        if replicas_of(cp, ns, app) != target_plan.replicas:
            return False
        pods = live_pods(cp, ns, app)
        if len(pods) != target_plan.replicas:
            return False
        for pod in pods:
            found = annotations(pod)
            if found.get(POWER_LIMIT_ANNOTATION) != str(target_plan.cap_watts):
                return False
            if found.get(BUDGET_ANNOTATION) != budget_name:
                return False
    return True


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def pinned(harness: Harness, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A GPU Deployment whose pods land on the harness's nodes (each with an agent)."""
    return gpu_deployment(*args, node_selector=harness.fleet.node_selector, **kwargs)


# ---------------------------------------------------------------------------
# Replaying recorded writes through the fleet power model

_POD_PATH = re.compile(r"/api/v1/namespaces/[^/]+/pods/(?P<pod>[^/]+)$")
_SCALE_PATH = re.compile(r"/apis/apps/v1/namespaces/[^/]+/deployments/(?P<name>[^/]+)/scale$")


def fleet_model(cp: ControlPlane, ns: str, apps: dict[str, str], gpus: dict[str, int]) -> FleetModel:
    """The model of the fleet as it is now: replicas from the Deployments, caps from the pods."""
    model = FleetModel(
        gpus_per_replica={app: gpus[target_name] for target_name, app in apps.items()},
        replicas={app: replicas_of(cp, ns, app) for app in apps.values()},
    )
    for app in apps.values():
        for pod in live_pods(cp, ns, app):
            cap = annotations(pod).get(POWER_LIMIT_ANNOTATION)
            if cap is not None:
                model.set_cap(app, pod["metadata"]["name"], int(cap))
    return model


def replay(model: FleetModel, writes: list[Recorded], apps: dict[str, str]) -> list[float]:
    """Planned power before and after each successful pod-cap or replica write, in the order made."""
    powers = [model.watts()]
    for write in writes:
        if not write.ok or write.method != "PATCH":
            continue
        if match := _POD_PATH.match(write.path):
            pod = match["pod"]
            app = next((a for a in apps.values() if pod.startswith(a + "-")), None)
            cap = (
                ((write.body or {}).get("metadata") or {}).get("annotations", {}).get(POWER_LIMIT_ANNOTATION)
            )
            if app is not None and cap is not None:
                model.set_cap(app, pod, int(cap))
                powers.append(model.watts())
        elif match := _SCALE_PATH.match(write.path):
            model.scale(match["name"], int(write.body["spec"]["replicas"]))
            powers.append(model.watts())
    return powers


def kinds_in_order(writes: list[Recorded]) -> list[str]:
    kinds = []
    for write in writes:
        if not write.ok:
            continue
        if _POD_PATH.match(write.path):
            kinds.append("pod")
        elif _SCALE_PATH.match(write.path):
            kinds.append("scale")
        elif write.path.endswith("/status"):
            kinds.append("status")
    return kinds


# ---------------------------------------------------------------------------
# The tests


def test_a_budget_over_two_deployments_gets_its_plan_in_status_and_caps_on_every_pod(
    harness: Harness, ns: str, tmp_path: Path
) -> None:
    cp = harness.control_plane
    cp.apply([pinned(harness, "prefill", ns, 2), pinned(harness, "decode", ns, 2, gpus=2)])
    doc = budget(
        "llm",
        ns,
        2400,
        [target("prefill", "prefill", demand=40), target("decode", "decode", demand=30, gpus=2)],
    )
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(doc))
    cp.kubectl("apply", "-f", str(path))
    the_plan = expected_plan(doc)
    apps = {"prefill": "prefill", "decode": "decode"}

    body = wait_ready(cp, ns, "llm")
    wait_for(lambda: fleet_enforced(cp, ns, "llm", the_plan, apps), timeout=30, what="caps on every pod")
    body = wait_ready(cp, ns, "llm")
    status = body["status"]
    assert status["budgetWatts"] == 2400
    assert status["plannedWatts"] == pytest.approx(the_plan.watts)
    assert status["plannedWatts"] <= 2400
    for target_plan in the_plan.targets:
        got = next(t for t in status["targets"] if t["name"] == target_plan.name)
        assert got["capWatts"] == target_plan.cap_watts
        assert got["plannedReplicas"] == target_plan.replicas
        assert got["desiredReplicas"] == target_plan.desired_replicas
        assert got["selector"] == f"app={apps[target_plan.name]}"
        assert got["podsAnnotated"] == target_plan.replicas
        assert got["podsEnforced"] == target_plan.replicas
    assert status["enforcedWatts"] == pytest.approx(the_plan.watts)
    held = harness.fleet.held_by_pods(ns)
    for target_plan in the_plan.targets:
        pods = [p for p in held if p.name.startswith(apps[target_plan.name] + "-")]
        assert len(pods) == target_plan.replicas
        assert all(set(held[p]) == {target_plan.cap_watts} for p in pods), held
    assert condition(body, "TargetsResolved")["status"] == "True"  # type: ignore[index]
    assert condition(body, "Conflict")["status"] == "False"  # type: ignore[index]

    table = cp.kubectl("get", "gpb", "-n", ns).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "BUDGET", "PLANNED", "ENFORCED", "OBSERVED", "REPLICAS", "READY", "AGE",
    ]  # fmt: skip
    row = table[1].split()
    planned_sum = sum(t.replicas for t in the_plan.targets)
    desired_sum = sum(t.desired_replicas for t in the_plan.targets)
    # Ready: every pod's agent reports its GPUs holding the planned cap, so enforced = planned.
    assert row[:4] == ["llm", "2400", f"{the_plan.watts:g}", f"{the_plan.watts:g}"]
    assert f"{planned_sum}/{desired_sum}" in row and "True" in row

    events = cp.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=llm")["items"]
    assert any(event["reason"] == "PlanChanged" for event in events)

    metrics = harness.operator.get("/metrics")[1]
    assert metric_value(
        metrics, "gpupower_operator_planned_watts", namespace=ns, budget="llm"
    ) == pytest.approx(the_plan.watts)
    assert metric_value(metrics, "gpupower_operator_budget_watts", namespace=ns, budget="llm") == 2400
    assert metric_value(
        metrics, "gpupower_operator_served_ratio", namespace=ns, budget="llm"
    ) == pytest.approx(the_plan.served_fraction, abs=1e-4)
    assert "gpupower_operator_reconcile_duration_seconds_count" in metrics
    assert harness.operator.get("/healthz")[0] == 200
    # The ServiceAccount's role allowed every call the operator made, cluster-wide or in this
    # namespace. (Elsewhere a namespace another test left Terminating refuses new content with a 403.)
    assert not [
        r
        for r in harness.proxy.records
        if r.status == 403 and ("/namespaces/" not in r.path or f"/namespaces/{ns}/" in r.path)
    ]


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda t: t.update(minReplicas=9, maxReplicas=2), "spec.targets[0].minReplicas"),
        (lambda t: t.update(capWatts={"min": 500, "max": 200}), "spec.targets[0].capWatts.min"),
    ],
)
def test_kubectl_apply_of_an_invalid_budget_is_refused_naming_the_field(
    harness: Harness, ns: str, tmp_path: Path, mutate: Any, named: str
) -> None:
    doc = budget("broken", ns, 1000, [target("prefill", "prefill", demand=10)])
    mutate(doc["spec"]["targets"][0])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = harness.control_plane.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0
    assert named in result.stderr


def test_lowering_the_budget_moves_caps_and_replicas_without_ever_exceeding_it(
    harness: Harness, ns: str
) -> None:
    cp = harness.control_plane
    cp.apply([pinned(harness, "prefill", ns, 3), pinned(harness, "decode", ns, 3)])
    targets = [target("prefill", "prefill", demand=60), target("decode", "decode", demand=50)]
    high = budget("llm", ns, 3200, targets)
    apps = {"prefill": "prefill", "decode": "decode"}
    cp.apply(high)
    wait_ready(cp, ns, "llm")
    wait_for(lambda: fleet_enforced(cp, ns, "llm", expected_plan(high), apps), timeout=30, what="first plan")

    low = copy.deepcopy(high)
    low["spec"]["totalWatts"] = 1500
    low_plan = expected_plan(low)
    assert low_plan.feasible
    model = fleet_model(cp, ns, apps, {"prefill": 1, "decode": 1})
    mark = harness.proxy.mark()
    cp.kubectl("patch", "gpb", "llm", "-n", ns, "--type=merge", "-p", '{"spec":{"totalWatts":1500}}')
    wait_for(lambda: fleet_enforced(cp, ns, "llm", low_plan, apps), timeout=30, what="the lower plan")
    wait_ready(cp, ns, "llm")

    writes = harness.proxy.writes_since(mark, ns)
    powers = replay(model, writes, apps)
    safe, why = walk_is_safe(powers, 1500)
    assert safe, f"{why}: {powers}"
    assert powers[-1] <= 1500
    assert powers[0] > 1500, "the test must start above the new budget"
    kinds = kinds_in_order(writes)
    first_status = kinds.index("status")
    assert kinds[:first_status], "something must be lowered before the new status"
    assert set(kinds[:first_status]) <= {"pod", "scale"}


def test_a_replica_added_by_hand_gets_its_cap_within_a_second(harness: Harness, ns: str) -> None:
    cp = harness.control_plane
    cp.apply(pinned(harness, "decode", ns, 2))
    doc = budget("llm", ns, 2000, [target("decode", "decode", demand=20)])
    cp.apply(doc)
    the_plan = expected_plan(doc)
    wait_ready(cp, ns, "llm")
    wait_for(lambda: fleet_enforced(cp, ns, "llm", the_plan, {"decode": "decode"}), timeout=30, what="plan")
    before = {p["metadata"]["name"] for p in live_pods(cp, ns, "decode")}

    binary = kubectl_binary()
    assert binary is not None
    watch = subprocess.Popen(
        [
            binary,
            "--kubeconfig",
            str(cp.kubeconfig),
            "get",
            "pods",
            "-n",
            ns,
            "-w",
            "--no-headers",
            "-o",
            r"custom-columns=NAME:.metadata.name,CAP:.metadata.annotations.gpupower\.dev/power-limit-watts",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, float] = {}
    capped: dict[str, float] = {}

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            parts = line.split()
            if len(parts) < 2 or parts[0] in before:
                continue
            now = time.monotonic()
            seen.setdefault(parts[0], now)
            if parts[1] != "<none>":
                capped.setdefault(parts[0], now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(0.5)  # the watch lists what exists before anything changes
        cp.kubectl(
            "scale", "deployment", "decode", "-n", ns, f"--replicas={the_plan.target('decode').replicas + 1}"
        )
        wait_for(lambda: capped, timeout=10, what="the new pod with a cap")
    finally:
        watch.terminate()
        watch.wait(5)
    pod, capped_at = next(iter(capped.items()))
    assert capped_at - seen[pod] <= 1.0, f"pod {pod} waited {capped_at - seen[pod]:.2f}s for its cap"


def test_advisory_writes_nothing_outside_the_budget_status(harness: Harness, ns: str) -> None:
    cp = harness.control_plane
    cp.apply([pinned(harness, "prefill", ns, 1)])
    doc = budget("llm", ns, 700, [target("prefill", "prefill", demand=30)], mode="Advisory")
    the_plan = expected_plan(doc)
    assert the_plan.target("prefill").replicas != 1, (
        "the plan must differ from what runs, or the test is moot"
    )
    wait_for(
        lambda: [p["status"].get("phase") for p in live_pods(cp, ns, "prefill")] == ["Running"],
        timeout=30,
        what="the pod, started by its node's kubelet",
    )
    versions_before = {
        p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in live_pods(cp, ns, "prefill")
    }
    deployment_version = cp.get_json("deployment", "prefill", "-n", ns)["metadata"]["resourceVersion"]
    mark = harness.proxy.mark()
    cp.apply(doc)
    body = wait_ready(cp, ns, "llm")
    assert condition(body, "Ready")["reason"] == "Advisory"  # type: ignore[index]
    assert body["status"]["targets"][0]["plannedReplicas"] == the_plan.target("prefill").replicas
    time.sleep(2 * harness.operator.resync_seconds + 0.5)  # at least two periodic reconciles

    writes = harness.proxy.writes_since(mark, ns)
    outside = [w for w in writes if "/gpupowerbudgets/" not in w.path and "/events" not in w.path]
    assert outside == [], f"advisory wrote outside status: {outside}"
    versions_after = {
        p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in live_pods(cp, ns, "prefill")
    }
    assert versions_after == versions_before
    assert cp.get_json("deployment", "prefill", "-n", ns)["metadata"]["resourceVersion"] == deployment_version

    # The same budget in Enforce mode does write: the observation above could have seen writes.
    cp.kubectl("patch", "gpb", "llm", "-n", ns, "--type=merge", "-p", '{"spec":{"mode":"Enforce"}}')
    wait_for(
        lambda: fleet_enforced(cp, ns, "llm", the_plan, {"prefill": "prefill"}),
        timeout=30,
        what="enforced plan",
    )


def test_two_budgets_over_one_pod_the_older_owns_it_and_the_younger_reports_conflict(
    harness: Harness, ns: str
) -> None:
    cp = harness.control_plane
    cp.apply(pinned(harness, "shared", ns, 2))
    first = budget("first", ns, 2000, [target("shared", "shared", demand=20)])
    cp.apply(first)
    wait_ready(cp, ns, "first")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    cp.apply(budget("second", ns, 1500, [target("shared", "shared", demand=20)]))

    def conflict_named() -> dict[str, Any] | None:
        found = condition(get_budget(cp, ns, "second"), "Conflict")
        return found if found and found["status"] == "True" else None

    found = wait_for(conflict_named, timeout=30, what="Conflict on the younger budget")
    assert found["reason"] == "PodOwnedByOtherBudget"
    pods = live_pods(cp, ns, "shared")
    assert any(f"pod {ns}/{p['metadata']['name']}" in found["message"] for p in pods)
    assert "first" in found["message"]
    ready = condition(get_budget(cp, ns, "second"), "Ready")
    assert ready is not None and ready["status"] == "False"
    wait_ready(cp, ns, "first")
    assert all(annotations(p).get(BUDGET_ANNOTATION) == "first" for p in live_pods(cp, ns, "shared"))
    events = cp.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=second")["items"]
    assert any(e["reason"] == "Conflict" and e["type"] == "Warning" for e in events)


def test_deleting_a_budget_removes_its_annotations_and_leaves_replicas(harness: Harness, ns: str) -> None:
    cp = harness.control_plane
    cp.apply(pinned(harness, "decode", ns, 1))
    doc = budget("llm", ns, 2000, [target("decode", "decode", demand=25)])
    cp.apply(doc)
    the_plan = expected_plan(doc)
    wait_for(lambda: fleet_enforced(cp, ns, "llm", the_plan, {"decode": "decode"}), timeout=30, what="plan")
    replicas = replicas_of(cp, ns, "decode")
    started = time.monotonic()
    cp.kubectl("delete", "gpb", "llm", "-n", ns, "--timeout=20s")
    assert time.monotonic() - started < 10
    for pod in live_pods(cp, ns, "decode"):
        assert POWER_LIMIT_ANNOTATION not in annotations(pod)
        assert BUDGET_ANNOTATION not in annotations(pod)
    assert replicas_of(cp, ns, "decode") == replicas


def test_an_invalid_spec_that_slipped_past_the_schema_gives_ready_false_naming_the_field(
    harness: Harness, ns: str, tmp_path: Path
) -> None:
    cp = harness.control_plane
    cp.apply(pinned(harness, "decode", ns, 1))
    crd = cp.get_json("crd", "gpupowerbudgets.gpupower.dev")
    relaxed = copy.deepcopy(crd)
    for key in ("status", "metadata"):
        relaxed.pop(key, None)
    relaxed["metadata"] = {"name": crd["metadata"]["name"]}
    schema = relaxed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items = schema["properties"]["spec"]["properties"]["targets"]["items"]
    items.pop("x-kubernetes-validations", None)  # the rule minReplicas <= maxReplicas
    doc = budget("llm", ns, 2000, [target("decode", "decode", demand=25)])
    doc["spec"]["targets"][0].update(minReplicas=4, maxReplicas=2)
    original = tmp_path / "crd.yaml"
    original.write_text((REPO / "crds" / "gpupowerbudgets.yaml").read_text())
    try:
        cp.kubectl("replace", "-f", "-", input=yaml.safe_dump(relaxed))
        wait_for(
            lambda: cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False).returncode == 0,
            timeout=15,
            what="the relaxed CRD to accept the invalid budget",
        )
    finally:
        cp.kubectl("apply", "-f", str(original))

    def invalid() -> dict[str, Any] | None:
        found = condition(get_budget(cp, ns, "llm"), "Ready")
        return found if found and found["reason"] == "InvalidSpec" else None

    found = wait_for(invalid, timeout=20, what="Ready=False InvalidSpec")
    assert found["status"] == "False"
    assert "spec.targets[0]" in found["message"] and "minReplicas" in found["message"]
    assert all(POWER_LIMIT_ANNOTATION not in annotations(p) for p in live_pods(cp, ns, "decode"))
    assert harness.operator.process is not None and harness.operator.process.poll() is None


def test_a_missing_workload_gives_targets_resolved_false_until_it_appears(harness: Harness, ns: str) -> None:
    cp = harness.control_plane
    doc = budget("llm", ns, 2000, [target("decode", "ghost", demand=25)])
    cp.apply(doc)

    def unresolved() -> dict[str, Any] | None:
        found = condition(get_budget(cp, ns, "llm"), "TargetsResolved")
        return found if found and found["status"] == "False" else None

    found = wait_for(unresolved, timeout=20, what="TargetsResolved=False")
    assert found["reason"] == "WorkloadNotFound"
    assert "ghost" in found["message"] and "target decode" in found["message"]
    cp.apply(pinned(harness, "ghost", ns, 1))
    wait_ready(cp, ns, "llm", timeout=30)
    assert condition(get_budget(cp, ns, "llm"), "TargetsResolved")["status"] == "True"  # type: ignore[index]


def test_injected_500s_and_409s_are_retried_until_the_plan_is_enforced_safely(
    harness: Harness, ns: str
) -> None:
    cp = harness.control_plane
    cp.apply([pinned(harness, "prefill", ns, 3), pinned(harness, "decode", ns, 1)])
    apps = {"prefill": "prefill", "decode": "decode"}
    doc = budget(
        "llm", ns, 1600, [target("prefill", "prefill", demand=30), target("decode", "decode", demand=40)]
    )
    the_plan = expected_plan(doc)
    wait_for(lambda: len(live_pods(cp, ns, "prefill")) == 3, timeout=30, what="pods")
    counter = {"n": 0}
    faults = (500, 409, None)

    def fault(method: str, path: str) -> int | None:
        if method != "PATCH" or f"/namespaces/{ns}/" not in path or counter["n"] >= 18:
            return None
        counter["n"] += 1
        return faults[counter["n"] % len(faults)]

    mark = harness.proxy.mark()
    errors_before = harness.operator.get("/metrics")[1]
    harness.proxy.fault = fault
    cp.apply(doc)
    wait_for(lambda: fleet_enforced(cp, ns, "llm", the_plan, apps), timeout=60, what="plan despite faults")
    wait_ready(cp, ns, "llm", timeout=30)
    harness.proxy.fault = None

    writes = harness.proxy.writes_since(mark, ns)
    assert any(w.injected and w.status == 500 for w in writes)
    assert any(w.injected and w.status == 409 for w in writes)
    model = FleetModel(gpus_per_replica={"prefill": 1, "decode": 1}, replicas={"prefill": 3, "decode": 1})
    powers = replay(model, writes, apps)
    # The pods had no caps before, so the model starts at zero: the walk must simply stay within budget.
    assert max(powers) <= 1600, powers
    metrics = harness.operator.get("/metrics")[1]
    for kind in ("api_500", "api_409"):
        before = metric_value(errors_before, "gpupower_operator_errors_total", kind=kind) or 0.0
        after = metric_value(metrics, "gpupower_operator_errors_total", kind=kind) or 0.0
        assert after > before, f"errors of kind {kind} must be counted"


def test_an_operator_killed_in_the_middle_of_a_reconcile_converges_after_restart(
    harness: Harness, ns: str
) -> None:
    cp = harness.control_plane
    cp.apply([pinned(harness, "prefill", ns, 3), pinned(harness, "decode", ns, 3)])
    apps = {"prefill": "prefill", "decode": "decode"}
    high = budget(
        "llm", ns, 3200, [target("prefill", "prefill", demand=60), target("decode", "decode", demand=50)]
    )
    cp.apply(high)
    wait_for(lambda: fleet_enforced(cp, ns, "llm", expected_plan(high), apps), timeout=30, what="first plan")
    wait_ready(cp, ns, "llm")

    low = copy.deepcopy(high)
    low["spec"]["totalWatts"] = 1500
    low_plan = expected_plan(low)
    model = fleet_model(cp, ns, apps, {"prefill": 1, "decode": 1})
    mark = harness.proxy.mark()

    def scale_fails(method: str, path: str) -> int | None:
        return 500 if method == "PATCH" and f"/namespaces/{ns}/" in path and path.endswith("/scale") else None

    harness.proxy.fault = scale_fails
    cp.kubectl("patch", "gpb", "llm", "-n", ns, "--type=merge", "-p", '{"spec":{"totalWatts":1500}}')
    wait_for(
        lambda: any(w.injected for w in harness.proxy.writes_since(mark, ns)),
        timeout=20,
        what="the reconcile to be stuck on /scale",
    )
    harness.operator.kill()
    harness.proxy.fault = None
    status = get_budget(cp, ns, "llm")["status"]
    assert status["budgetWatts"] == 3200, "the new grants must not be out while replicas are not yet down"
    harness.operator.start()
    wait_for(lambda: fleet_enforced(cp, ns, "llm", low_plan, apps), timeout=30, what="the lower plan")
    wait_ready(cp, ns, "llm")
    powers = replay(model, harness.proxy.writes_since(mark, ns), apps)
    safe, why = walk_is_safe(powers, 1500)
    assert safe, f"{why}: {powers}"


def test_a_statefulset_target_is_scaled_and_capped_end_to_end(harness: Harness, ns: str) -> None:
    cp = harness.control_plane
    cp.apply(gpu_statefulset("decode", ns, 1, node_selector=harness.fleet.node_selector))
    doc = budget("llm", ns, 2000, [target("decode", "decode", demand=45)])
    doc["spec"]["targets"][0]["workloadRef"]["kind"] = "StatefulSet"
    the_plan = expected_plan(doc)
    planned = the_plan.target("decode")
    assert planned.replicas > 1, "the plan must scale the StatefulSet up, or the test is moot"

    def enforced(plan_replicas: int, cap: int) -> bool:
        if int(cp.get_json("statefulset", "decode", "-n", ns)["spec"]["replicas"]) != plan_replicas:
            return False
        pods = live_pods(cp, ns, "decode")
        names = sorted(p["metadata"]["name"] for p in pods)
        return names == [f"decode-{i}" for i in range(plan_replicas)] and all(
            annotations(p).get(POWER_LIMIT_ANNOTATION) == str(cap) for p in pods
        )

    mark = harness.proxy.mark()
    cp.apply(doc)
    wait_for(lambda: enforced(planned.replicas, planned.cap_watts), timeout=30, what="the StatefulSet scaled")
    body = wait_ready(cp, ns, "llm")
    assert body["status"]["targets"][0]["selector"] == "app=decode"

    low = copy.deepcopy(doc)
    low["spec"]["totalWatts"] = 700
    low_plan = expected_plan(low).target("decode")
    assert low_plan.replicas < planned.replicas
    cp.apply(low)
    wait_for(lambda: enforced(low_plan.replicas, low_plan.cap_watts), timeout=30, what="the StatefulSet down")
    wait_ready(cp, ns, "llm")
    writes = harness.proxy.writes_since(mark, ns)
    scales = [w for w in writes if w.ok and w.path.endswith(f"/namespaces/{ns}/statefulsets/decode/scale")]
    assert [w.body["spec"]["replicas"] for w in scales] == [planned.replicas, low_plan.replicas]
    assert not [w for w in writes if w.status == 403], "the operator's role covers statefulsets/scale"
