"""The real agent process against the real API server, under its own ServiceAccount's read-only RBAC,
with a local kubelet PodResources server and GPUs whose limits the tests read back.

The GPUs are the fake NVML, and, for every test that talks to NVML, also the real NVML adapter
(pynvml) on the stand-in libnvidia-ml.so.1 (tests/nvmlstub): the same checks on both.
One agent per kind of GPU serves the behaviour tests of this module (each test on its own GPUs
and namespace); the tests of restarts, signals and outages run their own agent on their own node.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from gpupower_agent.cluster import PodKey
from gpupower_agent.podresources import FakePodResourcesServer
from tests.e2e.agentkit import (
    AGENT_RBAC,
    NVML_BACKENDS,
    AgentProcess,
    TcpProxy,
    agent_on_new_node,
    annotate,
    api_server_address,
    bind_pod,
    budget_manifest,
    cap_annotations,
    pod_manifest,
    set_grants,
    wait_seconds,
    with_server,
)
from tests.envtest import ControlPlane, unique_name, wait_for

pytestmark = pytest.mark.envtest

H100_DEFAULT_WATTS = 700
AGENT_SAFE_DEFAULT_WATTS = 250
BUDGET_SAFE_DEFAULT_WATTS = 300


def _start_agent(
    control_plane: ControlPlane,
    workdir: Path,
    extra_args: list[str] | None = None,
    nvml: str = "fake",
    via: Callable[[Path], Path] | None = None,
) -> tuple[AgentProcess, FakePodResourcesServer]:
    return agent_on_new_node(control_plane, workdir, nvml, extra_args, AGENT_SAFE_DEFAULT_WATTS, via)


@pytest.fixture(scope="module", params=NVML_BACKENDS)
def shared_agent(
    request: pytest.FixtureRequest,
    crd_installed: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AgentProcess, FakePodResourcesServer]]:
    agent, server = _start_agent(
        crd_installed, tmp_path_factory.mktemp(f"agent-{request.param}"), nvml=request.param
    )
    agent.start()
    yield agent, server
    if agent.running():
        agent.stop()
    server.stop()


@pytest.fixture
def cleanup_pods(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """The test's namespace; its pods are force-deleted afterwards (no kubelet confirms deletion)."""
    yield namespace
    control_plane.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false", check=False
    )


def _budget(control_plane: ControlPlane, namespace: str, name: str = "llm") -> str:
    control_plane.apply(budget_manifest(name, namespace, BUDGET_SAFE_DEFAULT_WATTS))
    return name


def _pod(
    control_plane: ControlPlane,
    server: FakePodResourcesServer,
    agent: AgentProcess,
    namespace: str,
    name: str,
    gpu_indexes: list[int],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> None:
    """A pod bound to the agent's node, holding these GPUs (the kubelet knows them first)."""
    bind_pod(
        control_plane,
        server,
        agent,
        namespace,
        name,
        [agent.uuid(i) for i in gpu_indexes],
        labels,
        annotations,
    )


def _force_delete(control_plane: ControlPlane, namespace: str, name: str) -> None:
    control_plane.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force")


# ---------------------------------------------------------------------------
# Behaviour, one shared agent


def test_annotating_a_pod_sets_its_gpu_limit_and_removing_it_restores_the_default(
    control_plane: ControlPlane, shared_agent: tuple[AgentProcess, FakePodResourcesServer], cleanup_pods: str
) -> None:
    agent, server = shared_agent
    namespace = cleanup_pods
    budget = _budget(control_plane, namespace)
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
    _pod(
        control_plane,
        server,
        agent,
        namespace,
        "decode-0",
        [0],
        {"app": "decode"},
        cap_annotations(budget, 450),
    )
    agent.wait_limit(0, 450)

    annotate(control_plane, namespace, "decode-0", **{"gpupower.dev/power-limit-watts": "400"})
    started = time.monotonic()
    agent.wait_limit(0, 400, timeout=5)
    assert time.monotonic() - started < 5

    uuid = agent.uuid(0)
    wait_for(
        lambda: agent.metric_value("gpupower_agent_gpu_power_limit_watts", uuid=uuid, index="0") == 400,
        timeout=5,
        what="limit metric at 400 W",
    )
    assert (
        agent.metric_value("gpupower_agent_gpu_pod_info", uuid=uuid, namespace=namespace, pod="decode-0") == 1
    )
    assert agent.metric_value("gpupower_agent_info", nvml="fake" if agent.nvml == "fake" else "real") == 1
    assert ("event=nvml_fake" in agent.log()) == (agent.nvml == "fake")

    _force_delete(control_plane, namespace, "decode-0")
    server.release(PodKey(namespace, "decode-0"))
    agent.wait_limit(0, H100_DEFAULT_WATTS)
    wait_for(
        lambda: (
            agent.metric_value("gpupower_agent_gpu_pod_info", uuid=uuid, namespace=namespace, pod="decode-0")
            is None
        ),
        timeout=5,
        what="pod info series removed",
    )


def test_pods_that_disagree_on_one_gpu_get_the_safe_default_until_they_agree(
    control_plane: ControlPlane, shared_agent: tuple[AgentProcess, FakePodResourcesServer], cleanup_pods: str
) -> None:
    agent, server = shared_agent
    namespace = cleanup_pods
    budget = _budget(control_plane, namespace)
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 600)})
    conflicts_before = agent.metric_value("gpupower_agent_cap_conflicts_total") or 0
    _pod(control_plane, server, agent, namespace, "a", [1], {"app": "decode"}, cap_annotations(budget, 400))
    _pod(control_plane, server, agent, namespace, "b", [1], {"app": "decode"}, cap_annotations(budget, 500))
    agent.wait_limit(1, BUDGET_SAFE_DEFAULT_WATTS)
    assert (agent.metric_value("gpupower_agent_cap_conflicts_total") or 0) >= conflicts_before + 1
    assert "event=cap_conflict" in agent.log()

    annotate(control_plane, namespace, "b", **{"gpupower.dev/power-limit-watts": "400"})
    agent.wait_limit(1, 400)


def test_a_cap_the_budget_does_not_grant_gets_the_safe_default(
    control_plane: ControlPlane, shared_agent: tuple[AgentProcess, FakePodResourcesServer], cleanup_pods: str
) -> None:
    agent, server = shared_agent
    namespace = cleanup_pods
    budget = _budget(control_plane, namespace)
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 450)})
    above_before = agent.metric_value("gpupower_agent_untrusted_caps_total", reason="above_grant") or 0
    missing_before = agent.metric_value("gpupower_agent_untrusted_caps_total", reason="budget_missing") or 0

    # A pod raising its own cap above what its budget grants: the budget's safe default.
    _pod(
        control_plane,
        server,
        agent,
        namespace,
        "greedy",
        [2],
        {"app": "decode"},
        cap_annotations(budget, 650),
    )
    # A pod naming a budget that does not exist: the agent's own safe default.
    _pod(control_plane, server, agent, namespace, "forged", [3], {"app": "x"}, cap_annotations("nope", 600))
    agent.wait_limit(2, BUDGET_SAFE_DEFAULT_WATTS)
    agent.wait_limit(3, AGENT_SAFE_DEFAULT_WATTS)
    assert agent.metric_value("gpupower_agent_untrusted_caps_total", reason="above_grant") == above_before + 1
    assert (
        agent.metric_value("gpupower_agent_untrusted_caps_total", reason="budget_missing")
        == missing_before + 1
    )
    assert "event=cap_untrusted pod=" + namespace + "/greedy reason=above_grant" in agent.log()

    # The operator raises the grant first: now the same annotation is honoured.
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 700)})
    agent.wait_limit(2, 650)
    # Lowering the grant below the pod's cap withdraws the trust at once.
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 600)})
    agent.wait_limit(2, BUDGET_SAFE_DEFAULT_WATTS)


def test_a_new_replica_selected_by_a_budget_is_capped_before_its_cap_arrives(
    control_plane: ControlPlane, shared_agent: tuple[AgentProcess, FakePodResourcesServer], cleanup_pods: str
) -> None:
    agent, server = shared_agent
    namespace = cleanup_pods
    budget = _budget(control_plane, namespace)
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
    _pod(control_plane, server, agent, namespace, "unmanaged", [5], {"app": "other"})
    _pod(control_plane, server, agent, namespace, "replica", [4], {"app": "decode"})
    agent.wait_limit(4, BUDGET_SAFE_DEFAULT_WATTS)

    annotate(control_plane, namespace, "replica", **cap_annotations(budget, 480))
    agent.wait_limit(4, 480)
    # The pod no budget selects nor annotates is left alone.
    assert agent.limit(5) == H100_DEFAULT_WATTS


def test_nvml_errors_are_retried_with_backoff_and_a_limit_changed_behind_its_back_is_corrected(
    control_plane: ControlPlane, shared_agent: tuple[AgentProcess, FakePodResourcesServer], cleanup_pods: str
) -> None:
    agent, server = shared_agent
    namespace = cleanup_pods
    budget = _budget(control_plane, namespace)
    set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
    uuid = agent.uuid(6)
    errors_before = agent.metric_value(
        "gpupower_agent_nvml_errors_total", operation="set", kind="no_permission"
    )
    agent.edit_gpu(6, faults={"set": "no_permission"})
    _pod(control_plane, server, agent, namespace, "p", [6], {"app": "decode"}, cap_annotations(budget, 450))
    wait_for(
        lambda: (
            (
                agent.metric_value("gpupower_agent_nvml_errors_total", operation="set", kind="no_permission")
                or 0
            )
            >= (errors_before or 0) + 2
        ),
        timeout=10,
        what="retried NVML errors",
    )
    assert agent.running() and agent.limit(6) == H100_DEFAULT_WATTS
    assert f"event=nvml_error op=set uuid={uuid}" in agent.log()

    agent.edit_gpu(6, faults={})
    agent.wait_limit(6, 450)  # the next retry (backoff of a few seconds at most) succeeds
    agent.edit_gpu(6, limitWatts=650)  # someone raises the limit with nvidia-smi
    agent.wait_limit(6, 450, timeout=15)  # the next resync puts the cap back


# ---------------------------------------------------------------------------
# Outages, signals, restarts: an agent per test


def test_an_api_outage_keeps_the_caps_and_turns_healthz_unhealthy(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    proxy = TcpProxy(api_server_address(control_plane.kubeconfig)).start()
    agent, server = _start_agent(
        control_plane,
        tmp_path,
        ["--api-unhealthy-seconds", "1", "--resync-seconds", "0.5"],
        via=lambda kubeconfig: with_server(kubeconfig, proxy.url, tmp_path),
    )
    try:
        agent.start()
        budget = _budget(control_plane, namespace)
        set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
        _pod(
            control_plane, server, agent, namespace, "p", [0], {"app": "decode"}, cap_annotations(budget, 450)
        )
        agent.wait_limit(0, 450)
        assert agent.healthz_status() == 200

        proxy.stop()
        annotate(control_plane, namespace, "p", **{"gpupower.dev/power-limit-watts": "420"})
        wait_for(lambda: agent.healthz_status() == 503, timeout=10, what="healthz 503 during the outage")
        wait_seconds(1.5)  # several resyncs run on the last known pods
        assert agent.limit(0) == 450
        assert (agent.metric_value("gpupower_agent_api_errors_total", resource="pods") or 0) >= 1

        proxy = TcpProxy(proxy.target, proxy.port).start()
        agent.wait_limit(0, 420, timeout=20)
        wait_for(lambda: agent.healthz_status() == 200, timeout=10, what="healthz 200 after the outage")
    finally:
        proxy.stop()
        if agent.running():
            agent.stop()
        server.stop()


@pytest.mark.parametrize("nvml", NVML_BACKENDS)
def test_sigterm_restores_default_limits_unless_told_not_to(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str, nvml: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    agent, server = _start_agent(control_plane, tmp_path, nvml=nvml)
    try:
        agent.start()
        budget = _budget(control_plane, namespace)
        set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
        _pod(
            control_plane,
            server,
            agent,
            namespace,
            "p",
            [0, 1],
            {"app": "decode"},
            cap_annotations(budget, 450),
        )
        agent.wait_limit(0, 450)
        agent.wait_limit(1, 450)

        assert agent.stop(signal.SIGTERM) == 0
        assert agent.limit(0) == H100_DEFAULT_WATTS
        assert agent.limit(1) == H100_DEFAULT_WATTS
        assert json.loads(agent.state_file.read_text())["managedGpus"] == []

        agent.extra_args = ["--no-restore-on-exit"]
        agent.start()
        agent.wait_limit(0, 450)
        assert agent.stop(signal.SIGTERM) == 0
        assert agent.limit(0) == 450
        assert agent.uuid(0) in json.loads(agent.state_file.read_text())["managedGpus"]
    finally:
        if agent.running():
            agent.stop(signal.SIGKILL)
        server.stop()


@pytest.mark.parametrize("nvml", NVML_BACKENDS)
def test_a_restart_restores_gpus_whose_pods_left_while_the_agent_was_down(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str, nvml: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    agent, server = _start_agent(control_plane, tmp_path, nvml=nvml)
    try:
        agent.start()
        budget = _budget(control_plane, namespace)
        set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
        _pod(
            control_plane,
            server,
            agent,
            namespace,
            "gone",
            [0],
            {"app": "decode"},
            cap_annotations(budget, 450),
        )
        _pod(
            control_plane,
            server,
            agent,
            namespace,
            "stays",
            [1],
            {"app": "decode"},
            cap_annotations(budget, 400),
        )
        agent.wait_limit(0, 450)
        agent.wait_limit(1, 400)

        agent.stop(signal.SIGKILL)  # a crash: nothing restored, the GPUs keep their limits
        assert agent.limit(0) == 450
        _force_delete(control_plane, namespace, "gone")
        server.release(PodKey(namespace, "gone"))
        # Someone else's limit on a GPU the agent never capped must survive the restart.
        agent.edit_gpu(2, limitWatts=330)

        agent.start()
        agent.wait_limit(0, H100_DEFAULT_WATTS)
        assert agent.limit(1) == 400
        assert agent.limit(2) == 330
        managed = json.loads(agent.state_file.read_text())["managedGpus"]
        assert managed == [agent.uuid(1)]
    finally:
        if agent.running():
            agent.stop(signal.SIGKILL)
        server.stop()


def test_a_corrupt_state_file_is_reported_and_the_agent_still_caps(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    agent, server = _start_agent(control_plane, tmp_path)
    agent.state_file.write_text('{"version": 1, "nodeName": "n", "managedGp')
    try:
        agent.start()
        budget = _budget(control_plane, namespace)
        set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
        _pod(
            control_plane, server, agent, namespace, "p", [0], {"app": "decode"}, cap_annotations(budget, 450)
        )
        agent.wait_limit(0, 450)
        assert "event=state_file_corrupt" in agent.log()
        assert json.loads(agent.state_file.read_text())["managedGpus"] == [agent.uuid(0)]
    finally:
        if agent.running():
            agent.stop()
        server.stop()


def test_a_namespace_restricted_agent_needs_only_a_role_and_ignores_other_namespaces(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    rules = yaml.safe_load(AGENT_RBAC.read_text().split("---")[1])["rules"]
    control_plane.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "agent", "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "agent", "namespace": namespace},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "agent", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
                "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}],
            },
        ]
    )
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "agent", tmp_path)
    other = unique_name("other")
    control_plane.kubectl("create", "namespace", other)
    # This agent runs under the namespaced account instead of the shipped one.
    agent, server = _start_agent(
        control_plane, tmp_path, ["--namespace", namespace], via=lambda _: kubeconfig
    )
    try:
        agent.start()
        for ns in (namespace, other):
            budget = _budget(control_plane, ns)
            set_grants(control_plane, ns, budget, {"decode": ("app=decode", 500)})
        _pod(
            control_plane,
            server,
            agent,
            other,
            "elsewhere",
            [1],
            {"app": "decode"},
            cap_annotations("llm", 400),
        )
        _pod(
            control_plane,
            server,
            agent,
            namespace,
            "here",
            [0],
            {"app": "decode"},
            cap_annotations("llm", 450),
        )
        agent.wait_limit(0, 450)
        assert agent.limit(1) == H100_DEFAULT_WATTS
        assert agent.metric_value("gpupower_agent_api_errors_total", resource="pods") is None
        # Without the node role it cannot publish its node's inventory: said once, and capping goes on.
        assert agent.log().count("event=node_inventory_failed") == 1 and "403" in agent.log()
        assert (agent.metric_value("gpupower_agent_api_errors_total", resource="nodes") or 0) >= 1
    finally:
        if agent.running():
            agent.stop()
        server.stop()
        control_plane.kubectl(
            "delete", "pods", "--all", "-n", other, "--grace-period=0", "--force", "--wait=false", check=False
        )
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


@pytest.mark.parametrize("nvml", NVML_BACKENDS)
def test_the_cgroup_mapping_finds_pods_from_gpu_processes(
    crd_installed: ControlPlane, tmp_path: Path, cleanup_pods: str, nvml: str
) -> None:
    control_plane, namespace = crd_installed, cleanup_pods
    proc = tmp_path / "proc"
    agent, server = _start_agent(
        control_plane, tmp_path, ["--gpu-mapping", "cgroup", "--proc-root", str(proc)], nvml=nvml
    )
    server.stop()  # no kubelet socket: the agent finds pods through NVML processes and their cgroups
    try:
        agent.start()
        budget = _budget(control_plane, namespace)
        set_grants(control_plane, namespace, budget, {"decode": ("app=decode", 500)})
        control_plane.apply(
            pod_manifest("p", namespace, agent.node_name, {"app": "decode"}, cap_annotations(budget, 450))
        )
        uid = control_plane.get_json("pod", "p", "-n", namespace)["metadata"]["uid"]
        container = "0123456789abcdef" * 4
        (proc / "4242").mkdir(parents=True)
        (proc / "4242" / "cgroup").write_text(
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{uid.replace('-', '_')}.slice/cri-containerd-{container}.scope\n"
        )
        agent.edit_gpu(3, pids=[4242])  # the workload's process starts on GPU 3
        agent.wait_limit(3, 450)
        assert agent.metric_value("gpupower_agent_info", gpu_mapping="cgroup") == 1
    finally:
        if agent.running():
            agent.stop()
