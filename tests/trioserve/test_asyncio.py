"""Deployments on asyncio (``event_loop="asyncio"``) and handles awaited from asyncio code
(real replica processes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import trioserve as serve

from .test_cli import REPO
from .test_lifecycle import _eventually


@serve.deployment
class Doubler:
    async def __call__(self, x: int) -> int:
        await trio.sleep(0.001)
        return 2 * x


@serve.deployment(event_loop="asyncio")
class AsyncioIngress:
    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    async def __call__(self, n: int) -> list[int]:
        await asyncio.sleep(0.001)
        return list(await asyncio.gather(*[self.down.remote(i) for i in range(n)]))

    async def wait_forever(self, marker: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            Path(marker).write_text("cancelled")  # noqa: ASYNC240  # why: one tiny write, in a test
            raise

    async def timeout(self) -> str:
        try:
            await asyncio.wait_for(self.down.remote(1), timeout=5)
        except TimeoutError:
            return "timed out"
        return "answered"

    async def loop_kind(self) -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__.split(".")[0]


@serve.deployment
class TrioOnly:
    async def __call__(self) -> None:
        await asyncio.sleep(0.001)


def test_asyncio_event_loop_option_is_validated() -> None:
    """Only "trio" and "asyncio" are event loops."""
    with pytest.raises(ValueError, match="event_loop must be 'trio' or 'asyncio', got 'uv'"):
        AsyncioIngress.options(event_loop="uv")


@pytest.mark.slow
async def test_asyncio_deployment_runs_asyncio_and_gathers_trio_responses() -> None:
    """An asyncio deployment uses asyncio.sleep, asyncio.gather over responses of a Trio
    deployment, and asyncio.wait_for, all on an asyncio loop."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(AsyncioIngress.bind(Doubler.bind()), name="aio")
        assert await handle.remote(6) == [0, 2, 4, 6, 8, 10]
        assert await handle.loop_kind.remote() == "asyncio"
        assert await handle.timeout.remote() == "answered"


@pytest.mark.slow
async def test_asyncio_cancellation_reaches_the_asyncio_task(tmp_path: Path) -> None:
    """Cancelling a request cancels the asyncio task running it in the replica."""
    marker = tmp_path / "cancelled"
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(AsyncioIngress.bind(Doubler.bind()), name="aio")
        response = handle.wait_forever.remote(str(marker))
        with trio.move_on_after(0.3):
            await response
        response.cancel()

        async def written() -> bool:
            await trio.lowlevel.checkpoint()
            return marker.exists()

        await _eventually(written)
        assert marker.read_text() == "cancelled"


@pytest.mark.slow
async def test_asyncio_code_in_a_trio_deployment_says_what_to_set() -> None:
    """asyncio code without the option fails with a note naming event_loop="asyncio"."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(TrioOnly.bind(), name="trio", route_prefix=None)
        with pytest.raises(RuntimeError, match="no running event loop") as info:
            await handle.remote()
        assert any('event_loop="asyncio"' in note for note in info.value.__notes__)


SCRIPT = """
import asyncio
import trioserve as serve


@serve.deployment
class Model:
    async def __call__(self, x: int) -> int:
        return x + 1


serve.start(http_port=None)  # no proxy: a fixed port would clash with other tests' runs
serve.run(Model.bind())


async def main() -> None:
    handle = serve.get_app_handle("default", sync=False)
    one = await handle.remote(1)
    many = await asyncio.gather(*[handle.remote(i) for i in range(5)])
    print(one, list(many), flush=True)


asyncio.run(main())
serve.shutdown()
"""


@pytest.mark.slow
def test_asyncio_program_awaits_handles_of_a_running_instance(tmp_path: Path) -> None:
    """A script that called serve.run awaits async handles inside asyncio.run."""
    script = tmp_path / "aio_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "2 [1, 2, 3, 4, 5]"
