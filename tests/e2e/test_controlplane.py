"""The control-plane launcher the tests and the demo share: a failed kit start is stopped and retried."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from demo.controlplane import kit_script, missing_prerequisite, running_control_plane

pytestmark = pytest.mark.envtest


def test_a_start_that_fails_once_is_retried_in_a_fresh_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if missing_prerequisite() is not None:
        pytest.skip(str(missing_prerequisite()))
    real = kit_script()
    marker = tmp_path / "failed-once"
    # A kit whose first `start` fails the way a loaded machine can make it fail; the rest is the real kit.
    flaky = tmp_path / "flaky-start-envtest"
    flaky.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = start ] && [ ! -e "{marker}" ]; then\n'
        f'  touch "{marker}"; echo "start-envtest: failed to start: simulated" >&2; exit 1\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    flaky.chmod(flaky.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("GPUPOWER_ENVTEST_KIT", str(flaky))
    with running_control_plane(controllers=False) as plane:
        assert marker.exists(), "the first start was not attempted"
        assert plane.run_dir.name.endswith("-2")
        assert plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        run_dir = plane.run_dir
    assert not run_dir.exists()
