"""Applications from a config file: ``serve_config.yaml`` beside this script deploys two
applications (one with overrides, one from a builder with arguments), applied from Trio
code with ``instance.apply``, as ``trioserve run``/``deploy`` would apply it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio

import trioserve as serve


@serve.deployment
class Greeter:
    def __init__(self) -> None:
        self.greeting = "hello"

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.greeting = str(config["greeting"])

    async def __call__(self, request: serve.Request) -> dict[str, Any]:
        return {"greeting": self.greeting, "pid": os.getpid()}


@serve.deployment
class Counter:
    def __init__(self, start: int) -> None:
        self.count = start

    async def __call__(self, request: serve.Request) -> int:
        self.count += 1
        return self.count


greeter = Greeter.bind()


def build_counter(args: dict[str, str]) -> serve.Application:
    """A builder: the config's ``args`` arrive here."""
    return Counter.bind(int(args.get("start", "0")))


async def main() -> None:
    config = Path(__file__).with_name("serve_config.yaml")
    async with serve.open_serve(http_port=0) as instance:
        await instance.apply(config)
        async with httpx.AsyncClient(base_url=instance.http_url or "", timeout=10) as http:
            answers = [(await http.get("/greet")).json() for _ in range(10)]
            assert {a["greeting"] for a in answers} == {"bonjour"}
            assert len({a["pid"] for a in answers}) == 2
            counts = [(await http.get("/count")).json() for _ in range(3)]
            assert counts == [11, 12, 13]
    print("config file: 2 applications deployed from serve_config.yaml")


if __name__ == "__main__":
    trio.run(main)
