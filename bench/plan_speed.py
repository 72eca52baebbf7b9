"""How long the planner takes as fleets grow, against the classic Proportional algorithm.

Run: ``.venv/bin/python bench/plan_speed.py [--check]``

Times are wall-clock on this machine, measured in this run; Proportional (a few
arithmetic steps per target) is the baseline each Optimize time is divided by.
"Cold" clears the planner's memoized per-target cap tables before every plan (a
fleet seen for the first time: what the operator meets when every budget has
its own targets); "warm" plans a new budget and new demand for a fleet already
seen (what the operator does on every resync). ``--check`` exits non-zero when
the target case misses its goals: a cold plan in under 10 ms (median) and 1,000
budgets, each with a fleet of its own and so each planned cold, in under 5 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "operator")]

from gpupower_operator.core.planner import (  # noqa: E402
    Plan,
    Problem,
    ProfilePoint,
    TargetProblem,
    cap_grid,
    clear_cache,
    optimize,
    proportional,
)

# Relative throughput of an H100-class GPU against its power cap (concave, flat near TDP).
SHAPE = ((100, 0.22), (200, 0.45), (300, 0.70), (400, 0.86), (500, 0.95), (600, 0.99), (700, 1.0))

TARGET_SINGLE_PLAN_SECONDS = 0.010
TARGET_THOUSAND_PLANS_SECONDS = 5.0


@dataclass(frozen=True)
class Size:
    roles: int
    replicas: int
    step_watts: int
    cap_min_watts: int = 100
    cap_max_watts: int = 700

    def label(self) -> str:
        caps = len(cap_grid(self.cap_min_watts, self.cap_max_watts, self.step_watts))
        return (
            f"{self.roles} roles x {self.replicas} replicas x {self.step_watts} W grid "
            f"({self.cap_min_watts}-{self.cap_max_watts} W, {caps} caps)"
        )


TARGET_CASE = Size(roles=2, replicas=64, step_watts=5)
SIZES = (
    Size(1, 8, 25),
    Size(1, 64, 5),
    TARGET_CASE,
    Size(3, 64, 5),
    Size(4, 128, 5),
    Size(2, 256, 5),
    Size(8, 64, 5),
    Size(16, 64, 5),
    Size(2, 1024, 5),
    Size(2, 64, 1),
)


def fleet(size: Size, rng: random.Random) -> Problem:
    """A fleet of the given size with random peaks, GPUs per replica and demand."""
    targets = []
    for index in range(size.roles):
        peak = rng.uniform(5.0, 50.0)
        gpus = rng.choice((1, 1, 2, 4, 8))
        targets.append(
            TargetProblem(
                name=f"role-{index}",
                min_replicas=rng.choice((0, 1, 2)),
                max_replicas=size.replicas,
                cap_min_watts=size.cap_min_watts,
                cap_max_watts=size.cap_max_watts,
                profile=tuple(ProfilePoint(w, share * peak) for w, share in SHAPE),
                demand=peak * size.replicas * rng.uniform(0.2, 0.9),
                gpus_per_replica=gpus,
            )
        )
    return Problem(total_watts=1.0, targets=tuple(targets), cap_step_watts=size.step_watts)


def with_new_budget_and_demand(problem: Problem, rng: random.Random) -> Problem:
    """The same fleet with another budget (tight to ample) and demand moved by up to +-30%."""
    full = sum(t.max_replicas * t.gpus_per_replica * t.cap_max_watts for t in problem.targets)
    targets = tuple(replace(t, demand=(t.demand or 0.0) * rng.uniform(0.7, 1.3)) for t in problem.targets)
    return replace(problem, targets=targets, total_watts=round(full * rng.uniform(0.1, 0.9)))


def timed(function: Callable[[Problem], Plan], problems: list[Problem], cold: bool) -> list[float]:
    seconds = []
    for problem in problems:
        if cold:
            clear_cache()
        start = time.perf_counter()
        function(problem)
        seconds.append(time.perf_counter() - start)
    return seconds


def milliseconds(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.3f} {max(values) * 1000:8.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeats", type=int, default=20, help="plans timed per size and mode")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target case misses a goal")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    print(f"planner speed, seed {args.seed}, {args.repeats} plans per size (median / max in ms)")
    print(f"{'size':<58} {'proportional':>17} {'optimize cold':>17} {'optimize warm':>17} {'cold/prop':>9}")
    for size in SIZES:
        base = fleet(size, rng)
        problems = [with_new_budget_and_demand(base, rng) for _ in range(args.repeats)]
        classic = timed(proportional, problems, cold=False)
        cold = timed(optimize, problems, cold=True)
        timed(optimize, problems[:1], cold=False)  # prime this fleet's cap tables
        warm = timed(optimize, problems, cold=False)
        ratio = statistics.median(cold) / statistics.median(classic)
        times = f"{milliseconds(classic)} {milliseconds(cold)} {milliseconds(warm)}"
        print(f"{size.label():<58} {times} {ratio:8.0f}x")

    print()
    print(f"target case: {TARGET_CASE.label()}")
    # 1,000 budgets that each have their own fleet (every plan cold), and 1,000 budgets of one fleet.
    own_fleets = [with_new_budget_and_demand(fleet(TARGET_CASE, rng), rng) for _ in range(1000)]
    base = fleet(TARGET_CASE, rng)
    one_fleet = [with_new_budget_and_demand(base, rng) for _ in range(1000)]
    single = timed(optimize, own_fleets[:50], cold=True)
    single_ok = statistics.median(single) < TARGET_SINGLE_PLAN_SECONDS
    print(
        f"  one plan, cold:      median {statistics.median(single) * 1000:.2f} ms, "
        f"max {max(single) * 1000:.2f} ms over 50 plans "
        f"(goal: median < {TARGET_SINGLE_PLAN_SECONDS * 1000:.0f} ms): {'met' if single_ok else 'MISSED'}"
    )
    clear_cache()
    own_fleets_seconds = sum(timed(optimize, own_fleets, cold=True))
    own_baseline = sum(timed(proportional, own_fleets, cold=False))
    thousand_ok = own_fleets_seconds < TARGET_THOUSAND_PLANS_SECONDS
    print(
        f"  1,000 budgets, each with its own fleet (every plan cold): Optimize {own_fleets_seconds:.3f} s, "
        f"Proportional {own_baseline:.3f} s ({own_fleets_seconds / own_baseline:.1f}x); "
        f"goal < {TARGET_THOUSAND_PLANS_SECONDS:.0f} s: {'met' if thousand_ok else 'MISSED'}"
    )
    clear_cache()
    one_fleet_seconds = sum(timed(optimize, one_fleet, cold=False))
    one_fleet_baseline = sum(timed(proportional, one_fleet, cold=False))
    print(
        f"  1,000 budgets of one fleet (warm after the first):      Optimize {one_fleet_seconds:.3f} s, "
        f"Proportional {one_fleet_baseline:.3f} s ({one_fleet_seconds / one_fleet_baseline:.1f}x)"
    )
    # Optimize and Proportional on the same budgets: what the time buys.
    served = [(optimize(p).served_fraction, proportional(p).served_fraction) for p in own_fleets[:200]]
    print(
        f"  on 200 of these budgets Optimize serves {statistics.mean(s for s, _ in served):.1%} of demand "
        f"on average, Proportional {statistics.mean(c for _, c in served):.1%}"
    )
    if args.check and not (single_ok and thousand_ok):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
