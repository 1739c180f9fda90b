"""Keeping Python's cycle collector out of the engine's way.

A pruning call allocates many short-lived objects (fx nodes, proxies, rule records). Every so
often that triggers a full collection, which walks *every* tracked object of the process: in a
process that has imported torch, torchvision and transformers that is a million objects and a
quarter of a second, more than the whole prune of a small network. While an engine call runs,
the objects that existed before it are moved to the collector's permanent generation
(``gc.freeze``), so collections only walk what the call itself allocated; garbage cycles made
inside the call are still collected. They are handed back (``gc.unfreeze``) when the outermost
call returns.
"""
from __future__ import annotations

import functools
import gc
import threading

_lock = threading.Lock()
_depth = 0
_froze = False


def _enter() -> None:
    global _depth, _froze
    with _lock:
        if _depth == 0:
            # a process that froze objects itself (a forking server) keeps its own arrangement
            _froze = gc.isenabled() and gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _depth += 1


def _exit() -> None:
    global _depth, _froze
    with _lock:
        _depth -= 1
        if _depth == 0 and _froze:
            gc.unfreeze()
            _froze = False


def old_objects_frozen(fn):
    """Decorator: run ``fn`` with the objects that predate the outermost engine call frozen."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()
    return run
