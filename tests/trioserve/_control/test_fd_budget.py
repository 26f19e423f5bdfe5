"""The serve process's listener bounds, derived from its open-file limit (pure)."""

from __future__ import annotations

import pytest

from trioserve._control.fd_budget import (
    ConnectionBounds,
    connection_bounds,
    fd_reserve,
    open_file_limit,
)

#: the serve process's own descriptors (interpreter, event loop, listeners, fork server's
#: pipes), and those each replica process takes outside every listener (pidfd, link to it)
OWN_FDS = 20
PER_REPLICA = 2


def test_fd_budget_unlimited_gives_the_usual_defaults() -> None:
    """Without an open-file limit, each listener keeps its usual bound."""
    assert connection_bounds(None) == ConnectionBounds(http=512, control_http=64, websocket=256)


@pytest.mark.parametrize(
    ("soft_limit", "expected"),
    [
        (256, ConnectionBounds(http=85, control_http=21, websocket=42)),
        (1024, ConnectionBounds(http=398, control_http=64, websocket=199)),
        (1_048_576, ConnectionBounds(http=512, control_http=64, websocket=256)),
    ],
)
def test_fd_budget_bounds_follow_the_limit(soft_limit: int, expected: ConnectionBounds) -> None:
    """The bounds share what the reserve leaves, up to the usual defaults."""
    assert connection_bounds(soft_limit) == expected


@pytest.mark.parametrize("soft_limit", [256, 512, 1024, 4096, 65_536])
def test_fd_budget_every_listener_flooded_leaves_the_reserve(soft_limit: int) -> None:
    """With all four listeners at their bounds the process still has the reserve free: its
    own descriptors and room to (re)start replicas."""
    bounds = connection_bounds(soft_limit)
    flooded = bounds.http + bounds.control_http + 2 * bounds.websocket
    assert flooded + fd_reserve(soft_limit) <= soft_limit


def test_fd_budget_common_limit_has_room_for_50_replicas() -> None:
    """At the common limit of 1024, the reserve holds 50 replica processes' descriptors
    beside the process's own, and each websocket listener holds their 50 links and a flood."""
    reserve = fd_reserve(1024)
    assert reserve >= OWN_FDS + 50 * PER_REPLICA
    assert connection_bounds(1024).websocket >= 2 * 50


def test_fd_budget_reads_this_process_limit() -> None:
    """The limit is this process's soft ``RLIMIT_NOFILE`` (a positive number, or None)."""
    limit = open_file_limit()
    assert limit is None or limit > 0
