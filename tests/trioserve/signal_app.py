"""The application the signal tests serve: ``trioserve run tests/trioserve/signal_app.py:app``.

Served by path, it is imported as the top-level module ``signal_app``: keep it free of
relative imports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

import trioserve as serve


@serve.deployment(num_replicas=2, graceful_shutdown_timeout_s=20)
class Slow:
    """Streams ``started``, then works for ``?seconds=S`` (forever without it), then streams
    ``done``: a request that is still in flight when the test signals the CLI."""

    async def __call__(self, request: serve.Request) -> AsyncIterator[str]:
        yield "started\n"
        seconds = request.query_params.get("seconds")
        if seconds is None:
            await trio.sleep_forever()
        await trio.sleep(float(seconds))  # the request's work, still going when signalled
        yield "done\n"


app = Slow.bind()
