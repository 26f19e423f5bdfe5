"""The child side of the FastAPI reference: a plain FastAPI "hello" app on uvicorn.

One uvicorn worker, access log off, ``loop="auto"`` and ``http="auto"`` (uvloop and httptools
when they are installed, as with ``uvicorn[standard]``). ``GET /`` answers ``hello`` as
text/plain, the same body as trioserve's ``bench_apps.Hello``.

It binds 127.0.0.1 on a free port and prints ``PORT <n> LOOP <loop> HTTP <impl>`` on stdout
before serving. It stops on SIGTERM (the benchmark terminates it by PID) or when its stdin
reaches end of file (so it cannot outlive a benchmark process that was killed).

Run by ``bench/run.py`` (workload ``fastapi``); by hand: ``python bench/fastapi_server.py``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import threading

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return "hello"


def _watch_stdin() -> None:
    """SIGTERM ourselves (uvicorn then exits cleanly) when the parent closes our stdin."""
    while os.read(sys.stdin.fileno(), 1024):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    config = uvicorn.Config(
        app, loop="auto", http="auto", access_log=False, log_level="warning", workers=1
    )
    print(f"PORT {port} LOOP {loop} HTTP {http}", flush=True)
    threading.Thread(target=_watch_stdin, daemon=True).start()
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
