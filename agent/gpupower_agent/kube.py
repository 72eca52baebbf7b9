"""Read-only list-and-watch of the pods on this node, the GpuPowerBudgets, the GpuPowerDomains and this Node.

Each resource has an informer: list, then watch from the list's
resourceVersion with bookmarks; a 410 Gone (history compacted) relists at once;
any other error is logged, counted and retried with backoff while the cache
keeps its last content, so an API outage never looks like "no pods".

The power domains and the Node's labels are optional: where the agent may not
read them, or their kind does not exist (403 or 404, e.g. the domains' CRD is
not installed), the agent runs as it does outside any domain. Their informers
then hold nothing, count as synced, say so once and try again at a bounded
rate, without marking the API unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gpupower_agent.apiclient import ApiClient, HttpError, ProtocolError
from gpupower_agent.cluster import (
    DEFAULT_GPU_RESOURCE_NAMES,
    BudgetView,
    DomainView,
    InvalidObjectError,
    NodeView,
    PodKey,
    PodView,
    budget_view,
    domain_view,
    node_view,
    pod_view,
)
from gpupower_api.domains import PLURAL as DOMAIN_PLURAL
from gpupower_api.models import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

V = TypeVar("V")
K = TypeVar("K", bound=Hashable)

WATCH_TIMEOUT_SECONDS = 60
LIST_TIMEOUT_SECONDS = 10.0
BACKOFF_MIN_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 10.0
# An optional resource the agent may not read (403) or that does not exist (404): tried again this often.
UNAVAILABLE_RETRY_MIN_SECONDS = 1.0
UNAVAILABLE_RETRY_MAX_SECONDS = 60.0
# What the API answers when the agent may not read a resource, or the resource does not exist.
UNAVAILABLE_STATUSES = frozenset({403, 404})


class WatchExpired(Exception):
    """The API server answered 410 Gone: the resourceVersion is too old; relist."""


class ApiError(Exception):
    """A list or watch the API server refused or could not answer."""

    def __init__(self, resource: str, status: int | None, detail: str) -> None:
        self.resource = resource
        self.status = status
        super().__init__(f"{resource}: status={status} {detail}")


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


@dataclass(frozen=True)
class ResourceSpec(Generic[K, V]):
    """Where to list/watch one resource and how to turn its raw objects into views.

    ``object_path``: one object, read with a GET of that path instead of a list (so
    ``get`` and ``watch`` suffice), then watched at ``path`` with ``params``.
    ``optional``: a 403 or 404 means "none" (see the module docstring), not an outage.
    """

    name: str
    path: str
    params: Mapping[str, str]
    to_view: Callable[[Mapping[str, Any]], V]
    key_of: Callable[[V], K]
    object_path: str | None = None
    optional: bool = False


class Informer(Generic[K, V]):
    """A cache of one resource's views, kept current by list + watch; ``on_change`` fires when it changes."""

    def __init__(
        self,
        api: ApiClient,
        spec: ResourceSpec[K, V],
        on_change: Callable[[], None],
        health: ApiHealth,
        on_api_error: Callable[[str], None],
    ) -> None:
        self.api = api
        self.spec = spec
        self.items: dict[K, V] = {}
        self.synced = False
        self._running = True
        self._on_change = on_change
        self._health = health
        self._on_api_error = on_api_error
        self._unavailable_at: tuple[str, int | None] | None = None  # (step, status) while refused

    def _view(self, raw: Mapping[str, Any]) -> V | None:
        try:
            return self.spec.to_view(raw)
        except InvalidObjectError as error:
            log.warning("event=object_skipped resource=%s error=%r", self.spec.name, str(error))
            return None

    async def list(self) -> str:
        """Replace the cache with a fresh list; return its resourceVersion."""
        path, params = self.spec.object_path or self.spec.path, self.spec.params
        try:
            raw = await self.api.get_json(path, {} if self.spec.object_path else params, LIST_TIMEOUT_SECONDS)
        except HttpError as error:
            raise ApiError(self.spec.name, error.status, error.body[:300]) from error
        if self.spec.object_path is not None:
            raw = {"metadata": raw.get("metadata") or {}, "items": [raw]}
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
        params = {
            **self.spec.params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        try:
            async for event in self.api.watch(self.spec.path, params, WATCH_TIMEOUT_SECONDS + 30):
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
        except HttpError as error:
            if error.status == 410:
                raise WatchExpired(self.spec.name) from error
            raise ApiError(self.spec.name, error.status, error.body[:300]) from error
        return resource_version

    def stop(self) -> None:
        """End :meth:`run` at its next step (task cancellation alone can be lost in a race on 3.11)."""
        self._running = False

    def _unavailable(self, error: ApiError, step: str) -> None:
        """An optional resource the agent may not read (or that does not exist), refused at ``step``.

        A refused list means "none": the cache is emptied. A refused watch after a list
        that worked keeps what was listed, and the retries poll it. Said once.
        """
        self._health.succeeded(self.spec.name)  # the API answered: not an outage
        if self._unavailable_at != (step, error.status):
            log.warning(
                "event=resource_unavailable resource=%s step=%s status=%s error=%r action=%s "
                "retry_max_seconds=%.0f",
                self.spec.name,
                step,
                error.status,
                str(error)[:300],
                "run_without_it" if step == "list" else "poll_by_listing",
                UNAVAILABLE_RETRY_MAX_SECONDS,
            )
        self._unavailable_at = (step, error.status)
        if step == "list":
            changed = bool(self.items) or not self.synced
            self.items = {}
            self.synced = True
            if changed:
                self._on_change()

    def _available(self, step: str) -> None:
        if self._unavailable_at is not None and self._unavailable_at[0] == step:
            log.info("event=resource_available resource=%s step=%s", self.spec.name, step)
            self._unavailable_at = None

    async def run(self) -> None:
        """List and watch until stopped; errors keep the last cache and retry with backoff."""
        backoff = BACKOFF_MIN_SECONDS
        unavailable_backoff = UNAVAILABLE_RETRY_MIN_SECONDS
        while self._running:
            step = "list"
            try:
                version = await self.list()
                self._available("list")
                backoff = BACKOFF_MIN_SECONDS
                step = "watch"
                while self._running:
                    version = await self.watch(version)
                    self._available("watch")
                    unavailable_backoff = UNAVAILABLE_RETRY_MIN_SECONDS
            except WatchExpired:
                log.info("event=watch_expired resource=%s action=relist", self.spec.name)
                continue
            except ApiError as error:
                if self.spec.optional and error.status in UNAVAILABLE_STATUSES:
                    self._unavailable(error, step)
                    await asyncio.sleep(unavailable_backoff * random.uniform(0.8, 1.2))
                    unavailable_backoff = min(unavailable_backoff * 2, UNAVAILABLE_RETRY_MAX_SECONDS)
                    continue
                self._failed(error, backoff)
            except (
                ProtocolError,
                asyncio.IncompleteReadError,
                TimeoutError,
                OSError,
                ValueError,
            ) as error:
                self._failed(error, backoff)
            except Exception as error:
                # Not an API failure: a malformed object or a bug. The watch must survive it all the same.
                self._health.failed(self.spec.name)
                self._on_api_error(self.spec.name)
                log.error(
                    "event=watch_failed resource=%s error=%r retry_in_seconds=%.1f cache=kept",
                    self.spec.name,
                    str(error) or type(error).__name__,
                    backoff,
                    exc_info=True,
                )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _failed(self, error: Exception, backoff: float) -> None:
        self._health.failed(self.spec.name)
        self._on_api_error(self.spec.name)
        log.warning(
            "event=api_error resource=%s error=%r retry_in_seconds=%.1f cache=kept",
            self.spec.name,
            str(error) or type(error).__name__,
            backoff,
        )


def pod_informer(
    api: ApiClient,
    node_name: str,
    namespace: str | None,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
    follow_kubelet: bool = True,
    gpu_resources: Sequence[str] = DEFAULT_GPU_RESOURCE_NAMES,
) -> Informer[PodKey, PodView]:
    """The pods bound to ``node_name`` (in ``namespace``, or in all namespaces).

    With ``follow_kubelet`` every step the kubelet reports (phase, container
    states) changes the pod's view, so ``on_change`` fires on it. A pod asks for
    GPUs when it requests one of ``gpu_resources`` (shell patterns).
    """
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"

    def view(raw: Mapping[str, Any]) -> PodView:
        return pod_view(raw, gpu_resources, kubelet_steps=follow_kubelet)

    spec = ResourceSpec("pods", path, {"fieldSelector": f"spec.nodeName={node_name}"}, view, _pod_key)
    return Informer(api, spec, on_change, health, on_api_error)


def budget_informer(
    api: ApiClient,
    namespace: str | None,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
) -> Informer[tuple[str, str], BudgetView]:
    """The GpuPowerBudgets (in ``namespace``, or in all namespaces)."""
    scope = f"/namespaces/{namespace}" if namespace else ""
    spec = ResourceSpec(PLURAL, f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}", {}, budget_view, _budget_key)
    return Informer(api, spec, on_change, health, on_api_error)


def domain_informer(
    api: ApiClient,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
) -> Informer[str, DomainView]:
    """The GpuPowerDomains (cluster-scoped, whatever ``--namespace`` says); optional."""
    path = f"/apis/{GROUP}/{VERSION}/{DOMAIN_PLURAL}"
    spec = ResourceSpec(DOMAIN_PLURAL, path, {}, domain_view, _domain_key, optional=True)
    return Informer(api, spec, on_change, health, on_api_error)


def node_informer(
    api: ApiClient,
    node_name: str,
    on_change: Callable[[], None],
    health: ApiHealth,
    on_api_error: Callable[[str], None],
) -> Informer[str, NodeView]:
    """This agent's own Node: a GET, then a watch with a field selector on its name; optional."""
    spec = ResourceSpec(
        "node",
        "/api/v1/nodes",
        {"fieldSelector": f"metadata.name={node_name}"},
        node_view,
        _node_key,
        object_path=f"/api/v1/nodes/{node_name}",
        optional=True,
    )
    return Informer(api, spec, on_change, health, on_api_error)


def _domain_key(view: DomainView) -> str:
    return view.name


def _node_key(view: NodeView) -> str:
    return view.name


def _pod_key(view: PodView) -> PodKey:
    return view.key


def _budget_key(view: BudgetView) -> tuple[str, str]:
    return (view.namespace, view.name)
