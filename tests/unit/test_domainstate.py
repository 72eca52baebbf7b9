"""The operator's decision for the power domains: what is counted where, who draws, what each may plan."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_HELD_ANNOTATION,
    GPU_PRESENT_LABEL,
    HeldGroup,
    NodeHeld,
    format_held_report,
)
from gpupower_api.domains import parse_domain_spec
from gpupower_operator.core import domainstate as ds
from gpupower_operator.core.allocation import Limit
from gpupower_operator.core.planner import Problem, ProfilePoint, TargetProblem, optimize

H100 = tuple(
    ProfilePoint(w, t)
    for w, t in ((200, 9.0), (300, 14.0), (400, 17.2), (500, 19.0), (600, 19.8), (700, 20.0))
)
RACK = "topology.gpupower.dev/rack"
ROW = "topology.gpupower.dev/row"


def model(demand: float, max_replicas: int = 8, min_replicas: int = 1) -> Problem:
    role = TargetProblem(
        name="serve",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cap_min_watts=200,
        cap_max_watts=700,
        profile=H100,
        demand=demand,
    )
    return Problem(total_watts=1.0, targets=(role,))


def domain(name: str, watts: int, selector: dict[str, str], **fields: Any) -> ds.DomainFacts:
    spec = parse_domain_spec({"totalWatts": watts, "nodeSelector": {"matchLabels": selector}, **fields})
    return ds.DomainFacts(name, 1, spec)


def node(name: str, labels: dict[str, str], held: NodeHeld | None = None, gpus: int = 8) -> ds.NodeFacts:
    annotations = {
        GPU_POWER_ANNOTATION: json.dumps([{"index": i, "maxWatts": 700} for i in range(gpus)]),
    }
    if held is not None:
        annotations[GPU_POWER_HELD_ANNOTATION] = format_held_report(held)
    return ds.node_facts(name, {"labels": {GPU_PRESENT_LABEL: "true", **labels}, "annotations": annotations})


def idle(gpus: int, watts_each: int = 100, **budgets: tuple[int, int]) -> NodeHeld:
    """A node's report: ``gpus`` idle GPUs parked at ``watts_each``; budgets as key=(gpus, watts)."""
    return NodeHeld(
        idle=HeldGroup(gpus, gpus * watts_each),
        budgets={key.replace("__", "/"): HeldGroup(*g) for key, g in budgets.items()},
    )


def budget(name: str, home: str, problem: Problem, priority: int = 0, **fields: Any) -> ds.BudgetFacts:
    return ds.BudgetFacts("inference", name, home, priority, problem=problem, **fields)


def test_a_domain_with_one_budget_plans_it_within_the_limit_less_its_idle_gpus() -> None:
    rack = domain("rack-a", 3000, {RACK: "a"})
    nodes = [node("n1", {RACK: "a"}, idle(8))]
    chat = budget("chat", "rack-a", model(demand=200))
    decision = ds.decide([rack], nodes, [chat], {})
    share = decision.budgets["inference/chat"]
    # 8 idle GPUs parked at 100 W each come off first; the budget gets what its plan within 2,200 W uses.
    alone = optimize(Problem(total_watts=2200, targets=model(demand=200).targets))
    assert share.allocation is not None and share.allocation.watts == alone.watts
    assert share.grant_milliwatts == share.allocation.milliwatts, "nothing held elsewhere: granted at once"
    assert share.admitted.reason == ds.REASON_ADMITTED and share.nodes == frozenset({"n1"})
    report = decision.domains["rack-a"]
    assert (report.nodes, report.gpus, report.idle_milliwatts, report.held_milliwatts) == (
        1,
        8,
        800_000,
        800_000,
    )
    assert {c.type: c.reason for c in report.conditions} == {
        "Ready": ds.REASON_ALLOCATED,
        "Overlap": ds.REASON_NO_OVERLAP,
        "Overcommitted": ds.REASON_WITHIN_LIMIT,
        "Infeasible": ds.REASON_FEASIBLE,
    }


