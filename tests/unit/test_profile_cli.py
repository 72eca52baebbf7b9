"""`gpupower profile import` and the profile notes of `gpupower plan`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpupower_api.models import parse_budget
from gpupower_operator.cli.budgetfile import BudgetFileError, with_profile
from gpupower_operator.cli.main import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def fixture(name: str) -> str:
    return str(FIXTURES / name)


BUDGET = """\
# Llama 70B, disaggregated
apiVersion: gpupower.dev/v1alpha1
kind: GpuPowerBudget
metadata:
  name: llama   # the budget
  namespace: inference
spec:
  totalWatts: 6000
  safeDefaultWatts: 300
  targets:
    - name: prefill
      workloadRef: {name: prefill}
      maxReplicas: 8
      capWatts: {min: 200, max: 700}
      profile:
        unit: requests/s   # typed by hand
        points:
          - {watts: 200, throughput: 9.0}
          - {watts: 700, throughput: 20.0}  # guessed
      # demand from last week's peak
      demand: 120
    - {name: decode, workloadRef: {name: d}, maxReplicas: 8, profile: {points: [{watts: 300, throughput: 3}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
data: {note: "profile: untouched"}
"""


def test_import_prints_the_profile_block_as_yaml() -> None:
    code, stdout, stderr = run(
        "profile",
        "import",
        fixture("vllm-350w.json"),
        fixture("vllm-500w.json"),
        "250=" + fixture("vllm-250w-no-limit.json"),
    )
    assert code == 0, stderr
    assert yaml.safe_load(stdout) == {
        "unit": "requests/s",
        "points": [
            {"watts": 250, "throughput": 19.81},
            {"watts": 350, "throughput": 25.626},
            {"watts": 500, "throughput": 26.4},
        ],
    }
    assert "250 W: 19.81 requests/s" in stderr


def test_import_json_in_output_tokens_from_every_tool() -> None:
    files = ["profile_export_aiperf.json", "profile_export_aiperf.csv", "profile_export_genai_perf.json"]
    code, stdout, stderr = run(
        "profile", "import", "--unit", "output-tokens/s", "-o", "json", *(fixture(f) for f in files)
    )
    assert code == 0, stderr
    assert json.loads(stdout) == {
        "unit": "output-tokens/s",
        "points": [
            {"watts": 275, "throughput": 2974.7},
            {"watts": 300, "throughput": 3596.8},
            {"watts": 400, "throughput": 4404.2},
        ],
    }


def test_import_says_which_dipping_points_the_plan_will_raise() -> None:
    code, _, stderr = run("profile", "import", fixture("vllm-350w.json"), fixture("vllm-425w.json"))
    assert code == 0
    assert "note: profile adjusted" in stderr and "points[1] at 425 W from 25.595 to 25.626" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["{dir}/vllm-250w-no-limit.json"],
            "{dir}/vllm-250w-no-limit.json: no GPU power limit recorded in the file",
        ),
        (["{dir}/missing.json"], "{dir}/missing.json: no such file"),
        (["0={dir}/vllm-350w.json"], "'0={dir}/vllm-350w.json': the cap must be within 1..10000 W"),
        (["300={dir}/vllm-sweep.jsonl"], "{dir}/vllm-sweep.jsonl: holds 2 runs"),
        (["--format", "csv", "{dir}/vllm-350w.json"], "{dir}/vllm-350w.json: line 1: no 'watts' column"),
        (["{dir}/vllm-350w.json", "--target", "prefill"], "--target and --name go with --into"),
    ],
)
def test_import_errors_exit_1_with_one_line_naming_the_file(args: list[str], message: str) -> None:
    code, stdout, stderr = run("profile", "import", *(a.replace("{dir}", str(FIXTURES)) for a in args))
    assert code == 1
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert message.replace("{dir}", str(FIXTURES)) in stderr


def test_import_into_a_budget_file_replaces_only_that_targets_profile(tmp_path: Path) -> None:
    path = tmp_path / "budget.yaml"
    path.write_text(BUDGET)
    code, stdout, stderr = run(
        "profile",
        "import",
        fixture("vllm-350w.json"),
        fixture("vllm-425w.json"),
        "--into",
        str(path),
        "--target",
        "prefill",
    )
    assert code == 0, stderr
    assert stdout == ""
    edited = path.read_text()
    old_block = BUDGET[BUDGET.index("      profile:\n") : BUDGET.index("      # demand")]
    new_block = (
        "      profile:\n"
        "        unit: requests/s\n"
        "        points:\n"
        "          - {watts: 350, throughput: 25.626}\n"
        "          - {watts: 425, throughput: 25.595}\n"
    )
    assert edited == BUDGET.replace(old_block, new_block)
    budget = parse_budget(next(yaml.safe_load_all(edited)))
    assert [(p.watts, p.throughput) for p in budget.spec.targets[0].profile.curve()] == [
        (350, 25.626),
        (425, 25.595),
    ]


def test_import_into_a_flow_style_target_keeps_its_line(tmp_path: Path) -> None:
    path = tmp_path / "budget.yaml"
    path.write_text(BUDGET)
    code, _, stderr = run(
        "profile", "import", fixture("vllm-350w.json"), "--into", str(path), "--target", "decode"
    )
    assert code == 0, stderr
    assert path.read_text() == BUDGET.replace(
        "profile: {points: [{watts: 300, throughput: 3}]}",
        "profile: {unit: requests/s, points: [{watts: 350, throughput: 25.626}]}",
    )


@pytest.mark.parametrize(
    ("target", "name", "message"),
    [
        ("embed", None, "budget.yaml: no target named 'embed' (targets: prefill, decode)"),
        (None, None, "budget.yaml: the budget has 2 targets (prefill, decode): choose one with --target"),
        ("prefill", "other", "budget.yaml: no GpuPowerBudget named 'other'"),
    ],
)
def test_import_into_a_budget_file_names_what_it_cannot_find(
    tmp_path: Path, target: str | None, name: str | None, message: str
) -> None:
    path = tmp_path / "budget.yaml"
    path.write_text(BUDGET)
    args = ["profile", "import", fixture("vllm-350w.json"), "--into", str(path)]
    args += ["--target", target] if target else []
    args += ["--name", name] if name else []
    code, _, stderr = run(*args)
    assert code == 1
    assert message in stderr
    assert path.read_text() == BUDGET


def test_a_profile_the_budget_refuses_is_not_written() -> None:
    profile = {"unit": "requests/s", "points": [{"watts": 350, "throughput": 1}]}
    no_safe_default = BUDGET.replace("  safeDefaultWatts: 300\n", "")
    with pytest.raises(BudgetFileError, match=r"^budget.yaml: with the new profile: spec.safeDefaultWatts"):
        with_profile("budget.yaml", no_safe_default, profile, "prefill")


def test_plan_notes_raised_points_and_preset_estimates(tmp_path: Path) -> None:
    path = tmp_path / "budget.yaml"
    path.write_text(
        BUDGET.replace(
            "          - {watts: 700, throughput: 20.0}  # guessed\n",
            "          - {watts: 450, throughput: 17.0}\n          - {watts: 700, throughput: 16.5}\n",
        ).replace(
            "profile: {points: [{watts: 300, throughput: 3}]}",
            "profile: {preset: decode, peakThroughput: 3, maxWatts: 700}",
        )
    )
    code, stdout, stderr = run("plan", "-f", str(path))
    assert code == 0, stderr
    assert (
        "note: target prefill: profile adjusted, a higher cap never serves less than a lower one: "
        "raised points[2] at 700 W from 16.5 to 17 requests/s"
    ) in stdout
    assert "note: target decode: profile is the decode preset, an estimate" in stdout
    code, stdout, _ = run("plan", "-f", str(path), "-o", "json")
    targets = {t["name"]: t for t in json.loads(stdout)["targets"]}
    assert targets["prefill"]["profileAdjusted"] is True
    assert targets["prefill"]["profileRaisedPoints"] == [
        {"index": 2, "watts": 700.0, "throughput": 16.5, "usedThroughput": 17.0}
    ]
    assert (targets["decode"]["profileSource"], targets["decode"]["profileAdjusted"]) == ("Preset", False)


# ---------------------------------------------------------------------------
# gpupower profile measure: what it refuses before it asks the cluster anything, and how it shows a run


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--caps", "250,abc"], "--caps: 'abc' is not a cap within 1..10000 W"),
        (["--caps", "250,0"], "--caps: '0' is not a cap within 1..10000 W"),
        (["--caps", "250,250"], "--caps: capsWatts[1] (250 W) repeats a cap"),
        (
            ["--caps", "250", "--hold-seconds", "2"],
            "--hold-seconds: Input should be greater than or equal to 5",
        ),
        (
            ["--caps", "250", "--settle-seconds", "-1"],
            "--settle-seconds: Input should be greater than or equal",
        ),
        (["--caps", "250", "--target", "Decode"], "--target: String should match pattern"),
    ],
)
def test_measure_names_the_bad_flag_before_it_reaches_the_cluster(args: list[str], words: str) -> None:
    base = ["profile", "measure", "--budget", "llm", "--target", "decode"]
    code, stdout, stderr = run(*base, *args)
    assert code == 1 and stdout == ""
    assert words in stderr, stderr


def test_measure_refuses_an_advisory_budget_and_an_unknown_target() -> None:
    from gpupower_operator.cli.profile import MeasureError, check_budget

    advisory = {"spec": {"mode": "Advisory", "targets": [{"name": "decode"}]}}
    with pytest.raises(MeasureError, match="--budget: budget llm is Advisory"):
        check_budget(advisory, "llm", "decode")
    enforce = {"spec": {"targets": [{"name": "decode"}, {"name": "prefill"}]}}
    with pytest.raises(
        MeasureError, match=r"--target: budget llm has no target 'tts' \(targets: decode, prefill\)"
    ):
        check_budget(enforce, "llm", "tts")
    check_budget(enforce, "llm", "prefill")


def test_the_run_document_is_what_the_flags_say() -> None:
    from gpupower_operator.cli.profile import run_document

    document = run_document(
        "inference", "llm", "decode", [250, 350], 10, 30, None, 'sum(q{pod="$pod"})', None, None
    )
    assert document["kind"] == "GpuPowerProfileRun"
    assert document["metadata"] == {"namespace": "inference", "generateName": "llm-decode-"}
    assert document["spec"] == {
        "budget": "llm",
        "target": "decode",
        "capsWatts": [250, 350],
        "settleSeconds": 10,
        "holdSeconds": 30,
        "saturationQuery": 'sum(q{pod="$pod"})',
    }


def test_the_curve_table_shows_every_level_and_what_was_read() -> None:
    from rich.console import Console

    from gpupower_api.profilerun import LevelPhase, LevelStatus, RunStatus
    from gpupower_operator.cli.profile import curve_table, level_line

    status = RunStatus(
        pod="decode-0",
        unit="requests/s",
        levels=[
            LevelStatus(
                cap_watts=250,
                phase=LevelPhase.RECORDED,
                throughput=6.3,
                observed_watts=241,
                samples=60,
                saturated_samples=60,
            ),
            LevelStatus(
                cap_watts=450, phase=LevelPhase.UNSATURATED, throughput=5.1, samples=60, saturated_samples=41
            ),
            LevelStatus(cap_watts=700, phase=LevelPhase.OVER_BUDGET, message="reserves 700 W"),
        ],
    )
    console = Console(width=120, record=True)
    console.print(curve_table(status))
    text = console.export_text()
    assert (
        "decode-0" in text
        and "Recorded" in text
        and "60/60" in text
        and "41/60" in text
        and "OverBudget" in text
    )
    assert level_line(status.levels[0], "requests/s") == "250 W: Recorded 6.3 requests/s"
    assert level_line(status.levels[2], "requests/s") == "700 W: OverBudget (reserves 700 W)"
