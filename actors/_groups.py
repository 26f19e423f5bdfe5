"""Exception groups at the edge of the runtime's context managers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_lone_error() -> Iterator[None]:
    """Re-raise a group holding a single error as that error (a public context manager's
    lone error is its user's, not a group); a group of several propagates as it is. The
    error is raised outside the handler, so its own cause and context stay as they were."""
    lone: BaseException | None = None
    try:
        yield
    except BaseExceptionGroup as group:  # why: unwrapped when alone, else re-raised
        if len(group.exceptions) != 1:
            raise
        lone = group.exceptions[0]
    if lone is not None:
        raise lone
