"""The Grafana dashboard, as data: one :class:`Panel` entry per panel, laid out and numbered by :func:`build`.

Adding a panel is adding one entry to :data:`SECTIONS` (e.g.
``Panel("Enforced watts", (per_budget("enforced_watts", "enforced"),), unit="watt")``); the tests check every
panel's queries against a real Prometheus scraping a running fleet, and every
metric name against the ones the operator and the agent export.

Variables the queries may use: ``$namespace``, ``$budget`` and ``$domain`` (regular
expressions: every value is selected by default), ``$node``, and Grafana's own
``$__rate_interval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
UID = "gpupower-overview"
TITLE = "gpupower: GPU power budgets"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

BUDGET = 'namespace=~"$namespace",budget=~"$budget"'
# The agents' per-budget series name the budget's namespace budget_namespace (their own is the agent's).
GUARDED = 'budget_namespace=~"$namespace",budget=~"$budget"'
DOMAIN = 'domain=~"$domain"'
# The node of an agent's series: from its gpupower_agent_info, whatever the scrape's relabeling.
ON_NODE = '* on (job, instance) group_left (node) gpupower_agent_info{node=~"$node"}'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12  # of 24 columns
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def per_budget(metric: str, what: str = "") -> Query:
    """One of the operator's per-budget series, for the selected namespaces and budgets."""
    return Query(
        f"gpupower_operator_{metric}{{{BUDGET}}}", f"{{{{namespace}}}}/{{{{budget}}}} {what}".strip()
    )


def per_target(metric: str, what: str = "") -> Query:
    """One of the operator's per-target series (``gpupower_operator_target_<metric>``)."""
    return Query(
        f"gpupower_operator_target_{metric}{{{BUDGET}}}", f"{{{{budget}}}}/{{{{target}}}} {what}".strip()
    )


