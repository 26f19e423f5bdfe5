"""A deployment's replicas: started under a supervisor, kept at the right count (fixed or
autoscaled), health-checked, updated by rolling, and drained when they stop."""

from __future__ import annotations

import random
from typing import Any, Protocol

import attrs
import trio

import actors

from .._config import DeploymentConfig
from .._deployment import Deployment
from .._replica.replica import ENV_CONTROLLER, Replica, ReplicaInfo
from .._ship import ship
from .._status import DeploymentState, ReplicaState, deployment_transition
from .autoscaling import LoadWindow, ScalingState, decide_replicas
from .resources import Grant, Ledger

REPLICA_MAX_RESTARTS = 10
REPLICA_RESTART_PERIOD_S = 10.0

PENDING, STARTING = ReplicaState.PENDING, ReplicaState.STARTING
RUNNING, STOPPING = ReplicaState.RUNNING, ReplicaState.STOPPING
ENV_GPUS = "CUDA_VISIBLE_DEVICES"
D = DeploymentState


class Hooks(Protocol):
    """What a replica set needs from its controller."""

    address: str
    system: actors.ActorSystem
    ledger: Ledger

    async def wait_capacity_freed(self) -> None: ...

    def capacity_freed(self) -> None: ...

    def changed(self, replica_set: ReplicaSet) -> None: ...

    def load(self, replica_set: ReplicaSet) -> float: ...


