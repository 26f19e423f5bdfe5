"""Keeping the garbage collector's full collections short in long-running processes.

A full (oldest-generation) collection traverses every object the collector tracks. In a
server most of them are long-lived: imported modules, functions, classes, a loaded model.
On a 2-core VM a process that has imported Trio, Starlette and the project holds ~40,000
of them, and a full collection takes ~40 ms; with a few hundred open connections on top,
~90 ms. That pause stalls every request the process is serving (it set the p99 of the
hostile soak). :func:`freeze_long_lived` moves what exists once a process has started out
of the collector's reach (``gc.freeze()``, after a collection, so that no garbage is kept),
and later full collections traverse only what came after. Reference counting still frees
frozen objects that stop being referenced; only a frozen object in a reference cycle that
becomes garbage is never reclaimed, so a process freezes once, when it has started.

A forked process inherits its parent's frozen objects (so the fork server's preloaded
modules stay frozen, and their memory pages are not written to, in every replica).
"""

from __future__ import annotations

import gc
import os

#: the process that froze (a fork has another pid, so it freezes what it builds once more;
#: what it inherited stays frozen)
_frozen_in = 0


def freeze_long_lived() -> bool:
    """Collect, then freeze every tracked object, the first time it is called in this
    process (later calls do nothing: see the module's docstring). Returns whether it froze."""
    global _frozen_in
    if _frozen_in == os.getpid():
        return False
    _frozen_in = os.getpid()
    gc.collect()
    gc.freeze()
    return True
