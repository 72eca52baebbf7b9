"""Cost of one full agent reconcile on a node with 8 GPUs and 110 pods (the kubelet's default maximum).

Run: ``.venv/bin/python bench/agent_reconcile.py [--check]``

The reconcile measured is the agent's own (``Agent.reconcile``): read the GPU
mapping from a real PodResources gRPC server on a unix socket, read 8 limits
from the fake NVML, apply the trust rule to 110 pods against 4 budgets, decide
8 GPUs, export metrics. It runs on the informers' cached views, as the agent
does on every watch event and resync.

Baseline, measured in the same run: the same decision made the way a polling
agent makes it every tick, rebuilding every pod and budget view from the raw
API JSON (``pod_view`` / ``budget_view``: pydantic validation of each budget)
before deciding. ``--check`` exits non-zero when the median misses the target (< 5 ms); p99
is printed too (it includes the machine's scheduling noise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "agent")]

from gpupower_agent.agent import Agent  # noqa: E402
from gpupower_agent.cluster import PodKey, budget_view, pod_view  # noqa: E402
from gpupower_agent.metrics import AgentMetrics  # noqa: E402
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml  # noqa: E402
from gpupower_agent.podresources import FakePodResourcesServer, PodResourcesMapping  # noqa: E402

GPUS = 8
PODS = 110
BUDGETS = 4
TARGET_SECONDS = 0.005


def raw_budget(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": f"budget-{index}", "namespace": "llm"},
        "spec": {
            "totalWatts": 20000,
            "safeDefaultWatts": 300,
            "targets": [
                {
                    "name": role,
                    "workloadRef": {"name": f"{role}-{index}"},
                    "maxReplicas": 16,
                    "capWatts": {"min": 200, "max": 700},
                    "profile": {"points": [{"watts": w, "throughput": w / 100} for w in range(200, 701, 50)]},
                    "demand": 40,
                }
                for role in ("prefill", "decode")
            ],
        },
        "status": {
            "targets": [
                {
                    "name": role,
                    "selector": f"app=llm-{index},role={role}",
                    "desiredReplicas": 4,
                    "plannedReplicas": 4,
                    "capWatts": 500,
                    "projectedWatts": 2000.0,
                    "capacity": 20.0,
                    "servedFraction": 1.0,
                }
                for role in ("prefill", "decode")
            ]
        },
    }


def raw_pod(index: int) -> dict[str, Any]:
    """Pods 0..79 belong to budgets (10 per GPU, sharing it); 80..109 are other workloads."""
    budget = index % BUDGETS
    labels: dict[str, str] = {"app": f"llm-{budget}", "role": "decode" if index % 2 else "prefill"}
    annotations: dict[str, str] = {}
    if index < 80:
        annotations = {"gpupower.dev/budget": f"budget-{budget}", "gpupower.dev/power-limit-watts": "450"}
    else:
        labels = {"app": "web", "tier": "frontend"}
    return {
        "metadata": {
            "name": f"pod-{index}",
            "namespace": "llm",
            "uid": f"00000000-0000-0000-0000-{index:012d}",
            "labels": labels,
            "annotations": annotations,
            "resourceVersion": str(1000 + index),
        },
        "spec": {"nodeName": "bench-node", "containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": "Running"},
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(rounds: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp, FakePodResourcesServer(Path(tmp) / "kubelet.sock") as server:
        nvml = FakeNvml("bench-node", FakeGpuSpec(GPUS, GPU_MODELS["h100-sxm"]), Path(tmp) / "gpus.json")
        uuids = [gpu.uuid for gpu in nvml.gpus()]
        for index in range(80):
            server.allocate(PodKey("llm", f"pod-{index}"), [uuids[index % GPUS]])
        mapping = PodResourcesMapping(server.socket_path)
        agent = Agent("bench-node", nvml, mapping, AgentMetrics(), 250, Path(tmp) / "state.json")
        raw_pods = [raw_pod(i) for i in range(PODS)]
        raw_budgets = [raw_budget(i) for i in range(BUDGETS)]
        pods = [pod_view(p) for p in raw_pods]
        budgets = [budget_view(b) for b in raw_budgets]
        plan = await agent.reconcile(pods, budgets)  # first pass sets the caps
        assert plan is not None and all(d.target_watts == 450 for d in plan.decisions), plan

        cached: list[float] = []
        from_raw: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            await agent.reconcile(pods, budgets)
            cached.append(time.perf_counter() - started)
        for _ in range(rounds):
            started = time.perf_counter()
            await agent.reconcile([pod_view(p) for p in raw_pods], [budget_view(b) for b in raw_budgets])
            from_raw.append(time.perf_counter() - started)
        await mapping.close()
    return cached, from_raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--check", action="store_true", help="exit 1 when the median misses the 5 ms target")
    args = parser.parse_args()
    cached, from_raw = asyncio.run(measure(args.rounds))
    ms = 1000.0
    print(f"agent reconcile, {GPUS} GPUs x {PODS} pods, {BUDGETS} budgets, {args.rounds} rounds (ms)")
    print(f"{'':38} {'p50':>7} {'p99':>7} {'mean':>7}")
    for name, values in (
        ("agent (watch-fed cached views)", cached),
        ("baseline (rebuild views from raw JSON)", from_raw),
    ):
        print(
            f"{name:38} {percentile(values, 0.5) * ms:7.2f} {percentile(values, 0.99) * ms:7.2f}"
            f" {statistics.fmean(values) * ms:7.2f}"
        )
    median = percentile(cached, 0.5)
    verdict = "met" if median < TARGET_SECONDS else "MISSED"
    print(f"target: median < {TARGET_SECONDS * ms:.0f} ms a reconcile -> {verdict} ({median * ms:.2f} ms)")
    return 1 if args.check and median >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
