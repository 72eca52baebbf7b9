"""The Prometheus adapter over real HTTP on loopback: auth, TLS, timeouts; malformed answers never crash."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gpupower_operator.adapters.prometheus import (
    ConnectionSettings,
    PrometheusClient,
    PrometheusError,
    Series,
    parse_result,
    single_value,
)
from gpupower_operator.core.signals import NoSignal


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay_seconds: float = 0.0


@dataclass
class FakeServer:
    """A loopback HTTP(S) server answering /api/v1/query with whatever the test sets."""

    answer: Answer = field(default_factory=Answer)
    headers: list[dict[str, str]] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_port}"


def vector_body(*samples: tuple[dict[str, str], str]) -> bytes:
    result = [{"metric": labels, "value": [1700000000.0, value]} for labels, value in samples]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def serve(tls: ssl.SSLContext | None = None) -> Iterator[FakeServer]:
    state = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.headers.append(dict(self.headers))
            answer = state.answer
            if answer.delay_seconds:
                time.sleep(answer.delay_seconds)
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server() -> Iterator[FakeServer]:
    yield from serve()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def https_server(certificate: tuple[Path, Path]) -> Iterator[FakeServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    yield from serve(context)


def test_vector_answer_becomes_series_and_nan_is_no_signal(http_server: FakeServer) -> None:
    http_server.answer = Answer(body=vector_body(({"pod": "a"}, "2.5"), ({"pod": "b"}, "NaN")))
    client = PrometheusClient(ConnectionSettings(http_server.url))
    series = client.vector("sum(rate(x[1m]))")
    assert series == [Series({"pod": "a"}, 2.5)]
    http_server.answer = Answer(body=vector_body(({}, "NaN")))
    assert isinstance(single_value(client.vector("q"), "demand"), NoSignal)
    http_server.answer = Answer(body=vector_body())
    quiet = single_value(client.vector("q"), "decode demand")
    assert isinstance(quiet, NoSignal) and "decode demand" in quiet.reason


def test_bearer_token_is_sent(http_server: FakeServer) -> None:
    http_server.answer = Answer(body=vector_body(({}, "1")))
    PrometheusClient(ConnectionSettings(http_server.url, bearer_token="s3cret")).vector("up")
    assert http_server.headers[-1].get("Authorization") == "Bearer s3cret"
    PrometheusClient(ConnectionSettings(http_server.url)).vector("up")
    assert "Authorization" not in http_server.headers[-1]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (Answer(status=500, body=b"boom"), "HTTP Status Code 500"),
        (Answer(status=400, body=b'{"status":"error","error":"parse error"}'), "parse error"),
        (Answer(body=b"<html>not json</html>"), "malformed response"),
        (Answer(body=b'{"status":"success"}'), "malformed response"),
        (Answer(body=b'{"data":{"result":"nope"}}'), "result is str"),
        (Answer(body=b'{"data":{"result":[{"metric":{},"value":[1,"abc"]}]}}'), "not a number"),
        (Answer(body=b'{"data":{"result":[{"metric":{},"value":"x"}]}}'), "[timestamp, value]"),
        (Answer(body=b'{"data":{"result":[7]}}'), "result[0] is not an object"),
    ],
)
def test_errors_and_malformed_answers_are_prometheus_errors(
    http_server: FakeServer, answer: Answer, words: str
) -> None:
    http_server.answer = answer
    with pytest.raises(PrometheusError) as caught:
        PrometheusClient(ConnectionSettings(http_server.url)).vector("up")
    assert words in str(caught.value)


def test_a_slow_server_times_out(http_server: FakeServer) -> None:
    http_server.answer = Answer(body=vector_body(({}, "1")), delay_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(PrometheusError, match=r"timed out after 0\.3s"):
        PrometheusClient(ConnectionSettings(http_server.url, timeout_seconds=0.3)).vector("up")
    assert time.monotonic() - started < 1.4


def test_an_unreachable_server_is_a_prometheus_error() -> None:
    with pytest.raises(PrometheusError, match=r"cannot reach http://127\.0\.0\.1:9"):
        PrometheusClient(ConnectionSettings("http://127.0.0.1:9", timeout_seconds=1)).vector("up")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_is_verified_against_the_given_ca(
    https_server: FakeServer, certificate: tuple[Path, Path]
) -> None:
    https_server.answer = Answer(body=vector_body(({}, "3")))
    with pytest.raises(PrometheusError, match="cannot reach"):
        PrometheusClient(ConnectionSettings(https_server.url, timeout_seconds=2)).vector("up")
    trusted = PrometheusClient(ConnectionSettings(https_server.url, ca_file=str(certificate[0])))
    assert trusted.vector("up") == [Series({}, 3.0)]
    skipping = PrometheusClient(ConnectionSettings(https_server.url, insecure_skip_verify=True))
    assert skipping.vector("up") == [Series({}, 3.0)]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ([1700000000.0, "4"], [Series({}, 4.0)]),  # scalar result
        ([1700000000.0, "NaN"], []),
        ([{"metric": {"a": "b"}, "value": [1, "+Inf"]}], []),
        ([], []),
    ],
)
def test_parse_result_shapes(result: Any, expected: list[Series]) -> None:
    assert parse_result(result) == expected


@pytest.mark.parametrize(
    "result", [None, {"a": 1}, [{"metric": [], "value": [1, "2"]}], [{"metric": {}, "value": [1]}]]
)
def test_parse_result_refuses_malformed_shapes(result: Any) -> None:
    with pytest.raises(PrometheusError, match="malformed response"):
        parse_result(result)
