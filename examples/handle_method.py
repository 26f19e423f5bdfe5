"""Calling a specific method through a handle, with the sync and the async handle.

``handle.remote(...)`` calls ``__call__``; ``handle.other_method.remote(...)`` calls
another method, and ``handle.options(method_name="other_method")`` makes a handle whose
``.remote()`` always calls it. Sync and async methods of the deployment both work.

Run it: ``python examples/handle_method.py``
"""

from __future__ import annotations

import trio

import trioserve as serve


@serve.deployment
class Counter:
    def __init__(self, start: int) -> None:
        self.count = start

    def __call__(self, label: str) -> str:
        return f"__call__: {label}"

    def increment(self, by: int = 1) -> int:
        self.count += by
        return self.count

    async def describe(self, label: str) -> str:  # async methods work the same way
        return f"describe: {label} (count={self.count})"


def sync_part() -> None:
    """From a plain script: ``serve.run`` gives a SyncHandle."""
    serve.start(http_port=None)
    try:
        handle = serve.run(Counter.bind(10))
        assert handle.remote("hi").result() == "__call__: hi"  # defaults to __call__
        assert handle.increment.remote().result() == 11  # a different method
        assert handle.increment.remote(by=4).result() == 15
        describe = handle.options(method_name="describe")
        text = describe.remote("sync").result()
        print(f"sync handle:  {text}")
        assert text == "describe: sync (count=15)"
    finally:
        serve.shutdown()


async def async_part() -> None:
    """From a Trio app: ``instance.run`` gives a DeploymentHandle."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Counter.bind(100))
        assert await handle.remote("hi") == "__call__: hi"
        assert await handle.increment.remote() == 101
        increment = handle.options(method_name="increment")
        assert [await increment.remote(by=n) for n in (1, 2, 3)] == [102, 104, 107]
        text = await handle.describe.remote("async")
        print(f"async handle: {text}")
        assert text == "describe: async (count=107)"


def main() -> None:
    sync_part()
    trio.run(async_part)
    print("handle method: __call__, increment and describe called via both handles")


if __name__ == "__main__":
    main()
