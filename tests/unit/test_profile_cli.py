"""`gpupower profile import` and the profile notes of `gpupower plan`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpupower_api.models import parse_budget
from gpupower_operator.budgetfile import BudgetFileError, with_profile
from gpupower_operator.cli import app

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
