"""How a deployment's class travels to replica processes.

``@serve.deployment`` replaces a class in its module with a ``Deployment``, so cloudpickle
no longer finds the class under its name and would ship it by value (with everything its
class attributes hold). A class from an importable module is therefore shipped as a
reference the replica imports; only classes from the user's ``__main__`` script (or
defined inside functions) travel by value; their code keeps its file name and line numbers
(the actor runtime pickles it so), so a replica's traceback names the user's script.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import attrs


@attrs.frozen
class TargetRef:
    """A deployment's class or function, by module and qualified name."""

    module: str
    qualname: str

    def load(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return getattr(obj, "target", obj) if _is_deployment(obj) else obj


def _is_deployment(obj: object) -> bool:
    from ._deployment import Deployment

    return isinstance(obj, Deployment)


def ship(target: Any) -> Any:
    """A :class:`TargetRef` when the replica can import ``target``, else ``target``."""
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<locals>" in qualname:
        return target
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is target or (_is_deployment(found) and found.target is target):
        return TargetRef(module_name, qualname)
    return target


def unship(target: Any) -> Any:
    return target.load() if isinstance(target, TargetRef) else target
