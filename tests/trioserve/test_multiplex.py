"""Model multiplexing: the LRU, one load per model, model-aware routing across replica
processes, per-request model ids, and the HTTP header."""

from __future__ import annotations

import os
import random
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trioserve as serve
from trioserve._handles.balance import pick_replica_for_model
from trioserve._replica.multiplex import ModelLRU


def test_model_lru_evicts_least_recently_used_first() -> None:
    """Beyond capacity the model used longest ago goes first; a touch renews a model."""
    lru = ModelLRU(2)
    assert lru.add("a") == []
    assert lru.add("b") == []
    lru.touch("a")
    assert lru.add("c") == ["b"]
    assert lru.ids() == ["a", "c"]


def test_pick_for_model_prefers_holders_then_least_loaded() -> None:
    """A replica holding the model wins while it has room; else the least loaded one."""
    rng = random.Random(0)
    holds = [False, True, False]
    assert pick_replica_for_model([0, 3, 1], 4, rng, holds) == 1
    assert pick_replica_for_model([2, 4, 1], 4, rng, holds) == 2  # the holder is full
    assert pick_replica_for_model([4, 4, 4], 4, rng, holds) is None
    # no holder: the replica holding the fewest models, even if busier
    assert pick_replica_for_model([0, 1, 2], 4, rng, [False] * 3, held=[2, 1, 0]) == 2


class Closing:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name = name
        self.closed = closed

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed.append(self.name)


class Loader:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.closed: list[str] = []
        self.gate = trio.Event()

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Closing:
        self.loads.append(model_id)
        await self.gate.wait()
        return Closing(model_id, self.closed)


async def test_multiplexed_concurrent_requests_share_one_load() -> None:
    """Ten concurrent requests for a model that is loading wait for the same load."""
    loader = Loader()
    got: list[Closing] = []

    async def ask() -> None:
        got.append(await loader.get_model("m"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        loader.gate.set()
    assert loader.loads == ["m"]
    assert len({id(m) for m in got}) == 1


async def test_multiplexed_evicts_lru_and_calls_its_close_hook() -> None:
    """With room for two, a third model evicts the least recently used, awaiting aclose."""
    loader = Loader()
    loader.gate.set()
    await loader.get_model("a")
    await loader.get_model("b")
    await loader.get_model("a")  # a hit: b is now the least recently used
    await loader.get_model("c")
    assert loader.closed == ["b"]
    assert loader.loads == ["a", "b", "c"]


def test_multiplexed_validates_its_arguments() -> None:
    """A bad capacity or a sync loader is refused with the bad value."""
    with pytest.raises(ValueError, match="max_num_models_per_replica must be an int >= 1"):
        serve.multiplexed(max_num_models_per_replica=0)
    with pytest.raises(TypeError, match="needs an async def loader"):
        serve.multiplexed(lambda self, model_id: None)


async def test_multiplexed_without_a_model_id_says_how_to_send_one() -> None:
    """Outside a multiplexed request, calling the loader without an id explains itself."""
    loader = Loader()
    with pytest.raises(ValueError, match="multiplexed_model_id"):
        await loader.get_model()  # type: ignore[call-arg]


@serve.deployment(num_replicas=3, max_ongoing_requests=4)
class Models:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> str:
        await trio.sleep(0.02)  # a model that takes a moment to load
        self.loaded.append(model_id)
        return f"model-{model_id}"

    async def __call__(self, request: Any = None) -> dict[str, Any]:
        model = await self.get_model(serve.get_multiplexed_model_id())
        model_id = serve.get_multiplexed_model_id()
        return {"model": model, "id": model_id, "pid": os.getpid(), "loaded": self.loaded}


@pytest.mark.slow
async def test_multiplexed_requests_stick_to_the_replica_holding_the_model() -> None:
    """Three replicas with room for two models each and six model ids: every model is
    loaded on exactly one replica, and its requests go there."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Models.bind(), name="models", route_prefix=None)
        ids = [f"m{i}" for i in range(6)]
        where: dict[str, set[int]] = {m: set() for m in ids}
        loaded: dict[int, list[str]] = {}
        for _ in range(3):
            for model_id in ids:
                answer = await handle.options(multiplexed_model_id=model_id).remote()
                assert answer["model"] == f"model-{model_id}"
                assert answer["id"] == model_id
                where[model_id].add(answer["pid"])
                loaded[answer["pid"]] = answer["loaded"]
        assert all(len(pids) == 1 for pids in where.values()), where
        assert len({next(iter(p)) for p in where.values()}) == 3
        # each model was loaded once, on its replica (no eviction: two per replica)
        every = [m for replica_loads in loaded.values() for m in replica_loads]
        assert sorted(every) == ids


@serve.deployment
class Down:
    async def __call__(self) -> str:
        await trio.lowlevel.checkpoint()
        return serve.get_multiplexed_model_id()


@serve.deployment
class Up:
    def __init__(self, down: serve.DeploymentHandle) -> None:
        self.down = down

    async def __call__(self) -> tuple[str, str, str]:
        before = serve.get_multiplexed_model_id()
        seen = await self.down.options(multiplexed_model_id="other").remote()
        return before, seen, serve.get_multiplexed_model_id()


@pytest.mark.slow
async def test_multiplexed_model_id_of_a_downstream_call_is_its_own() -> None:
    """A downstream call made with another model id sees that id; the caller's stays."""
    async with serve.open_serve(http_port=None) as instance:
        handle = await instance.run(Up.bind(Down.bind()), name="chain", route_prefix=None)
        assert await handle.options(multiplexed_model_id="mine").remote() == (
            "mine",
            "other",
            "mine",
        )


@pytest.mark.slow
async def test_multiplexed_model_id_from_the_http_header() -> None:
    """``serve_multiplexed_model_id`` in an HTTP request sets the request's model id."""
    async with serve.open_serve(http_port=0) as instance:
        await instance.run(Models.options(num_replicas=1).bind(), name="m", route_prefix="/m")
        async with httpx.AsyncClient(base_url=instance.http_url or "", timeout=10) as http:
            answer = await http.get("/m", headers={"serve_multiplexed_model_id": "abc"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == "abc"
        assert answer.json()["model"] == "model-abc"
