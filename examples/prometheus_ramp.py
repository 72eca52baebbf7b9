"""Demo: the plan following a demand ramp read from a real Prometheus.

Starts the Debian ``prometheus`` binary on loopback, scraping a synthetic vLLM
and DCGM exporter (the test kit in ``tests/e2e/promkit.py``), ramps the arrival
rate of a decode role up and down, and prints each plan the operator's chain
(signals -> corrections -> planner) makes from what Prometheus answers. Midway
the GPUs start drawing 60 % of their caps: the power correction moves and the
plan spends the freed watts.

    .venv/bin/python examples/prometheus_ramp.py [--seconds-per-step 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "api"), str(REPO / "operator")]

from gpupower_api.models import BudgetStatus, TargetStatus, parse_spec  # noqa: E402
from gpupower_operator import planner  # noqa: E402
from gpupower_operator.shell.signalsource import SignalSource  # noqa: E402
from tests.e2e.promkit import PodTraffic, prometheus_binary, start_stack  # noqa: E402

WINDOW_SECONDS = 5
POINTS = (planner.ProfilePoint(200, 5), planner.ProfilePoint(400, 10))
# (arrivals in requests/s, fraction of its cap each GPU draws)
RAMP = [(10, 1.0), (25, 1.0), (45, 1.0), (70, 1.0), (70, 0.6), (70, 0.6), (40, 0.6), (15, 0.6)]

SPEC = {
    "totalWatts": 2000,
    "safeDefaultWatts": 250,
    "targets": [
        {
            "name": "decode",
            "workloadRef": {"name": "decode"},
            "maxReplicas": 12,
            "capWatts": {"min": 200, "max": 400},
            "profile": {
                "unit": "requests/s",
                "points": [{"watts": 200, "throughput": 5}, {"watts": 400, "throughput": 10}],
            },
            "preset": {"engine": "vllm", "windowSeconds": WINDOW_SECONDS},
        }
    ],
}


async def run(seconds_per_step: float) -> None:
    stack_iter = start_stack()
    stack = next(stack_iter)
    try:
        spec = parse_spec(
            SPEC
            | {
                "prometheus": {
                    "url": stack.url,
                    "intervalSeconds": 1,
                    "driftChecks": 2,
                    "replanIntervalSeconds": 0,
                    "demandStabilizationSeconds": 8,
                }
            }
        )
        source = SignalSource(default_url=None)
        status: BudgetStatus | None = None
        replicas, cap = 2, 400
        print(f"prometheus {stack.url}; budget {spec.total_watts} W; profile 5 req/s at 200 W .. 10 at 400 W")
        print("  t  arrivals  draw | demand  source       plan        watts  served  power_factor")
        started = time.monotonic()
        for arrivals, draw in RAMP:
            step_end = time.monotonic() + seconds_per_step
            while time.monotonic() < step_end:
                per_pod = arrivals / replicas
                served = min(per_pod, planner.throughput_at(POINTS, cap))
                for index in range(12):
                    pod = f"decode-5d8f7c-p{index:04d}"
                    if index < replicas:
                        traffic = PodTraffic(served, waiting=(per_pod - served) * WINDOW_SECONDS)
                        stack.exporter.set_traffic("demo", pod, traffic)
                        stack.exporter.set_gpu_power("demo", pod, 0, draw * cap)
                    else:
                        stack.exporter.remove_pod("demo", pod)
                signals = await source.signals("demo", "llama", spec, status)
                assert signals is not None
                plan = planner.plan(
                    planner.problem_from_spec(
                        spec, demand=signals.demand(), corrections=signals.corrections()
                    )
                )
                decode = plan.target("decode")
                replicas, cap = max(1, decode.replicas), decode.cap_watts
                status = BudgetStatus(
                    targets=[
                        TargetStatus(
                            name="decode",
                            desired_replicas=decode.desired_replicas,
                            planned_replicas=decode.replicas,
                            current_replicas=decode.replicas,
                            pods_annotated=decode.replicas,
                            cap_watts=decode.cap_watts,
                            projected_watts=decode.watts,
                            capacity=decode.capacity,
                            demand=decode.demand,
                            served_fraction=decode.served_fraction,
                            **signals.target_status("decode"),
                        )
                    ]
                )
                target = signals.targets["decode"]
                print(
                    f"{time.monotonic() - started:4.0f}  {arrivals:6.0f}  {draw:5.0%} | "
                    f"{(decode.demand or 0):6.1f}  {target.demand_source:<11}  "
                    f"{decode.replicas:2d} x {decode.cap_watts:3d} W  {decode.watts:6.0f}  "
                    f"{decode.served_fraction:5.0%}  {target.factors.power:.2f}"
                )
                await asyncio.sleep(1.0)
    finally:
        stack_iter.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-step", type=float, default=8.0)
    args = parser.parse_args()
    if prometheus_binary() is None:
        print("prometheus not installed: apt-get install prometheus", file=sys.stderr)
        return 1
    asyncio.run(run(args.seconds_per_step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
