"""A simulated GPU fleet for end-to-end tests: Nodes, and on each a simulated kubelet and a real agent.

Each node's kubelet is the demo's node simulator (:mod:`demo.nodesim`): it admits
the pods the real scheduler binds there, allocates their fake GPUs over a
PodResources socket, then starts their containers, each step a separate status
change after a delay, and evaluates readiness gates. Each node's agent is the
real ``gpupower_agent`` process with fake GPUs, under its ServiceAccount with a
token bound to its own pod on that node (so the shipped admission policy applies).
What the GPUs hold is read from the fake GPUs' state files.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from demo.nodesim import NodeSimulator, running_simulators
from gpupower_agent.cluster import PodKey
from tests.e2e.agentkit import AgentProcess, agent_kubeconfig
from tests.envtest import ControlPlane, unique_name


@dataclass
class SimulatedNode:
    name: str
    simulator: NodeSimulator
    agent: AgentProcess

    def held_by_pods(self) -> dict[PodKey, list[int]]:
        """Each pod holding GPUs on this node: the limits its GPUs hold now."""
        limits = self.agent.limits()
        return {
            pod: [limits.get(uuid, 0) for uuid in allocation.gpu_uuids]
            for pod, allocation in self.simulator.allocations().items()
        }


@dataclass
class SimulatedFleet:
    """Nodes with simulated kubelets and real agents; start with :meth:`start`, end with :meth:`stop`."""

    control_plane: ControlPlane
    root: Path
    node_names: list[str]
    gpus: int = 8
    model: str = "h100-sxm"
    admit_seconds: float = 0.3
    start_seconds: float = 0.5
    agent_args: list[str] = field(default_factory=list)
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Each node's agent kubeconfig (node name, its directory); by default the shipped ServiceAccount's.
    kubeconfig_for: Callable[[str, Path], Path] | None = None
    nodes: dict[str, SimulatedNode] = field(default_factory=dict, init=False)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    # Every node of the fleet carries this label: pods pinned with it land here, never on nodes other
    # tests left in the cluster without an agent.
    fleet_label: tuple[str, str] = field(
        default_factory=lambda: ("gpupower.test/fleet", unique_name("fleet"))
    )

    @property
    def node_selector(self) -> dict[str, str]:
        return {self.fleet_label[0]: self.fleet_label[1]}

    def start(self) -> SimulatedFleet:
        try:
            for name in self.node_names:
                labels = {**self.labels.get(name, {}), **self.node_selector}
                self.control_plane.add_node(name, gpus=self.gpus, labels=labels)
                workdir = self.root / name
                workdir.mkdir(parents=True, exist_ok=True)
                # A unix socket path has at most 107 characters: keep it short, out of the test's tree.
                sockets = Path(
                    self._stack.enter_context(tempfile.TemporaryDirectory(prefix="gpk-", dir="/tmp"))
                )
                simulator = NodeSimulator(
                    name,
                    self.gpus,
                    sockets / "kubelet.sock",
                    admit_seconds=self.admit_seconds,
                    start_seconds=self.start_seconds,
                )
                kubeconfig = (
                    self.kubeconfig_for(name, workdir)
                    if self.kubeconfig_for is not None
                    else agent_kubeconfig(self.control_plane, workdir, name)
                )
                agent = AgentProcess(
                    node_name=name,
                    kubeconfig=kubeconfig,
                    workdir=workdir,
                    socket_path=simulator.socket_path,
                    gpus=self.gpus,
                    model=self.model,
                    extra_args=list(self.agent_args),
                )
                self.nodes[name] = SimulatedNode(name, simulator, agent)
            self._stack.enter_context(
                running_simulators(self.control_plane.kubeconfig, [n.simulator for n in self.nodes.values()])
            )
            for node in self.nodes.values():
                node.agent.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.agent.running():
                node.agent.stop()
        self._stack.close()
        self.control_plane.kubectl("delete", "node", *self.node_names, "--wait=false", check=False)

    def held_by_pods(self, namespace: str | None = None) -> dict[PodKey, list[int]]:
        """Every pod holding GPUs on the fleet (in ``namespace``): the limits its GPUs hold now."""
        held: dict[PodKey, list[int]] = {}
        for node in self.nodes.values():
            for pod, limits in node.held_by_pods().items():
                if namespace is None or pod.namespace == namespace:
                    held[pod] = limits
        return held

    def running_watts(self, namespace: str | None = None, pods: Iterable[PodKey] | None = None) -> int:
        """The sum of the limits of the GPUs Running pods hold (what those GPUs may draw)."""
        wanted = set(pods) if pods is not None else None
        total = 0
        for node in self.nodes.values():
            limits = node.agent.limits()
            for uuid, pod in node.simulator.running_gpus().items():
                if (namespace is None or pod.namespace == namespace) and (wanted is None or pod in wanted):
                    total += limits.get(uuid, 0)
        return total

    def logs(self) -> str:
        return "\n".join(f"--- agent {name}\n{node.agent.log()[-3000:]}" for name, node in self.nodes.items())
