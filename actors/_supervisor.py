"""Supervisors: own actors, restart them by strategy, give up past the restart intensity."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from ._groups import unwrap_lone_error
from ._process import ActorSystem
from ._restart import (
    RESTART_TYPES,
    STRATEGIES,
    RestartIntensity,
    RestartType,
    Strategy,
    backoff_delay,
    restart_group,
    should_restart,
)
from ._spec import Actor, ActorSpec
from .exceptions import SpawnError, SupervisorGaveUpError


def _check_restart(_inst: object, _attr: object, value: str) -> None:
    if value not in RESTART_TYPES:
        raise ValueError(f"restart must be one of {RESTART_TYPES}, got {value!r}")


@attrs.frozen(kw_only=True)
class ChildSpec:
    """A supervised child: its id (unique in the supervisor), how to build it, and when to
    restart it (``permanent``: always, ``transient``: after abnormal exits, ``temporary``:
    never)."""

    id: str
    actor: ActorSpec
    restart: RestartType = attrs.field(default="permanent", validator=_check_restart)


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    actor: Actor | None = None
    scope: trio.CancelScope | None = None
    generation: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)


ChangeCallback = Callable[[str, Actor | None], None]


class Supervisor:
    """Owns children and restarts them by ``strategy``.

    Tasks: one per child plus the decision loop, all in the nursery of
    :func:`open_supervisor`. Past ``max_restarts`` in ``period_s`` the supervisor stops every
    child and raises :class:`SupervisorGaveUpError` out of its ``async with`` block.
    ``on_change(child_id, actor_or_None)`` is called whenever a child starts or goes away,
    ``on_restart_failed(child_id, error)`` whenever restarting a child fails (it is tried
    again, within the restart intensity).
    """

    def __init__(
        self,
        system: ActorSystem,
        nursery: trio.Nursery,
        *,
        strategy: Strategy,
        max_restarts: int,
        period_s: float,
        rng: random.Random,
        on_change: ChangeCallback | None,
        backoff_base_s: float,
        on_restart_failed: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.system = system
        self.strategy = strategy
        self.intensity = RestartIntensity(max_restarts, period_s)
        self._nursery = nursery
        self._rng = rng
        self._on_change = on_change
        self._on_restart_failed = on_restart_failed
        self._backoff_base_s = backoff_base_s
        self._children: dict[str, _Child] = {}
        self._exits_send, self._exits = trio.open_memory_channel[tuple[str, int, bool, str]](1000)
        self.restarts = 0

    # -- queries

    def actor(self, child_id: str) -> Actor | None:
        """The running actor of child ``child_id``; None while it is (re)starting, or if
        there is no such child."""
        child = self._children.get(child_id)
        return child.actor if child is not None else None

    @property
    def children(self) -> dict[str, Actor | None]:
        """Every supervised child by id, with its running actor (None while it restarts)."""
        return {cid: child.actor for cid, child in self._children.items()}

    # -- starting and stopping children

    async def start_child(self, spec: ChildSpec) -> Actor:
        """Start a child and return it once it takes calls; a failed start raises."""
        if spec.id in self._children:
            raise ValueError(f"child id {spec.id!r} is already in use")
        child = _Child(spec=spec)
        self._children[spec.id] = child
        try:
            return await self._start(child)
        except BaseException:  # why: a child that never started is not supervised; re-raised
            self._children.pop(spec.id, None)
            raise

    async def _start(self, child: _Child) -> Actor:
        child.generation += 1
        child.done = trio.Event()
        # the scope exists before the task does, so a stop that comes while the child is
        # starting cancels this start and not a finished one
        scope = child.scope = trio.CancelScope()
        actor: Actor | None = await self._nursery.start(
            self._run_child, child, child.generation, scope
        )
        if actor is None:
            raise SpawnError(f"child {child.spec.id!r} was stopped while starting")
        return actor

    async def _run_child(
        self,
        child: _Child,
        generation: int,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[Actor | None],
    ) -> None:
        normal, reason = False, "cancelled"
        started = False

        def on_started(actor: Actor | None = None) -> None:
            nonlocal started
            started = True
            assert actor is not None
            child.actor = actor
            task_status.started(actor)
            if self._on_change is not None:
                self._on_change(child.spec.id, actor)

        status = _StartedHook(on_started)
        try:
            with scope:
                code = await self.system.run_actor(child.spec.actor, task_status=status)
                normal, reason = code in (0, None), f"exited with code {code}"
        except Exception as exc:
            if not started:
                raise
            normal, reason = False, f"failed: {exc!r}"
        finally:
            was = child.actor
            child.actor = None
            child.done.set()
            if was is not None and self._on_change is not None:
                self._on_change(child.spec.id, None)
        if not started:
            task_status.started(None)  # stopped while starting: _start raises for it
            return
        if not scope.cancelled_caught:
            self._exits_send.send_nowait((child.spec.id, generation, normal, reason))

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child and forget it (it is not restarted)."""
        child = self._children.pop(child_id, None)
        if child is not None:
            await self._stop(child)

    async def stop_child_gracefully(self, child_id: str) -> None:
        """Ask a child to drain and exit, and forget it (it is not restarted). A child that
        is (re)starting has nothing to drain: its start is cancelled."""
        child = self._children.pop(child_id, None)
        if child is None:
            return
        if child.actor is not None:
            child.actor.request_stop()
        elif child.scope is not None:
            child.scope.cancel()
        await child.done.wait()

    @staticmethod
    async def _stop(child: _Child) -> None:
        if child.scope is not None:
            child.scope.cancel()
        await child.done.wait()

    # -- the decision loop

    async def _decide_loop(self) -> None:
        async for child_id, generation, normal, reason in self._exits:
            child = self._children.get(child_id)
            if child is None or child.generation != generation:
                continue
            if not should_restart(child.spec.restart, normal_exit=normal):
                self._children.pop(child_id, None)
                continue
            now = trio.current_time()
            if not self.intensity.record(now):
                raise SupervisorGaveUpError(
                    f"child {child_id!r} {reason}; more than {self.intensity.max_restarts} "
                    f"restarts in {self.intensity.period_s}s, supervisor gave up",
                    child=child_id,
                    restarts=self.intensity.max_restarts,
                    period_s=self.intensity.period_s,
                )
            order = list(self._children)
            group = restart_group(self.strategy, order, child_id)
            for other in reversed(group):
                if other != child_id:
                    await self._stop(self._children[other])
            await trio.sleep(
                backoff_delay(self.intensity.recent(now), self._rng, base_s=self._backoff_base_s)
            )
            for cid in group:
                victim = self._children.get(cid)
                if victim is not None:
                    self.restarts += 1
                    try:
                        await self._start(victim)
                    except Exception as exc:
                        if self._on_restart_failed is not None:
                            self._on_restart_failed(cid, exc)
                        self._exits_send.send_nowait(
                            (cid, victim.generation, False, f"failed to restart: {exc!r}")
                        )


