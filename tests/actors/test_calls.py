"""Calls to actors, over a real process boundary and inline: results, errors, cancellation,
deadlines, streams with backpressure, worker threads and admission limits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import actors
from actors.testing import running_actor

from .actors_fixtures import (
    CustomError,
    Placement,
    call_when_admitted,
    worker_spec,
)

PLACEMENTS = ["process", "inline"]

#: the caller's stream window (items the actor may send ahead of consumption), plus the one
#: item a generator holds while it waits for credit
MAX_AHEAD = 16 + 1


async def _take(receiver: actors.StreamReceiver, n: int) -> list[Any]:
    items = []
    with trio.fail_after(5):
        for _ in range(n):
            items.append(await receiver.__anext__())
    return items


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_round_trip(placement: Placement) -> None:
    """A call returns the method's result, whatever kind of value it is."""
    values: list[object] = [None, 7, "text", b"bytes", [1, {"a": 2}], (1, "tuple"), 2**80]
    async with running_actor(worker_spec(placement)) as actor:
        for value in values:
            result = await actor.ref.call("echo", value)
            assert result == value
            assert type(result) is type(value)
        assert await actor.ref.call("echo", value={"kw": (1, 2)}) == {"kw": (1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_concurrent_calls_get_their_own_results(placement: Placement) -> None:
    """1,000 calls in flight on one connection each get the result of their own argument."""
    async with running_actor(worker_spec(placement)) as actor:
        futures = [actor.ref.submit("square", (i,)) for i in range(1000)]
        assert not all(fut.done() for fut in futures)
        with trio.fail_after(20):
            results = [await fut for fut in futures]
    assert results == [i * i for i in range(1000)]


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_cancelled_caller_cancels_remote_task(placement: Placement) -> None:
    """Cancelling the task that awaits a call, or calling ``fut.cancel()``, cancels the
    actor's task running it (the actor sees trio.Cancelled)."""
    async with running_actor(worker_spec(placement)) as actor:
        outcome: list[str] = []
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def caller() -> None:
                with scope:
                    await actor.ref.call("hang", "by-caller")
                    outcome.append("returned")
                outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

            nursery.start_soon(caller)
            assert await actor.ref.call("wait_started") == ["by-caller"]
            scope.cancel()
        assert outcome == ["cancelled"]
        assert await actor.ref.call("wait_cancelled") == ["by-caller"]

        fut = actor.ref.submit("hang", ("by-future",))
        assert await actor.ref.call("wait_started", 2) == ["by-caller", "by-future"]
        assert fut.cancel()
        with pytest.raises(actors.CallCancelledError):
            await fut
        assert not fut.cancel()  # already finished
        assert await actor.ref.call("wait_cancelled", 2) == ["by-caller", "by-future"]


@pytest.mark.slow
async def test_call_remote_exception_keeps_type_message_and_traceback(tmp_path: Path) -> None:
    """The actor's exception arrives with its type, message and remote traceback; a type the
    caller cannot import arrives as RemoteError carrying the same information."""
    module = "actors_test_child_only_errors"
    (tmp_path / f"{module}.py").write_text("class ChildOnlyError(Exception):\n    pass\n")
    assert module not in sys.modules
    async with running_actor(worker_spec()) as actor:
        with pytest.raises(CustomError) as known:
            await actor.ref.call("fail", "bad input 42")
        assert str(known.value) == "bad input 42"
        remote_tb = known.value.remote_traceback  # type: ignore[attr-defined]
        assert "in fail" in remote_tb
        assert "CustomError: bad input 42" in remote_tb
        assert any("Remote traceback" in note for note in known.value.__notes__)

        with pytest.raises(actors.RemoteError) as unknown:
            await actor.ref.call(
                "raise_from", str(tmp_path), module, "ChildOnlyError", "only the child knows"
            )
        assert unknown.value.type_name == f"{module}.ChildOnlyError"
        assert unknown.value.message == "only the child knows"
        assert "in raise_from" in unknown.value.remote_traceback
        assert "ChildOnlyError: only the child knows" in unknown.value.remote_traceback
        assert module not in sys.modules

        assert await actor.ref.call("echo", "still serving") == "still serving"


async def test_call_inline_exception_is_the_raised_object() -> None:
    """An inline actor's exception reaches the caller as the very exception it raised."""
    async with running_actor(worker_spec("inline")) as actor:
        with pytest.raises(CustomError, match="inline failure"):
            await actor.ref.call("fail", "inline failure")


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement", ["process", pytest.param("inline", marks=pytest.mark.autojump)]
)
async def test_call_deadline_travels_with_call(placement: Placement) -> None:
    """A call's or a stream's timeout is enforced by the actor: the slow work ends with
    DeadlineExceededError and its task is cancelled; other calls are unaffected."""
    async with running_actor(worker_spec(placement)) as actor:
        fut = actor.ref.submit("hang", ("call",), timeout=0.2)
        quick = actor.ref.submit("slow", ("quick", 0.0), timeout=30)
        with trio.fail_after(5), pytest.raises(actors.DeadlineExceededError):
            await fut
        assert await quick == "quick"
        assert await actor.ref.call("wait_cancelled") == ["call"]

        receiver = actor.ref.submit_stream("hang_stream", ("stream",), timeout=0.2)
        with trio.fail_after(5), pytest.raises(actors.DeadlineExceededError):
            await receiver.__anext__()
        assert await actor.ref.call("wait_cancelled", 2) == ["call", "stream"]


@pytest.mark.slow
async def test_call_deadline_on_sync_generator_stream() -> None:
    """A sync generator blocked in a step past its deadline ends with DeadlineExceededError."""
    async with running_actor(worker_spec("inline")) as actor:
        try:
            receiver = actor.ref.submit_stream("block_then_yield", timeout=0.3)
            with trio.fail_after(5), pytest.raises(actors.DeadlineExceededError):
                await receiver.__anext__()
        finally:
            await actor.ref.call("release")  # let the abandoned worker thread finish


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_stream_delivers_every_item_in_order(placement: Placement) -> None:
    """Async generators, sync generators and push streams deliver every item, in order,
    across many credit windows, then end."""
    async with running_actor(worker_spec(placement)) as actor:
        for method in ("count_async", "count_sync", "count_push"):
            receiver = actor.ref.submit_stream(method, (method, 100))
            with trio.fail_after(10):
                items = [item async for item in receiver]
            assert items == [2 * i for i in range(100)], method
            assert receiver.finished
            assert await actor.ref.call("get_produced", method) == 100


@pytest.mark.parametrize("method", ["count_async", "count_sync", "count_push"])
async def test_stream_backpressure_inline(method: str) -> None:
    """A stream runs at most one window ahead of a consumer that stopped consuming."""
    async with running_actor(worker_spec("inline")) as actor:
        receiver = actor.ref.submit_stream(method, ("bp", 1000))
        consumed = await _take(receiver, 20)
        # the cushion lets a sync generator's step on a worker thread come back first
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        produced = await actor.ref.call("get_produced", "bp")
        assert len(consumed) < produced <= len(consumed) + MAX_AHEAD
        await receiver.aclose()


@pytest.mark.slow
async def test_stream_backpressure_process() -> None:
    """Across a process boundary too, generators (async and sync) run at most one window
    ahead of a consumer that stopped consuming; the stream resumes when it consumes again."""
    async with running_actor(worker_spec()) as actor:
        for method in ("count_async", "count_sync"):
            receiver = actor.ref.submit_stream(method, (method, 1000))
            consumed = await _take(receiver, 20)
            produced = await actor.ref.call("produced_when_idle", method)
            assert len(consumed) < produced <= len(consumed) + MAX_AHEAD
            consumed += await _take(receiver, 40)
            assert consumed == [2 * i for i in range(60)]
            produced = await actor.ref.call("produced_when_idle", method)
            assert len(consumed) < produced <= len(consumed) + MAX_AHEAD
            await receiver.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_stream_consumer_close_stops_generator(placement: Placement) -> None:
    """Closing a stream early ends it for the consumer and finalises the actor's generator
    (its ``finally`` runs) before it produced more than one window."""
    async with running_actor(worker_spec(placement)) as actor:
        receiver = actor.ref.submit_stream("count_async", ("closed", 1000))
        assert await _take(receiver, 3) == [0, 2, 4]
        await receiver.aclose()
        with pytest.raises(actors.CallCancelledError):
            await receiver.__anext__()
        assert await actor.ref.call("wait_closed_streams") == ["closed"]
        assert await actor.ref.call("get_produced", "closed") <= 3 + MAX_AHEAD


async def test_call_generator_called_plainly_or_plain_method_streamed_is_an_error() -> None:
    """Calling a generator as a plain call, or a plain method as a stream, fails that call
    with a TypeError that says so; an unknown or private method is an AttributeError."""
    async with running_actor(worker_spec("inline")) as actor:
        with pytest.raises(TypeError, match="stream"):
            await actor.ref.call("count_async", "x", 3)
        with pytest.raises(TypeError, match="not a generator"):
            await _take(actor.ref.submit_stream("echo", (1,)), 1)
        with pytest.raises(AttributeError, match="no_such_method"):
            await actor.ref.call("no_such_method")
        with pytest.raises(AttributeError, match="_record"):
            await actor.ref.call("_record", [], "private")
        assert await actor.ref.call("echo", "ok") == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_sync_method_runs_on_worker_thread(placement: Placement) -> None:
    """A plain ``def`` method runs on a worker thread: while it blocks, async methods still
    answer."""
    async with running_actor(worker_spec(placement)) as actor:
        blocked = actor.ref.submit("block_until_released")
        with trio.fail_after(5):
            assert await actor.ref.call("wait_entered")
            assert await actor.ref.call("echo", "responsive") == "responsive"
        assert not blocked.done()
        await actor.ref.call("release")
        with trio.fail_after(5):
            assert await blocked == (True, True)


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_beyond_max_ongoing_is_rejected_and_never_runs(placement: Placement) -> None:
    """With max_ongoing=N, call N+1 is refused with RejectedError and never runs; once the
    actor has room again it takes calls."""
    async with running_actor(worker_spec(placement, max_ongoing=2)) as actor:
        first = actor.ref.submit("hang", ("first",))
        second = actor.ref.submit("hang", ("second",))
        with trio.fail_after(5), pytest.raises(actors.RejectedError) as info:
            await actor.ref.submit("hang", ("third",))
        assert "max_ongoing=2" in str(info.value)
        assert info.value.actor == actor.name
        first.cancel()
        second.cancel()
        started = await call_when_admitted(actor.ref, "wait_started", 2)
        assert sorted(started) == ["first", "second"]
        assert await actor.ref.call("get_started_keys") == started


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_call_cancelled_call_frees_its_slot_at_once(placement: Placement) -> None:
    """A call sent right after cancelling another is admitted, even at max_ongoing."""
    async with running_actor(worker_spec(placement, max_ongoing=1)) as actor:
        held = actor.ref.submit("hang", ("held",))
        with pytest.raises(actors.RejectedError):
            await actor.ref.call("echo", "while full")
        held.cancel()
        assert await actor.ref.call("wait_cancelled") == ["held"]


async def test_call_inline_arguments_are_passed_by_reference() -> None:
    """An inline actor receives the caller's very objects (no serialisation)."""
    payload = {"shared": [1, 2]}
    async with running_actor(worker_spec("inline")) as actor:
        assert await actor.ref.call("echo", payload) is payload
