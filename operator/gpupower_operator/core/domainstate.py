"""The power domains as the operator decides them, pure: domains, nodes and budgets in; shares out.

The shell (:mod:`gpupower_operator.shell.domains`) gathers what the API says —
the domains, every Node with what its agent reports its GPUs hold
(``gpupower.dev/gpu-power-held``), the namespaces' labels, and each budget of a
domain with the planner problem its last reconcile offered — and :func:`decide`
turns it into each budget's share and each domain's report. The rules:

- **Trees.** Domains whose spec does not validate, or whose chain is broken (a
  missing parent, a cycle, a duplicate name), are left out and say why; their
  budgets keep the last good share (nothing is lost). A tree with a GPU node
  that reports nothing the operator can count (no report, no inventory) is
  *frozen* the same way until it does.
- **Nodes.** A node is in every domain that selects it and every domain above
  those (:func:`gpupower_api.domains.place_node`). One selected by two chains is
  an overlap: named on both, and counted in both (never less).
- **Counting.** Every GPU counts at the limit it holds, as its agent reports:
  idle and unmanaged GPUs are committed outside budgets; a budget's GPUs are
  the budget's when it draws from the domain asking, and committed as "other
  domains'" when it does not (a row's budget on a rack's node is outside the
  rack, not the row). A node whose agent has not reported yet counts each GPU
  at its maximum (from the inventory annotation). Counts are per domain over
  its whole subtree (``allocate(..., subtree_counts=True)``).
- **Budgets.** A budget draws from its domain when the domain exists, is
  valid, and every domain up its chain admits its namespace; otherwise it is
  held to its floor (fail closed) and a condition says why. The allocation
  (:func:`gpupower_operator.core.allocation.allocate`) gives each budget what its
  plan needs; the grant (:mod:`gpupower_operator.core.handover`) is what it may plan
  within now, so that the GPUs never hold more than a limit on the way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gpupower_api import domains as api
from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_HELD_ANNOTATION,
    GPU_PRESENT_LABEL,
    InvalidHeldReportError,
    NodeHeld,
    parse_held_report,
)
from gpupower_api.domains import DomainSpec, NodePlace, place_node
from gpupower_api.models import ConditionStatus
from gpupower_operator.core import allocation as alloc
from gpupower_operator.core import conditions as cond
from gpupower_operator.core import handover
from gpupower_operator.core.conditions import ConditionUpdate
from gpupower_operator.core.planner import Problem, budget_milliwatts, floor_watts

MAX_NAMED = 5

# Budget condition DomainAdmitted
DOMAIN_ADMITTED = cond.DOMAIN_ADMITTED
REASON_ADMITTED = "Admitted"
REASON_DOMAIN_NOT_FOUND = "DomainNotFound"
REASON_DOMAIN_INVALID = "DomainInvalid"
REASON_NAMESPACE_NOT_ADMITTED = "NamespaceNotAdmitted"
REASON_DOMAIN_FROZEN = "AllocationFrozen"
# Domain Ready
REASON_ALLOCATED = "Allocated"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_NODES_UNREPORTED = "NodesUnreported"
REASON_OVERLAP = "Overlap"
REASON_NO_NODES = "NoNodes"
# Domain Infeasible / Overcommitted / Overlap
REASON_FLOORS_EXCEED_LIMIT = "FloorsExceedLimit"
REASON_FEASIBLE = "Feasible"
REASON_HELD_OVER_LIMIT = "HeldOverLimit"
REASON_WITHIN_LIMIT = "WithinLimit"
REASON_NODES_IN_TWO_CHAINS = "NodesInTwoChains"
REASON_NO_OVERLAP = "NoOverlap"


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    more = len(names) - MAX_NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def watts(milliwatts: int) -> float:
    """Milliwatts as watts to one decimal, as statuses and messages give them."""
    return round(milliwatts / 1000, 1)


# ---------------------------------------------------------------------------
# What the shell gathers


@dataclass(frozen=True)
class NodeFacts:
    """A Node as the domains need it: its labels, its agent's report, and its GPUs' maxima."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    held: NodeHeld | None = None  # what its agent reports its GPUs hold; None: no usable report
    report_error: str | None = None  # a report that does not parse
    gpu_max_watts: tuple[int, ...] = ()  # each GPU's highest limit, from the inventory annotation

    @property
    def gpu_node(self) -> bool:
        return (
            bool(self.gpu_max_watts) or self.held is not None or self.labels.get(GPU_PRESENT_LABEL) == "true"
        )

    @property
    def gpus(self) -> int:
        return self.held.gpus if self.held is not None else len(self.gpu_max_watts)

    @property
    def countable(self) -> bool:
        """Whether what its GPUs may hold is known: reported, or at most their maxima, or no GPUs."""
        return self.held is not None or bool(self.gpu_max_watts) or not self.gpu_node