def test_a_row_budget_on_a_racks_node_is_outside_the_rack_but_not_the_row() -> None:
    row = domain("row", 6000, {ROW: "r"})
    rack_a = domain("rack-a", 4000, {RACK: "a"}, parent="row")
    rack_b = domain("rack-b", 4000, {RACK: "b"}, parent="row")
    held = NodeHeld(budgets={"inference/wide": HeldGroup(2, 800)})
    nodes = [
        node("a1", {RACK: "a", ROW: "r"}, held, gpus=2),
        node("b1", {RACK: "b", ROW: "r"}, NodeHeld(), gpus=0),
    ]
    wide = budget("wide", "row", model(demand=100, max_replicas=2))
    decision = ds.decide([row, rack_a, rack_b], nodes, [wide], {})
    assert decision.domains["rack-a"].other_milliwatts == 800_000, "rack-a does not allocate it: committed"
    assert decision.domains["row"].other_milliwatts == 0, "the row allocates it: not counted twice"
    assert decision.budgets["inference/wide"].nodes == frozenset({"a1", "b1"})


def test_priorities_and_what_the_gpus_hold_decide_the_shares_and_the_grants() -> None:
    rack = domain("rack-a", 4000, {RACK: "a"})
    # The batch job holds 3,000 W on the hardware now; the chat model's demand just rose.
    held = NodeHeld(budgets={"inference/batch": HeldGroup(6, 3000), "inference/chat": HeldGroup(2, 600)})
    nodes = [node("n1", {RACK: "a"}, held)]
    chat = budget("chat", "rack-a", model(demand=60), priority=100)
    batch = budget("batch", "rack-a", model(demand=200), priority=0)
    decision = ds.decide([rack], nodes, [chat, batch], {})
    chat_share, batch_share = decision.budgets["inference/chat"], decision.budgets["inference/batch"]
    assert chat_share.allocation is not None and batch_share.allocation is not None
    assert chat_share.allocation.limited_by == Limit.DEMAND_SERVED
    assert batch_share.allocation.limited_by == Limit.HIGHER_PRIORITY
    # The giver plans within its (lower) allocation at once; the receiver only into what is free now.
    assert batch_share.grant_milliwatts == batch_share.allocation.milliwatts < 3_000_000
    assert chat_share.grant_milliwatts == 4_000_000 - 3_000_000
    assert chat_share.handover is not None and chat_share.handover.waiting
    assert "until the GPUs of other budgets under domain rack-a hold less" in chat_share.message
    # Once the batch job's GPUs report their lower limits, the chat model gets all of its allocation.
    lowered = NodeHeld(
        budgets={"inference/batch": HeldGroup(6, batch_share.allocation.milliwatts // 1000 + 1)}
    )
    after = ds.decide([rack], [node("n1", {RACK: "a"}, lowered)], [chat, batch], {})
    assert after.budgets["inference/chat"].grant_milliwatts == chat_share.allocation.milliwatts


def test_a_grant_the_budget_may_still_be_acting_on_counts_until_it_is_over() -> None:
    rack = domain("rack-a", 4000, {RACK: "a"})
    nodes = [node("n1", {RACK: "a"}, NodeHeld(), gpus=0)]
    chat = budget("chat", "rack-a", model(demand=60), priority=100)
    # The batch job was granted 3,000 W and its caps may still be on their way to the GPUs.
    batch = budget("batch", "rack-a", model(demand=200), granted_milliwatts=3_000_000)
    chat_share = ds.decide([rack], nodes, [chat, batch], {}).budgets["inference/chat"]
    assert chat_share.grant_milliwatts == 1_000_000


def test_budgets_the_domain_does_not_take_hold_their_floor_and_say_why() -> None:
    rack = domain("rack-a", 4000, {RACK: "a"}, namespaceSelector={"matchLabels": {"team": "llm"}})
    nodes = [node("n1", {RACK: "a"}, idle(8))]
    cases = {
        "nowhere": (budget("nowhere", "rack-gone", model(demand=60)), {"inference": {"team": "llm"}}),
        "refused": (budget("refused", "rack-a", model(demand=60)), {"inference": {"team": "web"}}),
        "unknown": (budget("unknown", "rack-a", model(demand=60)), {}),
    }
    for name, (facts, namespaces) in cases.items():
        share = ds.decide([rack], nodes, [facts], namespaces).budgets[f"inference/{name}"]
        assert share.admitted.status.value == "False", name
        assert share.grant_milliwatts == 200_000, "its floor: one replica at 200 W"
        assert share.allocation is None
    assert ds.decide([rack], nodes, [cases["nowhere"][0]], {}).budgets[
        "inference/nowhere"
    ].admitted.reason == (ds.REASON_DOMAIN_NOT_FOUND)
    refused = ds.decide([rack], nodes, [cases["refused"][0]], cases["refused"][1]).budgets[
        "inference/refused"
    ]
    assert refused.admitted.reason == ds.REASON_NAMESPACE_NOT_ADMITTED
    assert "namespaceSelector does not admit namespace inference" in refused.admitted.message
    unknown = ds.decide([rack], nodes, [cases["unknown"][0]], {}).budgets["inference/unknown"]
    assert "are not known" in unknown.admitted.message


def test_a_broken_tree_keeps_the_last_allocation_and_names_the_reason() -> None:
    rack = domain("rack-a", 4000, {RACK: "a"}, parent="row-typo")
    cycle_x = domain("x", 4000, {"x": "1"}, parent="y")
    cycle_y = domain("y", 4000, {"y": "1"}, parent="x")
    chat = budget("chat", "rack-a", model(demand=60))
    decision = ds.decide([rack, cycle_x, cycle_y], [node("n1", {RACK: "a"}, idle(8))], [chat], {})
    share = decision.budgets["inference/chat"]
    assert (
        share.admitted.reason == ds.REASON_DOMAIN_INVALID
        and "row-typo does not exist" in share.admitted.message
    )
    assert share.grant_milliwatts is None, "the shell keeps the last share"
    for name, reason in (("rack-a", "ParentNotFound"), ("x", "ParentCycle"), ("y", "ParentCycle")):
        report = decision.domains[name]
        assert report.frozen and report.conditions[0].reason == reason
        assert "the last allocation stays in force" in report.conditions[0].message


def test_a_gpu_node_nothing_can_be_counted_for_freezes_its_tree() -> None:
    rack = domain("rack-a", 4000, {RACK: "a"})
    blind = ds.node_facts("n2", {"labels": {RACK: "a", GPU_PRESENT_LABEL: "true"}})
    chat = budget("chat", "rack-a", model(demand=60))
    decision = ds.decide([rack], [node("n1", {RACK: "a"}, idle(8)), blind], [chat], {})
    assert decision.budgets["inference/chat"].grant_milliwatts is None, "the shell keeps the last share"
    assert decision.domains["rack-a"].conditions[0].reason == ds.REASON_NODES_UNREPORTED
    # With its inventory known (the agent started, no report yet), each GPU counts at its maximum.
    started = node("n2", {RACK: "a"}, None, gpus=2)
    counted = ds.decide([rack], [node("n1", {RACK: "a"}, idle(8)), started], [chat], {})
    assert counted.domains["rack-a"].unmanaged_milliwatts == 2 * 700_000
    assert counted.budgets["inference/chat"].grant_milliwatts is not None


def test_overlapping_racks_count_the_node_in_both_and_say_so() -> None:
    rack_a = domain("rack-a", 4000, {RACK: "a"})
    rack_b = domain("rack-b", 4000, {"zone": "z"})
    decision = ds.decide([rack_a, rack_b], [node("n1", {RACK: "a", "zone": "z"}, idle(8))], [], {})
    for name in ("rack-a", "rack-b"):
        report = decision.domains[name]
        assert report.idle_milliwatts == 800_000
        kinds = {c.type: c for c in report.conditions}
        assert kinds["Overlap"].status.value == "True" and "n1" in kinds["Overlap"].message
        assert kinds["Ready"].reason == ds.REASON_OVERLAP


def test_what_the_gpus_hold_above_the_limit_is_overcommitted() -> None:
    rack = domain("rack-a", 1000, {RACK: "a"})
    held = NodeHeld(idle=HeldGroup(2, 200), unmanaged=HeldGroup(2, 1400))
    report = ds.decide([rack], [node("n1", {RACK: "a"}, held, gpus=4)], [], {}).domains["rack-a"]
    overcommitted = next(c for c in report.conditions if c.type == "Overcommitted")
    assert overcommitted.reason == ds.REASON_HELD_OVER_LIMIT
    assert "hold 1,600 W, over the limit of 1,000 W" in overcommitted.message


def test_an_invalid_report_counts_the_node_at_its_maximum() -> None:
    facts = ds.node_facts(
        "n1",
        {
            "labels": {RACK: "a"},
            "annotations": {
                GPU_POWER_HELD_ANNOTATION: "{not json",
                GPU_POWER_ANNOTATION: json.dumps([{"maxWatts": 700}, {"maxWatts": 700}]),
            },
        },
    )
    assert facts.held is None and facts.report_error is not None and "not JSON" in facts.report_error
    report = ds.decide([domain("rack-a", 4000, {RACK: "a"})], [facts], [], {}).domains["rack-a"]
    assert report.unmanaged_milliwatts == 1_400_000 and report.held_milliwatts == 1_400_000


@st.composite
def rows(draw: st.DrawFn) -> tuple[list[ds.DomainFacts], list[ds.NodeFacts], list[ds.BudgetFacts]]:
    """A row of two racks; idle GPUs and budgets' pods (on their domain's nodes) within every limit now."""
    rack_watts = draw(st.integers(1500, 6000))
    row_watts = draw(st.integers(rack_watts, 2 * rack_watts))
    domains = [
        domain("row", row_watts, {ROW: "r"}),
        domain("rack-a", rack_watts, {RACK: "a"}, parent="row"),
        domain("rack-b", rack_watts, {RACK: "b"}, parent="row"),
    ]
    names = ["chat", "code", "batch"]
    homes = [draw(st.sampled_from(["rack-a", "rack-b", "row"])) for _ in names]
    budgets = [
        budget(
            n,
            h,
            model(demand=draw(st.floats(1, 150)), max_replicas=4),
            priority=draw(st.sampled_from([0, 50, 100])),
        )
        for n, h in zip(names, homes, strict=True)
    ]
    nodes = []
    row_left = row_watts
    for rack in ("a", "b"):
        left = min(rack_watts, row_left)
        held: dict[str, HeldGroup] = {}
        idle_gpus = draw(st.integers(0, min(4, left // 100)))
        left -= idle_gpus * 100
        for n, home in zip(names, homes, strict=True):
            if home not in (f"rack-{rack}", "row"):
                continue  # pinned to its own rack's nodes
            watts = draw(st.integers(0, max(0, left)))
            if watts:
                held[f"inference/{n}"] = HeldGroup(1, watts)
                left -= watts
        report = NodeHeld(idle=HeldGroup(idle_gpus, idle_gpus * 100), budgets=held)
        row_left -= report.watts
        nodes.append(node(f"{rack}1", {RACK: rack, ROW: "r"}, report, gpus=report.gpus))
    return domains, nodes, budgets


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_what_the_gpus_may_hold_under_the_grants_stays_within_every_limit(
    case: tuple[list[ds.DomainFacts], list[ds.NodeFacts], list[ds.BudgetFacts]],
) -> None:
    domains, nodes, budgets = case
    decision = ds.decide(domains, nodes, budgets, {})
    held: dict[str, int] = {}
    for node_facts in nodes:
        assert node_facts.held is not None
        for key, group in node_facts.held.budgets.items():
            held[key] = held.get(key, 0) + group.watts * 1000
    may_hold = {
        key: max(held.get(key, 0), share.grant_milliwatts or 0) for key, share in decision.budgets.items()
    }
    for facts in domains:
        report = decision.domains[facts.name]
        assert facts.spec is not None
        chains = {"row": ("row",), "rack-a": ("rack-a", "row"), "rack-b": ("rack-b", "row")}
        under = [
            key
            for key, share in decision.budgets.items()
            if share.allocation is not None and facts.name in chains[share.domain]
        ]
        total = report.committed_milliwatts + sum(may_hold[key] for key in under)
        assert total <= facts.spec.total_watts * 1000, facts.name
        for key in under:
            allocation = decision.budgets[key].allocation
            grant = decision.budgets[key].grant_milliwatts
            assert allocation is not None and grant is not None and grant <= allocation.milliwatts
