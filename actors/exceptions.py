"""Errors raised by the actor runtime.

The tree::

    ActorError
    ├── ActorDiedError            the actor's process or connection went away mid-call
    │   ├── CallNotDeliveredError  ... before the actor had read the call (it never ran)
    │   └── ConnectTimeoutError    connecting to the actor took longer than its deadline
    ├── RejectedError             the actor was at capacity; the call never started
    ├── CallCancelledError        the call was cancelled before it produced a result
    ├── DeadlineExceededError     the call's deadline passed on the actor
    ├── RemoteError               the actor raised a type that cannot be rebuilt here
    ├── MessageTooLargeError      an outgoing message exceeds the connection's limit
    ├── ProtocolError             the peer sent bytes that break the protocol
    ├── AuthenticationError       the peer refused our token (or we refused theirs)
    ├── SpawnError                a child process failed to start or build its object
    └── SupervisorGaveUpError     restart intensity exceeded; the supervisor stopped

Peer misbehaviour (``ProtocolError``) and local misuse (``ValueError``/``TypeError``) are kept
apart, as h11 does.
"""

from __future__ import annotations

from typing import Any


class ActorError(Exception):
    """Root of every error the actor runtime raises."""


class ActorDiedError(ActorError):
    """The actor went away (process exit, connection loss) while the call was in flight."""

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"actor": self.actor}))


class CallNotDeliveredError(ActorDiedError):
    """The actor went away before it acknowledged reading the call: the call never started
    there, so it is safe to send it to another actor."""


class ConnectTimeoutError(ActorDiedError):
    """Connecting to an actor (TCP and the websocket handshake) did not finish in time."""


class RejectedError(ActorError):
    """The actor refused the call because it was at ``max_ongoing``; it never ran."""

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"actor": self.actor}))


class CallCancelledError(ActorError):
    """The call was cancelled (by its caller or by the actor stopping) before it finished."""


class DeadlineExceededError(ActorError):
    """The call's deadline passed while the actor was still working on it."""


class RemoteError(ActorError):
    """An exception raised by the actor that cannot be rebuilt in this process: its type
    cannot be pickled there, or not unpickled (imported) here."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class MessageTooLargeError(ActorError):
    """A message is larger than the connection's ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds max_message_size={limit}; "
            "raise max_message_size on both ends or send less"
        )
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.limit))


class ProtocolError(ActorError):
    """The peer sent something the protocol does not allow; the connection is closed."""


class AuthenticationError(ActorError):
    """The websocket handshake was refused because the instance token did not match."""


class SpawnError(ActorError):
    """A child process could not be started, or its object's constructor raised."""


class SupervisorGaveUpError(ActorError):
    """A supervisor exceeded its restart intensity and stopped all of its children."""

    def __init__(self, message: str, *, child: str, restarts: int, period_s: float) -> None:
        super().__init__(message)
        self.child = child
        self.restarts = restarts
        self.period_s = period_s

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"child": self.child, "restarts": self.restarts, "period_s": self.period_s}
        return (_rebuild, (type(self), self.args, fields))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Unpickle an error whose constructor takes keyword-only fields."""
    return cls(*args, **kwargs)
