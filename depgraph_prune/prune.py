"""The one-call API: ``prune(model, example_inputs, ...)`` and ``build_graph``."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from torch import nn

from . import importance as _imp
from ._fast_meta import to_meta as _to_meta
from ._gc import old_objects_frozen
from ._walk import parameters as _parameters
from .errors import PruningError
from .graph import DependencyGraph
from . import progress as _progress
from .graph.reuse import after_prune
from .measure import OpCount, _human, count_ops
from .plan import (check_ratio, global_plan, group_ratios, layer_widths, local_plan, part_ratios,  # noqa: F401
                   select_channels)


@old_objects_frozen
def build_graph(model: nn.Module, example_inputs: Any, *, ignored_layers: Iterable = (),
                leaf_modules: Iterable = (), frozen: Iterable = (), attention: str = "heads") -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and group its coupled channels.

    ``ignored_layers``: modules (or names) whose *output* channels are kept. ``frozen``: modules
    (names, objects or types) none of whose widths change. ``leaf_modules``: modules kept whole
    in the trace (their channels are frozen unless a rule for their type exists). ``attention``:
    how ``nn.MultiheadAttention`` shrinks: ``"heads"`` (default) removes whole heads, keeping
    ``head_dim`` and with it the softmax scale, so removing a dead head preserves the function;
    ``"head_dim"`` removes the same positions from every head, keeping ``num_heads`` (the module
    derives its scale ``1/sqrt(head_dim)`` from the new width, as it defines it).

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> graph = dp.build_graph(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> graph.group_of("layer1.0.conv1").size
        64
    """
    return DependencyGraph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                           frozen=frozen, attention=attention)


