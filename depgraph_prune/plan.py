"""Step 3c: the plan. Which channels of which groups go: per-group ratios (a global ratio or
``fnmatch`` patterns on module names), local or global ranking, ``round_to``, ``min_channels``,
and the per-layer floor ``max_ratio``.

A group may hold the outputs of several layers (a concatenation: ``cat([a(x), b(x)])`` is one
group read by its consumer). Its *parts* (``Group.parts``: the channels covered by the same
members, i.e. one producer's share) are planned one by one: in local mode every part loses
its own ratio, ranked only against channels of the same part, so ``ratio=0.5`` halves ``a``
and ``b`` alike. Where channels of different parts or groups compete (global ranking,
``per_layer=False``), each part's scores are first divided by their mean
(:func:`fair_scores`): raw norms of layers with different fan-in are not comparable.
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ._walk import named_modules, named_tensors
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
    return {gi: [name for name, _ in entries] for gi, entries in _producer_modules(graph).items()}


def _producer_modules(graph: DependencyGraph) -> dict[int, list[tuple[str, tuple[str, int]]]]:
    """Group index → ``(module name, (canonical name, dim) of its output member)``, in module order."""
    from .graph.dependency_graph import _out_key
    canonical = graph._ctx.canonical_name
    out: dict[int, list] = {}
    for name, mod in named_modules(graph.model):
        if not name or not any(p is not None for p in mod._parameters.values()) and not _has(mod, "num_features"):
            continue
        name_, dim = _out_key(name, mod)
        key = (canonical(name_), dim)
        g = graph._member_group.get(key)
        if g is not None:
            out.setdefault(g.index, []).append((name, key))
    return out


def _has(mod: nn.Module, attr: str) -> bool:
    """``hasattr(mod, attr)`` without the exception a miss raises inside ``nn.Module.__getattr__``
    (most modules have no such attribute), for modules that keep torch's ``__getattr__``."""
    if type(mod).__getattr__ is not nn.Module.__getattr__:
        return hasattr(mod, attr)
    d = mod.__dict__
    return attr in d or hasattr(type(mod), attr) or any(attr in d.get(t, ()) for t in ("_parameters", "_buffers", "_modules"))


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
    rounded *up* to a multiple of ``round_to`` (counted over all the group's channels).

    A group whose channels are blocks of several filters (``group.unit > 1``: heads, shuffled
    blocks) rounds to the nearest count instead, ties keeping more: ``ceil`` is the published
    rule for single filters, where it overshoots by less than one filter; on three blocks of
    eight filters it would take two blocks at ratio 0.5 and leave a third of the layer."""
    total = group.size + group.n_frozen
    slack = 0.5 if group.unit > 1 else 0.0
    n = max(0, min(math.ceil(ratio * group.size - slack - 1e-9), group.size))
    keep = total - n
    keep = max(keep, min_channels, 1)
    if round_to and round_to > 1:
        keep = min(total, math.ceil(keep / round_to) * round_to)
    return max(0, min(total - keep, group.size))


def floor_keep(width: int, max_ratio: float | None, min_channels: int = 1) -> int:
    """Channels a layer of ``width`` keeps at least: ``ceil((1 - max_ratio) * width)`` (no bound
    when ``max_ratio`` is None) and ``min_channels``, never more than ``width``."""
    keep = min(max(min_channels, 1), width)
    if max_ratio is not None:
        keep = max(keep, math.ceil((1.0 - max_ratio) * width - 1e-9))
    return min(keep, width)


def part_caps(group: Group, max_ratio: float | None = None, min_channels: int = 1) -> np.ndarray:
    """Most channels each part of ``group`` may lose. A part keeps ``floor_keep`` of its width;
    a one-part group counts its frozen channels in its width (they stay anyway)."""
    parts = group.parts
    caps = np.zeros(len(parts), dtype=np.int64)
    for k, p in enumerate(parts):
        width = len(p) + (group.n_frozen if len(parts) == 1 else 0)
        caps[k] = max(0, min(len(p), width - floor_keep(width, max_ratio, min_channels)))
    return caps


def apportion(n: int, sizes, caps=None) -> np.ndarray:
    """Split ``n`` removals over parts in proportion to their ``sizes`` (largest remainder; ties
    to the earlier part): each part gets the floor or the ceiling of its quota ``n * size / total``,
    never more than its cap; fewer than ``n`` in all when caps bind.

    >>> apportion(32, [32, 32]).tolist(), apportion(5, [4, 4, 8]).tolist()
    ([16, 16], [1, 1, 3])
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    caps = sizes.copy() if caps is None else np.minimum(np.asarray(caps, dtype=np.int64), sizes)
    total = int(sizes.sum())
    if n <= 0 or total == 0:
        return np.zeros(sizes.size, dtype=np.int64)
    quota = n * sizes / total
    out = np.minimum(np.floor(quota + 1e-9).astype(np.int64), caps)
    rest = n - int(out.sum())
    # one pass: every part gets floor or ceil of its quota, never more (a capped part's share is
    # not pushed onto the others, which would make them lose more than their ratio)
    frac = np.where((out < caps) & (quota - out > 1e-9), quota - out, -np.inf)
    pick = np.argsort(-frac, kind="stable")[:max(rest, 0)]
    out[pick[np.isfinite(frac[pick])]] += 1
    return out


def fair_scores(group: Group, scores) -> np.ndarray:
    """``scores`` with each part's scores divided by that part's mean (float64).

    Raw magnitudes of different layers are not comparable: an L1 norm sums a filter's weights,
    so a 7x7 conv's filters outscore a 1x1 conv's by its fan-in, and initializations scale
    weights by ``1/sqrt(fan_in)``. After this normalization every part (every producing layer
    of a concatenation, every plain group) has mean score 1, and only the spread within a
    layer decides which of its channels go first; two layers whose weights have the same
    per-weight magnitudes get the same scores."""
    s = np.asarray(torch.as_tensor(scores).detach().cpu().double()).copy()
    for p in group.parts:
        mean = s[p].mean() if len(p) else 0.0
        if mean > 0:
            s[p] = s[p] / mean
    return s


def _scores_array(group: Group, scores) -> np.ndarray:
    s = np.asarray(torch.as_tensor(scores).detach().cpu().double())
    if s.shape != (group.size,):
        raise PruningError(f"importance returned scores of shape {tuple(s.shape)} for group {group.index} "
                           f"of {group.size} channels")
    return s


def pick_in_parts(group: Group, scores, counts) -> list[int]:
    """The ``counts[k]`` lowest-scoring channels of every part ``k`` (stable order on ties),
    never emptying a member."""
    s = _scores_array(group, scores)
    chosen = np.zeros(group.size, dtype=bool)
    for p, k in zip(group.parts, counts):
        if k > 0:
            chosen[p[np.argsort(s[p], kind="stable")[:int(k)]]] = True
    for m in group.members:
        ch = m._channel_of
        if ch.size == 0 or m.owned != ch.size:
            continue  # the member keeps fixed positions anyway
        covered = np.bincount(ch, minlength=group.size).astype(bool)  # (no sort, unlike unique)
        if chosen[covered].all():
            mine = np.flatnonzero(covered)
            chosen[mine[np.argmax(s[mine])]] = False
    return np.nonzero(chosen)[0].tolist()


def _unit(group: Group, n: int, round_to: int | None) -> int:
    """Apportion in blocks of ``round_to`` when every part and ``n`` allow it, so that each
    layer of a concatenation keeps a multiple of ``round_to`` too."""
    if not round_to or round_to <= 1 or len(group.parts) < 2 or n % round_to:
        return 1
    return round_to if all(len(p) % round_to == 0 for p in group.parts) else 1


def select_channels(group: Group, scores, n_prune: int, *, per_layer: bool = True,
                    max_ratio: float | None = None, min_channels: int = 1, round_to: int | None = None) -> list[int]:
    """``n_prune`` channels of ``group`` to remove, lowest scores first, never emptying a member.

    ``per_layer=True`` (default): the removals are split over the group's parts in proportion to
    their sizes, and each part loses its lowest-scoring channels (a concatenation of two layers
    loses the same fraction of each). ``per_layer=False``: the group is ranked as a whole on
    :func:`fair_scores`. Either way no part drops below :func:`floor_keep` (``max_ratio``,
    ``min_channels``); fewer than ``n_prune`` go when that floor binds."""
    if n_prune <= 0:
        return []
    s = _scores_array(group, scores)
    parts = group.parts
    caps = part_caps(group, max_ratio, min_channels)
    if len(parts) == 1:
        counts = [min(int(n_prune), int(caps[0]) if max_ratio is not None else int(n_prune))]
    elif per_layer:
        u = _unit(group, int(n_prune), round_to)
        counts = apportion(int(n_prune) // u, [len(p) // u for p in parts], caps // u) * u
    else:
        counts = _ranked_counts(group, fair_scores(group, s), int(n_prune), caps)
    return pick_in_parts(group, s, counts)


def _ranked_counts(group: Group, fair: np.ndarray, budget: int, caps: np.ndarray) -> np.ndarray:
    part_of = np.empty(group.size, dtype=np.int64)
    for k, p in enumerate(group.parts):
        part_of[p] = k
    taken = _take_lowest(fair, part_of, caps, budget, np.zeros(group.size, dtype=np.int64), np.arange(group.size))
    return np.bincount(part_of[taken], minlength=len(group.parts))


def _take_lowest(score, part, caps, budget, tie1, tie2) -> np.ndarray:
    """Indices of the lowest scores, at most ``caps[part]`` per part and ``budget`` in all
    (what a greedy walk up the sorted scores would take). Ties: ``tie1``, then ``tie2``."""
    order = np.lexsort((tie2, tie1, score))
    p = part[order]
    by_part = np.argsort(p, kind="stable")  # sorted positions grouped by part, best first in each
    sp = p[by_part]
    start = np.r_[0, np.nonzero(np.diff(sp))[0] + 1] if sp.size else np.zeros(0, dtype=np.int64)
    run_start = np.repeat(start, np.diff(np.r_[start, sp.size]))
    rank = np.empty(order.size, dtype=np.int64)
    rank[by_part] = np.arange(sp.size) - run_start
    ok = rank < caps[p]
    ok &= np.cumsum(ok) <= budget
    return order[ok]


def part_ratios(graph: DependencyGraph, ratio: float | None, ratios: Mapping[str, float] | None) -> dict:
    """Like :func:`group_ratios`, per part: group index → one ratio, or a list (one per part of
    ``group.parts``) when patterns give a concatenation's producers different ratios. A part
    takes the ratio of the first producing module covering it that a pattern matches."""
    if ratios is None:
        return group_ratios(graph, ratio, ratios)
    by_group = group_ratios(graph, ratio, ratios)  # validates the patterns
    default = 0.0 if ratio is None else check_ratio(ratio)
    pats = {str(k): float(v) for k, v in dict(ratios).items()}
    prod = producer_members(graph)
    out = {}
    for g in graph.prunable_groups:
        if len(g.parts) == 1:
            out[g.index] = by_group[g.index]
            continue
        rs = []
        for p in g.parts:
            r = default
            for name, m in prod.get(g.index, []):
                if not np.isin(p[0], m._channel_of):
                    continue
                hit = [v for pat, v in pats.items() if fnmatchcase(name, pat)]
                if hit:
                    r = hit[-1]
                    break
            rs.append(r)
        out[g.index] = rs[0] if len(set(rs)) == 1 else rs
    return out


def producer_members(graph: DependencyGraph) -> dict[int, list[tuple[str, object]]]:
    """Group index → ``(module name, member)`` of each module whose output channels the group
    holds (the member is that module's output dim), in module order."""
    out: dict[int, list] = {}
    by_index = {g.index: g for g in graph.groups}
    for gi, entries in _producer_modules(graph).items():
        members: dict = {}
        for m in by_index[gi].members:
            members.setdefault((m.name, m.dim), m)
        for name, key in entries:
            m = members.get(key)
            if m is not None:
                out.setdefault(gi, []).append((name, m))
    return out


def _part_count(size: int, ratio: float, round_to, min_channels: int, cap: int) -> int:
    n = min(math.ceil(ratio * size - 1e-9), size)
    keep = max(size - n, min(min_channels, size), 1 if size else 0)
    if round_to and round_to > 1:
        keep = min(size, math.ceil(keep / round_to) * round_to)
    return max(0, min(size - keep, cap))


def local_plan(graph: DependencyGraph, scorer: Callable, ratios_by_group: dict, round_to=None, min_channels=1,
               *, per_layer: bool = True, max_ratio: float | None = None,
               fixed: Mapping[int, int] | None = None) -> dict[Group, list[int]]:
    """Each group loses ``ratios_by_group[index]`` of its channels (a list: one ratio per part),
    see :func:`select_channels`; ``fixed`` pins the number removed from some groups;
    ``max_ratio`` sets the per-layer floor (None: only ``min_channels``)."""
    plan = {}
    with shared_reads():  # each weight is read once for all the groups it belongs to
        for g in graph.prunable_groups:
            r = ratios_by_group.get(g.index, 0.0)
            if fixed and g.index in fixed:
                n = fixed[g.index]
            elif isinstance(r, (list, tuple, np.ndarray)):
                caps = part_caps(g, max_ratio, min_channels)
                counts = [_part_count(len(p), rp, round_to, min_channels, int(c)) for p, rp, c in zip(g.parts, r, caps)]
                chans = pick_in_parts(g, scorer(g), counts) if sum(counts) else []
                if chans:
                    plan[g] = chans
                continue
            else:
                n = n_to_prune(g, r, round_to, min_channels)
            if n:
                chans = select_channels(g, scorer(g), n, per_layer=per_layer, max_ratio=max_ratio,
                                        min_channels=min_channels, round_to=round_to)
                if chans:
                    plan[g] = chans
    return plan


def global_plan(graph: DependencyGraph, scorer: Callable, ratio: float, max_ratio: float = 0.9,
                round_to=None, min_channels=1) -> dict[Group, list[int]]:
    """One threshold across groups: every part's scores are divided by their mean
    (:func:`fair_scores`), the lowest ``ceil(ratio * total)`` channels go, and every part (every
    layer) keeps at least ``ceil((1 - max_ratio) * width)`` channels (and ``min_channels``)."""
    check_ratio(max_ratio, "max_ratio")
    groups = graph.prunable_groups
    if not groups:
        return {}
    with shared_reads():
        raw = {g.index: scorer(g) for g in groups}
    scores, fair, part, gid, chan, caps = {}, [], [], [], [], []
    base = 0
    for g in groups:
        s = _scores_array(g, raw[g.index])
        scores[g.index] = s
        fair.append(fair_scores(g, s))
        part_of = np.empty(g.size, dtype=np.int64)
        for k, p in enumerate(g.parts):
            part_of[p] = base + k
        part.append(part_of)
        caps.append(part_caps(g, max_ratio, min_channels))
        base += len(g.parts)
        gid.append(np.full(g.size, g.index))
        chan.append(np.arange(g.size))
    fair, part, gid, chan = map(np.concatenate, (fair, part, gid, chan))
    caps = np.concatenate(caps)
    budget = math.ceil(ratio * fair.size - 1e-9)
    taken = _take_lowest(fair, part, caps, budget, gid, chan)
    counts = np.bincount(part[taken], minlength=base)
    plan = {}
    base = 0
    for g in groups:
        c = counts[base:base + len(g.parts)].copy()
        base += len(g.parts)
        if round_to and round_to > 1 and c.sum():
            if len(g.parts) == 1:
                c[0] = n_to_prune(g, c[0] / g.size, round_to, min_channels)
            else:
                c = np.array([_part_count(len(p), k / len(p), round_to, min_channels, len(p))
                              for p, k in zip(g.parts, c)])
        chans = pick_in_parts(g, scores[g.index], c) if c.sum() else []
        if chans:
            plan[g] = chans
    return plan


def layer_widths(graph: DependencyGraph, plan: Mapping[Group, list[int]]) -> list[tuple[str, int, int]]:
    """``(module, width before, width after)`` of every conv / linear layer (a module whose
    output member is a weight of 2 or more dims) whose output channels ``plan`` touches."""
    from .importance import member_tensor
    rows = []
    prod = producer_members(graph)
    tensors = named_tensors(graph.model)  # one table, not a getattr walk per member
    for g, chans in plan.items():
        taken = np.zeros(g.size, dtype=bool)
        taken[np.asarray(list(chans), dtype=np.int64)] = True
        for name, m in prod.get(g.index, []):
            if m.kind != "param" or not m.name.endswith("weight"):
                continue
            t = tensors.get(m.name)
            t = member_tensor(graph.model, m.name) if t is None else t
            if t is None or t.dim() < 2:
                continue
            ch = np.asarray(m._channel_of)
            rows.append((name, m.size, m.size - int(taken[ch[ch >= 0]].sum())))
    return rows