def _same_args(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # why: arguments whose == raises (arrays) count as changed
        return False


@attrs.define(eq=False)
class ReplicaSet:
    """The replicas of one deployment.

    Tasks, inside :meth:`run` (which the controller starts in its nursery): the
    supervisor and its replicas, the autoscaling loop and the health-check loop.
    Cancelling ``run`` stops every replica at once; :meth:`stop` drains them first.
    """

    hooks: Hooks
    app: str
    name: str
    deployment: Deployment
    config: DeploymentConfig
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status: DeploymentState = attrs.field(
        default=DeploymentState.UPDATING, on_setattr=deployment_transition
    )
    message: str = ""
    target: int = 0
    replicas: dict[str, actors.Actor] = attrs.field(factory=dict)
    states: dict[str, ReplicaState] = attrs.field(factory=dict)
    versions: dict[str, int] = attrs.field(factory=dict)
    version: int = 1
    supervisor: actors.Supervisor | None = None
    scope: trio.CancelScope | None = None
    task_started: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    next_index: int = 0
    scaling: ScalingState = attrs.field(factory=ScalingState)
    window: LoadWindow | None = None
    wake: trio.Event = attrs.field(factory=trio.Event)
    rng: random.Random = attrs.field(factory=random.Random)
    #: held by a redeploy and by an autoscaling step: one change of replica count at a time
    changing: trio.Lock = attrs.field(factory=trio.Lock)
    #: replicas whose last restart failed (the supervisor keeps trying)
    failing: set[str] = attrs.field(factory=set)
    #: why requests cannot be served at all (failed to deploy, or restarting after the
    #: supervisor gave up); routers fail requests at once while it is set
    unavailable: str | None = None
    #: whether :meth:`run` has reported started (its first replicas all ran)
    started: bool = False
    #: the multiplexed model ids each replica reported holding
    models: dict[str, list[str]] = attrs.field(factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.app, self.name)

    # -- running

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Start the replicas, report started, then keep them running.

        When the supervisor gives up (restart intensity exceeded), the deployment is
        unavailable: routers fail its requests at once, and after a backoff with jitter a
        new supervisor starts the replicas again, for as long as the deployment exists."""
        self.task_started = True
        attempt = 0
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                while True:
                    try:
                        await self._supervise(None if self.started else task_status)
                        return
                    except Exception as exc:
                        if not _gave_up(exc) or not self.started:
                            raise  # not a give-up, or it never started: the deploy fails
                        attempt += 1
                        self.status = D.UNHEALTHY
                        self.unavailable = (
                            f"deployment {self.name!r} is restarting after its replicas "
                            f"failed repeatedly ({exc})"
                        )
                        self.message = self.unavailable
                        self.replicas.clear()
                        self.states.clear()
                        self.hooks.changed(self)
                        await trio.sleep(restart_backoff_s(attempt, self.rng))
        finally:
            self.replicas.clear()
            for replica_id in list(self.states):
                self._forget(replica_id)
            self.done.set()
            self.hooks.changed(self)

    async def _supervise(self, task_status: trio.TaskStatus[None] | None) -> None:
        """One supervisor's life: start ``target`` replicas (the initial count the first
        time), then run the autoscaling and health loops until cancelled or given up."""
        async with actors.open_supervisor(
            self.hooks.system,
            max_restarts=REPLICA_MAX_RESTARTS,
            period_s=REPLICA_RESTART_PERIOD_S,
            on_change=self._on_change,
            on_restart_failed=self._on_restart_failed,
        ) as sup:
            self.supervisor = sup
            first = task_status is not None
            try:
                await self.scale_to(self.config.initial_replicas if first else self.target)
            except Exception as exc:
                if not first:
                    raise _RestartFailedError(
                        f"replicas failed to start again: {first_error(exc)!r}"
                    ) from exc
                self.status = D.DEPLOY_FAILED
                self.message = f"a replica failed to start: {first_error(exc)!r}"
                self.unavailable = self.message
                raise
            self.status = D.HEALTHY
            self.unavailable = None
            self.message = ""
            self.hooks.changed(self)
            if task_status is not None:
                self.started = True
                task_status.started()
            async with trio.open_nursery() as loops:
                loops.start_soon(self._autoscale_loop)
                loops.start_soon(self._health_loop)

    def _on_change(self, replica_id: str, actor: actors.Actor | None) -> None:
        if actor is not None:
            if self.states.get(replica_id) == STOPPING:
                return
            self.replicas[replica_id] = actor
            self.states[replica_id] = RUNNING
            self._not_failing(replica_id)
        else:
            self.replicas.pop(replica_id, None)
            if self.states.get(replica_id) == RUNNING:
                self.states[replica_id] = STARTING  # the supervisor restarts it
        self.hooks.changed(self)

    def _not_failing(self, replica_id: str) -> None:
        """A replica that failed to restart started after all, or was removed."""
        if replica_id in self.failing:
            self.failing.discard(replica_id)
            if not self.failing and self.status == D.UNHEALTHY:
                self.status, self.message = D.HEALTHY, ""

    def _on_restart_failed(self, replica_id: str, error: BaseException) -> None:
        self.failing.add(replica_id)
        self.status = D.UNHEALTHY
        self.message = f"replica {replica_id} failed to restart: {first_error(error)!r}"
        self.hooks.changed(self)

    # -- scaling

    def live_models(self) -> dict[str, list[str]]:
        """Model ids by replica, for the replicas that serve now."""
        return {rid: ids for rid, ids in self.models.items() if rid in self.replicas}

    def live_ids(self) -> list[str]:
        return [rid for rid, st in self.states.items() if st in (PENDING, STARTING, RUNNING)]

    async def scale_to(self, n: int) -> None:
        """Start or drain replicas until ``n`` are live; a replica that fails to start
        raises (after the others have started)."""
        self.target = n
        live = self.live_ids()
        if n > len(live):
            self.status = D.UPSCALING if live else self.status
            async with trio.open_nursery() as starting:
                for _ in range(n - len(live)):
                    starting.start_soon(self.add_replica)
        elif n < len(live):
            self.status = D.DOWNSCALING
            victims = sorted(live, key=self._drain_order)[: len(live) - n]
            async with trio.open_nursery() as draining:
                for rid in victims:
                    draining.start_soon(self.drain_replica, rid)
        if self.status in (D.UPSCALING, D.DOWNSCALING):
            self.status = D.HEALTHY
        self.hooks.changed(self)

    def _drain_order(self, replica_id: str) -> tuple[int, int]:
        # old versions first, then the newest (fewest warm caches lost)
        return (self.versions.get(replica_id, 0), -int(replica_id.rpartition("#")[2] or 0))

    async def add_replica(self) -> str:
        assert self.supervisor is not None
        self.next_index += 1
        replica_id = f"{self.name}#{self.next_index}"
        info = ReplicaInfo(app=self.app, deployment=self.name, replica_id=replica_id)
        spec = actors.ActorSpec(
            factory=Replica,
            args=(
                info,
                ship(self.deployment.target),
                self.args,
                self.kwargs,
                self.deployment.is_function,
            ),
            kwargs={"user_config": self.config.user_config, "event_loop": self.config.event_loop},
            name=replica_id,
            max_ongoing=self.config.max_ongoing_requests,
            max_message_size=self.config.max_message_size,
            placement=self.config.placement,
            grace_s=self.config.graceful_shutdown_timeout_s,
            env={ENV_CONTROLLER: self.hooks.address},
        )
        self.states[replica_id] = PENDING
        self.versions[replica_id] = self.version
        try:
            grant = await self._reserve(replica_id)
            env = {**self.config.env_vars, ENV_CONTROLLER: self.hooks.address}
            if self.hooks.ledger.capacity.gpu_ids or grant.gpu_ids:
                env[ENV_GPUS] = ",".join(grant.gpu_ids)
            spec = attrs.evolve(spec, env=env)
            self.states[replica_id] = STARTING
            self.hooks.changed(self)
            await self.supervisor.start_child(actors.ChildSpec(id=replica_id, actor=spec))
        except _WithdrawnError:
            return replica_id  # drained while pending: nothing started, nothing to undo
        except BaseException:  # why: forget a replica that never started; re-raised
            self._forget(replica_id)
            raise
        return replica_id

    def _grant_key(self, replica_id: str) -> str:
        return f"{self.app}/{replica_id}"

    async def _reserve(self, replica_id: str) -> Grant:
        """Wait until the host can grant this deployment's resources to ``replica_id``."""
        resources = self.config.resources
        while True:
            if self.states.get(replica_id) != PENDING:
                raise _WithdrawnError(f"replica {replica_id} was drained before it started")
            result = self.hooks.ledger.grant(self._grant_key(replica_id), resources)
            if isinstance(result, Grant):
                if self.message.startswith("replica ") and "pending" in self.message:
                    self.message = ""
                return result
            self.message = f"replica {replica_id} pending: {result.describe()}"
            self.hooks.changed(self)
            await self.hooks.wait_capacity_freed()

    def _forget(self, replica_id: str) -> None:
        """A replica is gone for good: drop its state and give back its resources."""
        self.states.pop(replica_id, None)
        self.versions.pop(replica_id, None)
        self.models.pop(replica_id, None)
        self.hooks.ledger.release(self._grant_key(replica_id))
        self.hooks.capacity_freed()

    async def drain_replica(self, replica_id: str) -> None:
        """Leave every router's membership, finish in-flight requests, then stop."""
        was_pending = self.states.get(replica_id) == PENDING
        self.states[replica_id] = STOPPING
        self.replicas.pop(replica_id, None)
        self.hooks.changed(self)
        if was_pending:
            self.hooks.capacity_freed()  # wakes its reservation, which gives up
        elif self.supervisor is not None:
            await self.supervisor.stop_child_gracefully(replica_id)
        self._forget(replica_id)
        self._not_failing(replica_id)

    async def replace_replica(self, replica_id: str) -> None:
        """Stop an unhealthy replica at once and start a fresh one."""
        if self.states.get(replica_id) != RUNNING:
            return
        self.states[replica_id] = STOPPING
        self.replicas.pop(replica_id, None)
        self.hooks.changed(self)
        if self.supervisor is not None:
            await self.supervisor.terminate_child(replica_id)
        self._forget(replica_id)
        await self.add_replica()

    async def stop(self) -> None:
        """Drain every replica, then end :meth:`run`."""
        async with trio.open_nursery() as draining:
            for rid in list(self.states):
                draining.start_soon(self.drain_replica, rid)
        if self.scope is not None:
            self.scope.cancel()
        if self.task_started:
            await self.done.wait()

    # -- autoscaling

    def poke(self) -> None:
        """A request is waiting and no replica exists: decide now, not at the next tick."""
        self.wake.set()

    async def _autoscale_loop(self) -> None:
        while True:
            auto = self.config.autoscaling_config
            if auto is None:
                await self.wake.wait()
                self.wake = trio.Event()
                continue
            with trio.move_on_after(auto.metrics_interval_s):
                await self.wake.wait()
            self.wake = trio.Event()
            if self.window is None or self.window.period_s != auto.look_back_period_s:
                self.window = LoadWindow(auto.look_back_period_s)
            now = trio.current_time()
            self.window.add(now, self.hooks.load(self))
            if self.changing.locked():
                # a redeploy is starting and draining replicas: the live count says nothing
                # about capacity until it is done, so no delay runs against it
                self.scaling = ScalingState()
                continue
            current = len(self.live_ids())
            wanted = decide_replicas(
                auto, self.scaling, current=current, load=self.window.average(), now=now
            )
            if wanted != current:
                async with self.changing:
                    try:
                        await self.scale_to(wanted)
                    except Exception as exc:
                        self.status = D.UNHEALTHY
                        self.message = f"could not scale to {wanted}: {first_error(exc)!r}"
                        self.hooks.changed(self)

    # -- health

    async def _health_loop(self) -> None:
        if self.deployment.is_function or not hasattr(self.deployment.target, "check_health"):
            return
        while True:
            await trio.sleep(self.config.health_check_period_s)
            async with trio.open_nursery() as checks:
                for rid, actor in list(self.replicas.items()):
                    checks.start_soon(self._check, rid, actor)

    async def _check(self, replica_id: str, actor: actors.Actor) -> None:
        healthy = False
        reason = "did not answer within health_check_timeout_s"
        with trio.move_on_after(self.config.health_check_timeout_s):
            try:
                await actor.ref.call("check_health")
                healthy = True
            except Exception as exc:
                reason = f"check_health raised {exc!r}"
        if not healthy and self.replicas.get(replica_id) is actor:
            self.message = f"replica {replica_id} was unhealthy ({reason}) and was replaced"
            try:
                await self.replace_replica(replica_id)
            except Exception as exc:
                self.status = D.UNHEALTHY
                self.message = f"could not replace {replica_id}: {first_error(exc)!r}"
                self.hooks.changed(self)

    # -- redeploying

    def needs_new_replicas(
        self, deployment: Deployment, config: DeploymentConfig, args: Any, kwargs: Any
    ) -> bool:
        """Whether a redeploy changes code or options that only new replicas can have."""
        if deployment.target is not self.deployment.target:
            return True
        if not (_same_args(args, self.args) and _same_args(kwargs, self.kwargs)):
            return True
        fixed = (
            "max_ongoing_requests",
            "placement",
            "graceful_shutdown_timeout_s",
            "event_loop",
            "max_message_size",
        )
        return any(getattr(config, f) != getattr(self.config, f) for f in fixed)

    async def update(
        self, deployment: Deployment, config: DeploymentConfig, args: Any, kwargs: Any
    ) -> None:
        """Apply a redeploy: reconfigure in place, rescale, or roll to new replicas (new ones
        start and take requests before old ones drain; a failed start keeps the old ones).
        The autoscaler waits while it runs."""
        async with self.changing:
            self.status = D.UPDATING
            self.hooks.changed(self)
            if self.needs_new_replicas(deployment, config, args, kwargs):
                await self._roll(deployment, config, args, kwargs)
            else:
                old_user_config = self.config.user_config
                self.config = config
                self.deployment = deployment
                if config.user_config != old_user_config:
                    await self._reconfigure_all(config.user_config)
                if config.autoscaling_config is None:
                    await self.scale_to(config.initial_replicas)
            self.scaling = ScalingState()
        self.poke()  # the autoscaler reads the (maybe new) autoscaling_config at once
        self.status = D.HEALTHY
        self.hooks.changed(self)

    async def _reconfigure_all(self, user_config: Any) -> None:
        async with trio.open_nursery() as calls:
            for actor in list(self.replicas.values()):
                calls.start_soon(actor.ref.call, "__serve_reconfigure__", user_config)

    async def _roll(
        self, deployment: Deployment, config: DeploymentConfig, args: Any, kwargs: Any
    ) -> None:
        old_ids = self.live_ids()
        saved = (self.deployment, self.config, self.args, self.kwargs, self.version)
        self.deployment, self.config, self.args, self.kwargs = deployment, config, args, kwargs
        self.version += 1
        started: list[str] = []
        count = self._count_after_update(config, len(old_ids))
        try:
            async with trio.open_nursery() as starting:
                for _ in range(count):
                    starting.start_soon(self._add_and_record, started)
        except Exception:
            async with trio.open_nursery() as undo:
                for rid in started:
                    undo.start_soon(self.drain_replica, rid)
            self.deployment, self.config, self.args, self.kwargs, self.version = saved
            self.status = D.HEALTHY
            self.hooks.changed(self)
            raise
        self.target = count
        async with trio.open_nursery() as draining:
            for rid in old_ids:
                draining.start_soon(self.drain_replica, rid)

    @staticmethod
    def _count_after_update(config: DeploymentConfig, current: int) -> int:
        """A fixed deployment gets its new count; an autoscaled one keeps the count it has
        scaled to (clamped to the new bounds), so a rollout under load loses no capacity."""
        auto = config.autoscaling_config
        if auto is None:
            return config.initial_replicas
        return max(auto.min_replicas, min(auto.max_replicas, current))

    async def _add_and_record(self, started: list[str]) -> None:
        started.append(await self.add_replica())


RESTART_BACKOFF_BASE_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0


def restart_backoff_s(attempt: int, rng: random.Random) -> float:
    """Seconds before restarting a deployment whose supervisor gave up for the
    ``attempt``-th time in a row: doubling from 1 s up to 30 s, with +-20 % jitter."""
    base = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    jitter: float = rng.uniform(0.8, 1.2)
    return base * jitter


def _gave_up(exc: BaseException) -> bool:
    """Whether ``exc`` (maybe inside exception groups) is only the supervisor giving up."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_gave_up(e) for e in exc.exceptions)
    return isinstance(exc, actors.SupervisorGaveUpError | _RestartFailedError)


class _WithdrawnError(Exception):
    """A pending replica was drained before it got its resources."""


class _RestartFailedError(Exception):
    """A deployment restarted after its supervisor gave up could not start its replicas."""


def first_error(exc: BaseException) -> BaseException:
    """The most telling error inside (nested) exception groups: a spawn error's cause."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, actors.SpawnError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc
