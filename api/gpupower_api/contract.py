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
