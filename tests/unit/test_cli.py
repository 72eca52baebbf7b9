"""`gpupower plan` and `gpupower budget` as a user runs them: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpupower_operator.cli.main import app
from tests.envtest import source_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "llama-disaggregated.yaml"
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_plan_prints_a_table_with_every_target() -> None:
    code, stdout, _ = run("plan", "-f", str(EXAMPLE))
    assert code == 0
    assert "prefill" in stdout and "decode" in stdout
    assert "utilization" in stdout
    assert "16,000" in stdout


def test_plan_json_is_machine_readable_and_within_budget() -> None:
    code, stdout, _ = run("plan", "-f", str(EXAMPLE), "-o", "json")
    assert code == 0
    document = json.loads(stdout)
    assert document["budgetWatts"] == 16000
    assert document["plannedWatts"] <= 16000
    assert {t["name"] for t in document["targets"]} == {"prefill", "decode"}
    for target in document["targets"]:
        assert 200 <= target["capWatts"] <= 700
        assert target["projectedWatts"] == pytest.approx(
            target["plannedReplicas"] * target["capWatts"] * (1 if target["name"] == "prefill" else 2)
        )


def test_plan_yaml_output() -> None:
    code, stdout, _ = run("plan", "-f", str(EXAMPLE), "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(stdout)["strategy"] == "Optimize"


def test_strategy_and_demand_override_the_file() -> None:
    code, stdout, _ = run(
        "plan", "-f", str(EXAMPLE), "-o", "json", "--strategy", "Proportional", "--demand", "decode=400"
    )
    assert code == 0
    document = json.loads(stdout)
    assert document["strategy"] == "Proportional"
    decode = next(t for t in document["targets"] if t["name"] == "decode")
    assert decode["demand"] == 400
    # Demand alone would ask ceil(400 / 8) = 50 replicas at the max cap, clamped to maxReplicas.
    assert decode["desiredReplicas"] == 24


def test_compare_shows_optimize_serving_more_within_the_same_budget() -> None:
    code, stdout, _ = run("plan", "-f", str(EXAMPLE), "--compare", "-o", "json")
    assert code == 0
    document = json.loads(stdout)
    assert document["optimize"]["servedFraction"] > document["proportional"]["servedFraction"]
    assert document["optimize"]["plannedWatts"] <= 16000
    assert document["proportional"]["plannedWatts"] <= 16000
    assert document["servedFractionGain"] == pytest.approx(
        document["optimize"]["servedFraction"] - document["proportional"]["servedFraction"], abs=1e-5
    )
    code, stdout, _ = run("plan", "-f", str(EXAMPLE), "--compare")
    assert code == 0
    assert "Optimize plan" in stdout and "Proportional plan" in stdout
    assert "Optimize serves" in stdout and "points more of the demand" in stdout


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budget.yaml"
    path.write_text(text)
    return path


def test_missing_file(tmp_path: Path) -> None:
    code, stdout, stderr = run("plan", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"
    assert stdout == ""


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: gpupower.dev/v1alpha1\nkind: GpuPowerBudget\nspec: [unclosed\n")
    code, _, stderr = run("plan", "-f", str(path))
    assert code == 1
    assert stderr.startswith(f"error: {path}: invalid YAML at line")
    assert len(stderr.strip().splitlines()) == 1


def test_wrong_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    code, _, stderr = run("plan", "-f", str(path))
    assert code == 1
    assert "kind: expected GpuPowerBudget (gpupower.dev/v1alpha1), found Deployment" in stderr


def test_invalid_field_is_named(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["targets"][1]["capWatts"]["min"] = 900
    path = write(tmp_path, yaml.safe_dump(document))
    code, _, stderr = run("plan", "-f", str(path))
    assert code == 1
    assert stderr.strip() == f"error: {path}: spec.targets[1].capWatts: min (900) must be <= max (700)"


@pytest.mark.parametrize(
    ("demand", "words"),
    [
        ("prefil=10", "no target named 'prefil'"),
        ("decode", "expected TARGET=VALUE"),
        ("decode=lots", "'lots' is not a number"),
        ("decode=-1", "must be a finite number >= 0"),
    ],
)
def test_bad_demand_override(demand: str, words: str) -> None:
    code, _, stderr = run("plan", "-f", str(EXAMPLE), "--demand", demand)
    assert code == 1
    assert stderr.startswith("error: --demand")
    assert words in stderr


def test_several_budgets_need_a_name(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    other = yaml.safe_load(EXAMPLE.read_text())
    other["metadata"]["name"] = "other"
    path = write(tmp_path, yaml.safe_dump_all([document, other]))
    code, _, stderr = run("plan", "-f", str(path))
    assert code == 1 and "choose one with --name" in stderr
    code, stdout, _ = run("plan", "-f", str(path), "--name", "other", "-o", "json")
    assert code == 0 and json.loads(stdout)["budget"] == "other"


def test_infeasible_budget_plans_the_floor_and_says_by_how_much(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["totalWatts"] = 500  # floor: 1 x 1 x 200 + 1 x 2 x 200 = 600 W
    path = write(tmp_path, yaml.safe_dump(document))
    code, stdout, _ = run("plan", "-f", str(path), "-o", "json")
    assert code == 0
    plan = json.loads(stdout)
    assert plan["feasible"] is False
    assert plan["infeasibleByWatts"] == 100
    assert plan["plannedWatts"] == 600
    assert "infeasible by 100 W" in plan["reason"]


def test_budget_sizing() -> None:
    code, stdout, _ = run(
        "budget", "--rack-watts", "40000", "--headroom", "0.9", "--overhead-watts", "6000",
        "--gpus", "48", "--gpu-tdp", "700", "-o", "json",
    )  # fmt: skip
    assert code == 0
    document = json.loads(stdout)
    assert document["totalWatts"] == 30000
    assert document["wattsPerGpu"] == 625.0
    assert document["gpusAtTdp"] == 42


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rack-watts", "0", "--headroom", "0.9", "--overhead-watts", "0"], "--rack-watts: must be > 0"),
        (
            ["--rack-watts", "1000", "--headroom", "1.5", "--overhead-watts", "0"],
            "--headroom: must be in (0, 1]",
        ),
        (
            ["--rack-watts", "1000", "--headroom", "0.9", "--overhead-watts", "-1"],
            "--overhead-watts: must be >= 0",
        ),
        (["--rack-watts", "1000", "--headroom", "0.5", "--overhead-watts", "600"], "leaves no GPU budget"),
        (
            ["--rack-watts", "1000", "--headroom", "0.9", "--overhead-watts", "0", "--gpus", "0"],
            "--gpus: must be > 0",
        ),
    ],
)
def test_budget_sizing_rejects_bad_input(args: list[str], words: str) -> None:
    code, _, stderr = run("budget", *args)
    assert code == 1
    assert words in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_the_installed_command_never_prints_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "{{{{")
    result = subprocess.run(
        [sys.executable, "-m", "gpupower_operator.cli", "plan", "-f", str(path)],
        capture_output=True,
        text=True,
        env=source_env(),
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


# ---------------------------------------------------------------------------
# Domains and budgets planned together

ROW = REPO / "manifests" / "examples" / "row-with-two-racks.yaml"


def row_documents() -> list[dict[str, object]]:
    return list(yaml.safe_load_all(ROW.read_text()))


def write_all(tmp_path: Path, documents: list[dict[str, object]]) -> Path:
    return write(tmp_path, yaml.safe_dump_all(documents))


def test_plan_allocates_a_file_of_domains_and_budgets_together() -> None:
    code, stdout, _ = run("plan", "-f", str(ROW), "-o", "json")
    assert code == 0
    document = json.loads(stdout)
    domains = {d["name"]: d for d in document["domains"]}
    assert set(domains) == {"row-r3", "rack-a12", "rack-a13"}
    budgets = {b["name"]: b for b in document["budgets"]}
    assert [budgets[n]["priority"] for n in ("llama-chat", "code-complete", "batch-summarize")] == [
        100,
        50,
        0,
    ]
    for domain in domains.values():
        assert domain["allocatedWatts"] + domain["committedWatts"] <= domain["limitWatts"]
    assert domains["row-r3"]["allocatedWatts"] == sum(b["allocatedWatts"] for b in budgets.values())
    # The highest priority is served first, the lowest gets what the row has left.
    assert budgets["llama-chat"]["servedFraction"] == 1.0
    assert budgets["batch-summarize"]["limitedBy"] == "HigherPriority"
    assert budgets["batch-summarize"]["boundBy"] == "row-r3"
    assert budgets["code-complete"]["limitedBy"] == "OwnLimit"
    # Each budget's plan is its planner's within exactly its allocation.
    for budget in budgets.values():
        assert budget["plan"]["budgetWatts"] == budget["allocatedWatts"]
        assert budget["plan"]["plannedWatts"] == budget["allocatedWatts"]
        assert budget["plan"]["servedFraction"] == budget["servedFraction"]


def test_plan_prints_the_domains_the_budgets_and_each_plan() -> None:
    code, stdout, _ = run("plan", "-f", str(ROW))
    assert code == 0
    for words in ("domains", "HEADROOM W", "rack-a12", "budgets", "inference/llama-chat", "higher-priority"):
        assert words in stdout, words
    assert "llama-chat: Optimize plan" in stdout and "code-complete: Optimize plan" in stdout


def test_compare_sets_the_allocation_beside_a_static_split_by_gpu_share() -> None:
    code, stdout, _ = run("plan", "-f", str(ROW), "--compare", "-o", "json")
    assert code == 0
    document = json.loads(stdout)
    tiers = document["tiers"]
    assert [t["priority"] for t in tiers] == [100, 50, 0]
    # The split by GPUs starves the chat model that the allocation serves first.
    assert tiers[0]["servedFraction"] == 1.0 > tiers[0]["staticServedFraction"]
    assert tiers[1]["servedFraction"] >= tiers[1]["staticServedFraction"]
    static = {b["name"]: b["static"] for b in document["budgets"]}
    # GPUs at maxReplicas: chat 12, batch 16, code 8 + 16; the row's 16 kW by 12/52 and 16/52.
    assert static["llama-chat"]["shareWatts"] == pytest.approx(16000 * 12 / 52, abs=0.001)
    assert static["batch-summarize"]["shareWatts"] == pytest.approx(16000 * 16 / 52, abs=0.001)
    assert sum(b["plannedWatts"] for b in static.values()) <= 16000
    code, stdout, _ = run("plan", "-f", str(ROW), "--compare")
    assert code == 0
    assert "STATIC SERVED" in stdout and "GAIN" in stdout
    assert (
        "priority 100 (1 budget(s)): the least served gets 100.0% with the priority-aware allocation"
        in stdout
    )


def test_domain_status_in_the_file_counts_what_is_committed_outside_budgets(tmp_path: Path) -> None:
    documents = row_documents()
    documents[1]["status"] = {"committed": {"idleWatts": 800, "unmanagedWatts": 600}}  # rack-a12
    code, stdout, _ = run("plan", "-f", str(write_all(tmp_path, documents)), "-o", "json")
    assert code == 0
    domains = {d["name"]: d for d in json.loads(stdout)["domains"]}
    assert domains["rack-a12"]["committedWatts"] == domains["row-r3"]["committedWatts"] == 1400
    assert domains["row-r3"]["allocatedWatts"] <= 16000 - 1400


def test_budgets_without_a_domain_are_planned_on_their_own_beside_the_tree(tmp_path: Path) -> None:
    documents = [*row_documents(), yaml.safe_load(EXAMPLE.read_text())]
    code, stdout, _ = run("plan", "-f", str(write_all(tmp_path, documents)), "-o", "json")
    assert code == 0
    (alone,) = json.loads(stdout)["budgetsWithoutDomain"]
    assert (alone["budget"], alone["budgetWatts"]) == ("llama-70b", 16000)


def _edit(document: dict[str, object], path: str, value: object) -> dict[str, object]:
    node: object = document
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]  # type: ignore[index]
    node[last] = value  # type: ignore[index]
    return document


@pytest.mark.parametrize(
    ("index", "path", "value", "words"),
    [
        (
            3,
            "spec.domainRef.name",
            "rack-z9",
            "budget inference/llama-chat: spec.domainRef.name: no domain rack-z9",
        ),
        (
            0,
            "spec.parent",
            "rack-a12",
            "domain row-r3: spec.parent: its parents form a cycle: row-r3 -> rack-a12",
        ),
        (1, "spec.parent", "row-r4", "domain rack-a12: spec.parent: its parent row-r4 does not exist"),
        (
            1,
            "spec.totalWatts",
            -9000,
            "document 2 (GpuPowerDomain): spec.totalWatts: totalWatts must be a positive",
        ),
        (
            1,
            "spec.namespaceSelector",
            {"matchLabels": {"kubernetes.io/metadata.name": "batch"}},
            "budget inference/llama-chat: domain rack-a12 does not admit namespace inference",
        ),
    ],
)
def test_a_broken_tree_is_named_in_one_line(
    tmp_path: Path, index: int, path: str, value: object, words: str
) -> None:
    documents = row_documents()
    _edit(documents[index], path, value)
    file = write_all(tmp_path, documents)
    code, stdout, stderr = run("plan", "-f", str(file))
    assert code == 1 and stdout == ""
    assert stderr.startswith(f"error: {file}: ")
    assert words in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_options_for_one_budget_are_refused_with_domains() -> None:
    code, _, stderr = run("plan", "-f", str(ROW), "--name", "llama-chat")
    assert code == 1
    assert stderr.strip() == "error: --name: the file holds domains, and all its budgets are planned together"
