"""Import-path targets for the config-file tests (``tests/trioserve/test_schema.py``)."""

from __future__ import annotations

from typing import Any

import trioserve as serve


@serve.deployment
class Adder:
    def __init__(self, amount: int) -> None:
        self.amount = amount

    def __call__(self, x: int) -> int:
        return x + self.amount


@serve.deployment(num_replicas=2, max_ongoing_requests=8)
class Ingress:
    def __init__(self, adders: list[Any]) -> None:
        self.adders = adders

    def __call__(self, x: int) -> int:
        return x


app = Ingress.bind([Adder.bind(1)])


def build(args: dict[str, Any]) -> serve.Application:
    """A builder: ``import_path`` names it and the config's ``args`` reach it."""
    return Ingress.bind(
        [Adder.options(user_config={"amount": args["amount"]}).bind(args["amount"])]
    )


def not_a_builder(args: dict[str, Any]) -> str:
    return "not an application"


answer = 42
