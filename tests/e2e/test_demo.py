"""`make demo` as a test: the real operator and agents converge on simulated nodes without overshoot."""

from __future__ import annotations

import pytest

from demo.controlplane import missing_prerequisite
from demo.run import run_demo

pytestmark = pytest.mark.envtest


def test_demo_converges_without_overshoot(capsys: pytest.CaptureFixture[str]) -> None:
    if missing_prerequisite() is not None:
        pytest.skip(str(missing_prerequisite()))
    result = run_demo(lower_to_watts=3500, timeout_seconds=40)
    out = capsys.readouterr().out
    assert result.after_watts <= 3500
    assert result.peak_watts <= result.before_watts
    assert result.before_watts > 3500, "the first plan should use more than the lowered budget"
    assert result.samples >= 3, "the fleet must be observed while it moves"
    assert result.no_overshoot
    assert "NAME        BUDGET   PLANNED" in out
    assert "no overshoot" in out
