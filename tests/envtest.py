"""A real Kubernetes control plane for the test session (the envtest pattern).

The launcher itself is ``demo.controlplane`` (the demo uses it too); this module
adds what only tests need: skip with a reason outside CI when the kit is
missing, fail with CI=true, and small polling helpers.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from demo.controlplane import (
    REPO,
    ControlPlane,
    kit_script,
    kubectl_binary,
    missing_prerequisite,
    running_control_plane,
    source_env,
)

__all__ = [
    "REPO",
    "ControlPlane",
    "kit_script",
    "kubectl_binary",
    "source_env",
    "start_control_plane",
    "unique_name",
    "wait_for",
]


def start_control_plane() -> Iterator[ControlPlane]:
    problem = missing_prerequisite()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    with running_control_plane() as control_plane:
        yield control_plane


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
