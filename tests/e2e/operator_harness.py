"""Run the real operator against the real control plane, through a recording, fault-injecting proxy.

- :class:`ApiProxy`: a loopback HTTP server that forwards every request (watches
  stream through) to the API server over TLS, passing the bearer token on. It
  records every write with its outcome, and can answer chosen requests with an
  injected error instead of forwarding them.
- :class:`OperatorProcess`: ``python -m gpupower_operator`` with a
  ServiceAccount kubeconfig pointed at the proxy; it dies with the test process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.children import tied_to_this_process
from tests.envtest import REPO, ControlPlane, source_env

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

# (method, path) -> HTTP status to inject, or None to forward.
FaultRule = Callable[[str, str], int | None]


@dataclass(frozen=True)
class Recorded:
    sequence: int
    method: str
    path: str
    body: Any
    status: int
    injected: bool
    at: float = 0.0  # time.monotonic() when the request arrived

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.injected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProxy:
    """Forward to the API server; record writes; inject faults chosen by :attr:`fault`."""

    def __init__(self, upstream: str, ca_data: bytes) -> None:
        self.upstream = upstream.rstrip("/")
        self._ssl = ssl.create_default_context(cadata=ca_data.decode())
        self._lock = threading.Lock()
        self._sequence = 0
        self.records: list[Recorded] = []
        self.fault: FaultRule | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-proxy", daemon=True)

    def start(self) -> ApiProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the API proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def mark(self) -> int:
        with self._lock:
            return self._sequence

    def writes_since(self, mark: int, namespace: str | None = None) -> list[Recorded]:
        with self._lock:
            records = [r for r in self.records if r.sequence > mark]
        if namespace is not None:
            records = [r for r in records if f"/namespaces/{namespace}/" in r.path]
        return sorted(records, key=lambda r: r.sequence)

    def _next(self) -> int:
        with self._lock:
            self._sequence += 1
            return self._sequence

    def _record(self, record: Recorded) -> None:
        with self._lock:
            self.records.append(record)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def setup() -> tuple[aiohttp.ClientSession, web.AppRunner]:
            session = aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            )

            async def forward(request: web.Request) -> web.StreamResponse:
                return await self._forward(session, request)

            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", forward)
            # Open watches would hold a graceful shutdown for a minute: the proxy stops at once.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return session, runner

        session, runner = self._loop.run_until_complete(setup())
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())
            self._loop.run_until_complete(session.close())
            self._loop.close()

    async def _forward(self, session: aiohttp.ClientSession, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        method = request.method
        sequence = self._next() if method in WRITE_METHODS else 0
        parsed: Any = None
        if body and method in WRITE_METHODS:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode(errors="replace")
        rule = self.fault
        injected = rule(method, request.path) if rule is not None else None
        if injected is not None:
            if method in WRITE_METHODS:
                self._record(Recorded(sequence, method, request.path, parsed, injected, True, arrived))
            status_body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "injected by the test proxy",
                "reason": "Conflict" if injected == 409 else "InternalError",
                "code": injected,
            }
            return web.json_response(status_body, status=injected)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with session.request(
            method, self.upstream + request.path_qs, headers=headers, data=body or None, ssl=self._ssl
        ) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # the client went away (a watch the operator closed)
            if method in WRITE_METHODS:
                self._record(
                    Recorded(sequence, method, request.path, parsed, upstream.status, False, arrived)
                )
            return response


def upstream_of(kubeconfig: Path) -> tuple[str, bytes]:
    """The API server URL and CA certificate (PEM) of a kubeconfig's first cluster."""
    cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = (kubeconfig.parent / cluster["certificate-authority"]).read_bytes()
    return str(cluster["server"]), ca


def proxied_kubeconfig(
    control_plane: ControlPlane, namespace: str, account: str, directory: Path, url: str
) -> Path:
    """A ServiceAccount kubeconfig whose server is the proxy (plain HTTP on loopback)."""
    original = control_plane.service_account_kubeconfig(namespace, account, directory)
    config = yaml.safe_load(original.read_text())
    config["clusters"][0]["cluster"] = {"server": url}
    path = directory / f"kubeconfig-{account}-proxied"
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """``python -m gpupower_operator`` as a child of the test process."""

    def __init__(
        self, kubeconfig: Path, log_path: Path, resync_seconds: float = 2.0, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 30.0) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            tied_to_this_process(
                [
                    sys.executable,
                    "-m",
                    "gpupower_operator",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--resync-seconds",
                    str(self.resync_seconds),
                    "--log-level",
                    "info",
                    *self.extra_args,
                ],
                death_signal=signal.SIGTERM,
            ),
            env=source_env({"KUBECONFIG": str(self.kubeconfig)}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.get("/healthz")[0] == 200:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the operator was not healthy within {timeout_seconds:g}s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def install_operator_rbac(control_plane: ControlPlane) -> None:
    """The operator's namespace and RBAC from manifests/."""
    control_plane.apply(yaml.safe_load((REPO / "manifests" / "base" / "namespace.yaml").read_text()))
    control_plane.kubectl("apply", "-f", str(REPO / "manifests" / "operator" / "rbac.yaml"))


@contextlib.contextmanager
def running_operator(
    control_plane: ControlPlane,
    directory: Path,
    resync_seconds: float = 2.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[OperatorProcess]:
    """The real operator under its own ServiceAccount (straight to the API server), stopped after."""
    install_operator_rbac(control_plane)
    kubeconfig = control_plane.service_account_kubeconfig("gpupower-system", "gpupower-operator", directory)
    process = OperatorProcess(kubeconfig, directory / "operator.log", resync_seconds, extra_args)
    try:
        yield process.start()
    finally:
        process.stop()
        print(f"operator log: {process.log_path}\n{process.log_tail(60)}")


def clean_namespace(control_plane: ControlPlane, namespace: str) -> None:
    """A test's budgets (while their operator runs), workloads and never-running pods, removed."""
    control_plane.kubectl("delete", "gpb", "--all", "-n", namespace, "--timeout=30s", check=False)
    control_plane.kubectl("delete", "deployment", "--all", "-n", namespace, "--wait=false", check=False)
    control_plane.kubectl(
        "delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False
    )
