"""The operator end to end with the real Prometheus: the real operator process under its ServiceAccount,
the real control plane creating and deleting pods as the operator scales, and a fleet simulator that
makes those pods report vLLM traffic and DCGM power through the synthetic exporter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from gpupower_operator.core.planner import ProfilePoint, throughput_at
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess, clean_namespace, running_operator
from tests.e2e.promkit import PodTraffic, PrometheusStack, close_to
from tests.envtest import ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers, pytest.mark.prometheus]

SYSTEM_NAMESPACE = "gpupower-system"
ACCOUNT = "gpupower-operator"
WINDOW_SECONDS = 5
PROFILE = ({"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 10})
POINTS = tuple(ProfilePoint(p["watts"], p["throughput"]) for p in PROFILE)


@pytest.fixture(scope="module")
def gpu_fleet(
    crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimulatedFleet]:
    """A node with a simulated kubelet and a real agent: corrections wait for the caps its agent confirms."""
    if not crd_installed.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    fleet = SimulatedFleet(
        crd_installed, tmp_path_factory.mktemp("prometheus-fleet"), [unique_name("gpu-node")], gpus=64
    ).start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def operator(
    crd_installed: ControlPlane, gpu_fleet: SimulatedFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(crd_installed, tmp_path_factory.mktemp("operator-prometheus"), 1.0) as process:
        yield process


@dataclass
class Load:
    demand: float = 0.0
    power_fraction: float = 1.0


class FleetSimulator:
    """Plays the engines and DCGM for the Deployment's live pods, as the operator scales and caps them.

    Arrivals split evenly over the live pods; each serves up to the profile's
    throughput at the cap annotated on it (the plan's cap); the rest waits in
    the queue gauge; each pod's GPU draws ``power_fraction`` of its cap.
    """

    def __init__(self, cp: ControlPlane, stack: PrometheusStack, namespace: str) -> None:
        self.cp, self.stack, self.namespace = cp, stack, namespace
        self.load = Load()
        self._stop = threading.Event()
        self._known: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="fleet-simulator", daemon=True)

    def __enter__(self) -> FleetSimulator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for pod in self._known:
            self.stack.exporter.remove_pod(self.namespace, pod)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            result = self.cp.kubectl(
                "get", "pods", "-n", self.namespace, "-l", "app=decode", "-o", "json", check=False
            )
            if result.returncode != 0:
                continue
            pods = [
                p
                for p in yaml.safe_load(result.stdout)["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
            live = {}
            for pod in pods:
                cap = (pod["metadata"].get("annotations") or {}).get("gpupower.dev/power-limit-watts", "400")
                live[pod["metadata"]["name"]] = int(cap) if cap.isdecimal() else 400
            arriving = self.load.demand / max(1, len(live))
            for name, cap in live.items():
                served = min(arriving, throughput_at(POINTS, cap))
                traffic = PodTraffic(requests_per_second=served, waiting=(arriving - served) * WINDOW_SECONDS)
                self.stack.exporter.set_traffic(self.namespace, name, traffic)
                self.stack.exporter.set_gpu_power(self.namespace, name, 0, self.load.power_fraction * cap)
            for gone in self._known - set(live):
                self.stack.exporter.remove_pod(self.namespace, gone)
            self._known = set(live)


def budget(namespace: str, url: str, total_watts: int, oversubscribed: bool = False) -> dict[str, Any]:
    doc = {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llama", "namespace": namespace},
        "spec": {
            "totalWatts": total_watts,
            "safeDefaultWatts": 250,
            "prometheus": {
                "url": url,
                "intervalSeconds": 1,
                "timeoutSeconds": 2,
                "failuresBeforeFallback": 2,
                "driftChecks": 2,
                "replanIntervalSeconds": 0,
            },
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "minReplicas": 1,
                    "maxReplicas": 12,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {"unit": "requests/s", "points": list(PROFILE)},
                    "preset": {"engine": "vllm", "windowSeconds": WINDOW_SECONDS},
                }
            ],
        },
    }
    if oversubscribed:
        # GPUs drawing less than their caps free watts only for a budget that opts into oversubscription.
        doc["spec"]["oversubscription"] = {"maxRatio": 1.5}
    return doc


def status(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    return dict(cp.get_json("gpb", "llama", "-n", namespace).get("status") or {})


def decode_status(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    targets = status(cp, namespace).get("targets") or [{}]
    return dict(targets[0])


def metrics_available(cp: ControlPlane, namespace: str) -> str | None:
    for item in status(cp, namespace).get("conditions") or []:
        if item["type"] == "MetricsAvailable":
            return str(item["status"])
    return None


@pytest.fixture
def ns(operator: OperatorProcess, namespace: str, control_plane: ControlPlane) -> Iterator[str]:
    yield namespace
    clean_namespace(control_plane, namespace)


def test_operator_follows_demand_and_spends_the_watts_gpus_leave_unused(
    control_plane: ControlPlane, prometheus: PrometheusStack, gpu_fleet: SimulatedFleet, ns: str
) -> None:
    cp = control_plane
    cp.apply(gpu_deployment("decode", ns, 1, node_selector=gpu_fleet.node_selector, container="vllm"))
    cp.apply(budget(ns, prometheus.url, total_watts=2000, oversubscribed=True))
    with FleetSimulator(cp, prometheus, ns) as fleet:
        fleet.load.demand = 12
        first = wait_for(
            lambda: (
                (d := decode_status(cp, ns)).get("demandSource") == "Prometheus"
                and close_to(d.get("demand"), 12.0)
                and d
            ),
            timeout=40,
            interval=0.5,
            what="the status to plan for 12 req/s read from Prometheus",
        )
        assert metrics_available(cp, ns) == "True"

        # Demand up: more replicas planned, and the Deployment scaled to them.
        fleet.load.demand = 40
        ramped = wait_for(
            lambda: close_to((d := decode_status(cp, ns)).get("demand"), 40.0) and d,
            timeout=30,
            interval=0.5,
            what="the plan to follow demand up to 40 req/s",
        )
        assert ramped["plannedReplicas"] > first["plannedReplicas"]
        wait_for(
            lambda: (
                cp.get_json("deployment", "decode", "-n", ns)["spec"]["replicas"] == ramped["plannedReplicas"]
            ),
            timeout=20,
            interval=0.5,
            what="the Deployment scaled to the planned replicas",
        )

        # More demand than 2000 W serve: the budget binds. Then the GPUs draw 60 % of their caps.
        fleet.load.demand = 72
        bound = wait_for(
            lambda: close_to((d := decode_status(cp, ns)).get("demand"), 72.0, 0.15) and d,
            timeout=30,
            interval=0.5,
            what="demand of 72 req/s",
        )
        assert bound["plannedReplicas"] * bound["capWatts"] <= 2000
        assert status(cp, ns).get("observedWatts") is not None
        fleet.load.power_fraction = 0.6
        freed = wait_for(
            lambda: (
                (d := decode_status(cp, ns)).get("powerFactor", 1.0) < 0.8
                and d["plannedReplicas"] * d["capWatts"] > 2000
                and d
            ),
            timeout=45,
            interval=0.5,
            what="the power correction to move and a later plan to use the freed watts",
        )
        assert freed["capacity"] > bound["capacity"]
        assert freed["projectedWatts"] <= 2000


def test_prometheus_down_keeps_the_last_plan_and_recovery_resumes(
    control_plane: ControlPlane, prometheus: PrometheusStack, gpu_fleet: SimulatedFleet, ns: str
) -> None:
    cp = control_plane
    cp.apply(gpu_deployment("decode", ns, 1, node_selector=gpu_fleet.node_selector, container="vllm"))
    cp.apply(budget(ns, prometheus.url, total_watts=4000))
    with FleetSimulator(cp, prometheus, ns) as fleet:
        fleet.load.demand = 18
        before = wait_for(
            lambda: close_to((d := decode_status(cp, ns)).get("demand"), 18.0) and d,
            timeout=40,
            interval=0.5,
            what="demand of 18 req/s",
        )
        prometheus.server.stop()
        try:
            wait_for(
                lambda: metrics_available(cp, ns) == "False",
                timeout=30,
                interval=0.5,
                what="MetricsAvailable to turn False",
            )
            during = decode_status(cp, ns)
            assert (during["plannedReplicas"], during["capWatts"]) == (
                before["plannedReplicas"],
                before["capWatts"],
            )
            assert during["demandSource"] == "LastGood"
            message = next(c for c in status(cp, ns)["conditions"] if c["type"] == "MetricsAvailable")[
                "message"
            ]
            assert "cannot reach" in message
            assert (
                cp.get_json("deployment", "decode", "-n", ns)["spec"]["replicas"] == before["plannedReplicas"]
            )
        finally:
            prometheus.server.start()
        fleet.load.demand = 30
        wait_for(
            lambda: (
                metrics_available(cp, ns) == "True"
                and close_to((d := decode_status(cp, ns)).get("demand"), 30.0)
                and d.get("demandSource") == "Prometheus"
            ),
            timeout=40,
            interval=0.5,
            what="recovery: MetricsAvailable True and the new demand planned",
        )
