"""Wall-clock breakdown of one ``dp.prune`` call by pipeline stage (for ``docs/benchmarks.md``).

The stage functions are wrapped (monkeypatched) for the duration of a ``with StageTimer()`` block;
each wrapper charges its *exclusive* time (its own time minus that of the wrapped stages it
calls) to its stage, so the stages add up to the timed total and nested calls are not counted
twice. What no stage claims is reported as ``other`` (argument checks, the result table, ...).

Stages: ``copy`` (the weightless structural copy the tracer runs on), ``trace`` (torch.fx
symbolic trace), ``shape propagation`` (the traced graph run on meta tensors), ``build``
(coupling rules, components, groups), ``score`` (the importance criterion), ``plan`` (ratios,
ranking, selection), ``surgery``, ``check`` (the validation run, and the numerical verification
where the package has one) and ``MAC counting``.
"""
from __future__ import annotations

import time
from collections import defaultdict

STAGES = ["copy", "trace", "shape propagation", "build", "score", "plan", "surgery", "check", "MAC counting",
          "other"]


def _targets():
    """(stage, owner object, attribute name) of every function to wrap, where it exists."""
    import importlib
    # import_module, not ``import a.b as b``: the package re-exports functions under some module
    # names (depgraph_prune.prune is also the function dp.prune)
    mod = importlib.import_module
    builder, dg = mod("depgraph_prune.graph.builder"), mod("depgraph_prune.graph.dependency_graph")
    imp, measure, prune = mod("depgraph_prune.importance"), mod("depgraph_prune.measure"), mod("depgraph_prune.prune")
    surgery, trace_pkg, symbolic = mod("depgraph_prune.surgery"), mod("depgraph_prune.trace"), mod("depgraph_prune.trace.symbolic")
    out = [
        ("copy", trace_pkg, "structural_copy"), ("copy", symbolic, "structural_copy"),
        ("trace", trace_pkg, "trace"), ("trace", symbolic, "trace"),
        ("shape propagation", symbolic, "_propagate_shapes"),
        ("build", builder, "build_context"), ("build", dg, "build_context"), ("build", dg, "make_groups"),
        ("build", dg.DependencyGraph, "__init__"),
        ("score", imp.Importance, "__call__"),
        ("plan", prune, "_plan"), ("plan", prune, "_search_plan"),
        ("surgery", surgery, "apply_plan"),
        ("check", surgery, "check_runs"),
        ("MAC counting", measure, "count_ops"), ("MAC counting", prune, "count_ops"),
    ]
    for name in ("macs_after", "_count_after", "_macs_after"):
        if hasattr(prune, name):
            out.append(("MAC counting", prune, name))
    try:  # the numerical verification step, where the package has one
        verify = mod("depgraph_prune.verify")
        out.append(("check", verify, "apply"))
    except ImportError:
        pass
    return [(s, o, a) for s, o, a in out if a in vars(o)]


class StageTimer:
    """``with StageTimer() as st: dp.prune(...)``; then ``st.seconds`` maps stage → seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []
        self._saved: list = []
        self.total = 0.0

    def _wrap(self, stage, fn):
        timer = self

        def wrapped(*args, **kwargs):
            t0 = time.perf_counter()
            timer._stack.append([stage, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                st, children = timer._stack.pop()
                elapsed = time.perf_counter() - t0
                timer.seconds[st] += elapsed - children
                if timer._stack:
                    timer._stack[-1][1] += elapsed
        wrapped.__wrapped__ = fn
        return wrapped

    def __enter__(self):
        seen = {}
        for stage, owner, attr in _targets():
            fn = vars(owner)[attr]
            # one wrapper per function object, shared by every name it is imported under
            w = seen.get(id(fn)) or self._wrap(stage, fn)
            seen[id(fn)] = w
            self._saved.append((owner, attr, fn))
            setattr(owner, attr, w)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.total = time.perf_counter() - self._t0
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved.clear()
        self.seconds["other"] = max(0.0, self.total - sum(v for k, v in self.seconds.items() if k != "other"))
        return False


def breakdown(make, run, repeat: int = 3) -> dict[str, float]:
    """Median seconds per stage (and ``total``) over ``repeat`` calls of ``run(*make())``: ``make``
    builds a fresh model and its inputs (not timed), ``run`` prunes it."""
    import gc
    import statistics
    runs = []
    for _ in range(repeat):
        args = make()
        gc.collect()
        with StageTimer() as st:
            run(*args)
        runs.append({**st.seconds, "total": st.total})
        del args
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in STAGES + ["total"]}
