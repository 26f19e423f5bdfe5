"""Ray Serve's habits: ``.result()`` on plain threads, shutdown and no-instance errors, the
replica context, handles asked for inside replicas, Ray's import paths, ``http_options``
and graphs built as Ray builds them (Applications in user objects, one deployment bound
twice).

Most tests are plain ``def`` tests on the script API (a background serve instance without
HTTP, shut down however the test ends); their deployments live here at module level so
that replica processes can import them.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
import urllib.request
from typing import Any

import attrs
import psutil
import pytest

import trioserve as serve
from trioserve._deployment import replace_apps

from . import serve_fixtures as fx


@serve.deployment
class SyncCaller:
    """Calls a downstream handle from a plain ``def`` method (a worker thread)."""

    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    def __call__(self, x: int) -> int:
        value: int = self.down.remote(x).result(timeout_s=30)
        return value


@serve.deployment(num_replicas=2)
class WhoAmI:
    """Reports its replica context, as seen in ``__init__`` and in a method."""

    def __init__(self) -> None:
        self.at_init = serve.get_replica_context().deployment

    def __call__(self) -> dict[str, Any]:
        context = serve.get_replica_context()
        return {
            "app_name": context.app_name,
            "deployment": context.deployment,
            "replica_id": context.replica_id,
            "node_name": context.node_name,
            "servable_is_self": context.servable_object is self,
            "at_init": self.at_init,
        }


@serve.deployment
class AppCaller:
    """Asks for another application's handles from inside a replica (in ``__init__``, before
    the replica is connected, and in a method)."""

    def __init__(self, target_app: str) -> None:
        self.early_deployment = serve.get_deployment_handle("Model", target_app)
        self.early_app = serve.get_app_handle(target_app)

    def early(self, x: int) -> list[int]:
        return [
            self.early_deployment.remote(x).result(timeout_s=30),
            self.early_app.remote(x).result(timeout_s=30),
        ]

    def call_app(self, name: str, x: int) -> int:
        value: int = serve.get_app_handle(name).remote(x).result(timeout_s=30)
        return value

    def call_deployment(self, deployment: str, app: str, x: int) -> int:
        value: int = serve.get_deployment_handle(deployment, app).remote(x).result(timeout_s=30)
        return value

    def pid(self) -> int:
        import os

        return os.getpid()


@dataclasses.dataclass
class ModelPair:
    first: Any
    second: Any


@attrs.frozen
class Wrapped:
    inner: Any


class Plain:
    def __init__(self, model: Any) -> None:
        self.model = model


@serve.deployment
class ObjectHolder:
    """Receives Applications inside a dataclass, an attrs object and a plain object."""

    def __init__(self, pair: ModelPair, wrapped: Wrapped, plain: Plain) -> None:
        self.handles = [pair.first, pair.second, wrapped.inner, plain.model]

    def kinds(self) -> list[str]:
        return [type(h).__name__ for h in self.handles]

    async def __call__(self, x: int) -> list[int]:
        return [await h.remote(x) for h in self.handles]


def _replicas(deployment: str, app: str = "default") -> list[serve.ReplicaStatus]:
    return serve.status().applications[app].deployments[deployment].replicas


# -- .result() on plain threads, and where it must not block


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_result_in_sync_method_calls_downstream() -> None:
    """A ``def`` method calls a downstream deployment with ``.remote(...).result()``."""
    handle = serve.run(SyncCaller.bind(fx.Model.bind(3)))
    assert handle.remote(2).result(timeout_s=30) == 6
    assert serve.get([handle.remote(i) for i in range(3)], timeout_s=30) == [0, 3, 6]


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_result_from_a_plain_driver_thread() -> None:
    """A DeploymentHandle used on a plain driver thread submits and blocks in ``.result()``."""
    serve.run(fx.Model.bind(3))
    handle = serve.get_app_handle(sync=False)
    results: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            response = handle.remote(2)
            assert isinstance(response, serve.DeploymentResponse)
            results.append(response.result(timeout_s=30))
            results.append(handle.describe.remote().result(timeout_s=30))
        except BaseException as exc:  # why: reported to the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert errors == []
    assert results == [6, "scale=3"]


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_result_timeout_counts_queueing() -> None:
    """``timeout_s`` bounds the whole wait, time queued for a busy replica included."""
    gate = serve.run(fx.Gate.options(max_ongoing_requests=1).bind(), name="gate")
    busy = gate.block.remote()
    queued = gate.async_handle.ping.remote(5)  # from this thread: submitted, not accepted
    assert queued.replica_id is None
    with pytest.raises(serve.RequestTimeoutError):
        queued.result(timeout_s=0.2)
    wrapped = serve.SyncResponse(queued, queued._token)
    with pytest.raises(serve.RequestTimeoutError):
        wrapped.result(timeout_s=0.2)
    busy.cancel()  # frees the only slot: the queued request goes to the replica
    assert wrapped.result(timeout_s=30) == 5


async def test_result_on_trio_thread_raises() -> None:
    """On a Trio thread ``.result()`` and ``serve.get`` raise RuntimeError saying to await."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Model.options(placement="inline").bind(3))
        response = handle.remote(2)
        with pytest.raises(RuntimeError, match=r"DeploymentResponse\.result\(\).*await response"):
            response.result()
        with pytest.raises(RuntimeError, match=r"await serve\.get_async"):
            serve.get(response)
        with pytest.raises(RuntimeError, match=r"serve\.wait\(\)"):
            serve.wait([response])
        assert await response == 6
        with pytest.raises(RuntimeError, match="await response"):
            response.result()  # done or not: on a Trio thread, await it
        assert await serve.get_async(response) == 6


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_get_and_wait_take_deployment_responses() -> None:
    """``serve.get`` and ``serve.wait`` take DeploymentResponses on plain threads."""
    handle = serve.run(fx.Model.bind(3)).async_handle
    assert serve.get(handle.remote(1), timeout_s=30) == 3
    mixed = [handle.remote(2), serve.get_app_handle().remote(3)]
    assert serve.get(mixed, timeout_s=30) == [6, 9]
    responses = [handle.remote(i) for i in range(3)]
    done, pending = serve.wait(responses, num_returns=3, timeout_s=30)
    assert (done, pending) == (responses, [])
    with pytest.raises(TypeError, match="expected a SyncResponse or a DeploymentResponse"):
        serve.get(42)


