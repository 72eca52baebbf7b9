"""The agent's small API client: credentials from kubeconfig and the pod, and HTTP/1.1 bodies as they arrive.

Against the real API server it is exercised by tests/e2e/test_agent_e2e.py; here,
a local HTTP server on loopback plays single scripted responses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupower_agent.apiclient import (
    ApiClient,
    Credentials,
    HttpError,
    KubeConfigError,
    in_cluster_credentials,
    kubeconfig_credentials,
    load_credentials,
)
from gpupower_agent.kube import ApiHealth, Informer, ResourceSpec, WatchExpired
from gpupower_agent.metrics import AgentMetrics, route


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_token_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path, {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}, {"token": "t"}
    )
    creds = kubeconfig_credentials(path)
    assert (creds.host, creds.port, creds.bearer()) == ("10.0.0.1", 6443, "t")
    assert creds.tls is not None


def test_a_token_file_is_read_for_every_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    path = kubeconfig(tmp_path, {"server": "http://127.0.0.1:8080"}, {"tokenFile": str(token)})
    creds = kubeconfig_credentials(path)
    assert creds.bearer() == "first"
    token.write_text("rotated")
    assert creds.bearer() == "rotated"


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ({"server": "ftp://x"}, {}, "server must be an https:// URL"),
        ({"server": "https://x"}, {"exec": {"command": "aws"}}, "exec and auth-provider are not supported"),
        (
            {"server": "https://x", "certificate-authority-data": base64.b64encode(b"junk").decode()},
            {},
            "certificate-authority",
        ),
        (
            {"server": "https://x", "insecure-skip-tls-verify": True},
            {"client-certificate": "/absent.crt"},
            "client",
        ),
    ],
)
def test_unusable_kubeconfigs_name_the_problem(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], message: str
) -> None:
    path = kubeconfig(tmp_path, cluster, user)
    with pytest.raises(KubeConfigError, match=message):
        kubeconfig_credentials(path)


def test_missing_or_garbled_kubeconfig_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="absent"):
        load_credentials({"KUBECONFIG": str(tmp_path / "absent")})
    garbled = tmp_path / "garbled"
    garbled.write_text("clusters: [")
    with pytest.raises(KubeConfigError, match="garbled"):
        kubeconfig_credentials(garbled)
    no_context = tmp_path / "no-context"
    no_context.write_text(yaml.safe_dump({"current-context": "nope", "contexts": []}))
    with pytest.raises(KubeConfigError, match="contexts: no entry named 'nope'"):
        kubeconfig_credentials(no_context)


def test_in_cluster_credentials_need_the_service_and_the_token(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_credentials({}, tmp_path) is None
    assert in_cluster_credentials(env, tmp_path) is None  # no token mounted
    (tmp_path / "token").write_text("sa-token")
    ca = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
         "-out", str(tmp_path / "ca.crt"), "-subj", "/CN=ca", "-days", "1"],
        capture_output=True, check=False,
    )  # fmt: skip
    if ca.returncode != 0:
        pytest.skip("openssl cannot make a test CA here")
    creds = in_cluster_credentials(env, tmp_path)
    assert creds is not None
    assert (creds.host, creds.port, creds.bearer()) == ("10.96.0.1", 443, "sa-token")


# ---------------------------------------------------------------------------
# HTTP bodies


OPEN_WATCH = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class Scripted:
    """A loopback HTTP server answering each connection with the next scripted raw response."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        response = self.responses.pop(0)
        writer.write(response)
        await writer.drain()
        if response == OPEN_WATCH:
            await asyncio.sleep(5)  # a watch with nothing to say yet
        writer.close()

    def client(self) -> ApiClient:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return ApiClient(Credentials("127.0.0.1", port, None, None, token="secret"))


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted([])
    script.server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    yield script
    script.server.close()


def chunked(*pieces: bytes) -> bytes:
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def event(kind: str, name: str, version: str, code: int | None = None) -> bytes:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}
    if code is not None:
        obj = {"kind": "Status", "code": code, "message": "too old resource version"}
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


async def test_a_list_body_with_content_length(scripted: Scripted) -> None:
    body = json.dumps({"metadata": {"resourceVersion": "7"}, "items": []}).encode()
    scripted.responses.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert await scripted.client().get_json("/api/v1/pods", {"fieldSelector": "spec.nodeName=n"}, 5) == {
        "metadata": {"resourceVersion": "7"},
        "items": [],
    }
    request = scripted.requests[0].decode()
    assert request.startswith("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dn HTTP/1.1\r\n")
    assert "Authorization: Bearer secret" in request


