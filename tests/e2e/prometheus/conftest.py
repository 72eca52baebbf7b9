"""One real Prometheus (and its synthetic exporter) for every Prometheus test of the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.promkit import PrometheusStack, prometheus_binary, start_stack


@pytest.fixture(scope="session")
def prometheus_stack() -> Iterator[PrometheusStack]:
    if prometheus_binary() is None:
        message = "prometheus binary not found (apt-get install prometheus, or set GPUPOWER_PROMETHEUS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield from start_stack()


@pytest.fixture
def prometheus(prometheus_stack: PrometheusStack) -> PrometheusStack:
    """The shared stack, running (a test that stopped the server has it started again)."""
    if not prometheus_stack.server.running():
        prometheus_stack.server.start()
    return prometheus_stack
