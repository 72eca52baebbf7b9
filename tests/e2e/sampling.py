"""A sampling loop for end-to-end tests: what the fake GPUs hold, read in a thread while the fleet moves."""

from __future__ import annotations

import threading
from typing import Self


class Sampling:
    """Call :meth:`sample` every ``interval_seconds`` between ``__enter__`` and ``__exit__``.

    An error inside the loop stops it and fails the test at ``__exit__``: a dead sampler that saw nothing
    must never pass for one that saw nothing wrong.
    """

    interval_seconds: float = 0.1

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(self.interval_seconds)
        except BaseException as error:  # surfaced by __exit__
            self._error = error

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None:
            raise AssertionError(f"the sampler failed: {self._error!r}") from self._error
