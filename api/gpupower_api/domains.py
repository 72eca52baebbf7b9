"""The GpuPowerDomain API (gpupower.dev/v1alpha1): one power limit for every GPU on a set of nodes.

A domain is a rack's PDU, a row's busway, a hall's feed: a limit on what all
the GPUs on its nodes draw together, whoever runs on them. Domains nest through
``spec.parent`` (rack in row in hall) into trees; budgets join one with
``spec.domainRef`` and share it by ``spec.priority``. Like the budget models,
these are the single source of truth: ``crds/gpupowerdomains.yaml`` is generated
from them (``make crds``) and so is the README's reference (``make docs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gpupower_api.models import (
    DNS_SUBDOMAIN,
    ApiModel,
    ApiObject,
    Condition,
    StatusModel,
    cel,
    describe_validation_error,
    parse_object,
)
from gpupower_api.selectors import Selector, selector_from_label_selector

KIND = "GpuPowerDomain"
PLURAL = "gpupowerdomains"
SINGULAR = "gpupowerdomain"
SHORT_NAME = "gpd"

# Condition types of a domain's status.
READY = "Ready"
INFEASIBLE = "Infeasible"  # the floors of its budgets and what is committed outside them exceed the limit
OVERLAP = "Overlap"  # nodes it selects are in another chain of domains too (named in the message)
OVERCOMMITTED = "Overcommitted"  # what its GPUs hold exceeds the limit

# A label key: an optional DNS-subdomain prefix and a name (metav1's rules, lengths in the schema).
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
MAX_SELECTOR_TERMS = 32


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One term of a label selector: a key, an operator and, for In and NotIn, the values."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                    " : (!has(self.values) || size(self.values) == 0)",
                    "values must be set for In and NotIn, and empty for Exists and DoesNotExist",
                    ".values",
                )
            ]
        }
    )

    key: str = Field(min_length=1, max_length=317, pattern=LABEL_KEY, description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(
        default=None, max_length=64, description="The values for In and NotIn; empty for the others."
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Self:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values != bool(self.values):
            raise ValueError("values must be set for In and NotIn, and empty for Exists and DoesNotExist")
        return self


class LabelSelector(ApiModel):
    """A standard Kubernetes label selector: every matchLabels pair and every expression must hold."""

    match_labels: dict[str, str] | None = Field(
        default=None, max_length=MAX_SELECTOR_TERMS, description="Labels that must have these values."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=MAX_SELECTOR_TERMS, description="Further requirements on labels."
    )

    _parsed: Selector = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Parsed once: every node is matched against every domain's selector on each allocation round.
        self._parsed = selector_from_label_selector(
            self.model_dump(by_alias=True, exclude_none=True, mode="json")
        )

    def selector(self) -> Selector:
        """The parsed form the operator and the agent match labels with."""
        return self._parsed

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: dict[str, str] | None) -> bool:
        """Whether labels satisfy the selector; an empty selector matches everything (metav1's rule)."""
        return self.is_empty() or self.selector().matches(labels)


class DomainSpec(ApiModel):
    """Desired state: the limit, the nodes it covers, where it sits in the tree, who may draw from it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.totalWatts > 0",
                    "totalWatts must be a positive number of watts: the limit of all GPUs on the nodes",
                    ".totalWatts",
                ),
                cel(
                    "(has(self.nodeSelector.matchLabels) && size(self.nodeSelector.matchLabels) > 0)"
                    " || (has(self.nodeSelector.matchExpressions)"
                    " && size(self.nodeSelector.matchExpressions) > 0)",
                    "nodeSelector must select by at least one label: an empty selector would take every node",
                    ".nodeSelector",
                ),
            ]
        }
    )

    total_watts: int = Field(
        le=10**12, description="The limit in watts for all GPUs on the domain's nodes together."
    )
    node_selector: LabelSelector = Field(
        description="The domain's nodes, e.g. matchLabels topology.gpupower.dev/rack: a12."
    )
    parent: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The domain that contains this one (a rack's row); omitted at the root of a tree.",
    )
    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose budgets may draw from the domain; omitted means every namespace.",
    )
    idle_gpu_watts: int | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Limit a GPU that no pod holds is parked at; omitted means each GPU's minimum.",
    )
    unmanaged_gpu_watts: int | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Cap for GPUs of pods no budget manages; omitted: left alone, counted at what they hold.",
    )

    @field_validator("total_watts")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(
                "totalWatts must be a positive number of watts: the limit of all GPUs on the nodes"
            )
        return value

    @field_validator("node_selector")
    @classmethod
    def _selects_something(cls, value: LabelSelector) -> LabelSelector:
        if value.is_empty():
            raise ValueError(
                "nodeSelector must select by at least one label: an empty selector would take every node"
            )
        return value

    def admits(self, namespace_labels: dict[str, str] | None) -> bool:
        """Whether budgets of a namespace with these labels may draw from the domain."""
        return self.namespace_selector is None or self.namespace_selector.matches(namespace_labels)


# ---------------------------------------------------------------------------
# Status


class CommittedWatts(StatusModel):
    """Watts committed outside budgets on the domain's nodes, from what the agents report."""

    idle_watts: float = Field(default=0.0, description="Idle GPUs at the limit they are parked at.")
    unmanaged_watts: float = Field(
        default=0.0, description="GPUs of pods no budget manages, at their cap or the limit they hold."
    )
    other_domains_watts: float = Field(
        default=0.0, description="GPUs held by pods of budgets of other domains, at their caps."
    )


class DomainBudgetStatus(StatusModel):
    """One budget's share of the domain."""

    namespace: str = Field(description="The budget's namespace.")
    name: str = Field(description="The budget's name.")
    priority: int = Field(description="The budget's spec.priority.")
    allocated_watts: float = Field(description="Watts the allocation gives the budget: what its plan needs.")
    planned_watts: float | None = Field(default=None, description="Watts of the budget's current plan.")
    limited_by: str | None = Field(
        default=None, description="Why the share is what it is (as in the budget's status.domain.limitedBy)."
    )


class DomainStatus(StatusModel):
    """Observed state: what the domain's nodes hold, the allocation, the conditions."""

    observed_generation: int | None = Field(default=None, description="The generation this status is for.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Infeasible, Overlap and Overcommitted."
    )
    nodes: int | None = Field(default=None, description="Nodes in the domain, its children's included.")
    gpus: int | None = Field(default=None, description="GPUs on those nodes.")
    committed_watts: float | None = Field(
        default=None, description="Watts committed outside budgets: idle, unmanaged and other domains' GPUs."
    )
    committed: CommittedWatts | None = Field(default=None, description="The committed watts by kind.")
    held_watts: float | None = Field(
        default=None,
        description="What every GPU on the domain's nodes holds now, by the agents' reports (a GPU not "
        "reported counts at its maximum); Overcommitted when above totalWatts.",
    )
    floor_watts: float | None = Field(
        default=None, description="What the floors of the budgets under the domain need together."
    )
    allocated_watts: float | None = Field(
        default=None, description="Watts allocated to the budgets under it."
    )
    planned_watts: float | None = Field(default=None, description="Watts of those budgets' current plans.")
    headroom_watts: float | None = Field(
        default=None, description="The limit less what is committed and allocated (negative when infeasible)."
    )
    budgets: int | None = Field(default=None, description="Budgets that draw from the domain itself.")
    allocations: list[DomainBudgetStatus] = Field(
        default_factory=list, description="The share of each budget that draws from the domain itself."
    )
    reason: str | None = Field(default=None, description="One line saying where the watts went.")

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


SELF_PARENT = "spec.parent must name another domain: a domain cannot contain itself"


class GpuPowerDomain(ApiObject):
    """A whole GpuPowerDomain object as read from the API or a file."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.spec.parent) || self.spec.parent != self.metadata.name",
                    SELF_PARENT,
                    ".spec.parent",
                )
            ]
        },
    )
    KIND: ClassVar[str] = KIND

    spec: DomainSpec
    status: DomainStatus | None = None

    @model_validator(mode="after")
    def _not_its_own_parent(self) -> Self:
        if self.spec.parent is not None and self.spec.parent == self.name:
            raise ValueError(SELF_PARENT)
        return self

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation") or 0)


@dataclass(frozen=True)
class NodePlace:
    """Where a node sits among the domains, and what they ask of its GPUs."""

    selected_by: tuple[str, ...] = ()  # the domains whose nodeSelector picks the node, by name
    chains: tuple[tuple[str, ...], ...] = ()  # each of those up to its root, deepest first
    idle_gpu_watts: int | None = None  # the limit its idle GPUs are parked at (None: each GPU's minimum)
    unmanaged_gpu_watts: int | None = None  # the cap of unmanaged pods' GPUs (None: left alone)

    @property
    def in_domain(self) -> bool:
        return bool(self.selected_by)

    @property
    def domains(self) -> frozenset[str]:
        """Every domain the node counts in: those that select it and every one above them."""
        return frozenset(name for chain in self.chains for name in chain)

    @property
    def overlapping(self) -> bool:
        """Whether the domains that select it are not on one chain (two racks claiming one node)."""
        deepest = max(self.chains, key=len, default=())
        return any(name not in deepest for name in self.selected_by)


def place_node(domains: Mapping[str, DomainSpec], labels: Mapping[str, str] | None) -> NodePlace:
    """Where a node with ``labels`` sits among ``domains`` (by name).

    Its domains are those whose selector picks it and every domain above them
    (a rack's node is in its row even when the row's selector misses it); a
    parent that does not exist, or a cycle, ends a chain. A setting comes from
    the deepest domain on the chain that sets it; where the node is (wrongly) in
    two chains, the lower of their settings: parked lower, capped lower.
    """
    plain = dict(labels or {})
    selected = tuple(sorted(name for name, spec in domains.items() if spec.node_selector.matches(plain)))
    chains = []
    for name in selected:
        chain = [name]
        while (parent := domains[chain[-1]].parent) is not None and parent in domains and parent not in chain:
            chain.append(parent)
        chains.append(tuple(chain))

    def setting(read: Callable[[DomainSpec], int | None]) -> list[int | None]:
        return [next((v for d in chain if (v := read(domains[d])) is not None), None) for chain in chains]

    idle = setting(lambda spec: spec.idle_gpu_watts)
    unmanaged = [v for v in setting(lambda spec: spec.unmanaged_gpu_watts) if v is not None]
    return NodePlace(
        selected_by=selected,
        chains=tuple(chains),
        # Unset parks at each GPU's minimum, the lowest of all; unset unmanaged is no cap, the highest.
        idle_gpu_watts=None if None in idle else min((v for v in idle if v is not None), default=None),
        unmanaged_gpu_watts=min(unmanaged, default=None),
    )


def parse_domain_spec(raw: dict[str, Any], prefix: str = "spec") -> DomainSpec:
    """Validate a raw domain spec; raise :class:`InvalidSpecError` naming the field on failure."""
    try:
        return DomainSpec.model_validate(raw)
    except ValidationError as error:
        raise describe_validation_error(error, prefix) from None


def parse_domain(raw: dict[str, Any]) -> GpuPowerDomain:
    """Validate a whole GpuPowerDomain; raise :class:`InvalidSpecError` naming the field on failure."""
    return parse_object(GpuPowerDomain, raw)
