"""How much demand Optimize serves, and with how many watts, against Proportional and brute force.

Run: ``.venv/bin/python bench/plan_quality.py [--seed N] [--fleets N] [--quiet]``

Scenarios are generated: 1-3 roles on datacenter GPUs (H100 SXM 200-700 W,
A100 SXM 100-400 W, L40S 100-350 W, A100 PCIe 150-250 W) with concave
power/throughput profiles of the shape measured on such GPUs (most of the
throughput at well under the maximum cap, flat near it), random GPUs per
replica, replica bounds and demand, and budgets from below the floor to more
than demand needs. Proportional, measured in the same run, is the baseline.
"Small" fleets have few replicas and a coarse cap grid so that brute force is
affordable; "fleet" scenarios are production-sized (5 W grid, up to 64
replicas). Exits 1 if Optimize ever differs from brute force.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "operator")]

from gpupower_operator.core.planner import (  # noqa: E402
    Plan,
    Problem,
    ProfilePoint,
    TargetProblem,
    brute_force,
    cap_grid,
    desired_replicas,
    floor_watts,
    optimize,
    proportional,
    target_watts,
)

GPUS = {
    "h100-sxm": (200, 700),
    "a100-sxm": (100, 400),
    "l40s": (100, 350),
    "a100-pcie": (150, 250),
}
BRUTE_FORCE_LIMIT = 200_000  # combinations of (replicas, cap) over all roles
BUDGET_SHARES = (0.9, 0.25, 0.5, 0.75, 1.0, 1.2)  # first of the floor, the rest of classic's need


@dataclass(frozen=True)
class Scenario:
    family: str
    fleet: int
    problem: Problem

    def roles(self) -> str:
        return "+".join(f"{t.name}" for t in self.problem.targets)


def concave_profile(rng: random.Random, low: int, high: int, peak: float) -> tuple[ProfilePoint, ...]:
    """Throughput rising steeply at low caps and flattening towards the maximum, like measured GPUs."""
    base = rng.uniform(0.3, 0.6)  # share of peak throughput left at the lowest cap
    bend = rng.uniform(2.0, 6.0)  # how early the curve flattens
    spacing = 50 if high - low <= 300 else 100
    points = []
    for watts in range(low, high + 1, spacing):
        x = (watts - low) / (high - low)
        share = base + (1 - base) * (1 - math.exp(-bend * x)) / (1 - math.exp(-bend))
        points.append(ProfilePoint(float(watts), round(peak * share, 3)))
    return tuple(points)


def fleet_targets(rng: random.Random, small: bool) -> tuple[TargetProblem, ...]:
    gpu = rng.choice(sorted(GPUS))
    low, high = GPUS[gpu]
    roles = rng.randint(1, 3)
    targets = []
    for name in ("prefill", "decode", "embed")[:roles]:
        peak = rng.uniform(5.0, 100.0)
        minimum = rng.choice((0, 1, 1, 2))
        maximum = minimum + (rng.randint(1, 4) if small else rng.randint(8, 62))
        # Demand that classic planning would meet with 30-95% of the replica bound at full power.
        demand = None if rng.random() < 0.05 else round(peak * maximum * rng.uniform(0.3, 0.95), 2)
        targets.append(
            TargetProblem(
                name=name,
                min_replicas=minimum,
                max_replicas=maximum,
                cap_min_watts=low,
                cap_max_watts=high,
                profile=concave_profile(rng, low, high, peak),
                demand=demand,
                gpus_per_replica=rng.choice((1, 1, 2, 4, 8)),
            )
        )
    return tuple(targets)


def scenarios(rng: random.Random, fleets: int) -> list[Scenario]:
    out = []
    for family, small, step in (("small", True, 50), ("fleet", False, 5)):
        for index in range(fleets):
            targets = fleet_targets(rng, small)
            base = Problem(total_watts=1.0, targets=targets, cap_step_watts=step)
            floor = floor_watts(base)
            classic = sum(target_watts(t, desired_replicas(t), t.cap_max_watts) for t in targets)
            for position, share in enumerate(BUDGET_SHARES):
                # The first budget is below the floor (fail closed), the others span classic's need.
                budget = floor * share if position == 0 else max(floor, classic * share)
                if budget <= 0:
                    continue
                out.append(Scenario(family, index, replace(base, total_watts=round(budget))))
    return out


def combinations(problem: Problem) -> int:
    count = 1
    for t in problem.targets:
        caps = len(cap_grid(t.cap_min_watts, t.cap_max_watts, problem.cap_step_watts))
        count *= (t.max_replicas - t.min_replicas + 1) * caps
    return count


def describe(result: Plan) -> str:
    return f"{result.served_fraction:7.1%} {result.watts:>9,.0f} W"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--fleets", type=int, default=30, help="fleets per family (6 budgets each)")
    parser.add_argument("--quiet", action="store_true", help="print the totals only")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cases = scenarios(rng, args.fleets)

    header = (
        f"{'family':<6} {'#':>3} {'roles':<20} {'budget W':>9} {'optimize':>19} "
        f"{'proportional':>19} {'served +':>9} {'brute force':>11}"
    )
    if not args.quiet:
        print(header)
    rows = []
    differences = 0
    checked = 0
    for case in cases:
        problem = case.problem
        best = optimize(problem)
        classic = proportional(problem)
        if combinations(problem) <= BRUTE_FORCE_LIMIT:
            checked += 1
            same = brute_force(problem) == best
            differences += not same
            verdict = "equal" if same else "DIFFERENT"
        else:
            verdict = "-"
        rows.append((case, best, classic))
        if not args.quiet:
            gain = (best.served_fraction - classic.served_fraction) * 100
            print(
                f"{case.family:<6} {case.fleet:>3} {case.roles():<20} {problem.total_watts:>9,.0f} "
                f"{describe(best)} {describe(classic)} {gain:>+8.1f}p {verdict:>11}"
            )

    print()
    print(
        f"plan quality, seed {args.seed}: {len(rows)} scenarios ({args.fleets} fleets x 2 families x budgets)"
    )
    for family in ("small", "fleet", "all"):
        chosen = [r for r in rows if family in ("all", r[0].family)]
        feasible = [r for r in chosen if r[1].feasible]
        best_served = statistics.mean(r[1].served_fraction for r in feasible)
        classic_served = statistics.mean(r[2].served_fraction for r in feasible)
        more = sum(r[1].served_fraction > r[2].served_fraction for r in feasible)
        less = sum(r[1].served_fraction < r[2].served_fraction for r in feasible)
        both_full = [r for r in feasible if r[1].served_fraction >= 1.0 and r[2].served_fraction >= 1.0]
        saved = [1 - r[1].watts / r[2].watts for r in both_full if r[2].watts > 0]
        infeasible = len(chosen) - len(feasible)
        print(
            f"  {family:<5}: mean served {best_served:.1%} (Optimize) vs "
            f"{classic_served:.1%} (Proportional), ratio {best_served / classic_served:.2f}x; "
            f"Optimize serves more in {more}/{len(feasible)}, less in {less}"
        )
        if saved:
            print(
                f"         where both serve all demand ({len(saved)}), Optimize uses "
                f"{statistics.mean(saved):.1%} fewer watts on average (median {statistics.median(saved):.1%})"
            )
        print(f"         {infeasible} scenario(s) below the floor: both return the floor, fail closed")
    print(f"  brute force: {checked} scenarios checked, {differences} different from Optimize")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
