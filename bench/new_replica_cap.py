"""A new replica's GPU capped before it draws: from the kubelet allocating its GPU to the GPU holding its cap.

Run: ``.venv/bin/python bench/new_replica_cap.py [--pods 20] [--resync-seconds 10] [--check]``

Real: the control plane (envtest kit), two agent processes under their own
ServiceAccount with pod-bound tokens, their watches, the PodResources gRPC
servers. Simulated: the kubelets (the demo's node simulator: the pod is bound,
then ``--admit-seconds`` later its GPU is allocated and the pod turns Pending /
ContainerCreating, then ``--start-seconds`` later its container runs) and the
GPUs (the fake NVML; its state file is read every 2 ms). Each pod is created
bound to its node and already annotated with its cap, as the operator annotates
replicas as soon as they appear; the clock starts when the simulated kubelet
allocates the GPU and stops when the GPU holds the cap.

Two agents in the same run, on two nodes, their pods alternating:
- following the kubelet (the default): woken by the pod's status changes, and
  re-reading the GPU mapping every 0.2 s while a pod awaits its GPUs;
- the baseline, ``--device-poll-seconds 0``: woken only by annotation and label
  changes and by its resync (``--resync-seconds``, 30 s by default in
  production), which is how the agent behaved before.

``--check`` exits non-zero when the following agent's p99 misses 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent_benchkit import BUDGET, NAMESPACE, budget_with_grant, control_plane_with_crd, percentile

from demo.nodesim import NodeSimulator, running_simulators
from gpupower_agent.cluster import PodKey
from tests.e2e.agentkit import AgentProcess, agent_kubeconfig, cap_annotations, pod_manifest
from tests.envtest import ControlPlane

TARGET_SECONDS = 0.5
CAP_WATTS = 250


def measure_one(
    cp: ControlPlane, simulator: NodeSimulator, agent: AgentProcess, name: str, timeout_seconds: float
) -> float:
    """Create one bound, annotated pod; seconds from its GPU's allocation to the GPU holding the cap."""
    key = PodKey(NAMESPACE, name)
    cp.apply(
        pod_manifest(name, NAMESPACE, agent.node_name, {"app": "llm"}, cap_annotations(BUDGET, CAP_WATTS))
    )
    deadline = time.monotonic() + timeout_seconds
    allocation = None
    while time.monotonic() < deadline:
        allocation = simulator.allocations().get(key)
        if allocation is not None:
            limits = agent.limits()
            if all(limits.get(uuid) == CAP_WATTS for uuid in allocation.gpu_uuids):
                capped_at = time.monotonic()
                cp.kubectl("delete", "pod", name, "-n", NAMESPACE, "--grace-period=0", "--force")
                return capped_at - allocation.allocated_at
        time.sleep(0.002)
    raise SystemExit(
        f"pod {name}: GPU not at {CAP_WATTS} W within {timeout_seconds:g}s (allocated: {allocation})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pods per agent")
    parser.add_argument("--resync-seconds", type=float, default=10.0, help="both agents' resync")
    parser.add_argument("--admit-seconds", type=float, default=0.5, help="bind -> devices allocated")
    parser.add_argument("--start-seconds", type=float, default=2.0, help="devices allocated -> running")
    parser.add_argument("--check", action="store_true", help=f"fail when the p99 misses {TARGET_SECONDS:g} s")
    args = parser.parse_args()

    with control_plane_with_crd() as cp, tempfile.TemporaryDirectory() as tmp:
        budget_with_grant(cp, grant_watts=300)
        modes: dict[str, list[float]] = {"following the kubelet": [], "baseline (resync only)": []}
        setups = []
        for index, extra in enumerate((["--device-poll-seconds", "0.2"], ["--device-poll-seconds", "0"])):
            node = f"bench-node-{index}"
            workdir = Path(tmp) / node
            workdir.mkdir()
            cp.add_node(node, gpus=8)
            simulator = NodeSimulator(
                node,
                8,
                workdir / "kubelet.sock",
                admit_seconds=args.admit_seconds,
                start_seconds=args.start_seconds,
            )
            agent = AgentProcess(
                node_name=node,
                kubeconfig=agent_kubeconfig(cp, workdir, node),
                workdir=workdir,
                socket_path=simulator.socket_path,
                extra_args=[*extra, "--resync-seconds", str(args.resync_seconds)],
            )
            setups.append((simulator, agent))
        with running_simulators(cp.kubeconfig, [simulator for simulator, _ in setups]):
            for _, agent in setups:
                agent.start()
            try:
                timeout = args.resync_seconds + args.admit_seconds + args.start_seconds + 10
                for number in range(args.pods):
                    for (simulator, agent), samples in zip(setups, modes.values(), strict=True):
                        samples.append(
                            measure_one(cp, simulator, agent, f"p{number}-{agent.node_name}", timeout)
                        )
            finally:
                for _, agent in setups:
                    agent.stop()

    print(
        f"new replica's GPU: kubelet allocates it -> it holds its {CAP_WATTS} W cap ({args.pods} pods each)"
    )
    print(
        f"  simulated kubelet: allocate {args.admit_seconds:g} s after bind, start {args.start_seconds:g} s "
        f"after allocate; resync {args.resync_seconds:g} s"
    )
    rows = {}
    for mode, samples in modes.items():
        rows[mode] = (statistics.median(samples), percentile(samples, 0.99), max(samples))
        p50, p99, worst = rows[mode]
        print(
            f"  {mode:<24} p50 {p50 * 1000:7.0f} ms   p99 {p99 * 1000:7.0f} ms   worst {worst * 1000:7.0f} ms"
        )
    follow, base = rows["following the kubelet"], rows["baseline (resync only)"]
    print(f"  baseline / following: p50 {base[0] / follow[0]:.0f}x   p99 {base[1] / follow[1]:.0f}x")
    before_start = sum(1 for s in modes["baseline (resync only)"] if s > args.start_seconds)
    print(
        f"  baseline pods still uncapped when their container started ({args.start_seconds:g} s after "
        f"allocation): {before_start} of {args.pods}; following: "
        f"{sum(1 for s in modes['following the kubelet'] if s > args.start_seconds)} of {args.pods}"
    )
    if args.check and follow[1] > TARGET_SECONDS:
        print(f"FAIL: p99 {follow[1]:.3f} s > {TARGET_SECONDS:g} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
