"""Steady-state memory (RSS) of the agent process on a busy node: 8 GPUs, 110 pods, caps changing.

Run: ``.venv/bin/python bench/agent_rss.py [--seconds 20] [--check]``

Real: the control plane (envtest kit), the agent process under its own
ServiceAccount, its watches and metrics server, a PodResources gRPC server.
Fake: the GPUs. 110 pods on the node (80 sharing the 8 GPUs with caps, 30
others); during the measurement a pod's cap changes every 0.5 s and
``/metrics`` is scraped every second, so the agent is working, not idle. RSS
is sampled every second (psutil); the figure is the maximum.

Baselines, measured in the same run: idle Python processes that only import
libraries and sleep. "Floor": the libraries the agent runs on (grpcio,
protobuf, prometheus-client, pydantic, PyYAML), below which no Python agent of
this design can go. "Generated client": kubernetes-asyncio's generated client
and aiohttp on top of the same, what an agent built on that client starts
from before doing anything (its thousand model classes are why the agent
talks to the API through its own small client). ``--check`` exits non-zero
when the agent's maximum reaches the 64 MiB target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from agent_benchkit import (
    BUDGET,
    NAMESPACE,
    budget_with_grant,
    control_plane_with_crd,
    populate_node,
    start_node_agent,
)

from gpupower_agent.podresources import FakePodResourcesServer
from gpupower_api.contract import POWER_LIMIT_ANNOTATION

TARGET_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024
FLOOR_IMPORTS = "import asyncio, ssl, grpc, grpc.aio, google.protobuf, prometheus_client, pydantic, yaml"
GENERATED_CLIENT_IMPORTS = (
    FLOOR_IMPORTS + ", kubernetes_asyncio.client, kubernetes_asyncio.config, aiohttp.web"
)


def idle_rss_bytes(imports: str) -> int:
    """RSS of an idle interpreter that has run ``imports``."""
    process = subprocess.Popen([sys.executable, "-c", f"{imports}; import time; time.sleep(30)"])
    try:
        time.sleep(4)
        return int(psutil.Process(process.pid).memory_info().rss)
    finally:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measurement")
    parser.add_argument("--check", action="store_true", help="exit 1 when the maximum reaches 64 MiB")
    args = parser.parse_args()

    with control_plane_with_crd() as cp, tempfile.TemporaryDirectory() as tmp:
        budget_with_grant(cp)
        agent = start_node_agent(cp, Path(tmp), "bench-rss")
        with FakePodResourcesServer(agent.socket_path) as server:
            agent.start()
            names = populate_node(cp, server, agent, pods=110, gpu_pods=80, cap_watts=450)
            for index in range(agent.gpus):
                agent.wait_limit(index, 450, timeout=30)
            assert agent.process is not None
            process = psutil.Process(agent.process.pid)
            samples: list[int] = []
            started = time.monotonic()
            step = 0
            while time.monotonic() - started < args.seconds:
                # move all the pods of one GPU together, so the caps agree and the GPU follows
                watts = 400 + 10 * (step % 5)
                gpu = step % agent.gpus
                for name in names[gpu:80:8]:
                    cp.kubectl(
                        "annotate",
                        "pod",
                        name,
                        "-n",
                        NAMESPACE,
                        "--overwrite",
                        f"{POWER_LIMIT_ANNOTATION}={watts}",
                    )
                agent.metrics()
                samples.append(int(process.memory_info().rss))
                step += 1
                time.sleep(0.5)
            agent.wait_limit((step - 1) % agent.gpus, 400 + 10 * ((step - 1) % 5), timeout=10)
            agent.stop()
    floor = idle_rss_bytes(FLOOR_IMPORTS)
    generated = idle_rss_bytes(GENERATED_CLIENT_IMPORTS)

    print(
        f"agent RSS (MiB), 8 GPUs x 110 pods, budget {BUDGET!r}, {len(samples)} samples in {args.seconds:g} s"
    )
    print(f"{'':52} {'max':>7} {'last':>7}")
    print(f"{'agent (steady state, caps changing)':52} {max(samples) / MIB:7.1f} {samples[-1] / MIB:7.1f}")
    print(f"{'floor (idle python + the agent libraries)':52} {floor / MIB:7.1f}")
    print(f"{'baseline (idle python + generated kubernetes client)':52} {generated / MIB:7.1f}")
    verdict = "met" if max(samples) < TARGET_BYTES else "MISSED"
    print(f"target: < {TARGET_BYTES // MIB} MiB -> {verdict}; the agent's own data and code above the floor: "
          f"{(max(samples) - floor) / MIB:.1f} MiB")  # fmt: skip
    return 1 if args.check and max(samples) >= TARGET_BYTES else 0


if __name__ == "__main__":
    sys.exit(main())