async def test_watch_events_split_across_chunks_arrive_whole(scripted: Scripted) -> None:
    first, second = event("ADDED", "a", "5"), event("BOOKMARK", "", "9")
    scripted.responses.append(chunked(first[:10], first[10:] + second[:4], second[4:]))
    events = [e async for e in scripted.client().watch("/api/v1/pods", {"watch": "true"}, 5)]
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("ADDED", "5"),
        ("BOOKMARK", "9"),
    ]


async def test_an_error_status_carries_the_code_and_body(scripted: Scripted) -> None:
    body = b'{"kind":"Status","code":403,"reason":"Forbidden"}'
    scripted.responses.append(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with pytest.raises(HttpError) as caught:
        await scripted.client().get_json("/api/v1/pods", {}, 5)
    assert caught.value.status == 403
    assert "Forbidden" in caught.value.body


async def test_a_watch_that_expires_relists(scripted: Scripted) -> None:
    listed = json.dumps({"metadata": {"resourceVersion": "1"}, "items": []}).encode()
    list_response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(listed) + listed
    scripted.responses += [chunked(event("ADDED", "a", "2"), event("ERROR", "", "", code=410))]
    changes: list[int] = []
    informer = Informer(
        scripted.client(),
        ResourceSpec("things", "/api/v1/things", {}, lambda raw: raw["metadata"]["name"], lambda name: name),
        lambda: changes.append(1),
        ApiHealth(60),
        lambda _: None,
    )
    with pytest.raises(WatchExpired):
        await informer.watch("1")
    assert informer.items == {"a": "a"}
    scripted.responses.append(list_response)
    assert await informer.list() == "1"
    assert informer.items == {}  # the relist is the truth: "a" was deleted meanwhile
    assert (
        b"resourceVersion=1" in scripted.requests[0] and b"allowWatchBookmarks=true" in scripted.requests[0]
    )


def test_healthz_and_metrics_routes() -> None:
    metrics = AgentMetrics()
    assert route("/healthz", metrics, lambda: (True, "ok")).startswith(b"HTTP/1.1 200 OK")
    unhealthy = route("/healthz", metrics, lambda: (False, "api unreachable"))
    assert unhealthy.startswith(b"HTTP/1.1 503") and unhealthy.endswith(b"api unreachable\n")
    assert b"gpupower_agent_reconcile_duration_seconds" in route("/metrics", metrics, lambda: (True, "ok"))
    assert route("/other", metrics, lambda: (True, "ok")).startswith(b"HTTP/1.1 404")


def test_the_agent_never_imports_the_operators_libraries() -> None:
    code = (
        "import sys, gpupower_agent.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'kopf', 'prometheus_api_client', 'kubernetes_asyncio', 'aiohttp'}))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": f"{root / 'api'}:{root / 'agent'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_garbled_watch_stream_is_counted_and_the_informer_relists(scripted: Scripted) -> None:
    def listing(version: str, names: list[str]) -> bytes:
        items = [{"metadata": {"name": n, "namespace": "ns"}} for n in names]
        body = json.dumps({"metadata": {"resourceVersion": version}, "items": items}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    never_ending = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # a watch with no event yet
    scripted.responses += [
        listing("1", ["a"]),
        chunked(b"this is not json\n"),
        listing("2", ["b"]),
        never_ending,
    ]
    errors: list[str] = []
    health = ApiHealth(60)
    informer = Informer(
        scripted.client(),
        ResourceSpec("things", "/api/v1/things", {}, lambda raw: raw["metadata"]["name"], lambda name: name),
        lambda: None,
        health,
        errors.append,
    )
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(100):
            if informer.items == {"b": "b"}:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert informer.items == {"b": "b"}
    assert errors == ["things"]
    assert health.healthy()


async def test_a_stopped_informer_ends_even_without_cancellation() -> None:
    # A port nobody listens on: every list fails, and the informer keeps retrying until stopped.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    informer = Informer(
        ApiClient(Credentials("127.0.0.1", port, None, None)),
        ResourceSpec("things", "/api/v1/things", {}, lambda raw: raw, lambda raw: str(raw)),
        lambda: None,
        ApiHealth(60),
        lambda _: None,
    )
    task = asyncio.create_task(informer.run())
    await asyncio.sleep(0.3)
    assert not task.done()
    informer.stop()
    await asyncio.wait_for(task, timeout=15)
