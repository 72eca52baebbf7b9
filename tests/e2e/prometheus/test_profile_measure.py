"""`gpupower profile measure` end to end: the real command, the real operator under its ServiceAccount, real
agents on fake H100s and the real Prometheus.

A test exporter plays the engine of every pod of the target: each serves the throughput of a hidden curve at
the limit its fake GPU holds (read from the fake GPU state file), with requests waiting while the test marks
it saturated. The sweep must find the hidden curve at every saturated level, leave the unsaturated one out,
skip the level the budget cannot hold, and keep what the GPUs hold within the budget throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupower_api.models import parse_spec
from gpupower_operator.core.planner import ProfilePoint, plan, problem_from_spec, throughput_at
from tests.e2e.agentkit import wait_seconds
from tests.e2e.budgetkit import expected_plan, get_budget, live_pods, wait_ready
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess, clean_namespace, running_operator
from tests.e2e.promkit import PodTraffic, PrometheusStack
from tests.e2e.test_hardware_truth import Sampler
from tests.envtest import ControlPlane, source_env, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers, pytest.mark.prometheus]

# What one replica really serves at each per-GPU cap: the curve the sweep must find.
HIDDEN = (ProfilePoint(200, 10.0), ProfilePoint(300, 15.0), ProfilePoint(400, 17.0))
UNSATURATED_AT = 250  # the test gives the pod too little load at this cap: no queue
TOTAL_WATTS = 850
THROUGHPUT_QUERY = 'sum(rate(vllm:request_success_total{namespace="$namespace",pod="$pod"}[$window]))'
SATURATION_QUERY = 'sum(vllm:num_requests_waiting{namespace="$namespace",pod="$pod"})'


@pytest.fixture(scope="module")
def fleet(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedFleet]:
    if not crd_installed.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    fleet = SimulatedFleet(
        crd_installed, tmp_path_factory.mktemp("measure-fleet"), [unique_name("measure-node")], gpus=8
    ).start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def operator(
    crd_installed: ControlPlane,
    fleet: SimulatedFleet,
    prometheus_stack: PrometheusStack,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    directory = tmp_path_factory.mktemp("measure-operator")
    extra = ("--prometheus-url", prometheus_stack.url)
    with running_operator(crd_installed, directory, 2.0, extra) as process:
        yield process
    print(fleet.logs())


def budget_doc(namespace: str, mode: str = "Enforce") -> dict[str, Any]:
    """Three decode replicas, always three (so no sweep ever scales the measured pod away)."""
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "totalWatts": TOTAL_WATTS,
            "mode": mode,
            "safeDefaultWatts": 200,
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "decode"},
                    "minReplicas": 3,
                    "maxReplicas": 3,
                    "capWatts": {"min": 200, "max": 400},
                    # A guess, before anyone measured.
                    "profile": {
                        "unit": "requests/s",
                        "points": [{"watts": 200, "throughput": 8}, {"watts": 400, "throughput": 12}],
                    },
                    "demand": 40,
                }
            ],
        },
    }


class EngineExporter:
    """Every pod of the target serves the hidden curve at its GPU's limit, saturated but at one cap."""

    def __init__(self, fleet: SimulatedFleet, stack: PrometheusStack, namespace: str) -> None:
        self.fleet, self.stack, self.namespace = fleet, stack, namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for pod, limits in self.fleet.held_by_pods(self.namespace).items():
                    limit = max(limits) if limits else 0
                    rate = throughput_at(HIDDEN, limit)
                    saturated = limit != UNSATURATED_AT
                    served = rate if saturated else 0.6 * rate
                    self.stack.exporter.set_traffic(
                        pod.namespace,
                        pod.name,
                        PodTraffic(requests_per_second=served, waiting=4 if saturated else 0),
                    )
                    self.stack.exporter.set_gpu_power(pod.namespace, pod.name, 0, 0.9 * limit)
                self._stop.wait(0.05)
        except BaseException as error:  # surfaced by stop(): a dead exporter must fail the test
            self.error = error

    def __enter__(self) -> EngineExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.error is not None:
            raise AssertionError(f"the engine exporter failed: {self.error!r}") from self.error


@pytest.fixture
def ns(crd_installed: ControlPlane, namespace: str, prometheus_stack: PrometheusStack) -> Iterator[str]:
    yield namespace
    crd_installed.kubectl("delete", "gpr", "--all", "-n", namespace, "--timeout=30s", check=False)
    clean_namespace(crd_installed, namespace)
    for pod in list(prometheus_stack.exporter._pods):
        if pod[0] == namespace:
            prometheus_stack.exporter.remove_pod(*pod)


