"""Step 3c: the plan. Which channels of which groups go: per-group ratios (a global ratio or
``fnmatch`` patterns on module names), local or global ranking, ``round_to``, ``min_channels``."""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Callable, Mapping

import numpy as np
import torch

from .errors import PruningError
from .graph import DependencyGraph, Group
from .importance import shared_reads


def check_ratio(ratio, name="ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(float(ratio)) \
            or not (0.0 <= float(ratio) < 1.0):
        raise PruningError(f"{name} must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def producers(graph: DependencyGraph) -> dict[int, list[str]]:
    """Group index → names of the modules whose *output* channels the group holds, in module order."""
    from .graph.dependency_graph import _out_key
    out: dict[int, list[str]] = {}
    for name, mod in graph.model.named_modules():
        if not name or not any(True for _ in mod.parameters(recurse=False)) and not hasattr(mod, "num_features"):
            continue
        key = _out_key(name, mod)
        g = graph._member_group.get((graph._ctx.canonical_name(key[0]), key[1]))
        if g is not None:
            out.setdefault(g.index, []).append(name)
    return out


def group_ratios(graph: DependencyGraph, ratio: float | None, ratios: Mapping[str, float] | None) -> dict[int, float]:
    """Ratio of every prunable group. With ``ratios`` (patterns → ratio, last match wins), a group
    takes the ratio of its first producing module that a pattern matches; others take ``ratio``
    (0 when it is None)."""
    if ratios is None:
        r = check_ratio(0.5 if ratio is None else ratio)
        return {g.index: r for g in graph.prunable_groups}
    default = 0.0 if ratio is None else check_ratio(ratio)
    pats = {str(k): check_ratio(v, f"ratios[{k!r}]") for k, v in dict(ratios).items()}
    names = [n for n, _ in graph.model.named_modules() if n]
    for p in pats:
        if not any(fnmatchcase(n, p) for n in names):
            raise PruningError(f"ratios: pattern {p!r} matches no module of the model")
    prod = producers(graph)
    out = {}
    for g in graph.prunable_groups:
        r = default
        for name in prod.get(g.index, []):
            hit = [v for p, v in pats.items() if fnmatchcase(name, p)]
            if hit:
                r = hit[-1]
                break
        out[g.index] = r
    return out


def n_to_prune(group: Group, ratio: float, round_to: int | None = None, min_channels: int = 1) -> int:
    """``ceil(ratio * size)`` channels, keeping at least ``min_channels`` (and one), kept count
    rounded *up* to a multiple of ``round_to`` (counted over all the group's channels)."""
    total = group.size + group.n_frozen
    n = min(math.ceil(ratio * group.size - 1e-9), group.size)
    keep = total - n
    keep = max(keep, min_channels, 1)
    if round_to and round_to > 1:
        keep = min(total, math.ceil(keep / round_to) * round_to)
    return max(0, min(total - keep, group.size))


def select_channels(group: Group, scores, n_prune: int) -> list[int]:
    """The ``n_prune`` lowest-scoring channels (stable order on ties), never emptying a member."""
    if n_prune <= 0:
        return []
    s = np.asarray(torch.as_tensor(scores).detach().cpu().double())
    if s.shape != (group.size,):
        raise PruningError(f"importance returned scores of shape {tuple(s.shape)} for group {group.index} "
                           f"of {group.size} channels")
    order = np.argsort(s, kind="stable")
    chosen = np.zeros(group.size, dtype=bool)
    chosen[order[:n_prune]] = True
    for m in group.members:
        ch = m._channel_of
        if ch.size == 0 or (ch < 0).any():
            continue  # the member keeps fixed positions anyway
        covered = np.bincount(ch, minlength=group.size).astype(bool)  # (no sort, unlike unique)
        if chosen[covered].all():
            mine = np.flatnonzero(covered)
            chosen[mine[np.argmax(s[mine])]] = False
    return np.nonzero(chosen)[0].tolist()


def local_plan(graph: DependencyGraph, scorer: Callable, ratios_by_group: dict[int, float],
               round_to=None, min_channels=1) -> dict[Group, list[int]]:
    plan = {}
    with shared_reads():  # each weight is read once for all the groups it belongs to
        for g in graph.prunable_groups:
            r = ratios_by_group.get(g.index, 0.0)
            n = n_to_prune(g, r, round_to, min_channels)
            if n:
                chans = select_channels(g, scorer(g), n)
                if chans:
                    plan[g] = chans
    return plan


def global_plan(graph: DependencyGraph, scorer: Callable, ratio: float, max_ratio: float = 0.9,
                round_to=None, min_channels=1) -> dict[Group, list[int]]:
    """One threshold across groups: scores are divided by their group's mean, the lowest
    ``ceil(ratio * total)`` channels go, at most ``max_ratio`` of any group."""
    check_ratio(max_ratio, "max_ratio")
    entries = []
    scores = {}
    with shared_reads():
        raw = {g.index: scorer(g) for g in graph.prunable_groups}
    for g in graph.prunable_groups:
        s = np.asarray(torch.as_tensor(raw[g.index]).detach().cpu().double())
        scores[g.index] = s
        norm = s / (s.mean() + 1e-12)
        entries.append(np.stack([np.full(g.size, g.index), np.arange(g.size), norm], 1))
    if not entries:
        return {}
    table = np.concatenate(entries)
    total = table.shape[0]
    budget = math.ceil(ratio * total - 1e-9)
    caps = {g.index: n_to_prune(g, max_ratio, None, min_channels) for g in graph.prunable_groups}
    taken = {k: [] for k in caps}
    for gi, ch, _ in table[np.lexsort((table[:, 1], table[:, 0], table[:, 2]))]:
        if budget <= 0:
            break
        gi = int(gi)
        if len(taken[gi]) < caps[gi]:
            taken[gi].append(int(ch))
            budget -= 1
    plan = {}
    by_index = {g.index: g for g in graph.groups}
    for gi, chans in taken.items():
        g = by_index[gi]
        if round_to and round_to > 1 and chans:
            n = n_to_prune(g, len(chans) / g.size, round_to, min_channels)
            chans = select_channels(g, scores[gi], n)
        else:
            chans = select_channels(g, scores[gi], len(chans))
        if chans:
            plan[g] = chans
    return plan
