"""Ray Serve's import path for configs: ``from trioserve.config import HTTPOptions``.

:class:`HTTPOptions` says where the script API's serve instance answers HTTP
(``serve.start(http_options=...)``); :class:`AutoscalingConfig` is the deployment option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._config import AutoscalingConfig as AutoscalingConfig

__all__ = ["AutoscalingConfig", "HTTPOptions"]


# the validators take Any: they check values users pass, of any type
def _check_host(_instance: object, _attribute: object, host: Any) -> None:
    if not isinstance(host, str) or not host:
        raise ValueError(
            f"HTTPOptions.host must be a non-empty str such as '127.0.0.1', got {host!r}"
        )


def _check_port(_instance: object, _attribute: object, port: Any) -> None:
    if port is None:
        return
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(
            f"HTTPOptions.port must be an int from 0 to 65535 (0: any free port) or None "
            f"(no HTTP proxy), got {port!r}"
        )


def _check_timeout(_instance: object, _attribute: object, timeout: Any) -> None:
    if timeout is None:
        return
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(
            f"HTTPOptions.request_timeout_s must be a number > 0 or None (no limit), "
            f"got {timeout!r}"
        )


@attrs.frozen(kw_only=True)
class HTTPOptions:
    """Where the HTTP proxy listens, and how long a request may take (504 past it)."""

    host: str = attrs.field(default="127.0.0.1", validator=_check_host)
    #: 0 picks a free port; None runs no HTTP proxy
    port: int | None = attrs.field(default=8000, validator=_check_port)
    request_timeout_s: float | None = attrs.field(default=None, validator=_check_timeout)

    @classmethod
    def coerce(cls, value: HTTPOptions | Mapping[str, Any]) -> HTTPOptions:
        """``value`` as HTTPOptions: an instance as it is, or a dict of its fields (Ray's
        ``serve.start(http_options={...})``)."""
        if isinstance(value, HTTPOptions):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"http_options must be an HTTPOptions or a dict, got {value!r}")
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown http_options {unknown}; HTTPOptions takes {sorted(known)}")
        return cls(**value)
