"""Routing: load balancing, max_ongoing_requests, queueing and backpressure.

The first tests run real replica processes; the ``test_router_*`` ones drive the router with
fake replicas (futures the test resolves by hand) on Trio's autojump clock.
"""

from __future__ import annotations

import collections
import os
import random
from typing import Any

import pytest
import trio

import trioserve as serve
from actors import ActorDiedError, CallCancelledError, CallFuture, RejectedError
from trioserve._handles.balance import PackingThreshold
from trioserve._handles.response import DeploymentResponse
from trioserve._handles.router import Router

from .. import serve_fixtures as fx

# -- real replica processes


@pytest.mark.slow
async def test_routing_balances_over_process_replicas() -> None:
    """300 concurrent requests spread over 3 replica processes, none of them the caller.
    Each takes 10 ms of simulated work, so a replica's share depends on the balancing, not
    on how much CPU its process happened to get."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Pid.options(num_replicas=3).bind(), name="pids")
        pids = await serve.get_async([handle.held.remote(0.01) for _ in range(300)])
        status = await instance.status()
    counts = collections.Counter(pids)
    assert len(counts) == 3
    assert os.getpid() not in counts
    replicas = status.applications["pids"].deployments["Pid"].replicas
    assert set(counts) == {r.pid for r in replicas}
    assert min(counts.values()) >= 30, counts  # each replica gets a real share


@pytest.mark.slow
async def test_routing_never_exceeds_max_ongoing_requests() -> None:
    """Under 10x oversubscription no replica ever runs more than max_ongoing_requests."""
    dep = fx.Concurrency.options(num_replicas=2, max_ongoing_requests=2)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(), name="limits")
        results = await serve.get_async([handle.remote(i) for i in range(40)])
    max_by_replica: dict[tuple[int, int], int] = {}
    for pid, obj, seen in results:
        max_by_replica[(pid, obj)] = max(max_by_replica.get((pid, obj), 0), seen)
    assert len(max_by_replica) == 2
    # the limit is reached (the load was real) and never passed
    assert list(max_by_replica.values()) == [2, 2]


@pytest.mark.slow
async def test_routing_backpressure_beyond_max_queued_requests() -> None:
    """Past max_queued_requests, requests fail with BackPressureError; queued ones run."""
    dep = fx.Gate.options(max_ongoing_requests=1, max_queued_requests=2)
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(dep.bind(), name="bp")
        busy = handle.block.remote()
        queued = [handle.ping.remote(1), handle.ping.remote(2)]
        refused = [handle.ping.remote(3), handle.ping.remote(4)]
        for response in refused:
            assert response.done()
            with pytest.raises(serve.BackPressureError) as info:
                await response
            assert isinstance(info.value, serve.ServeError)
            assert (info.value.deployment, info.value.num_queued) == ("Gate", 2)
            assert info.value.max_queued == 2
            assert "max_queued_requests=2" in str(info.value)
        assert not any(r.done() for r in queued)
        busy.cancel()  # frees the only slot
        with trio.fail_after(10):
            assert await serve.get_async(queued) == [1, 2]
        with pytest.raises(serve.RequestCancelledError):
            await busy


# -- the router with fake replicas


class FakeReplica:
    """An ``ActorRef`` whose calls the test answers by hand."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reachable = True
        self.calls: list[tuple[str, tuple[Any, ...], CallFuture]] = []
        self.cancelled: list[tuple[Any, ...]] = []
        self._arrived = trio.Event()

    @property
    def alive(self) -> bool:
        return self.reachable

    def submit(
        self,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> CallFuture:
        if not self.reachable:
            fut = CallFuture()
            fut.set_error(ActorDiedError(f"{self.name} is unreachable"))
            return fut
        fut = CallFuture(canceller=lambda: self.cancelled.append(args), label=method)
        self.calls.append((method, args, fut))
        self._arrived.set()
        self._arrived = trio.Event()
        return fut

    def submit_stream(self, *_a: Any, **_k: Any) -> Any:
        raise NotImplementedError

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.submit(method, args, kwargs)

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            await self._arrived.wait()

    @property
    def args(self) -> list[Any]:
        return [args[0] for _, args, _ in self.calls]

    def pending(self) -> list[CallFuture]:
        return [fut for _, _, fut in self.calls if not fut.done()]


def _router(
    nursery: trio.Nursery, replicas: dict[str, FakeReplica], max_ongoing: int, max_queued: int = -1
) -> Router:
    router = Router("Fake", nursery=nursery, rng=random.Random(0))
    router.update(dict(replicas), max_ongoing=max_ongoing, max_queued=max_queued)  # type: ignore[arg-type]
    return router


def _send(router: Router, *args: Any) -> DeploymentResponse:
    response = DeploymentResponse(router, "__call__", args, {})
    router.submit(response)
    return response


@pytest.mark.autojump
async def test_router_sends_at_most_max_ongoing_and_queues_in_order() -> None:
    """A replica never gets more than max_ongoing requests; the rest wait, first in first out."""
    a, b = FakeReplica("a"), FakeReplica("b")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a, "b": b}, max_ongoing=2)
        responses = [_send(router, i) for i in range(7)]
        assert len(a.calls) == len(b.calls) == 2
        assert router.stats().queued == 3
        assert sorted(a.args + b.args) == [0, 1, 2, 3]
        first = a.calls[0]
        first[2].set_result("done")
        assert a.args[-1] == 4  # the oldest queued request took the freed slot
        assert await responses[first[1][0]] == "done"
        assert router.stats().in_flight == {"a": 2, "b": 2}
        assert router.stats().queued == 2


