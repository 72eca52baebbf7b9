"""Oversubscription end to end: the real operator planning on what the real Prometheus says the GPUs draw,
the real agents' draw guard holding each node to its share when the load comes back.

Real: the control plane, the operator and agent processes, Prometheus (Debian's). Simulated: the kubelets
(bind, allocate, start), the GPUs (fake H100s whose power usage is min(limit, load), the load from a file the
test writes), and the workload's metrics: a thread publishes, for every pod holding GPUs, the vLLM request
counters of the replica at the limit its GPU holds, and DCGM_FI_DEV_POWER_USAGE = what its fake GPU draws.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gpupower_operator.core.planner import ProfilePoint, throughput_at
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import OperatorProcess, clean_namespace, running_operator
from tests.e2e.promkit import PodTraffic, PrometheusStack
from tests.envtest import ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers, pytest.mark.prometheus]

WINDOW_SECONDS = 5
PROFILE = ({"watts": 450, "throughput": 8}, {"watts": 700, "throughput": 10})
POINTS = tuple(ProfilePoint(p["watts"], p["throughput"]) for p in PROFILE)
TOTAL_WATTS = 4000
RATIO = 1.5
SENSOR_MARGIN = 1.05  # NVML and DCGM readings are averages: 5 % of slack on what a node holds
QUIET_WATTS = 250.0  # what each GPU's workload draws uncapped: about half its cap
SURGE_WATTS = 700.0  # every GPU at its maximum


@pytest.fixture(scope="module")
def fleet(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedFleet]:
    if not crd_installed.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    fleet = SimulatedFleet(
        crd_installed,
        tmp_path_factory.mktemp("oversubscribed-fleet"),
        [unique_name("os-node") for _ in range(2)],
    ).start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def operator(
    crd_installed: ControlPlane, fleet: SimulatedFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with running_operator(crd_installed, tmp_path_factory.mktemp("oversubscribed-operator")) as process:
        yield process
    print(fleet.logs())


@pytest.fixture
def ns(
    operator: OperatorProcess, fleet: SimulatedFleet, namespace: str, control_plane: ControlPlane
) -> Iterator[str]:
    set_loads(fleet, QUIET_WATTS)
    yield namespace
    clean_namespace(control_plane, namespace)


def set_loads(fleet: SimulatedFleet, watts: float) -> None:
    for node in fleet.nodes.values():
        node.agent.set_loads(dict.fromkeys(range(node.agent.gpus), watts))


def budget(namespace: str, url: str, oversubscribed: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "totalWatts": TOTAL_WATTS,
        "safeDefaultWatts": 450,
        "prometheus": {
            "url": url,
            "intervalSeconds": 1,
            "timeoutSeconds": 2,
            "failuresBeforeFallback": 3,
            "driftChecks": 1,
            "replanIntervalSeconds": 0,
            "demandStabilizationSeconds": 0,
        },
        "targets": [
            {
                "name": "decode",
                "workloadRef": {"name": "decode"},
                "minReplicas": 1,
                "maxReplicas": 16,
                "capWatts": {"min": 450, "max": 700},
                "profile": {"unit": "requests/s", "points": list(PROFILE)},
                "preset": {"engine": "vllm", "windowSeconds": WINDOW_SECONDS},
            }
        ],
    }
    if oversubscribed:
        spec["oversubscription"] = {"maxRatio": RATIO, "guardHoldSeconds": 1, "relaxSeconds": 3600}
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llama", "namespace": namespace},
        "spec": spec,
    }


@dataclass
class Workload:
    """The engines and DCGM of every pod holding GPUs in the namespace, from what their fake GPUs hold."""

    fleet: SimulatedFleet
    stack: PrometheusStack
    namespace: str
    arrivals: float = 300.0  # more than 4 kW serve: the budget binds

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._known: set[str] = set()

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for pod in self._known:
            self.stack.exporter.remove_pod(self.namespace, pod)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            held: dict[str, tuple[int, float]] = {}  # pod -> (limit, draw) of its GPU
            for node in self.fleet.nodes.values():
                limits, loads = node.agent.limits(), node.agent.loads()
                for pod, allocation in node.simulator.allocations().items():
                    if pod.namespace == self.namespace and allocation.gpu_uuids:
                        uuid = allocation.gpu_uuids[0]
                        limit = limits.get(uuid, 700)
                        held[pod.name] = (limit, min(float(limit), loads.get(uuid, 70.0)))
            arriving = self.arrivals / max(1, len(held))
            for name, (limit, draw) in held.items():
                served = min(arriving, throughput_at(POINTS, limit))
                traffic = PodTraffic(requests_per_second=served, waiting=(arriving - served) * WINDOW_SECONDS)
                self.stack.exporter.set_traffic(self.namespace, name, traffic)
                self.stack.exporter.set_gpu_power(self.namespace, name, 0, draw)
            for gone in self._known - set(held):
                self.stack.exporter.remove_pod(self.namespace, gone)
            self._known = set(held)


def status(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    return dict(cp.get_json("gpb", "llama", "-n", namespace).get("status") or {})


def node_draws(fleet: SimulatedFleet, namespace: str, share_per_gpu: float) -> dict[str, tuple[float, float]]:
    """Per node: what the budget's GPUs there draw (min(limit, load)) and their share."""
    draws: dict[str, tuple[float, float]] = {}
    for name, node in fleet.nodes.items():
        limits, loads = node.agent.limits(), node.agent.loads()
        gpus = [
            uuid
            for pod, allocation in node.simulator.allocations().items()
            if pod.namespace == namespace
            for uuid in allocation.gpu_uuids
        ]
        draws[name] = (
            sum(min(float(limits.get(u, 700)), loads.get(u, 70.0)) for u in gpus),
            share_per_gpu * len(gpus),
        )
    return draws


def test_an_oversubscribed_budget_plans_on_the_draw_and_its_guard_holds_each_node_to_its_share(
    control_plane: ControlPlane, prometheus: PrometheusStack, fleet: SimulatedFleet, ns: str
) -> None:
    cp = control_plane
    cp.apply(gpu_deployment("decode", ns, 4, node_selector=fleet.node_selector, container="vllm"))
    cp.apply(budget(ns, prometheus.url, oversubscribed=True))
    with Workload(fleet, prometheus, ns):
        # GPUs drawing about half their caps: the plan's caps go above 4 kW, its planned draw stays within.
        planned = wait_for(
            lambda: (s := status(cp, ns)).get("capsWatts", 0) > TOTAL_WATTS * 1.2 and s,
            timeout=150,
            interval=1,
            what="the plan to oversubscribe the GPUs' caps",
        )
        assert planned["capsWatts"] <= TOTAL_WATTS * RATIO
        assert planned["plannedDrawWatts"] <= TOTAL_WATTS
        # The fleet runs that plan, every GPU at its cap.
        settled = wait_for(
            lambda: (
                (s := status(cp, ns)).get("conditions")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in s["conditions"])
                and s
            ),
            timeout=60,
            interval=0.5,
            what="the oversubscribed plan enforced",
        )
        decode = settled["targets"][0]
        share_per_gpu = float(decode["gpuShareWatts"])
        assert decode["capWatts"] > share_per_gpu, decode
        held = fleet.held_by_pods(ns)
        assert all(limits == [decode["capWatts"]] for limits in held.values()), held

        # Every GPU's load to its maximum: within 3 s each node draws within its share (plus the margin).
        set_loads(fleet, SURGE_WATTS)
        surged = time.monotonic()
        samples: list[tuple[float, dict[str, tuple[float, float]]]] = []
        while time.monotonic() - surged < 6:
            samples.append((time.monotonic() - surged, node_draws(fleet, ns, share_per_gpu)))
            time.sleep(0.1)
        late = [draws for at, draws in samples if at >= 3.0]
        for draws in late:
            for node, (draw, share) in draws.items():
                assert draw <= share * SENSOR_MARGIN, (node, draw, share, samples[:3])
            assert sum(d for d, _ in draws.values()) <= TOTAL_WATTS * SENSOR_MARGIN
        first_over = max(at for at, draws in samples if any(d > s * SENSOR_MARGIN for d, s in draws.values()))
        assert first_over < 3.0, f"a node drew above its share until {first_over:.1f}s after the surge"
        for node in fleet.nodes.values():
            assert "event=guard_engaged" in node.agent.log()
        engaged = sum(
            node.agent.metric_value(
                "gpupower_agent_guard_engagements_total", budget_namespace=ns, budget="llama"
            )
            or 0
            for node in fleet.nodes.values()
        )
        assert engaged >= len(fleet.nodes)
        guarded = wait_for(
            lambda: (t := status(cp, ns)["targets"][0]).get("guardEngagements", 0) >= 1 and t,
            timeout=20,
            what="the operator to count the engagements",
        )
        assert guarded["drawFactorFloor"] is not None

        # The load falls: the guard releases in steps, and the GPUs hold the plan's caps again.
        set_loads(fleet, 150.0)

        def back_at_the_plan() -> bool:
            cap = status(cp, ns)["targets"][0]["capWatts"]
            held = fleet.held_by_pods(ns)
            return bool(held) and all(limits == [cap] for limits in held.values())

        wait_for(back_at_the_plan, timeout=60, interval=0.5, what="every GPU back at the plan's cap")
        for node in fleet.nodes.values():
            assert "event=guard_released" in node.agent.log()


def test_a_budget_without_oversubscription_keeps_its_caps_within_the_budget_with_the_same_readings(
    control_plane: ControlPlane, prometheus: PrometheusStack, fleet: SimulatedFleet, ns: str
) -> None:
    cp = control_plane
    cp.apply(gpu_deployment("decode", ns, 4, node_selector=fleet.node_selector, container="vllm"))
    cp.apply(budget(ns, prometheus.url, oversubscribed=False))
    with Workload(fleet, prometheus, ns):
        corrected = wait_for(
            lambda: (t := status(cp, ns).get("targets", [{}])[0]).get("powerFactor", 1.0) < 0.8 and t,
            timeout=120,
            interval=1,
            what="the power correction to see GPUs drawing about half their caps",
        )
        time.sleep(3)  # a few more plans made with that correction
        final = status(cp, ns)
        assert final["capsWatts"] <= TOTAL_WATTS, final
        assert corrected["plannedReplicas"] * corrected["capWatts"] <= TOTAL_WATTS
        assert "gpuShareWatts" not in final["targets"][0]