def node_facts(name: str, metadata: Mapping[str, object]) -> NodeFacts:
    """The facts of a Node from its raw metadata (labels and annotations)."""
    labels_raw = metadata.get("labels")
    annotations_raw = metadata.get("annotations")
    labels = {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, Mapping) else {}
    annotations = annotations_raw if isinstance(annotations_raw, Mapping) else {}
    held: NodeHeld | None = None
    error: str | None = None
    if GPU_POWER_HELD_ANNOTATION in annotations:
        try:
            held = parse_held_report(annotations[GPU_POWER_HELD_ANNOTATION])
        except InvalidHeldReportError as invalid:
            error = str(invalid)
    maxima: list[int] = []
    try:
        detail = json.loads(str(annotations.get(GPU_POWER_ANNOTATION, "[]")))
        for gpu in detail if isinstance(detail, list) else []:
            watts = gpu.get("maxWatts") if isinstance(gpu, dict) else None
            if isinstance(watts, int) and not isinstance(watts, bool) and watts > 0:
                maxima.append(watts)
    except ValueError:
        maxima = []
    return NodeFacts(name, labels, held, error, tuple(maxima))


@dataclass(frozen=True)
class DomainFacts:
    """A GpuPowerDomain as read: its spec when it validates, else the error naming the field."""

    name: str
    generation: int = 0
    spec: DomainSpec | None = None
    error: str | None = None


@dataclass(frozen=True)
class BudgetFacts:
    """A budget that joins a domain, with the problem its last reconcile offered (None: not yet)."""

    namespace: str
    name: str
    domain: str
    priority: int = 0
    limit_watts: float | None = None  # its own spec.totalWatts
    problem: Problem | None = None
    # The most its GPUs may hold beyond what they report: grants it was given and may still be using.
    granted_milliwatts: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# ---------------------------------------------------------------------------
# What comes out


@dataclass(frozen=True)
class BudgetShare:
    """A budget's share: whether it draws from its domain, its allocation, and the grant to plan within."""

    key: str
    domain: str
    priority: int
    admitted: ConditionUpdate  # DomainAdmitted
    grant_milliwatts: int | None  # None: the tree is frozen, keep the last share
    allocation: alloc.BudgetAllocation | None = None
    handover: handover.Grant | None = None
    nodes: frozenset[str] | None = None  # the domain's nodes (its subtree); None when not admitted
    message: str = ""

    @property
    def grant_watts(self) -> float | None:
        return None if self.grant_milliwatts is None else self.grant_milliwatts / 1000


@dataclass(frozen=True)
class DomainReport:
    """A domain's status figures and conditions (before transition times)."""

    name: str
    generation: int
    conditions: tuple[ConditionUpdate, ...]
    frozen: bool  # nothing was allocated: the last allocation stays in force
    nodes: int = 0
    gpus: int = 0
    held_milliwatts: int = 0
    idle_milliwatts: int = 0
    unmanaged_milliwatts: int = 0
    other_milliwatts: int = 0
    allocation: alloc.DomainAllocation | None = None
    budgets: tuple[alloc.BudgetAllocation, ...] = ()  # those that join it directly

    @property
    def committed_milliwatts(self) -> int:
        return self.idle_milliwatts + self.unmanaged_milliwatts + self.other_milliwatts