@pytest.mark.autojump
async def test_router_rejected_request_is_retried() -> None:
    """A request a replica refuses (at capacity) is queued again and retried, not failed."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=4)
        response = _send(router, "x")
        a.calls[0][2].set_error(RejectedError("a is at max_ongoing=1"))
        assert not response.done()
        await a.wait_calls(2)  # retried after a short backoff
        assert a.args == ["x", "x"]
        a.calls[1][2].set_result(42)
        assert await response == 42


@pytest.mark.autojump
async def test_router_replica_death_fails_accepted_request() -> None:
    """A request whose replica dies fails at once with ReplicaDiedError naming the replica."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a#1": a}, max_ongoing=2)
        response = _send(router, 1)
        a.calls[0][2].set_error(ActorDiedError("connection lost"))
        with pytest.raises(serve.ReplicaDiedError) as info:
            await response
        assert info.value.deployment == "Fake"
        assert info.value.replica_id == "a#1"
        assert "connection lost" in str(info.value)


@pytest.mark.autojump
async def test_router_unreachable_replica_is_skipped() -> None:
    """A replica found unreachable when sending is dropped; the request waits for another."""
    a, b = FakeReplica("a"), FakeReplica("b")
    a.reachable = False
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"b": b}, max_ongoing=1)
        _send(router, 1)
        router.update({"a": a, "b": b}, max_ongoing=1, max_queued=-1)  # type: ignore[dict-item]
        response = _send(router, 2)  # only a has room, and a is gone
        assert router.replica_ids == ["b"]
        assert not response.done()
        b.calls[0][2].set_result(None)
        assert b.args == [1, 2]
        b.calls[1][2].set_result("from b")
        assert await response == "from b"


@pytest.mark.autojump
async def test_router_cancel_reaches_replica_and_drops_queued() -> None:
    """Cancelling a running request cancels its call; a cancelled queued one is never sent."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=1)
        running, queued, last = _send(router, 1), _send(router, 2), _send(router, 3)
        queued.cancel()
        running.cancel()
        assert a.cancelled == [(1,)]
        for response in (running, queued):
            with pytest.raises(serve.RequestCancelledError):
                await response
        assert a.args == [1, 3]  # 2 was skipped
        a.calls[1][2].set_result("three")
        assert await last == "three"


@pytest.mark.autojump
async def test_router_replica_side_cancellation_is_request_cancelled() -> None:
    """A call the replica reports as cancelled surfaces as RequestCancelledError."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=1)
        response = _send(router, 1)
        a.calls[0][2].set_error(CallCancelledError("replica stopping"))
        with pytest.raises(serve.RequestCancelledError):
            await response


@pytest.mark.autojump
async def test_router_backpressure_counts_queue() -> None:
    """Past max_queued_requests waiting requests, new ones fail with BackPressureError."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=1, max_queued=1)
        _send(router, 1)
        waiting = _send(router, 2)
        refused = _send(router, 3)
        with pytest.raises(serve.BackPressureError) as info:
            await refused
        assert (info.value.num_queued, info.value.max_queued) == (1, 1)
        waiting.cancel()  # a cancelled request frees its place in the queue
        again = _send(router, 4)
        assert not again.done()
        a.calls[0][2].set_result(None)
        assert a.args == [1, 4]


@pytest.mark.autojump
async def test_router_unavailable_fails_queued_and_new_requests() -> None:
    """A deployment that goes away fails queued and new requests, none wait forever."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=1)
        _send(router, 1)
        queued = _send(router, 2)
        router.mark_unavailable("application deleted")
        with pytest.raises(serve.DeploymentUnavailableError, match="application deleted"):
            await queued
        with pytest.raises(serve.DeploymentUnavailableError) as info:
            await _send(router, 3)
        assert info.value.deployment == "Fake"


@pytest.mark.autojump
async def test_router_membership_update_keeps_in_flight_counts() -> None:
    """A membership push that keeps a replica keeps its in-flight count (no overload)."""
    a, b = FakeReplica("a"), FakeReplica("b")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=1)
        _send(router, 1)
        queued = _send(router, 2)
        router.update({"a": a, "b": b}, max_ongoing=1, max_queued=-1)  # type: ignore[dict-item]
        assert router.stats().in_flight == {"a": 1, "b": 1}
        assert a.args == [1]
        assert b.args == [2]
        b.calls[0][2].set_result("b")
        assert await queued == "b"


