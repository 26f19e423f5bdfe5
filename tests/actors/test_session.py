"""The host's side of a caller's connection, driven without sockets."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import actors
import actors.lowlevel
from actors import _codec, _wire
from actors._session import HostSession

from .actors_fixtures import Worker


class FakeLink:
    """What a session needs of a link; ``send_now`` fails when ``broken``."""

    closed = False

    def __init__(self, *, broken: bool) -> None:
        self.broken = broken
        self.sent_now: list[_wire.Envelope] = []
        self.queued: list[_wire.Envelope] = []

    async def send_now(self, envelope: _wire.Envelope) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise trio.BrokenResourceError("the caller is gone")
        self.sent_now.append(envelope)

    def send_nowait(self, envelope: _wire.Envelope) -> None:
        self.queued.append(envelope)

    def close(self, reason: str, *, protocol_error: bool = False) -> None:
        self.closed = True


def _call(call_id: int, key: str) -> _wire.Call:
    return _wire.Call(call_id, "hang", _wire.Raw(_codec.encode_args((key,), {})))


async def _session(nursery: trio.Nursery, link: FakeLink) -> tuple[Worker, HostSession]:
    worker = Worker()
    host = actors.lowlevel.ActorHost(worker, nursery)
    return worker, HostSession(host, link)  # type: ignore[arg-type]


async def test_host_acknowledges_calls_before_they_run() -> None:
    """The calls of one message are acknowledged (``Received`` up to the highest id) before
    any of them starts; they run once the acknowledgement has gone."""
    link = FakeLink(broken=False)
    async with trio.open_nursery() as nursery:
        worker, session = await _session(nursery, link)
        session.on_envelope(_call(1, "a"))
        session.on_envelope(_call(2, "b"))
        pending: Any = session.after_batch()
        assert pending is not None
        await trio.testing.wait_all_tasks_blocked()
        assert worker.started_keys == []  # not before the acknowledgement
        await pending
        assert link.sent_now == [_wire.Received(2)]
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(worker.started_keys) == ["a", "b"]
        assert session.after_batch() is None  # nothing new to acknowledge
        nursery.cancel_scope.cancel()


async def test_host_never_runs_calls_it_could_not_acknowledge() -> None:
    """If the acknowledgement cannot be sent (the caller is gone), the calls it covered are
    cancelled without ever running: the caller will send them elsewhere."""
    link = FakeLink(broken=True)
    async with trio.open_nursery() as nursery:
        worker, session = await _session(nursery, link)
        session.on_envelope(_call(1, "never"))
        pending: Any = session.after_batch()
        with pytest.raises(trio.BrokenResourceError):
            await pending
        await trio.testing.wait_all_tasks_blocked()
        assert worker.started_keys == []
        assert session.host.ongoing == 0
