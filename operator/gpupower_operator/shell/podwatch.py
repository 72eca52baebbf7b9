"""The pod watch: one list, then one long watch per scope, feeding the pod index.

Pods are the bulk of what the operator sees (ten per budget or more), so they
bypass kopf's per-object machinery: each event is reduced at once to a small
:class:`~gpupower_operator.core.reconcile.PodState`. A list (paginated) gives the
starting point; the watch resumes from its resourceVersion, with bookmarks; an
expired version (410 Gone) or a dropped connection relists after a backoff.
``synced`` is set once every scope has been listed, so no reconcile runs on a
half-filled index.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger("gpupower_operator")

PAGE_SIZE = 500
WATCH_SECONDS = 300
BACKOFF_MAX_SECONDS = 30.0

# (namespace, name, raw pod or None when deleted)
PodEventFn = Callable[[str, str, Mapping[str, Any] | None], None]


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _pods_path(namespace: str | None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def nodes_path(_: str | None) -> str:
    return "/api/v1/nodes"


class PodWatch:
    """List and watch the pods of the given namespaces (all when empty).

    With ``path_of=nodes_path`` the same machinery lists and watches the Nodes
    (cluster-scoped: one scope, ``namespace`` is None in the callback).
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: Sequence[str],
        on_pod: PodEventFn,
        path_of: Callable[[str | None], str] = _pods_path,
    ) -> None:
        self._api = api
        self._path_of = path_of
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._on_pod = on_pod
        self._listed: set[str | None] = set()
        self.synced = asyncio.Event()
        self.known: dict[str | None, set[tuple[str, str]]] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._run_scope(scope) for scope in self._scopes))

    async def _request(self, path: str, query: list[tuple[str, Any]], timeout_seconds: float) -> Any:
        return await self._api.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds),
        )

    async def _list(self, scope: str | None) -> str:
        """List every pod of the scope; forget pods that vanished while unwatched. Returns the version."""
        seen: set[tuple[str, str]] = set()
        token: str | None = None
        version = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", PAGE_SIZE)]
            if token:
                query.append(("continue", token))
            response = await self._request(self._path_of(scope), query, 60)
            async with response:
                if response.status != 200:
                    raise ApiException(status=response.status, reason=await response.text())
                page = json.loads(await response.read())
            for item in page.get("items") or []:
                metadata = item.get("metadata") or {}
                key = (str(metadata.get("namespace") or ""), str(metadata.get("name")))
                seen.add(key)
                self._on_pod(key[0], key[1], item)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                break
        for namespace, name in self.known.get(scope, set()) - seen:
            self._on_pod(namespace, name, None)
        self.known[scope] = seen
        self._listed.add(scope)
        if len(self._listed) == len(self._scopes):
            self.synced.set()
        return version

    async def _watch(self, scope: str | None, version: str) -> str:
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", version),
            ("timeoutSeconds", WATCH_SECONDS),
        ]
        response = await self._request(self._path_of(scope), query, WATCH_SECONDS + 30)
        known = self.known.setdefault(scope, set())
        async with response:
            if response.status == 410:
                raise WatchExpired()
            if response.status != 200:
                raise ApiException(status=response.status, reason=await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                item = event.get("object") or {}
                metadata = item.get("metadata") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise WatchExpired()
                    raise ApiException(status=int(item.get("code") or 500), reason=str(item.get("message")))
                version = str(metadata.get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                key = (str(metadata.get("namespace") or ""), str(metadata.get("name")))
                if kind == "DELETED":
                    known.discard(key)
                    self._on_pod(key[0], key[1], None)
                else:
                    known.add(key)
                    self._on_pod(key[0], key[1], item)
        return version

    async def _run_scope(self, scope: str | None) -> None:
        backoff_seconds = 0.2
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(scope)
                version = await self._watch(scope, version)
                backoff_seconds = 0.2
            except WatchExpired:
                version = None
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
                log.warning(
                    "watch interrupted path=%s retry_in_seconds=%.1f error=%s",
                    self._path_of(scope),
                    backoff_seconds,
                    type(error).__name__,
                )
                await asyncio.sleep(backoff_seconds)
                backoff_seconds = min(backoff_seconds * 2, BACKOFF_MAX_SECONDS)