# -- shutdown, and no instance running


def test_calls_after_shutdown_raise_serve_shutdown_error() -> None:
    """Handles kept past ``serve.shutdown()`` raise ServeShutdownError, saying to run again."""
    serve.start(http_port=None)
    try:
        handle = serve.run(fx.Model.options(placement="inline").bind(3))
        finished = handle.remote(1)
        assert finished.result(timeout_s=30) == 3
        async_handle = handle.async_handle
    finally:
        serve.shutdown()
    with pytest.raises(serve.ServeShutdownError, match=r"call serve\.run\(\) again"):
        handle.remote(1)
    with pytest.raises(serve.ServeShutdownError):
        handle.describe.remote()
    with pytest.raises(serve.ServeShutdownError):
        async_handle.remote(1)
    assert finished.result() == 3  # a value already there stays readable
    assert issubclass(serve.ServeShutdownError, serve.ServeError)


def test_status_after_shutdown_starts_nothing() -> None:
    """With no instance, ``status()`` is empty and the handle getters and ``delete`` raise
    ServeNotRunningError; none of them starts a serve thread."""
    serve.start(http_port=None)
    serve.shutdown()
    before = set(threading.enumerate())
    assert serve.status() == serve.ServeStatus(applications={})
    with pytest.raises(serve.ServeNotRunningError, match=r"serve\.run\(app\)"):
        serve.get_app_handle("default")
    with pytest.raises(serve.ServeNotRunningError):
        serve.get_deployment_handle("Model", "default")
    with pytest.raises(serve.ServeNotRunningError):
        fx.Model.get_handle()
    with pytest.raises(serve.ServeNotRunningError):
        serve.delete("default")
    assert set(threading.enumerate()) == before
    assert not any(t.name == "trioserve" for t in threading.enumerate())