@dataclass
class PruneResult:
    """What ``prune`` did: operation counts before and after, each pruned group's width, and the
    settings it ran with (``settings``: ratio, importance, scope, targets, ...)."""

    before: OpCount
    after: OpCount
    widths: list[tuple[str, int, int]] = field(default_factory=list)  # (first member, before, after)
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frozen: list[tuple[str, int, str]] = field(default_factory=list)  # (first member, channels, reason)
    settings: dict = field(default_factory=dict)
    #: what the numerical check did, one report per surgery (see :mod:`depgraph_prune.verify`)
    verification: list = field(default_factory=list)
    layers: list[tuple[str, int, int]] = field(default_factory=list)  # (conv/linear module, before, after)

    @property
    def min_kept(self) -> tuple[float, str] | None:
        """``(fraction, module)`` of the pruned layer that keeps the smallest fraction of its output
        channels, or None when no layer was pruned."""
        if not self.layers:
            return None
        name, w0, w1 = min(self.layers, key=lambda r: (r[2] / max(r[1], 1), r[0]))
        return w1 / max(w0, 1), name

    @property
    def speedup(self) -> float:
        """MACs before / after (1.0 for a model that does no multiply-accumulates)."""
        if self.before.macs == 0:
            return 1.0
        return self.before.macs / max(self.after.macs, 1)

    def __str__(self) -> str:
        b, a = self.before, self.after

        def frac(after: int, before: int) -> str:
            return f"{after / before:.3f}" if before else "-"

        lines = []
        if self.settings:
            lines.append(f"settings: {describe_settings(self.settings)}")
        lines += [f"{'':10}{'before':>16}{'after':>16}{'after/before':>14}",
                  f"{'MACs':10}{_human(b.macs, 'MACs'):>16}{_human(a.macs, 'MACs'):>16}{frac(a.macs, b.macs):>14}",
                  f"{'params':10}{_human(b.params, 'params', ' '):>16}{_human(a.params, 'params', ' '):>16}"
                  f"{frac(a.params, b.params):>14}"]
        if b.macs:
            lines.append(f"speedup (MACs before / after): {self.speedup:.3f}x")
        else:
            lines.append("speedup: - (the model does no multiply-accumulates on this input)")
        lines.append(f"{len(self.widths)} groups pruned")
        for name, w0, w1 in self.widths[:12]:
            lines.append(f"  {name:<44} {w0:>6} -> {w1:<6}")
        if len(self.widths) > 12:
            lines.append(f"  ... {len(self.widths) - 12} more")
        inner = [f for f in self.frozen if not f[2].startswith(("reaches the model output", "model input"))]
        if inner:
            lines.append(f"{len(inner)} groups keep frozen channels (never pruned), e.g.:")
            for name, n, reason in inner[:5]:
                lines.append(f"  {name} ({n} channels): {reason}")
        from .verify import describe
        for rep in self.verification:
            lines.append(f"verified: {describe(rep)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


#: the note of a result pruned without ``optimizer=`` (the command line, which has none, leaves it out)
OPTIMIZER_NOTE = ("no optimizer was passed: an optimizer created before pruning still holds state of the old "
                  "shapes (its next step() fails); call dp.rebuild_optimizer(optimizer, model) before it steps, "
                  "pass optimizer= to dp.prune, or create a new optimizer")


def _count(n: int, metric: str) -> str:
    """``12.30 MMACs`` / ``1.51 K params``: a MAC or parameter count in the unit its size calls for."""
    return _human(n, "MACs") if metric == "macs" else _human(n, "params", " ")


def _importance_name(importance) -> str:
    if isinstance(importance, str):
        return importance.strip().lower()
    if isinstance(importance, type):
        return importance.__name__
    if isinstance(importance, _imp.Importance):
        return repr(importance)
    return getattr(importance, "__name__", type(importance).__name__)


def describe_settings(settings: Mapping) -> str:
    """One line naming what a ``PruneResult`` was made with (the table's header)."""
    s = dict(settings)
    parts = []
    for key, label in (("target_speedup", "target_speedup"), ("target_macs", "target_macs"),
                       ("target_params", "target_params")):
        if s.get(key) is not None:
            value = s[key] if key == "target_speedup" else _count(int(s[key]), key[len("target_"):])
            parts.append(f"{label}={value}")
    if s.get("ratio") is not None:
        parts.append(f"ratio={s['ratio']:g} (fraction of each group's channels removed)")
    if s.get("ratios"):
        parts.append(f"ratios={dict(s['ratios'])}")
    if s.get("importance") is not None:
        parts.append(f"importance={s['importance']}")
    if s.get("scope"):
        parts.append(f"scope={s['scope']}")
    for key, default in (("round_to", None), ("min_channels", 1), ("steps", 1), ("attention", "heads")):
        if key in s and s[key] != default:
            parts.append(f"{key}={s[key]}")
    return ", ".join(parts)


from .trace import structural_copy as _meta_copy  # noqa: E402


def _plan(graph, scorer, ratio, ratios, global_ranking, max_ratio, round_to, min_channels, per_layer=True):
    if global_ranking:
        if ratios is not None:
            raise PruningError("global_ranking=True takes one `ratio`, not `ratios`")
        return global_plan(graph, scorer, check_ratio(0.5 if ratio is None else ratio), max_ratio, round_to,
                           min_channels)
    # per_layer=False ranks a concatenation's parts against each other: the floor applies there
    return local_plan(graph, scorer, part_ratios(graph, ratio, ratios), round_to, min_channels,
                      per_layer=per_layer, max_ratio=None if per_layer else max_ratio)


def width_row(group, channels) -> tuple[str, int, int]:
    """``(member, width before, width after)`` for the result table: the first member that loses
    positions (a concat group's first member may be a part whose channels all stay)."""
    chans = None
    for m in group.members:
        if m.kind == "width":
            continue
        if m._identity:  # position i is channel i: it loses the channels themselves
            chans = np.unique(np.asarray(list(channels), dtype=np.int64)) if chans is None else chans
            lost = int(((chans >= 0) & (chans < m.size)).sum())
        else:
            lost = len(m.indices(channels))
        if lost:
            return m.name, m.size, m.size - lost
    m = group.members[0]
    return m.name, m.size, m.size


def _scale(ratio, ratios, factor: float):
    """Ratios for one of several rounds: keep fraction (1-r)^factor each round."""
    f = lambda r: 1 - (1 - r) ** factor  # noqa: E731
    return (None if ratio is None else f(ratio)), (None if ratios is None else {k: f(v) for k, v in ratios.items()})


def _macs_of_plan(model, graph, plan, meta_inputs, metric: str = "macs") -> int:
    """MACs (or params, ``metric="params"``) after ``plan``, measured on a weightless meta copy
    pruned with the same graph."""
    from .surgery import apply_plan
    clone = _meta_copy(model)
    shadow = copy.copy(graph)
    shadow.model = clone
    if plan:
        apply_plan(shadow, plan)
    return getattr(count_ops(clone, meta_inputs), metric)


def _count_before(graph, model, example_inputs) -> OpCount:
    """The unpruned model's cost: the MACs counted while the graph propagated shapes (the same
    count as ``count_ops``, without a second run of the model), else ``count_ops``."""
    macs = getattr(getattr(graph, "_ctx", None), "macs", None)
    if macs is None:
        return count_ops(model, example_inputs)
    return OpCount(macs=int(macs), params=int(sum(p.numel() for p in _parameters(model))))


def _search_plan(model, example_inputs, graph, scorer, target_macs, kw, metric: str = "macs",
                 goal: str = "target_speedup") -> dict:
    """See :func:`_search_plan_in`; the plans it measures are the "plan" stage's steps."""
    with _progress.stage("plan", unit="plans measured") as bar:
        return _search_plan_in(model, example_inputs, graph, scorer, target_macs, kw, metric, goal, bar)


def _search_plan_in(model, example_inputs, graph, scorer, target_macs, kw, metric, goal, bar) -> dict:
    """A plan whose MACs (``metric="params"``: parameter count) land on ``target_macs``: bisection
    on the common ratio, then, where coarse groups (attention heads, channel blocks) jump over the
    target, a second bisection that only moves the fine-grained groups. ``goal`` names the
    argument in the error raised when the target cannot be reached."""
    with _imp.shared_reads():
        scores = {g.index: scorer(g) for g in graph.prunable_groups}
    meta_inputs = _to_meta(example_inputs)
    if kw["global_ranking"]:
        plan_at = lambda r, fixed=None: global_plan(graph, lambda g: scores[g.index], r, kw["max_ratio"],  # noqa: E731
                                                    kw["round_to"], kw["min_channels"])
    else:
        def plan_at(r, fixed=None):
            base = part_ratios(graph, None if kw["ratios"] else r,
                               None if kw["ratios"] is None else {k: min(v * r / 0.5, 0.99) for k, v in kw["ratios"].items()})
            # the search may push a ratio to 0.99: every layer keeps its max_ratio floor
            return local_plan(graph, lambda g: scores[g.index], base, kw["round_to"], kw["min_channels"],
                              per_layer=kw["per_layer"], max_ratio=kw["max_ratio"], fixed=fixed)
    def macs(plan):
        bar.update()
        return _macs_of_plan(model, graph, plan, meta_inputs, metric)

    def bisect(lo, hi, fixed=None):
        best = None
        for _ in range(24):
            mid = (lo + hi) / 2
            plan = plan_at(mid, fixed)
            m = macs(plan)
            err = abs(m / target_macs - 1)
            if best is None or err < best[0]:
                best = (err, mid, plan)
            if err <= 0.002:
                break
            lo, hi = (mid, hi) if m > target_macs else (lo, mid)
        return best, lo, hi

    return _search(plan_at, macs, graph, target_macs, kw, metric, goal, bisect)


def _search(plan_at, macs, graph, target_macs, kw, metric, goal, bisect) -> dict:
    top = plan_at(0.99)
    least = macs(top)
    if least > target_macs * 1.02:
        raise PruningError(f"{goal} cannot be reached: pruning every layer down to its floor "
                           f"(max_ratio={kw['max_ratio']}: each keeps ceil((1 - max_ratio) * width)) still leaves "
                           f"{_count(least, metric)} (target {_count(int(target_macs), metric)}); raise max_ratio "
                           f"to allow more")
    (err, r, plan), lo, hi = bisect(0.0, 0.99)
    if err > 0.002 and not kw["global_ranking"]:
        lo_plan, hi_plan = plan_at(lo), plan_at(hi)
        jumped = [g for g in graph.prunable_groups if len(lo_plan.get(g, [])) != len(hi_plan.get(g, []))]
        # pin the coarsest jumping groups at their lower count, let the finer ones move on
        for limit in sorted({g.size for g in jumped}):
            fixed = {g.index: len(lo_plan.get(g, [])) for g in jumped if g.size <= limit}
            if len(fixed) == len(graph.prunable_groups):
                break
            (err2, _, plan2), _, _ = bisect(lo, 0.99, fixed=fixed)
            if err2 < err:
                err, plan = err2, plan2
            if err <= 0.005:
                break
    return plan


def _scores(graph, scorer, ratio, ratios, global_ranking, searched, round_to, min_channels) -> dict:
    """Every score the plan will ask for, computed once (the "score" stage), in the order the
    plan functions would ask, so a seeded random criterion draws the same numbers."""
    from .plan import n_to_prune
    groups = graph.prunable_groups
    if not (global_ranking or searched):
        per = part_ratios(graph, ratio, ratios)  # a list: one ratio per part of a concatenation
        top = {k: max(v) if isinstance(v, list) else v for k, v in per.items()}
        groups = [g for g in groups if n_to_prune(g, top.get(g.index, 0.0), round_to, min_channels)]
    out = {}
    # one block: a weight whose two channel dims belong to two groups is read once
    with _progress.stage("score", total=len(groups)) as bar, _imp.shared_reads():
        for g in groups:
            out[g.index] = scorer(g)
            bar.update()
    return out


@old_objects_frozen
@_progress.reports("progress")
def prune(model: nn.Module, example_inputs: Any, ratio: float | None = None, importance="l1", *,
          ratios: Mapping[str, float] | None = None, global_ranking: bool = False, max_ratio: float = 0.9,
          target_speedup: float | None = None, target_macs: int | None = None, target_params: int | None = None,
          round_to: int | None = None, min_channels: int = 1, per_layer: bool = True,
          steps: int = 1, callback: Callable | None = None, progress: bool = False,
          ignored_layers: Iterable = (), leaf_modules: Iterable = (), frozen: Iterable = (),
          attention: str = "heads", calibration: Iterable | None = None,
          loss_fn: Callable | None = None, optimizer=None, verify=True, verify_inputs=None) -> PruneResult:
    """Prune ``model`` in place and return a ``PruneResult`` (``print`` it for a before/after table).

    What goes:

    * ``ratio`` (default 0.5): ``ceil(ratio * size)`` channels of every prunable group, lowest
      ``importance`` first, at least one kept. ``ratios={"layer1.*.conv[12]": 0.3}``: fnmatch
      patterns on module names (last match wins) give the ratio of the group of that module's
      output channels; other groups get ``ratio`` (0 when not given). A concatenation's group
      is split by producer (``Group.parts``): with ``per_layer=True`` (default) every producer
      loses its own ratio of its own width, ranked within its own channels; ``per_layer=False``
      ranks the whole group on per-layer normalized scores (``dp.plan.fair_scores``), each
      layer keeping its ``max_ratio`` floor.
    * ``global_ranking=True``: one threshold over all layers (each layer's scores divided by their
      mean), every layer keeping at least ``ceil((1 - max_ratio) * width)`` channels (the same
      floor holds in the target searches below).
    * ``target_speedup=2.0``: the ratio is searched so that MACs fall by that factor (within 2%);
      ``target_macs=1e9`` / ``target_params=5e6``: searched so that the pruned model has that many
      MACs / parameters (one target at most, instead of ``ratio``).
    * ``round_to=8``: kept channel counts are multiples of 8; ``min_channels``: lower bound.
    * ``steps=k``: reach the target in k rounds, re-scoring in between; ``callback(model, round)``
      runs after each round (e.g. to fine-tune).
    * ``progress=True``: a line on stderr for every stage that takes more than half a second
      (trace, build, score, plan, surgery, verify, count), and a bar over the rounds.
    * ``attention="heads"`` (default) or ``"head_dim"``: the granularity of
      ``nn.MultiheadAttention`` (see :func:`build_graph`).
    * ``verify=True`` (default): every surgery is checked numerically against the original with
      the removed channels zeroed (:mod:`depgraph_prune.verify`); groups that fail are frozen
      with the reason, the rest is planned again, and ``result.verification`` says what was
      checked and how. ``verify="raise"`` raises instead; ``verify=False`` skips the check.
      It costs about one forward pass of the original and one of the pruned model. Where the
      trace shows that the model runs the same ops at any input size, image and video inputs
      are checked on a centre crop (each side cut to a quarter, but not below 64) and token
      inputs on a prefix (a quarter, not below 16 tokens), and the
      pruned model is then run at the given size on meta tensors; a model that refuses the
      crop, or a check that fails on it, is checked on the given inputs. ``verify_inputs=``
      names the inputs to check on instead.
    * ``optimizer``: a ``torch.optim.Optimizer`` over the model's parameters, created before
      pruning: its per-parameter state (momentum, Adam moments) is sliced in place to the kept
      channels (:func:`depgraph_prune.rebuild_optimizer`), so training goes on with it.

    ``importance``: a name (``"l1"``, ``"l2"``, ...), an instance from ``dp.importance`` or a callable
    ``(group) -> scores``. Gradient-based criteria need ``calibration`` (an iterable of
    ``(inputs, targets)``) and optionally ``loss_fn`` (default cross-entropy).

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> model = torchvision.models.resnet18()
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> result = dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5, optimizer=opt)
        >>> result.speedup > 2.5
        True
    """
    targets = {k: v for k, v in (("target_speedup", target_speedup), ("target_macs", target_macs),
                                 ("target_params", target_params)) if v is not None}
    if len(targets) > 1:
        raise PruningError(f"give one target, not {' and '.join(targets)}")
    if targets and ratio is not None:
        raise PruningError(f"give either ratio or {next(iter(targets))}, not both")
    if target_speedup is not None:
        if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or not target_speedup > 1:
            raise PruningError(f"target_speedup must be a number > 1, got {target_speedup!r}")
    for key in ("target_macs", "target_params"):
        v = targets.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                              or v != v or v == float("inf")):
            raise PruningError(f"{key} must be a positive number (a count, e.g. 1e9), got {v!r}")
    if ratio is not None:
        check_ratio(ratio)
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise PruningError(f"min_channels must be a positive integer, got {min_channels!r}")
    check_ratio(max_ratio, "max_ratio")
    if not isinstance(per_layer, bool):
        raise PruningError(f"per_layer must be True or False, got {per_layer!r}")
    if not isinstance(steps, int) or steps < 1:
        raise PruningError(f"steps must be a positive integer, got {steps!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer, got {round_to!r}")
    if verify not in (True, False, "raise"):
        raise PruningError(f"verify must be True, False or 'raise', got {verify!r}")
    from .optim import check_optimizer
    check_optimizer(optimizer, model)
    try:
        scorer = _imp.resolve(importance)
    except ValueError as exc:
        raise PruningError(f"importance: {exc}") from exc
    needs_grad = getattr(scorer, "needs_gradients", False)
    if needs_grad and calibration is None:
        raise PruningError(f"importance={importance!r} needs gradients: pass calibration=<iterable of (inputs, targets)>")
    if needs_grad and steps > 1 and not isinstance(calibration, (list, tuple)) and iter(calibration) is calibration:
        calibration = list(calibration)  # a one-shot iterator must serve every round
    settings = {"ratio": None if targets or (ratio is None and ratios is not None) else (0.5 if ratio is None else ratio),
                "ratios": dict(ratios) if ratios is not None else None, **targets,
                "importance": _importance_name(importance),
                "scope": f"global ranking (at most {max_ratio:g} of a group)" if global_ranking else "each group",
                "round_to": round_to, "min_channels": min_channels, "steps": steps, "attention": attention}
    # the graph first: a bad example input gets the tracer's clear message
    graph = build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                            frozen=frozen, attention=attention)
    with _progress.stage("count"):
        before = _count_before(graph, model, example_inputs)
    records, notes, widths, verification, layers = [], list(graph.notes), [], [], {}
    frozen_groups = [(g.members[0].name, n, r) for g in graph.groups for r, n in g.frozen_reasons.most_common()]
    rounds = range(1, steps + 1)
    if progress and steps > 1:
        from tqdm import tqdm
        rounds = tqdm(rounds, desc="pruning rounds")
    kw = dict(ratios=ratios, global_ranking=global_ranking, max_ratio=max_ratio, round_to=round_to,
              min_channels=min_channels, ignored=ignored_layers, leaves=leaf_modules, frozen=frozen,
              per_layer=per_layer)
    metric = "params" if "target_params" in targets else "macs"
    base_count = getattr(before, metric)
    if "target_speedup" in targets:
        final = before.macs / targets["target_speedup"]
    else:
        final = targets.get("target_macs", targets.get("target_params"))
    if final is not None:
        key = next(iter(targets))
        if not base_count:
            raise PruningError(f"{key} cannot be reached: the model has 0 {'MACs' if metric == 'macs' else 'parameters'} "
                              "on this input")
        if final >= base_count and key != "target_speedup":
            raise PruningError(f"{key}={_count(int(final), metric)} is not below the model's "
                               f"{_count(base_count, metric)}: nothing would be pruned")
    record = None
    for i in rounds:
        if i > 1:
            # the pruned model's graph, derived from this one (no new trace) where the model
            # still matches it; else traced afresh
            graph = after_prune(graph, record or {}) or \
                build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                            frozen=frozen, attention=attention)
            record = None
        if needs_grad:
            with _progress.stage("score"):  # the gradient pass over the calibration batches
                scorer.accumulate(model, calibration, loss_fn=loss_fn)
        def make_plan(graph=graph, i=i):  # again after verification froze groups
            if final is not None:
                base = 0.5 if ratio is None and ratios is None else ratio
                scores = _scores(graph, scorer, base, ratios, global_ranking, True, round_to, min_channels)
                goal = base_count * (final / base_count) ** (i / steps) if base_count else 0
                return _search_plan(model, example_inputs, graph, lambda g: scores[g.index], goal, kw, metric,
                                    next(iter(targets)))
            base = 0.5 if ratio is None and ratios is None else ratio
            r_ratio, r_ratios = _scale(base, ratios, 1 / steps) if steps > 1 else (base, ratios)
            scores = _scores(graph, scorer, r_ratio, r_ratios, global_ranking, False, round_to, min_channels)
            with _progress.stage("plan"):
                return _plan(graph, lambda g: scores[g.index], r_ratio, r_ratios, global_ranking, max_ratio,
                             round_to, min_channels, per_layer)
        record, plan, reports = _apply_verified(graph, make_plan(), make_plan, verify, optimizer, verify_inputs)
        verification += reports
        widths += [width_row(g, c) for g, c in plan.items()]
        for name, w0, w1 in layer_widths(graph, plan):
            layers[name] = (layers.get(name, (w0, w1))[0], w1)
        if record:
            records.append(record)
        if callback is not None:
            callback(model, i)
    with _progress.stage("count"):
        # the last round's verification counted them (running the pruned model at full size on
        # meta tensors, or from its weights' sizes: verify.macs_from_weights)
        counted = record.get("macs_after") if record and callback is None else None
        for r in records:
            r.pop("macs_after", None)
        params = _parameters(model)
        if counted is not None:
            after = OpCount(macs=int(counted), params=int(sum(p.numel() for p in params)))
        else:
            after = count_ops(model, example_inputs)
    if records and hasattr(getattr(model, "config", None), "to_dict"):  # a transformers model
        from .hf import update_config
        changed = update_config(model)
        if changed:
            notes.append("model.config: " + "; ".join(changed))
    if not params:
        notes.append("the model has no parameters: nothing to prune")
    elif not records:
        notes.append("no prunable group: every channel is frozen or the ratios select nothing "
                     "(see dp.build_graph(model, x).summary())")
    elif optimizer is None:
        notes.append(OPTIMIZER_NOTE)
    for rep in verification:
        notes += rep.notes()
        frozen_groups += [(f"group {gi}", 0, r) for gi, r in rep.guilty.items()]
    rows = [(n, w0, w1) for n, (w0, w1) in layers.items()]
    thin = [r for r in rows if r[2] < r[1] / 4]
    if thin:
        name, w0, w1 = min(thin, key=lambda r: r[2] / r[1])
        notes.append(f"warning: {len(thin)} layer(s) keep fewer than a quarter of their channels, the thinnest "
                     f"`{name}` ({w0} -> {w1}); fine-tuning a bottleneck that narrow rarely recovers")
    return PruneResult(before, after, widths, records, notes, frozen_groups, settings, verification, rows)


