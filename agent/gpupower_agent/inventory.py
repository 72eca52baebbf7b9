"""The node's GPU power inventory, pure: the GPUs' constraints in, the Node's labels and annotation out.

Policy for a node whose GPUs differ:

- ``min`` is the largest minimum and ``max`` the smallest maximum: the range every
  GPU of the node accepts, so a cap planned inside it is never clamped on any GPU.
  When the GPUs share no cap at all, ``min`` > ``max`` is published as it is and the
  operator reads it as an empty range (it must not plan for that node).
- ``default`` is the smallest factory default, brought into ``[min, max]``: the
  highest cap every GPU accepts that raises no GPU above its own default (with
  one GPU model it is simply that model's default).
- A node with no GPU left has no labels (they would describe hardware that is gone).

The per-GPU detail goes into one annotation as compact JSON sorted by index, so
the same GPUs always give the same text and nothing is patched when nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpupower_agent.nvml import Gpu
from gpupower_api.contract import (
    GPU_POWER_ANNOTATION,
    GPU_POWER_DEFAULT_LABEL,
    GPU_POWER_LABELS,
    GPU_POWER_MAX_LABEL,
    GPU_POWER_MIN_LABEL,
    MAX_CAP_WATTS,
)


@dataclass(frozen=True)
class NodeInventory:
    """What the Node should carry: each inventory label's value (None: absent) and the annotation."""

    labels: Mapping[str, str | None]
    annotation: str

    @property
    def summary(self) -> str:
        """key=value text for logs."""
        return " ".join(f"{key.rsplit('/', 1)[-1]}={value}" for key, value in sorted(self.labels.items()))


def _label_watts(watts: int) -> str:
    # Constraints come from NVML; a nonsensical reading is kept within what the contract parses.
    return str(min(max(watts, 1), MAX_CAP_WATTS))


def node_inventory(gpus: Sequence[Gpu]) -> NodeInventory:
    """The labels and annotation describing ``gpus`` (see the module docstring for mixed GPUs)."""
    detail: list[dict[str, Any]] = [
        {
            "uuid": gpu.uuid,
            "index": gpu.index,
            "product": gpu.model,
            "minWatts": gpu.constraints.min_watts,
            "maxWatts": gpu.constraints.max_watts,
            "defaultWatts": gpu.constraints.default_watts,
        }
        for gpu in sorted(gpus, key=lambda g: (g.index, g.uuid))
    ]
    annotation = json.dumps(detail, separators=(",", ":"), sort_keys=True)
    if not gpus:
        return NodeInventory({label: None for label in GPU_POWER_LABELS}, annotation)
    min_watts = max(gpu.constraints.min_watts for gpu in gpus)
    max_watts = min(gpu.constraints.max_watts for gpu in gpus)
    default_watts = min(gpu.constraints.default_watts for gpu in gpus)
    if min_watts <= max_watts:
        default_watts = min(max(default_watts, min_watts), max_watts)
    labels = {
        GPU_POWER_MIN_LABEL: _label_watts(min_watts),
        GPU_POWER_MAX_LABEL: _label_watts(max_watts),
        GPU_POWER_DEFAULT_LABEL: _label_watts(default_watts),
    }
    return NodeInventory(labels, annotation)


def inventory_patch(
    desired: NodeInventory, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any] | None:
    """The merge patch that makes the Node carry ``desired`` (None when it already does).

    Only the inventory's own keys are touched; every other label and annotation stays.
    """
    label_changes = {key: value for key, value in desired.labels.items() if labels.get(key) != value}
    annotation_changes = (
        {GPU_POWER_ANNOTATION: desired.annotation}
        if annotations.get(GPU_POWER_ANNOTATION) != desired.annotation
        else {}
    )
    if not label_changes and not annotation_changes:
        return None
    metadata: dict[str, Any] = {}
    if label_changes:
        metadata["labels"] = label_changes
    if annotation_changes:
        metadata["annotations"] = annotation_changes
    return {"metadata": metadata}
