"""The router: one per (process, deployment); the client-side load balancer of handles.

It keeps the deployment's replicas (pushed by the controller), picks one per request on its
own in-flight counts (packing onto replicas that hold work up to a threshold it measures,
power of two choices beyond: see ``balance``), never sends a replica more than
``max_ongoing_requests``, and queues requests while every replica is full. A replica that
refuses a request (at capacity because of other routers) gets it back into the queue's
front; a replica that dies fails the requests it had read with ``ReplicaDiedError``, and
the ones it had not read yet (they never ran: see ``actors.CallNotDeliveredError``) go back
to the queue's front for the other replicas. Everything here is synchronous and
callback-driven, so a request costs no task of its own.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from actors import (
    ActorDiedError,
    ActorRef,
    CallCancelledError,
    CallNotDeliveredError,
    DeadlineExceededError,
    MessageTooLargeError,
    RejectedError,
)

from .._metrics import Histogram
from ..exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaDiedError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from .balance import PackingThreshold, pick_replica, pick_replica_for_model
from .messages import MODEL_SEP
from .response import DeploymentResponse, _Request

REJECT_BACKOFF_S = 0.002
#: how long a model sent to a replica counts as held there without a report saying so
MODEL_REPORT_GRACE_S = 2.0


@attrs.define(eq=False)
class ReplicaSlot:
    replica_id: str
    ref: ActorRef
    in_flight: int = 0
    blocked_until: float = 0.0
    #: the router's count of finished requests when one last finished here
    last_done: int = 0
    #: multiplexed model ids the replica holds (reported, or sent there from here)
    models: set[str] = attrs.field(factory=set)
    #: models sent there from here lately, by when: kept until a report lists them (or
    #: a while has passed), so a report that lags behind does not undo them
    sent: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class RouterStats:
    """What one router holds for its deployment right now."""

    queued: int
    resolving: int
    in_flight: dict[str, int]

    @property
    def load(self) -> int:
        """Queued, waiting for chained arguments, or in flight: what autoscaling counts."""
        return self.queued + self.resolving + sum(self.in_flight.values())


class Router:
    """Routes requests for one deployment from this process.

    Tasks: none per request. A short timer task (in ``nursery``) retries the queue after a
    replica refused a request.
    """

    def __init__(
        self,
        name: str,
        *,
        nursery: trio.Nursery,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._nursery = nursery
        self._rng = rng or random.Random()
        self._slots: list[ReplicaSlot] = []
        self._queue: collections.deque[_Request] = collections.deque()
        self.resolving = 0
        self.max_ongoing = 1
        self.max_queued = -1
        self.unavailable: str | None = None
        self._retry_scheduled = False
        #: requests, errors and requests at replicas now, by source ("handle" or "http"),
        #: and latency by source
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.ongoing: dict[str, int] = {}
        self.latency = Histogram("latency", "")
        #: called when a request is queued while the deployment has no replica at all
        self.on_pressure: Callable[[], None] | None = None
        #: how many requests a replica with work takes before an idle one is woken, tuned
        #: on the unary requests that finish
        self.packing = PackingThreshold()
        #: requests finished here so far (``ReplicaSlot.last_done`` is a value of it)
        self._done = 0

    # -- membership (pushed by the controller)

    def update(
        self,
        replicas: dict[str, ActorRef],
        *,
        max_ongoing: int,
        max_queued: int,
    ) -> None:
        """Replace the replica set; slots of replicas that stay keep their counts."""
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.unavailable = None
        old = {s.replica_id: s for s in self._slots}
        slots = []
        for rid, ref in replicas.items():
            slot = old.get(rid)
            if slot is None or slot.ref is not ref:
                slot = ReplicaSlot(rid, ref)
            slots.append(slot)
        self._slots = slots
        self._drain()

    def mark_unavailable(self, reason: str) -> None:
        """The deployment is gone: fail everything queued, and what comes later."""
        self.unavailable = reason
        self._slots = []
        queue, self._queue = self._queue, collections.deque()
        for req in queue:
            req.fail(DeploymentUnavailableError(reason, deployment=self.name))

    @property
    def replica_ids(self) -> list[str]:
        return [s.replica_id for s in self._slots]

    def queued_by_source(self, source: str) -> int:
        return sum(1 for r in self._queue if r.source == source and not r.done())

    def stats(self) -> RouterStats:
        return RouterStats(
            queued=sum(1 for r in self._queue if not r.done()),
            resolving=self.resolving,
            in_flight={s.replica_id: s.in_flight for s in self._slots},
        )

    # -- requests

    def submit(self, req: _Request) -> None:
        """Take a new request: resolve chained arguments, then assign or queue it."""
        source = req.source
        self.requests[source] = self.requests.get(source, 0) + 1
        req.submitted_at = trio.current_time()
        if self.unavailable is not None:
            self._count_error(req)
            req.fail(DeploymentUnavailableError(self.unavailable, deployment=self.name))
            return
        upstream = req.pending_upstream()
        if upstream is None:
            self._enqueue(req)
            return
        if not upstream:  # every response it holds has its value already
            error = req.substitute()
            if error is not None:
                self._count_error(req)
                req.fail(error)
            else:
                self._enqueue(req)
            return
        if self._queue_full():  # waiting for its arguments is waiting too
            self._count_error(req)
            req.fail(BackPressureError(self.name, self._waiting(), self.max_queued))
            return
        self.resolving += 1
        remaining = [len(upstream)]

        def on_upstream_done() -> None:
            remaining[0] -= 1
            if remaining[0]:
                return
            self.resolving -= 1
            if req.done():
                return
            error = req.substitute()
            if error is not None:
                req.fail(error)
            else:
                self._enqueue(req, admitted=True)

        for resp in upstream:
            resp.on_value(on_upstream_done)

    def _enqueue(self, req: _Request, *, admitted: bool = False) -> None:
        """Assign ``req`` or queue it; a new request (not ``admitted`` while its arguments
        resolved) is refused when ``max_queued`` requests wait already."""
        if not self._queue and self._assign(req):
            return
        if not admitted and self._queue_full():
            self._count_error(req)
            req.fail(BackPressureError(self.name, self._waiting(), self.max_queued))
            return
        self._queue.append(req)
        if not self._slots and self.on_pressure is not None:
            self.on_pressure()

    def _waiting(self) -> int:
        """Requests waiting here: queued for a replica, or for their chained arguments."""
        return len(self._queue) + self.resolving

    def _queue_full(self) -> bool:
        if self.max_queued == -1 or self._waiting() < self.max_queued:
            return False
        self._queue = collections.deque(r for r in self._queue if not r.done())
        return self._waiting() >= self.max_queued

    def _pick(self, model_id: str = "") -> ReplicaSlot | None:
        slots = self._slots
        if not slots:
            return None
        now = trio.current_time() if any(s.blocked_until for s in slots) else 0.0
        blocked = [s.blocked_until > now for s in slots] if now else ()
        loads = [s.in_flight for s in slots]
        if model_id:
            holds = [model_id in s.models for s in slots]
            held = [len(s.models) for s in slots]
            index = pick_replica_for_model(loads, self.max_ongoing, self._rng, holds, blocked, held)
        else:
            index = pick_replica(
                loads,
                self.max_ongoing,
                self._rng,
                blocked,
                pack_below=self.packing.value,
                recency=lambda i: slots[i].last_done,
            )
        return None if index is None else slots[index]

    def update_models(self, models: dict[str, list[str]]) -> None:
        """The model ids each replica reported holding (model-aware routing)."""
        now = trio.current_time()
        for slot in self._slots:
            if slot.replica_id in models:
                reported = set(models[slot.replica_id])
                slot.sent = {
                    m: t
                    for m, t in slot.sent.items()
                    if m not in reported and now - t < MODEL_REPORT_GRACE_S
                }
                slot.models = reported | set(slot.sent)

    def _assign(self, req: _Request) -> bool:
        model_id = req.multiplexed_model_id
        method = f"{req.method}{MODEL_SEP}{model_id}" if model_id else req.method
        while True:
            slot = self._pick(model_id)
            if slot is None:
                return False
            inner = req.start_call(slot.ref, method)
            if model_id and model_id not in slot.models:
                slot.models.add(model_id)  # it will hold it: send the next ones there too
                slot.sent[model_id] = trio.current_time()
            if inner.done() and isinstance(inner.exception(), ActorDiedError):
                # never left this process: drop the replica and try another
                self._slots = [s for s in self._slots if s is not slot]
                continue
            slot.in_flight += 1
            self.ongoing[req.source] = self.ongoing.get(req.source, 0) + 1
            req.assigned(slot.replica_id, inner)
            sent = (self.packing.epoch, trio.current_time(), slot.in_flight)
            inner.add_done_callback(partial(self._on_done, slot, req, sent))
            return True

    def _count_error(self, req: _Request) -> None:
        self.errors[req.source] = self.errors.get(req.source, 0) + 1

    def _on_done(
        self, slot: ReplicaSlot, req: _Request, sent: tuple[int, float, int], inner: Any
    ) -> None:
        slot.in_flight -= 1
        self._done += 1
        slot.last_done = self._done
        self.ongoing[req.source] -= 1
        error = inner.exception()
        if type(error) is RejectedError and not req.done():
            slot.blocked_until = trio.current_time() + REJECT_BACKOFF_S
            req.requeued()
            self._queue.appendleft(req)
            self._schedule_retry()
            return
        if type(error) is CallNotDeliveredError and not req.done():
            # the replica died before reading it: it never ran, another replica takes it
            self._slots = [s for s in self._slots if s is not slot]
            req.requeued()
            self._queue.appendleft(req)
            self._drain()
            return
        now = trio.current_time()
        self.latency.observe((("source", req.source),), now - req.submitted_at)
        if error is None and type(req) is DeploymentResponse and not req.multiplexed_model_id:
            epoch, sent_at, load = sent  # a unary call: how long it took says how packing does
            self.packing.observe(epoch, now - sent_at, load)
        if error is not None:
            self._count_error(req)
        translated = self._translate(slot, error) if error is not None else None
        if translated is not None:
            req.fail(translated)
        else:
            req.settle(inner)
        self._drain()

    def _translate(self, slot: ReplicaSlot, error: BaseException) -> BaseException | None:
        """The serve error a runtime error of a call becomes (None: the user's own error,
        which the request ends with as it is). The one seam where actors' errors become
        trioserve's, for unary and streaming requests alike."""
        if isinstance(error, ActorDiedError):
            return ReplicaDiedError(
                f"replica {slot.replica_id} of {self.name} died while handling the "
                f"request: {error}",
                deployment=self.name,
                replica_id=slot.replica_id,
            )
        if isinstance(error, CallCancelledError):
            return RequestCancelledError(str(error))
        if isinstance(error, DeadlineExceededError):
            return RequestTimeoutError(f"{self.name}: {error}")
        if isinstance(error, MessageTooLargeError):
            too_large = RequestTooLargeError(
                f"{self.name}: a message of {error.size} bytes is over the limit of "
                f"{error.limit}; send less, or raise the deployment's max_message_size option",
                deployment=self.name,
                size=error.size,
                limit=error.limit,
            )
            too_large.__cause__ = error
            return too_large
        return None

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            req = queue[0]
            if req.done():
                queue.popleft()
                continue
            if not self._assign(req):
                return
            queue.popleft()

    def _schedule_retry(self) -> None:
        if self._retry_scheduled:
            return
        self._retry_scheduled = True

        async def retry() -> None:
            await trio.sleep(REJECT_BACKOFF_S)
            self._retry_scheduled = False
            self._drain()

        self._nursery.start_soon(retry)
