"""The one-call API: ``prune(model, example_inputs, ...)`` and ``build_graph``."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from . import importance as _imp
from ._fast_meta import to_meta as _to_meta
from .errors import PruningError
from .graph import DependencyGraph
from .measure import OpCount, count_ops
from .plan import check_ratio, global_plan, group_ratios, local_plan, select_channels  # noqa: F401


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
    """What ``prune`` did: operation counts before and after, and each pruned group's width."""

    before: OpCount
    after: OpCount
    widths: list[tuple[str, int, int]] = field(default_factory=list)  # (first member, before, after)
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frozen: list[tuple[str, int, str]] = field(default_factory=list)  # (first member, channels, reason)
    #: what the numerical check did, one report per surgery (see :mod:`depgraph_prune.verify`)
    verification: list = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.before.macs / max(self.after.macs, 1)

    def __str__(self) -> str:
        b, a = self.before, self.after
        lines = [f"{'':10}{'before':>14}{'after':>14}{'ratio':>9}",
                 f"{'MACs':10}{b.macs / 1e9:>13.4f}G{a.macs / 1e9:>13.4f}G{a.macs / max(b.macs, 1):>9.3f}",
                 f"{'params':10}{b.params / 1e6:>13.4f}M{a.params / 1e6:>13.4f}M{a.params / max(b.params, 1):>9.3f}",
                 f"speedup (MACs before / after): {self.speedup:.3f}x",
                 f"{len(self.widths)} groups pruned"]
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


from .trace import structural_copy as _meta_copy  # noqa: E402


def _plan(graph, scorer, ratio, ratios, global_ranking, max_ratio, round_to, min_channels):
    if global_ranking:
        if ratios is not None:
            raise PruningError("global_ranking=True takes one `ratio`, not `ratios`")
        return global_plan(graph, scorer, check_ratio(0.5 if ratio is None else ratio), max_ratio, round_to,
                           min_channels)
    return local_plan(graph, scorer, group_ratios(graph, ratio, ratios), round_to, min_channels)


def width_row(group, channels) -> tuple[str, int, int]:
    """``(member, width before, width after)`` for the result table: the first member that loses
    positions (a concat group's first member may be a part whose channels all stay)."""
    for m in group.members:
        lost = len(m.indices(channels)) if m.kind != "width" else 0
        if lost:
            return m.name, m.size, m.size - lost
    m = group.members[0]
    return m.name, m.size, m.size


def _scale(ratio, ratios, factor: float):
    """Ratios for one of several rounds: keep fraction (1-r)^factor each round."""
    f = lambda r: 1 - (1 - r) ** factor  # noqa: E731
    return (None if ratio is None else f(ratio)), (None if ratios is None else {k: f(v) for k, v in ratios.items()})


def _macs_of_plan(model, graph, plan, meta_inputs) -> int:
    """MACs after ``plan``, measured on a weightless meta copy pruned with the same graph."""
    from .surgery import apply_plan
    clone = _meta_copy(model)
    shadow = copy.copy(graph)
    shadow.model = clone
    if plan:
        apply_plan(shadow, plan)
    return count_ops(clone, meta_inputs).macs


def _search_plan(model, example_inputs, graph, scorer, target_macs, kw) -> dict:
    """A plan whose MACs land on ``target_macs``: bisection on the common ratio, then, where
    coarse groups (attention heads, channel blocks) jump over the target, a second bisection
    that only moves the fine-grained groups."""
    from .plan import n_to_prune
    scores = {g.index: scorer(g) for g in graph.prunable_groups}
    meta_inputs = _to_meta(example_inputs)
    if kw["global_ranking"]:
        plan_at = lambda r, fixed=None: global_plan(graph, lambda g: scores[g.index], r, kw["max_ratio"],  # noqa: E731
                                                    kw["round_to"], kw["min_channels"])
    else:
        def plan_at(r, fixed=None):
            base = group_ratios(graph, None if kw["ratios"] else r,
                                None if kw["ratios"] is None else {k: min(v * r / 0.5, 0.99) for k, v in kw["ratios"].items()})
            plan = {}
            for g in graph.prunable_groups:
                n = fixed[g.index] if fixed and g.index in fixed else n_to_prune(g, base.get(g.index, 0.0), kw["round_to"], kw["min_channels"])
                chans = select_channels(g, scores[g.index], n) if n else []
                if chans:
                    plan[g] = chans
            return plan
    macs = lambda plan: _macs_of_plan(model, graph, plan, meta_inputs)  # noqa: E731

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

    top = plan_at(0.99)
    if macs(top) > target_macs * 1.02:
        raise PruningError(f"target_speedup cannot be reached: pruning 99% of every group still leaves "
                           f"{macs(top) / 1e9:.3f} GMACs (target {target_macs / 1e9:.3f})")
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


