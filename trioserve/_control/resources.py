"""What the host offers and what each replica holds: CPUs, GPUs, memory and custom
resources (pure: no Trio, no I/O beyond :func:`detect_capacity`).

A replica asks for ``Resources`` (``@serve.deployment(resources=...)`` or Ray's
``ray_actor_options``); the :class:`Ledger` of the serve instance grants it or says what is
short. GPUs are granted by id: a whole-number request gets that many GPUs of its own, a
fraction below one shares an id with other fractions (Ray's rule), packing onto the GPU
already most used so whole GPUs stay free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

import attrs

from .._config import Resources

EPSILON = 1e-9


@attrs.frozen(kw_only=True)
class Capacity:
    """What a host offers: CPUs, memory (bytes), GPU ids, and custom resources by name."""

    num_cpus: float
    memory: float = float("inf")
    gpu_ids: tuple[str, ...] = ()
    custom: Mapping[str, float] = attrs.field(factory=dict)


def _nvidia_smi_gpus() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU "))


def detect_capacity(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, float] | None = None
) -> Capacity:
    """This host's capacity: CPUs from the machine, GPUs from ``CUDA_VISIBLE_DEVICES`` if
    set, else from ``nvidia-smi -L``, else none; ``overrides`` (``num_cpus``, ``num_gpus``,
    ``memory``, custom names) replace what was detected."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = tuple(g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1")
    else:
        gpus = _nvidia_smi_gpus()
    extra = dict(overrides or {})
    cpus = float(extra.pop("num_cpus", os.cpu_count() or 1))
    memory = float(extra.pop("memory", float("inf")))
    if "num_gpus" in extra:
        count = int(extra.pop("num_gpus"))
        gpus = gpus[:count] if count <= len(gpus) else tuple(str(i) for i in range(count))
    return Capacity(num_cpus=cpus, memory=memory, gpu_ids=gpus, custom=extra)


@attrs.frozen(kw_only=True)
class Grant:
    """What one replica holds; ``gpu_ids`` go to its ``CUDA_VISIBLE_DEVICES``."""

    resources: Resources
    gpu_ids: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Shortage:
    """Why a request does not fit now: the resource, what is asked and what is free."""

    resource: str
    asked: float
    free: float
    total: float

    def describe(self) -> str:
        return (
            f"needs {self.asked:g} {self.resource}, {self.free:g} of {self.total:g} free "
            "(it starts as soon as enough is released)"
        )


@attrs.define
class Ledger:
    """Grants of one host's capacity to replicas, by replica key."""

    capacity: Capacity
    grants: dict[str, Grant] = attrs.field(factory=dict)

    def _used(self, name: str) -> float:
        return sum(_amount(g.resources, name) for g in self.grants.values())

    def _gpu_use(self) -> dict[str, float]:
        use = dict.fromkeys(self.capacity.gpu_ids, 0.0)
        for grant in self.grants.values():
            share = grant.resources.num_gpus
            per_id = share if share < 1 else 1.0
            for gpu in grant.gpu_ids:
                use[gpu] = use.get(gpu, 0.0) + per_id
        return use

    def _pick_gpus(self, want: float) -> tuple[str, ...] | None:
        if want <= 0:
            return ()
        use = self._gpu_use()
        if want < 1:
            fits = [g for g, u in use.items() if u + want <= 1 + EPSILON]
            if not fits:
                return None
            return (max(fits, key=lambda g: (use[g], g)),)  # pack onto the busiest that fits
        count = round(want)
        if abs(count - want) > EPSILON:
            return None  # validated earlier: above one, GPUs come whole
        free = [g for g, u in use.items() if u <= EPSILON]
        return tuple(free[:count]) if len(free) >= count else None

    def shortage(self, request: Resources) -> Shortage | None:
        """What ``request`` lacks now, or None if it fits."""
        cap = self.capacity
        totals = {"CPUs": cap.num_cpus, "memory": cap.memory, **cap.custom}
        asks = [("CPUs", request.num_cpus), ("memory", request.memory)]
        for name, asked in [*asks, *sorted(request.custom.items())]:
            if asked <= 0:
                continue
            total = totals.get(name, 0.0)
            free = total - self._used(name)
            if asked > free + EPSILON:
                return Shortage(resource=name, asked=asked, free=max(0.0, free), total=total)
        if request.num_gpus > 0 and self._pick_gpus(request.num_gpus) is None:
            use = self._gpu_use()
            free = sum(max(0.0, 1 - u) for u in use.values())
            if request.num_gpus >= 1:
                free = float(sum(1 for u in use.values() if u <= EPSILON))
            return Shortage(
                resource="GPUs", asked=request.num_gpus, free=free, total=len(cap.gpu_ids)
            )
        return None

    def grant(self, key: str, request: Resources) -> Grant | Shortage:
        """Grant ``request`` to ``key`` (replacing what it held), or say what is short."""
        held = self.grants.pop(key, None)
        short = self.shortage(request)
        if short is not None:
            if held is not None:
                self.grants[key] = held
            return short
        gpus = self._pick_gpus(request.num_gpus) or ()
        grant = Grant(resources=request, gpu_ids=gpus)
        self.grants[key] = grant
        return grant

    def release(self, key: str) -> None:
        self.grants.pop(key, None)


def _amount(resources: Resources, name: str) -> float:
    if name == "CPUs":
        return resources.num_cpus
    if name == "memory":
        return resources.memory
    return resources.custom.get(name, 0.0)
