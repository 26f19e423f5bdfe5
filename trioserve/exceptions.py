"""Errors raised by trioserve.

The tree::

    ServeError
    ├── BackPressureError           the handle's queue is full (max_queued_requests)
    ├── ReplicaDiedError            the replica handling the request died
    ├── DeploymentUnavailableError  no such deployment, or it cannot be reached from here
    ├── DeploymentFailedError       a deployment could not start (its constructor raised)
    ├── RequestCancelledError       the request was cancelled
    ├── RequestTimeoutError         .result(timeout_s=...) or get/wait timed out
    ├── RequestTooLargeError        a request's arguments or its result exceed the message limit
    ├── ServeNotRunningError        no serve instance is running (serve.run() starts one)
    ├── PortInUseError              the HTTP or control port is taken by another process
    ├── ConfigError                 a config file does not validate (names the field)
    └── ServeShutdownError          the serve instance a handle belongs to was shut down

User exceptions raised inside a replica are re-raised in the caller with their own type,
message and the remote traceback (as a note and as ``remote_traceback``); they are not
wrapped. Lower-layer errors (``actors``) are translated to these at one seam, the router.
"""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """Root of every error trioserve raises itself."""


class BackPressureError(ServeError):
    """The request was refused because the handle's queue is full."""

    def __init__(self, deployment: str, num_queued: int, max_queued: int) -> None:
        super().__init__(
            f"deployment {deployment!r} has {num_queued} queued requests "
            f"(max_queued_requests={max_queued}); request dropped"
        )
        self.deployment = deployment
        self.num_queued = num_queued
        self.max_queued = max_queued

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.deployment, self.num_queued, self.max_queued))


class ReplicaDiedError(ServeError):
    """The replica that accepted the request died before answering."""

    def __init__(self, message: str, *, deployment: str, replica_id: str | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment
        self.replica_id = replica_id

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"deployment": self.deployment, "replica_id": self.replica_id}
        return (_rebuild, (type(self), self.args, fields))


class DeploymentUnavailableError(ServeError):
    """The deployment does not exist (any more), or cannot be reached from this process."""

    def __init__(self, message: str, *, deployment: str | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"deployment": self.deployment}))


class DeploymentFailedError(ServeError):
    """A deployment could not start; ``__cause__`` is the error its replica raised."""

    def __init__(self, message: str, *, deployment: str) -> None:
        super().__init__(message)
        self.deployment = deployment

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"deployment": self.deployment}))


class RequestCancelledError(ServeError):
    """The request was cancelled by its caller (``.cancel()`` or a cancelled task)."""


class RequestTimeoutError(ServeError, TimeoutError):
    """Waiting for a result took longer than the timeout given."""


class RequestTooLargeError(ServeError):
    """The request's arguments, or its result, are larger than a connection carries
    (``max_message_size``); ``__cause__`` is the runtime's ``MessageTooLargeError``."""

    def __init__(self, message: str, *, deployment: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.deployment = deployment
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"deployment": self.deployment, "size": self.size, "limit": self.limit}
        return (_rebuild, (type(self), self.args, fields))


class ServeNotRunningError(ServeError):
    """No serve instance is running in this process; ``serve.run()`` or ``serve.start()``
    starts one (status(), handle getters and delete() never start one themselves)."""


class ServeShutdownError(ServeError):
    """The serve instance this handle or response belongs to was shut down."""


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Unpickle an error whose constructor takes keyword-only fields."""
    return cls(*args, **kwargs)


class PortInUseError(ServeError, OSError):
    """A port the instance must listen on is already in use."""

    def __init__(self, host: str, port: int, option: str) -> None:
        super().__init__(
            f"cannot listen on {host}:{port}: the address is already in use; stop what "
            f"uses it, or choose another port ({option})"
        )
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, ...]:
        return (_port_in_use, (self.host, self.port, str(self)))


def _port_in_use(host: str, port: int, message: str) -> PortInUseError:
    error = PortInUseError.__new__(PortInUseError)
    Exception.__init__(error, message)
    error.host, error.port = host, port
    return error


class ConfigError(ServeError, ValueError):
    """A config file (or dict) is invalid; ``path`` names the bad field (``""``: the whole)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))
