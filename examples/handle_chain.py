"""Chaining: pass a response, un-awaited, as an argument to another handle call.

``Chain`` calls its first model and hands the pending response straight to the second
model's ``.remote()``: the second request is queued at once and goes to a replica as soon
as the first one's value is there. ``Chain`` itself awaits only the final result.
Responses may also sit inside lists, tuples and dicts passed as arguments.

Run it: ``python examples/handle_chain.py``
"""

from __future__ import annotations

import trioserve as serve


@serve.deployment
class Prepend:
    def __init__(self, word: str) -> None:
        self.word = word

    def __call__(self, text: str) -> str:
        return f"{self.word} {text}"


@serve.deployment
class Join:
    def __call__(self, parts: list[str]) -> str:
        return " / ".join(parts)


@serve.deployment
class Chain:
    def __init__(
        self,
        first: serve.DeploymentHandle,
        second: serve.DeploymentHandle,
        join: serve.DeploymentHandle,
    ) -> None:
        self.first = first
        self.second = second
        self.join = join

    async def __call__(self, text: str) -> str:
        pending = self.first.remote(text)  # not awaited
        # The second model receives the first one's value, not the response object.
        result: str = await self.second.remote(pending)
        return result

    async def pair(self, a: str, b: str) -> str:
        # Both model calls run at once; Join gets the list of their values.
        parts = [self.first.remote(a), self.second.remote(b)]
        result: str = await self.join.remote(parts)
        return result


def main() -> None:
    serve.start(http_port=None)
    try:
        hello = Prepend.options(name="Hello").bind("hello")
        well = Prepend.options(name="Well").bind("well,")
        handle = serve.run(Chain.bind(hello, well, Join.bind()), name="chain")

        chained = handle.remote("Serve").result()
        print(f"chained inside a deployment: {chained!r}")
        assert chained == "well, hello Serve"

        paired = handle.pair.remote("a", "b").result()
        print(f"responses in a list, inside a deployment: {paired!r}")
        assert paired == "hello a / well, b"

        # The same from the driver with sync handles: pass the SyncResponse on.
        hello_handle = serve.get_deployment_handle("Hello", app_name="chain")
        well_handle = serve.get_deployment_handle("Well", app_name="chain")
        join_handle = serve.get_deployment_handle("Join", app_name="chain")
        direct = well_handle.remote(hello_handle.remote("Trio")).result()
        print(f"chained from the driver: {direct!r}")
        assert direct == "well, hello Trio"

        joined = join_handle.remote([hello_handle.remote("x"), well_handle.remote("y")]).result()
        print(f"responses in a list, from the driver: {joined!r}")
        assert joined == "hello x / well, y"
    finally:
        serve.shutdown()
    print(f"handle chain: {chained}")


if __name__ == "__main__":
    main()