@pytest.mark.autojump
async def test_router_chained_request_waits_for_upstream() -> None:
    """A request holding an unfinished response is sent only once that has its value."""
    up, down = FakeReplica("up"), FakeReplica("down")
    async with trio.open_nursery() as nursery:
        up_router = _router(nursery, {"up": up}, max_ongoing=1)
        down_router = _router(nursery, {"down": down}, max_ongoing=1)
        upstream = _send(up_router, 1)
        chained = _send(down_router, upstream, [upstream], {"k": upstream})
        assert down.calls == []
        assert down_router.stats().resolving == 1
        up.calls[0][2].set_result(10)
        assert down.calls[0][1] == (10, [10], {"k": 10})
        assert down_router.stats().resolving == 0
        down.calls[0][2].set_result("ok")
        assert await chained == "ok"


@pytest.mark.autojump
async def test_router_backpressure_counts_requests_waiting_for_chained_arguments() -> None:
    """Requests waiting for their chained arguments count against max_queued_requests: a
    flood of chained calls is refused like any other, and admitted ones still run."""
    up, down = FakeReplica("up"), FakeReplica("down")
    async with trio.open_nursery() as nursery:
        up_router = _router(nursery, {"up": up}, max_ongoing=10)
        down_router = _router(nursery, {"down": down}, max_ongoing=1, max_queued=2)
        upstream = _send(up_router, 1)
        admitted = [_send(down_router, upstream, i) for i in range(2)]
        refused = _send(down_router, upstream, 2)
        with pytest.raises(serve.BackPressureError) as info:
            await refused
        assert (info.value.num_queued, info.value.max_queued) == (2, 2)
        up.calls[0][2].set_result(10)  # both admitted ones go on: one runs, one queues
        assert down.args == [10]
        assert down_router.stats().queued == 1
        for i in range(2):
            down.calls[i][2].set_result(i)
            await down.wait_calls(i + 1)
        assert await serve.get_async(admitted) == [0, 1]


@pytest.mark.autojump
async def test_router_chained_request_fails_with_upstream_error() -> None:
    """An upstream failure fails the chained request without sending it."""
    up, down = FakeReplica("up"), FakeReplica("down")
    async with trio.open_nursery() as nursery:
        up_router = _router(nursery, {"up": up}, max_ongoing=1)
        down_router = _router(nursery, {"down": down}, max_ongoing=1)
        upstream = _send(up_router, 1)
        chained = _send(down_router, {"nested": [upstream]})
        up.calls[0][2].set_error(fx.CustomError("upstream broke"))
        with pytest.raises(fx.CustomError, match="upstream broke"):
            await chained
        assert down.calls == []


# -- packing


@pytest.mark.autojump
async def test_router_spreads_until_packing_has_paid() -> None:
    """A new router spreads requests by power of two choices over idle replicas."""
    replicas = {name: FakeReplica(name) for name in "abc"}
    async with trio.open_nursery() as nursery:
        router = _router(nursery, replicas, max_ongoing=10)
        for i in range(6):
            _send(router, i)
        assert sorted(len(r.calls) for r in replicas.values()) == [2, 2, 2]


@pytest.mark.autojump
async def test_router_packs_up_to_its_threshold_then_wakes_the_warmest() -> None:
    """With a threshold of 3, a replica with work takes requests until it holds 3; the
    next goes to the idle replica that finished a request last."""
    a, b, c = FakeReplica("a"), FakeReplica("b"), FakeReplica("c")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a, "b": b, "c": c}, max_ongoing=10)
        _send(router, "first")
        (only,) = [r for r in (a, b, c) if r.calls]
        only.calls[0][2].set_result(None)  # it is idle again, and finished last
        router.packing = PackingThreshold(value=3, adopted=3)
        for i in range(4):
            _send(router, i)
        assert only.args[1:] == [0, 1, 2]
        assert sorted(len(r.calls) for r in (a, b, c)) == [0, 1, 4]


@pytest.mark.autojump
async def test_router_tunes_packing_on_finished_unary_requests() -> None:
    """Each request that finishes with a value counts for the threshold's epoch; one that
    fails does not."""
    a = FakeReplica("a")
    async with trio.open_nursery() as nursery:
        router = _router(nursery, {"a": a}, max_ongoing=10)
        router.packing = PackingThreshold(epoch_size=2)
        failed, first, second = _send(router, 1), _send(router, 2), _send(router, 3)
        a.calls[0][2].set_error(ValueError("user error"))
        a.calls[1][2].set_result("one")
        assert router.packing.epoch == 0
        a.calls[2][2].set_result("two")
        assert router.packing.epoch == 1
        with pytest.raises(ValueError, match="user error"):
            await failed
        assert [await first, await second] == ["one", "two"]
