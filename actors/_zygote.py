"""A fork server for actor processes: ``python -m actors._zygote``.

Starting a fresh interpreter and importing Trio, trio-websocket, msgspec and cloudpickle
costs a few hundred milliseconds of CPU per process. The zygote pays that once: it imports
them (and any modules named in ``ACTORS_PRELOAD``), then forks a child per request. A child
runs exactly what ``python -m actors._child`` runs. The zygote never starts a Trio loop or
a thread, so forking it is safe.

Protocol, over two pipes (file descriptors given in ``ACTORS_ZYGOTE_FDS``): the parent
writes one JSON line per spawn, ``{"id": ..., "env": {...}}``; the zygote answers
``pid <id> <pid>`` and, when a child exits, ``exit <pid> <code>``. When the request pipe
closes (the parent is gone), the zygote exits; its children notice their parent's
departure on their own control links.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys

from actors._forkserver import ENV_FDS, ENV_PRELOAD


def _report(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")  # one small write: atomic on a pipe


def _reap(fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _report(fd, f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def _child(request: dict[str, object], fds: tuple[int, int]) -> None:
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
    for name in filter(None, os.environ.pop(ENV_PRELOAD, "").split(",")):
        try:
            importlib.import_module(name)
        except Exception as exc:  # why: a module that fails here is imported by the child
            print(f"actors zygote: cannot preload {name}: {exc!r}", file=sys.stderr)
    import actors._child  # noqa: F401  (the point: imported once, shared by every fork)

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
            pid = os.fork()
            if pid == 0:
                _child(request, (req_fd, resp_fd))
            _report(resp_fd, f"pid {request['id']} {pid}")
    _reap(resp_fd)
    os._exit(0)


if __name__ == "__main__":
    main()
