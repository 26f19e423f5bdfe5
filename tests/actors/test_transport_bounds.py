"""A listener's connection bound: derived from the open-file limit, and shared so that a
flood of peers that never authenticate cannot lock out one that does."""

from __future__ import annotations

import logging

import pytest
import trio

from actors._transport import ConnectionGate, default_max_connections, fd_reserve
from actors.testing import connected, serving

from .actors_fixtures import Worker
from .test_hardening import TOKEN, ConnectionCount, _port

# -- the gate (sans-IO)


def test_connection_gate_evicts_the_oldest_pending_connection_at_the_limit() -> None:
    """At the limit a new connection takes the place of the oldest one still in its
    handshake; an authenticated one is never evicted."""
    gate = ConnectionGate(3)
    for key in ("a", "b", "c"):
        assert gate.enter(key).admitted
    assert gate.authenticated("a")
    decision = gate.enter("d")
    assert (decision.admitted, decision.evict, decision.warn) == (True, "b", True)
    decision = gate.enter("e")
    assert (decision.admitted, decision.evict, decision.warn) == (True, "c", False)
    assert gate.active == 3
    assert gate.evicted == 2


def test_connection_gate_refuses_when_every_connection_is_authenticated() -> None:
    """With only authenticated connections open, a new one is refused; one warning per
    burst, and a burst ends with an admission that found room."""
    gate = ConnectionGate(2)
    for key in ("a", "b"):
        gate.enter(key)
        gate.authenticated(key)
    warns = [gate.enter(key).warn for key in ("c", "d", "e")]
    assert warns == [True, False, False]
    assert not gate.enter("f").admitted
    assert gate.refused == 4
    gate.leave("a")
    assert gate.enter("g").evict is None
    gate.authenticated("g")
    assert gate.enter("h").warn  # a new burst


def test_connection_gate_counts_an_evicted_connection_out_once() -> None:
    """An evicted connection cannot authenticate any more, and its closing does not count
    down a second time; ``on_change`` sees every change of the count."""
    counts: list[int] = []
    gate = ConnectionGate(1, counts.append)
    gate.enter("old")
    assert gate.enter("new").evict == "old"
    assert not gate.authenticated("old")
    gate.leave("old")
    assert gate.active == 1
    gate.leave("new")
    assert gate.active == 0
    assert counts == [1, 0]


def test_connection_gate_validates_its_limit() -> None:
    """A limit below 1 is refused with a message showing it."""
    with pytest.raises(ValueError, match="max_connections must be >= 1, got 0"):
        ConnectionGate(0)


# -- the default bound


@pytest.mark.parametrize(
    ("soft_limit", "bound"),
    [(None, 256), (1_048_576, 256), (1024, 224), (256, 48), (64, 8)],
)
def test_default_max_connections_follows_the_open_file_limit(
    soft_limit: int | None, bound: int
) -> None:
    """A listener's default bound is a quarter of what the reserve leaves of the limit
    (capped at 256): two flooded listeners leave at least half of it."""
    assert default_max_connections(soft_limit) == bound
    if soft_limit is not None and soft_limit >= 256:
        assert 2 * bound <= (soft_limit - fd_reserve(soft_limit)) // 2


# -- a real listener


async def test_listener_silent_flood_does_not_lock_out_an_authenticated_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the listener full of connections that never send a byte, a client with the
    token still gets in (the oldest silent connection is closed to make room, with one
    warning) and its calls are served."""
    caplog.set_level(logging.WARNING, logger="actors.transport")
    count = ConnectionCount()
    async with serving(
        Worker(), token=TOKEN, max_connections=3, handshake_timeout=60, on_connections=count
    ) as address:
        silent = [await trio.open_tcp_stream("127.0.0.1", _port(address)) for _ in range(3)]
        await count.wait_for(3)
        with trio.fail_after(5):
            async with connected(address, token=TOKEN) as ref:
                assert await ref.call("echo", "in") == "in"
                assert await silent[0].receive_some() == b""  # made way, long before 60 s
        warnings = [r for r in caplog.records if "max_connections=3" in r.getMessage()]
        assert len(warnings) == 1
        for sock in silent:
            await sock.aclose()
        await count.wait_for(0)