# -- inside replicas


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_replica_context_fields_and_distinct_ids() -> None:
    """``get_replica_context()`` names the app, deployment, replica, node and user object;
    the two replicas of a deployment have different ids."""
    import socket

    handle = serve.run(WhoAmI.bind(), name="who", route_prefix="/who")
    expected = {r.replica_id for r in _replicas("WhoAmI", "who")}
    assert len(expected) == 2
    seen: set[str] = set()
    for _ in range(64):  # two replicas, picked at random: all are seen long before 64 calls
        ref = handle.remote()
        info = ref.result(timeout_s=30)
        assert info["replica_id"] == ref.replica_id
        assert info["app_name"] == "who"
        assert info["deployment"] == "WhoAmI"
        assert info["at_init"] == "WhoAmI"
        assert info["node_name"] == socket.gethostname()
        assert info["servable_is_self"] is True
        seen.add(info["replica_id"])
        if seen == expected:
            break
    assert seen == expected
    with pytest.raises(RuntimeError, match="outside a replica"):
        serve.get_replica_context()


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_get_app_handle_inside_replica_opens_no_listener() -> None:
    """Inside a replica, ``get_app_handle``/``get_deployment_handle`` route from that
    replica: they work, and no serve instance (no HTTP listener) starts in it."""
    serve.run(fx.Model.bind(3), name="target", route_prefix="/target")
    caller = serve.run(AppCaller.bind("target"), name="caller", route_prefix="/caller")
    assert caller.call_app.remote("target", 2).result(timeout_s=30) == 6
    assert caller.early.remote(1).result(timeout_s=30) == [3, 3]
    assert caller.call_deployment.remote("Model", "target", 3).result(timeout_s=30) == 9
    (replica,) = _replicas("AppCaller", "caller")
    assert replica.pid is not None
    assert caller.pid.remote().result(timeout_s=30) == replica.pid
    listening = [
        c.laddr.port
        for c in psutil.Process(replica.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert 8000 not in listening
    assert len(listening) == 1  # the replica's own listener for calls, nothing more


# -- import paths and start options


def test_ray_import_paths() -> None:
    """Ray's module paths work: ``trioserve.handle`` and ``trioserve.config``."""
    from trioserve import config, handle
    from trioserve.config import AutoscalingConfig, HTTPOptions
    from trioserve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

    assert DeploymentHandle is serve.DeploymentHandle
    assert DeploymentResponse is serve.DeploymentResponse
    assert DeploymentResponseGenerator is serve.DeploymentResponseGenerator
    assert AutoscalingConfig is serve.AutoscalingConfig
    assert HTTPOptions is serve.HTTPOptions
    assert sorted(handle.__all__) == [
        "DeploymentHandle",
        "DeploymentResponse",
        "DeploymentResponseGenerator",
    ]
    assert sorted(config.__all__) == ["AutoscalingConfig", "HTTPOptions"]


def test_http_options_validate_with_what_to_do() -> None:
    """Bad HTTPOptions values raise with the value and what is allowed."""
    assert serve.HTTPOptions() == serve.HTTPOptions(host="127.0.0.1", port=8000)
    with pytest.raises(ValueError, match=r"port must be an int from 0 to 65535.*got 70000"):
        serve.HTTPOptions(port=70000)
    with pytest.raises(ValueError, match=r"request_timeout_s must be a number > 0.*got 0"):
        serve.HTTPOptions(request_timeout_s=0)
    with pytest.raises(ValueError, match="host must be a non-empty str"):
        serve.HTTPOptions(host="")
    with pytest.raises(ValueError, match=r"unknown http_options \['root_path'\]"):
        serve.HTTPOptions.coerce({"root_path": "/x"})
    with pytest.raises(TypeError, match="not both"):
        serve.start(http_port=0, http_options={"port": 0})


def test_start_with_http_options_port_0() -> None:
    """``serve.start(http_options={"host": ..., "port": 0})`` serves HTTP on a free port."""
    mine = psutil.Process()

    def listening() -> set[int]:
        return {
            c.laddr.port
            for c in mine.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"
        }

    before = listening()
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    try:
        serve.run(fx.double.options(placement="inline").bind())
        new = listening() - before
        assert new, "no new listener"
        answers = set()
        for port in new:  # the HTTP port, and the controller's websocket listener
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthz", timeout=10) as r:
                    answers.add(r.status)
            except Exception:  # why: the websocket listener does not speak plain HTTP
                continue
        assert 200 in answers
    finally:
        serve.shutdown()


# -- graphs built as Ray builds them


def test_replace_apps_enters_user_objects_without_changing_them() -> None:
    """Applications inside dataclasses, attrs and plain objects are replaced in copies; the
    bound objects stay as they were, and values holding none are returned as they are."""
    model = fx.Model.bind(1)
    pair = ModelPair(first=model, second=[model])
    wrapped = Wrapped(inner={"m": model})
    plain = Plain(model)
    untouched = ModelPair(first=1, second="two")
    new = replace_apps((pair, wrapped, plain, untouched), lambda a: a.deployment.name)
    assert new[0] == ModelPair(first="Model", second=["Model"])
    assert new[1] == Wrapped(inner={"m": "Model"})
    assert new[2].model == "Model"
    assert new[3] is untouched
    assert pair.first is model
    assert wrapped.inner["m"] is model
    assert plain.model is model


def test_application_walk_names_a_deployment_bound_twice() -> None:
    """Two ``.bind()`` calls of one deployment are two nodes, ``Model`` and ``Model_1``
    (Ray's rule: the first met from the ingress keeps the name)."""
    root = fx.Holder.bind([fx.Model.bind(2), fx.Model.bind(3)], {"again": fx.Model.bind(4)})
    names = [node.deployment.name for node in root.walk()]
    assert names == ["Model", "Model_1", "Model_2", "Holder"]
    assert [node.deployment.name for node in root.walk()] == names  # the graph is unchanged
    assert root.args[0][1].deployment.name == "Model"


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_nested_application_in_user_objects_becomes_handle() -> None:
    """An Application in a dataclass field, an attrs field or a plain object's attribute
    reaches the replica as a DeploymentHandle."""
    first, second = fx.Adder.options(name="Plus1").bind(1), fx.Adder.options(name="Plus2").bind(2)
    app = ObjectHolder.bind(
        ModelPair(first=first, second=second), Wrapped(inner=fx.double.bind()), Plain(first)
    )
    handle = serve.run(app)
    assert handle.kinds.remote().result(timeout_s=30) == ["DeploymentHandle"] * 4
    assert handle.remote(5).result(timeout_s=30) == [6, 7, 10, 6]


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_same_deployment_bound_twice_deploys_two() -> None:
    """One deployment bound twice in an application runs as ``Model`` and ``Model_1``."""
    handle = serve.run(fx.Holder.bind([fx.Model.bind(2), fx.Model.bind(3)], {}))
    deployments = serve.status().applications["default"].deployments
    assert sorted(deployments) == ["Holder", "Model", "Model_1"]
    assert handle.remote(5).result(timeout_s=30) == {"items": [10, 15], "named": {}}


# -- errors


def test_request_too_large_error_keeps_its_fields() -> None:
    """RequestTooLargeError is a ServeError carrying the deployment, size and limit."""
    error = serve.RequestTooLargeError("too big", deployment="Model", size=10, limit=5)
    assert isinstance(error, serve.ServeError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.deployment, copy.size, copy.limit, str(copy)) == ("Model", 10, 5, "too big")
