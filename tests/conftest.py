"""Session fixtures: one real control plane per test session, one namespace per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.envtest import ControlPlane, start_control_plane, unique_name


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    yield from start_control_plane()


@pytest.fixture(scope="session")
def crd_installed(control_plane: ControlPlane) -> ControlPlane:
    """The generated CRDs (budgets, domains, profile runs) applied to the control plane and established."""
    crds = Path(__file__).resolve().parents[1] / "crds"
    for plural in ("gpupowerbudgets", "gpupowerdomains", "gpupowerprofileruns"):
        control_plane.kubectl("apply", "-f", str(crds / f"{plural}.yaml"))
        control_plane.wait_established(f"{plural}.gpupower.dev")
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = unique_name("t")
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def requires_controllers(control_plane: ControlPlane) -> ControlPlane:
    if not control_plane.has_controllers:
        pytest.skip("the control-plane binaries have no kube-controller-manager (standard envtest download)")
    return control_plane