def _apply_verified(graph, plan, replan, verify, optimizer=None, inputs=None):
    """Surgery with the numerical check: groups that fail are frozen and the plan is made
    again without them (so a global budget or a speedup target is still met by the others).
    Returns ``(record, plan applied, reports)``."""
    from ._memory import release_free_memory, weight_bytes
    from . import verify as _verify
    from .optim import rebuild_optimizer
    if not plan:
        return {}, {}, []
    if not verify:
        with _progress.stage("surgery"):
            return graph.prune(plan, verify=False, optimizer=optimizer), plan, []
    reports = []
    size = weight_bytes(graph.model)  # before the surgery: nothing may fail after it commits
    for _ in range(8):
        record, report = _verify.apply(graph, plan, mode=verify, keep_partial=False, inputs=inputs)
        reports.append(report)
        graph.freeze_groups(report.guilty)
        if record is not None:
            break
        plan = replan()
        if not plan:
            record = {}
            break
    else:  # pragma: no cover - each retry freezes at least one group
        raise PruningError("verification kept failing after 8 re-plans")
    record.pop("undo", None)
    if optimizer is not None and record:
        rebuild_optimizer(optimizer, graph.model)
    release_free_memory(size)  # the old tensors (or their removed parts) went with the undo
    if record:
        graph._stale = True
    graph.last_verification = reports[-1]
    merged = reports[-1]
    for rep in reports[:-1]:
        merged.guilty = {**rep.guilty, **merged.guilty}
        merged.runs += rep.runs
    return record, plan, [merged]
