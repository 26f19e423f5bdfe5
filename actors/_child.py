"""The child side of a process actor: ``python -m actors._child``.

It reads its parent's address and the instance token from its environment (and removes
the token from it at once: processes that user code starts do not inherit it), connects
back, says hello, receives its spec, builds the object, serves calls on its own listener
and reports the address. It exits when told to stop, or at once when the control link to
its parent goes away (the parent died, even by SIGKILL). A watchdog thread ends it too,
within ``PARENT_GONE_GRACE_S`` of its parent's death (plus ``PARENT_POLL_S`` where there
is no pidfd), even while user code blocks its Trio loop. The parent is the actor system's
process, also for a child of the fork server: it outlives the fork server.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from typing import Any

import cloudpickle
import msgspec
import trio

from . import _codec, _wire
from ._heap import freeze_long_lived
from ._host import ActorHost
from ._inline import build_object
from ._link import Link
from ._process import ENV_CHILD_ID, ENV_PARENT, ENV_PARENT_PID
from ._serve import serve_host, take_token_from_environment
from ._spec import ActorSpec
from ._transport import open_raw_link

#: how often the watchdog thread checks that the parent process is still there
PARENT_POLL_S = 0.25
#: once the parent is gone, how long the Trio loop gets to end the child by itself before
#: the watchdog ends it
PARENT_GONE_GRACE_S = 1.0


async def _serve_object(
    spec: ActorSpec, obj: object, token: str, bind_host: str, control: Link, inbox: Any
) -> None:
    async with trio.open_nursery() as calls:
        host = ActorHost(obj, calls, name=spec.name, max_ongoing=spec.max_ongoing)
        async with trio.open_nursery() as listener:
            bound, port = await listener.start(
                lambda task_status: serve_host(
                    host,
                    token=token,
                    bind=bind_host,
                    port=0,
                    max_message_size=spec.max_message_size,
                    max_connections=spec.max_connections,
                    task_status=task_status,
                )
            )
            freeze_long_lived()  # built and listening: what exists now lives as long as we do
            control.send_nowait(_wire.Ready(bound, port))
            async for env in inbox:
                if type(env) is _wire.Stop:
                    host.stop_accepting()
                    with trio.move_on_after(env.grace_s):
                        await host.wait_idle()
                    with trio.move_on_after(1.0):
                        await host.flush()
                    # Every answer is out: end at once (closing sockets gracefully only
                    # makes the parent wait; it learns of the exit from the process itself).
                    _exit_now(0)
            listener.cancel_scope.cancel()
        calls.cancel_scope.cancel()


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load_spec(blob: bytes) -> tuple[ActorSpec, str]:
    """The parent's ``sys.path`` goes first, so that the spec's classes can be imported."""
    sys_path, spec_blob, bind_host = msgspec.msgpack.decode(blob)
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    spec = cloudpickle.loads(spec_blob)
    if not isinstance(spec, ActorSpec):
        raise TypeError(f"expected an ActorSpec, got {type(spec).__name__}")
    return spec, bind_host


async def _main(token: str, parent: str, child_id: str) -> int:
    send, inbox = trio.open_memory_channel[_wire.Envelope](64)
    code = 0
    async with open_raw_link(parent, token=token) as ws:
        control = Link(ws, send.send_nowait, on_close=lambda _r: send.close())
        async with trio.open_nursery() as nursery:

            async def run_control() -> None:
                await control.run()
                nursery.cancel_scope.cancel()  # the parent is gone: stop everything

            nursery.start_soon(run_control)
            code = await _run_child(control, inbox, token, child_id)
            nursery.cancel_scope.cancel()
    return code


async def _run_child(control: Link, inbox: Any, token: str, child_id: str) -> int:
    control.send_nowait(_wire.Hello(child_id, os.getpid()))
    env = await inbox.receive()
    if type(env) is not _wire.Spec:
        return 2
    try:
        # unpickling imports the user's modules: on a worker thread, so that a slow import
        # does not stall this process's heartbeats
        spec, bind_host = await trio.to_thread.run_sync(_load_spec, env.blob)
        obj = await build_object(spec)
    except Exception as exc:
        control.send_nowait(_wire.SpecFailed(_wire.Raw(_codec.encode_error(exc))))
        with trio.move_on_after(2):
            await inbox.receive()  # the parent reads it, then stops us or hangs up
        return 1
    await _serve_object(spec, obj, token, bind_host, control, inbox)
    return 0


def _watch_parent(parent_pid: int, pidfd: int) -> None:
    """Thread: end the process once its parent (the actor system's process: for a child of
    the fork server, not the fork server) is gone. It does not depend on the Trio loop,
    which user code may block (``time.sleep`` in an ``async def``). On Linux it waits on a
    pidfd of the parent (no polling, and no mistaking a new process that reused the pid);
    elsewhere (``pidfd`` -1) it polls."""
    if pidfd >= 0:
        select.select([pidfd], [], [])  # readable once the parent has exited
    elif parent_pid == os.getppid():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)  # a thread of its own: nothing to wait on but the clock
    else:
        while _alive(parent_pid):
            time.sleep(PARENT_POLL_S)
    time.sleep(PARENT_GONE_GRACE_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the pid is only checked
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # there, but not ours to signal
    return True


def main() -> None:
    token = take_token_from_environment()
    parent = os.environ.pop(ENV_PARENT, "")
    child_id = os.environ.pop(ENV_CHILD_ID, "")
    parent_pid = int(os.environ.pop(ENV_PARENT_PID, "") or os.getppid())
    if not (token and parent and child_id):
        print("actors._child is started by an actor system, not by hand", file=sys.stderr)
        os._exit(2)
    pidfd = -1  # opened here, before anything runs: the parent is watched from the start
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or the parent is gone
        pidfd = os.pidfd_open(parent_pid)
    threading.Thread(
        target=_watch_parent, args=(parent_pid, pidfd), name="actors-parent-watch", daemon=True
    ).start()
    code = 1
    try:
        code = trio.run(_main, token, parent, child_id)
    except BaseException:  # why: whatever happened, the process must end without hanging
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        _exit_now(code)  # user threads must not keep an orphaned child alive


if __name__ == "__main__":
    main()
