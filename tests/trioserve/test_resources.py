"""Resources: the host's capacity, GPU ids granted to replicas, pending replicas, env_vars,
and Ray's ``ray_actor_options`` spelling."""

from __future__ import annotations

import os

import pytest
import trio

import trioserve as serve
from trioserve._config import DeploymentConfig, Resources, apply_options
from trioserve._control.resources import Capacity, Grant, Ledger, Shortage, detect_capacity


def _grant(ledger: Ledger, key: str, **ask: float) -> Grant | Shortage:
    return ledger.grant(key, Resources.from_value(ask))


def test_detect_capacity_reads_cuda_visible_devices_and_overrides() -> None:
    """GPUs come from CUDA_VISIBLE_DEVICES when set; overrides replace what was detected."""
    cap = detect_capacity({"CUDA_VISIBLE_DEVICES": "0,2"}, {"num_cpus": 3, "tpu": 1})
    assert cap.gpu_ids == ("0", "2")
    assert cap.num_cpus == 3
    assert cap.custom == {"tpu": 1}
    assert detect_capacity({"CUDA_VISIBLE_DEVICES": ""}).gpu_ids == ()


def test_ledger_gives_whole_gpus_distinct_ids() -> None:
    """Three replicas asking for one GPU each get three different ids; a fourth is short."""
    ledger = Ledger(Capacity(num_cpus=8, gpu_ids=("0", "1", "2")))
    ids = [_grant(ledger, f"r{i}", num_gpus=1) for i in range(3)]
    assert all(isinstance(g, Grant) for g in ids)
    assert sorted(g.gpu_ids[0] for g in ids if isinstance(g, Grant)) == ["0", "1", "2"]
    short = _grant(ledger, "r3", num_gpus=1)
    assert isinstance(short, Shortage)
    assert short.resource == "GPUs"
    assert "needs 1 GPUs, 0 of 3 free" in short.describe()
    ledger.release("r1")
    again = _grant(ledger, "r3", num_gpus=1)
    assert isinstance(again, Grant)
    assert again.gpu_ids == ids[1].gpu_ids


def test_ledger_packs_fractional_gpus_onto_one_id() -> None:
    """Two half-GPU replicas share one GPU, leaving the other whole for a full request."""
    ledger = Ledger(Capacity(num_cpus=8, gpu_ids=("0", "1")))
    a = _grant(ledger, "a", num_gpus=0.5)
    b = _grant(ledger, "b", num_gpus=0.5)
    assert isinstance(a, Grant)
    assert isinstance(b, Grant)
    assert a.gpu_ids == b.gpu_ids
    whole = _grant(ledger, "c", num_gpus=1)
    assert isinstance(whole, Grant)
    assert whole.gpu_ids != a.gpu_ids


def test_ledger_counts_cpus_memory_and_custom_resources() -> None:
    """CPU, memory and custom requests are counted against the capacity, naming what is short."""
    ledger = Ledger(Capacity(num_cpus=2, memory=100, custom={"accel": 1}))
    assert isinstance(_grant(ledger, "a", num_cpus=1.5, memory=60), Grant)
    short = _grant(ledger, "b", num_cpus=1)
    assert isinstance(short, Shortage)
    assert short.resource == "CPUs"
    assert short.free == 0.5
    short = _grant(ledger, "c", memory=50)
    assert isinstance(short, Shortage)
    assert short.resource == "memory"
    assert isinstance(_grant(ledger, "d", accel=1), Grant)
    short = _grant(ledger, "e", accel=1)
    assert isinstance(short, Shortage)
    assert short.resource == "accel"
    short = _grant(ledger, "f", unknown_thing=1)
    assert isinstance(short, Shortage)
    assert short.total == 0


def test_ray_actor_options_become_resources_and_env_vars() -> None:
    """Ray's spelling is an alias of trioserve's own options."""
    config = apply_options(
        DeploymentConfig(),
        {
            "ray_actor_options": {
                "num_cpus": 1,
                "num_gpus": 0.5,
                "resources": {"accel": 2},
                "runtime_env": {"env_vars": {"MODE": "fast"}},
            }
        },
    )
    assert config.resources == Resources(num_cpus=1, num_gpus=0.5, custom={"accel": 2})
    assert config.env_vars == {"MODE": "fast"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"ray_actor_options": {"num_cpu": 1}},
            r"unknown ray_actor_options key\(s\) \['num_cpu'\]",
        ),
        ({"ray_actor_options": {"runtime_env": {"pip": ["x"]}}}, r"runtime_env key\(s\) \['pip'\]"),
        ({"resources": {"num_gpus": -1}}, "num_gpus must be a number >= 0, got -1"),
        ({"resources": {"num_gpus": 1.5}}, "num_gpus above 1 must be a whole number"),
        ({"env_vars": {"A": 1}}, "env_vars must be a dict of str to str"),
    ],
)
def test_resource_options_bad_values_raise_clearly(
    options: dict[str, object], message: str
) -> None:
    """Bad resource options raise with the bad value named."""
    with pytest.raises((ValueError, TypeError), match=message):
        apply_options(DeploymentConfig(), options)


@serve.deployment
class Env:
    def env(self, name: str) -> str | None:
        return os.environ.get(name)


async def _wait_pending(instance: serve.ServeInstance, app: str) -> str:
    with trio.fail_after(20):
        while True:
            status = (await instance.status()).applications.get(app)
            if status is not None:
                dep = status.deployments["Env"]
                if dep.replicas and dep.replicas[0].state == "PENDING":
                    return dep.message
            await trio.sleep(0.02)  # follows the controller of real processes


@pytest.mark.slow
async def test_resources_gpu_replicas_get_distinct_ids_and_a_fourth_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under CUDA_VISIBLE_DEVICES=0,1,2 three one-GPU replicas each see their own GPU id;
    a fourth stays PENDING with a message naming GPUs, and starts once one is deleted."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    gpu = Env.options(ray_actor_options={"num_gpus": 1})
    async with serve.open_serve(http_port=None) as instance:
        seen = []
        for i in range(3):
            handle = await instance.run(gpu.bind(), name=f"g{i}", route_prefix=None)
            seen.append(await handle.env.remote("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen) == ["0", "1", "2"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: instance.run(gpu.bind(), name="g3", route_prefix=None))
            message = await _wait_pending(instance, "g3")
            assert "needs 1 GPUs, 0 of 3 free" in message
            await instance.delete("g1")
        handle = instance.get_app_handle("g3")
        assert await handle.env.remote("CUDA_VISIBLE_DEVICES") == seen[1]


@pytest.mark.slow
async def test_resources_env_vars_reach_the_replica() -> None:
    """``env_vars`` (and ``runtime_env.env_vars``) are in the replica's environment; a
    replica asking for no GPU on a host with none sees no CUDA_VISIBLE_DEVICES set by us."""
    async with serve.open_serve(http_port=None, resources={"num_gpus": 0}) as instance:
        handle = await instance.run(
            Env.options(env_vars={"MODEL_MODE": "fast"}).bind(), name="env", route_prefix=None
        )
        assert await handle.env.remote("MODEL_MODE") == "fast"
