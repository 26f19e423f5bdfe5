"""The child side of the raw baseline: a bare trio-websocket + msgspec echo server.

No framework: each websocket message holds one msgpack-encoded ``[id, value]`` request; the
server decodes it with msgspec, encodes the same ``[id, value]`` back and sends it as one
message. One task per connection reads and answers in order.

It binds 127.0.0.1 on a free port and prints ``PORT <n>`` on stdout once listening. It stops
on SIGTERM (the benchmark terminates it by PID) or when its stdin reaches end of file (so it
cannot outlive a benchmark process that was killed).

Run by ``bench/run.py``; by hand: ``python bench/raw_echo_server.py`` (then close stdin).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class Echo(msgspec.Struct, array_like=True):
    """One request or reply: a request id and the value (any msgpack data)."""

    id: int
    value: Any


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    decode = msgspec.msgpack.Decoder(Echo).decode
    encode = msgspec.msgpack.Encoder().encode
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(encode(decode(message)))
    except ConnectionClosed:
        pass


async def watch_stdin(cancel_scope: trio.CancelScope) -> None:
    """End the server when the parent closes our stdin (or dies)."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    try:
        while await stdin.receive_some(1024):
            pass
    finally:
        cancel_scope.cancel()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler,
                "127.0.0.1",
                0,
                None,
                max_message_size=MAX_MESSAGE_SIZE,
                task_status=task_status,
            )
        )
        print(f"PORT {server.port}", flush=True)
        nursery.start_soon(watch_stdin, nursery.cancel_scope)


if __name__ == "__main__":
    trio.run(main)
