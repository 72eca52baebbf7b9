"""The dashboard and the alert rules against the real Prometheus scraping a running fleet.

Real: the control plane (API server, controller-manager, scheduler), the
gpupower operator and two gpupower agents (separate processes under their
ServiceAccounts), Prometheus (Debian's) scraping them through the shipped
scrape configuration (``manifests/monitoring/prometheus/scrape-configs.yaml``,
its relabeling fed with the labels Kubernetes service discovery would give
those pods), and the shipped rules file loaded into it. Simulated: the two
nodes and their kubelets (``tests/e2e/fleetkit.py``: the demo's node simulator, PodResources, pods
Running),
the GPUs (the agents' fake NVML, one of them failing to set limits), and DCGM
(the synthetic exporter reports each worker pod's GPU drawing 80 % of its cap).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import __main__ as generate
from tests.e2e.fleetkit import SimulatedFleet
from tests.e2e.operator_harness import (
    ApiProxy,
    OperatorProcess,
    install_operator_rbac,
    proxied_kubeconfig,
    upstream_of,
)
from tests.e2e.promkit import PrometheusServer, SyntheticExporter, prometheus_binary
from tests.envtest import REPO, ControlPlane, unique_name, wait_for
from tests.workloads import gpu_deployment

pytestmark = [pytest.mark.envtest, pytest.mark.controllers, pytest.mark.prometheus]

SYSTEM_NAMESPACE = "gpupower-system"
SCRAPE_CONFIGS = REPO / "manifests" / "monitoring" / "prometheus" / "scrape-configs.yaml"
RULES = REPO / "manifests" / "monitoring" / "rules" / "gpupower.rules.yaml"


def kubernetes_sd_target(app: str, port: int, node: str, pod: str) -> dict[str, Any]:
    """What Kubernetes pod discovery gives Prometheus for one of our pods (with an unused container port)."""
    return {
        "targets": ["127.0.0.1:1"],
        "labels": {
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_node_name": node,
            # As the Prometheus Operator adds them: the program's own namespace/pod labels must win.
            "namespace": SYSTEM_NAMESPACE,
            "pod": pod,
        },
    }


def shipped_scrape_configs(targets: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The shipped jobs, their discovery replaced by static targets carrying the same labels."""
    jobs = yaml.safe_load(SCRAPE_CONFIGS.read_text())["scrape_configs"]
    for job in jobs:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = targets[job["job_name"]]
    return list(jobs)


class DcgmSimulator:
    """Plays dcgm-exporter: every live worker pod's GPU draws 80 % of the cap annotated on it."""

    def __init__(self, cp: ControlPlane, exporter: SyntheticExporter, namespace: str) -> None:
        self.cp, self.exporter, self.namespace = cp, exporter, namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dcgm-simulator", daemon=True)

    def __enter__(self) -> DcgmSimulator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            result = self.cp.kubectl("get", "pods", "-n", self.namespace, "-o", "json", check=False)
            if result.returncode != 0:
                continue
            for pod in json.loads(result.stdout)["items"]:
                cap = (pod["metadata"].get("annotations") or {}).get("gpupower.dev/power-limit-watts")
                if cap is not None and cap.isdecimal() and not pod["metadata"].get("deletionTimestamp"):
                    self.exporter.set_gpu_power(self.namespace, pod["metadata"]["name"], 0, 0.8 * int(cap))


@dataclass
class Running:
    prometheus: PrometheusServer
    namespace: str
    nodes: tuple[str, ...]
    operator: OperatorProcess


