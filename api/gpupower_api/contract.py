"""The contract between operator and agent: pod annotations, the pod condition, and how to read them.

The operator writes, on every pod of a target it owns:

- ``gpupower.dev/power-limit-watts``: the per-GPU cap, a positive integer in
  watts written in plain decimal (``"450"``);
- ``gpupower.dev/budget``: the name of the budget (in the pod's namespace)
  that owns the pod.

The agent parses the cap strictly: anything but a plain positive integer
within ``[1, MAX_CAP_WATTS]`` is rejected, so the caller falls back to the safe
default instead of "no cap". The budget that manages a pod is the one whose
status selects it (the oldest Enforce budget), never the one the pod names.

The agent answers with the pod condition ``gpupower.dev/PowerCapped`` (below):
what the pod's GPUs hold, read back from NVML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

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


# ---------------------------------------------------------------------------
# What the agent reports back: the pod condition ``gpupower.dev/PowerCapped``.
#
# The agent sets it (through the pods' status subresource, only when it changes)
# on every pod it manages. ``True``/``Capped`` means every GPU of the pod holds
# at most the pod's trusted cap. ``False`` carries a reason a program can branch
# on. Every message starts with what the pod's GPUs hold, in one fixed form the
# operator reads back ("2 GPU(s) hold at most 205 W: ..."), so "enforced" is
# what the hardware holds, never only what was annotated. A message that does
# not start that way (GPUs unreadable, none allocated yet) says nothing about
# the watts, and the operator then counts the most the pod's GPUs could draw.

POWER_CAPPED_CONDITION = f"{PREFIX}/PowerCapped"


class PowerCappedReason(StrEnum):
    CAPPED = "Capped"  # True: every GPU of the pod holds at most its trusted cap
    AWAITING_DEVICES = "AwaitingDevices"  # the kubelet has not allocated the pod's GPUs yet
    AWAITING_CAP = "AwaitingCap"  # selected, no cap annotated yet: the lower of grant and safe default
    SAFE_DEFAULT = "SafeDefault"  # the pod's cap cannot be trusted: the lower of grant and safe default
    CONFLICT = "Conflict"  # pods sharing a GPU disagree: the lowest safe default among them
    CLAMPED = "Clamped"  # the GPU accepts no limit as low as the cap: it holds its minimum
    NVML_ERROR = "NvmlError"  # a GPU does not hold what the agent decided, or cannot be read
    GUARDED = "Guarded"  # the draw guard holds the GPUs below the cap (oversubscribed budgets)
    AGENT_STOPPED = "AgentStopped"  # the agent stopped and gave the GPUs their default limit back
    UNMANAGED = "Unmanaged"  # no Enforce budget manages the pod any more; its GPUs are not capped


_HELD_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,3}) GPU\(s\) hold at most (0|[1-9][0-9]{0,4}) W(?::|$)")


@dataclass(frozen=True)
class HeldWatts:
    """What a pod's GPUs hold, as the agent reported it: how many GPUs, and the highest limit among them."""

    gpus: int
    max_watts: int

    def text(self) -> str:
        return f"{self.gpus} GPU(s) hold at most {self.max_watts} W"


def power_capped_message(held: HeldWatts | None, detail: str) -> str:
    """The condition's message: what the GPUs hold (when known), then the detail for people."""
    if held is None:
        return detail
    return f"{held.text()}: {detail}" if detail else held.text()


def held_watts_from_message(message: object) -> HeldWatts | None:
    """What the GPUs hold according to a PowerCapped message; None when it does not say."""
    if not isinstance(message, str):
        return None
    match = _HELD_PATTERN.match(message)
    if match is None:
        return None
    return HeldWatts(int(match[1]), int(match[2]))


# ---------------------------------------------------------------------------
# What a node's GPUs hold, for the power domains: the annotation
# ``gpupower.dev/gpu-power-held`` on the agent's own Node.
#
# A breaker trips on what every GPU on its circuit may draw, so a domain counts
# each GPU at the limit it holds. The agent sums the limits NVML reports by who
# holds the GPU: no pod (``idle``), a pod no Enforce budget manages
# (``unmanaged``), or a pod of a budget (``budgets``, keyed ``namespace/name`` of
# the budget the trust rule gives it). A GPU whose limit cannot be read counts
# at its maximum. Compact JSON with sorted keys, so the same hardware gives the
# same text and the Node is patched only when something changed:
#
#   {"budgets":{"inference/llama":{"gpus":4,"watts":1600}},
#    "idle":{"gpus":3,"watts":300},"unmanaged":{"gpus":1,"watts":700}}

GPU_POWER_HELD_ANNOTATION = f"{PREFIX}/gpu-power-held"
# Watts one report may carry: a node of 1,000 GPUs at the highest cap.
_MAX_REPORT_WATTS = 1000 * MAX_CAP_WATTS


