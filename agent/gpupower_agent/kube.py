"""Read-only list-and-watch of the pods on this node and of the GpuPowerBudgets.

Each resource has an informer: list, then watch from the list's
resourceVersion with bookmarks; a 410 Gone (history compacted) relists at once;
any other error is logged, counted and retried with backoff while the cache
keeps its last content, so an API outage never looks like "no pods".
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from gpupower_agent.cluster import BudgetView, InvalidObjectError, PodKey, PodView, budget_view, pod_view
from gpupower_api.models import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

V = TypeVar("V")
K = TypeVar("K", bound=Hashable)

WATCH_TIMEOUT_SECONDS = 60
LIST_TIMEOUT_SECONDS = 10.0
BACKOFF_MIN_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 10.0


class WatchExpired(Exception):
    """The API server answered 410 Gone: the resourceVersion is too old; relist."""


class ApiError(Exception):
    """A list or watch the API server refused or could not answer."""

    def __init__(self, resource: str, status: int | None, detail: str) -> None:
        self.resource = resource
        self.status = status
        super().__init__(f"{resource}: status={status} {detail}")


async def load_kube_config() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    try:
        config.load_incluster_config()
    except ConfigException:
        await config.load_kube_config()


class ApiHealth:
    """Whether the API server has been reachable recently (for ``/healthz``)."""

    def __init__(self, grace_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace_seconds = grace_seconds
        self._clock = clock
        self._failing: set[str] = set()
        self._failing_since: float | None = None

    def succeeded(self, resource: str) -> None:
        self._failing.discard(resource)
        if not self._failing:
            self._failing_since = None

    def failed(self, resource: str) -> None:
        if not self._failing:
            self._failing_since = self._clock()
        self._failing.add(resource)

    def unreachable_seconds(self) -> float:
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def healthy(self) -> bool:
        return self.unreachable_seconds() <= self._grace_seconds


ListFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ResourceSpec(Generic[K, V]):
    """How to list/watch one resource and turn its raw objects into views."""

    name: str
    list_fn: ListFn
    list_args: tuple[Any, ...]
    list_kwargs: Mapping[str, Any]
    to_view: Callable[[Mapping[str, Any]], V]
    key_of: Callable[[V], K]


class Informer(Generic[K, V]):
    """A cache of one resource's views, kept current by list + watch; ``on_change`` fires when it changes."""

    def __init__(
        self,
        spec: ResourceSpec[K, V],
        on_change: Callable[[], None],
        health: ApiHealth,
        on_api_error: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.items: dict[K, V] = {}
        self.synced = False
        self._on_change = on_change
        self._health = health
        self._on_api_error = on_api_error

    def _view(self, raw: Mapping[str, Any]) -> V | None:
        try:
            return self.spec.to_view(raw)
        except InvalidObjectError as error:
            log.warning("event=object_skipped resource=%s error=%r", self.spec.name, str(error))
            return None

    async def _call(self, **extra: Any) -> aiohttp.ClientResponse:
        try:
            response: aiohttp.ClientResponse = await self.spec.list_fn(
                *self.spec.list_args, **self.spec.list_kwargs, _preload_content=False, **extra
            )
        except ApiException as error:
            raise ApiError(self.spec.name, error.status, str(error.reason)) from error
        if response.status == 410:
            response.release()
            raise WatchExpired(self.spec.name)
        if not 200 <= response.status <= 299:
            body = (await response.text())[:300]
            response.release()
            raise ApiError(self.spec.name, response.status, body)
        return response

    async def list(self) -> str:
        """Replace the cache with a fresh list; return its resourceVersion."""
        response = await self._call(_request_timeout=LIST_TIMEOUT_SECONDS)
        try:
            raw = json.loads(await response.read())
        finally:
            response.release()
        items: dict[K, V] = {}
        for obj in raw.get("items") or []:
            view = self._view(obj)
            if view is not None:
                items[self.spec.key_of(view)] = view
        changed = items != self.items or not self.synced
        self.items = items
        self.synced = True
        self._health.succeeded(self.spec.name)
        if changed:
            self._on_change()
        return str(raw.get("metadata", {}).get("resourceVersion", ""))

    def _apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        view = self._view(obj)
        if view is None:
            return
        key = self.spec.key_of(view)
        if event_type == "DELETED":
            if self.items.pop(key, None) is not None:
                self._on_change()
        elif self.items.get(key) != view:
            self.items[key] = view
            self._on_change()

    async def watch(self, resource_version: str) -> str:
        """Watch from ``resource_version`` until the server ends the stream; return the last version seen."""
        response = await self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _request_timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=WATCH_TIMEOUT_SECONDS + 30),
        )
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                event_type, obj = event.get("type"), event.get("object") or {}
                if event_type == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(self.spec.name)
                    raise ApiError(self.spec.name, obj.get("code"), str(obj.get("message")))
                version = obj.get("metadata", {}).get("resourceVersion")
                if version:
                    resource_version = str(version)
                if event_type in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(event_type, obj)
        finally:
            response.release()
        return resource_version

    async def run(self) -> None:
        """List and watch forever; errors keep the last cache and retry with backoff."""
        backoff = BACKOFF_MIN_SECONDS
        while True:
            try:
                version = await self.list()
                backoff = BACKOFF_MIN_SECONDS
                while True:
                    version = await self.watch(version)
            except WatchExpired:
                log.info("event=watch_expired resource=%s action=relist", self.spec.name)
                continue
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                self._health.failed(self.spec.name)
                self._on_api_error(self.spec.name)
                log.warning(
                    "event=api_error resource=%s error=%r retry_in_seconds=%.1f cache=kept",
                    self.spec.name,
                    str(error) or type(error).__name__,
                    backoff,
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)


def pod_informer(
    api: client.ApiClient,
    node_name: str,
    namespace: str | None,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
) -> Informer[PodKey, PodView]:
    core = client.CoreV1Api(api)
    selector = {"field_selector": f"spec.nodeName={node_name}"}
    if namespace:
        spec = ResourceSpec("pods", core.list_namespaced_pod, (namespace,), selector, pod_view, _pod_key)
    else:
        spec = ResourceSpec("pods", core.list_pod_for_all_namespaces, (), selector, pod_view, _pod_key)
    return Informer(spec, on_change, health, on_api_error)


def budget_informer(
    api: client.ApiClient,
    namespace: str | None,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
) -> Informer[tuple[str, str], BudgetView]:
    custom = client.CustomObjectsApi(api)
    if namespace:
        fn, args = custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)
    else:
        fn, args = custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
    spec = ResourceSpec(PLURAL, fn, args, {}, budget_view, _budget_key)
    return Informer(spec, on_change, health, on_api_error)


def _pod_key(view: PodView) -> PodKey:
    return view.key


def _budget_key(view: BudgetView) -> tuple[str, str]:
    return (view.namespace, view.name)
