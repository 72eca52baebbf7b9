"""What oversubscription buys: demand served at the same totalWatts, with and without it, on a draw trace.

Run: ``.venv/bin/python bench/oversubscription_value.py [--seconds 3600] [--seed 7]``

Pure simulation (no processes): the planner sizes one decode role for a
budget twice — by default (every GPU counted at its cap) and oversubscribed
(counted at what the trace says the GPUs draw, the caps bounded at
``--max-ratio`` times the budget) — then a synthetic per-GPU draw trace is
replayed second by second over each fleet, split into nodes of 8 GPUs, each
node running the agent's real draw-guard decision (``gpupower_agent.guard``)
once a second. The trace: most of the time each GPU draws 60-80 % of its cap
(a slow random walk); now and then a spike puts a fraction of the GPUs at
their cap for a few seconds. A replica serves the profile's throughput at its
cap, or at the guard's limit while the guard holds it below what it would draw.

Printed beside each other, measured in the same run: the demand served by
both fleets, the watt-seconds above the budget for the oversubscribed fleet
with the guard and without it (the guard's reaction only), and the worst
second.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in ("api", "operator", "agent"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from gpupower_agent.guard import GuardGpu, GuardState, effective_limit, step  # noqa: E402
from gpupower_api.models import Oversubscription  # noqa: E402
from gpupower_operator.core.planner import (  # noqa: E402
    Problem,
    ProfilePoint,
    TargetProblem,
    guardable,
    plan,
    throughput_at,
)

PROFILE = (ProfilePoint(200, 5.0), ProfilePoint(400, 8.5), ProfilePoint(700, 10.0))  # decode-like, req/s
GPUS_PER_NODE = 8
MIN_WATTS = 200


@dataclass(frozen=True)
class Fleet:
    replicas: int
    cap_watts: int
    share_watts: float  # per GPU: cap x the factor planned with


def size(budget: float, factor: float, max_ratio: float | None, demand: float) -> Fleet:
    """The planner's fleet for the budget: by default, or oversubscribed at ``max_ratio`` with ``factor``."""
    target = TargetProblem(
        name="decode",
        min_replicas=1,
        max_replicas=400,
        cap_min_watts=MIN_WATTS,
        cap_max_watts=700,
        profile=PROFILE,
        demand=demand,
    )
    problem = Problem(total_watts=budget, targets=(target,), cap_step_watts=25)
    if max_ratio is not None:
        # As problem_from_spec builds it: on the draw, at caps the guard can hold, or the default if better.
        drawing = guardable(replace(target, power_factor=factor), MIN_WATTS)
        problem = replace(problem, targets=(drawing,), cap_budget_watts=budget * max_ratio, plain=problem)
    result = plan(problem)
    planned = result.target("decode")
    # The guard's share, as the operator publishes it: the planned draw scaled up to the whole budget.
    share = min(float(planned.cap_watts), planned.gpu_draw_watts * max(1.0, budget / result.watts))
    return Fleet(planned.replicas, planned.cap_watts, share)


def trace(gpus: int, seconds: int, rng: random.Random) -> list[list[float]]:
    """Per second, each GPU's draw as a fraction of its cap."""
    level = [rng.uniform(0.6, 0.8) for _ in range(gpus)]
    spike_until = 0
    spiking: set[int] = set()
    out: list[list[float]] = []
    for second in range(seconds):
        level = [min(0.8, max(0.6, x + rng.gauss(0, 0.01))) for x in level]
        if second >= spike_until and rng.random() < 0.02:  # a spike about every 50 s
            spiking = set(rng.sample(range(gpus), k=max(1, int(gpus * rng.uniform(0.1, 0.4)))))
            spike_until = second + rng.randint(3, 15)
        if second >= spike_until:
            spiking = set()
        out.append([1.0 if i in spiking else level[i] for i in range(gpus)])
    return out


@dataclass
class Replay:
    served: float = 0.0  # request-seconds
    over_watt_seconds: float = 0.0
    worst_over_watts: float = 0.0


