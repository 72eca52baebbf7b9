"""Annotation-to-NVML latency: from a pod's cap annotation being written to the GPU holding the new limit.

Run: ``.venv/bin/python bench/agent_latency.py [--samples 20] [--poll-samples 4] [--check]``

Real: the control plane (envtest kit), the agent process under its own
ServiceAccount, its watches, a PodResources gRPC server. Simulated: the GPUs,
two ways in the same run: the fake NVML, and the real NVML adapter (pynvml) on
the stand-in libnvidia-ml.so.1 (tests/nvmlstub); their limit is read back from
the fake's or the stand-in's file every 2 ms. The two agents run side by side
and their samples alternate, so both see the same machine. The clock starts just
before the PATCH of the annotation is sent and stops when the GPU holds the new
limit.

Baseline, measured in the same run: the classic design that polls every 15 s.
It is the same agent code (the same list calls and the same reconcile) driven by
a 15 s timer instead of watches, on its own node; annotations land at random
moments of its cycle, as they do in production. ``--check`` exits non-zero when
either agent's worst case misses the 1 s target.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent_benchkit import (
    BUDGET,
    NAMESPACE,
    budget_with_grant,
    control_plane_with_crd,
    populate_node,
    start_node_agent,
)
from kubernetes_asyncio import client, config

from gpupower_agent.agent import Agent
from gpupower_agent.apiclient import ApiClient, kubeconfig_credentials
from gpupower_agent.kube import ApiHealth, budget_informer, pod_informer
from gpupower_agent.metrics import AgentMetrics
from gpupower_agent.nvml import GPU_MODELS, FakeGpuSpec, FakeNvml
from gpupower_agent.podresources import FakePodResourcesServer, PodResourcesMapping
from gpupower_api.contract import POWER_LIMIT_ANNOTATION
from tests.e2e.agentkit import AgentProcess

TARGET_SECONDS = 1.0
CAPS_WATTS = (400, 420, 440, 460, 480)


async def set_cap(core: client.CoreV1Api, pod: str, watts: int) -> float:
    """Write the annotation; return the time just before the request was sent."""
    started = time.perf_counter()
    await core.patch_namespaced_pod(
        pod, NAMESPACE, {"metadata": {"annotations": {POWER_LIMIT_ANNOTATION: str(watts)}}}
    )
    return started


async def wait_until(predicate: object, timeout_seconds: float) -> float:
    deadline = time.perf_counter() + timeout_seconds
    while time.perf_counter() < deadline:
        if predicate():  # type: ignore[operator]
            return time.perf_counter()
        await asyncio.sleep(0.002)
    raise TimeoutError(f"the GPU did not take the new limit within {timeout_seconds:g}s")


async def measure_watch_agents(
    cp_kubeconfig: Path, agents: list[tuple[AgentProcess, str]], samples: int
) -> list[list[float]]:
    """Latencies of each (agent, its pod), the agents' samples alternating."""
    await config.load_kube_config(config_file=str(cp_kubeconfig))
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    latencies: list[list[float]] = [[] for _ in agents]
    try:
        for index in range(samples):
            watts = CAPS_WATTS[index % len(CAPS_WATTS)]
            for (agent, pod), measured in zip(agents, latencies, strict=True):
                started = await set_cap(core, pod, watts)
                done = await wait_until(lambda agent=agent, watts=watts: agent.limit(0) == watts, 20)
                measured.append(done - started)
                await asyncio.sleep(random.uniform(0.05, 0.3))
    finally:
        await api.close()
    return latencies


async def measure_polling_baseline(
    cp_kubeconfig: Path, workdir: Path, node: str, pod: str, samples: int, interval_seconds: float
) -> list[float]:
    """The same agent code without watches: list pods and budgets, reconcile, sleep ``interval_seconds``."""
    await config.load_kube_config(config_file=str(cp_kubeconfig))
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    reader = ApiClient(kubeconfig_credentials(cp_kubeconfig))
    nvml = FakeNvml(node, FakeGpuSpec(8, GPU_MODELS["h100-sxm"]), workdir / "poll-gpus.json")
    uuid0 = nvml.gpus()[0].uuid
    mapping = PodResourcesMapping(workdir / "kubelet.sock")
    agent = Agent(node, nvml, mapping, AgentMetrics(), 250, workdir / "poll-state.json")
    health = ApiHealth(60)
    pods = pod_informer(reader, node, None, lambda: None, health, lambda _: None)
    budgets = budget_informer(reader, None, lambda: None, health, lambda _: None)

    async def poll_forever() -> None:
        while True:
            await pods.list()
            await budgets.list()
            await agent.reconcile(list(pods.items.values()), list(budgets.items.values()))
            await asyncio.sleep(interval_seconds)

    poller = asyncio.create_task(poll_forever())
    latencies: list[float] = []
    try:
        await wait_until(lambda: nvml.power_limit_watts(uuid0) == 450, interval_seconds + 10)
        for index in range(samples):
            await asyncio.sleep(random.uniform(0, interval_seconds))  # a random moment of the poll cycle
            watts = CAPS_WATTS[index % len(CAPS_WATTS)]
            started = await set_cap(core, pod, watts)
            done = await wait_until(
                lambda watts=watts: nvml.power_limit_watts(uuid0) == watts, interval_seconds + 10
            )
            latencies.append(done - started)
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await mapping.close()
        await api.close()
    return latencies


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"{name:34} {len(values):>3} {statistics.median(values) * 1000:9.0f}"
        f" {statistics.fmean(values) * 1000:9.0f} {p95 * 1000:9.0f} {max(values) * 1000:9.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="annotation changes for the agent")
    parser.add_argument("--poll-samples", type=int, default=4, help="annotation changes for the baseline")
    parser.add_argument("--poll-interval-seconds", type=float, default=15.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when the worst case is 1 s or more")
    args = parser.parse_args()

    with control_plane_with_crd() as cp, tempfile.TemporaryDirectory() as tmp:
        budget_with_grant(cp)
        fake = start_node_agent(cp, Path(tmp) / "watch", "bench-watch")
        stub = start_node_agent(cp, Path(tmp) / "stub", "bench-stub", nvml="stub")
        with (
            FakePodResourcesServer(fake.socket_path) as fake_server,
            FakePodResourcesServer(stub.socket_path) as stub_server,
        ):
            pods = []
            for agent, server in ((fake, fake_server), (stub, stub_server)):
                agent.start()
                pods.append(populate_node(cp, server, agent, pods=1, gpu_pods=1, cap_watts=450)[0])
                agent.wait_limit(0, 450, timeout=20)
            watch_latencies, stub_latencies = asyncio.run(
                measure_watch_agents(cp.kubeconfig, [(fake, pods[0]), (stub, pods[1])], args.samples)
            )
            fake.stop()
            stub.stop()

        poll_dir = Path(tmp) / "poll"
        poll_dir.mkdir()
        cp.add_node("bench-poll", gpus=8)
        descriptor = AgentProcess("bench-poll", cp.kubeconfig, poll_dir, poll_dir / "kubelet.sock")
        with FakePodResourcesServer(descriptor.socket_path) as server:
            poll_pod = populate_node(cp, server, descriptor, pods=1, gpu_pods=1, cap_watts=450)[0]
            poll_latencies = asyncio.run(
                measure_polling_baseline(
                    cp.kubeconfig,
                    poll_dir,
                    "bench-poll",
                    poll_pod,
                    args.poll_samples,
                    args.poll_interval_seconds,
                )
            )

    print(f"annotation -> GPU limit latency (ms), budget {BUDGET!r}, real API server, simulated GPUs")
    print(f"{'':34} {'n':>3} {'median':>9} {'mean':>9} {'p95':>9} {'max':>9}")
    print(summary("agent, fake NVML", watch_latencies))
    print(summary("agent, real NVML on the stand-in", stub_latencies))
    print(summary(f"baseline (poll every {args.poll_interval_seconds:g} s)", poll_latencies))
    worst = max(watch_latencies + stub_latencies)
    speedup = statistics.fmean(poll_latencies) / statistics.fmean(watch_latencies)
    verdict = "met" if worst < TARGET_SECONDS else "MISSED"
    print(
        f"target: every change applied within {TARGET_SECONDS:g} s -> {verdict} (worst {worst * 1000:.0f} ms)"
    )
    print(f"mean latency {speedup:.0f}x lower than the polling baseline")
    median_ratio = statistics.median(stub_latencies) / statistics.median(watch_latencies)
    mean_ratio = statistics.fmean(stub_latencies) / statistics.fmean(watch_latencies)
    spread = statistics.pstdev(watch_latencies) / statistics.fmean(watch_latencies)
    print(
        f"real NVML on the stand-in vs the fake: median {median_ratio:.2f}x, mean {mean_ratio:.2f}x"
        f" (the fake's own spread: {spread:.0%} of its mean)"
    )
    return 1 if args.check and worst >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
