"""Effective cap ranges: capWatts intersected with what the targets' nodes publish, and the conditions."""

from __future__ import annotations

from typing import Any

from gpupower_agent.inventory import node_inventory
from gpupower_agent.nvml import GPU_MODELS, Gpu
from gpupower_api.contract import GPU_POWER_DEFAULT_LABEL, GPU_POWER_MAX_LABEL, GPU_POWER_MIN_LABEL
from gpupower_api.models import BudgetStatus, ConditionStatus, Target, TargetStatus, parse_spec
from gpupower_operator.core import inventory as inv
from gpupower_operator.core import reconcile as rc
from gpupower_operator.core.inventory import NodeInfo, Placement, RangeSource, effective_range, node_info
from gpupower_operator.core.planner import plan, problem_from_spec


def _target(cap_watts: tuple[int, int] | None = (100, 700)) -> Target:
    raw: dict[str, Any] = {
        "name": "decode",
        "workloadRef": {"name": "decode"},
        "maxReplicas": 4,
        "profile": {"points": [{"watts": 180, "throughput": 5}, {"watts": 600, "throughput": 10}]},
    }
    if cap_watts is not None:
        raw["capWatts"] = {"min": cap_watts[0], "max": cap_watts[1]}
    return Target.model_validate(raw)


def _node(
    name: str, low: int | str | None, high: int | str | None, gpu: bool = True, **labels: str
) -> NodeInfo:
    raw = dict(labels)
    if gpu:
        raw["nvidia.com/gpu.present"] = "true"
    if low is not None:
        raw[GPU_POWER_MIN_LABEL] = str(low)
    if high is not None:
        raw[GPU_POWER_MAX_LABEL] = str(high)
    raw[GPU_POWER_DEFAULT_LABEL] = str(high)
    return node_info(name, raw)


A100 = _node("a100-node", 150, 250)
H100 = _node("h100-node", 200, 700)
NODES = {n.name: n for n in (A100, H100)}


def _by_type(updates: list[Any]) -> dict[str, Any]:
    return {u.type: u for u in updates}


def test_capwatts_is_narrowed_to_the_nodes_its_pods_run_on() -> None:
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"a100-node"})), NODES)
    assert (result.min_watts, result.max_watts) == (150, 250)
    assert result.source is RangeSource.CAP_WATTS_AND_NODES and result.narrowed
    adjusted = _by_type(inv.conditions([result]))[inv.CAP_RANGE_ADJUSTED]
    assert adjusted.status is ConditionStatus.TRUE and adjusted.reason == inv.REASON_NARROWED_BY_NODES
    assert (
        "a100-node" in adjusted.message
        and "100-700 W" in adjusted.message
        and "150-250 W" in adjusted.message
    )


def test_pods_on_mixed_nodes_plan_within_the_range_every_node_accepts() -> None:
    placement = Placement(bound_nodes=frozenset({"a100-node", "h100-node"}))
    result = effective_range(_target(), placement, NODES)
    assert (result.min_watts, result.max_watts) == (200, 250)
    assert result.nodes == ("a100-node", "h100-node")


def test_without_capwatts_the_range_comes_from_the_nodes_alone() -> None:
    result = effective_range(_target(None), Placement(bound_nodes=frozenset({"h100-node"})), NODES)
    assert (result.min_watts, result.max_watts, result.source) == (200, 700, RangeSource.NODES)
    assert not result.narrowed


def test_a_capwatts_the_nodes_already_accept_is_not_adjusted() -> None:
    result = effective_range(_target((200, 600)), Placement(bound_nodes=frozenset({"h100-node"})), NODES)
    assert (result.min_watts, result.max_watts) == (200, 600) and not result.narrowed
    adjusted = _by_type(inv.conditions([result]))[inv.CAP_RANGE_ADJUSTED]
    assert adjusted.status is ConditionStatus.FALSE and adjusted.reason == inv.REASON_WITHIN_NODE_LIMITS