class _StartedHook:
    """A ``task_status`` that also runs a callback when the child reports it started."""

    def __init__(self, callback: Callable[[Actor | None], None]) -> None:
        self._callback = callback

    def started(self, value: Actor | None = None) -> None:
        self._callback(value)


@asynccontextmanager
async def open_supervisor(
    system: ActorSystem,
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    period_s: float = 5.0,
    rng: random.Random | None = None,
    on_change: ChangeCallback | None = None,
    backoff_base_s: float = 0.05,
    on_restart_failed: Callable[[str, BaseException], None] | None = None,
) -> AsyncIterator[Supervisor]:
    """``async with open_supervisor(system) as sup:`` then ``await sup.start_child(spec)``.

    Tasks: the decision loop and one task per child, in this block's nursery. Leaving the
    block stops every child. If the supervisor gives up, :class:`SupervisorGaveUpError`
    is raised out of the block (unwrapped: it is the only error the block can end with
    besides the body's own).
    """
    with unwrap_lone_error():
        async with trio.open_nursery() as nursery:
            sup = Supervisor(
                system,
                nursery,
                strategy=strategy,
                max_restarts=max_restarts,
                period_s=period_s,
                rng=rng or random.Random(),
                on_change=on_change,
                backoff_base_s=backoff_base_s,
                on_restart_failed=on_restart_failed,
            )
            nursery.start_soon(sup._decide_loop)
            try:
                yield sup
            finally:
                nursery.cancel_scope.cancel()
