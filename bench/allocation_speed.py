"""How long the domain allocation takes for 10 rows x 10 racks and 1,000 budgets, against re-planning.

Run: ``.venv/bin/python bench/allocation_speed.py [--trees N] [--seed S] [--check]``

Each tree (bench/domain_trees.py) is allocated cold: the planner's memoized cap
tables are cleared first, so every profile's table is built inside the timing,
as in an operator that has just started. Times are this process's CPU time
(the build machine is shared, and other builds' load would otherwise count),
with the wall-clock time beside them. The baseline, measured in the same
run on the same trees, is the naive way to answer the allocation's questions:
each budget's least watts for a served fraction found by re-planning it
(bisecting ``planner.plan`` over its budget in milliwatts), as a loop over
budgets would. Both must give the same allocation (the run exits 1 if not).
``--check`` exits 1 when the median cold allocation takes 100 ms or more.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace

from domain_trees import RACK_SHARES, ROOT, Tree, tree

sys.path[:0] = [str(ROOT / "api"), str(ROOT / "operator")]

from gpupower_operator.core.allocation import Allocation, allocate  # noqa: E402
from gpupower_operator.core.planner import MAX_TOTAL_WATTS, Level, Problem, clear_cache, plan  # noqa: E402

GOAL_SECONDS = 0.100


class ReplanCurve:
    """A budget's served curve asked of the planner as a black box: one plan per probe of its budget."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.plans = 0
        self.floor = self.within(0)
        self.reach = plan(replace(problem, total_watts=MAX_TOTAL_WATTS)).served_fraction
        self._top = self.within(round(MAX_TOTAL_WATTS * 1000))

    def within(self, milliwatts: int) -> Level:
        self.plans += 1
        result = plan(replace(self.problem, total_watts=max(milliwatts, 1) / 1000))
        return Level(round(result.watts * 1000), result.served_fraction, result.gpus, ())

    def serving(self, fraction: float, start: Level | None = None) -> Level | None:
        start = start or self.floor
        if fraction <= start.served_fraction:
            return start
        if fraction > self.reach:
            return None
        at_start = self.within(start.milliwatts)
        if at_start.served_fraction >= fraction:
            return at_start  # the same watts serve more than ``start`` says
        low, high = start.milliwatts, self._top.milliwatts  # serves less than the fraction / at least it
        while high - low > 1:
            middle = (low + high) // 2
            if self.within(middle).served_fraction >= fraction:
                high = middle
            else:
                low = middle
        return self.within(high)


def timed(function: object, *args: object) -> tuple[float, float, Allocation]:
    """CPU seconds, wall seconds, and the result of ``function(*args)``.

    The garbage of the run before (the re-planning loop's above all) is collected
    first, so that no run pays for another's.
    """
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)  # type: ignore[operator]
    return time.process_time() - cpu, time.perf_counter() - wall, result


def same(a: Allocation, b: Allocation) -> bool:
    return [(x.key, x.milliwatts, x.served_fraction) for x in a.budgets] == [
        (x.key, x.milliwatts, x.served_fraction) for x in b.budgets
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--trees", type=int, default=5, help="trees allocated cold, each re-planned once")
    parser.add_argument("--racks", choices=sorted(RACK_SHARES), default="typical", help="how tight racks are")
    parser.add_argument("--check", action="store_true", help="exit 1 when the median misses the goal")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    trees: list[Tree] = [tree(rng, racks_are=args.racks) for _ in range(args.trees)]
    print(
        f"domain allocation speed, seed {args.seed}: {trees[0].label()}, {len(trees[0].domains)} domains, "
        f"{args.racks} racks"
    )
    print(
        f"{'tree':>4} {'cold ms':>8} {'(wall)':>8} {'warm ms':>8} {'re-plan s':>10} {'x cold':>7}"
        "  plans  limited by"
    )
    cold_times, naive_times = [], []
    for index, t in enumerate(trees):
        clear_cache()
        cold, cold_wall, result = timed(allocate, t.domains, t.budgets)
        warm, _, _ = timed(allocate, t.domains, t.budgets)
        curves: list[ReplanCurve] = []

        def replan_curve(problem: Problem, made: list[ReplanCurve] = curves) -> ReplanCurve:
            made.append(ReplanCurve(problem))
            return made[-1]

        naive, _, baseline = timed(allocate, t.domains, t.budgets, replan_curve)
        if not same(result, baseline):
            print(f"tree {index}: the re-planning loop allocated differently", file=sys.stderr)
            return 1
        cold_times.append(cold)
        naive_times.append(naive)
        kinds = Counter(str(b.limited_by) for b in result.budgets)
        print(
            f"{index:>4} {cold * 1000:>8.1f} {cold_wall * 1000:>8.1f} {warm * 1000:>8.1f} {naive:>10.2f}"
            f" {naive / cold:>6.0f}x  {sum(c.plans for c in curves):>6}"
            f"  {', '.join(f'{k} {n}' for k, n in kinds.most_common())}"
        )
    median, naive_median = statistics.median(cold_times), statistics.median(naive_times)
    met = median < GOAL_SECONDS
    print(
        f"cold allocation: median {median * 1000:.1f} ms CPU, max {max(cold_times) * 1000:.1f} ms over "
        f"{len(trees)} trees (goal < {GOAL_SECONDS * 1000:.0f} ms: {'met' if met else 'MISSED'}); "
        f"the re-planning loop on the same trees: median {naive_median:.2f} s ({naive_median / median:.0f}x)"
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
