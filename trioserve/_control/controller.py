"""The controller: applications, their deployments' replica sets, and membership.

It keeps every router's replica set up to date (routers in this process directly, routers
in replica processes through ``watch`` streams over its listener), collects the load that
routers report for autoscaling, and reports status. The data path never passes through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import attrs
import trio

import actors
import actors.lowlevel

from .._config import DeploymentConfig
from .._deployment import Application, Deployment, replace_apps
from .._handles.handle import DeploymentHandle
from .._handles.messages import LoadReport, Membership, ModelReport
from .._handles.router import Router
from .._status import (
    ApplicationState,
    ApplicationStatus,
    DeploymentState,
    DeploymentStatus,
    ReplicaStatus,
    ServeStatus,
    application_transition,
)
from ..exceptions import DeploymentFailedError, DeploymentUnavailableError
from .replica_set import ReplicaSet, first_error
from .resources import Capacity, Ledger, detect_capacity

A = ApplicationState

REPORT_TTL_INTERVALS = 3


@attrs.define(eq=False)
class AppState:
    name: str
    ingress: str
    route_prefix: str | None
    deployments: dict[str, ReplicaSet]
    status: ApplicationState = attrs.field(
        default=ApplicationState.DEPLOYING, on_setattr=application_transition
    )
    message: str = ""


@attrs.frozen(kw_only=True)
class DeploymentPlan:
    """What one deployment of an application is to run: its definition, its options, and
    its constructor arguments (bound applications replaced by handles)."""

    deployment: Deployment
    config: DeploymentConfig
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def plan_deployments(
    nodes: list[Application], app_name: str, *, force_inline: bool = False
) -> dict[str, DeploymentPlan]:
    """The plan of every deployment in an application's graph (``nodes``), by name; pure."""

    def to_handle(a: Application) -> DeploymentHandle:
        return DeploymentHandle(a.deployment.name, app_name)

    plans = {}
    for node in nodes:
        config = node.deployment.config
        if force_inline:
            config = attrs.evolve(config, placement="inline")
        plans[node.deployment.name] = DeploymentPlan(
            deployment=node.deployment,
            config=config,
            args=tuple(replace_apps(node.args, to_handle)),
            kwargs=dict(replace_apps(node.kwargs, to_handle)),
        )
    return plans