def test_an_empty_intersection_names_the_target_and_is_not_planned() -> None:
    result = effective_range(_target((300, 400)), Placement(bound_nodes=frozenset({"a100-node"})), NODES)
    assert result.empty
    assert inv.cap_ranges([result]) == {}
    message = inv.empty_range_message([result])
    assert message is not None and "target decode" in message and "150-250 W" in message
    adjusted = _by_type(inv.conditions([result]))[inv.CAP_RANGE_ADJUSTED]
    assert adjusted.reason == inv.REASON_CAP_RANGE_EMPTY


def test_before_any_pod_is_bound_the_gpu_nodes_matching_the_pending_pods_selector_count() -> None:
    nodes = {
        "a100-node": _node("a100-node", 150, 250, pool="a100"),
        "h100-node": _node("h100-node", 200, 700, pool="h100"),
        "cpu-node": _node("cpu-node", None, None, gpu=False, pool="h100"),
    }
    pending = Placement(pending_selectors=({"pool": "h100"},), pods=1)
    result = effective_range(_target(None), pending, nodes)
    assert (result.min_watts, result.max_watts, result.nodes, result.candidates) == (
        200,
        700,
        ("h100-node",),
        True,
    )
    no_pods = effective_range(_target(None), Placement(), nodes)
    assert (no_pods.min_watts, no_pods.max_watts) == (200, 250)


def test_nodes_without_labels_yet_are_named_and_the_spec_range_is_used() -> None:
    nodes = {"new-node": _node("new-node", None, None)}
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"new-node"})), nodes)
    assert (result.min_watts, result.max_watts, result.source) == (100, 700, RangeSource.CAP_WATTS)
    known = _by_type(inv.conditions([result]))[inv.NODE_LIMITS_KNOWN]
    assert known.status is ConditionStatus.FALSE and known.reason == inv.REASON_NODE_LABELS_MISSING
    assert "new-node" in known.message
    profile = effective_range(_target(None), Placement(bound_nodes=frozenset({"new-node"})), nodes)
    assert (profile.min_watts, profile.max_watts, profile.source) == (180, 600, RangeSource.PROFILE)


def test_a_node_the_index_has_not_seen_counts_as_unlabelled() -> None:
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"ghost", "a100-node"})), NODES)
    assert (result.min_watts, result.max_watts) == (150, 250) and result.unlabelled == ("ghost",)


def test_labels_that_do_not_parse_give_a_condition_naming_node_and_label_never_an_exception() -> None:
    for bad in ("abc", "-5", "0150", "99999", " 150", "1.5e2"):
        node = _node("odd-node", bad, 250)
        assert node.error is not None and GPU_POWER_MIN_LABEL in node.error
        result = effective_range(
            _target(),
            Placement(bound_nodes=frozenset({"odd-node", "h100-node"})),
            {
                "odd-node": node,
                "h100-node": H100,
            },
        )
        assert (result.min_watts, result.max_watts) == (200, 700)
        known = _by_type(inv.conditions([result]))[inv.NODE_LIMITS_KNOWN]
        assert known.reason == inv.REASON_NODE_LABELS_INVALID
        assert "odd-node" in known.message and repr(bad) in known.message
    half = node_info("half-node", {GPU_POWER_MAX_LABEL: "250"})
    assert half.error is not None and GPU_POWER_MIN_LABEL in half.error


def test_a_node_whose_gpus_share_no_cap_gives_an_empty_range() -> None:
    nodes = {"odd": _node("odd", 300, 200)}
    result = effective_range(_target(None), Placement(bound_nodes=frozenset({"odd"})), nodes)
    assert result.empty


def test_status_fields_carry_range_and_source() -> None:
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"a100-node"})), NODES)
    assert inv.target_status(result) == {
        "cap_range_min_watts": 150,
        "cap_range_max_watts": 250,
        "cap_range_source": "CapWattsAndNodes",
    }


def test_all_nodes_published_is_reported() -> None:
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"a100-node"})), NODES)
    known = _by_type(inv.conditions([result]))[inv.NODE_LIMITS_KNOWN]
    assert known.status is ConditionStatus.TRUE and known.reason == inv.REASON_NODES_PUBLISHED


# ---------------------------------------------------------------------------
# Into the status


def _reconciled(cap_watts: tuple[int, int] | None, node: NodeInfo) -> Any:

    target = _target(cap_watts).model_dump(by_alias=True, exclude_none=True)
    target["demand"] = 100
    spec = parse_spec({"totalWatts": 2000, "safeDefaultWatts": 150, "targets": [target]})
    ranges = [
        effective_range(spec.targets[0], Placement(bound_nodes=frozenset({node.name})), {node.name: node})
    ]
    the_plan = plan(problem_from_spec(spec, cap_ranges=inv.cap_ranges(ranges)))
    observed = rc.Observed(
        budget=rc.BudgetRef(name="llm", namespace="ns", created="2026-01-01T00:00:00Z", generation=1),
        spec=spec,
        old_status=None,
        workloads={"decode": rc.WorkloadState(replicas=4, selector="app=decode")},
        pods=[],
        cap_ranges=ranges,
    )
    return rc.reconcile(observed, the_plan, "2026-01-01T00:00:00Z").status


def test_the_status_shows_each_targets_range_its_source_and_the_condition() -> None:
    status = _reconciled((100, 700), A100)
    target = status.target("decode")
    assert (target.cap_range_min_watts, target.cap_range_max_watts, target.cap_range_source) == (
        150,
        250,
        "CapWattsAndNodes",
    )
    assert 150 <= target.cap_watts <= 250
    adjusted = status.condition(inv.CAP_RANGE_ADJUSTED)
    assert (
        adjusted is not None and adjusted.status == ConditionStatus.TRUE and "a100-node" in adjusted.message
    )
    known = status.condition(inv.NODE_LIMITS_KNOWN)
    assert known is not None and known.status == ConditionStatus.TRUE


def test_the_status_of_a_target_without_capwatts_says_the_nodes() -> None:
    target = _reconciled(None, H100).target("decode")
    assert (target.cap_range_min_watts, target.cap_range_max_watts, target.cap_range_source) == (
        200,
        700,
        "Nodes",
    )


def test_an_empty_range_keeps_the_last_grants_and_is_not_ready_naming_the_target() -> None:

    result = effective_range(_target((300, 400)), Placement(bound_nodes=frozenset({"a100-node"})), NODES)
    message = inv.empty_range_message([result])
    assert message is not None
    old = BudgetStatus(
        targets=[
            TargetStatus(
                name="decode",
                desired_replicas=1,
                planned_replicas=1,
                cap_watts=250,
                projected_watts=250,
                capacity=1,
                served_fraction=1,
            )
        ]
    )
    ref = rc.BudgetRef(name="llm", namespace="ns", created="2026-01-01T00:00:00Z", generation=2)
    outcome = rc.reconcile_plan_failed(
        ref, old, message, "2026-01-01T00:00:00Z", inv.REASON_CAP_RANGE_EMPTY, inv.conditions([result])
    )
    ready = outcome.status.condition("Ready")
    assert ready is not None and ready.status == ConditionStatus.FALSE
    assert ready.reason == inv.REASON_CAP_RANGE_EMPTY and "target decode" in ready.message
    assert outcome.status.targets == old.targets  # the last grants stay
    assert [type(w).__name__ for w in outcome.writes] == ["WriteStatus"]


def test_a_node_with_mixed_gpus_is_planned_within_what_every_one_of_them_accepts() -> None:
    gpus = [
        Gpu("GPU-0", 0, "h100-sxm", GPU_MODELS["h100-sxm"].constraints),
        Gpu("GPU-1", 1, "a100-pcie", GPU_MODELS["a100-pcie"].constraints),
    ]
    published = {k: v for k, v in node_inventory(gpus).labels.items() if v is not None}
    node = node_info("mixed", {"nvidia.com/gpu.present": "true", **published})
    result = effective_range(_target(), Placement(bound_nodes=frozenset({"mixed"})), {"mixed": node})
    assert (result.min_watts, result.max_watts) == (200, 250)
