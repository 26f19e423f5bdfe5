"""Applications for the config-file, control-endpoint and CLI tests (imported by path)."""

from __future__ import annotations

import os
from typing import Any

import trioserve as serve


@serve.deployment
class Greeter:
    """Answers HTTP with a greeting; ``user_config`` changes it in place."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.greeting = str(config.get("greeting", self.greeting))

    async def __call__(self, request: Any) -> dict[str, Any]:
        return {"greeting": self.greeting, "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()


@serve.deployment
class Doubler:
    async def __call__(self, request: Any) -> dict[str, int]:
        return {"pid": os.getpid()}


greeter = Greeter.bind()
doubler = Doubler.bind()


def build_greeter(args: dict[str, str]) -> serve.Application:
    """A builder: ``trioserve run tests.trioserve.config_apps:build_greeter greeting=hi``."""
    return Greeter.bind(args.get("greeting", "hello"))
