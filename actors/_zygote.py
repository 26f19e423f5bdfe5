"""A fork server for actor processes: ``python -m actors._zygote``.

Starting a fresh interpreter and importing Trio, trio-websocket, msgspec and cloudpickle
costs a few hundred milliseconds of CPU per process. The zygote pays that once: it imports
them (and any modules named in ``ACTORS_PRELOAD``), then forks a child per request. A child
runs exactly what ``python -m actors._child`` runs. The zygote never starts a Trio loop or
a thread, so forking it is safe.

Protocol, over two pipes (file descriptors given in ``ACTORS_ZYGOTE_FDS``): the parent
writes one JSON line per spawn, ``{"id": ..., "env": {...}}``; the zygote answers
``pid <id> <pid>`` and, when a child exits, ``exit <pid> <code>``. ``{"kill": <pid>}`` asks
it to SIGKILL one of its children (one the parent could not take charge of; the zygote, its
parent, signals it safely: an unreaped PID is never reused). When the request pipe closes
(the parent is gone, or shutting down), the zygote waits for its children to notice their
parent's departure on their own control links and exit, kills any still running after
``ORPHAN_GRACE_S``, reaps them and exits: no child outlives it. The zygote runs in a
process group of its own (its children inherit it), away from the terminal's Ctrl-C.

The instance token is removed from the zygote's environment before anything is preloaded;
each child gets it back just before it runs (and removes it itself).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time

from actors._forkserver import ENV_FDS, ENV_PRELOAD
from actors._heap import freeze_long_lived
from actors._process import ENV_PARENT_PID
from actors._serve import ENV_TOKEN

#: once the parent is gone, how long children get to exit by themselves before SIGKILL
#: (less than the parent's ``ZYGOTE_EXIT_WAIT_S``: the zygote reaps them before it is
#: killed itself)
ORPHAN_GRACE_S = 3.0
#: the children forked and not yet reaped
_children: set[int] = set()


def _report(fd: int, line: str) -> None:
    # one small write: atomic on a pipe; once the parent is gone nobody reads reports
    with contextlib.suppress(OSError):
        os.write(fd, line.encode() + b"\n")


def _reap(fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _children.discard(pid)
        _report(fd, f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def _outlive_children(fd: int) -> None:
    """The parent is gone: wait (bounded) for every child to exit, then kill the rest."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    deadline = time.monotonic() + ORPHAN_GRACE_S
    _reap(fd)
    while _children and time.monotonic() < deadline:
        time.sleep(0.02)  # no Trio here (the zygote forks): poll, bounded by the deadline
        _reap(fd)
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        _children.discard(pid)


def _kill(pid: int) -> None:
    """SIGKILL a child that is not reaped yet (its exit is reported as any other)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        if pid in _children:  # not reaped (SIGCHLD is blocked): the PID is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _child(request: dict[str, object], fds: tuple[int, int], token: str, driver: int) -> None:
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ[ENV_TOKEN] = token  # the child takes it out of its environment first thing
    # the child lives as long as the actor system that asked for it, not as long as this
    # fork server (which may die first: the system then starts a new one)
    os.environ[ENV_PARENT_PID] = str(driver)
    env = request.get("env")
    if isinstance(env, dict):
        os.environ.update({str(k): str(v) for k, v in env.items()})
        # the interpreter has started already: of its start-up variables, PYTHONPATH is
        # honoured by hand (spawn_method="exec" honours all of them)
        extra = [p for p in str(env.get("PYTHONPATH", "")).split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
    from actors._child import main

    main()  # never returns: the child ends with os._exit


def main() -> None:
    req_fd, resp_fd = (int(x) for x in os.environ.pop(ENV_FDS).split(","))
    token = os.environ.pop(ENV_TOKEN, "")  # before any preloaded module can see it
    driver = os.getppid()  # the actor system's process, which started this one
    for name in filter(None, os.environ.pop(ENV_PRELOAD, "").split(",")):
        try:
            importlib.import_module(name)
        except Exception as exc:  # why: a module that fails here is imported by the child
            print(f"actors zygote: cannot preload {name}: {exc!r}", file=sys.stderr)
    import actors._child  # noqa: F401  (the point: imported once, shared by every fork)

    freeze_long_lived()  # every fork inherits the preloaded modules frozen

    signal.signal(signal.SIGCHLD, lambda _sig, _frame: _reap(resp_fd))
    requests = os.fdopen(req_fd, "rb", buffering=0)
    buffer = b""
    while True:
        chunk = requests.read(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if "kill" in request:
                _kill(int(request["kill"]))
                continue
            # a child that exits at once is reaped only after it is counted
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                _child(request, (req_fd, resp_fd), token, driver)
            _children.add(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _report(resp_fd, f"pid {request['id']} {pid}")
    _outlive_children(resp_fd)
    os._exit(0)


if __name__ == "__main__":
    main()