def settled_fleet(cp: ControlPlane, fleet: SimulatedFleet, ns: str, doc: dict[str, Any]) -> None:
    cp.apply(gpu_deployment("decode", ns, 3, node_selector=fleet.node_selector))
    cp.apply(doc)
    wait_ready(cp, ns, "llm", timeout=60)
    wait_for(
        lambda: (
            len(live_pods(cp, ns, "decode")) == 3
            and all(p["status"].get("phase") == "Running" for p in live_pods(cp, ns, "decode"))
        ),
        timeout=30,
        what="3 decode pods Running",
    )


def gpupower(cp: ControlPlane, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupower_operator.cli", *args],
        env=source_env({"KUBECONFIG": str(cp.kubeconfig)}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def held_caps(fleet: SimulatedFleet, ns: str) -> dict[str, set[int]]:
    return {pod.name: set(limits) for pod, limits in fleet.held_by_pods(ns).items()}


def test_measure_finds_the_hidden_curve_within_the_budget_and_leaves_out_what_it_cannot_trust(
    crd_installed: ControlPlane,
    fleet: SimulatedFleet,
    operator: OperatorProcess,
    prometheus_stack: PrometheusStack,
    ns: str,
    tmp_path: Path,
) -> None:
    cp = crd_installed
    doc = budget_doc(ns)
    settled_fleet(cp, fleet, ns, doc)
    budget_file = tmp_path / "budget.yaml"
    budget_file.write_text("# the llm budget, as kept in git\n" + yaml.safe_dump(doc, sort_keys=False))
    caps = [200, UNSATURATED_AT, 300, 400, 700]
    with EngineExporter(fleet, prometheus_stack, ns), Sampler(fleet, ns) as sampler:
        started = time.monotonic()
        result = gpupower(
            cp,
            "profile", "measure", "-n", ns, "--budget", "llm", "--target", "decode",
            "--caps", ",".join(map(str, caps)), "--settle-seconds", "2", "--hold-seconds", "5",
            "--throughput-query", THROUGHPUT_QUERY, "--saturation-query", SATURATION_QUERY,
            "--into", str(budget_file),
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{operator.log_tail(60)}"
    print(result.stderr, f"took {took:.1f}s")
    # What the GPUs held never passed the budget, while the sweep moved the fleet around its pod.
    assert sampler.fleet_watts and max(sampler.fleet_watts) <= TOTAL_WATTS, max(sampler.fleet_watts)

    runs = cp.get_json("gpr", "-n", ns)["items"]
    assert len(runs) == 1
    status = runs[0]["status"]
    phases = {level["capWatts"]: level["phase"] for level in status["levels"]}
    assert phases == {
        200: "Recorded",
        250: "Unsaturated",
        300: "Recorded",
        400: "Recorded",
        700: "OverBudget",
    }
    for level in status["levels"]:
        if level["phase"] == "Recorded":
            hidden = throughput_at(HIDDEN, level["capWatts"])
            assert abs(level["throughput"] - hidden) <= 0.05 * hidden, level
            assert level["samples"] >= 3 and level["saturatedSamples"] == level["samples"], level
            assert level["observedWatts"] == pytest.approx(0.9 * level["capWatts"], rel=0.05), level
    unsaturated = next(level for level in status["levels"] if level["capWatts"] == UNSATURATED_AT)
    assert unsaturated["saturatedSamples"] < unsaturated["samples"], unsaturated
    assert status["startTime"] and status["completionTime"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("True", "Measured")

    # The profile block: the recorded levels only, by watts, marked Measured; the same in the budget file.
    measured = status["profile"]
    assert measured["source"] == "Measured"
    assert [p["watts"] for p in measured["points"]] == [200, 300, 400]
    printed = yaml.safe_load(result.stdout)
    assert printed == measured
    written = yaml.safe_load(budget_file.read_text())
    assert written["spec"]["targets"][0]["profile"] == measured
    assert budget_file.read_text().startswith("# the llm budget, as kept in git\n")
    assert "Unsaturated" in result.stderr and "OverBudget" in result.stderr  # the table

    # The plan made from the measured profile is the plan made from the hidden curve's points.
    hidden_doc = json.loads(json.dumps(doc))
    hidden_doc["spec"]["targets"][0]["profile"] = {
        "unit": "requests/s",
        "points": [{"watts": p.watts, "throughput": p.throughput} for p in HIDDEN],
    }
    from_measured = plan(problem_from_spec(parse_spec(written["spec"])))
    from_hidden = expected_plan(hidden_doc)
    assert [(t.replicas, t.cap_watts) for t in from_measured.targets] == [
        (t.replicas, t.cap_watts) for t in from_hidden.targets
    ]

    # Done: the pod is back on the plan, and the budget grants it nothing of its own any more.
    normal = expected_plan(doc).target("decode")
    wait_for(
        lambda: all(caps_ == {normal.cap_watts} for caps_ in held_caps(fleet, ns).values()),
        timeout=20,
        what=f"every pod back at the plan's {normal.cap_watts} W",
    )
    assert "measurement" not in get_budget(cp, ns, "llm")["status"]["targets"][0]
    events = cp.get_json(
        "events", "-n", ns, "--field-selector", f"involvedObject.name={runs[0]['metadata']['name']}"
    )
    reasons = {e["reason"] for e in events["items"]}
    assert {
        "MeasurementStarted",
        "LevelRecorded",
        "LevelUnsaturated",
        "LevelOverBudget",
        "MeasurementSucceeded",
    } <= reasons


def run_doc(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    """A GpuPowerProfileRun of the llm budget's decode target, reading the test exporter's series."""
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerProfileRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "budget": "llm",
            "target": "decode",
            "throughputQuery": THROUGHPUT_QUERY,
            "saturationQuery": SATURATION_QUERY,
            **spec,
        },
    }


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
SAVED_DELETION_COST = "gpupower.dev/saved-pod-deletion-cost"


def _annotations(cp: ControlPlane, ns: str, pod: str) -> dict[str, str]:
    return dict(cp.get_json("pod", pod, "-n", ns)["metadata"].get("annotations") or {})


def _run(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return cp.get_json("gpr", name, "-n", ns)


def _level(cp: ControlPlane, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def current() -> dict[str, Any] | None:
        status = _run(cp, ns, name).get("status") or {}
        index = status.get("currentLevel")
        return status["levels"][index] if index is not None else None

    return current


def test_deleting_a_run_puts_the_pod_back_on_the_plan_at_once(
    crd_installed: ControlPlane,
    fleet: SimulatedFleet,
    operator: OperatorProcess,
    prometheus_stack: PrometheusStack,
    ns: str,
) -> None:
    cp = crd_installed
    doc = budget_doc(ns)
    settled_fleet(cp, fleet, ns, doc)
    normal = expected_plan(doc).target("decode")
    run = run_doc(ns, "sweep", capsWatts=[400], settleSeconds=0, holdSeconds=600)
    with Sampler(fleet, ns) as sampler:
        cp.apply(run)
        level = _level(cp, ns, "sweep")
        wait_for(
            lambda: (level() or {}).get("phase") == "Holding", timeout=30, what="the 400 W level holding"
        )
        pod = _run(cp, ns, "sweep")["status"]["pod"]
        assert held_caps(fleet, ns)[pod] == {400}
        # Its ReplicaSet deletes it last on a scale-down (no deletion cost of its own to keep).
        wait_for(
            lambda: _annotations(cp, ns, pod).get(DELETION_COST) == str(2**31 - 1),
            timeout=10,
            what=f"pod {pod} with the highest deletion cost",
        )
        assert _annotations(cp, ns, pod)[SAVED_DELETION_COST] == ""
        assert get_budget(cp, ns, "llm")["status"]["targets"][0]["measurement"] == {
            "pod": pod,
            "capWatts": 400,
            "run": "sweep",
        }
        deleted = time.monotonic()
        cp.kubectl("delete", "gpr", "sweep", "-n", ns, "--wait=false")
        wait_for(
            lambda: held_caps(fleet, ns).get(pod) == {normal.cap_watts},
            timeout=10,
            what=f"pod {pod} back at {normal.cap_watts} W",
        )
        back_after = time.monotonic() - deleted
    assert back_after < 5, f"the pod went back on the plan {back_after:.1f}s after the run was deleted"
    assert max(sampler.fleet_watts) <= TOTAL_WATTS
    wait_for(
        lambda: "measurement" not in get_budget(cp, ns, "llm")["status"]["targets"][0],
        timeout=10,
        what="no measurement in the budget's status",
    )
    wait_for(
        lambda: not cp.get_json("gpr", "-n", ns)["items"],
        timeout=10,
        what="the run gone (its finalizer removed)",
    )
    wait_for(
        lambda: not {DELETION_COST, SAVED_DELETION_COST} & set(_annotations(cp, ns, pod)),
        timeout=10,
        what=f"pod {pod} without the deletion cost the run gave it",
    )


def test_a_sweep_never_runs_on_an_advisory_budget(
    crd_installed: ControlPlane, fleet: SimulatedFleet, operator: OperatorProcess, ns: str
) -> None:
    cp = crd_installed
    doc = budget_doc(ns, mode="Advisory")
    cp.apply(gpu_deployment("decode", ns, 3, node_selector=fleet.node_selector))
    cp.apply(doc)
    result = gpupower(
        cp, "profile", "measure", "-n", ns, "--budget", "llm", "--target", "decode", "--caps", "300"
    )
    assert result.returncode == 1
    assert "--budget: budget llm is Advisory" in result.stderr, result.stderr
    assert not cp.get_json("gpr", "-n", ns)["items"], "the command must not create a run it knows will fail"
    # A run made by hand fails with a condition that says why, and grants nothing.
    cp.apply(run_doc(ns, "by-hand", capsWatts=[300]))

    def failed() -> dict[str, Any] | None:
        status = _run(cp, ns, "by-hand").get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for(failed, timeout=20, what="the run Failed")
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("False", "AdvisoryBudget")
    assert "Advisory" in complete["message"]
    assert status["levels"] == [], "no level was started"
    budget_status = get_budget(cp, ns, "llm").get("status") or {}
    assert all("measurement" not in t for t in budget_status.get("targets") or [])


def test_a_scale_down_during_a_run_keeps_the_measured_pod(
    crd_installed: ControlPlane,
    fleet: SimulatedFleet,
    operator: OperatorProcess,
    prometheus_stack: PrometheusStack,
    ns: str,
) -> None:
    """The real ReplicaSet controller scales the target down while its newest pod is measured. Left to
    itself it deletes the pod ready for the shortest time first; the deletion cost the operator gives the
    measured pod makes it delete another, and the run goes on."""
    cp = crd_installed
    doc = budget_doc(ns)
    target = doc["spec"]["targets"][0]
    target["minReplicas"] = target["maxReplicas"] = 2
    cp.apply(gpu_deployment("decode", ns, 2, node_selector=fleet.node_selector))
    cp.apply(doc)
    wait_ready(cp, ns, "llm", timeout=60)
    older = wait_for(lambda: _running_pods(cp, ns, 2), timeout=30, what="2 decode pods Running")
    wait_seconds(8.0)  # so that the third pod is ready for a much shorter time than the first two
    target["minReplicas"] = target["maxReplicas"] = 3
    cp.apply(doc)
    pods = wait_for(lambda: _running_pods(cp, ns, 3), timeout=30, what="3 decode pods Running")
    (newest,) = set(pods) - set(older)
    cp.apply(run_doc(ns, "sweep", pod=newest, capsWatts=[300], settleSeconds=0, holdSeconds=600))
    level = _level(cp, ns, "sweep")
    wait_for(lambda: (level() or {}).get("phase") == "Holding", timeout=30, what="the 300 W level holding")
    assert _run(cp, ns, "sweep")["status"]["pod"] == newest
    wait_for(
        lambda: _annotations(cp, ns, newest).get(DELETION_COST) == str(2**31 - 1),
        timeout=10,
        what=f"pod {newest} with the highest deletion cost",
    )

    # The plan needs one replica fewer: the operator scales the Deployment, its ReplicaSet picks the pod.
    target["minReplicas"] = 1
    target["maxReplicas"] = 2
    cp.apply(doc)
    wait_for(lambda: len(live_pods(cp, ns, "decode")) == 2, timeout=30, what="the Deployment scaled to 2")
    assert newest in {p["metadata"]["name"] for p in live_pods(cp, ns, "decode")}
    wait_seconds(2.0)
    run = _run(cp, ns, "sweep")
    assert run["status"]["phase"] == "Running", run["status"]
    assert (level() or {}).get("phase") == "Holding"
    assert held_caps(fleet, ns)[newest] == {300}


def _running_pods(cp: ControlPlane, ns: str, count: int) -> list[str] | None:
    pods = live_pods(cp, ns, "decode")
    if len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods):
        return [p["metadata"]["name"] for p in pods]
    return None
