"""The Kubernetes calls kopf does not make for us: ``/scale``, pod annotations, budget and domain status.

A small :class:`Cluster` interface and its real implementation over
kubernetes-asyncio. Raw API objects stop here: callers get
:class:`~gpupower_operator.core.reconcile.WorkloadState` values.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from gpupower_api.domains import PLURAL as DOMAIN_PLURAL
from gpupower_api.models import GROUP, PLURAL, VERSION, WorkloadRef
from gpupower_operator.core import conditions as cond
from gpupower_operator.core.reconcile import WorkloadMissing, WorkloadState

MERGE_PATCH = "application/merge-patch+json"


class Cluster(Protocol):
    async def read_scale(self, namespace: str, ref: WorkloadRef) -> WorkloadState | WorkloadMissing: ...

    async def patch_scale(self, namespace: str, ref: WorkloadRef, replicas: int) -> None: ...

    async def patch_pod_annotations(
        self, namespace: str, pod: str, annotations: dict[str, str | None]
    ) -> bool: ...

    async def patch_budget_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def patch_domain_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]: ...


async def load_configuration() -> client.Configuration:
    """The API server and credentials the usual way: in-cluster, else ``KUBECONFIG`` / ``~/.kube/config``."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return configuration


async def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own watches and patches."""
    maybe_header: Any = configuration.get_api_key_with_prefix("BearerToken")
    header = await maybe_header if asyncio.iscoroutine(maybe_header) else maybe_header
    scheme, token = (None, None)
    if header:
        parts = str(header).split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


class KubeCluster:
    """:class:`Cluster` over kubernetes-asyncio; resolves a kind to its resource by API discovery."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._plurals: dict[tuple[str, str], str] = {}

    async def _call(self, path: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call; the JSON answer as a dict (no model classes: they cost time at scale)."""
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = MERGE_PATCH
        result = await self._api.call_api(
            path,
            method,
            header_params=headers,
            body=body,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return dict(result or {})

    async def _plural(self, ref: WorkloadRef) -> str | None:
        key = (ref.api_version, ref.kind)
        if key in self._plurals:
            return self._plurals[key]
        group, version = _group_version(ref.api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        listing = await self._call(path, "GET")
        for resource in listing.get("resources", []):
            name = str(resource.get("name", ""))
            if "/" not in name:
                self._plurals[(ref.api_version, str(resource.get("kind")))] = name
        return self._plurals.get(key)

    def _scale_path(self, namespace: str, ref: WorkloadRef, plural: str) -> str:
        group, version = _group_version(ref.api_version)
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        return f"{prefix}/namespaces/{namespace}/{plural}/{ref.name}/scale"

    async def read_scale(self, namespace: str, ref: WorkloadRef) -> WorkloadState | WorkloadMissing:
        try:
            plural = await self._plural(ref)
        except ApiException as error:
            if error.status == 404:
                return WorkloadMissing(
                    cond.REASON_WORKLOAD_NOT_FOUND, f"API version {ref.api_version} is not served"
                )
            raise
        if plural is None:
            return WorkloadMissing(
                cond.REASON_WORKLOAD_NOT_FOUND, f"kind {ref.kind} is not served by {ref.api_version}"
            )
        try:
            scale = await self._call(self._scale_path(namespace, ref, plural), "GET")
        except ApiException as error:
            if error.status == 404:
                return WorkloadMissing(
                    cond.REASON_WORKLOAD_NOT_FOUND,
                    f"{ref.kind} {namespace}/{ref.name} not found (or it has no /scale subresource)",
                )
            raise
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        selector = (scale.get("status") or {}).get("selector") or ""
        if not selector:
            return WorkloadMissing(
                cond.REASON_NO_SELECTOR,
                f"{ref.kind} {namespace}/{ref.name} reports no pod selector in its /scale status",
            )
        return WorkloadState(replicas=int(replicas or 0), selector=str(selector))

    async def patch_scale(self, namespace: str, ref: WorkloadRef, replicas: int) -> None:
        plural = await self._plural(ref)
        if plural is None:
            raise LookupError(f"kind {ref.kind} is not served by {ref.api_version}")
        await self._call(self._scale_path(namespace, ref, plural), "PATCH", {"spec": {"replicas": replicas}})

    async def patch_pod_annotations(
        self, namespace: str, pod: str, annotations: dict[str, str | None]
    ) -> bool:
        """Merge-patch the annotations (None removes one); False when the pod is already gone."""
        try:
            await self._call(
                f"/api/v1/namespaces/{namespace}/pods/{pod}",
                "PATCH",
                {"metadata": {"annotations": annotations}},
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def patch_budget_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        return await self._call(path, "PATCH", {"status": status})

    async def patch_domain_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/{GROUP}/{VERSION}/{DOMAIN_PLURAL}/{name}/status"
        return await self._call(path, "PATCH", {"status": status})
