"""The sync handle: call a deployment from a plain (non-Trio) script.

``serve.run(app)`` deploys the application and returns a ``SyncHandle`` to its ingress
deployment. ``handle.remote(...)`` blocks until a replica has accepted the request and
returns a ``SyncResponse``; ``.result()`` (or ``serve.get``) waits for the value.

Run it: ``python examples/sync_handle.py``
"""

from __future__ import annotations

import trioserve as serve


@serve.deployment(num_replicas=2)
class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def __call__(self, name: str = "world") -> str:
        return f"{self.greeting}, {name}!"


def main() -> None:
    serve.start(http_port=None)  # no HTTP proxy: nothing binds a fixed port
    try:
        handle: serve.SyncHandle = serve.run(Greeter.bind("hello"))

        ref = handle.remote()  # blocks until a replica has the request
        greeting = ref.result()  # blocks until the replica has answered
        print(f"handle.remote().result() -> {greeting!r} (served by {ref.replica_id})")
        assert greeting == "hello, world!"

        # serve.get takes one response, or a list of them (values come back in order).
        assert serve.get(handle.remote("trio")) == "hello, trio!"
        names = ["ada", "grace", "alan", "edsger"]
        greetings = serve.get([handle.remote(name) for name in names])
        print(f"serve.get([...]) -> {greetings}")
        assert greetings == [f"hello, {name}!" for name in names]
    finally:
        serve.shutdown()
    print("sync handle: 6 greetings received")


if __name__ == "__main__":
    main()
