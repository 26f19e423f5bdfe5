"""Duplex calls: a request stream from the caller beside the reply stream, over an
in-memory link, over real sockets, and inline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import actors
import actors.lowlevel
import actors.testing
from actors import _protocol, _wire

TOKEN = "duplex-test-token"


class Echo:
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.reading = trio.Event()
        self.closed_early = trio.Event()

    @actors.lowlevel.duplex_stream
    async def echo(self, emit: Any, inbox: Any, prefix: str) -> None:
        async for item in inbox:
            self.seen.append(item)
            await emit(f"{prefix}{item}")

    @actors.lowlevel.duplex_stream
    async def stall(self, emit: Any, inbox: Any) -> None:
        """Reads nothing until told (``reading``), then counts."""
        await self.reading.wait()
        async for item in inbox:
            self.seen.append(item)
        await emit(len(self.seen))

    @actors.lowlevel.duplex_stream
    async def first_only(self, emit: Any, inbox: Any) -> None:
        async for item in inbox:
            await emit(item)
            return

    def plain(self) -> int:
        return 1


@asynccontextmanager
async def _ref(how: str, obj: Echo) -> AsyncIterator[Any]:
    if how == "memory":
        async with actors.testing.in_memory(obj) as ref:
            yield ref
    elif how == "socket":
        async with (
            actors.testing.serving(obj, token=TOKEN) as address,
            actors.testing.connected(address, token=TOKEN) as ref,
        ):
            yield ref
    else:
        async with trio.open_nursery() as nursery:
            host = actors.lowlevel.ActorHost(obj, nursery)
            yield actors.InlineRef(host)
            nursery.cancel_scope.cancel()


WAYS = ["memory", "socket", "inline"]


@pytest.mark.parametrize("how", WAYS)
async def test_duplex_echo_streams_both_ways_in_lock_step(how: str) -> None:
    """Each item sent is answered before the next is sent: the request stream reaches
    the method while the call runs, not after it."""
    async with _ref(how, Echo()) as ref:
        replies, sender = ref.submit_duplex("echo", ("> ",))
        for word in ["a", "b", "c"]:
            await sender.send(word)
            assert await replies.__anext__() == f"> {word}"
        sender.end()
        with pytest.raises(StopAsyncIteration):
            await replies.__anext__()


@pytest.mark.parametrize("how", WAYS)
async def test_duplex_sender_waits_for_credit(how: str) -> None:
    """A method that does not read holds the caller to one window of items: the rest wait
    in the caller's task, not in memory at the host."""
    obj = Echo()
    async with _ref(how, obj) as ref:
        replies, sender = ref.submit_duplex("stall")
        sent = 0

        async def send_all() -> None:
            nonlocal sent
            for i in range(100):
                await sender.send(i)
                sent += 1
            sender.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == _protocol.STREAM_WINDOW
            obj.reading.set()
        assert await replies.__anext__() == 100
        assert obj.seen == list(range(100))


@pytest.mark.parametrize("how", WAYS)
async def test_duplex_send_after_the_call_ended_is_broken(how: str) -> None:
    async with _ref(how, Echo()) as ref:
        replies, sender = ref.submit_duplex("first_only")
        await sender.send("x")
        assert [item async for item in replies] == ["x"]
        with pytest.raises(trio.BrokenResourceError):
            await sender.send("y")
        sender.end()  # harmless once the call ended


@pytest.mark.parametrize("how", WAYS)
async def test_duplex_cancelled_reply_stream_closes_the_sender(how: str) -> None:
    obj = Echo()
    async with _ref(how, obj) as ref:
        replies, sender = ref.submit_duplex("stall")
        replies.cancel()
        with pytest.raises(trio.BrokenResourceError):
            await sender.send(1)


@pytest.mark.parametrize("how", WAYS)
async def test_duplex_method_called_as_a_stream_sees_an_empty_request_stream(how: str) -> None:
    async with _ref(how, Echo()) as ref:
        assert [item async for item in ref.submit_stream("echo", ("> ",))] == []


async def test_duplex_items_without_credit_close_the_connection() -> None:
    """A caller that sends request-stream items it has no credit for breaks the protocol:
    the host closes the connection (and the caller's calls fail)."""
    async with actors.testing.in_memory(Echo()) as ref:
        replies, _sender = ref.submit_duplex("stall")
        assert ref.link is not None
        for _ in range(_protocol.STREAM_WINDOW + 1):
            ref.link.send_nowait(_wire.StreamItem(1, _wire.Raw(b"\x01")))
        with pytest.raises(actors.ActorDiedError):
            await replies.__anext__()
        assert not ref.alive


async def test_in_memory_ref_runs_plain_calls_too() -> None:
    async with actors.testing.in_memory(Echo()) as ref:
        assert await ref.call("plain") == 1
        assert ref.received_upto == 1