def replay(fleet: Fleet, fractions: list[list[float]], budget: float, guarded: bool) -> Replay:
    settings = Oversubscription(max_ratio=3.0)
    nodes = [
        list(range(i, min(i + GPUS_PER_NODE, fleet.replicas)))
        for i in range(0, fleet.replicas, GPUS_PER_NODE)
    ]
    states = [GuardState() for _ in nodes]
    result = Replay()
    for second, row in enumerate(fractions):
        total = 0.0
        for n, members in enumerate(nodes):
            gpus = [GuardGpu(str(i), fleet.cap_watts, fleet.share_watts, MIN_WATTS, None) for i in members]
            limits = {g.uuid: effective_limit(states[n], g) if guarded else fleet.cap_watts for g in gpus}
            wanted = {g.uuid: row[int(g.uuid)] * fleet.cap_watts for g in gpus}
            draws = {u: min(limits[u], watts) for u, watts in wanted.items()}
            total += sum(draws.values())
            # Held below what it would draw, a replica serves at the guard's limit; the others as planned.
            result.served += sum(
                throughput_at(PROFILE, limits[u] if wanted[u] > limits[u] else fleet.cap_watts)
                for u in wanted
            )
            if guarded:
                readings = [
                    GuardGpu(g.uuid, g.cap_watts, g.share_watts, g.min_watts, draws[g.uuid]) for g in gpus
                ]
                states[n] = step(settings, readings, states[n], float(second)).state
        over = max(0.0, total - budget)
        result.over_watt_seconds += over
        result.worst_over_watts = max(result.worst_over_watts, over)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-watts", type=float, default=40_000)
    parser.add_argument("--max-ratios", type=float, nargs="+", default=[1.2, 1.3, 1.5])
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    demand = 10_000.0  # far more than the budget serves: the budget binds
    plain = size(args.budget_watts, 1.0, None, demand)
    # The factor the operator's power correction converges to on this trace: its mean draw.
    sample = trace(400, args.seconds, random.Random(args.seed + 1))
    factor = sum(sum(row) for row in sample) / sum(len(row) for row in sample)
    fleets = {ratio: size(args.budget_watts, factor, ratio, demand) for ratio in args.max_ratios}
    widest = max([plain.replicas, *(f.replicas for f in fleets.values())])
    fractions = trace(widest, args.seconds, random.Random(args.seed))
    base = replay(plain, [row[: plain.replicas] for row in fractions], args.budget_watts, guarded=False)

    print(f"one decode role, {args.budget_watts:,.0f} W, {args.seconds} s of draw trace (seed {args.seed})")
    print(f"  power factor the correction converges to on the trace (its mean draw): {factor:.3f}")
    print(
        f"  {'accounting':<22} {'fleet':>16} {'caps W':>8} {'served req/s':>13} "
        f"{'above budget W.s (worst s)':>28} {'without the guard':>26}"
    )

    def row(name: str, fleet: Fleet, served: float, guarded: str, unguarded: str) -> None:
        print(
            f"  {name:<22} {fleet.replicas:>5} x {fleet.cap_watts:>4} W "
            f"{fleet.replicas * fleet.cap_watts:>8,} "
            f"{served / args.seconds:>13,.0f} {guarded:>28} {unguarded:>26}"
        )

    row("default", plain, base.served, f"{base.over_watt_seconds:,.0f} ({base.worst_over_watts:,.0f})", "-")
    for ratio, fleet in fleets.items():
        rows = [row_[: fleet.replicas] for row_ in fractions]
        held = replay(fleet, rows, args.budget_watts, guarded=True)
        free = replay(fleet, rows, args.budget_watts, guarded=False)
        row(
            f"oversubscribed x{ratio:g}",
            fleet,
            held.served,
            f"{held.over_watt_seconds:,.0f} ({held.worst_over_watts:,.0f})",
            f"{free.over_watt_seconds:,.0f} ({free.worst_over_watts:,.0f})",
        )
        print(f"    served {held.served / base.served:.2f}x the default's, with the guard")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
