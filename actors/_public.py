"""Public names say where users import them from (trio's ``fixup_module_metadata`` idea)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def fixup_module_metadata(namespace: dict[str, Any], names: Iterable[str], public: str) -> None:
    """Set ``__module__`` of the classes and functions ``names`` in ``namespace`` that are
    defined in a private module of actors to ``public``: reprs and tracebacks then read
    ``actors.Name`` (or ``actors.lowlevel.Name``)."""
    for name in names:
        obj = namespace[name]
        module = getattr(obj, "__module__", "")
        if module.startswith("actors._") and getattr(obj, "__qualname__", None) == name:
            obj.__module__ = public
