"""Supervised process actors: a crashed actor is restarted in a fresh process.

Three counters run as OS processes under a one_for_one supervisor. We call each, make one
crash (``os._exit`` in a method: no cleanup, no goodbye), watch the supervisor start a new
process for it (new PID, fresh state) while its siblings carry on untouched, then leave both
blocks, which stops every process.

Run it: ``python examples/actors_supervision.py``.
"""

from __future__ import annotations

import os

import trio

import actors

NAMES = ("alpha", "beta", "gamma")
CRASHER = "beta"


class Counter:
    """A small stateful actor: counts its calls and can crash its own process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0

    async def hit(self) -> tuple[int, int]:
        """``(pid, calls so far)``."""
        self.hits += 1
        return os.getpid(), self.hits

    async def crash(self) -> None:
        os._exit(1)


def counter_child(name: str) -> actors.ChildSpec:
    spec = actors.ActorSpec(factory=Counter, args=(name,), name=name, grace_s=1.0)
    return actors.ChildSpec(id=name, actor=spec, restart="permanent")


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    return True


async def main() -> None:
    started_pids: list[int] = []
    crasher_restarted = trio.Event()

    def on_change(child_id: str, actor: actors.Actor | None) -> None:
        if actor is None:
            print(f"  supervisor: {child_id} stopped")
            return
        assert actor.pid is not None
        print(f"  supervisor: {child_id} started as PID {actor.pid}")
        if child_id == CRASHER and supervisor_ready.is_set():
            crasher_restarted.set()
        started_pids.append(actor.pid)

    supervisor_ready = trio.Event()

    async with (
        actors.open_actor_system() as system,
        actors.open_supervisor(
            system, strategy="one_for_one", max_restarts=3, period_s=10.0, on_change=on_change
        ) as supervisor,
    ):
        for name in NAMES:
            await supervisor.start_child(counter_child(name))
        supervisor_ready.set()  # from now on, a start of the crasher is a restart

        before: dict[str, int] = {}
        for name in NAMES:
            actor = supervisor.actor(name)
            assert actor is not None
            for _ in range(2):
                pid, hits = await actor.ref.call("hit")
            print(f"{name}: PID {pid}, {hits} calls")
            before[name] = pid

        old = supervisor.actor(CRASHER)
        assert old is not None
        try:
            await old.ref.call("crash")
        except actors.ActorDiedError as exc:
            print(f"{CRASHER} crashed: {exc}")
        with trio.fail_after(10):
            await crasher_restarted.wait()

        new = supervisor.actor(CRASHER)
        assert new is not None
        assert new.pid != old.pid
        pid, hits = await new.ref.call("hit")
        assert (pid, hits) == (new.pid, 1), "a restarted actor starts from a fresh object"
        print(f"{CRASHER} restarted: old PID {old.pid} -> new PID {new.pid} ({hits} call)")

        for name in NAMES:
            if name != CRASHER:
                actor = supervisor.actor(name)
                assert actor is not None
                pid, hits = await actor.ref.call("hit")
                assert pid == before[name]
                print(f"{name}: untouched, PID {pid}, {hits} calls")
        print("leaving the supervisor: every actor process is stopped")

    assert not any(process_exists(pid) for pid in started_pids), "no process outlives its block"
    print(f"actors supervision: {CRASHER} restarted with a new PID; all actors stopped")


if __name__ == "__main__":
    trio.run(main)
