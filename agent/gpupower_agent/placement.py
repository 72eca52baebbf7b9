"""Where this node sits among the power domains, from the watched domains and its own Node's labels.

The informers replace a view only when its object changed, so the place is
computed again (``gpupower_api.domains.place_node``) only when a domain or the
Node's labels did. A domain whose spec does not validate is skipped, said once
with the field that fails; a change of place is one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gpupower_agent.cluster import DomainView, NodeView
from gpupower_agent.metrics import AgentMetrics
from gpupower_api.domains import DomainSpec, NodePlace, place_node

log = logging.getLogger(__name__)

OUTSIDE = NodePlace()


class Placement:
    """This node's place among the domains, kept current from the informers' caches."""

    def __init__(self, node_name: str, metrics: AgentMetrics) -> None:
        self._node_name = node_name
        self._metrics = metrics
        self._domains: tuple[DomainView, ...] = ()
        self._node: NodeView | None = None
        self._place = OUTSIDE
        self._computed = False
        self._reported_invalid: set[tuple[str, str | None]] = set()

    def place(self, domains: Mapping[str, DomainView], node: NodeView | None) -> NodePlace:
        """The node's place now (computed again only when a domain or the Node changed)."""
        current = tuple(domains.values())
        if (
            self._computed
            and node is self._node
            and len(current) == len(self._domains)
            and all(a is b for a, b in zip(current, self._domains, strict=True))
        ):
            return self._place
        self._domains, self._node, self._computed = current, node, True
        valid: dict[str, DomainSpec] = {}
        invalid: set[tuple[str, str | None]] = set()
        for view in current:
            if view.spec is not None:
                valid[view.name] = view.spec
                continue
            invalid.add((view.name, view.invalid_reason))
            if (view.name, view.invalid_reason) not in self._reported_invalid:
                log.warning(
                    "event=domain_skipped domain=%s field=%s error=%r",
                    view.name,
                    view.invalid_field,
                    view.invalid_reason,
                )
        self._reported_invalid = invalid
        self._metrics.domains_skipped.set(len(invalid))
        place = place_node(valid, node.labels if node is not None else None)
        if place != self._place:
            self._changed(place)
        self._place = place
        return place

    def _changed(self, place: NodePlace) -> None:
        log.info(
            "event=node_place_changed node=%s domains=%s selected_by=%s idle_gpu_watts=%s "
            "unmanaged_gpu_watts=%s",
            self._node_name,
            ",".join(sorted(place.domains)) or "-",
            ",".join(place.selected_by) or "-",
            "gpu_min" if place.idle_gpu_watts is None else place.idle_gpu_watts,
            "unset" if place.unmanaged_gpu_watts is None else place.unmanaged_gpu_watts,
        )
        if place.overlapping:
            log.warning(
                "event=domain_overlap node=%s selected_by=%s action=lower_settings",
                self._node_name,
                ",".join(place.selected_by),
            )
        self._metrics.set_domains(place.domains)
