"""Programs the tests start as child processes, tied to the test process: they die with it, however it dies.

A ``preexec_fn`` would do that, but it forces a real ``fork()``, and gRPC's fork
handlers in the test process (its PodResources servers run gRPC threads) can
abort the child before it execs (grpc/grpc#43055). So a tiny launcher asks the
kernel for a signal when its parent dies (``PR_SET_PDEATHSIG`` survives
``execve``) and then becomes the program; subprocess spawns the launcher with
``vfork``, running no Python code in between.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def tied_to_this_process(argv: Sequence[str], death_signal: int = signal.SIGKILL) -> list[str]:
    """The command line that runs ``argv`` (a program and its arguments) until this process dies."""
    launcher = (
        "import ctypes, os, sys; "
        f"ctypes.CDLL('libc.so.6').prctl({_PR_SET_PDEATHSIG}, {int(death_signal)}); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", launcher, *argv]
