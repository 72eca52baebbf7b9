"""The README tells the truth: the two commands, the generated API reference, the documented flags."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpupower_api import reference
from tests.envtest import source_env

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run must run exactly the README's test command"


def test_api_reference_is_generated_from_the_models() -> None:
    assert reference.update(README) == README, "README.md's API reference is stale: run `make docs`"


def test_every_model_field_is_documented() -> None:
    assert {model.__name__ for _, model, _ in reference.TABLES} >= {
        "BudgetSpec",
        "DomainSpec",
        "DomainStatus",
    }
    for _, model, prefix in reference.TABLES:
        for path, _, _, description in reference.rows(model, prefix):
            assert description, path


@functools.cache
def _flags(module: str) -> frozenset[str]:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=source_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]+)", result.stdout)) - {"--help"}


@pytest.mark.parametrize("module", ["gpupower_operator", "gpupower_agent"])
def test_every_flag_of_the_programs_is_in_the_readme(module: str) -> None:
    missing = sorted(flag for flag in _flags(module) if f"`{flag}" not in README)
    assert not missing, f"{module} flags missing from README.md: {missing}"


@pytest.mark.parametrize(
    "flag",
    [
        "--namespace", "--resync-seconds", "--metrics-port", "--prometheus-url", "--log-level",
        "--node-name", "--gpu-mapping", "--pod-resources-socket", "--fake-gpus", "--fake-gpu-state",
        "--safe-default-watts", "--state-file", "--no-restore-on-exit",
    ],
)  # fmt: skip
def test_the_design_command_lines_still_hold(flag: str) -> None:
    assert flag in _flags("gpupower_operator") | _flags("gpupower_agent")
