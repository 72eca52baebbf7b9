"""Helpers to run the real node agent against the real API server: process, GPUs, a cuttable proxy.

The agent's GPUs are either the fake NVML (``nvml="fake"``, ``--fake-gpus``) or the real NVML
adapter on the stand-in ``libnvidia-ml.so.1`` (``nvml="stub"``, tests/nvmlstub); the same
helpers read what the GPUs hold and act on them, in the fake's vocabulary, for both.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpupower_agent.cluster import PodKey
from gpupower_agent.nvml import GPU_MODELS, fake_gpu_uuid, fake_mig_uuid
from gpupower_agent.podresources import GPU_RESOURCE, FakePodResourcesServer
from gpupower_api.contract import BUDGET_ANNOTATION, POWER_LIMIT_ANNOTATION
from tests.children import tied_to_this_process
from tests.envtest import REPO, ControlPlane, source_env, unique_name, wait_for
from tests.nvmlstub import StubGpu, StubMig, StubState, edit_state, read_state, stub_env, write_state

AGENT_RBAC = REPO / "manifests" / "agent" / "rbac.yaml"
AGENT_POLICY = REPO / "manifests" / "agent" / "admission-policy.yaml"
AGENT_NAMESPACE = "gpupower-system"
AGENT_ACCOUNT = "gpupower-agent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_agent_rbac(control_plane: ControlPlane) -> None:
    """The agent's ServiceAccount, roles and admission policy from manifests/agent/."""
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AGENT_NAMESPACE}})
    control_plane.kubectl("apply", "-f", str(AGENT_RBAC), "-f", str(AGENT_POLICY))


def agent_kubeconfig(control_plane: ControlPlane, directory: Path, node_name: str) -> Path:
    """A kubeconfig for the agent's own ServiceAccount (manifests/agent/rbac.yaml) with the token a
    DaemonSet pod on ``node_name`` would have: bound to that pod, so it names the node."""
    install_agent_rbac(control_plane)
    pod = control_plane.daemon_pod(AGENT_NAMESPACE, f"gpupower-agent-{node_name}", AGENT_ACCOUNT, node_name)
    return control_plane.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_ACCOUNT, directory, bound_pod=pod)


def with_server(kubeconfig: Path, server: str, directory: Path) -> Path:
    """A copy of ``kubeconfig`` that talks to ``server`` (e.g. through a proxy)."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = server
    path = directory / f"{kubeconfig.name}-via-proxy"
    path.write_text(yaml.safe_dump(config))
    return path


def api_server_address(kubeconfig: Path) -> tuple[str, int]:
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host_port = server.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    return host, int(port)


NVML_BACKENDS = ("fake", "stub")


@dataclass
class AgentProcess:
    """The real ``python -m gpupower_agent`` on fake or stand-in GPUs, run for one test or one module."""

    node_name: str
    kubeconfig: Path
    workdir: Path
    socket_path: Path
    gpus: int = 8
    model: str = "h100-sxm"
    safe_default_watts: int = 250
    extra_args: list[str] = field(default_factory=list)
    nvml: str = "fake"  # or "stub": the real NVML adapter on the stand-in library
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def gpu_state_path(self) -> Path:
        """The file that holds the GPUs: the fake's JSON, or the stand-in library's state."""
        return self.workdir / ("fake-gpus.json" if self.nvml == "fake" else "nvml-stub.state")

    @property
    def load_path(self) -> Path:
        return self.workdir / "fake-gpu-load.json"

    @property
    def state_file(self) -> Path:
        return self.workdir / "agent-state.json"

    def uuid(self, index: int) -> str:
        return fake_gpu_uuid(self.node_name, index)

    def mig_uuid(self, index: int, position: int) -> str:
        """The UUID of MIG device ``position`` of GPU ``index`` (see ``edit_gpu(index, migDevices=...)``)."""
        return fake_mig_uuid(self.node_name, index, position)

    def _gpu_args(self) -> tuple[list[str], dict[str, str]]:
        if self.nvml == "fake":
            args = ["--fake-gpus", f"{self.gpus}:{self.model}", "--fake-gpu-state", str(self.gpu_state_path)]
            return [*args, "--fake-gpu-load", str(self.load_path)], {}
        assert self.nvml == "stub", self.nvml
        self.install_stub_gpus()
        return [], stub_env(self.gpu_state_path)

    def install_stub_gpus(self) -> None:
        """Give the stand-in its GPUs, unless it has them (on a restart the GPUs keep what they hold).

        ``start`` does it; a test that edits the GPUs before the first start calls it first.
        """
        if not self.gpu_state_path.exists():
            model = GPU_MODELS[self.model]
            write_state(
                self.gpu_state_path,
                StubState([StubGpu.of_model(self.uuid(i), model) for i in range(self.gpus)]),
            )

    def start(self) -> AgentProcess:
        self.metrics_port = free_port()
        runs = len(list(self.workdir.glob("agent-*.log")))
        self.log_path = self.workdir / f"agent-{runs}.log"
        gpu_args, gpu_env = self._gpu_args()
        args = [
            sys.executable,
            "-m",
            "gpupower_agent",
            "--node-name",
            self.node_name,
            "--gpu-mapping",
            "pod-resources",
            "--pod-resources-socket",
            str(self.socket_path),
            *gpu_args,
            "--safe-default-watts",
            str(self.safe_default_watts),
            "--state-file",
            str(self.state_file),
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--resync-seconds",
            "5",
            "--log-level",
            "info",
            *self.extra_args,
        ]
        env = source_env({"KUBECONFIG": str(self.kubeconfig), **gpu_env})
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                tied_to_this_process(args), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        wait_for(self.healthz_status, timeout=30, what=f"agent metrics endpoint\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def logs_all_runs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.workdir.glob("agent-*.log")))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(
                f"agent did not exit within {timeout}s of signal {sig}\n{self.log()}"
            ) from None

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def healthz_status(self) -> int | None:
        if not self.running():
            raise AssertionError(
                f"agent exited with {self.process.returncode if self.process else None}\n{self.log()}"
            )
        try:
            return self._get("/healthz")[0]
        except OSError:
            return None

    def metrics(self) -> str:
        return self._get("/metrics")[1]

    def metric_value(self, name: str, **labels: str) -> float | None:
        """The value of one series in /metrics, or None when absent."""
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if series == name and not labels:
                return float(value)
            if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
                return float(value)
        return None

    def limits(self) -> dict[str, float]:
        """What the hardware holds: GPU UUID -> limit in watts (read from the fake's or stand-in's file)."""
        if self.nvml == "stub":
            try:
                return {gpu.uuid: gpu.limit_watts for gpu in read_state(self.gpu_state_path).gpus}
            except (OSError, ValueError):
                return {}
        try:
            gpus = json.loads(self.gpu_state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {gpu["uuid"]: gpu["limitWatts"] for gpu in gpus}

    def limit(self, index: int) -> float | None:
        return self.limits().get(self.uuid(index))

    def edit_gpu(self, index: int, **changes: Any) -> None:
        """Act on the hardware from outside (a fault, or a limit set behind the agent's back).

        In the fake's vocabulary (``limitWatts``, ``faults``, ``lost``, ``pids``, ``model``,
        ``migDevices``), for the stand-in too.
        """
        if self.nvml == "stub":
            edit_state(
                self.gpu_state_path, lambda state: self._edit_stub_gpu(state.gpus[index], index, changes)
            )
            return
        gpus = json.loads(self.gpu_state_path.read_text())
        gpus[index].update(changes)
        tmp = self.gpu_state_path.with_suffix(".edit")
        tmp.write_text(json.dumps(gpus))
        tmp.replace(self.gpu_state_path)

    def _edit_stub_gpu(self, gpu: StubGpu, index: int, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if key == "limitWatts":
                gpu.limit_mw = round(value * 1000)
            elif key == "faults":
                gpu.faults = dict(value)
            elif key in ("lost", "pids"):
                setattr(gpu, key, value)
            elif key == "model":
                swapped = StubGpu.of_model(gpu.uuid, GPU_MODELS[value])
                swapped.limit_mw = min(max(gpu.limit_mw, swapped.min_mw), swapped.max_mw)
                gpu.name, gpu.min_mw, gpu.max_mw = swapped.name, swapped.min_mw, swapped.max_mw
                gpu.default_mw, gpu.idle_mw, gpu.limit_mw = (
                    swapped.default_mw,
                    swapped.idle_mw,
                    swapped.limit_mw,
                )
            elif key == "migDevices":
                gpu.mig = "disabled" if value is None else "enabled"
                gpu.migs = [
                    StubMig(self.mig_uuid(index, i), profile) for i, profile in enumerate(value or ())
                ]
            else:
                raise ValueError(f"no such change to a stand-in GPU: {key}")

    def set_load(self, index: int, watts: float | None) -> None:
        """What the workload on GPU ``index`` would draw uncapped (None: nothing, it idles)."""
        self.set_loads({index: watts})

    def set_loads(self, watts_by_index: dict[int, float | None]) -> None:
        """Several GPUs' loads in one write (a surge on every GPU at once)."""
        if self.nvml == "stub":

            def change(state: StubState) -> None:
                for index, watts in watts_by_index.items():
                    state.gpus[index].load_mw = None if watts is None else round(watts * 1000)

            edit_state(self.gpu_state_path, change)
            return
        try:
            loads = json.loads(self.load_path.read_text())
        except FileNotFoundError:
            loads = {}
        for index, watts in watts_by_index.items():
            loads.pop(self.uuid(index), None)
            if watts is not None:
                loads[self.uuid(index)] = watts
        tmp = self.load_path.with_suffix(".edit")
        tmp.write_text(json.dumps(loads))
        tmp.replace(self.load_path)

    def loads(self) -> dict[str, float]:
        """GPU UUID -> what its workload would draw uncapped (fake GPUs only)."""
        try:
            return {str(k): float(v) for k, v in json.loads(self.load_path.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def wait_limit(self, index: int, watts: float, timeout: float = 10) -> None:
        wait_for(
            lambda: self.limit(index) == watts,
            timeout=timeout,
            interval=0.05,
            what=f"GPU {index} at {watts} W (holds {self.limit(index)} W)\n{self.log()[-4000:]}",
        )


def agent_on_new_node(
    control_plane: ControlPlane,
    workdir: Path,
    nvml: str = "fake",
    extra_args: list[str] | None = None,
    safe_default_watts: int = 250,
    via: Callable[[Path], Path] | None = None,
) -> tuple[AgentProcess, FakePodResourcesServer]:
    """A new Node with 8 GPUs, its kubelet's PodResources server (serving) and its agent (not started),
    under its ServiceAccount with a token bound to its pod there; ``via`` rewrites its kubeconfig (e.g. to
    go through a proxy)."""
    node = unique_name("gpu-node")
    control_plane.add_node(node, gpus=8)
    kubeconfig = agent_kubeconfig(control_plane, workdir, node)
    if via is not None:
        kubeconfig = via(kubeconfig)
    server = FakePodResourcesServer(workdir / "kubelet.sock").start()
    agent = AgentProcess(
        node_name=node,
        kubeconfig=kubeconfig,
        workdir=workdir,
        socket_path=server.socket_path,
        safe_default_watts=safe_default_watts,
        extra_args=extra_args or [],
        nvml=nvml,
    )
    return agent, server


def stop_node(agent: AgentProcess, server: FakePodResourcesServer) -> None:
    if agent.running():
        agent.stop()
    server.stop()


def granting_budget(
    control_plane: ControlPlane, namespace: str, grant_watts: int = 600, safe_default_watts: int = 300
) -> str:
    """Budget ``llm`` whose status grants ``app=decode`` pods up to ``grant_watts`` (the operator's part)."""
    control_plane.apply(budget_manifest("llm", namespace, safe_default_watts))
    set_grants(control_plane, namespace, "llm", {"decode": ("app=decode", grant_watts)})
    return "llm"


def delete_pods(control_plane: ControlPlane, namespace: str) -> None:
    """Force-delete every pod of ``namespace`` (no kubelet confirms a deletion)."""
    control_plane.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false", check=False
    )


def bind_pod(
    control_plane: ControlPlane,
    server: FakePodResourcesServer,
    agent: AgentProcess,
    namespace: str,
    name: str,
    device_ids: list[str],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    resource: str = GPU_RESOURCE,
) -> None:
    """A pod bound to the agent's node, holding these devices of ``resource`` (known to the kubelet first)."""
    server.allocate(PodKey(namespace, name), device_ids, resource=resource)
    control_plane.apply(
        pod_manifest(name, namespace, agent.node_name, labels, annotations, len(device_ids), resource)
    )


def pod_manifest(
    name: str,
    namespace: str,
    node_name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    gpus: int = 1,
    resource: str = GPU_RESOURCE,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {
            "nodeName": node_name,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/inference:1",
                    "resources": {"limits": {resource: str(gpus)}},
                }
            ],
        },
    }


def cap_annotations(budget: str, watts: int | str) -> dict[str, str]:
    return {BUDGET_ANNOTATION: budget, POWER_LIMIT_ANNOTATION: str(watts)}


def budget_manifest(name: str, namespace: str, safe_default_watts: int) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "totalWatts": 5000,
            "mode": "Enforce",
            "safeDefaultWatts": safe_default_watts,
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "decode"},
                    "gpusPerReplica": 1,
                    "minReplicas": 1,
                    "maxReplicas": 8,
                    "capWatts": {"min": 200, "max": 700},
                    "profile": {
                        "points": [{"watts": 200, "throughput": 5}, {"watts": 700, "throughput": 10}]
                    },
                    "demand": 20,
                }
            ],
        },
    }


def grant_status(grants: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """A budget status granting ``target name -> (selector, capWatts)``, as the operator writes it."""
    return {
        "status": {
            "targets": [
                {
                    "name": name,
                    "selector": selector,
                    "desiredReplicas": 1,
                    "plannedReplicas": 1,
                    "capWatts": cap,
                    "projectedWatts": float(cap),
                    "capacity": 1.0,
                    "servedFraction": 1.0,
                }
                for name, (selector, cap) in grants.items()
            ]
        }
    }


def set_grants(
    control_plane: ControlPlane, namespace: str, budget: str, grants: dict[str, tuple[str, int]]
) -> None:
    """Play the operator: write the budget's status through the status subresource."""
    control_plane.kubectl(
        "patch",
        "gpb",
        budget,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(grant_status(grants)),
    )


def annotate(control_plane: ControlPlane, namespace: str, pod: str, **annotations: str) -> None:
    pairs = [f"{key}={value}" for key, value in annotations.items()]
    control_plane.kubectl("annotate", "pod", pod, "-n", namespace, "--overwrite", *pairs)


class TcpProxy:
    """A loopback TCP forwarder the test can cut (an API outage) and restore on the same port."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._running = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._running = True
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads = [thread]
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._running:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        with contextlib.suppress(OSError, ValueError):
            while self._running:
                readable, _, _ = select.select(sockets, [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._running = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            self._connections.clear()
        for thread in self._threads:
            thread.join(timeout=2)


@contextlib.contextmanager
def running_proxy(target: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def wait_seconds(seconds: float) -> None:
    """Let the agent run for a while when a test must show that nothing changes."""
    time.sleep(seconds)
