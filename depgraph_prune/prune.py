"""The one-call API: ``prune(model, example_inputs, ratio=...)``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from . import importance as _imp
from .errors import PruningError
from .graph import DependencyGraph, Group
from .measure import OpCount, count_ops


def build_graph(model: nn.Module, example_inputs: Any, *, ignored_layers: Iterable = (),
                leaf_modules: Iterable[str] = ()) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and group its coupled channels.

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> graph = dp.build_graph(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> graph.group_of("layer1.0.conv1").size
        64
    """
    return DependencyGraph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules)


@dataclass
class PruneResult:
    """What ``prune`` did: operation counts before and after, and each pruned group's width."""

    before: OpCount
    after: OpCount
    widths: list[tuple[str, int, int]] = field(default_factory=list)  # (first member, before, after)
    record: dict = field(default_factory=dict)

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
        return "\n".join(lines)


def select_channels(group: Group, scores: torch.Tensor, n_prune: int) -> list[int]:
    """The ``n_prune`` lowest-scoring channels, never emptying a member."""
    if n_prune <= 0:
        return []
    s = np.asarray(scores.detach().cpu().double())
    order = np.argsort(s, kind="stable")
    chosen = np.zeros(group.size, dtype=bool)
    chosen[order[:n_prune]] = True
    for m in group.members:
        ch = m._channel_of
        if (ch < 0).any():
            continue  # the member keeps fixed positions anyway
        mine = np.unique(ch)
        if chosen[mine].all():
            chosen[mine[np.argmax(s[mine])]] = False
    return np.nonzero(chosen)[0].tolist()


def _check_ratio(ratio, name="ratio"):
    if not isinstance(ratio, (int, float)) or not (0.0 <= float(ratio) < 1.0) or math.isnan(float(ratio)):
        raise PruningError(f"{name} must be a number in [0, 1), got {ratio!r}")


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance="l1", *,
          ignored_layers: Iterable = (), leaf_modules: Iterable[str] = ()) -> PruneResult:
    """Prune ``model`` in place: remove ``ceil(ratio * size)`` channels of every prunable group
    (at least one kept), lowest importance first. Returns a ``PruneResult``; ``print`` it for a
    before/after table.

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> model = torchvision.models.resnet18()
        >>> result = dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
        >>> result.speedup > 2.5
        True
    """
    _check_ratio(ratio)
    scorer = _imp.resolve(importance)
    # the graph first: a bad example input gets the tracer's clear message
    graph = build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules)
    before = count_ops(model, example_inputs)
    plan = {}
    for g in graph.prunable_groups:
        n = min(math.ceil(ratio * g.size), g.size - (0 if g.n_frozen else 1))
        chans = select_channels(g, scorer(g), n)
        if chans:
            plan[g] = chans
    widths = [(g.members[0].name, g.members[0].size, g.members[0].size - len(g.members[0].indices(c)))
              for g, c in plan.items()]
    record = graph.prune(plan) if plan else {}
    after = count_ops(model, example_inputs)
    return PruneResult(before, after, widths, record)
