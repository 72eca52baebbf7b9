"""A small Kubernetes API client on asyncio streams: credentials, GET, watch streams, PATCH.

The agent needs four calls of the API (list and watch, as raw JSON, a merge
patch of its own Node's inventory labels, and a strategic merge patch of one
condition in a pod's status) and must stay
small on every GPU node; the generated kubernetes-asyncio client alone costs
about 60 MiB of memory for its thousand model classes. This speaks HTTP/1.1
over TLS, one connection per request, and finds credentials the usual way: in
a pod, the ServiceAccount's token (re-read for every request, as bound tokens
rotate) and CA; elsewhere the first file of ``KUBECONFIG`` (or ``~/.kube/config``),
its current context, with a token, a token file or a client certificate.
Exec and auth-provider plugins are not supported (they are for humans, not DaemonSets).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_ERROR_BODY_BYTES = 4096


class KubeConfigError(ValueError):
    """Credentials that cannot be used; the message names the file and field."""


class HttpError(Exception):
    """The API server answered with a status outside 2xx."""

    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body[:300]}")


class ProtocolError(Exception):
    """A response that is not well-formed HTTP/1.1."""


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None
    token: str | None = None
    token_file: Path | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


def _tls_context(ca_file: Path | None, ca_data: bytes | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if ca_data is not None:
        context.load_verify_locations(cadata=ca_data.decode())
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _split_server(server: str, where: str) -> tuple[str, int, bool]:
    parts = urlsplit(server)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise KubeConfigError(f"{where}: server must be an https:// URL, got {server!r}")
    secure = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if secure else 80), secure


def in_cluster_credentials(
    environ: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR
) -> Credentials | None:
    """The pod's ServiceAccount credentials, or None when not running in a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (sa_dir / "token").exists():
        return None
    try:
        context = _tls_context(sa_dir / "ca.crt", None, insecure=False)
    except (ssl.SSLError, OSError) as error:
        raise KubeConfigError(f"{sa_dir / 'ca.crt'}: {error}") from error
    return Credentials(host, int(port), context, host, token_file=sa_dir / "token")


def _data_or_file(entry: Mapping[str, Any], key: str, base: Path) -> tuple[bytes | None, Path | None]:
    data = entry.get(f"{key}-data")
    if data:
        return base64.b64decode(data), None
    path = entry.get(key)
    if path:
        resolved = Path(path) if Path(path).is_absolute() else base / path
        return None, resolved
    return None, None


