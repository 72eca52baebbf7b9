"""The draw guard's reaction: from a surge on every GPU of a node to that node drawing within its share.

Run: ``.venv/bin/python bench/guard_reaction.py [--surges 20] [--check]``

Real: the control plane (envtest kit), two agent processes under their own
ServiceAccount (pod-bound tokens), their watches, PodResources gRPC servers.
Simulated: the GPUs (fake H100s drawing min(limit, load), the load from a file
this benchmark writes, their limits read back from the fake's state file) and
the operator's part (an oversubscribed budget whose status grants the pods a
600 W cap and a 300 W share per GPU, written as the operator writes it).

Each surge puts every GPU of both nodes at 700 W of load at once; the clock
starts at that write and stops when the node's GPUs draw at most their share
(the sum of min(limit, load) over its 8 GPUs, from the two files). Then the
load falls to 100 W and the guard releases before the next surge.

Two agents side by side, measured in the same run: the default (the guard
reads every second) and the same agent with ``--draw-guard-seconds 0`` (no
guard: its GPUs stay at their caps, above the share, until a re-plan would
lower them). ``--check`` exits non-zero when the guarded p99 misses 3 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent_benchkit import (
    BUDGET,
    NAMESPACE,
    SELECTOR,
    control_plane_with_crd,
    percentile,
    populate_node,
    start_node_agent,
)

from gpupower_agent.podresources import FakePodResourcesServer
from tests.e2e.agentkit import AgentProcess, budget_manifest, grant_status

TARGET_SECONDS = 3.0
CAP_WATTS = 600
SHARE_WATTS = 300.0
GPUS = 8
OBSERVE_SECONDS = 10.0


def node_draw(agent: AgentProcess) -> float:
    limits, loads = agent.limits(), agent.loads()
    return sum(
        min(float(limits.get(agent.uuid(i), 700)), loads.get(agent.uuid(i), 70.0)) for i in range(GPUS)
    )


def wait_until(predicate: object, timeout: float) -> float | None:
    """Seconds until ``predicate()`` holds (polled every 10 ms), or None after ``timeout``."""
    assert callable(predicate)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surges", type=int, default=20)
    parser.add_argument("--check", action="store_true", help=f"fail when the p99 misses {TARGET_SECONDS:g} s")
    args = parser.parse_args()
    share = SHARE_WATTS * GPUS

    with control_plane_with_crd() as cp, tempfile.TemporaryDirectory() as tmp:
        doc = budget_manifest(BUDGET, NAMESPACE, 300)
        doc["spec"]["oversubscription"] = {
            "maxRatio": 2.0,
            "guardHoldSeconds": 1,
            "guardReleaseStepRatio": 0.5,
        }
        cp.apply(doc)
        status = grant_status({"decode": (SELECTOR, CAP_WATTS)})
        status["status"]["targets"][0]["gpuShareWatts"] = SHARE_WATTS
        cp.kubectl(
            "patch", "gpb", BUDGET, "-n", NAMESPACE, "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip
        agents: dict[str, AgentProcess] = {}
        servers: list[FakePodResourcesServer] = []
        for mode, extra in (("guarded", []), ("no guard", ["--draw-guard-seconds", "0"])):
            node = f"guard-bench-{len(agents)}"
            agent = start_node_agent(cp, Path(tmp) / node, node, ["--resync-seconds", "30", *extra])
            server = FakePodResourcesServer(agent.socket_path).start()
            servers.append(server)
            populate_node(cp, server, agent, pods=GPUS, gpu_pods=GPUS, cap_watts=CAP_WATTS)
            agent.set_loads(dict.fromkeys(range(GPUS), 100.0))
            agents[mode] = agent.start()
        try:
            for agent in agents.values():  # an agent starts guarded: wait for it to release first
                all_capped = lambda a=agent: all(a.limit(i) == CAP_WATTS for i in range(GPUS))  # noqa: E731
                if wait_until(all_capped, 60) is None:
                    raise SystemExit(
                        f"{agent.node_name}: GPUs not at their {CAP_WATTS} W caps\n{agent.log()}"
                    )
            reactions: list[float] = []
            above: list[float] = []
            for surge in range(args.surges):
                for agent in agents.values():
                    agent.set_loads(dict.fromkeys(range(GPUS), 700.0))
                guarded, free = agents["guarded"], agents["no guard"]
                took = wait_until(lambda g=guarded: node_draw(g) <= share, OBSERVE_SECONDS)
                if took is None:
                    raise SystemExit(
                        f"surge {surge}: the guarded node never drew within its share\n{guarded.log()}"
                    )
                reactions.append(took)
                above.append(node_draw(free))
                for agent in agents.values():
                    agent.set_loads(dict.fromkeys(range(GPUS), 100.0))
                released = lambda g=guarded: all(g.limit(i) == CAP_WATTS for i in range(GPUS))  # noqa: E731
                if wait_until(released, 30) is None:
                    raise SystemExit(f"surge {surge}: the guard did not release\n{guarded.log()}")
            # The unguarded node, loaded for as long as a guarded one took at worst several times over.
            free.set_loads(dict.fromkeys(range(GPUS), 700.0))
            unguarded_within = wait_until(lambda f=free: node_draw(f) <= share, OBSERVE_SECONDS)
        finally:
            for agent in agents.values():
                agent.stop()
            for server in servers:
                server.stop()

    reactions.sort()
    p99 = percentile(reactions, 0.99)
    print(f"draw guard: surge on every GPU of a node -> the node within its share ({args.surges} surges)")
    print(f"  node: {GPUS} fake H100s, cap {CAP_WATTS} W, share {SHARE_WATTS:g} W each ({share:,.0f} W)")
    print(
        f"  guarded:  p50 {statistics.median(reactions):.2f} s   p99 {p99:.2f} s   "
        f"worst {reactions[-1]:.2f} s "
        "(reading period 1 s, 2 readings above to engage)"
    )
    print(
        f"  no guard: draws {statistics.median(above):,.0f} W of its {share:,.0f} W share after each surge "
        f"({statistics.median(above) / share:.1f}x), and still "
        f"{'above' if unguarded_within is None else 'within'} it {OBSERVE_SECONDS:g} s on, until a re-plan"
    )
    if args.check and p99 > TARGET_SECONDS:
        print(f"FAIL: p99 {p99:.2f} s > {TARGET_SECONDS:g} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
