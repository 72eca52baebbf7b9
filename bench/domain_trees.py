"""Generated trees of power domains for the allocation benchmarks: rows of racks, GPU nodes, budgets.

Each rack holds 8 nodes of 8 GPUs of one kind (H100 SXM 200-700 W, A100 SXM
100-400 W or L40S 100-350 W) and 10 budgets (a model each: a prefill and a
decode role, concave measured-like profiles) pinned to it. Priorities are 100
(one budget in five), 50 (three in ten) or 0; one budget in five has its own
totalWatts. A rack's PDU allows 45-85% of its GPUs' maximum power (30-70% in
"tight" trees) and a row's busway 75-95% of its racks' limits together, so
racks bind in some rows and rows in others. Idle GPUs (those no budget can use) are committed at their
lowest limit, and a few GPUs per rack run pods no budget manages.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "operator")]

from gpupower_operator.core.allocation import BudgetInput, DomainInput  # noqa: E402
from gpupower_operator.core.planner import Problem, ProfilePoint, TargetProblem  # noqa: E402

GPUS = {"h100-sxm": (200, 700), "a100-sxm": (100, 400), "l40s": (100, 350)}
# Throughput against the share of the cap range: prefill is compute-bound, decode memory-bound.
SHAPES = {
    "prefill": ((0.0, 0.40), (0.3, 0.72), (0.6, 0.92), (1.0, 1.0)),
    "decode": ((0.0, 0.62), (0.3, 0.86), (0.6, 0.97), (1.0, 1.0)),
}
PEAKS = (10.0, 20.0, 40.0)  # throughput of one replica at its highest cap, in the profile's unit
NODES_PER_RACK = 8
GPUS_PER_NODE = 8
BUDGETS_PER_RACK = 10


@dataclass(frozen=True)
class Tree:
    domains: list[DomainInput]
    budgets: list[BudgetInput]

    def label(self) -> str:
        rows = sum(1 for d in self.domains if d.parent is None)
        return (
            f"{rows} rows x {(len(self.domains) - rows) // max(rows, 1)} racks, {len(self.budgets)} budgets"
        )


def _role(rng: random.Random, name: str, gpu: str) -> TargetProblem:
    low, high = GPUS[gpu]
    peak = rng.choice(PEAKS)
    most = rng.randint(1, 4)
    return TargetProblem(
        name=name,
        min_replicas=rng.choice((0, 1)),
        max_replicas=most,
        cap_min_watts=low,
        cap_max_watts=high,
        profile=tuple(ProfilePoint(low + share * (high - low), peak * t) for share, t in SHAPES[name]),
        demand=peak * most * rng.uniform(0.3, 1.0),
        gpus_per_replica=rng.choice((1, 1, 2)),
    )


# A rack's PDU allows this share of its GPUs' maximum power (drawn uniformly); "tight" racks bind more.
RACK_SHARES = {"typical": (0.45, 0.85), "tight": (0.3, 0.7)}


def tree(rng: random.Random, rows: int = 10, racks: int = 10, racks_are: str = "typical") -> Tree:
    domains: list[DomainInput] = []
    budgets: list[BudgetInput] = []
    for r in range(rows):
        row = f"row-{r}"
        rack_domains = []
        for k in range(racks):
            name = f"rack-{r}-{k:02d}"
            gpu = rng.choice(list(GPUS))
            low, high = GPUS[gpu]
            used = 0
            for j in range(BUDGETS_PER_RACK):
                roles = (_role(rng, "prefill", gpu), _role(rng, "decode", gpu))
                used += sum(t.max_replicas * t.gpus_per_replica for t in roles)
                budgets.append(
                    BudgetInput(
                        namespace=f"team-{r}",
                        name=f"model-{k:02d}-{j}",
                        domain=name,
                        problem=Problem(total_watts=1.0, targets=roles),
                        priority=rng.choices((100, 50, 0), weights=(2, 3, 5))[0],
                        limit_watts=float(rng.randint(1500, 5000)) if rng.random() < 0.2 else None,
                    )
                )
            gpus = NODES_PER_RACK * GPUS_PER_NODE
            unmanaged = rng.randint(0, 2)
            idle = max(0, gpus - used - unmanaged)
            rack_domains.append(
                DomainInput(
                    name=name,
                    limit_watts=round(gpus * high * rng.uniform(*RACK_SHARES[racks_are])),
                    parent=row,
                    idle_watts=float(idle * low),
                    unmanaged_watts=float(unmanaged * 300),
                )
            )
        limits = sum(d.limit_watts for d in rack_domains)
        domains.append(DomainInput(name=row, limit_watts=round(limits * rng.uniform(0.75, 0.95))))
        domains.extend(rack_domains)
    return Tree(domains, budgets)
