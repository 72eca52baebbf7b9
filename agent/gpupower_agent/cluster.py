"""What the agent knows of the cluster, as typed values built once from raw API objects.

Pods on this node, the grants in budget status, the power domains and this
node's own labels; raw dicts stop here. A pod's
view holds what the kubelet changes as it admits and starts it (phase, container
states, start times), so every such change wakes the agent, and the agent's own
``gpupower.dev/PowerCapped`` condition, so it patches that condition only on change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from gpupower_api.contract import (
    BUDGET_ANNOTATION,
    GPU_POWER_HELD_ANNOTATION,
    POWER_CAPPED_CONDITION,
    POWER_LIMIT_ANNOTATION,
)
from gpupower_api.domains import DomainSpec, parse_domain_spec
from gpupower_api.models import BudgetStatus, InvalidSpecError, Mode, Oversubscription, parse_spec
from gpupower_api.selectors import InvalidSelectorError, Selector, parse_selector

log = logging.getLogger(__name__)

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
# Extended resources whose devices are GPUs (or parts of one): the NVIDIA device plugin's names.
DEFAULT_GPU_RESOURCE_NAMES = ("nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-*")


class InvalidObjectError(ValueError):
    """A raw API object without the fields every object has."""


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ReportedCondition:
    """The ``gpupower.dev/PowerCapped`` condition as the pod carries it."""

    status: str
    reason: str
    message: str
    last_transition_time: str | None


@dataclass(frozen=True)
class ContainerState:
    """One container as the kubelet reports it: enough to notice every step it takes."""

    name: str
    state: str  # waiting, running or terminated
    detail: str  # the waiting or terminated reason, or the start time
    ready: bool
    restarts: int


@dataclass(frozen=True)
class PodView:
    """A pod on this node: identity, labels, the two contract annotations (raw strings), what the
    kubelet reports of it, and the agent's own condition on it."""

    key: PodKey
    uid: str
    labels: Mapping[str, str]
    budget_name: str | None
    cap_value: str | None
    finished: bool
    requests_gpus: bool = False
    phase: str | None = None
    start_time: str | None = None
    containers: tuple[ContainerState, ...] = ()
    power_capped: ReportedCondition | None = None

    @property
    def annotated(self) -> bool:
        return self.budget_name is not None or self.cap_value is not None


@dataclass(frozen=True)
class Grant:
    """One status target of a budget: which pods it selects and the per-GPU cap it grants them."""

    target_name: str
    selector: Selector
    cap_watts: int
    gpu_draw_watts: float | None = None  # oversubscribed: the draw guard's share of one GPU
    # While a profile run measures one pod of the target: that pod's name and the cap it alone gets.
    measured_pod: str | None = None
    measured_cap_watts: int | None = None

    def cap_for(self, pod_name: str) -> int:
        """The grant of one selected pod: the measured pod's own cap, every other pod the target's."""
        if self.measured_cap_watts is not None and pod_name == self.measured_pod:
            return self.measured_cap_watts
        return self.cap_watts


