"""The controller: applications, their deployments, and the replicas' membership.

It starts each deployment under its own supervisor, keeps every router's replica set up to
date (routers in this process directly, routers in replica processes through ``watch``
streams over its listener), and reports status. The data path never passes through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import trio

import actors

from ._config import DeploymentConfig
from ._deployment import Application, Deployment, replace_apps
from ._handle import DeploymentHandle
from ._replica import ENV_CONTROLLER, Replica, ReplicaInfo
from ._router import Router
from ._status import ApplicationStatus, DeploymentStatus, ReplicaStatus, ServeStatus
from .exceptions import DeploymentFailedError, DeploymentUnavailableError

REPLICA_MAX_RESTARTS = 10
REPLICA_RESTART_PERIOD_S = 10.0


@attrs.define(eq=False)
class DeploymentState:
    app: str
    name: str
    deployment: Deployment
    config: DeploymentConfig
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status: str = "UPDATING"
    message: str = ""
    target: int = 0
    replicas: dict[str, actors.Actor] = attrs.field(factory=dict)
    supervisor: actors.Supervisor | None = None
    scope: trio.CancelScope | None = None
    task_started: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    next_index: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.app, self.name)


@attrs.define(eq=False)
class AppState:
    name: str
    ingress: str
    route_prefix: str | None
    deployments: dict[str, DeploymentState]
    status: str = "DEPLOYING"
    message: str = ""


def _first_error(exc: BaseException) -> BaseException:
    """The most telling error inside (nested) exception groups: a spawn error's cause."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, actors.SpawnError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


