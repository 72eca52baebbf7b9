"""The contract between operator and agent: pod annotations and how to read them.

The operator writes, on every pod of a target it owns:

- ``gpupower.dev/power-limit-watts``: the per-GPU cap, a positive integer in
  watts written in plain decimal (``"450"``);
- ``gpupower.dev/budget``: the name of the budget (in the pod's namespace)
  that owns the pod.

The agent parses the cap strictly: anything but a plain positive integer
within ``[1, MAX_CAP_WATTS]`` is rejected, so the caller falls back to the safe
default instead of "no cap".
"""

from __future__ import annotations

import re

PREFIX = "gpupower.dev"
POWER_LIMIT_ANNOTATION = f"{PREFIX}/power-limit-watts"
BUDGET_ANNOTATION = f"{PREFIX}/budget"
MANAGED_ANNOTATIONS = (POWER_LIMIT_ANNOTATION, BUDGET_ANNOTATION)

# Highest cap the contract can carry; no GPU sold today accepts more than ~1.5 kW.
MAX_CAP_WATTS = 10_000

_CAP_PATTERN = re.compile(r"[1-9][0-9]{0,4}")


class InvalidCapError(ValueError):
    """An annotation value that is not a valid cap."""

    def __init__(self, value: object, why: str) -> None:
        self.value = value
        super().__init__(f"{POWER_LIMIT_ANNOTATION}={value!r}: {why}")


def format_power_limit(watts: int) -> str:
    """The annotation value for a cap of ``watts``."""
    if isinstance(watts, bool) or not isinstance(watts, int):
        raise InvalidCapError(watts, "a cap must be an integer number of watts")
    if not 1 <= watts <= MAX_CAP_WATTS:
        raise InvalidCapError(watts, f"a cap must be within 1..{MAX_CAP_WATTS} W")
    return str(watts)


def parse_power_limit(value: object) -> int:
    """Strictly parse an annotation value into watts, or raise :class:`InvalidCapError`.

    Accepted: a plain decimal integer in ``1..MAX_CAP_WATTS`` with no sign, unit,
    fraction, leading zero or whitespace. Everything else is refused.
    """
    if not isinstance(value, str):
        raise InvalidCapError(value, "missing or not a string")
    if not _CAP_PATTERN.fullmatch(value):
        raise InvalidCapError(value, "not a plain positive integer number of watts")
    watts = int(value)
    if watts > MAX_CAP_WATTS:
        raise InvalidCapError(value, f"above {MAX_CAP_WATTS} W")
    return watts


# ---------------------------------------------------------------------------
# The node inventory: what a node's GPUs accept as a power limit.
#
# The agent publishes, on its own Node, three labels (plain decimal integers in
# watts) describing the range every GPU of the node accepts, and an annotation
# with the per-GPU detail as JSON. The operator reads the labels to plan only
# caps the GPUs can apply.

GPU_POWER_MIN_LABEL = f"{PREFIX}/gpu-power-min-watts"
GPU_POWER_MAX_LABEL = f"{PREFIX}/gpu-power-max-watts"
GPU_POWER_DEFAULT_LABEL = f"{PREFIX}/gpu-power-default-watts"
GPU_POWER_LABELS = (GPU_POWER_MIN_LABEL, GPU_POWER_MAX_LABEL, GPU_POWER_DEFAULT_LABEL)
GPU_POWER_ANNOTATION = f"{PREFIX}/gpu-power-constraints"
# The label the NVIDIA GPU operator (feature discovery) sets on GPU nodes.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"


class InvalidNodeLabelError(ValueError):
    """A node inventory label that is not a valid number of watts; names the label and value."""

    def __init__(self, label: str, value: object, why: str) -> None:
        self.label = label
        self.value = value
        super().__init__(f"{label}={value!r}: {why}")


def format_watts_label(watts: int) -> str:
    """A node inventory label value: plain decimal watts in ``1..MAX_CAP_WATTS``."""
    if isinstance(watts, bool) or not isinstance(watts, int) or not 1 <= watts <= MAX_CAP_WATTS:
        raise InvalidNodeLabelError("watts", watts, f"must be an integer within 1..{MAX_CAP_WATTS}")
    return str(watts)


def parse_watts_label(label: str, value: object) -> int:
    """Strictly parse one inventory label (same grammar as a cap) or raise :class:`InvalidNodeLabelError`."""
    if not isinstance(value, str):
        raise InvalidNodeLabelError(label, value, "missing or not a string")
    if not _CAP_PATTERN.fullmatch(value):
        raise InvalidNodeLabelError(label, value, "not a plain positive integer number of watts")
    watts = int(value)
    if watts > MAX_CAP_WATTS:
        raise InvalidNodeLabelError(label, value, f"above {MAX_CAP_WATTS} W")
    return watts
