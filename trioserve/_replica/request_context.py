"""The HTTP request a replica is answering, for user code: ``serve.get_request_context()``.

The replica sets it around each HTTP request it answers (in the request's task, so worker
threads and tasks started from it see it too); elsewhere -- handle calls, code outside a
request -- it is the empty :class:`RequestContext`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import attrs


@attrs.frozen(kw_only=True)
class RequestContext:
    """What a replica knows about the HTTP request it is answering."""

    #: the request's id: the client's ``x-request-id`` if it sent one, else 32 random hex digits;
    #: the proxy returns it in the response's ``x-request-id`` header and logs it with errors
    request_id: str = ""
    #: the route prefix of the application the request was routed to
    route: str = ""
    #: the application's name
    app_name: str = ""


_EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "trioserve_request_context", default=_EMPTY
)


def get_request_context() -> RequestContext:
    """The HTTP request being answered (the empty context outside an HTTP request)."""
    return _current.get()


@contextmanager
def request_context(context: RequestContext) -> Iterator[None]:
    """``context`` is the current request context inside this block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
