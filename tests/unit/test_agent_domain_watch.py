"""The agent's watches of the power domains and of its own Node: views, and optional resources.

A local HTTP server on loopback plays scripted responses (as in test_agent_apiclient):
a refused or missing resource (403, 404) means "no domain", said once, never an outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpupower_agent import kube
from gpupower_agent.cluster import domain_view, node_view
from gpupower_agent.kube import ApiHealth, domain_informer, node_informer
from gpupower_api.contract import GPU_POWER_HELD_ANNOTATION
from tests.unit.test_agent_apiclient import OPEN_WATCH, Scripted, chunked


def response(status: int, document: dict[str, Any]) -> bytes:
    body = json.dumps(document).encode()
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}[status]
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n" % (status, reason.encode(), len(body)) + body


def domain(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gpupower.dev/v1alpha1",
        "kind": "GpuPowerDomain",
        "metadata": {"name": name},
        "spec": spec,
    }


RACK = {"totalWatts": 9000, "nodeSelector": {"matchLabels": {"rack": "a12"}}, "idleGpuWatts": 100}


def test_a_domain_whose_spec_does_not_validate_is_kept_with_the_field_that_fails() -> None:
    assert domain_view(domain("rack-a12", RACK)).spec is not None
    broken = domain_view(domain("rack-b", {**RACK, "idleGpuWatts": -5}))
    assert broken.spec is None
    assert broken.invalid_field == "spec.idleGpuWatts"
    assert broken.invalid_reason and "idleGpuWatts" in broken.invalid_reason


def test_the_node_view_holds_its_labels_and_its_held_report() -> None:
    raw = {
        "metadata": {
            "name": "gpu-1",
            "labels": {"rack": "a12"},
            "annotations": {GPU_POWER_HELD_ANNOTATION: "{}", "other": "x"},
        }
    }
    view = node_view(raw)
    assert (view.name, dict(view.labels), view.held_report) == ("gpu-1", {"rack": "a12"}, "{}")


async def wait_until(predicate: Any, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted([])
    script.server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    yield script
    script.server.close()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "UNAVAILABLE_RETRY_MIN_SECONDS", 0.05)


@pytest.mark.parametrize("status", [403, 404])
async def test_domains_the_agent_may_not_read_mean_no_domain_said_once_and_tried_again(
    scripted: Scripted, status: int, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    refused = response(status, {"kind": "Status", "code": status})
    listing = response(200, {"metadata": {"resourceVersion": "3"}, "items": [domain("rack-a12", RACK)]})
    scripted.responses += [refused, refused, refused, listing, OPEN_WATCH]
    errors: list[str] = []
    changes: list[int] = []
    health = ApiHealth(0)
    informer = domain_informer(scripted.client(), lambda: changes.append(1), health, errors.append)
    caplog.set_level(logging.INFO, logger="gpupower_agent.kube")
    task = asyncio.create_task(informer.run())
    try:
        await wait_until(lambda: informer.synced)
        assert informer.items == {} and health.healthy() and errors == []
        await wait_until(lambda: "rack-a12" in informer.items)
    finally:
        informer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert changes == [1, 1]  # synced empty, then the domain
    assert caplog.text.count("event=resource_unavailable") == 1
    assert "event=resource_available resource=gpupowerdomains" in caplog.text
    assert scripted.requests[0].startswith(b"GET /apis/gpupower.dev/v1alpha1/gpupowerdomains HTTP/1.1")


async def test_other_errors_on_domains_are_an_outage_that_keeps_the_cache(scripted: Scripted) -> None:
    scripted.responses += [response(500, {"kind": "Status", "code": 500})]
    errors: list[str] = []
    health = ApiHealth(0)
    informer = domain_informer(scripted.client(), lambda: None, health, errors.append)
    task = asyncio.create_task(informer.run())
    try:
        await wait_until(lambda: errors)
    finally:
        informer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not informer.synced and errors == ["gpupowerdomains"]


async def test_the_node_is_read_with_a_get_then_watched_by_its_name(scripted: Scripted) -> None:
    node = {"metadata": {"name": "gpu-1", "resourceVersion": "7", "labels": {"rack": "a12"}}}
    relabelled = {"metadata": {"name": "gpu-1", "resourceVersion": "8", "labels": {"rack": "a13"}}}
    event = json.dumps({"type": "MODIFIED", "object": relabelled}).encode() + b"\n"
    scripted.responses += [response(200, node), chunked(event), OPEN_WATCH]
    informer = node_informer(scripted.client(), "gpu-1", lambda: None, ApiHealth(60), lambda _: None)
    task = asyncio.create_task(informer.run())
    try:
        await wait_until(lambda: informer.synced and informer.items["gpu-1"].labels == {"rack": "a13"})
    finally:
        informer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    get, watch = scripted.requests[0].decode(), scripted.requests[1].decode()
    assert get.startswith("GET /api/v1/nodes/gpu-1 HTTP/1.1")
    assert watch.startswith(
        "GET /api/v1/nodes?fieldSelector=metadata.name%3Dgpu-1&watch=true&resourceVersion=7"
    )


async def test_a_refused_node_watch_keeps_the_labels_it_read_and_polls(
    scripted: Scripted, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    node = {"metadata": {"name": "gpu-1", "resourceVersion": "7", "labels": {"rack": "a12"}}}
    refused = response(403, {"kind": "Status", "code": 403})
    scripted.responses += [response(200, node), refused, response(200, node), refused, response(200, node)]
    scripted.responses += [OPEN_WATCH]
    changes: list[int] = []
    informer = node_informer(
        scripted.client(), "gpu-1", lambda: changes.append(1), ApiHealth(0), lambda _: None
    )
    caplog.set_level(logging.INFO, logger="gpupower_agent.kube")
    task = asyncio.create_task(informer.run())
    try:
        await wait_until(lambda: not scripted.responses)
    finally:
        informer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert informer.items["gpu-1"].labels == {"rack": "a12"}
    assert changes == [1]  # never flapped to "no labels" and back
    assert caplog.text.count("event=resource_unavailable") == 1 and "poll_by_listing" in caplog.text
