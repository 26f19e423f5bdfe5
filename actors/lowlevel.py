"""Runtime hooks for code that builds on actors (a serving framework, say), beside the user
surface in ``actors``: hosting an object yourself (:class:`ActorHost`, :func:`serve_host`),
how a host runs a method (:func:`method_kind`), push and duplex streams
(:func:`push_stream`, :func:`duplex_stream`, :class:`StreamSender`), and the one way
generators are driven (:func:`pump_generator`).
"""

from __future__ import annotations

from ._future import StreamSender as StreamSender
from ._host import ActorHost as ActorHost
from ._host import pump_generator as pump_generator
from ._methods import duplex_stream as duplex_stream
from ._methods import method_kind as method_kind
from ._methods import push_stream as push_stream
from ._serve import serve_host as serve_host

__all__ = [
    "ActorHost",
    "StreamSender",
    "duplex_stream",
    "method_kind",
    "pump_generator",
    "push_stream",
    "serve_host",
]


def _fixup_module_metadata() -> None:
    """Reprs and tracebacks name ``actors.lowlevel.Name``, where users import it from."""
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        module = getattr(obj, "__module__", "")
        if module.startswith("actors._") and getattr(obj, "__qualname__", None) == name:
            obj.__module__ = "actors.lowlevel"


_fixup_module_metadata()
del _fixup_module_metadata
