"""The older handle API (seed 001): ``Deployment.get_handle(sync=...)``.

Deploy with ``serve.run``, then ask the deployment class itself for a handle.
``sync=True`` (the default) gives a ``SyncHandle`` for plain code; ``sync=False`` gives a
``DeploymentHandle`` for code running in the serve instance's Trio loop.

It also shows the recommended way to serve the same logic over HTTP and from Python:
``__call__`` (which HTTP requests reach, with a ``serve.Request``) and Python callers both
use one internal method, ``say_hello``.

Run it: ``python examples/get_handle.py``
"""

from __future__ import annotations

import trio

import trioserve as serve


@serve.deployment
class Greeter:
    def say_hello(self, name: str) -> str:
        return f"Hello {name}!"

    def __call__(self, request: serve.Request) -> str:
        # HTTP: GET /?name=Alice -> "Hello Alice!"
        return self.say_hello(request.query_params["name"])


def sync_part() -> None:
    serve.start(http_port=None)
    try:
        serve.run(Greeter.bind())
        handle = Greeter.get_handle(sync=True)
        assert isinstance(handle, serve.SyncHandle)

        # Python callers use the internal method directly...
        from_python = handle.say_hello.remote("Alice").result()
        print(f"handle.say_hello.remote('Alice') -> {from_python}")
        # ...and __call__ gives the same answer for the request HTTP would deliver.
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"name=Alice"}
        request = serve.Request({**scope, "headers": []})
        from_request = handle.remote(request).result()
        print(f"handle.remote(Request(GET /?name=Alice)) -> {from_request}")
        assert from_python == from_request == "Hello Alice!"
    finally:
        serve.shutdown()


async def async_part() -> None:
    async with serve.open_serve(http_port=None) as instance:
        await instance.run(Greeter.bind())
        handle = Greeter.get_handle(sync=False)
        assert isinstance(handle, serve.DeploymentHandle)
        greeting = await handle.say_hello.remote("Bob")
        print(f"async handle.say_hello.remote('Bob') -> {greeting}")
        assert greeting == "Hello Bob!"


def main() -> None:
    sync_part()
    trio.run(async_part)
    print("get handle: Hello Alice! / Hello Bob!")


if __name__ == "__main__":
    main()
