"""Each target's effective cap range: ``capWatts`` intersected with what its nodes' GPUs accept.

Pure: nodes (as their labels) and where each target's pods are in; ranges and
conditions out. The policy:

- The nodes that count for a target are the nodes its pods are bound to. Before
  any pod is bound, they are the GPU nodes (``nvidia.com/gpu.present=true``) the
  pods can be scheduled on: those matching a pending pod's ``nodeSelector``, or
  every GPU node when no pod exists yet.
- A node's range comes from the labels its agent publishes
  (``gpupower.dev/gpu-power-{min,max}-watts``). Among the nodes that count, the
  range every one of them accepts is the largest minimum to the smallest maximum.
- The effective range is ``capWatts`` ∩ that node range; without ``capWatts`` it
  is the node range alone. Nodes without labels yet (no agent there, or not
  started) or with labels that do not parse are named in a condition and left
  out; when no node publishes a usable range the spec's range is used as before
  (``capWatts``, else the profile's span).
- An empty intersection is not planned at all: the caller keeps the last grants
  and reports ``Ready=False`` naming the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gpupower_api.contract import (
    GPU_POWER_MAX_LABEL,
    GPU_POWER_MIN_LABEL,
    GPU_PRESENT_LABEL,
    InvalidNodeLabelError,
    parse_watts_label,
)
from gpupower_api.models import Target
from gpupower_operator.core import conditions as cond

MAX_NAMED_NODES = 5

CAP_RANGE_ADJUSTED = "CapRangeAdjusted"
NODE_LIMITS_KNOWN = "NodeLimitsKnown"
# CapRangeAdjusted
REASON_NARROWED_BY_NODES = "NarrowedByNodes"
REASON_WITHIN_NODE_LIMITS = "WithinNodeLimits"
REASON_CAP_RANGE_EMPTY = "CapRangeEmpty"
# NodeLimitsKnown
REASON_NODES_PUBLISHED = "NodesPublished"
REASON_NODE_LABELS_MISSING = "NodeLabelsMissing"
REASON_NODE_LABELS_INVALID = "NodeLabelsInvalid"
REASON_NO_GPU_NODES = "NoGpuNodes"


class RangeSource(StrEnum):
    """Where a target's effective cap range came from (``status.targets[].capRangeSource``)."""

    CAP_WATTS = "CapWatts"  # spec.capWatts; no node published a range
    PROFILE = "Profile"  # the profile's span; neither capWatts nor a node range
    NODES = "Nodes"  # the nodes alone (capWatts omitted)
    CAP_WATTS_AND_NODES = "CapWattsAndNodes"  # capWatts intersected with the nodes' range


@dataclass(frozen=True)
class NodeInfo:
    """A Node as the planner needs it: its labels, and the GPU power range they publish."""

    name: str
    labels: Mapping[str, str]
    min_watts: int | None = None
    max_watts: int | None = None
    error: str | None = None  # labels present but unusable

    @property
    def gpu_node(self) -> bool:
        return self.labels.get(GPU_PRESENT_LABEL) == "true"

    @property
    def published(self) -> bool:
        return self.min_watts is not None and self.max_watts is not None


def node_info(name: str, labels: Mapping[str, str] | None) -> NodeInfo:
    """Read a Node's inventory labels strictly; bad values become ``error``, never an exception."""
    labels = dict(labels or {})
    present = [key for key in (GPU_POWER_MIN_LABEL, GPU_POWER_MAX_LABEL) if key in labels]
    if not present:
        return NodeInfo(name, labels)
    try:
        min_watts = parse_watts_label(GPU_POWER_MIN_LABEL, labels.get(GPU_POWER_MIN_LABEL))
        max_watts = parse_watts_label(GPU_POWER_MAX_LABEL, labels.get(GPU_POWER_MAX_LABEL))
    except InvalidNodeLabelError as error:
        return NodeInfo(name, labels, error=str(error))
    return NodeInfo(name, labels, min_watts, max_watts)