class Controller:
    """Owns the applications of one serve instance.

    Tasks: one per deployment (its replica set) and the listener for replica processes,
    all in ``nursery``. That listener holds at most ``max_connections`` connections (one per
    replica process, and any unauthenticated peers).
    """

    def __init__(
        self,
        system: actors.ActorSystem,
        nursery: trio.Nursery,
        capacity: Capacity | None = None,
        *,
        max_connections: int,
    ) -> None:
        self.system = system
        self._max_connections = max_connections
        #: what this host offers, and what each replica holds of it
        self.ledger = Ledger(capacity or detect_capacity())
        self._capacity_freed = trio.Event()
        self._nursery = nursery
        self.apps: dict[str, AppState] = {}
        self._routers: dict[tuple[str, str], Router] = {}
        self._reports: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
        self._changed = trio.Event()
        self.address = ""

    async def serve_api(self, *, task_status: trio.TaskStatus[str]) -> None:
        """Host the controller's API for replica processes (membership, load reports)."""
        async with trio.open_nursery() as calls:
            host = actors.lowlevel.ActorHost(ControllerAPI(self), calls, name="controller")
            bound, port = await calls.start(
                lambda task_status: actors.lowlevel.serve_host(
                    host,
                    token=self.system.token,
                    max_connections=self._max_connections,
                    task_status=task_status,
                )
            )
            self.address = f"ws://{bound}:{port}"
            task_status.started(self.address)

    def capacity_freed(self) -> None:
        """Resources were given back: pending replicas try again."""
        self._capacity_freed.set()
        self._capacity_freed = trio.Event()

    async def wait_capacity_freed(self) -> None:
        await self._capacity_freed.wait()

    @property
    def routers(self) -> dict[tuple[str, str], Router]:
        return self._routers

    # -- membership

    def find(self, key: tuple[str, str]) -> ReplicaSet | None:
        app = self.apps.get(key[0])
        return app.deployments.get(key[1]) if app is not None else None

    def router(self, app: str, deployment: str) -> Router:
        key = (app, deployment)
        router = self._routers.get(key)
        if router is None:
            router = Router(deployment, nursery=self._nursery)
            router.on_pressure = lambda: self._poke(key)
            self._routers[key] = router
            self._push(key)
        return router

    def _poke(self, key: tuple[str, str]) -> None:
        replica_set = self.find(key)
        if replica_set is not None:
            replica_set.poke()

    def _push(self, key: tuple[str, str]) -> None:
        router = self._routers.get(key)
        if router is None:
            return
        replica_set = self.find(key)
        if replica_set is None:
            router.mark_unavailable(
                f"no deployment {key[1]!r} in application {key[0]!r}; running: "
                f"{sorted(self.deployment_names())}"
            )
            return
        reason = self._unavailable(replica_set)
        if reason is not None:
            router.mark_unavailable(reason)
            return
        router.update(
            {rid: actor.ref for rid, actor in replica_set.replicas.items()},
            max_ongoing=replica_set.config.max_ongoing_requests,
            max_queued=replica_set.config.max_queued_requests,
        )
        router.update_models(replica_set.live_models())

    def _unavailable(self, replica_set: ReplicaSet) -> str | None:
        """Why ``replica_set`` cannot serve at all, or None (requests may wait for it)."""
        app = self.apps.get(replica_set.app)
        if app is not None and app.status == A.DEPLOY_FAILED:
            return f"application {app.name!r} failed to deploy: {app.message}"
        return replica_set.unavailable

    def changed(self, replica_set: ReplicaSet) -> None:
        """A replica set's membership or status changed: tell routers and watchers."""
        self._push(replica_set.key)
        self._changed.set()
        self._changed = trio.Event()

    def membership(self, key: tuple[str, str]) -> Membership:
        replica_set = self.find(key)
        if replica_set is None:
            return Membership(error=f"no deployment {key[1]!r} in application {key[0]!r}")
        reason = self._unavailable(replica_set)
        if reason is not None:
            return Membership(error=reason)
        auto = replica_set.config.autoscaling_config
        return Membership(
            replicas=[(rid, actor.address) for rid, actor in replica_set.replicas.items()],
            max_ongoing=replica_set.config.max_ongoing_requests,
            max_queued=replica_set.config.max_queued_requests,
            report_interval_s=auto.metrics_interval_s if auto is not None else None,
            models=replica_set.live_models(),
            max_message_size=replica_set.config.max_message_size,
        )

    async def watch(self, app: str, deployment: str) -> AsyncIterator[Membership]:
        last: Membership | None = None
        while True:
            changed = self._changed
            current = self.membership((app, deployment))
            if current != last:
                yield current
                last = current
            await changed.wait()

    def report_models(self, report: ModelReport) -> None:
        """A replica's multiplexed models changed: every router learns where they are."""
        replica_set = self.find((report.app, report.deployment))
        if replica_set is not None and report.replica_id in replica_set.states:
            replica_set.models[report.replica_id] = list(report.model_ids)
            self.changed(replica_set)

    def deployment_names(self) -> list[str]:
        return [f"{a.name}/{d}" for a in self.apps.values() for d in a.deployments]

    # -- load, for autoscaling

    def report(self, key: tuple[str, str], router_id: str, load: float) -> None:
        self._reports.setdefault(key, {})[router_id] = (trio.current_time(), load)
        if load > 0:
            replica_set = self.find(key)
            if replica_set is not None and not replica_set.replicas:
                replica_set.poke()

    def load(self, replica_set: ReplicaSet) -> float:
        """Queued plus in-flight requests for a deployment, over every router."""
        key = replica_set.key
        total = 0.0
        router = self._routers.get(key)
        if router is not None:
            total += router.stats().load
        auto = replica_set.config.autoscaling_config
        ttl = (auto.metrics_interval_s if auto else 10.0) * REPORT_TTL_INTERVALS
        now = trio.current_time()
        reports = self._reports.get(key, {})
        for router_id, (at, load) in list(reports.items()):
            if now - at > ttl:
                del reports[router_id]
            else:
                total += load
        return total

    # -- deploying

    async def deploy(
        self, app: Application, name: str, route_prefix: str | None, *, force_inline: bool
    ) -> None:
        """Deploy ``app`` as ``name``; an application of that name is updated in place
        (rolling where code or options changed)."""
        nodes = app.walk()
        for other in self.apps.values():
            if (
                other.name != name
                and route_prefix is not None
                and other.route_prefix == route_prefix
            ):
                raise ValueError(
                    f"route_prefix {route_prefix!r} is already used by application "
                    f"{other.name!r}; choose another or delete that application"
                )

        wanted = plan_deployments(nodes, name, force_inline=force_inline)
        existing = self.apps.get(name)
        if existing is not None and existing.status in (A.RUNNING, A.UNHEALTHY):
            await self._update(existing, app.deployment.name, route_prefix, wanted)
            return
        if existing is not None:
            await self.delete(name)
        sets = {
            dep_name: ReplicaSet(
                hooks=self,
                app=name,
                name=dep_name,
                deployment=plan.deployment,
                config=plan.config,
                args=plan.args,
                kwargs=plan.kwargs,
            )
            for dep_name, plan in wanted.items()
        }
        app_state = AppState(
            name=name, ingress=app.deployment.name, route_prefix=route_prefix, deployments=sets
        )
        self.apps[name] = app_state
        for replica_set in sets.values():
            self.changed(replica_set)
        try:
            async with trio.open_nursery() as starting:
                for replica_set in sets.values():
                    starting.start_soon(self._nursery.start, replica_set.run)
        except Exception as exc:
            await self._fail(app_state, exc)
        app_state.status = A.RUNNING

    async def _fail(self, app_state: AppState, exc: Exception) -> NoReturn:
        cause = first_error(exc)
        failed = next(
            (
                s.name
                for s in app_state.deployments.values()
                if s.status == DeploymentState.DEPLOY_FAILED
            ),
            "?",
        )
        app_state.status = A.DEPLOY_FAILED
        app_state.message = f"deployment {failed!r} failed to start: {cause!r}"
        await self._stop_sets(list(app_state.deployments.values()))
        for replica_set in app_state.deployments.values():
            self.changed(replica_set)
        raise DeploymentFailedError(app_state.message, deployment=failed) from cause

    async def _update(
        self,
        app_state: AppState,
        ingress: str,
        route_prefix: str | None,
        wanted: dict[str, DeploymentPlan],
    ) -> None:
        app_state.status = A.DEPLOYING
        removed = [s for n, s in app_state.deployments.items() if n not in wanted]
        try:
            async with trio.open_nursery() as updating:
                for dep_name, plan in wanted.items():
                    current = app_state.deployments.get(dep_name)
                    if current is not None:
                        updating.start_soon(
                            current.update, plan.deployment, plan.config, plan.args, plan.kwargs
                        )
                    else:
                        new = ReplicaSet(
                            hooks=self,
                            app=app_state.name,
                            name=dep_name,
                            deployment=plan.deployment,
                            config=plan.config,
                            args=plan.args,
                            kwargs=plan.kwargs,
                        )
                        app_state.deployments[dep_name] = new
                        self.changed(new)
                        updating.start_soon(self._nursery.start, new.run)
        except Exception as exc:
            cause = first_error(exc)
            app_state.status = A.RUNNING
            app_state.message = f"update failed, previous version kept: {cause!r}"
            raise DeploymentFailedError(app_state.message, deployment=ingress) from cause
        app_state.ingress = ingress
        app_state.route_prefix = route_prefix
        for replica_set in removed:
            del app_state.deployments[replica_set.name]
        await self._stop_sets(removed)
        for replica_set in removed:
            self._push(replica_set.key)
        app_state.status = A.RUNNING
        app_state.message = ""

    # -- deleting

    async def delete(self, name: str) -> None:
        """Drain and stop an application's replicas, then forget it."""
        app = self.apps.get(name)
        if app is None:
            return
        app.status = A.DELETING
        await self._stop_sets(list(app.deployments.values()))
        del self.apps[name]
        for key in list(self._routers):
            if key[0] == name:
                self._push(key)
        self._changed.set()
        self._changed = trio.Event()

    @staticmethod
    async def _stop_sets(sets: list[ReplicaSet]) -> None:
        """Stop replica sets callers first: ``sets`` come downstream first (the order of
        ``Application.walk``), so an ingress drains while the deployments it calls still
        answer its in-flight requests."""
        for replica_set in reversed(sets):
            await replica_set.stop()

    async def shutdown(self) -> None:
        for name in list(self.apps):
            await self.delete(name)

    # -- status

    def status(self) -> ServeStatus:
        apps = {}
        for app in self.apps.values():
            deployments = {}
            for rs in app.deployments.values():
                replicas = [
                    ReplicaStatus(
                        replica_id=rid,
                        state=state,
                        pid=rs.replicas[rid].pid if rid in rs.replicas else None,
                    )
                    for rid, state in rs.states.items()
                ]
                deployments[rs.name] = DeploymentStatus(
                    name=rs.name,
                    status=rs.status,
                    message=rs.message,
                    target_replicas=rs.target,
                    running_replicas=len(rs.replicas),
                    replicas=replicas,
                )
            status = app.status
            if status == "RUNNING" and any(d.status == "UNHEALTHY" for d in deployments.values()):
                status = A.UNHEALTHY
            apps[app.name] = ApplicationStatus(
                name=app.name,
                status=status,
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

    async def watch(self, app: str, deployment: str) -> AsyncIterator[Membership]:
        async for update in self._controller.watch(app, deployment):
            yield update

    async def app_ingress(self, name: str) -> str:
        await trio.lowlevel.checkpoint()
        return self._controller.app_ingress(name)

    async def report_models(self, report: ModelReport) -> None:
        await trio.lowlevel.checkpoint()
        self._controller.report_models(report)

    async def report(self, report: LoadReport) -> None:
        await trio.lowlevel.checkpoint()
        self._controller.report((report.app, report.deployment), report.router_id, report.load)
