"""The leader-election rule (client-go's): take a free or expired Lease, renew our own, else wait."""

from __future__ import annotations

import pytest

from gpupower_operator.shell.leadership import Action, LeaseRecord, decide


def lease(holder: str | None, lease_seconds: float = 8) -> LeaseRecord:
    return LeaseRecord(holder, lease_seconds, transitions=3, renew_time=None, resource_version="41")


@pytest.mark.parametrize(
    ("record", "unchanged_seconds", "expected"),
    [
        (None, 0.0, Action.TAKE),  # no Lease yet: create it
        (lease(None), 0.0, Action.TAKE),  # released by a holder that stopped cleanly
        (lease("me"), 100.0, Action.RENEW),
        (lease("other"), 7.9, Action.WAIT),
        (lease("other"), 8.1, Action.TAKE),  # unchanged for longer than the holder's own lease
        (lease("other", lease_seconds=30), 8.1, Action.WAIT),  # the holder's duration counts, not ours
        (lease("other", lease_seconds=0), 8.1, Action.TAKE),  # no duration recorded: ours
    ],
)
def test_a_candidate_takes_only_a_free_or_expired_lease(
    record: LeaseRecord | None, unchanged_seconds: float, expected: Action
) -> None:
    assert decide(record, "me", unchanged_seconds, default_lease_seconds=8) is expected
