"""Runtime hooks for code that builds on actors (a serving framework, say), beside the user
surface in ``actors``: hosting an object yourself (:class:`ActorHost`, :func:`serve_host`),
how a host runs a method (:func:`method_kind`), push and duplex streams
(:func:`push_stream`, :func:`duplex_stream`, :class:`StreamSender`), the one way
generators are driven (:func:`pump_generator`), and keeping a server's full garbage
collections short (:func:`freeze_long_lived`).
"""

from __future__ import annotations

from ._future import StreamSender as StreamSender
from ._heap import freeze_long_lived as freeze_long_lived
from ._host import ActorHost as ActorHost
from ._host import pump_generator as pump_generator
from ._methods import duplex_stream as duplex_stream
from ._methods import method_kind as method_kind
from ._methods import push_stream as push_stream
from ._public import fixup_module_metadata as _fixup_module_metadata
from ._serve import serve_host as serve_host

__all__ = [
    "ActorHost",
    "StreamSender",
    "duplex_stream",
    "freeze_long_lived",
    "method_kind",
    "pump_generator",
    "push_stream",
    "serve_host",
]


_fixup_module_metadata(globals(), __all__, "actors.lowlevel")
del _fixup_module_metadata