def kubeconfig_credentials(path: Path) -> Credentials:
    """Credentials of the current context of the kubeconfig at ``path``."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise KubeConfigError(f"{path}: cannot read: {error}") from error
    if not isinstance(config, dict):
        raise KubeConfigError(f"{path}: not a kubeconfig")

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                inner = item.get(section.removesuffix("s"))
                if isinstance(inner, dict):
                    return inner
        raise KubeConfigError(f"{path}: {section}: no entry named {name!r}")

    context = named("contexts", config.get("current-context"))
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user")) if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError(
            f"{path}: users[{context.get('user')!r}]: exec and auth-provider are not supported"
        )
    host, port, secure = _split_server(str(cluster.get("server", "")), f"{path}: clusters.server")
    tls: ssl.SSLContext | None = None
    if secure:
        try:
            ca_data, ca_file = _data_or_file(cluster, "certificate-authority", path.parent)
            tls = _tls_context(ca_file, ca_data, bool(cluster.get("insecure-skip-tls-verify")))
        except (ssl.SSLError, OSError, ValueError) as error:
            raise KubeConfigError(f"{path}: clusters.certificate-authority: {error}") from error
        try:
            cert_data, cert_file = _data_or_file(user, "client-certificate", path.parent)
            key_data, key_file = _data_or_file(user, "client-key", path.parent)
            if cert_data is not None or cert_file is not None:
                _load_client_certificate(tls, cert_data, cert_file, key_data, key_file)
        except (ssl.SSLError, OSError, ValueError) as error:
            raise KubeConfigError(f"{path}: users.client-certificate/client-key: {error}") from error
    token_file = Path(user["tokenFile"]) if user.get("tokenFile") else None
    server_name = cluster.get("tls-server-name") or host
    return Credentials(host, port, tls, server_name, token=user.get("token"), token_file=token_file)


def _load_client_certificate(
    tls: ssl.SSLContext,
    cert_data: bytes | None,
    cert_file: Path | None,
    key_data: bytes | None,
    key_file: Path | None,
) -> None:
    # ssl only loads certificates from files: inline data goes through a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="gpupower-agent-") as private:
        if cert_data is not None:
            cert_file = Path(private) / "client.crt"
            cert_file.write_bytes(cert_data)
        if key_data is not None:
            key_file = Path(private) / "client.key"
            key_file.touch(mode=0o600)
            key_file.write_bytes(key_data)
        assert cert_file is not None
        tls.load_cert_chain(str(cert_file), str(key_file) if key_file else None)


def load_credentials(environ: Mapping[str, str] = os.environ) -> Credentials:
    """In-cluster credentials in a pod, else the kubeconfig (first of ``KUBECONFIG``, or ~/.kube/config)."""
    found = in_cluster_credentials(environ)
    if found is not None:
        return found
    paths = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    path = Path(paths[0]) if paths else Path.home() / ".kube" / "config"
    return kubeconfig_credentials(path)


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


MERGE_PATCH = "application/merge-patch+json"
# Merges lists by their key (a pod's conditions by type): one condition changes, the kubelet's stay.
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiClient:
    """Requests to the API server (GET, and PATCH for the node inventory and pod conditions); each on its own
    connection."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def _request(
        self,
        path: str,
        params: Mapping[str, str],
        method: str = "GET",
        body: bytes | None = None,
        content_type: str = MERGE_PATCH,
    ) -> _Response:
        creds = self.credentials
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                creds.host,
                creds.port,
                ssl=creds.tls,
                server_hostname=creds.server_hostname if creds.tls else None,
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
        try:
            target = f"{path}?{urlencode(params)}" if params else path
            lines = [
                f"{method} {target} HTTP/1.1",
                f"Host: {creds.host}:{creds.port}",
                "Accept: application/json",
                "User-Agent: gpupower-agent",
                "Connection: close",
            ]
            if body is not None:
                lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
            token = creds.bearer()
            if token:
                lines.append(f"Authorization: Bearer {token}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            writer.close()
            raise ProtocolError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        response = _Response(int(parts[1]), headers, reader, writer)
        if not 200 <= response.status <= 299:
            try:
                body = b"".join([chunk async for chunk in _body_chunks(response, MAX_ERROR_BODY_BYTES)])
            except (ProtocolError, asyncio.IncompleteReadError, OSError):
                body = b""
            finally:
                response.close()
            raise HttpError(response.status, body.decode("utf-8", "replace"))
        return response

    async def get_json(self, path: str, params: Mapping[str, str], timeout_seconds: float) -> Any:
        """GET ``path`` and parse the JSON body."""

        async def fetch() -> Any:
            response = await self._request(path, params)
            try:
                body = b"".join([chunk async for chunk in _body_chunks(response, None)])
            finally:
                response.close()
            return json.loads(body)

        return await asyncio.wait_for(fetch(), timeout_seconds)

    async def merge_patch(
        self,
        path: str,
        patch: Mapping[str, Any],
        timeout_seconds: float,
        content_type: str = MERGE_PATCH,
    ) -> Any:
        """PATCH ``path`` with a merge patch (or ``content_type``); return the object the server answers."""

        async def send() -> Any:
            response = await self._request(path, {}, "PATCH", json.dumps(patch).encode(), content_type)
            try:
                body = b"".join([chunk async for chunk in _body_chunks(response, None)])
            finally:
                response.close()
            return json.loads(body)

        return await asyncio.wait_for(send(), timeout_seconds)

    async def watch(
        self, path: str, params: Mapping[str, str], idle_timeout_seconds: float
    ) -> AsyncIterator[Any]:
        """GET a watch stream; yield each event (one JSON object per line) as it arrives."""
        response = await asyncio.wait_for(self._request(path, params), idle_timeout_seconds)
        try:
            pending = b""
            chunks = _body_chunks(response, None)
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), idle_timeout_seconds)
                except StopAsyncIteration:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            response.close()


async def _body_chunks(response: _Response, limit_bytes: int | None) -> AsyncIterator[bytes]:
    """The body as it arrives: chunked transfer coding, Content-Length, or until the server closes."""
    reader = response.reader
    received = 0
    if response.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            received += size
            yield data
            if limit_bytes is not None and received >= limit_bytes:
                return
    elif "content-length" in response.headers:
        remaining = int(response.headers["content-length"])
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise ProtocolError("connection closed before the end of the body")
            remaining -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data
