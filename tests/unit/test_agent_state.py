"""The agent's state file: atomic writes, and bad files reported rather than crashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupower_agent.state import AgentState, CorruptStateError, load_state, save_state


def test_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_state(path, "node-1", {"GPU-b", "GPU-a"})
    assert load_state(path) == AgentState("node-1", frozenset({"GPU-a", "GPU-b"}))
    assert not [p for p in path.parent.iterdir() if p.name != "state.json"]  # no temp files left


def test_a_missing_state_file_is_a_first_start(tmp_path: Path) -> None:
    assert load_state(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ('{"version": 1, "nodeName": "n", "managedGp', "not JSON"),
        ("[]", "expected an object"),
        ('{"version": 2, "nodeName": "n", "managedGpus": []}', "version"),
        ('{"version": 1, "managedGpus": []}', "nodeName"),
        ('{"version": 1, "nodeName": "n", "managedGpus": "GPU-a"}', "managedGpus"),
        ('{"version": 1, "nodeName": "n", "managedGpus": [1, 2]}', "managedGpus"),
        ("\x00\x01\x02", "not JSON"),
    ],
)
def test_corrupt_state_files_name_what_is_wrong(tmp_path: Path, content: str, field: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(CorruptStateError, match=field):
        load_state(path)
