"""What the agent knows of the cluster, as typed values built once from raw API objects.

Pods on this node and the grants in budget status; raw dicts stop here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gpupower_api.contract import BUDGET_ANNOTATION, POWER_LIMIT_ANNOTATION
from gpupower_api.models import BudgetStatus, InvalidSpecError, Mode, parse_spec
from gpupower_api.selectors import InvalidSelectorError, Selector, parse_selector

log = logging.getLogger(__name__)

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


class InvalidObjectError(ValueError):
    """A raw API object without the fields every object has."""


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodView:
    """A pod on this node: identity, labels and the two contract annotations (raw strings)."""

    key: PodKey
    uid: str
    labels: Mapping[str, str]
    budget_name: str | None
    cap_value: str | None
    finished: bool

    @property
    def annotated(self) -> bool:
        return self.budget_name is not None or self.cap_value is not None


@dataclass(frozen=True)
class Grant:
    """One status target of a budget: which pods it selects and the per-GPU cap it grants them."""

    target_name: str
    selector: Selector
    cap_watts: int


@dataclass(frozen=True)
class BudgetView:
    namespace: str
    name: str
    safe_default_watts: int | None
    grants: tuple[Grant, ...]
    advisory: bool = False  # mode Advisory: the plan is not enforced, so the agent ignores the budget


def _metadata(raw: Mapping[str, Any], kind: str) -> tuple[str, str, Mapping[str, Any]]:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidObjectError(f"{kind}: metadata missing")
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise InvalidObjectError(f"{kind}: metadata.name or metadata.namespace missing")
    return namespace, name, metadata


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def pod_view(raw: Mapping[str, Any]) -> PodView:
    """The agent's view of a raw Pod object."""
    namespace, name, metadata = _metadata(raw, "pod")
    annotations = _string_map(metadata.get("annotations"))
    status = raw.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return PodView(
        key=PodKey(namespace, name),
        uid=str(metadata.get("uid", "")),
        labels=_string_map(metadata.get("labels")),
        budget_name=annotations.get(BUDGET_ANNOTATION),
        cap_value=annotations.get(POWER_LIMIT_ANNOTATION),
        finished=phase in FINISHED_PHASES,
    )


def budget_view(raw: Mapping[str, Any]) -> BudgetView:
    """The agent's view of a raw GpuPowerBudget: its mode, its safe default and the grants in its status.

    An invalid spec leaves the safe default unknown (the agent's own default applies);
    an invalid status or target selector grants nothing. Both are logged.
    """
    namespace, name, _ = _metadata(raw, "gpupowerbudget")
    safe_default: int | None = None
    spec = raw.get("spec")
    # Read apart from the validation: an invalid spec must not turn an Advisory budget into an enforcing one.
    advisory = isinstance(spec, Mapping) and spec.get("mode") == Mode.ADVISORY.value
    try:
        safe_default = parse_spec(dict(spec) if isinstance(spec, Mapping) else {}).safe_default_watts
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
            grants.append(Grant(target_name=target.name, selector=selector, cap_watts=target.cap_watts))
    return BudgetView(
        namespace=namespace,
        name=name,
        safe_default_watts=safe_default,
        grants=tuple(grants),
        advisory=advisory,
    )
