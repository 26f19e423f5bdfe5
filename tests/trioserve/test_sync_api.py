"""The script API: a serve instance on a background thread driven by plain functions.

These are plain ``def`` tests (the sync API must not be called from a Trio thread); each
starts the instance without HTTP and shuts it down however the test ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import trio

import trioserve as serve

from . import serve_fixtures as fx


def _replica_pids(status: serve.ServeStatus) -> set[int]:
    return {
        replica.pid
        for app in status.applications.values()
        for deployment in app.deployments.values()
        for replica in deployment.replicas
        if replica.pid is not None
    }


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_sync_run_returns_sync_handle() -> None:
    """``serve.run`` gives a SyncHandle; values come from ``.result()`` and ``serve.get``."""
    handle = serve.run(fx.Model.bind(3))
    assert isinstance(handle, serve.SyncHandle)
    ref = handle.remote(2)
    assert isinstance(ref, serve.SyncResponse)
    assert ref.result() == 6
    assert ref.done()
    assert ref.replica_id == "Model#1"
    assert handle.describe.remote().result() == "scale=3"
    assert handle.options(method_name="describe").remote().result() == "scale=3"
    assert serve.get(handle.remote(1)) == 3
    assert serve.get([handle.remote(i) for i in range(4)]) == [0, 3, 6, 9]
    assert handle.remote(handle.remote(1)).result() == 9
    with pytest.raises(TypeError, match="expected a SyncResponse"):
        serve.get(42)


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_sync_wait_and_timeouts() -> None:
    """``serve.wait`` splits done/pending; a result timeout leaves the request running."""
    gate = serve.run(fx.Gate.bind(), name="gate")
    slow = gate.block.remote()
    quick = [gate.ping.remote(1), gate.ping.remote(2)]

    done, pending = serve.wait([slow, *quick], num_returns=2, timeout_s=10)
    assert done == quick
    assert pending == [slow]
    done, pending = serve.wait([slow, *quick], num_returns=3, timeout_s=0.1)
    assert (done, pending) == (quick, [slow])  # the timeout ends the wait, without error
    assert serve.wait([]) == ([], [])

    with pytest.raises(serve.RequestTimeoutError):
        slow.result(timeout_s=0.1)
    with pytest.raises(TimeoutError):
        serve.get([quick[0], slow], timeout_s=0.1)
    assert not slow.done()

    doomed = gate.block.remote()
    doomed.cancel()
    with pytest.raises(serve.RequestCancelledError):
        doomed.result()

    gate.open.remote().result()
    assert slow.result(timeout_s=10) == "unblocked"
    assert serve.get(quick) == [1, 2]


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_sync_handles_by_name() -> None:
    """``get_app_handle``, ``get_deployment_handle``, ``Deployment.get_handle()`` work."""
    serve.run(fx.Holder.bind([fx.double.bind()], {"m": fx.Model.bind(5)}), name="graph")
    app = serve.get_app_handle("graph")
    assert isinstance(app, serve.SyncHandle)
    assert app.remote(2).result() == {"items": [4], "named": {"m": 10}}

    model = serve.get_deployment_handle("Model", app_name="graph")
    assert isinstance(model, serve.SyncHandle)
    assert model.describe.remote().result() == "scale=5"
    assert fx.double.get_handle().remote(8).result() == 16
    assert isinstance(
        serve.get_deployment_handle("Model", "graph", sync=False), serve.DeploymentHandle
    )
    assert isinstance(serve.get_app_handle("graph", sync=False), serve.DeploymentHandle)

    with pytest.raises(serve.DeploymentUnavailableError):
        serve.get_app_handle("missing")
    with pytest.raises(serve.DeploymentUnavailableError):
        fx.Pid.get_handle()


@pytest.mark.usefixtures("sync_serve")
def test_sync_streaming_with_for() -> None:
    """A streaming SyncHandle call is iterated with a plain ``for``."""
    handle = serve.run(fx.Streamer.bind(), name="stream", local_testing_mode=True)
    gen = handle.options(stream=True).sgen.remote(4)
    assert isinstance(gen, serve.SyncResponseGenerator)
    assert list(gen) == [f"item-{i}" for i in range(4)]
    assert list(handle.options(stream=True, method_name="agen").remote(20)) == list(range(20))


@pytest.mark.usefixtures("sync_serve")
def test_sync_status_delete_and_errors() -> None:
    """``status``, ``delete`` and a failing ``run`` work from plain code."""
    serve.run(fx.Model.options(placement="inline").bind(1), name="a", route_prefix="/a")
    serve.run(fx.double.options(placement="inline").bind(), name="b", route_prefix="/b")
    status = serve.status()
    assert set(status.applications) == {"a", "b"}
    assert status.applications["a"].status == "RUNNING"
    serve.delete("a")
    assert set(serve.status().applications) == {"b"}
    with pytest.raises(serve.DeploymentFailedError) as info:
        serve.run(fx.BrokenInit.options(placement="inline").bind(3), name="c", route_prefix="/c")
    assert isinstance(info.value.__cause__, fx.CustomError)
    assert serve.status().applications["c"].status == "DEPLOY_FAILED"
    assert serve.get_app_handle("b").remote(4).result() == 8


@pytest.mark.slow
def test_sync_shutdown_stops_every_replica_process() -> None:
    """After ``serve.shutdown()`` no replica process is left, and serving can start again."""
    serve.start(http_port=None)
    try:
        handle = serve.run(fx.Pid.options(num_replicas=2).bind())
        pids = _replica_pids(serve.status())
        assert len(pids) == 2
        assert all(psutil.pid_exists(pid) for pid in pids)
        assert handle.remote().result() in pids
    finally:
        serve.shutdown()
    assert not any(psutil.pid_exists(pid) for pid in pids)
    serve.shutdown()  # a second shutdown is harmless

    serve.start(http_port=None)
    try:
        handle = serve.run(fx.Model.options(placement="inline").bind(2))
        assert handle.remote(2).result() == 4
    finally:
        serve.shutdown()


async def test_sync_handle_in_serve_thread_raises() -> None:
    """Blocking sync calls on the serve instance's Trio thread raise RuntimeError."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(fx.Gate.options(placement="inline").bind(), name="gate")
        token = trio.lowlevel.current_trio_token()
        sync = serve.SyncHandle(handle, token)
        with pytest.raises(RuntimeError, match=r"SyncHandle\.remote\(\).*would deadlock"):
            sync.remote(1)
        with pytest.raises(RuntimeError, match="serve instance's own Trio thread"):
            sync.ping.remote(1)
        pending = serve.SyncResponse(handle.block.remote(), token)
        with pytest.raises(RuntimeError, match=r"SyncResponse\.result\(\).*would deadlock"):
            pending.result()
        with pytest.raises(RuntimeError, match=r"serve\.wait\(\)"):
            serve.wait([pending])
        await handle.open.remote()
        assert await pending._response == "unblocked"
        assert pending.result() == "unblocked"  # a finished response does not block


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_sync_response_inside_containers_and_kwargs() -> None:
    """SyncResponses chain like async responses: in kwargs and inside lists and dicts."""
    handle = serve.run(fx.Math.bind(), name="math")
    one = handle.add_one.remote(0)
    assert handle.total.remote([one, 10]).result() == 11
    assert handle.combine.remote(2, b=one).result() == 201


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_sync_remote_blocks_until_a_replica_accepts() -> None:
    """With the only slot taken, ``SyncHandle.remote()`` waits in the queue and returns once
    a replica has the request (its response already names the replica)."""
    handle = serve.run(fx.Gate.options(max_ongoing_requests=1).bind(), name="one-slot")
    busy = handle.block.remote()
    returned: list[serve.SyncResponse] = []
    submitter = threading.Thread(target=lambda: returned.append(handle.ping.remote(5)))
    submitter.start()

    def queued() -> int:
        router = handle.async_handle._get_router()
        return router.stats().queued

    deadline = time.monotonic() + 10
    # the request crosses to the serve thread and a replica process: poll, bounded
    while trio.from_thread.run_sync(queued, trio_token=handle._token) != 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.01)
    assert returned == []  # still blocked in remote(): the replica has not accepted it
    busy.cancel()
    submitter.join(timeout=10)
    (response,) = returned
    assert response.replica_id == "Gate#1"
    assert response.result() == 5


ATEXIT_SCRIPT = """
import trioserve as serve
from tests.trioserve import serve_fixtures as fx

serve.start(http_port=None)  # no proxy: a fixed port would clash with other tests' runs
serve.run(fx.Pid.options(num_replicas=2).bind())
print(" ".join(str(r.pid) for r in serve.status().applications["default"]
               .deployments["Pid"].replicas), flush=True)
# no serve.shutdown(): the interpreter's exit stops the instance
"""


@pytest.mark.slow
def test_sync_interpreter_exit_stops_every_replica_process(tmp_path: Path) -> None:
    """A script that ends without ``serve.shutdown()`` still leaves no replica behind."""
    script = tmp_path / "forgets_shutdown.py"
    script.write_text(ATEXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert not any(map(_running, pids))  # gone by the time the script returned


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