@pytest.fixture(scope="module")
def fleet(crd_installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cp = crd_installed
    if not cp.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    if prometheus_binary() is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    root = tmp_path_factory.mktemp("dashboard")
    install_operator_rbac(cp)
    namespace = unique_name("dash")
    domain_name = unique_name("dash-rack")
    cp.kubectl("create", "namespace", namespace)
    exporter = SyntheticExporter()
    exporter.start()
    workdir = Path(tempfile.mkdtemp(prefix="gpupower-dashboard-"))
    proxy = ApiProxy(*upstream_of(cp.kubeconfig)).start()
    operator = OperatorProcess(
        proxied_kubeconfig(cp, SYSTEM_NAMESPACE, "gpupower-operator", root, proxy.url), root / "operator.log"
    )
    fleet = SimulatedFleet(cp, root / "fleet", [unique_name("gpu-node") for _ in range(2)])
    prometheus: PrometheusServer | None = None
    try:
        fleet.start()
        agents = [node.agent for node in fleet.nodes.values()]
        # A GPU whose driver refuses power limits: the NVML error panel and alert have something to show.
        agents[0].edit_gpu(0, faults={"set": "no_permission"})
        # The first status writes fail: the operator's error panel has something to show.
        failures = {"left": 2}

        def first_status_writes_fail(method: str, path: str) -> int | None:
            if method == "PATCH" and path.endswith("/status") and failures["left"] > 0:
                failures["left"] -= 1
                return 500
            return None

        proxy.fault = first_status_writes_fail
        operator.start()
        targets = {
            "gpupower-operator": [
                kubernetes_sd_target(
                    "gpupower-operator", operator.metrics_port, agents[0].node_name, "operator-0"
                )
            ],
            "gpupower-agent": [
                kubernetes_sd_target("gpupower-agent", agent.metrics_port, agent.node_name, f"agent-{i}")
                for i, agent in enumerate(agents)
            ],
        }
        prometheus = PrometheusServer(
            exporter.port, workdir, extra_scrape_configs=shipped_scrape_configs(targets), rule_files=[RULES]
        )
        prometheus.start()
        cp.apply(
            [
                gpu_deployment("prefill", namespace, 2, node_selector=fleet.node_selector),
                gpu_deployment("decode", namespace, 2, gpus=2, node_selector=fleet.node_selector),
                gpu_deployment("chat", namespace, 1, node_selector=fleet.node_selector),
            ]
        )
        cp.apply(budget(namespace, prometheus.url))
        # A power domain over the fleet's nodes with a budget of its own: the domain panels' series.
        cp.apply([rack(domain_name, fleet.node_selector), rack_budget(namespace, domain_name)])
        with DcgmSimulator(cp, exporter, namespace):
            yield Running(prometheus, namespace, tuple(fleet.node_names), operator)
    finally:
        cp.kubectl("delete", "gpd", domain_name, "--wait=false", check=False)
        cp.kubectl("delete", "gpb", "--all", "-n", namespace, "--timeout=30s", check=False)
        cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        operator.stop()
        fleet.stop()
        if prometheus is not None:
            prometheus.stop()
        proxy.stop()
        exporter.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"operator log: {operator.log_path}\n{operator.log_tail(20)}")


def budget(namespace: str, prometheus_url: str) -> dict[str, Any]:
    profile = {"points": [{"watts": 200, "throughput": 10}, {"watts": 400, "throughput": 16}]}
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {
            "totalWatts": 2000,
            "safeDefaultWatts": 250,
            # Oversubscribed, so the agents guard the draw and the guard's panels have series.
            "oversubscription": {"maxRatio": 1.2},
            # Observed power from the same Prometheus (the DCGM series the simulator reports).
            "prometheus": {"url": prometheus_url, "intervalSeconds": 1, "timeoutSeconds": 2},
            "targets": [
                {
                    "name": "prefill",
                    "workloadRef": {"name": "prefill"},
                    "maxReplicas": 4,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": profile,
                    "demand": 30,
                },
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "gpusPerReplica": 2,
                    "maxReplicas": 3,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": profile,
                    "demand": 20,
                },
            ],
        },
    }


def rack(name: str, node_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": name},
        "spec": {"totalWatts": 20000, "nodeSelector": {"matchLabels": node_selector}},
    }


