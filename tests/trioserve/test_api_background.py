"""The script API's background serve loop: an error that ends it after it started is logged
and named by every later call, never lost.

Plain ``def`` tests (the sync API must not be called from a Trio thread); each shuts the
instance down however it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
import trio

import trioserve as serve
from trioserve import _api

from . import serve_fixtures as fx


def _crash_serve_loop(error: BaseException) -> None:
    """Make a task of the running instance's own nursery raise ``error`` (as a crashing
    serve task would), and wait until the loop's thread has ended."""
    bg = _api._background
    assert bg is not None
    assert bg.instance is not None
    assert bg.token is not None
    nursery = bg.instance._controller._nursery

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise error

    trio.from_thread.run_sync(nursery.start_soon, fail, trio_token=bg.token)
    bg._thread.join(timeout=30)
    assert not bg._thread.is_alive()


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_background_crash_is_logged_and_raised_by_the_next_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A crashed serve loop is logged with its traceback, and the script API and sync
    handles raise ServeShutdownError from it until serve.shutdown()."""
    caplog.set_level(logging.ERROR, logger="trioserve")
    handle = serve.run(fx.Model.bind(2), name="model")
    assert handle.remote(1).result() == 2
    error = RuntimeError("the serve loop broke")

    _crash_serve_loop(error)

    records = [r for r in caplog.records if r.name == "trioserve" and r.exc_info]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is error
    assert "stopped with an error" in records[0].getMessage()
    calls: dict[str, Callable[[], object]] = {
        "serve.status()": serve.status,
        "serve.run()": lambda: serve.run(fx.Model.bind(3), name="other"),
        "serve.get_app_handle('model')": lambda: serve.get_app_handle("model"),
        "SyncHandle.remote()": lambda: handle.remote(1),
    }
    for what, call in calls.items():
        with pytest.raises(serve.ServeShutdownError, match="the serve loop broke") as info:
            call()
        assert str(info.value).startswith(what)
        assert info.value.__cause__ is error

    serve.shutdown()  # clears the crashed instance: the next start makes a new one
    assert serve.status().applications == {}
    serve.start(http_port=None)  # (serve.run would start one on the fixed port 8000)
    assert serve.run(fx.Model.bind(3), name="again").remote(1).result() == 3


@serve.deployment
class SlowStart:
    """A constructor that takes a minute (the loop crashes while it is deployed)."""

    def __init__(self) -> None:
        time.sleep(60)  # a constructor that blocks its own process, not the test


@pytest.mark.slow
@pytest.mark.usefixtures("sync_serve")
def test_background_crash_fails_a_call_in_flight() -> None:
    """A script API call waiting on the loop when it crashes raises ServeShutdownError from
    the crash instead of hanging."""
    outcome: list[BaseException] = []

    def deploy() -> None:
        try:
            serve.run(SlowStart.bind(), name="slow")
        except BaseException as exc:  # why: handed to the test's thread to check
            outcome.append(exc)

    thread = threading.Thread(target=deploy)
    thread.start()
    deadline = time.monotonic() + 30
    while "slow" not in serve.status().applications:
        assert time.monotonic() < deadline, "the deploy never started"
        time.sleep(0.01)  # polling another thread's progress, bounded by the deadline
    error = RuntimeError("the serve loop broke mid-call")

    _crash_serve_loop(error)
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], serve.ServeShutdownError)
    assert outcome[0].__cause__ is error
