"""Reading benchmark result files into profile points: every tool's format, and broken files named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpupower_operator.cli.profile_import import (
    Format,
    ResultFileError,
    Unit,
    detect,
    parse,
    points,
    profile,
    profile_document,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def only(name: str, format: Format = Format.AUTO) -> tuple[float | None, dict[Unit, float]]:
    [run] = parse(name, read(name), format)
    return run.watts, dict(run.throughputs)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vllm-350w.json", Format.VLLM),
        ("vllm-sweep.jsonl", Format.VLLM),
        ("profile_export_aiperf.json", Format.AIPERF),
        ("aiperf-records-250w.json", Format.AIPERF),
        ("profile_export_aiperf.csv", Format.AIPERF),
        ("profile_export_genai_perf.json", Format.GENAI_PERF),
        ("sweep.csv", Format.CSV),
    ],
)
def test_the_tool_is_told_from_the_file(name: str, expected: Format) -> None:
    assert detect(name, read(name)) is expected


def test_the_tool_is_told_from_the_content_when_the_file_was_renamed() -> None:
    assert detect("run-1.json", read("profile_export_genai_perf.json")) is Format.GENAI_PERF
    assert detect("run-2.json", read("profile_export_aiperf.json")) is Format.AIPERF
    assert detect("run-3.csv", read("profile_export_aiperf.csv")) is Format.AIPERF


def test_vllm_results_give_each_throughput_and_the_limit_from_metadata() -> None:
    watts, throughputs = only("vllm-350w.json")
    assert watts == 350
    assert throughputs == {Unit.REQUESTS: 25.626, Unit.OUTPUT_TOKENS: 6560.3, Unit.TOKENS: 32801.5}


def test_a_vllm_result_without_metadata_records_no_limit() -> None:
    assert only("vllm-250w-no-limit.json")[0] is None


def test_vllm_append_result_files_hold_one_run_per_line() -> None:
    runs = parse("vllm-sweep.jsonl", read("vllm-sweep.jsonl"))
    assert [(r.source, r.watts, r.throughputs[Unit.REQUESTS]) for r in runs] == [
        ("vllm-sweep.jsonl (run 1)", 300, 23.1),
        ("vllm-sweep.jsonl (run 2)", 600, 27.0),
    ]


def test_a_vllm_run_at_a_fixed_arrival_rate_is_warned_about() -> None:
    [run] = parse("vllm-fixed-rate-200w.json", read("vllm-fixed-rate-200w.json"))
    assert len(run.warnings) == 1 and "request_rate 12.0" in run.warnings[0]
    [saturated] = parse("vllm-350w.json", read("vllm-350w.json"))
    assert saturated.warnings == ()


def test_aiperf_json_gives_throughputs_and_the_telemetry_power_limit() -> None:
    assert only("profile_export_aiperf.json") == (
        400,
        {Unit.REQUESTS: 17.204, Unit.OUTPUT_TOKENS: 4404.2, Unit.TOKENS: 22021.1},
    )


def test_an_earlier_aiperf_json_with_records_and_gpu_power_limit() -> None:
    assert only("aiperf-records-250w.json") == (250, {Unit.REQUESTS: 9.37, Unit.OUTPUT_TOKENS: 2398.7})


def test_aiperf_csv_gives_the_summary_rows_and_the_power_limit_row() -> None:
    assert only("profile_export_aiperf.csv") == (
        300,
        {Unit.REQUESTS: 14.05, Unit.OUTPUT_TOKENS: 3596.8, Unit.TOKENS: 17984.0},
    )


def test_genai_perf_json_gives_throughputs_and_the_telemetry_power_limit() -> None:
    assert only("profile_export_genai_perf.json") == (275, {Unit.REQUESTS: 11.62, Unit.OUTPUT_TOKENS: 2974.7})


def test_a_plain_csv_gives_one_point_per_row() -> None:
    runs = parse("sweep.csv", read("sweep.csv"))
    assert [(r.watts, r.throughputs[Unit.REQUESTS]) for r in runs] == [
        (200, 9.0),
        (300, 14.1),
        (400, 17.2),
        (500, 17.1),
        (700, 20.0),
    ]


def test_points_take_the_cap_given_on_the_command_line_over_the_files() -> None:
    runs = [(None, run) for run in parse("vllm-350w.json", read("vllm-350w.json"))]
    runs += [(250.0, run) for run in parse("vllm-250w-no-limit.json", read("vllm-250w-no-limit.json"))]
    runs += [(360.0, run) for run in parse("vllm-500w.json", read("vllm-500w.json"))]
    found = points(runs, Unit.OUTPUT_TOKENS)
    assert [(p.watts, p.throughput, p.source) for p in found] == [
        (250, 5071.4, "vllm-250w-no-limit.json"),
        (350, 6560.3, "vllm-350w.json"),
        (360, 6758.4, "vllm-500w.json"),
    ]


def test_a_dipping_sweep_becomes_a_valid_profile_in_the_chosen_unit() -> None:
    names = ["vllm-350w.json", "vllm-425w.json", "vllm-500w.json"]
    runs = [(None, run) for name in names for run in parse(name, read(name))]
    result = profile(points(runs, Unit.REQUESTS), Unit.REQUESTS)
    assert profile_document(result) == {
        "unit": "requests/s",
        "points": [
            {"watts": 350, "throughput": 25.626},
            {"watts": 425, "throughput": 25.595},
            {"watts": 500, "throughput": 26.4},
        ],
    }


def test_throughputs_are_rounded_to_six_significant_digits() -> None:
    [run] = parse(
        "x.json", json.dumps({**json.loads(read("vllm-350w.json")), "request_throughput": 13.16084556379392})
    )
    assert profile_document(profile(points([(None, run)], Unit.REQUESTS), Unit.REQUESTS))["points"] == [
        {"watts": 350, "throughput": 13.1608}
    ]


def vllm_with(**changes: Any) -> str:
    document = json.loads(read("vllm-350w.json"))
    for key, value in changes.items():
        if value is DELETE:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document)


def changed(fixture: str, path: str, value: Any) -> str:
    """A fixture's JSON with the value at a dotted path replaced."""
    document = json.loads(read(fixture))
    node: Any = document
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return json.dumps(document)


