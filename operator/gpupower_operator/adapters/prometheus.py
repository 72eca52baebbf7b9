"""The Prometheus adapter: instant queries through prometheus-api-client, results as typed values.

An empty result or NaN (a 0/0 rate on a quiet cluster) is :class:`NoSignal`,
never zero. A failed query (connection refused, timeout, HTTP error, a
response that is not what the query API returns) raises
:class:`PrometheusError` with the reason; nothing else escapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from gpupower_operator.core.signals import NoSignal


class PrometheusError(Exception):
    """A query that did not give an answer: unreachable server, HTTP error, timeout or malformed response."""


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    value: float


class MetricsReader(Protocol):
    """What the operator needs from Prometheus."""

    def vector(self, query: str) -> list[Series]:
        """Every series of an instant query with a finite value; raise :class:`PrometheusError`."""
        ...


@dataclass(frozen=True)
class ConnectionSettings:
    url: str
    bearer_token: str | None = None
    ca_file: str | None = None  # PEM bundle on disk; requests wants a path
    insecure_skip_verify: bool = False
    timeout_seconds: float = 5.0


def _sample_value(raw: Any, where: str) -> float:
    if not (isinstance(raw, list | tuple) and len(raw) == 2):
        raise PrometheusError(f"malformed response: {where} is not a [timestamp, value] pair: {raw!r:.200}")
    try:
        return float(raw[1])
    except (TypeError, ValueError):
        raise PrometheusError(f"malformed response: {where} value {raw[1]!r:.100} is not a number") from None


def parse_result(result: Any) -> list[Series]:
    """The ``data.result`` of an instant query as series; NaN and infinite samples are dropped.

    Handles the ``vector`` form (a list of ``{metric, value}``) and the
    ``scalar`` form (one ``[timestamp, value]`` pair).
    """
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        value = _sample_value(result, "scalar")
        return [Series({}, value)] if math.isfinite(value) else []
    if not isinstance(result, list):
        raise PrometheusError(f"malformed response: result is {type(result).__name__}, expected a list")
    series: list[Series] = []
    for index, item in enumerate(result):
        if not isinstance(item, dict):
            raise PrometheusError(f"malformed response: result[{index}] is not an object")
        labels = item.get("metric", {})
        if not isinstance(labels, dict):
            raise PrometheusError(f"malformed response: result[{index}].metric is not an object")
        value = _sample_value(item.get("value"), f"result[{index}].value")
        if math.isfinite(value):
            series.append(Series({str(k): str(v) for k, v in labels.items()}, value))
    return series


def single_value(series: Sequence[Series], what: str) -> float | NoSignal:
    """The one value of a query meant to return one number; more than one series are summed."""
    if not series:
        return NoSignal(f"{what}: no data (no series, or NaN from a 0/0 rate)")
    return math.fsum(s.value for s in series)


class PrometheusClient:
    """The real reader: HTTP GET /api/v1/query with the configured auth, TLS and timeout."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        session = requests.Session()
        if settings.insecure_skip_verify:
            session.verify = False
        elif settings.ca_file is not None:
            session.verify = settings.ca_file
        headers = {"Authorization": f"Bearer {settings.bearer_token}"} if settings.bearer_token else None
        # No retries inside a read: a failed read is counted, and the next interval reads again.
        self._connection = PrometheusConnect(
            url=settings.url, headers=headers, session=session, retry=Retry(total=False)
        )

    def vector(self, query: str) -> list[Series]:
        try:
            result = self._connection.custom_query(query, timeout=self.settings.timeout_seconds)
        except requests.Timeout:
            raise PrometheusError(
                f"query timed out after {self.settings.timeout_seconds:g}s at {self.settings.url}"
            ) from None
        except requests.exceptions.JSONDecodeError as error:
            raise PrometheusError(f"malformed response from {self.settings.url}: {error}"[:400]) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            raise PrometheusError(
                f"cannot reach {self.settings.url}: {type(error).__name__}: {error}"[:400]
            ) from None
        except PrometheusApiClientException as error:
            raise PrometheusError(f"query refused by {self.settings.url}: {error}"[:400]) from None
        except (ValueError, KeyError, TypeError) as error:
            # response.json() or its ["data"]["result"] was not what the query API returns.
            raise PrometheusError(f"malformed response from {self.settings.url}: {error!r}"[:400]) from None
        return parse_result(result)

    def close(self) -> None:
        self._connection._session.close()


@dataclass
class FakeMetrics:
    """A reader answering from a table of query -> series (for the demo and unit tests of the shell)."""

    answers: dict[str, list[Series]] = field(default_factory=dict)
    failure: str | None = None

    def vector(self, query: str) -> list[Series]:
        if self.failure is not None:
            raise PrometheusError(self.failure)
        return list(self.answers.get(query, []))