@dataclass(frozen=True)
class Decision:
    domains: Mapping[str, DomainReport]
    budgets: Mapping[str, BudgetShare]
    node_places: Mapping[str, NodePlace]


# ---------------------------------------------------------------------------
# The decision


def _chain(specs: Mapping[str, DomainSpec], name: str) -> tuple[str, ...]:
    chain = [name]
    while (parent := specs[chain[-1]].parent) is not None:
        chain.append(parent)
    return tuple(chain)


def decide(
    domains: Sequence[DomainFacts],
    nodes: Sequence[NodeFacts],
    budgets: Sequence[BudgetFacts],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> Decision:
    """Each budget's share and each domain's report (see the module docstring)."""
    valid = {d.name: d.spec for d in domains if d.spec is not None}
    problems = {
        p.domain: p
        for p in alloc.tree_problems(
            [alloc.DomainInput(name, spec.total_watts, spec.parent) for name, spec in valid.items()]
        )
    }
    good = {name: spec for name, spec in valid.items() if name not in problems}
    chains = {name: _chain(good, name) for name in good}
    places = {node.name: place_node(good, node.labels) for node in nodes}
    members: dict[str, list[NodeFacts]] = {name: [] for name in good}
    overlaps: dict[str, list[str]] = {name: [] for name in good}
    for node in nodes:
        place = places[node.name]
        for name in place.domains:
            members[name].append(node)
        if place.overlapping:
            for name in place.selected_by:
                overlaps[name].append(node.name)

    # Trees frozen by a GPU node nothing can be counted for.
    unreported = {name: [n.name for n in members[name] if not n.countable] for name in good}
    frozen_roots = {chains[name][-1] for name, names in unreported.items() if names}
    frozen = {name for name in good if chains[name][-1] in frozen_roots}

    # Which budgets draw from their domain.
    shares: dict[str, BudgetShare] = {}
    drawing: dict[str, BudgetFacts] = {}
    for budget in budgets:
        admitted = _admission(budget, domains, valid, problems, good, chains, namespace_labels)
        if admitted.reason == REASON_DOMAIN_INVALID:
            # Its domain exists but cannot be allocated: nothing is lost, the last share stays.
            shares[budget.key] = BudgetShare(
                budget.key, budget.domain, budget.priority, admitted, None, message=admitted.message
            )
        elif admitted.status != ConditionStatus.TRUE:
            floor = None if budget.problem is None else budget_milliwatts(floor_watts(budget.problem))
            shares[budget.key] = BudgetShare(
                budget.key, budget.domain, budget.priority, admitted, floor, message=admitted.message
            )
        elif budget.domain in frozen:
            shares[budget.key] = BudgetShare(
                budget.key,
                budget.domain,
                budget.priority,
                cond.true(
                    DOMAIN_ADMITTED,
                    REASON_DOMAIN_FROZEN,
                    f"domain {budget.domain} draws from a tree with GPU nodes not reported yet "
                    f"({_named(sorted(set(unreported[chains[budget.domain][-1]])))}): "
                    "the last allocation stays in force",
                ),
                None,
                nodes=frozenset(n.name for n in members[budget.domain]),
            )
        elif budget.problem is not None:
            drawing[budget.key] = budget

    def drawn_from(key: str, domain: str) -> bool:
        budget = drawing.get(key)
        return budget is not None and domain in chains[budget.domain]

    counted: dict[str, tuple[int, int, int, int]] = {}  # idle, unmanaged, other, held (milliwatts)
    for name in good:
        idle = unmanaged = other = held = 0
        for node in members[name]:
            if node.held is None:
                maxima = sum(node.gpu_max_watts) * 1000
                unmanaged += maxima
                held += maxima
                continue
            idle += node.held.idle.watts * 1000
            unmanaged += node.held.unmanaged.watts * 1000
            for key, group in node.held.budgets.items():
                if not drawn_from(key, name):
                    other += group.watts * 1000
            held += node.held.watts * 1000
        counted[name] = (idle, unmanaged, other, held)

    live = [name for name in good if name not in frozen]
    domain_inputs = [
        alloc.DomainInput(
            name,
            good[name].total_watts,
            good[name].parent,
            idle_watts=counted[name][0] / 1000,
            unmanaged_watts=counted[name][1] / 1000,
            other_domains_watts=counted[name][2] / 1000,
        )
        for name in live
    ]
    budget_inputs = [
        alloc.BudgetInput(b.namespace, b.name, b.domain, b.problem, b.priority, b.limit_watts)
        for b in drawing.values()
        if b.problem is not None
    ]
    allocated = alloc.allocate(domain_inputs, budget_inputs, subtree_counts=True)
    held_by_budget: dict[str, int] = {}
    for node in nodes:
        for key, group in (node.held.budgets if node.held is not None else {}).items():
            held_by_budget[key] = held_by_budget.get(key, 0) + group.watts * 1000
    rooms = [
        handover.DomainRoom(name, budget_milliwatts(good[name].total_watts), sum(counted[name][:3]))
        for name in live
    ]
    holds = [
        handover.BudgetHold(
            share.key,
            chains[share.domain],
            share.milliwatts,
            max(held_by_budget.get(share.key, 0), drawing[share.key].granted_milliwatts),
            share.priority,
        )
        for share in allocated.budgets
    ]
    granted = handover.grants(rooms, holds)
    for share in allocated.budgets:
        grant = granted[share.key]
        message = share.reason
        if grant.waiting:
            message = (
                f"{message}; planning within {watts(grant.milliwatts):,g} W until the GPUs of other "
                f"budgets under domain {grant.bound_by} hold less (their lowered caps confirmed)"
            )
        shares[share.key] = BudgetShare(
            share.key,
            share.domain,
            share.priority,
            cond.true(DOMAIN_ADMITTED, REASON_ADMITTED, f"draws from domain {share.domain}"),
            grant.milliwatts,
            allocation=share,
            handover=grant,
            nodes=frozenset(n.name for n in members[share.domain]),
            message=message,
        )

    reports: dict[str, DomainReport] = {}
    for facts in domains:
        reports[facts.name] = _report(
            facts,
            problems,
            good,
            members,
            overlaps,
            unreported,
            frozen,
            counted,
            allocated,
            chains,
        )
    return Decision(reports, shares, places)


def _admission(
    budget: BudgetFacts,
    domains: Sequence[DomainFacts],
    valid: Mapping[str, DomainSpec],
    problems: Mapping[str, alloc.TreeProblem],
    good: Mapping[str, DomainSpec],
    chains: Mapping[str, tuple[str, ...]],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> ConditionUpdate:
    name = budget.domain
    if name not in {d.name for d in domains}:
        return cond.false(
            DOMAIN_ADMITTED,
            REASON_DOMAIN_NOT_FOUND,
            f"spec.domainRef.name: domain {name} does not exist; the budget holds its floor",
        )
    if name not in valid or name in problems:
        why = problems[name].message if name in problems else "its spec does not validate"
        return cond.false(
            DOMAIN_ADMITTED,
            REASON_DOMAIN_INVALID,
            f"spec.domainRef.name: domain {name} cannot be allocated ({why}); the last allocation stays "
            "in force",
        )
    labels = namespace_labels.get(budget.namespace)
    for domain in chains[name]:
        if good[domain].namespace_selector is None:
            continue
        if labels is None:
            return cond.false(
                DOMAIN_ADMITTED,
                REASON_NAMESPACE_NOT_ADMITTED,
                f"domain {domain} admits namespaces by label and the labels of namespace "
                f"{budget.namespace} are not known (is the operator allowed to list namespaces?); "
                "the budget holds its floor",
            )
        if not good[domain].admits(dict(labels)):
            return cond.false(
                DOMAIN_ADMITTED,
                REASON_NAMESPACE_NOT_ADMITTED,
                f"domain {domain}'s namespaceSelector does not admit namespace {budget.namespace}; "
                "the budget holds its floor",
            )
    return cond.true(DOMAIN_ADMITTED, REASON_ADMITTED, f"draws from domain {name}")


def _report(
    facts: DomainFacts,
    problems: Mapping[str, alloc.TreeProblem],
    good: Mapping[str, DomainSpec],
    members: Mapping[str, list[NodeFacts]],
    overlaps: Mapping[str, list[str]],
    unreported: Mapping[str, list[str]],
    frozen: set[str],
    counted: Mapping[str, tuple[int, int, int, int]],
    allocated: alloc.Allocation,
    chains: Mapping[str, tuple[str, ...]],
) -> DomainReport:
    name = facts.name
    if facts.spec is None or name not in good:
        reason, why = (
            (problems[name].reason, problems[name].message)
            if name in problems
            else (REASON_INVALID_SPEC, facts.error or "the spec does not validate")
        )
        return DomainReport(
            name,
            facts.generation,
            (cond.false(cond.READY, reason, f"not allocated: {why}; the last allocation stays in force"),),
            frozen=True,
        )
    nodes = members[name]
    idle, unmanaged, other, held = counted[name]
    limit = budget_milliwatts(good[name].total_watts)
    updates: list[ConditionUpdate] = []
    overlapping = sorted(overlaps[name])
    if overlapping:
        updates.append(
            cond.true(
                api.OVERLAP,
                REASON_NODES_IN_TWO_CHAINS,
                f"node(s) {_named(overlapping)} are selected by domains on different chains too; "
                "they count in each",
            )
        )
    else:
        updates.append(cond.false(api.OVERLAP, REASON_NO_OVERLAP, "every node is on one chain"))
    if held > limit:
        updates.append(
            cond.true(
                api.OVERCOMMITTED,
                REASON_HELD_OVER_LIMIT,
                f"the GPUs on its nodes hold {watts(held):,g} W, over the limit of {watts(limit):,g} W",
            )
        )
    else:
        updates.append(
            cond.false(
                api.OVERCOMMITTED,
                REASON_WITHIN_LIMIT,
                f"the GPUs on its nodes hold {watts(held):,g} W of {watts(limit):,g} W",
            )
        )
    base = DomainReport(
        name,
        facts.generation,
        (),
        frozen=True,
        nodes=len(nodes),
        gpus=sum(n.gpus for n in nodes),
        held_milliwatts=held,
        idle_milliwatts=idle,
        unmanaged_milliwatts=unmanaged,
        other_milliwatts=other,
    )
    if name in frozen:
        named = sorted(set(unreported[chains[name][-1]]))  # a root's nodes are its whole tree's
        updates.insert(
            0,
            cond.false(
                cond.READY,
                REASON_NODES_UNREPORTED,
                f"GPU node(s) {_named(named)} in its tree report nothing the operator can count (no agent "
                "report, no inventory); the last allocation stays in force",
            ),
        )
        return replace(base, conditions=tuple(updates))
    result = allocated.domain(name)
    updates.append(
        cond.false(cond.INFEASIBLE, REASON_FEASIBLE, "the floors of its budgets fit")
        if result.feasible
        else cond.true(cond.INFEASIBLE, REASON_FLOORS_EXCEED_LIMIT, result.reason)
    )
    if not nodes:
        ready = cond.false(cond.READY, REASON_NO_NODES, "its nodeSelector selects no node yet")
    elif overlapping:
        ready = cond.false(cond.READY, REASON_OVERLAP, updates[0].message)
    elif not result.feasible:
        ready = cond.false(cond.READY, REASON_FLOORS_EXCEED_LIMIT, result.reason)
    else:
        ready = cond.true(cond.READY, REASON_ALLOCATED, result.reason)
    updates.insert(0, ready)
    direct = tuple(b for b in allocated.budgets if b.domain == name)
    return replace(base, conditions=tuple(updates), frozen=False, allocation=result, budgets=direct)


__all__ = [
    "DOMAIN_ADMITTED",
    "BudgetFacts",
    "BudgetShare",
    "Decision",
    "DomainFacts",
    "DomainReport",
    "NodeFacts",
    "decide",
    "node_facts",
]
