"""The async handle: dynamic dispatch inside a deployment, driven from a Trio app.

``Dispatcher`` receives handles to two models through ``bind`` and picks one per request.
``handle.remote(...)`` submits the request at once and returns a ``DeploymentResponse``;
a single ``await`` gives its value (while the request waits for a replica, the task does
not block anything else).

The driver is a Trio program: ``async with serve.open_serve(http_port=None) as instance``
owns every replica, and leaving the block stops them all.

Run it: ``python examples/async_handle.py``
"""

from __future__ import annotations

import trio

import trioserve as serve


@serve.deployment
class SmallModel:
    async def __call__(self, text: str) -> str:
        await trio.sleep(0.01)  # quick and cheap
        return f"small:{len(text.split())}"


@serve.deployment(num_replicas=2)
class LargeModel:
    async def __call__(self, text: str) -> str:
        await trio.sleep(0.05)  # slower, for long inputs
        return f"large:{len(text.split())}"


@serve.deployment
class Dispatcher:
    def __init__(self, small: serve.DeploymentHandle, large: serve.DeploymentHandle) -> None:
        self.small = small
        self.large = large

    async def __call__(self, text: str) -> str:
        # Decided per request, from its content: short texts go to the small model.
        chosen = self.small if len(text.split()) <= 3 else self.large
        response: serve.DeploymentResponse = chosen.remote(text)  # submitted now
        result: str = await response  # the replica has answered
        return result


TEXTS = [
    "hi",
    "how are you",
    "the quick brown fox jumps over the lazy dog",
    "ok",
    "serving models on trio with supervised replica processes",
    "one two three four",
]


async def main() -> None:
    async with serve.open_serve(http_port=None) as instance:
        app = Dispatcher.bind(SmallModel.bind(), LargeModel.bind())
        handle: serve.DeploymentHandle = await instance.run(app)

        # One request: submit, then await the value.
        first = await handle.remote("hello there")
        print(f"'hello there' -> {first}")
        assert first == "small:2"

        # Many requests at once from concurrent tasks; each awaits only its own.
        results: dict[str, str] = {}

        async def ask(text: str) -> None:
            results[text] = await handle.remote(text)

        async with trio.open_nursery() as nursery:
            for text in TEXTS:
                nursery.start_soon(ask, text)

        for text in TEXTS:
            print(f"{text!r} -> {results[text]}")
            words = len(text.split())
            assert results[text] == f"{'small' if words <= 3 else 'large'}:{words}"
        used = sorted({result.split(":")[0] for result in results.values()})
        assert used == ["large", "small"]
    print(f"async handle: {len(TEXTS) + 1} requests dispatched to {' and '.join(used)} models")


if __name__ == "__main__":
    trio.run(main)
