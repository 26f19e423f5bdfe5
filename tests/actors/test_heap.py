"""Freezing a started process's long-lived objects (``actors/_heap.py``): once per process,
after a collection; and in every actor process once it serves."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import trio

import actors

from .actors_fixtures import worker_spec

#: run in a fresh interpreter: freezing is once per process, and the test process may
#: have frozen already (every serve instance does)
_ONCE = textwrap.dedent(
    """
    import gc, weakref
    from actors.lowlevel import freeze_long_lived

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a          # a cycle only the collector frees
    gone = weakref.ref(a)
    del a, b
    kept = Node()
    before = gc.get_freeze_count()  # not always 0 (3.12 starts with some)
    assert freeze_long_lived() is True
    assert gone() is None, "the garbage was frozen instead of collected"
    frozen = gc.get_freeze_count()
    assert frozen > before
    assert freeze_long_lived() is False
    assert gc.get_freeze_count() == frozen
    print("ok")
    """
)


def test_freeze_long_lived_collects_first_and_freezes_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ONCE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("spawn_method", ["fork", "exec"])
async def test_an_actor_process_freezes_what_it_built_before_serving(spawn_method: str) -> None:
    """By the time it answers, an actor process's start-up objects (its modules, the
    object it serves) are out of the collector's reach, forked or started afresh."""
    async with (
        actors.open_actor_system(spawn_method=spawn_method) as system,
        trio.open_nursery() as nursery,
    ):
        actor = await nursery.start(system.run_actor, worker_spec())
        assert await actor.ref.call("frozen_objects") > 10_000
        nursery.cancel_scope.cancel()
