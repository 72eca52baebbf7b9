"""The bearer token and CA of the ``prometheus`` section: Secrets read through the real API server."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from gpupower_api.models import parse_spec
from gpupower_operator.adapters.prometheus import ConnectionSettings, FakeMetrics, MetricsReader
from gpupower_operator.shell.signalsource import SecretError, SignalSource, kubernetes_secret_reader
from tests.envtest import ControlPlane

pytestmark = pytest.mark.envtest

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[ApiClient]:
    configuration = Configuration()
    await kube_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    async with ApiClient(configuration) as client:
        yield client


def secret(namespace: str, name: str, data: dict[str, bytes]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


async def test_secret_keys_are_read_and_missing_ones_are_named(
    control_plane: ControlPlane, namespace: str, api: ApiClient
) -> None:
    control_plane.apply(secret(namespace, "prometheus-auth", {"token": b"s3cret\n", "ca.crt": PEM}))
    read = kubernetes_secret_reader(api)
    assert await read(namespace, "prometheus-auth", "token") == b"s3cret\n"
    with pytest.raises(SecretError, match=f"secret {namespace}/prometheus-auth has no key 'tokn'"):
        await read(namespace, "prometheus-auth", "tokn")
    with pytest.raises(SecretError, match=f"secret {namespace}/absent: status=404"):
        await read(namespace, "absent", "token")


async def test_connection_uses_the_token_and_ca_from_secrets(
    control_plane: ControlPlane, namespace: str, api: ApiClient
) -> None:
    control_plane.apply(secret(namespace, "prometheus-auth", {"token": b"s3cret\n", "ca.crt": PEM}))
    seen: list[ConnectionSettings] = []

    def factory(settings: ConnectionSettings) -> MetricsReader:
        seen.append(settings)
        return FakeMetrics(answers={})

    source = SignalSource(default_url=None, read_secret=kubernetes_secret_reader(api), reader_factory=factory)
    spec = parse_spec(
        {
            "totalWatts": 1000,
            "safeDefaultWatts": 200,
            "prometheus": {
                "url": "https://prometheus.monitoring:9090/",
                "bearerTokenSecretRef": {"name": "prometheus-auth", "key": "token"},
                "caSecretRef": {"name": "prometheus-auth", "key": "ca.crt"},
            },
            "targets": [
                {
                    "name": "decode",
                    "workloadRef": {"name": "decode"},
                    "maxReplicas": 2,
                    "profile": {"points": [{"watts": 300, "throughput": 5}]},
                    "preset": {"engine": "vllm"},
                }
            ],
        }
    )
    signals = await source.signals(namespace, "budget", spec, None)
    assert signals is not None
    assert len(seen) == 1
    settings = seen[0]
    assert (settings.url, settings.bearer_token) == ("https://prometheus.monitoring:9090", "s3cret")
    assert settings.ca_file is not None and Path(settings.ca_file).read_bytes() == PEM

    # A Secret that goes missing is a failed read, counted like an unreachable server.
    control_plane.kubectl("delete", "secret", "prometheus-auth", "-n", namespace)
    now = [0.0]
    failing = SignalSource(
        default_url=None,
        read_secret=kubernetes_secret_reader(api),
        reader_factory=factory,
        clock=lambda: now[0],
    )
    for read in range(3):
        now[0] = read * 60.0
        result = await failing.signals(namespace, "budget", spec, None)
    assert result is not None and result.condition is not None
    assert (result.condition.status, result.condition.reason) == ("False", "QueriesFailing")
    assert f"secret {namespace}/prometheus-auth: status=404" in result.condition.message
