"""How much demand the priority-aware allocation serves against a static split by GPU share, same watts.

Run: ``.venv/bin/python bench/allocation_quality.py [--trees N] [--seed S]``

Trees come from bench/domain_trees.py (typical and tight racks, 1-10 rows of
10 racks). The baseline, computed in the same run on the same trees, is the
classic multi-deployment sizing: each domain's room split among its budgets by
their GPUs at maxReplicas, each budget planned (Optimize) within its share.
Both use the same watts: every domain's limit less what is committed outside
budgets. Served demand is each budget's served fraction (its least served
target's share of its demand), reported per priority tier.

The allocation promises, tier by tier from the highest priority, the
lexicographic max-min of served fractions (ties at one fraction go to the
cheaper step): where the split leaves every budget its floor, the allocation
is never behind it in that order, and the highest tier's least served budget is
never served less. The run exits 1 if either is ever not so. Lower tiers give
up what higher ones take: their served demand is lower by design, and said.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from domain_trees import ROOT, Tree, tree

sys.path[:0] = [str(ROOT / "api"), str(ROOT / "operator"), str(ROOT)]

from gpupower_operator.core.allocation import allocate, planned_problem, static_split  # noqa: E402
from gpupower_operator.core.planner import optimize  # noqa: E402
from tests.allocation_reference import by_tier  # noqa: E402

TIERS = (100, 50, 0)


def percent(fraction: float) -> str:
    return f"{fraction * 100:5.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--trees", type=int, default=24)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    trees: list[tuple[str, Tree]] = []
    for index in range(args.trees):
        racks_are = ("typical", "tight")[index % 2]
        trees.append((racks_are, tree(rng, rows=rng.choice((1, 2, 5, 10)), racks_are=racks_are)))

    served: dict[str, dict[int, list[float]]] = {
        "allocation": {t: [] for t in TIERS},
        "static": {t: [] for t in TIERS},
    }
    least_gain: list[float] = []  # highest tier's least served budget, per tree
    top_gain: list[float] = []  # highest tier's mean served fraction, per tree
    overall_lower = split_short = behind = 0
    print(f"priority-aware allocation vs static split by GPU share, seed {args.seed}, {len(trees)} trees")
    print(
        f"{'tree':>4} {'racks':<8} {'budgets':>7}  {'p100 least':>17}  {'p100 mean':>17}  {'p0 mean':>17}"
        "  note"
    )
    for index, (racks_are, t) in enumerate(trees):
        result = allocate(t.domains, t.budgets)
        shares = static_split(t.domains, t.budgets)
        static = {b.key: optimize(planned_problem(b, shares[b.key])) for b in t.budgets}
        ours = {b.key: b.served_fraction for b in result.budgets}
        theirs = {key: plan.served_fraction for key, plan in static.items()}
        note = ""
        if not all(plan.feasible for plan in static.values()):
            split_short += 1  # some share is below a floor: the split itself overshoots there
            note = "split below some floor"
        elif by_tier(t.budgets, {b.key: b.milliwatts for b in result.budgets}) < by_tier(
            t.budgets, {k: round(p.watts * 1000) for k, p in static.items()}
        ):
            behind += 1
            note = "BEHIND the split"
        tiers = {tier: [b.key for b in t.budgets if b.priority == tier] for tier in TIERS}
        for tier, keys in tiers.items():
            served["allocation"][tier] += [ours[k] for k in keys]
            served["static"][tier] += [theirs[k] for k in keys]
        top = tiers[TIERS[0]]
        least = (min(ours[k] for k in top), min(theirs[k] for k in top))
        if least[0] < least[1] and not note:
            behind += 1
            note = "HIGHEST TIER LESS SERVED"
        least_gain.append(least[0] - least[1])
        top_mean = (statistics.mean(ours[k] for k in top), statistics.mean(theirs[k] for k in top))
        top_gain.append(top_mean[0] - top_mean[1])
        low = tiers[TIERS[-1]]
        low_mean = (statistics.mean(ours[k] for k in low), statistics.mean(theirs[k] for k in low))
        if statistics.mean(ours.values()) < statistics.mean(theirs.values()):
            overall_lower += 1
        print(
            f"{index:>4} {racks_are:<8} {len(t.budgets):>7}  {percent(least[0])} vs {percent(least[1])}"
            f"  {percent(top_mean[0])} vs {percent(top_mean[1])}"
            f"  {percent(low_mean[0])} vs {percent(low_mean[1])}"
            f"  {note}"
        )
    print()
    print("mean served fraction per tier (allocation vs static split):")
    for tier in TIERS:
        mine, split = served["allocation"][tier], served["static"][tier]
        full = (sum(f >= 1 for f in mine), sum(f >= 1 for f in split))
        print(
            f"  priority {tier:>3}: {percent(statistics.mean(mine))} vs {percent(statistics.mean(split))}"
            f"  (budgets fully served: {full[0]} vs {full[1]} of {len(mine)})"
        )
    print(
        f"highest tier, least served budget: median gain {statistics.median(least_gain) * 100:+.1f} points, "
        f"never lower: {'yes' if min(least_gain) >= 0 else 'NO'} (min {min(least_gain) * 100:+.1f})"
    )
    print(f"highest tier, mean served: median gain {statistics.median(top_gain) * 100:+.1f} points")
    print(
        f"trees where the allocation is behind the split in its order, tier by tier: {behind} of "
        f"{len(trees) - split_short} (the split left some budget below its floor in {split_short} more); "
        f"mean over all tiers lower than the split's: {overall_lower} of {len(trees)} (lower tiers yield)"
    )
    return 1 if behind else 0


if __name__ == "__main__":
    sys.exit(main())