@dataclass(frozen=True)
class BudgetView:
    namespace: str
    name: str
    safe_default_watts: int | None
    grants: tuple[Grant, ...]
    advisory: bool = False  # mode Advisory: the plan is not enforced, so the agent ignores the budget
    created: str = ""  # creationTimestamp (RFC 3339 sorts in time): the oldest selecting budget manages a pod
    oversubscription: Oversubscription | None = None  # the draw guard's settings, when oversubscribed

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def _metadata(raw: Mapping[str, Any], kind: str) -> tuple[str, str, Mapping[str, Any]]:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidObjectError(f"{kind}: metadata missing")
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise InvalidObjectError(f"{kind}: metadata.name or metadata.namespace missing")
    return namespace, name, metadata


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def is_gpu_resource(name: str, patterns: Iterable[str] = DEFAULT_GPU_RESOURCE_NAMES) -> bool:
    """Whether an extended resource name is one of GPUs (``fnmatch`` patterns)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _requests_gpus(spec: Mapping[str, Any], patterns: Iterable[str]) -> bool:
    patterns = tuple(patterns)
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or ():
            resources = container.get("resources") if isinstance(container, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            for section in ("limits", "requests"):
                amounts = resources.get(section)
                if not isinstance(amounts, Mapping):
                    continue
                for resource, amount in amounts.items():
                    if is_gpu_resource(str(resource), patterns) and str(amount) not in ("0", ""):
                        return True
    return False


def _container_states(status: Mapping[str, Any]) -> tuple[ContainerState, ...]:
    states: list[ContainerState] = []
    for group in ("initContainerStatuses", "containerStatuses"):
        for item in status.get(group) or ():
            if not isinstance(item, Mapping):
                continue
            state = _mapping(item.get("state"))
            kind = next(iter(state), "unknown")
            body = _mapping(state.get(kind))
            detail = str(body.get("reason") or body.get("startedAt") or "")
            states.append(
                ContainerState(
                    name=str(item.get("name", "")),
                    state=str(kind),
                    detail=detail,
                    ready=item.get("ready") is True,
                    restarts=int(item.get("restartCount") or 0),
                )
            )
    return tuple(states)


def _power_capped(status: Mapping[str, Any]) -> ReportedCondition | None:
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == POWER_CAPPED_CONDITION:
            return ReportedCondition(
                status=str(condition.get("status", "")),
                reason=str(condition.get("reason", "")),
                message=str(condition.get("message", "")),
                last_transition_time=condition.get("lastTransitionTime"),
            )
    return None


def pod_view(
    raw: Mapping[str, Any],
    gpu_resources: Iterable[str] = DEFAULT_GPU_RESOURCE_NAMES,
    kubelet_steps: bool = True,
) -> PodView:
    """The agent's view of a raw Pod object.

    ``kubelet_steps=False`` leaves out what the kubelet changes while it starts the
    pod (phase, start time, container states), so those changes wake nobody.
    """
    namespace, name, metadata = _metadata(raw, "pod")
    annotations = _string_map(metadata.get("annotations"))
    status = _mapping(raw.get("status"))
    spec = _mapping(raw.get("spec"))
    phase = status.get("phase")
    return PodView(
        key=PodKey(namespace, name),
        uid=str(metadata.get("uid", "")),
        labels=_string_map(metadata.get("labels")),
        budget_name=annotations.get(BUDGET_ANNOTATION),
        cap_value=annotations.get(POWER_LIMIT_ANNOTATION),
        finished=phase in FINISHED_PHASES,
        requests_gpus=_requests_gpus(spec, gpu_resources),
        phase=str(phase) if phase is not None and kubelet_steps else None,
        start_time=status.get("startTime") if kubelet_steps else None,
        containers=_container_states(status) if kubelet_steps else (),
        power_capped=_power_capped(status),
    )


def budget_view(raw: Mapping[str, Any]) -> BudgetView:
    """The agent's view of a raw GpuPowerBudget: its mode, its safe default and the grants in its status.

    An invalid spec leaves the safe default unknown (the agent's own default applies);
    an invalid status or target selector grants nothing. Both are logged.
    """
    namespace, name, metadata = _metadata(raw, "gpupowerbudget")
    safe_default: int | None = None
    oversubscription: Oversubscription | None = None
    spec = raw.get("spec")
    # Read apart from the validation: an invalid spec must not turn an Advisory budget into an enforcing one.
    advisory = isinstance(spec, Mapping) and spec.get("mode") == Mode.ADVISORY.value
    try:
        parsed = parse_spec(dict(spec) if isinstance(spec, Mapping) else {})
        safe_default, oversubscription = parsed.safe_default_watts, parsed.oversubscription
    except InvalidSpecError as error:
        log.warning(
            "event=budget_spec_invalid budget=%s/%s field=%s error=%r",
            namespace,
            name,
            error.field,
            str(error),
        )
    grants: list[Grant] = []
    raw_status = raw.get("status")
    if isinstance(raw_status, Mapping) and raw_status:
        try:
            status = BudgetStatus.model_validate(dict(raw_status))
        except ValidationError as error:
            log.warning("event=budget_status_invalid budget=%s/%s error=%r", namespace, name, str(error))
            status = BudgetStatus()
        for target in status.targets:
            if not target.selector:
                continue
            try:
                selector = parse_selector(target.selector)
            except InvalidSelectorError as error:
                log.warning(
                    "event=budget_selector_invalid budget=%s/%s target=%s error=%r",
                    namespace,
                    name,
                    target.name,
                    str(error),
                )
                continue
            measurement = target.measurement
            grants.append(
                Grant(
                    target_name=target.name,
                    selector=selector,
                    cap_watts=target.cap_watts,
                    gpu_draw_watts=target.gpu_share_watts,
                    measured_pod=measurement.pod if measurement is not None else None,
                    measured_cap_watts=measurement.cap_watts if measurement is not None else None,
                )
            )
    return BudgetView(
        namespace=namespace,
        name=name,
        safe_default_watts=safe_default,
        grants=tuple(grants),
        advisory=advisory,
        created=str(metadata.get("creationTimestamp") or ""),
        oversubscription=oversubscription,
    )


@dataclass(frozen=True)
class DomainView:
    """A GpuPowerDomain: its validated spec, or, when the spec does not validate, why (then it is skipped)."""

    name: str
    spec: DomainSpec | None
    invalid_field: str | None = None
    invalid_reason: str | None = None


@dataclass(frozen=True)
class NodeView:
    """This agent's own Node: the labels that place it in the power domains, and its held report."""

    name: str
    labels: Mapping[str, str]
    held_report: str | None = None


def _cluster_name(raw: Mapping[str, Any], kind: str) -> tuple[str, Mapping[str, Any]]:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise InvalidObjectError(f"{kind}: metadata.name missing")
    return str(metadata["name"]), metadata


def domain_view(raw: Mapping[str, Any]) -> DomainView:
    """The agent's view of a raw GpuPowerDomain; a spec that does not validate is kept as the reason why."""
    name, _ = _cluster_name(raw, "gpupowerdomain")
    spec = raw.get("spec")
    try:
        return DomainView(name, parse_domain_spec(dict(spec) if isinstance(spec, Mapping) else {}))
    except InvalidSpecError as error:
        return DomainView(name, None, error.field, str(error))


def node_view(raw: Mapping[str, Any]) -> NodeView:
    """The agent's view of its raw Node."""
    name, metadata = _cluster_name(raw, "node")
    annotations = _string_map(metadata.get("annotations"))
    return NodeView(name, _string_map(metadata.get("labels")), annotations.get(GPU_POWER_HELD_ANNOTATION))