@dataclass(frozen=True)
class Placement:
    """Where a target's pods are: the nodes of bound pods, the nodeSelectors of pending ones."""

    bound_nodes: frozenset[str] = frozenset()
    pending_selectors: tuple[Mapping[str, str], ...] = ()
    pods: int = 0


@dataclass(frozen=True)
class EffectiveRange:
    """One target's cap range for the planner, where it came from, and what the nodes said."""

    target: str
    min_watts: int
    max_watts: int
    source: RangeSource
    spec_min_watts: int
    spec_max_watts: int
    from_cap_watts: bool
    nodes: tuple[str, ...] = ()  # nodes whose published range was used
    node_min_watts: int | None = None
    node_max_watts: int | None = None
    unlabelled: tuple[str, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()
    candidates: bool = False  # nodes chosen from where pods could run, not where they run
    considered: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.min_watts > self.max_watts

    @property
    def narrowed(self) -> bool:
        """capWatts asked for caps the nodes cannot apply."""
        return self.from_cap_watts and (self.min_watts, self.max_watts) != (
            self.spec_min_watts,
            self.spec_max_watts,
        )


def _nodes_for(placement: Placement, nodes: Mapping[str, NodeInfo]) -> tuple[list[str], bool]:
    if placement.bound_nodes:
        return sorted(placement.bound_nodes), False
    gpu_nodes = [info for info in nodes.values() if info.gpu_node]
    if placement.pending_selectors:
        chosen = [
            info.name
            for info in gpu_nodes
            if any(all(info.labels.get(k) == v for k, v in s.items()) for s in placement.pending_selectors)
        ]
    else:
        chosen = [info.name for info in gpu_nodes]
    return sorted(chosen), True


def effective_range(target: Target, placement: Placement, nodes: Mapping[str, NodeInfo]) -> EffectiveRange:
    """The cap range to plan ``target`` within (see the module docstring)."""
    spec_range = target.cap_range()
    considered, candidates = _nodes_for(placement, nodes)
    used: list[NodeInfo] = []
    unlabelled: list[str] = []
    invalid: list[tuple[str, str]] = []
    for name in considered:
        info = nodes.get(name)
        if info is None or (not info.published and info.error is None):
            unlabelled.append(name)
        elif info.error is not None:
            invalid.append((name, info.error))
        else:
            used.append(info)

    def result(
        low: int, high: int, source: RangeSource, node_min: int | None = None, node_max: int | None = None
    ) -> EffectiveRange:
        return EffectiveRange(
            target=target.name,
            min_watts=low,
            max_watts=high,
            source=source,
            spec_min_watts=spec_range.min,
            spec_max_watts=spec_range.max,
            from_cap_watts=target.cap_watts is not None,
            nodes=tuple(info.name for info in used),
            node_min_watts=node_min,
            node_max_watts=node_max,
            unlabelled=tuple(unlabelled),
            invalid=tuple(invalid),
            candidates=candidates,
            considered=tuple(considered),
        )

    if not used:
        source = RangeSource.CAP_WATTS if target.cap_watts is not None else RangeSource.PROFILE
        return result(spec_range.min, spec_range.max, source)
    node_min = max(info.min_watts or 0 for info in used)
    node_max = min(info.max_watts or 0 for info in used)
    if target.cap_watts is None:
        return result(node_min, node_max, RangeSource.NODES, node_min, node_max)
    low = max(target.cap_watts.min, node_min)
    high = min(target.cap_watts.max, node_max)
    return result(low, high, RangeSource.CAP_WATTS_AND_NODES, node_min, node_max)


def _names(names: Sequence[str]) -> str:
    more = len(names) - MAX_NAMED_NODES
    return ", ".join(names[:MAX_NAMED_NODES]) + (f" and {more} more" if more > 0 else "")


def _where(result: EffectiveRange) -> str:
    kind = "GPU node(s) its pods can run on" if result.candidates else "node(s) its pods run on"
    return f"{kind} {_names(result.nodes)} accept {result.node_min_watts}-{result.node_max_watts} W"


def empty_range_message(results: Iterable[EffectiveRange]) -> str | None:
    """Why no plan can be made, naming each target whose range is empty; None when every range is usable."""
    parts = []
    for result in results:
        if result.empty:
            asked = (
                f"capWatts {result.spec_min_watts}-{result.spec_max_watts} W"
                if result.from_cap_watts
                else "its GPUs"
            )
            parts.append(f"target {result.target}: {asked} and the {_where(result)}: no cap fits both")
    if not parts:
        return None
    return "; ".join(parts) + "; the last plan stays"


def conditions(results: Sequence[EffectiveRange]) -> list[cond.ConditionUpdate]:
    """``CapRangeAdjusted`` (did the nodes narrow a capWatts?) and ``NodeLimitsKnown`` (could they say?)."""
    updates: list[cond.ConditionUpdate] = []
    empty = empty_range_message(results)
    narrowed = [r for r in results if r.narrowed and not r.empty]
    if empty is not None:
        updates.append(cond.true(CAP_RANGE_ADJUSTED, REASON_CAP_RANGE_EMPTY, empty))
    elif narrowed:
        message = "; ".join(
            f"target {r.target}: capWatts {r.spec_min_watts}-{r.spec_max_watts} W planned within "
            f"{r.min_watts}-{r.max_watts} W: the {_where(r)}"
            for r in narrowed
        )
        updates.append(cond.true(CAP_RANGE_ADJUSTED, REASON_NARROWED_BY_NODES, message))
    else:
        updates.append(
            cond.false(
                CAP_RANGE_ADJUSTED,
                REASON_WITHIN_NODE_LIMITS,
                "every target's cap range is one its nodes' GPUs accept (or no node publishes limits)",
            )
        )

    invalid = sorted({pair for r in results for pair in r.invalid})
    unlabelled = sorted({name for r in results for name in r.unlabelled})
    without_nodes = [r.target for r in results if not r.considered]
    if invalid:
        details = "; ".join(f"node {name}: {error}" for name, error in invalid[:MAX_NAMED_NODES])
        more = len(invalid) - MAX_NAMED_NODES
        updates.append(
            cond.false(
                NODE_LIMITS_KNOWN,
                REASON_NODE_LABELS_INVALID,
                f"{details}{f' and {more} more' if more > 0 else ''}; "
                "those nodes are left out of the cap ranges",
            )
        )
    elif unlabelled:
        updates.append(
            cond.false(
                NODE_LIMITS_KNOWN,
                REASON_NODE_LABELS_MISSING,
                f"node(s) {_names(unlabelled)} publish no {GPU_POWER_MIN_LABEL} / {GPU_POWER_MAX_LABEL} yet "
                "(is the gpupower agent running there?); planned without their limits",
            )
        )
    elif without_nodes:
        updates.append(
            cond.false(
                NODE_LIMITS_KNOWN,
                REASON_NO_GPU_NODES,
                f"no GPU node known for target(s) {', '.join(without_nodes)}; "
                "planned within the spec's range",
            )
        )
    else:
        count = len({name for r in results for name in r.nodes})
        updates.append(
            cond.true(
                NODE_LIMITS_KNOWN, REASON_NODES_PUBLISHED, f"{count} node(s) publish their GPU power limits"
            )
        )
    return updates


def cap_ranges(results: Iterable[EffectiveRange]) -> dict[str, tuple[int, int]]:
    """The planner's ``cap_ranges`` argument: every non-empty effective range."""
    return {r.target: (r.min_watts, r.max_watts) for r in results if not r.empty}


def target_status(result: EffectiveRange) -> dict[str, object]:
    """The status fields of one target's effective range (for ``TargetStatus.model_copy``)."""
    return {
        "cap_range_min_watts": result.min_watts,
        "cap_range_max_watts": result.max_watts,
        "cap_range_source": str(result.source),
    }
