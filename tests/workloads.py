"""The GPU worker Deployments the end-to-end tests and benchmarks create (their pods never run)."""

from __future__ import annotations

from typing import Any


def gpu_deployment(
    name: str,
    namespace: str,
    replicas: int,
    gpus: int = 1,
    node_selector: dict[str, str] | None = None,
    container: str = "worker",
) -> dict[str, Any]:
    """A Deployment whose pods (labelled ``app: NAME``) each ask for ``gpus`` of ``nvidia.com/gpu``."""
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": container,
                "image": "registry.invalid/inference-worker:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus}},
            }
        ],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def gpu_statefulset(
    name: str, namespace: str, replicas: int, gpus: int = 1, node_selector: dict[str, str] | None = None
) -> dict[str, Any]:
    """A StatefulSet of the same pods (``NAME-0``, ``NAME-1``, ...), created and removed in parallel.

    Parallel pod management: with the default OrderedReady the controller waits for each pod to be
    Ready before the next, and pods never run here.
    """
    deployment = gpu_deployment(name, namespace, replicas, gpus=gpus, node_selector=node_selector)
    spec = deployment["spec"]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**spec, "serviceName": name, "podManagementPolicy": "Parallel"},
    }