def prune(model: nn.Module, example_inputs: Any, ratio: float | None = None, importance="l1", *,
          ratios: Mapping[str, float] | None = None, global_ranking: bool = False, max_ratio: float = 0.9,
          target_speedup: float | None = None, round_to: int | None = None, min_channels: int = 1,
          steps: int = 1, callback: Callable | None = None, progress: bool = False,
          ignored_layers: Iterable = (), leaf_modules: Iterable = (), frozen: Iterable = (),
          attention: str = "heads", calibration: Iterable | None = None,
          loss_fn: Callable | None = None, verify=True) -> PruneResult:
    """Prune ``model`` in place and return a ``PruneResult`` (``print`` it for a before/after table).

    What goes:

    * ``ratio`` (default 0.5): ``ceil(ratio * size)`` channels of every prunable group, lowest
      ``importance`` first, at least one kept. ``ratios={"layer1.*.conv[12]": 0.3}``: fnmatch
      patterns on module names (last match wins) give the ratio of the group of that module's
      output channels; other groups get ``ratio`` (0 when not given).
    * ``global_ranking=True``: one threshold over all groups (scores divided by their group's mean),
      at most ``max_ratio`` of any group.
    * ``target_speedup=2.0``: the ratio is searched so that MACs fall by that factor (within 2%).
    * ``round_to=8``: kept channel counts are multiples of 8; ``min_channels``: lower bound.
    * ``steps=k``: reach the target in k rounds, re-scoring in between; ``callback(model, round)``
      runs after each round (e.g. to fine-tune); ``progress=True`` shows a bar.
    * ``attention="heads"`` (default) or ``"head_dim"``: the granularity of
      ``nn.MultiheadAttention`` (see :func:`build_graph`).
    * ``verify=True`` (default): every surgery is checked numerically against the original with
      the removed channels zeroed (:mod:`depgraph_prune.verify`); groups that fail are frozen
      with the reason, the rest is planned again, and ``result.verification`` says what was
      checked and how. ``verify="raise"`` raises instead; ``verify=False`` skips the check.

    ``importance``: a name (``"l1"``, ``"l2"``, ...), an instance from ``dp.importance`` or a callable
    ``(group) -> scores``. Gradient-based criteria need ``calibration`` (an iterable of
    ``(inputs, targets)``) and optionally ``loss_fn`` (default cross-entropy).

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> model = torchvision.models.resnet18()
        >>> result = dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
        >>> result.speedup > 2.5
        True
    """
    if target_speedup is not None:
        if ratio is not None:
            raise PruningError("give either ratio or target_speedup, not both")
        if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or not target_speedup > 1:
            raise PruningError(f"target_speedup must be a number > 1, got {target_speedup!r}")
    elif ratio is not None:
        check_ratio(ratio)
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise PruningError(f"min_channels must be a positive integer, got {min_channels!r}")
    if not isinstance(steps, int) or steps < 1:
        raise PruningError(f"steps must be a positive integer, got {steps!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer, got {round_to!r}")
    if verify not in (True, False, "raise"):
        raise PruningError(f"verify must be True, False or 'raise', got {verify!r}")
    try:
        scorer = _imp.resolve(importance)
    except ValueError as exc:
        raise PruningError(f"importance: {exc}") from exc
    needs_grad = getattr(scorer, "needs_gradients", False)
    if needs_grad and calibration is None:
        raise PruningError(f"importance={importance!r} needs gradients: pass calibration=<iterable of (inputs, targets)>")
    if needs_grad and steps > 1 and not isinstance(calibration, (list, tuple)) and iter(calibration) is calibration:
        calibration = list(calibration)  # a one-shot iterator must serve every round
    # the graph first: a bad example input gets the tracer's clear message
    graph = build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                            frozen=frozen, attention=attention)
    before = count_ops(model, example_inputs)
    records, notes, widths, verification = [], list(graph.notes), [], []
    frozen_groups = [(g.members[0].name, n, r) for g in graph.groups for r, n in g.frozen_reasons.most_common()]
    rounds = range(1, steps + 1)
    if progress and steps > 1:
        from tqdm import tqdm
        rounds = tqdm(rounds, desc="pruning rounds")
    kw = dict(ratios=ratios, global_ranking=global_ranking, max_ratio=max_ratio, round_to=round_to,
              min_channels=min_channels, ignored=ignored_layers, leaves=leaf_modules, frozen=frozen)
    for i in rounds:
        if i > 1:
            graph = build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                            frozen=frozen, attention=attention)
        if needs_grad:
            scorer.accumulate(model, calibration, loss_fn=loss_fn)
        def make_plan(graph=graph, i=i):
            if target_speedup is not None:
                goal = before.macs / target_speedup ** (i / steps)
                return _search_plan(model, example_inputs, graph, scorer, goal, kw)
            base = 0.5 if ratio is None and ratios is None else ratio
            r_ratio, r_ratios = _scale(base, ratios, 1 / steps) if steps > 1 else (base, ratios)
            return _plan(graph, scorer, r_ratio, r_ratios, global_ranking, max_ratio, round_to, min_channels)
        record, plan, reports = _apply_verified(graph, make_plan(), make_plan, verify)
        verification += reports
        widths += [width_row(g, c) for g, c in plan.items()]
        if record:
            records.append(record)
        if callback is not None:
            callback(model, i)
    after = count_ops(model, example_inputs)
    if not any(True for _ in model.parameters()):
        notes.append("the model has no parameters: nothing to prune")
    elif not records:
        notes.append("no prunable group: every channel is frozen or the ratios select nothing "
                     "(see dp.build_graph(model, x).summary())")
    for rep in verification:
        notes += rep.notes()
        frozen_groups += [(f"group {gi}", 0, r) for gi, r in rep.guilty.items()]
    return PruneResult(before, after, widths, records, notes, frozen_groups, verification)


def _apply_verified(graph, plan, replan, verify):
    """Surgery with the numerical check: groups that fail are frozen and the plan is made
    again without them (so a global budget or a speedup target is still met by the others).
    Returns ``(record, plan applied, reports)``."""
    from ._memory import release_free_memory
    from . import verify as _verify
    if not plan:
        return {}, {}, []
    if not verify:
        return graph.prune(plan, verify=False), plan, []
    reports = []
    for _ in range(8):
        record, report = _verify.apply(graph, plan, mode=verify, keep_partial=False)
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
    release_free_memory()
    if record:
        graph._stale = True
    graph.last_verification = reports[-1]
    merged = reports[-1]
    for rep in reports[:-1]:
        merged.guilty = {**rep.guilty, **merged.guilty}
        merged.runs += rep.runs
    return record, plan, [merged]
