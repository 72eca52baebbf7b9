"""Profile presets: the typical shape of a role's throughput against its GPU cap, from one number.

A preset is an *estimate* for a budget that has no measured profile yet. It
scales a shape taken from published measurements by the role's peak throughput
(what one replica serves at the GPU's highest power limit) and by that limit.
Every number below comes from the sources named beside it; what the shape
assumes beyond them is said in words. The README ("Where profiles come from")
repeats both, and tells users to measure.

- **prefill** is compute-bound: it draws the whole cap and loses throughput
  steadily as the cap falls. The shape is the prefill sweep of LLM Garage,
  "Tokens-per-Second Test Bench: Power Limit Sweep" (February 2026): prefill
  tokens/s at 100-350 W on RTX 3090s (350 W limit), normalised by the 350 W
  value and taken at the same fractions of the GPU's highest limit. Splitwise
  (Patel et al., ISCA 2024, arXiv:2311.18677) reports the same split:
  compute-intensive prompt computation, memory-intensive token generation.
- **decode** is memory-bound: it never draws the whole cap, so a cap above the
  power it naturally draws changes nothing and the shape is flat there. Ma et
  al., "The Illusion of Power Capping in LLM Decode" (arXiv:2605.11999, 2026)
  measured decode at 137-300 W on a 700 W H200 (no cap above that ever
  triggered), so the natural draw defaults to 300/700 of the highest limit,
  the top of their range; Maliakel et al. (arXiv:2501.08219) find decode
  largely insensitive to GPU frequency. Below its natural draw a cap takes
  power decode would use; the shape *assumes* throughput then falls in
  proportion to the cap (no source gives that curve across GPUs).
"""

from __future__ import annotations

import itertools
from enum import StrEnum


class PresetShape(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


# LLM Garage prefill sweep: (cap / 350 W, prefill tokens/s / tokens/s at 350 W).
# 100 W 1,390; 150 W 2,549; 200 W 5,941; 250 W 8,436; 300 W 9,326; 350 W 9,893 tokens/s.
PREFILL_SHAPE: tuple[tuple[float, float], ...] = tuple(
    (watts / 350, tokens / 9893)
    for watts, tokens in ((100, 1390), (150, 2549), (200, 5941), (250, 8436), (300, 9326), (350, 9893))
)

# Ma et al.: decode drew at most 300 W of the H200's 700 W.
DECODE_NATURAL_FRACTION = 300 / 700

# The lowest cap a preset describes, as a fraction of the highest limit: the
# lowest point of the prefill sweep (100 of 350 W), which is also where an
# H100/H200 SXM's range starts (200 of 700 W).
DEFAULT_MIN_FRACTION = PREFILL_SHAPE[0][0]


def default_min_watts(max_watts: float) -> float:
    """The lowest cap a preset describes when ``minWatts`` is not given."""
    return max_watts * DEFAULT_MIN_FRACTION


def default_natural_watts(max_watts: float) -> float:
    """The decode preset's natural draw when ``naturalWatts`` is not given."""
    return max_watts * DECODE_NATURAL_FRACTION


def _shape_at(shape: tuple[tuple[float, float], ...], fraction: float) -> float:
    """The shape's share of peak at a fraction of the highest limit: linear between points, flat beyond."""
    if fraction <= shape[0][0]:
        return shape[0][1]
    for (low_x, low_y), (high_x, high_y) in itertools.pairwise(shape):
        if fraction <= high_x:
            return low_y + (fraction - low_x) / (high_x - low_x) * (high_y - low_y)
    return shape[-1][1]


def preset_points(
    shape: PresetShape,
    peak_throughput: float,
    max_watts: float,
    min_watts: float | None = None,
    natural_watts: float | None = None,
) -> list[tuple[float, float]]:
    """The (watts, throughput) points a preset stands for, ascending in watts, from min to max watts.

    The caller has checked the arguments (``0 < min < max``, ``min <= natural <= max``).
    """
    low = default_min_watts(max_watts) if min_watts is None else min_watts
    if shape is PresetShape.PREFILL:
        inner = [(x * max_watts, y) for x, y in PREFILL_SHAPE if low < x * max_watts < max_watts]
        shares = [(low, _shape_at(PREFILL_SHAPE, low / max_watts)), *inner, (max_watts, 1.0)]
        return [(watts, share * peak_throughput) for watts, share in shares]
    natural = default_natural_watts(max_watts) if natural_watts is None else natural_watts
    natural = min(max(natural, low), max_watts)
    points = [(low, peak_throughput * (low / natural))]
    if low < natural < max_watts:
        points.append((natural, peak_throughput))
    points.append((max_watts, peak_throughput))
    return points


__all__ = [
    "DECODE_NATURAL_FRACTION",
    "DEFAULT_MIN_FRACTION",
    "PREFILL_SHAPE",
    "PresetShape",
    "default_min_watts",
    "default_natural_watts",
    "preset_points",
]