class Controller:
    """Owns the deployments of one serve instance.

    Tasks: one per deployment (its supervisor and replicas) and the listener for replica
    processes, all in ``nursery``.
    """

    def __init__(self, system: actors.ActorSystem, nursery: trio.Nursery) -> None:
        self.system = system
        self._nursery = nursery
        self.apps: dict[str, AppState] = {}
        self._routers: dict[tuple[str, str], Router] = {}
        self._changed = trio.Event()
        self.address = ""

    async def serve_api(self, *, task_status: trio.TaskStatus[str]) -> None:
        """Host the controller's API for replica processes (membership watches)."""
        async with trio.open_nursery() as calls:
            host = actors.ActorHost(ControllerAPI(self), calls, name="controller")
            bound, port = await calls.start(
                lambda task_status: actors.serve_host(
                    host, token=self.system.token, task_status=task_status
                )
            )
            self.address = f"ws://{bound}:{port}"
            task_status.started(self.address)

    @property
    def routers(self) -> dict[tuple[str, str], Router]:
        return self._routers

    # -- membership

    def _find(self, key: tuple[str, str]) -> DeploymentState | None:
        app = self.apps.get(key[0])
        return app.deployments.get(key[1]) if app is not None else None

    def router(self, app: str, deployment: str) -> Router:
        key = (app, deployment)
        router = self._routers.get(key)
        if router is None:
            router = Router(deployment, nursery=self._nursery)
            self._routers[key] = router
            self._push(key)
        return router

    def _push(self, key: tuple[str, str]) -> None:
        router = self._routers.get(key)
        if router is None:
            return
        state = self._find(key)
        if state is None:
            router.mark_unavailable(
                f"no deployment {key[1]!r} in application {key[0]!r}; running: "
                f"{sorted(self.deployment_names())}"
            )
            return
        router.update(
            {rid: actor.ref for rid, actor in state.replicas.items()},
            max_ongoing=state.config.max_ongoing_requests,
            max_queued=state.config.max_queued_requests,
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def membership(self, key: tuple[str, str]) -> dict[str, Any]:
        state = self._find(key)
        if state is None:
            return {"error": f"no deployment {key[1]!r} in application {key[0]!r}"}
        return {
            "replicas": [[rid, actor.address] for rid, actor in state.replicas.items()],
            "max_ongoing": state.config.max_ongoing_requests,
            "max_queued": state.config.max_queued_requests,
        }

    async def watch(self, app: str, deployment: str) -> AsyncIterator[dict[str, Any]]:
        last: dict[str, Any] | None = None
        while True:
            changed = self._changed
            current = self.membership((app, deployment))
            if current != last:
                yield current
                last = current
            await changed.wait()

    def deployment_names(self) -> list[str]:
        return [f"{a.name}/{d}" for a in self.apps.values() for d in a.deployments]

    # -- deploying

    async def deploy(
        self, app: Application, name: str, route_prefix: str | None, *, force_inline: bool
    ) -> None:
        if name in self.apps:
            await self.delete(name)
        nodes = app.walk()
        for other in self.apps.values():
            if route_prefix is not None and other.route_prefix == route_prefix:
                raise ValueError(
                    f"route_prefix {route_prefix!r} is already used by application "
                    f"{other.name!r}; choose another or delete that application"
                )
        states: dict[str, DeploymentState] = {}
        for node in nodes:
            dep = node.deployment
            config = dep.config
            if force_inline:
                config = attrs.evolve(config, placement="inline")

            def to_handle(a: Application) -> DeploymentHandle:
                return DeploymentHandle(a.deployment.name, name)

            states[dep.name] = DeploymentState(
                app=name,
                name=dep.name,
                deployment=dep,
                config=config,
                args=replace_apps(node.args, to_handle),
                kwargs=replace_apps(node.kwargs, to_handle),
            )
        app_state = AppState(
            name=name, ingress=app.deployment.name, route_prefix=route_prefix, deployments=states
        )
        self.apps[name] = app_state
        for key in [s.key for s in states.values()]:
            self._push(key)
        self._notify()
        try:
            async with trio.open_nursery() as starting:
                for state in states.values():
                    starting.start_soon(self._nursery.start, self._run_deployment, state)
        except Exception as exc:
            cause = _first_error(exc)
            failed = next((s.name for s in states.values() if s.status == "DEPLOY_FAILED"), "?")
            app_state.status = "DEPLOY_FAILED"
            app_state.message = f"deployment {failed!r} failed to start: {cause!r}"
            await self._stop_deployments(app_state)
            raise DeploymentFailedError(app_state.message, deployment=failed) from cause
        app_state.status = "RUNNING"
        self._notify()

    async def _run_deployment(
        self, state: DeploymentState, *, task_status: trio.TaskStatus[None]
    ) -> None:
        state.task_started = True
        try:
            with trio.CancelScope() as scope:
                state.scope = scope
                async with actors.open_supervisor(
                    self.system,
                    max_restarts=REPLICA_MAX_RESTARTS,
                    period_s=REPLICA_RESTART_PERIOD_S,
                    on_change=partial(self._on_replica, state),
                ) as sup:
                    state.supervisor = sup
                    state.target = state.config.initial_replicas
                    try:
                        async with trio.open_nursery() as starting:
                            for _ in range(state.target):
                                starting.start_soon(self._add_replica, state)
                    except Exception as exc:
                        state.status = "DEPLOY_FAILED"
                        state.message = f"a replica failed to start: {_first_error(exc)!r}"
                        raise
                    state.status = "HEALTHY"
                    self._notify()
                    task_status.started()
                    await trio.sleep_forever()
        except actors.SupervisorGaveUpError as exc:
            state.status = "UNHEALTHY"
            state.message = str(exc)
        finally:
            state.replicas.clear()
            state.done.set()
            self._push(state.key)
            self._notify()

    async def _add_replica(self, state: DeploymentState) -> None:
        assert state.supervisor is not None
        state.next_index += 1
        replica_id = f"{state.name}#{state.next_index}"
        info = ReplicaInfo(app=state.app, deployment=state.name, replica_id=replica_id)
        dep = state.deployment
        spec = actors.ActorSpec(
            factory=Replica,
            args=(info, dep.target, state.args, state.kwargs, dep.is_function),
            kwargs={"user_config": state.config.user_config},
            name=replica_id,
            max_ongoing=state.config.max_ongoing_requests,
            placement=state.config.placement,
            grace_s=state.config.graceful_shutdown_timeout_s,
            env={ENV_CONTROLLER: self.address},
        )
        await state.supervisor.start_child(actors.ChildSpec(id=replica_id, actor=spec))

    def _on_replica(
        self, state: DeploymentState, replica_id: str, actor: actors.Actor | None
    ) -> None:
        if actor is not None:
            state.replicas[replica_id] = actor
        else:
            state.replicas.pop(replica_id, None)
        self._push(state.key)
        self._notify()

    # -- deleting

    async def delete(self, name: str) -> None:
        """Drain and stop an application's replicas, then forget it."""
        app = self.apps.get(name)
        if app is None:
            return
        app.status = "DELETING"
        await self._stop_deployments(app)
        del self.apps[name]
        for key in list(self._routers):
            if key[0] == name:
                self._push(key)
        self._notify()

    async def _stop_deployments(self, app: AppState) -> None:
        async with trio.open_nursery() as stopping:
            for state in app.deployments.values():
                stopping.start_soon(self._stop_deployment, state)

    async def _stop_deployment(self, state: DeploymentState) -> None:
        sup = state.supervisor
        if sup is not None:
            # leave every router first, then let in-flight requests finish
            replica_ids = list(state.replicas)
            state.replicas.clear()
            self._push(state.key)
            self._notify()
            async with trio.open_nursery() as draining:
                for rid in replica_ids:
                    draining.start_soon(sup.stop_child_gracefully, rid)
        if state.scope is not None:
            state.scope.cancel()
        if state.task_started:
            await state.done.wait()

    async def shutdown(self) -> None:
        for name in list(self.apps):
            await self.delete(name)

    # -- status

    def status(self) -> ServeStatus:
        apps = {}
        for app in self.apps.values():
            deployments = {}
            for state in app.deployments.values():
                replicas = [
                    ReplicaStatus(replica_id=rid, state="RUNNING", pid=actor.pid)
                    for rid, actor in state.replicas.items()
                ]
                deployments[state.name] = DeploymentStatus(
                    name=state.name,
                    status=state.status,
                    message=state.message,
                    target_replicas=state.target,
                    running_replicas=len(replicas),
                    replicas=replicas,
                )
            apps[app.name] = ApplicationStatus(
                name=app.name,
                status=app.status,
                message=app.message,
                route_prefix=app.route_prefix,
                ingress=app.ingress,
                deployments=deployments,
            )
        return ServeStatus(applications=apps)

    def app_ingress(self, name: str) -> str:
        app = self.apps.get(name)
        if app is None:
            raise DeploymentUnavailableError(
                f"no application named {name!r}; running: {sorted(self.apps)}"
            )
        return app.ingress

    def find_deployment_app(self, deployment: str) -> str:
        for app in self.apps.values():
            if deployment in app.deployments:
                return app.name
        raise DeploymentUnavailableError(
            f"no running deployment named {deployment!r}", deployment=deployment
        )


class ControllerAPI:
    """What replica processes may ask the controller (over its authenticated listener)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    async def watch(self, app: str, deployment: str) -> AsyncIterator[dict[str, Any]]:
        async for update in self._controller.watch(app, deployment):
            yield update
