"""actors: an actor runtime on Trio.

Actors are objects hosted as OS processes (or, inline, as Trio tasks in this process) and
called over authenticated websockets carrying msgspec envelopes, supervised the Erlang/OTP
way. ``actors.lowlevel`` has the hooks a framework building on actors needs (hosting an
object yourself, method kinds, push and duplex streams); ``actors.testing`` has helpers for
tests (an actor, a listener or a connection for the length of a block).
"""

from __future__ import annotations

from ._future import CallFuture as CallFuture
from ._future import StreamReceiver as StreamReceiver
from ._groups import unwrap_lone_error as unwrap_lone_error
from ._inline import InlineRef as InlineRef
from ._inline import run_inline_actor as run_inline_actor
from ._link import DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from ._link import HEARTBEAT_TIMEOUT_S as HEARTBEAT_TIMEOUT_S
from ._process import ActorSystem as ActorSystem
from ._process import open_actor_system as open_actor_system
from ._public import fixup_module_metadata as _fixup_module_metadata
from ._ref import ActorRef as ActorRef
from ._ref import RemoteRef as RemoteRef
from ._serve import instance_token as instance_token
from ._spec import Actor as Actor
from ._spec import ActorSpec as ActorSpec
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor
from ._transport import connect as connect
from ._transport import open_connection as open_connection
from ._transport import serve_links as serve_links
from ._wire import PROTOCOL as PROTOCOL
from .exceptions import ActorDiedError as ActorDiedError
from .exceptions import ActorError as ActorError
from .exceptions import AuthenticationError as AuthenticationError
from .exceptions import CallCancelledError as CallCancelledError
from .exceptions import CallNotDeliveredError as CallNotDeliveredError
from .exceptions import ConnectTimeoutError as ConnectTimeoutError
from .exceptions import DeadlineExceededError as DeadlineExceededError
from .exceptions import MessageTooLargeError as MessageTooLargeError
from .exceptions import ProtocolError as ProtocolError
from .exceptions import RejectedError as RejectedError
from .exceptions import RemoteError as RemoteError
from .exceptions import SpawnError as SpawnError
from .exceptions import SupervisorGaveUpError as SupervisorGaveUpError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEARTBEAT_TIMEOUT_S",
    "PROTOCOL",
    "Actor",
    "ActorDiedError",
    "ActorError",
    "ActorRef",
    "ActorSpec",
    "ActorSystem",
    "AuthenticationError",
    "CallCancelledError",
    "CallFuture",
    "CallNotDeliveredError",
    "ChildSpec",
    "ConnectTimeoutError",
    "DeadlineExceededError",
    "InlineRef",
    "MessageTooLargeError",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "RemoteRef",
    "SpawnError",
    "StreamReceiver",
    "Supervisor",
    "SupervisorGaveUpError",
    "connect",
    "instance_token",
    "open_actor_system",
    "open_connection",
    "open_supervisor",
    "run_inline_actor",
    "serve_links",
    "unwrap_lone_error",
]


_fixup_module_metadata(globals(), __all__, "actors")
del _fixup_module_metadata
