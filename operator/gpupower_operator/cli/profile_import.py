"""Profiles from benchmark results: read the files the benchmark tools write, one per power cap.

Pure but for reading text: every parser takes a file's name and text and
returns :class:`Measurement` values, or raises :class:`ResultFileError` naming
the file and the field. Where each tool keeps what we read:

- **vLLM** ``vllm bench serve --save-result`` (``vllm/benchmarks/serve.py``):
  one JSON object (``--append-result`` adds one per line). Throughput:
  ``request_throughput`` (requests/s), ``output_throughput`` (output tokens/s),
  ``total_token_throughput`` (input + output tokens/s); ``completed`` must be
  above 0. vLLM records no GPU power limit: pass it as
  ``--metadata gpu_power_limit_watts=350`` (vLLM stores ``--metadata KEY=VALUE``
  at the top level) or give it on our command line as ``350=FILE``.
- **AIPerf** ``profile_export_aiperf.json``: metrics at the top level (or under
  ``records`` in earlier releases), each ``{"unit", "avg", ...}``:
  ``request_throughput``, ``output_token_throughput``,
  ``total_token_throughput``. With ``--gpu-telemetry`` the GPUs' power limit
  (DCGM ``DCGM_FI_DEV_POWER_MGMT_LIMIT``) is
  ``telemetry_data.endpoints.*.gpus.*.metrics.power_management_limit.avg``
  (``gpu_power_limit`` in earlier releases). ``was_cancelled: true`` is refused.
  ``profile_export_aiperf.csv``: the ``Metric,Value`` rows ``Request Throughput
  (requests/sec)``, ``Output Token Throughput (tokens/sec)``, ``Total Token
  Throughput (tokens/sec)``, and the telemetry rows ``GPU Power Limit (W)``.
- **GenAI-Perf** ``profile_export_genai_perf.json``: ``request_throughput`` and
  ``output_token_throughput``, each ``{"unit", "avg"}``; with
  ``--server-metrics-urls`` the limit is ``telemetry_stats.gpu_power_limit.<gpu>.avg``.
- **CSV**: a header with ``watts`` and ``throughput`` columns, one row per cap.

Every GPU a file reports must hold the same limit; a cap given on the command
line wins over the file's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from gpupower_api.contract import MAX_CAP_WATTS
from gpupower_api.models import Profile, describe_validation_error


class Format(StrEnum):
    AUTO = "auto"
    VLLM = "vllm"
    AIPERF = "aiperf"
    GENAI_PERF = "genai-perf"
    CSV = "csv"


class Unit(StrEnum):
    """What a profile's throughput counts; also the profile's ``unit``."""

    REQUESTS = "requests/s"
    OUTPUT_TOKENS = "output-tokens/s"
    TOKENS = "tokens/s"  # input and output tokens


class ResultFileError(ValueError):
    """A result file that cannot give a profile point; the message names the file and the field."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source = source
        self.where = where
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


@dataclass(frozen=True)
class Measurement:
    """One benchmark run: where it came from, the cap it recorded (if any) and its throughputs."""

    source: str
    watts: float | None
    throughputs: Mapping[Unit, float]
    warnings: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------
# Reading values


def _number(source: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ResultFileError(source, where, f"expected a number, got {_shown(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ResultFileError(source, where, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ResultFileError(source, where, f"must be a finite number, got {value!r}")
    return number


def _shown(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _throughput(source: str, where: str, value: Any) -> float:
    number = _number(source, where, value)
    if number < 0:
        raise ResultFileError(source, where, f"must be >= 0, got {number:g}")
    return number


def _cap(source: str, where: str, value: Any) -> float:
    watts = _number(source, where, value)
    if not 1 <= watts <= MAX_CAP_WATTS:
        raise ResultFileError(
            source, where, f"a power limit must be within 1..{MAX_CAP_WATTS} W, got {watts:g}"
        )
    return watts


def _one_limit(source: str, where: str, limits: Sequence[float]) -> float | None:
    """The one power limit all GPUs of a file held, None if none was recorded."""
    distinct = sorted(set(limits))
    if len(distinct) > 1:
        shown = ", ".join(f"{w:g}" for w in distinct)
        raise ResultFileError(
            source, where, f"the GPUs held different power limits ({shown} W): give the cap as WATTS=FILE"
        )
    return distinct[0] if distinct else None


def _json(source: str, text: str) -> list[Any]:
    """A JSON document, or JSON lines (``vllm bench serve --append-result``)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as whole:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise ResultFileError(
                source, f"line {whole.lineno}, column {whole.colno}", f"invalid JSON: {whole.msg}"
            ) from None
        documents = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ResultFileError(source, f"line {number}", f"invalid JSON: {error.msg}") from None
        return documents


def _object(source: str, document: Any, where: str = "") -> Mapping[str, Any]:
    if not isinstance(document, dict):
        raise ResultFileError(source, where, f"expected a JSON object, got {type(document).__name__}")
    return document


# ---------------------------------------------------------------------------
# vLLM


VLLM_LIMIT_KEY = "gpu_power_limit_watts"
_VLLM_FIELDS = {
    Unit.REQUESTS: "request_throughput",
    Unit.OUTPUT_TOKENS: "output_throughput",
    Unit.TOKENS: "total_token_throughput",
}


def parse_vllm(source: str, text: str) -> list[Measurement]:
    """``vllm bench serve --save-result`` (or ``--append-result``: one run per line)."""
    documents = _json(source, text)
    runs = []
    for number, document in enumerate(documents, start=1):
        label = source if len(documents) == 1 else f"{source} (run {number})"
        result = _object(label, document)
        for required in ("completed", "request_throughput"):
            if required not in result:
                raise ResultFileError(
                    label, required, "missing: is this a vllm bench serve --save-result file?"
                )
        if _number(label, "completed", result["completed"]) <= 0:
            raise ResultFileError(label, "completed", "no request completed: the run measured nothing")
        throughputs = {
            unit: _throughput(label, key, result[key]) for unit, key in _VLLM_FIELDS.items() if key in result
        }
        limit = result.get(VLLM_LIMIT_KEY)
        watts = None if limit is None else _cap(label, VLLM_LIMIT_KEY, limit)
        warnings = []
        rate = result.get("request_rate")
        if rate not in (None, "inf") and result.get("max_concurrency") is None:
            warnings.append(
                f"{label}: request_rate {rate}: a fixed arrival rate measures demand, not capacity, "
                "unless the replica was saturated (use --request-rate inf with --max-concurrency)"
            )
        runs.append(Measurement(label, watts, throughputs, tuple(warnings)))
    return runs


# ---------------------------------------------------------------------------
# AIPerf and GenAI-Perf: metrics as {"unit": ..., "avg": ...}


_PROFILE_EXPORT_FIELDS = {
    Unit.REQUESTS: "request_throughput",
    Unit.OUTPUT_TOKENS: "output_token_throughput",
    Unit.TOKENS: "total_token_throughput",
}


def _averages(source: str, metrics: Mapping[str, Any], prefix: str = "") -> dict[Unit, float]:
    if _PROFILE_EXPORT_FIELDS[Unit.REQUESTS] not in metrics:
        raise ResultFileError(source, prefix + "request_throughput", "missing: is this a profile export?")
    throughputs = {}
    for unit, key in _PROFILE_EXPORT_FIELDS.items():
        if key not in metrics:
            continue
        metric = _object(source, metrics[key], prefix + key)
        if "avg" not in metric:
            raise ResultFileError(source, f"{prefix}{key}.avg", "missing")
        throughputs[unit] = _throughput(source, f"{prefix}{key}.avg", metric["avg"])
    return throughputs


def parse_aiperf_json(source: str, text: str) -> list[Measurement]:
    """AIPerf's ``profile_export_aiperf.json``."""
    document = _object(source, _only(source, _json(source, text)))
    if document.get("was_cancelled") is True:
        raise ResultFileError(source, "was_cancelled", "the benchmark was cancelled before it finished")
    metrics, prefix = (
        (document["records"], "records.") if isinstance(document.get("records"), dict) else (document, "")
    )
    throughputs = _averages(source, metrics, prefix)
    limits = []
    telemetry = document.get("telemetry_data")
    if isinstance(telemetry, dict):
        endpoints = telemetry.get("endpoints")
        for endpoint, data in endpoints.items() if isinstance(endpoints, dict) else []:
            gpus = data.get("gpus") if isinstance(data, dict) else None
            for gpu, gpu_data in gpus.items() if isinstance(gpus, dict) else []:
                gpu_metrics = gpu_data.get("metrics") if isinstance(gpu_data, dict) else None
                for name in ("power_management_limit", "gpu_power_limit"):
                    metric = gpu_metrics.get(name) if isinstance(gpu_metrics, dict) else None
                    if isinstance(metric, dict) and metric.get("avg") is not None:
                        where = f"telemetry_data.endpoints.{endpoint}.gpus.{gpu}.metrics.{name}.avg"
                        limits.append(_cap(source, where, metric["avg"]))
    watts = _one_limit(source, "telemetry_data", limits)
    return [Measurement(source, watts, throughputs)]


_AIPERF_CSV_ROWS = {
    Unit.REQUESTS: "Request Throughput (requests/sec)",
    Unit.OUTPUT_TOKENS: "Output Token Throughput (tokens/sec)",
    Unit.TOKENS: "Total Token Throughput (tokens/sec)",
}
_AIPERF_CSV_LIMIT = "GPU Power Limit (W)"


def parse_aiperf_csv(source: str, text: str) -> list[Measurement]:
    """AIPerf's ``profile_export_aiperf.csv``: sections separated by blank lines."""
    throughputs: dict[Unit, float] = {}
    limits: list[float] = []
    header: list[str] = []
    section = ""
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not any(cell.strip() for cell in row):
            header = []
            continue
        first = row[0].strip()
        if first.startswith("==="):  # "=== GPU Power Limit (W) ===": a telemetry sub-table follows
            section = first.strip("= ").strip()
            header = []
            continue
        if not header:
            header = [cell.strip() for cell in row]
            continue
        cells = dict(zip(header, (cell.strip() for cell in row), strict=False))
        metric = cells.get("Metric", section)
        where = f"line {number} ({metric})"
        for unit, name in _AIPERF_CSV_ROWS.items():
            if metric == name and "Value" in cells:
                throughputs[unit] = _throughput(source, where, cells["Value"].replace(",", ""))
        if metric == _AIPERF_CSV_LIMIT:
            value = cells.get("avg", cells.get("Avg"))
            if value is None:
                raise ResultFileError(source, where, "no avg column")
            limits.append(_cap(source, where, value.replace(",", "")))
    if Unit.REQUESTS not in throughputs:
        raise ResultFileError(
            source, _AIPERF_CSV_ROWS[Unit.REQUESTS], "missing: is this profile_export_aiperf.csv?"
        )
    return [Measurement(source, _one_limit(source, _AIPERF_CSV_LIMIT, limits), throughputs)]


def parse_genai_perf(source: str, text: str) -> list[Measurement]:
    """GenAI-Perf's ``profile_export_genai_perf.json``."""
    document = _object(source, _only(source, _json(source, text)))
    throughputs = _averages(source, document)
    limits = []
    telemetry = document.get("telemetry_stats")
    limit_metric = telemetry.get("gpu_power_limit") if isinstance(telemetry, dict) else None
    if isinstance(limit_metric, dict):
        for gpu, stats in limit_metric.items():
            if gpu == "unit" or not isinstance(stats, dict) or stats.get("avg") is None:
                continue
            limits.append(_cap(source, f"telemetry_stats.gpu_power_limit.{gpu}.avg", stats["avg"]))
    return [Measurement(source, _one_limit(source, "telemetry_stats.gpu_power_limit", limits), throughputs)]


def _only(source: str, documents: list[Any]) -> Any:
    if len(documents) != 1:
        raise ResultFileError(source, "", f"expected one JSON object, found {len(documents)} lines of JSON")
    return documents[0]


# ---------------------------------------------------------------------------
# Plain CSV


def parse_csv(source: str, text: str) -> list[Measurement]:
    """A CSV with ``watts`` and ``throughput`` columns: one point per row, in the profile's unit."""
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise ResultFileError(source, "", "empty file")
    header = [cell.strip().lower() for cell in rows[0]]
    for column in ("watts", "throughput"):
        if column not in header:
            raise ResultFileError(source, "line 1", f"no {column!r} column (header: {', '.join(header)})")
    watts_at, throughput_at = header.index("watts"), header.index("throughput")
    runs = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) <= max(watts_at, throughput_at):
            raise ResultFileError(source, f"line {number}", f"expected {len(header)} columns, got {len(row)}")
        watts = _cap(source, f"line {number} watts", row[watts_at].strip())
        throughput = _throughput(source, f"line {number} throughput", row[throughput_at].strip())
        runs.append(Measurement(f"{source} line {number}", watts, {unit: throughput for unit in Unit}))
    if not runs:
        raise ResultFileError(source, "", "no rows after the header")
    return runs


# ---------------------------------------------------------------------------
# Which format, and the profile


def detect(source: str, text: str) -> Format:
    """The tool that wrote a result file, from its name and content."""
    name = source.lower()
    if name.endswith("_genai_perf.json"):
        return Format.GENAI_PERF
    if name.endswith(("_aiperf.json", "_aiperf.csv")):
        return Format.AIPERF
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        first = next(csv.reader(io.StringIO(stripped)), [])
        head = [cell.strip().lower() for cell in first]
        if head[:1] == ["metric"]:
            return Format.AIPERF
        if "watts" in head and "throughput" in head:
            return Format.CSV
        raise ResultFileError(source, "", "not a result file gpupower can read: give --format")
    documents = _json(source, text)
    first = documents[0]
    if isinstance(first, dict):
        if isinstance(first.get("request_throughput"), int | float) and "completed" in first:
            return Format.VLLM
        config = first.get("input_config")
        if "telemetry_stats" in first or (isinstance(config, dict) and "endpoint_type" in config):
            return Format.GENAI_PERF
        if any(key in first for key in ("records", "telemetry_data", "was_cancelled", "error_summary")) or (
            isinstance(config, dict) and isinstance(config.get("endpoint"), dict)
        ):
            return Format.AIPERF
    raise ResultFileError(source, "", "cannot tell which tool wrote this file: give --format")


def parse(source: str, text: str, format: Format = Format.AUTO) -> list[Measurement]:
    """The measurements in one result file."""
    chosen = detect(source, text) if format is Format.AUTO else format
    if chosen is Format.VLLM:
        return parse_vllm(source, text)
    if chosen is Format.GENAI_PERF:
        return parse_genai_perf(source, text)
    if chosen is Format.CSV:
        return parse_csv(source, text)
    if text.lstrip().startswith(("{", "[")):
        return parse_aiperf_json(source, text)
    return parse_aiperf_csv(source, text)


@dataclass(frozen=True)
class Point:
    """A profile point and the file it came from."""

    watts: float
    throughput: float
    source: str


def points(measurements: Iterable[tuple[float | None, Measurement]], unit: Unit) -> list[Point]:
    """One point per measurement, ascending in watts: the cap given for it, else the one its file recorded."""
    found: list[Point] = []
    for given, measurement in measurements:
        watts = given if given is not None else measurement.watts
        if watts is None:
            raise ResultFileError(
                measurement.source,
                "",
                "no GPU power limit recorded in the file: give the cap as WATTS=FILE",
            )
        if unit not in measurement.throughputs:
            have = ", ".join(str(u) for u in measurement.throughputs)
            raise ResultFileError(measurement.source, "", f"no throughput in {unit} (it has {have})")
        found.append(Point(watts, measurement.throughputs[unit], measurement.source))
    found.sort(key=lambda p: p.watts)
    for before, after in itertools.pairwise(found):
        if before.watts == after.watts:
            raise ResultFileError(
                after.source, "", f"a second result at {after.watts:g} W (the other is {before.source})"
            )
    return found


def _rounded(value: float) -> float | int:
    """Six significant digits: benchmark noise is far above that, and the file stays readable."""
    number = float(f"{value:.6g}")
    return int(number) if number.is_integer() and abs(number) < 1e15 else number


def profile(found: Sequence[Point], unit: Unit) -> Profile:
    """The profile of these points, validated as the API validates it."""
    raw = {
        "unit": str(unit),
        "points": [{"watts": _rounded(p.watts), "throughput": _rounded(p.throughput)} for p in found],
    }
    try:
        return Profile.model_validate(raw)
    except ValidationError as error:
        raise ValueError(str(describe_validation_error(error, "profile"))) from None


def profile_document(value: Profile) -> dict[str, Any]:
    """A profile as plain data for a file, camelCase, without empty fields."""
    document: dict[str, Any] = value.model_dump(by_alias=True, exclude_none=True, mode="json")
    for point in document.get("points", []):
        for key in ("watts", "throughput"):
            point[key] = _rounded(point[key])
    return document