class InvalidHeldReportError(ValueError):
    """A ``gpupower.dev/gpu-power-held`` value that does not parse; names what is wrong."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{GPU_POWER_HELD_ANNOTATION}: {why}")


@dataclass(frozen=True)
class HeldGroup:
    """GPUs of one kind on a node, and the sum of the limits they hold (whole watts, rounded up)."""

    gpus: int = 0
    watts: int = 0

    def __add__(self, other: HeldGroup) -> HeldGroup:
        return HeldGroup(self.gpus + other.gpus, self.watts + other.watts)


@dataclass(frozen=True)
class NodeHeld:
    """What every GPU of a node holds, by who holds it."""

    idle: HeldGroup = HeldGroup()
    unmanaged: HeldGroup = HeldGroup()
    budgets: Mapping[str, HeldGroup] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.idle.gpus + self.unmanaged.gpus + sum(g.gpus for g in self.budgets.values())

    @property
    def watts(self) -> int:
        return self.idle.watts + self.unmanaged.watts + sum(g.watts for g in self.budgets.values())


def format_held_report(held: NodeHeld) -> str:
    """The annotation's value for ``held``: the same text for the same hardware."""

    def group(g: HeldGroup) -> dict[str, int]:
        return {"gpus": g.gpus, "watts": g.watts}

    document = {
        "budgets": {key: group(g) for key, g in sorted(held.budgets.items()) if g.gpus},
        "idle": group(held.idle),
        "unmanaged": group(held.unmanaged),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def _held_group(value: object, where: str) -> HeldGroup:
    if not isinstance(value, dict) or set(value) != {"gpus", "watts"}:
        raise InvalidHeldReportError(f"{where} must be an object with exactly gpus and watts")
    gpus, watts = value["gpus"], value["watts"]
    for name, number, most in (("gpus", gpus, 1000), ("watts", watts, _MAX_REPORT_WATTS)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= most:
            raise InvalidHeldReportError(
                f"{where}.{name} must be an integer within 0..{most}, got {number!r}"
            )
    return HeldGroup(gpus, watts)


def parse_held_report(value: object) -> NodeHeld:
    """Strictly parse the annotation or raise :class:`InvalidHeldReportError` saying what is wrong."""
    if not isinstance(value, str):
        raise InvalidHeldReportError("missing or not a string")
    try:
        document = json.loads(value)
    except ValueError as error:
        raise InvalidHeldReportError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or set(document) != {"budgets", "idle", "unmanaged"}:
        raise InvalidHeldReportError("must be an object with exactly budgets, idle and unmanaged")
    budgets = document["budgets"]
    if not isinstance(budgets, dict):
        raise InvalidHeldReportError("budgets must be an object keyed namespace/name")
    parsed: dict[str, HeldGroup] = {}
    for key, group in budgets.items():
        namespace, _, name = str(key).partition("/")
        if not namespace or not name or "/" in name:
            raise InvalidHeldReportError(f"budgets key {key!r} is not namespace/name")
        parsed[key] = _held_group(group, f"budgets[{key}]")
    held = NodeHeld(
        idle=_held_group(document["idle"], "idle"),
        unmanaged=_held_group(document["unmanaged"], "unmanaged"),
        budgets=parsed,
    )
    if held.gpus > 1000:
        raise InvalidHeldReportError(f"{held.gpus} GPUs: more than a node can have")
    return held


# ---------------------------------------------------------------------------
# The agent's heartbeat: one coordination.k8s.io Lease per node agent.
#
# Every report the operator trusts from an agent (the pods' PowerCapped
# condition, the Node's gpu-power-held annotation) is only as fresh as its
# agent. Each agent keeps a Lease named for its node, in the agent's namespace,
# renewed every AGENT_LEASE_RENEW_SECONDS with leaseDurationSeconds =
# AGENT_LEASE_DURATION_SECONDS. The operator trusts a node's reports only while
# that Lease is live; a node whose Lease expires (or never existed) is counted
# at each GPU's maximum, and raises that depend on its pods wait.

AGENT_LEASE_PREFIX = "gpupower-agent-"
AGENT_LEASE_NODE_LABEL = f"{PREFIX}/node"  # on each agent Lease: the node it speaks for
AGENT_LEASE_DURATION_SECONDS = 15
AGENT_LEASE_RENEW_SECONDS = 5
_MAX_NAME_LENGTH = 253


def agent_lease_name(node_name: str) -> str:
    """The name of the heartbeat Lease of the agent on ``node_name`` (a node name is a DNS subdomain)."""
    name = AGENT_LEASE_PREFIX + node_name
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(f"node name {node_name!r}: too long for an agent Lease name")
    return name