def aiperf_with(path: str, value: Any) -> str:
    return changed("profile_export_aiperf.json", path, value)


def genai_perf_with(path: str, value: Any) -> str:
    return changed("profile_export_genai_perf.json", path, value)


DELETE = object()
GPU = "telemetry_data.endpoints.localhost:9401.gpus.gpu_0"


def two_gpus_with_different_limits() -> str:
    document = json.loads(read("profile_export_aiperf.json"))
    gpus = document["telemetry_data"]["endpoints"]["localhost:9401"]["gpus"]
    second = json.loads(json.dumps(gpus["gpu_0"]))
    second["metrics"]["power_management_limit"]["avg"] = 350.0
    gpus["gpu_1"] = second
    return json.dumps(document)


BROKEN = [
    ("run.json", vllm_with(request_throughput=DELETE), Format.VLLM, "run.json: request_throughput: missing"),
    ("run.json", vllm_with(completed=0), Format.VLLM, "run.json: completed: no request completed"),
    (
        "run.json",
        vllm_with(request_throughput="fast"),
        Format.VLLM,
        "run.json: request_throughput: expected a number",
    ),
    ("run.json", vllm_with(output_throughput=-3.0), Format.VLLM, "run.json: output_throughput: must be >= 0"),
    (
        "run.json",
        vllm_with(request_throughput=float("nan")),
        Format.VLLM,
        "run.json: request_throughput: must be a finite",
    ),
    (
        "run.json",
        vllm_with(gpu_power_limit_watts="0"),
        Format.VLLM,
        "run.json: gpu_power_limit_watts: a power limit must be within 1..10000 W",
    ),
    ("run.json", '{"completed": 3,', Format.VLLM, "run.json: line 1, column 17: invalid JSON"),
    ("run.json", "[1, 2]", Format.VLLM, "run.json: expected a JSON object, got list"),
    (
        "runs.jsonl",
        read("vllm-350w.json") + "\n{oops\n",
        Format.VLLM,
        "runs.jsonl: line 2: invalid JSON",
    ),
    (
        "p.json",
        aiperf_with("was_cancelled", True),
        Format.AIPERF,
        "p.json: was_cancelled: the benchmark was cancelled",
    ),
    (
        "p.json",
        aiperf_with("request_throughput", {"unit": "requests/sec"}),
        Format.AIPERF,
        "p.json: request_throughput.avg: missing",
    ),
    (
        "p.json",
        aiperf_with("request_throughput", 17.2),
        Format.AIPERF,
        "p.json: request_throughput: expected a JSON object",
    ),
    (
        "p.json",
        aiperf_with(f"{GPU}.metrics.power_management_limit", {"unit": "W", "avg": 90000}),
        Format.AIPERF,
        f"p.json: {GPU}.metrics.power_management_limit.avg: a power limit must be within",
    ),
    (
        "p.json",
        two_gpus_with_different_limits(),
        Format.AIPERF,
        "p.json: telemetry_data: the GPUs held different power limits (350, 400 W): give the cap as WATTS=",
    ),
    (
        "g.json",
        genai_perf_with("telemetry_stats.gpu_power_limit", {"unit": "W", "0": {"avg": "high"}}),
        Format.GENAI_PERF,
        "g.json: telemetry_stats.gpu_power_limit.0.avg: expected a number",
    ),
    (
        "g.json",
        genai_perf_with("output_token_throughput", {"unit": "tokens/sec", "avg": None}),
        Format.GENAI_PERF,
        "g.json: output_token_throughput.avg: expected a number, got nothing",
    ),
    (
        "p.csv",
        read("profile_export_aiperf.csv").replace("Request Throughput (requests/sec),14.05\n", ""),
        Format.AIPERF,
        "p.csv: Request Throughput (requests/sec): missing",
    ),
    (
        "p.csv",
        read("profile_export_aiperf.csv").replace(
            "Request Throughput (requests/sec),14.05", "Request Throughput (requests/sec),lots"
        ),
        Format.AIPERF,
        "p.csv: line 8 (Request Throughput (requests/sec)): expected a number",
    ),
    ("s.csv", "watts,rps\n200,9\n", Format.CSV, "s.csv: line 1: no 'throughput' column"),
    ("s.csv", "watts,throughput\n200,9\nmany,10\n", Format.CSV, "s.csv: line 3 watts: expected a number"),
    ("s.csv", "watts,throughput\n200,-9\n", Format.CSV, "s.csv: line 2 throughput: must be >= 0"),
    ("s.csv", "watts,throughput\n", Format.CSV, "s.csv: no rows after the header"),
    ("s.csv", "", Format.CSV, "s.csv: empty file"),
    (
        "mystery.json",
        '{"hello": 1}',
        Format.AUTO,
        "mystery.json: cannot tell which tool wrote this file: give --format",
    ),
    ("mystery.txt", "hello world", Format.AUTO, "mystery.txt: not a result file gpupower can read"),
]