SECTIONS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Budgets",
        (
            Panel(
                "Budget limit, planned, enforced and observed watts",
                (
                    per_budget("budget_watts", "limit"),
                    per_budget("planned_watts", "planned"),
                    per_budget("enforced_watts", "enforced"),
                    per_budget("observed_watts", "observed"),
                ),
                unit="watt",
                width=24,
                description="The budget's totalWatts, the power of its plan, what its GPUs can hold at most "
                "now according to their agents (enforced), and what they draw (DCGM, read by the operator "
                "from Prometheus).",
            ),
            Panel(
                "Caps against their limit, and the planned draw",
                (
                    per_budget("caps_watts", "caps"),
                    per_budget("caps_limit_watts", "caps limit"),
                    per_budget("planned_draw_watts", "planned draw"),
                ),
                unit="watt",
                width=12,
                description="The planned caps summed, what they may sum to (totalWatts, or x maxRatio when "
                "oversubscribed), and what the plan expects the GPUs to draw.",
            ),
            Panel(
                "Enforcement stalled",
                (
                    q(
                        f'gpupower_operator_condition{{{BUDGET},type="EnforcementStalled",status="True"}}',
                        "{{namespace}}/{{budget}}",
                    ),
                ),
                kind="stat",
                width=12,
                description="1: pods whose agent has not confirmed their caps for longer than the operator's "
                "--enforcement-timeout-seconds; raises wait for them.",
            ),
            Panel(
                "Served fraction of demand",
                (per_budget("served_ratio"),),
                unit="percentunit",
                width=8,
            ),
            Panel(
                "Utilization (planned / limit)",
                (per_budget("utilization_ratio"),),
                unit="percentunit",
                width=8,
            ),
            Panel(
                "Ready and Infeasible",
                (
                    q(
                        f'gpupower_operator_condition{{{BUDGET},type="Ready",status="True"}}',
                        "{{namespace}}/{{budget}} Ready",
                    ),
                    q(
                        f'gpupower_operator_condition{{{BUDGET},type="Infeasible",status="True"}}',
                        "{{namespace}}/{{budget}} Infeasible",
                    ),
                ),
                kind="stat",
                width=8,
                description="1: the condition is True. Not Ready for long, or Infeasible, also alerts.",
            ),
        ),
    ),
    (
        "Targets",
        (
            Panel(
                "Demand and planned capacity per target",
                (
                    per_target("demand", "demand"),
                    per_target("capacity", "capacity"),
                ),
                description="In the unit of the target's profile (requests/s, tokens/s).",
            ),
            Panel(
                "Served fraction per target",
                (per_target("served_ratio"),),
                unit="percentunit",
            ),
            Panel(
                "Replicas per target: planned and desired",
                (
                    per_target("planned_replicas", "planned"),
                    per_target("desired_replicas", "desired"),
                ),
                description="Desired: what demand alone asks for at the highest cap.",
            ),
            Panel(
                "Per-GPU cap per target",
                (per_target("cap_watts"),),
                unit="watt",
            ),
            Panel(
                "Planned and observed watts per target",
                (
                    per_target("projected_watts", "planned"),
                    per_target("observed_watts", "observed"),
                ),
                unit="watt",
                width=24,
            ),
        ),
    ),
    (
        "Draw guard (oversubscribed budgets)",
        (
            Panel(
                "Guard engaged, per node and budget",
                (
                    q(
                        f"gpupower_agent_guard_engaged{{{GUARDED}}} {ON_NODE}",
                        "{{node}} {{budget_namespace}}/{{budget}}",
                    ),
                ),
                width=8,
                description="1 while an agent's draw guard holds the budget's GPUs on its node below their "
                "caps.",
            ),
            Panel(
                "Guard: draw against share, per node and budget",
                (
                    q(
                        f"gpupower_agent_guard_draw_watts{{{GUARDED}}} {ON_NODE}",
                        "{{node}} {{budget}} drawn",
                    ),
                    q(
                        f"gpupower_agent_guard_share_watts{{{GUARDED}}} {ON_NODE}",
                        "{{node}} {{budget}} share",
                    ),
                ),
                unit="watt",
                width=8,
                description="What the budget's GPUs on the node drew at the guard's last reading, and their "
                "share of the budget.",
            ),
            Panel(
                "Guard engagements",
                (
                    q(
                        "sum by (node, budget_namespace, budget) (increase("
                        f"gpupower_agent_guard_engagements_total{{{GUARDED}}}[$__rate_interval]) {ON_NODE})",
                        "{{node}} {{budget_namespace}}/{{budget}}",
                    ),
                    per_target("guard_engagements", "counted by the operator"),
                ),
                width=8,
                description="Engagements per node, and as the operator counts them per target (it plans with "
                "less oversubscription after each).",
            ),
        ),
    ),
    (
        "Power domains",
        (
            Panel(
                "What the GPUs hold against each domain's limit",
                (
                    q(f"gpupower_domain_held_watts{{{DOMAIN}}}", "{{domain}} held"),
                    q(f"gpupower_domain_limit_watts{{{DOMAIN}}}", "{{domain}} limit"),
                ),
                unit="watt",
                width=12,
                description="The sum of the limits every GPU on the domain's nodes holds, by the agents' "
                "reports (idle and unmanaged GPUs included): what its breaker would see at worst.",
            ),
            Panel(
                "Committed outside budgets, by kind",
                (q(f"gpupower_domain_committed_watts{{{DOMAIN}}}", "{{domain}} {{kind}}"),),
                unit="watt",
                width=12,
                description="Idle GPUs at their parked limit, unmanaged pods' GPUs, and GPUs of budgets of "
                "other domains: what comes off the domain before any budget gets a watt.",
            ),
            Panel(
                "Allocated, floors and headroom",
                (
                    q(f"gpupower_domain_allocated_watts{{{DOMAIN}}}", "{{domain}} allocated"),
                    q(f"gpupower_domain_floor_watts{{{DOMAIN}}}", "{{domain}} floors"),
                    q(f"gpupower_domain_headroom_watts{{{DOMAIN}}}", "{{domain}} headroom"),
                ),
                unit="watt",
                width=12,
            ),
            Panel(
                "Allocation per budget",
                (
                    q(
                        f"gpupower_domain_budget_allocated_watts{{{DOMAIN},{BUDGET}}}",
                        "{{domain}} {{namespace}}/{{budget}}",
                    ),
                ),
                unit="watt",
                width=12,
                description="What each domain allocates the budgets that join it directly (by priority).",
            ),
            Panel(
                "Domain conditions",
                (q(f'gpupower_domain_condition{{{DOMAIN},status="True"}} == 1', "{{domain}} {{type}}"),),
                kind="table",
                width=24,
                description="The conditions that are True now: Ready, Overcommitted, Infeasible, Overlap.",
            ),
        ),
    ),
    (
        "GPUs",
        (
            Panel(
                "Per GPU: power limit and power drawn",
                (
                    q(f"gpupower_agent_gpu_power_limit_watts {ON_NODE}", "{{node}} GPU {{index}} limit"),
                    q(f"gpupower_agent_gpu_power_usage_watts {ON_NODE}", "{{node}} GPU {{index}} drawn"),
                ),
                unit="watt",
                width=24,
                description="The limit NVML reports after each reconcile, and the power the GPU draws.",
            ),
            Panel(
                "GPUs capped by gpupower per node",
                (q(f"sum by (node) (gpupower_agent_gpu_managed {ON_NODE})", "{{node}}"),),
            ),
            Panel(
                "Pods holding GPUs",
                (q(f"gpupower_agent_gpu_pod_info {ON_NODE}", "{{node}} {{namespace}}/{{pod}}"),),
                kind="table",
                extra={"transformations": [{"id": "labelsToFields", "options": {}}]},
            ),
        ),
    ),
    (
        "Health and errors",
        (
            Panel(
                "Operator replicas: scraped and active",
                (
                    q('up{job="gpupower-operator"}', "{{instance}} up"),
                    q("gpupower_operator_leader", "{{instance}} active"),
                ),
                width=8,
                description="With leader election one replica is active and the other stands by.",
            ),
            Panel(
                "Agents scraped",
                (q('up{job="gpupower-agent"}', "{{instance}}"),),
                width=8,
            ),
            Panel(
                "Agents: API unreachable",
                (q(f"gpupower_agent_api_unreachable_seconds {ON_NODE}", "{{node}}"),),
                unit="s",
                width=8,
            ),
            Panel(
                "Operator errors by kind",
                (q("sum by (kind) (rate(gpupower_operator_errors_total[$__rate_interval]))", "{{kind}}"),),
                unit="reqps",
                width=8,
            ),
            Panel(
                "Operator writes by kind",
                (q("sum by (kind) (rate(gpupower_operator_writes_total[$__rate_interval]))", "{{kind}}"),),
                unit="reqps",
                width=8,
            ),
            Panel(
                "Reconcile time, p90",
                (
                    q(
                        "histogram_quantile(0.9, sum by (le) "
                        "(rate(gpupower_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "operator",
                    ),
                    q(
                        "histogram_quantile(0.9, sum by (le, instance) "
                        "(rate(gpupower_agent_reconcile_duration_seconds_bucket[$__rate_interval])))",
                        "agent {{instance}}",
                    ),
                ),
                unit="s",
                width=8,
            ),
            Panel(
                "NVML errors by kind",
                (
                    q(
                        "sum by (node, kind) "
                        f"(rate(gpupower_agent_nvml_errors_total[$__rate_interval]) {ON_NODE})",
                        "{{node}} {{kind}}",
                    ),
                ),
                unit="reqps",
                width=12,
            ),
            Panel(
                "Agent limit changes by action",
                (
                    q(
                        "sum by (node, action) "
                        f"(rate(gpupower_agent_limit_changes_total[$__rate_interval]) {ON_NODE})",
                        "{{node}} {{action}}",
                    ),
                ),
                unit="reqps",
                width=12,
            ),
        ),
    ),
)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,  # on time range change
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int, height: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                **({"format": "table", "instant": True} if panel.kind == "table" else {}),
            }
            for index, query in enumerate(panel.queries)
        ],
    }
    body.update(panel.extra)
    return body


def build() -> dict[str, Any]:
    """The dashboard JSON: a row per section, panels placed left to right, ids in order."""
    panels: list[dict[str, Any]] = []
    panel_id = 0
    y = 0
    height = 8
    for section, members in SECTIONS:
        panel_id += 1
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": section,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = 0
        for panel in members:
            if x + panel.width > 24:
                x, y = 0, y + height
            panel_id += 1
            panels.append(_panel(panel, panel_id, x, y, height))
            x += panel.width
        y += height
    return {
        "uid": UID,
        "title": TITLE,
        "description": "GPU power budgets, their plans and what the GPUs hold; the operator and the agents.",
        "tags": ["gpupower", "gpu", "power"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "refresh": 1,
                    "current": {},
                    "hide": 0,
                },
                _variable(
                    "namespace", "Namespace", "label_values(gpupower_operator_budget_watts, namespace)"
                ),
                _variable(
                    "budget",
                    "Budget",
                    'label_values(gpupower_operator_budget_watts{namespace=~"$namespace"}, budget)',
                ),
                _variable("node", "Node", "label_values(gpupower_agent_info, node)"),
                _variable("domain", "Power domain", "label_values(gpupower_domain_limit_watts, domain)"),
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }
