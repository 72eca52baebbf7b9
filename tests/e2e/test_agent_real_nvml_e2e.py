"""The real agent without ``--fake-gpus``: its real NVML adapter (pynvml) loads the stand-in
libnvidia-ml.so.1 (tests/nvmlstub) through ``LD_LIBRARY_PATH``, against the real API server.

What only a real library can show: NVML's return codes per GPU and operation, logged and counted
by kind with no crash; a driver that fails to initialise at start and a driver reload while
running, both followed; limits NVML keeps in milliwatts. The same behaviour checks as on the fake
run on the stand-in in test_agent_e2e.py and test_agent_shared_gpus_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupower_agent.podresources import FakePodResourcesServer
from tests.e2e.agentkit import (
    AgentProcess,
    agent_on_new_node,
    bind_pod,
    cap_annotations,
    delete_pods,
    granting_budget,
    stop_node,
)
from tests.envtest import ControlPlane, wait_for
from tests.nvmlstub import StubState, edit_state, read_state

pytestmark = pytest.mark.envtest

H100_DEFAULT_WATTS = 700
LABELS = {"app": "decode"}
ERROR_KINDS = ("no_permission", "not_supported", "gpu_lost", "uninitialized", "invalid_argument")


Node = tuple[AgentProcess, FakePodResourcesServer]


@pytest.fixture
def stub_node(crd_installed: ControlPlane, tmp_path: Path) -> Iterator[Node]:
    """An agent on the stand-in, on its own node, with a one-second resync; started by the test."""
    agent, server = agent_on_new_node(
        crd_installed, tmp_path, nvml="stub", extra_args=["--resync-seconds", "1"]
    )
    yield agent, server
    stop_node(agent, server)


@pytest.fixture
def budget(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A budget in the test's namespace granting 600 W to ``app=decode``; its pods go afterwards."""
    yield granting_budget(control_plane, namespace, 600, 300)
    delete_pods(control_plane, namespace)


def _cap(
    control_plane: ControlPlane, node: Node, namespace: str, budget: str, index: int, watts: int
) -> None:
    """A pod holding GPU ``index`` with a trusted cap of ``watts``."""
    agent, server = node
    bind_pod(
        control_plane,
        server,
        agent,
        namespace,
        f"pod-{index}",
        [agent.uuid(index)],
        LABELS,
        cap_annotations(budget, watts),
    )


def _errors(agent: AgentProcess, operation: str, kind: str) -> float:
    return agent.metric_value("gpupower_agent_nvml_errors_total", operation=operation, kind=kind) or 0


def test_each_nvml_error_kind_is_logged_and_counted_and_the_caps_follow_once_it_clears(
    control_plane: ControlPlane, stub_node: Node, namespace: str, budget: str
) -> None:
    agent = stub_node[0]
    agent.start()
    assert agent.metric_value("gpupower_agent_info", nvml="real", gpu_model="NVIDIA H100 80GB HBM3") == 1
    for index, kind in enumerate(ERROR_KINDS):
        agent.edit_gpu(index, faults={"set": kind})
        _cap(control_plane, stub_node, namespace, budget, index, 400 + index)
    for index, kind in enumerate(ERROR_KINDS):
        wait_for(
            lambda kind=kind: _errors(agent, "set", kind) >= 2,  # retried with backoff
            timeout=15,
            what=f"set failing with {kind} counted twice\n{agent.log()[-3000:]}",
        )
        assert f"event=nvml_error op=set uuid={agent.uuid(index)} index={index} kind={kind}" in agent.log()
        assert agent.limit(index) == H100_DEFAULT_WATTS
    agent.edit_gpu(5, faults={"get": "not_supported", "usage": "no_permission"})
    wait_for(
        lambda: _errors(agent, "get", "not_supported") >= 1 and _errors(agent, "usage", "no_permission") >= 1,
        timeout=10,
        what="failed reads counted",
    )
    assert agent.running()
    for index in range(6):
        agent.edit_gpu(index, faults={})
    for index in range(len(ERROR_KINDS)):
        agent.wait_limit(index, 400 + index, timeout=20)


def test_a_lost_gpu_is_counted_and_capped_again_when_it_comes_back(
    control_plane: ControlPlane, stub_node: Node, namespace: str, budget: str
) -> None:
    agent = stub_node[0]
    agent.start()
    _cap(control_plane, stub_node, namespace, budget, 2, 444)
    agent.wait_limit(2, 444)
    agent.edit_gpu(2, lost=True)
    wait_for(lambda: _errors(agent, "get", "gpu_lost") >= 1, timeout=10, what="the lost GPU counted")
    assert "event=gpu_unanswered index=2" in agent.log()
    agent.edit_gpu(2, lost=False, limitWatts=H100_DEFAULT_WATTS)  # back from a reset, at its default
    agent.wait_limit(2, 444, timeout=15)
    assert "event=gpu_answers_again index=2" in agent.log() and agent.running()


def test_a_driver_reload_is_followed_and_the_caps_put_back(
    control_plane: ControlPlane, stub_node: Node, namespace: str, budget: str
) -> None:
    agent = stub_node[0]
    agent.start()
    _cap(control_plane, stub_node, namespace, budget, 0, 450)
    _cap(control_plane, stub_node, namespace, budget, 1, 380)
    agent.wait_limit(0, 450)
    agent.wait_limit(1, 380)

    def reload(state: StubState) -> None:
        state.generation += 1  # the agent's NVML session is gone
        state.init_failures = 2  # and the driver takes two attempts to come back
        for gpu in state.gpus:  # with every GPU at its default limit, as after a reload
            gpu.limit_mw = gpu.default_mw

    edit_state(agent.gpu_state_path, reload)
    agent.wait_limit(0, 450, timeout=30)
    agent.wait_limit(1, 380, timeout=10)
    assert read_state(agent.gpu_state_path).init_failures == 0
    assert _errors(agent, "scan", "driver_not_loaded") == 2
    assert _errors(agent, "set", "uninitialized") + _errors(agent, "get", "uninitialized") >= 1
    assert agent.log().count("event=nvml_reinitialised") == 1 and agent.running()


def test_an_agent_started_while_nvml_cannot_initialise_waits_for_it(
    control_plane: ControlPlane, stub_node: Node, namespace: str, budget: str
) -> None:
    agent = stub_node[0]
    _cap(control_plane, stub_node, namespace, budget, 0, 470)
    agent.install_stub_gpus()
    edit_state(agent.gpu_state_path, lambda state: setattr(state, "init_failures", 2))
    agent.start()  # it retries after 1 s and 2 s
    agent.wait_limit(0, 470)
    assert agent.log().count("event=nvml_init_failed kind=driver_not_loaded") == 2


def test_limits_in_fractions_of_a_watt_are_capped_inside_them_and_corrected_above_a_cap(
    control_plane: ControlPlane, stub_node: Node, namespace: str, budget: str
) -> None:
    agent = stub_node[0]
    agent.install_stub_gpus()

    def odd(state: StubState) -> None:
        gpu = state.gpus[6]
        gpu.min_mw, gpu.max_mw = 200_500, 699_500  # limits NVML reports in milliwatts, not whole watts

    edit_state(agent.gpu_state_path, odd)
    agent.start()
    _cap(control_plane, stub_node, namespace, budget, 6, 200)  # below the minimum: clamped to 201 W
    _cap(control_plane, stub_node, namespace, budget, 7, 450)
    wait_for(lambda: read_state(agent.gpu_state_path).gpus[6].limit_mw == 201_000, timeout=10, what="201 W")
    agent.wait_limit(7, 450)
    edit_state(agent.gpu_state_path, lambda state: setattr(state.gpus[7], "limit_mw", 450_400))
    wait_for(
        lambda: read_state(agent.gpu_state_path).gpus[7].limit_mw == 450_000, timeout=10, what="450 W again"
    )
    assert _errors(agent, "set", "invalid_argument") == 0
