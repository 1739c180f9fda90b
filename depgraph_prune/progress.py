"""Progress per pipeline stage (trace, build, score, plan, surgery, verify, count).

Code deep in the pipeline marks its stage with :func:`stage`; that costs nothing unless a caller
turned reporting on with :func:`reporting` (``dp.prune(..., progress=True)`` and the command line
do). A stage that finishes within :data:`DELAY` seconds prints nothing, so small models stay
quiet; a slower one gets a ``tqdm`` line on stderr that counts its steps (groups scored, plans
tried) or, for one-step stages, its elapsed time::

    >>> from depgraph_prune import progress
    >>> with progress.reporting() as rep:
    ...     with progress.stage("score", total=3) as s:
    ...         for _ in range(3):
    ...             s.update()
    >>> [name for name, _ in rep.timings]
    ['score']

New pipeline steps report themselves with ``with progress.stage("verify"): ...``.
"""
from __future__ import annotations

import contextvars
import functools
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["DELAY", "LABELS", "Reporter", "reporting", "reports", "stage"]

DELAY = 0.5
"""Seconds a stage must run before its progress line appears."""

LABELS = {"trace": "trace (torch.fx + shapes)", "build": "build graph (couplings, groups)",
          "score": "score channels", "plan": "plan (which channels go)", "surgery": "surgery",
          "verify": "verify (pruned == masked original)", "count": "count MACs / params"}

_current: contextvars.ContextVar["Reporter | None"] = contextvars.ContextVar("depgraph_prune_progress",
                                                                             default=None)


class _Quiet:
    """The stage handle when nobody is listening."""

    def update(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


class _Stage:
    def __init__(self, reporter: "Reporter", name: str, total: int | None, unit: str | None):
        from tqdm.auto import tqdm
        self.name = name
        label = LABELS.get(name, name)
        if total is not None:
            fmt = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
        elif unit:
            fmt = "{desc}: {n_fmt} " + unit.replace("{", "{{").replace("}", "}}") + " [{elapsed}]"
        else:
            fmt = "{desc}: {elapsed}"
        self.bar = tqdm(total=total, desc=label, file=reporter.file, delay=reporter.delay, leave=True,
                        bar_format=fmt, mininterval=0.25)
        self._stop = threading.Event()
        # tqdm redraws on update() only; a one-step stage (a trace) never updates, so a small
        # thread redraws the line once the delay has passed, then every second.
        self._thread = threading.Thread(target=self._tick, args=(reporter.delay,), daemon=True)
        self._thread.start()

    def _tick(self, delay: float) -> None:
        if self._stop.wait(delay):
            return
        while True:
            self.bar.refresh()
            self.bar.last_print_t = self.bar._time()  # what close() reads to know the line was shown
            if self._stop.wait(1.0):
                return

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_total(self, total: int | None) -> None:
        self.bar.total = total

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()


class Reporter:
    """Collects per-stage wall times (``timings``: ``(stage, seconds)`` in order) and shows a
    line per slow stage on ``file`` (stderr by default)."""

    def __init__(self, file=None, delay: float | None = None):
        self.file = sys.stderr if file is None else file
        self.delay = DELAY if delay is None else float(delay)
        self.timings: list[tuple[str, float]] = []


@contextmanager
def reporting(enabled: bool = True, file=None, delay: float | None = None) -> Iterator[Reporter | None]:
    """Turn stage reporting on for the code inside (a no-op when ``enabled`` is false or when an
    outer ``reporting`` is already active: the outer one keeps reporting)."""
    if not enabled:
        yield None
        return
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    rep = Reporter(file, delay)
    token = _current.set(rep)
    try:
        yield rep
    finally:
        _current.reset(token)


def reports(arg: str = "progress"):
    """Decorator: run the function inside :func:`reporting` when its keyword argument ``arg`` is
    true (``@reports("progress")`` on ``dp.prune``)."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with reporting(bool(kwargs.get(arg, False))):
                return fn(*args, **kwargs)
        return run
    return wrap


@contextmanager
def stage(name: str, total: int | None = None, unit: str | None = None):
    """Mark the code inside as pipeline stage ``name``; yields a handle with ``update(n=1)``
    (one more of ``total`` steps done) and ``set_total(n)``. ``unit`` names the steps of a stage
    of unknown length (shown as ``12 plans measured``)."""
    rep = _current.get()
    if rep is None:
        yield _Quiet()
        return
    t0 = time.perf_counter()
    s = _Stage(rep, name, total, unit)
    try:
        yield s
    finally:
        s.close()
        rep.timings.append((name, time.perf_counter() - t0))