def rack_budget(namespace: str, domain: str) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "domainRef": {"name": domain},
            "priority": 100,
            "safeDefaultWatts": 250,
            "targets": [
                {
                    "name": "chat",
                    "workloadRef": {"name": "chat"},
                    "maxReplicas": 2,
                    "capWatts": {"min": 200, "max": 400},
                    "profile": {
                        "points": [{"watts": 200, "throughput": 10}, {"watts": 400, "throughput": 16}]
                    },
                    "demand": 12,
                }
            ],
        },
    }


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the shipped dashboard."""
    document = json.loads(generate.DASHBOARD_JSON.read_text())
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in document["panels"]
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, namespace: str) -> str:
    """The variables as the dashboard's defaults fill them, the namespace narrowed to the test's."""
    return (
        expr.replace("$namespace", namespace)
        .replace("$budget", ".*")
        .replace("$node", ".*")
        .replace("$domain", ".*")
        .replace("$__rate_interval", "30s")
    )


def with_data(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """The series an instant query returns that hold a number (NaN is no data)."""
    result = prometheus.api("/api/v1/query", query=expr)["result"]
    return [series for series in result if not math.isnan(float(series["value"][1]))]


def test_every_panel_query_returns_series_from_the_running_fleet(fleet: Running) -> None:
    queries = panel_queries()
    assert len(queries) >= 20

    def missing() -> list[str]:
        return [
            f"{title} [{ref}]: {expr}"
            for title, ref, expr in queries
            if not with_data(fleet.prometheus, substitute(expr, fleet.namespace))
        ]

    # Everything there once the plan is enforced, DCGM read, errors counted and rates have two samples.
    wait_for(lambda: not missing(), timeout=90, interval=1.0, what="data for every panel query")
    gpus = with_data(fleet.prometheus, substitute(queries[0][2], fleet.namespace))
    assert {s["metric"]["namespace"] for s in gpus} == {fleet.namespace}, "the budget's own namespace label"
    holders = with_data(
        fleet.prometheus,
        substitute(next(expr for title, _, expr in queries if title == "Pods holding GPUs"), fleet.namespace),
    )
    assert {s["metric"]["node"] for s in holders} <= set(fleet.nodes)
    assert {s["metric"]["namespace"] for s in holders} == {fleet.namespace}, "honor_labels keeps the pod's"


def test_every_template_variable_finds_values(fleet: Running) -> None:
    document = json.loads(generate.DASHBOARD_JSON.read_text())
    for variable in document["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric, label = variable["definition"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
        values = fleet.prometheus.api(
            f"/api/v1/label/{label.strip()}/values", **{"match[]": substitute(metric, fleet.namespace)}
        )
        assert values, f"variable {variable['name']} finds no value"
    nodes = fleet.prometheus.api("/api/v1/label/node/values", **{"match[]": "gpupower_agent_info"})
    assert set(fleet.nodes) <= set(nodes)


def test_the_rules_load_and_evaluate_without_errors_and_the_nvml_alert_is_pending(fleet: Running) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = fleet.prometheus.api("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return (
            rules if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules) else None
        )

    rules = wait_for(evaluated, timeout=30, interval=1.0, what="every rule evaluated")
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {rule["name"] for rule in rules} == shipped
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []

    def nvml_alert() -> list[dict[str, Any]]:
        return [
            a
            for rule in fleet.prometheus.api("/api/v1/rules")["groups"]
            for r in rule["rules"]
            if r["name"] == "GpuPowerNvmlErrors"
            for a in r["alerts"]
        ]

    # The failing GPU's errors make the alert pending (it fires after 10 minutes); nothing else is wrong.
    alerts = wait_for(nvml_alert, timeout=60, interval=1.0, what="GpuPowerNvmlErrors pending")
    assert {a["labels"]["kind"] for a in alerts} == {"no_permission"}
    assert {a["labels"]["node"] for a in alerts} == {fleet.nodes[0]}
    down = [
        r["name"] for g in fleet.prometheus.api("/api/v1/rules")["groups"] for r in g["rules"] if r["alerts"]
    ]
    assert set(down) <= {"GpuPowerNvmlErrors", "GpuPowerBudgetNotReady", "GpuPowerCapsNotEnforced"}, down