@pytest.mark.parametrize(("name", "text", "format", "message"), BROKEN, ids=[case[3] for case in BROKEN])
def test_a_broken_file_is_refused_naming_the_file_and_the_field(
    name: str, text: str, format: Format, message: str
) -> None:
    with pytest.raises(ResultFileError) as caught:
        parse(name, text, format)
    assert str(caught.value).startswith(message), str(caught.value)


def test_two_results_at_one_cap_are_refused_naming_both() -> None:
    runs = [(None, run) for name in ("vllm-350w.json", "vllm-350w.json") for run in parse(name, read(name))]
    with pytest.raises(
        ResultFileError, match=r"vllm-350w.json: a second result at 350 W \(the other is vllm-350w.json\)"
    ):
        points(runs, Unit.REQUESTS)


def test_a_file_without_the_unit_asked_for_is_refused() -> None:
    runs = [(None, run) for run in parse("g.json", read("profile_export_genai_perf.json"))]
    with pytest.raises(
        ResultFileError, match=r"^g.json: no throughput in tokens/s \(it has requests/s, output-tokens/s\)"
    ):
        points(runs, Unit.TOKENS)


def test_a_file_without_a_cap_anywhere_is_refused() -> None:
    runs = [(None, run) for run in parse("v.json", read("vllm-250w-no-limit.json"))]
    with pytest.raises(
        ResultFileError, match=r"^v.json: no GPU power limit recorded in the file: give the cap as WATTS=FILE"
    ):
        points(runs, Unit.REQUESTS)
