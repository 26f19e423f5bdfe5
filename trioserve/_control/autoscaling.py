"""The autoscaling decision (sans-IO): how many replicas a deployment should have.

Load is what handles report: requests queued in routers (including those waiting for
chained arguments) plus requests in flight at replicas, averaged over the look-back window.
The desired count is ``load / target_ongoing_requests``, moved towards by the smoothing
factors, clamped to ``[min_replicas, max_replicas]``; it is applied only once it has held
for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down), so noise does not flap the
count. A deployment at zero replicas with any load scales to one at once.
"""

from __future__ import annotations

import collections
import math

import attrs

from .._config import AutoscalingConfig


class LoadWindow:
    """Load samples over the look-back period; their mean is the load the policy sees."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, now: float, load: float) -> None:
        self._samples.append((now, load))
        while self._samples and now - self._samples[0][0] > self.period_s:
            self._samples.popleft()

    def average(self) -> float:
        if not self._samples:
            return 0.0
        return sum(load for _, load in self._samples) / len(self._samples)


def desired_replicas(config: AutoscalingConfig, *, current: int, load: float) -> int:
    """The replica count the load asks for (before delays), clamped to min/max."""
    if current == 0:
        raw = math.ceil(load / config.target_ongoing_requests) if load > 0 else 0
        return max(config.min_replicas, min(config.max_replicas, raw))
    wanted = load / config.target_ongoing_requests
    if wanted > current:
        factor = config.upscaling_factor or config.smoothing_factor
        target = current + (wanted - current) * factor
    elif wanted < current:
        factor = config.downscaling_factor or config.smoothing_factor
        target = current - (current - wanted) * factor
    else:
        target = wanted
    desired = math.ceil(round(target, 6))
    if wanted < current:
        if math.ceil(round(wanted, 6)) >= current:
            desired = current  # the load still needs every replica there is
        elif desired >= current:
            desired = current - 1  # a smoothed step smaller than one replica still steps down
    return max(config.min_replicas, min(config.max_replicas, desired))


@attrs.define
class ScalingState:
    """Since when the policy has wanted more (or fewer) replicas than there are."""

    upscale_since: float | None = None
    downscale_since: float | None = None


def decide_replicas(
    config: AutoscalingConfig, state: ScalingState, *, current: int, load: float, now: float
) -> int:
    """The replica count to have now; ``state`` carries the delays between calls."""
    desired = desired_replicas(config, current=current, load=load)
    if current == 0 and desired > 0:
        state.upscale_since = state.downscale_since = None
        return desired  # scale from zero at once: a request is waiting
    if desired > current:
        state.downscale_since = None
        if state.upscale_since is None:
            state.upscale_since = now
        if now - state.upscale_since >= config.upscale_delay_s:
            state.upscale_since = None
            return desired
        return current
    if desired < current:
        state.upscale_since = None
        if state.downscale_since is None:
            state.downscale_since = now
        if now - state.downscale_since >= config.downscale_delay_s:
            state.downscale_since = None
            return desired
        return current
    state.upscale_since = state.downscale_since = None
    return current
