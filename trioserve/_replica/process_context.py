"""A replica process's context: the routers of the handles its user code holds.

It subscribes to the controller for the membership of every deployment called from this
process (:class:`~trioserve._handles.messages.Membership` updates), keeps one connection per
downstream replica (closed as soon as that replica leaves every membership), and reports
the load its routers see (:class:`~trioserve._handles.messages.LoadReport`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import trio

import actors

from .._handles.messages import LoadReport, Membership, ModelReport
from .._handles.router import Router


class _Started:
    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


class ReplicaProcessContext:
    """Routers for the handles a replica process holds.

    Tasks (in a system nursery of this process's Trio run, as the context lives as long as
    the process): the controller connection, one membership watch per deployment called from
    here, and one connection per downstream replica.
    """

    def __init__(self, controller_address: str, token: str, *, app: str) -> None:
        self.trio_token = trio.lowlevel.current_trio_token()
        #: the application of the replica this process hosts
        self.app = app
        self._address = controller_address
        self._token = token
        self._routers: dict[tuple[str, str], Router] = {}
        self._latest: dict[tuple[str, str], Membership] = {}
        self._conns: dict[str, actors.RemoteRef] = {}
        self._connecting: set[str] = set()
        #: one cancel scope per downstream connection, cancelled when its replica leaves
        self._conn_scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._controller: actors.RemoteRef | None = None
        self._router_id = f"pid{os.getpid()}"

    async def start(self) -> None:
        ready = trio.Event()
        error: list[BaseException] = []

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._controller = await nursery.start(
                        lambda task_status: actors.connect(
                            self._address,
                            token=self._token,
                            name="controller",
                            task_status=task_status,
                        )
                    )
                    ready.set()
                    await trio.sleep_forever()
            except Exception as exc:  # why: reported to start(); a system task must not raise
                error.append(exc)
                ready.set()

        trio.lowlevel.spawn_system_task(run)
        await ready.wait()
        if error:
            raise error[0]

    def router(self, app: str, deployment: str) -> Router:
        key = (app, deployment)
        router = self._routers.get(key)
        if router is None:
            assert self._nursery is not None
            router = Router(deployment, nursery=self._nursery)
            router.on_pressure = lambda: self._report_soon(key, router)
            self._routers[key] = router
            self._nursery.start_soon(self._watch, key, router)
            self._nursery.start_soon(self._report_loop, key, router)
        return router

    # -- load reports, for autoscaling

    def _report_soon(self, key: tuple[str, str], router: Router) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._report, key, router)

    async def _report(self, key: tuple[str, str], router: Router) -> None:
        load = router.stats().load
        if self._controller is None or not self._controller.alive:
            return
        # an ActorError means the controller is gone; the watch ends this context's routers
        with trio.move_on_after(5), contextlib.suppress(actors.ActorError):
            report = LoadReport(app=key[0], deployment=key[1], router_id=self._router_id, load=load)
            await self._controller.call("report", report)

    async def _report_loop(self, key: tuple[str, str], router: Router) -> None:
        while True:
            latest = self._latest.get(key)
            interval = latest.report_interval_s if latest is not None else None
            await trio.sleep(interval or 1.0)
            if interval:
                await self._report(key, router)

    async def _watch(self, key: tuple[str, str], router: Router) -> None:
        assert self._controller is not None
        stream = self._controller.submit_stream("watch", key)
        try:
            async for update in stream:
                assert isinstance(update, Membership)
                if update.error is not None:
                    router.mark_unavailable(update.error)
                    self._latest.pop(key, None)
                    self._close_unused()
                    continue
                self._latest[key] = update
                self._apply(key, router)
                self._close_unused()
        except actors.ActorError:
            pass
        router.mark_unavailable("the serve instance is gone")

    def _apply(self, key: tuple[str, str], router: Router) -> None:
        update = self._latest.get(key)
        if update is None:
            return
        refs: dict[str, actors.ActorRef] = {}
        for replica_id, address in update.replicas:
            if address is None:
                router.mark_unavailable(
                    f"deployment {key[1]!r} runs inline in the serve process and cannot be "
                    "called from a replica process; give it placement='process'"
                )
                return
            ref = self._conns.get(address)
            if ref is not None and ref.alive:
                refs[replica_id] = ref
            elif address not in self._connecting:
                self._connecting.add(address)
                assert self._nursery is not None
                self._nursery.start_soon(self._connect, address, update.max_message_size)
        router.update(refs, max_ongoing=update.max_ongoing, max_queued=update.max_queued)
        router.update_models(update.models)

    async def app_ingress(self, name: str) -> str:
        """The ingress deployment of application ``name`` (asked of the controller)."""
        assert self._controller is not None
        ingress = await self._controller.call("app_ingress", name)
        assert isinstance(ingress, str)
        return ingress

    async def report_models(
        self, app: str, deployment: str, replica_id: str, model_ids: list[str]
    ) -> None:
        """Tell the controller which multiplexed models a replica of this process holds."""
        if self._controller is None or not self._controller.alive:
            return
        report = ModelReport(
            app=app, deployment=deployment, replica_id=replica_id, model_ids=model_ids
        )
        with trio.move_on_after(5), contextlib.suppress(actors.ActorError):
            await self._controller.call("report_models", report)

    def _close_unused(self) -> None:
        """Close the connections to replicas that no membership lists any more (a drained
        replica's socket is closed now, not at garbage collection)."""
        wanted = {address for m in self._latest.values() for _, address in m.replicas}
        for address, scope in list(self._conn_scopes.items()):
            if address not in wanted:
                scope.cancel()

    async def _connect(self, address: str, max_message_size: int) -> None:
        def on_connected(ref: actors.RemoteRef) -> None:
            self._conns[address] = ref
            self._connecting.discard(address)
            for key, router in self._routers.items():
                self._apply(key, router)

        scope = self._conn_scopes[address] = trio.CancelScope()
        try:
            with scope:
                await actors.connect(
                    address,
                    token=self._token,
                    name=address,
                    max_message_size=max_message_size,
                    task_status=_Started(on_connected),
                )
        except actors.ActorError:
            pass  # the replica went away before we reached it; membership will follow
        finally:
            self._connecting.discard(address)
            self._conns.pop(address, None)
            if self._conn_scopes.get(address) is scope:
                del self._conn_scopes[address]
