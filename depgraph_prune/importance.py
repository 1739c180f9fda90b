"""Step 3a: importance criteria. Each scores every prunable channel of a group (higher = keep).

A criterion is any callable ``(group) -> 1-D tensor of group.size scores``; ``resolve`` turns a
name (``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"``, ``"hessian"``, ``"fpgm"``, ``"lamp"``,
``"random"``) into one.

The built-in criteria share one scheme (:class:`Importance`):

1. every *contributing member* of the group (by default each ``"param"`` member: the producing
   layer's weight and bias, a following norm layer's affine parameters, the consumers' input
   slices, ...) gives one score per channel it covers. A position along the member's ``dim`` is
   one slice of the tensor; a channel that owns several positions (a flatten → linear consumer
   owns ``H·W`` columns per channel) adds the scores of its positions up;
2. the member scores are combined per channel with ``reduction``:

   - ``"mean"`` (default): mean over the members that cover the channel;
   - ``"sum"``: sum over them;
   - ``"max"``: maximum over them;
   - ``"first"``: only the first contributing member (in ``group.members`` order) that covers
     the channel, i.e. the producing layer;

   a channel that no contributing member covers scores 0;
3. the group's final scores are normalized with ``normalize``: ``None`` (default), ``"mean"``
   (divide by their mean), ``"max"`` (by their maximum), ``"sum"`` (by their sum) or
   ``"standardization"`` (subtract the mean, divide by the population standard deviation). A
   zero denominator (all scores equal to zero, or all equal for standardization) gives zeros.

Scores are returned as a float64 CPU tensor of shape ``(group.size,)``.

Gradient criteria (:class:`Taylor`, :class:`Hessian`) need calibration data: they set
``needs_gradients = True`` and must be given batches through
``accumulate(model, calibration, loss_fn=None, device=None)`` before scoring (``prepare`` does it
for a resolved criterion, as ``dp.prune(..., calibration=...)`` does).
"""
from __future__ import annotations

import contextlib
import threading
import zlib
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._memory import SCRATCH_MIN, drop_scratch, release_free_memory, scratch
from ._walk import named_modules as _named_modules, named_tensors
from .errors import PruningError
from .graph.groups import Group, GroupMember

__all__ = [
    "Importance", "GradientImportance", "Magnitude", "BNScale", "Taylor", "Hessian", "FPGM", "LAMP",
    "Random", "NAMED", "REDUCTIONS", "NORMALIZATIONS", "resolve", "prepare", "member_tensor", "shared_reads",
]

REDUCTIONS = ("mean", "sum", "max", "first")
NORMALIZATIONS = (None, "mean", "max", "sum", "standardization")


def member_tensor(model, name: str):
    """The tensor (parameter or buffer) at the qualified ``name`` of ``model``, or None."""
    cache = getattr(_session, "cache", None)
    if cache is not None:  # within shared_reads: one walk of the model for every lookup
        table = cache.get("tensors")
        if table is None or table[0] is not model:
            table = cache["tensors"] = (model, named_tensors(model))
        hit = table[1].get(name)
        if hit is not None:
            return hit
    obj = model
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _submodule(model, name: str):
    """``model.get_submodule(name)``, or None; within shared_reads from one table."""
    cache = getattr(_session, "cache", None)
    if cache is not None:
        table = cache.get("modules")
        if table is None or table[0] is not model:
            table = cache["modules"] = (model, dict(_named_modules(model, remove_duplicate=False)))
        return table[1].get(name)
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# ----------------------------------------------------------------------------------- helpers
def _slices(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as a float64 CPU matrix with one row per position along ``dim``."""
    return t.detach().to("cpu", torch.float64).movedim(dim, 0).reshape(t.shape[dim], -1)


_BLOCK = SCRATCH_MIN  # float64 elements converted at a time (1 MiB: the block stays in cache)


def _row_sums(t: torch.Tensor, dim: int, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``fn`` of ``t`` summed over each position along ``dim``, in float64 on the CPU. Converted
    block by block into one reused buffer (``fn(buf, out=buf)``): a float64 copy of a whole large
    weight would double its memory, and a fresh block per step fragments the C heap, which then
    stays resident.

    Dims 0 and 1 of a tensor with two or more dims come from one pass that yields both (a conv
    weight's output channels are one group's, its input channels another's); within
    :func:`shared_reads` the other dim's sums are kept for the group that asks next."""
    if t.dim() >= 2 and dim in (0, 1):
        cache = getattr(_session, "cache", None)
        if cache is None:
            return _dim01_sums(t, fn)[dim]
        key = (id(t), fn)
        hit = cache.get(key)
        if hit is None or hit[0] is not t:
            hit = cache[key] = (t, _dim01_sums(t, fn))  # holds t: its id cannot be reused meanwhile
        return hit[1][dim]
    if t.dim() == 1:  # one element per position: its value is its sum (exact in float64)
        v = t.detach().to("cpu", torch.float64, copy=True)
        return fn(v, out=v)
    t = t.detach().movedim(dim, 0)
    n = t.shape[0]
    width = max(1, t[0].numel()) if n else 1
    step = max(1, _BLOCK // width)
    out = torch.empty(n, dtype=torch.float64)
    buf = scratch(min(step, n) * width)
    for i in range(0, n, step):
        k = min(step, n - i)
        block = buf[: k * width].view(k, width)
        block.view((k,) + tuple(t.shape[1:])).copy_(t[i:i + k])  # strided copy, no temporary
        fn(block, out=block)
        torch.sum(block, 1, out=out[i:i + k])
    return out


def _dim01_sums(t: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(t)`` summed per position of dim 0 and per position of dim 1, both in one pass over
    ``t`` (blocks of dim-0 rows converted to float64 in the scratch buffer: ``|w|`` and ``w²`` of
    a float32/bfloat16 weight are exact there, and the sums accumulate in float64 in an order
    fixed by the shape alone, so equal channels score equal and ranks do not depend on the
    machine's vector width)."""
    t = t.detach()
    d0, d1 = t.shape[0], t.shape[1]
    rest = 1
    for s in t.shape[2:]:
        rest *= s
    out0 = torch.zeros(d0, dtype=torch.float64)
    out1 = torch.zeros(d1, dtype=torch.float64)
    width = d1 * rest
    if d0 == 0 or width == 0:
        return out0, out1
    step = max(1, _BLOCK // width)
    buf = scratch(min(step, d0) * width)
    for i in range(0, d0, step):
        k = min(step, d0 - i)
        block = buf[: k * width]
        block.view((k,) + tuple(t.shape[1:])).copy_(t[i:i + k])  # strided copy, no temporary
        fn(block, out=block)
        per = block.view(k, d1, rest).sum(2) if rest > 1 else block.view(k, d1)
        torch.sum(per, 1, out=out0[i:i + k])
        out1 += per.sum(0)
    return out0, out1


_session = threading.local()


@contextlib.contextmanager
def shared_reads():
    """Score many groups in one block (``local_plan`` and ``global_plan`` do): each weight is
    read once for both of its channel dims, and the scratch buffer is kept until the end instead
    of being handed back group by group. Weights must not change inside the block.

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> graph = dp.build_graph(model, torch.randn(1, 3, 16, 16))
        >>> score = dp.importance.resolve("l1")
        >>> with shared_reads():  # model[2].weight is read once for both groups
        ...     scores = [score(g) for g in graph.prunable_groups]
        >>> [s.shape[0] for s in scores]
        [8, 4]
    """
    if getattr(_session, "cache", None) is not None:  # nested: the outer block owns the cache
        yield
        return
    _session.cache = {}
    try:
        yield
    finally:
        _session.cache = None
        if drop_scratch() > _BLOCK:  # a row wider than a block needed a large buffer: hand it back
            release_free_memory()


def _to_channels(member: GroupMember, per_pos: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-position values (last dim = positions along the member's dim) into group channels.
    Returns ``(scores[..., size], present[size])``."""
    raw = np.asarray(member._channel_of)
    identity = member._identity if member._identity is not None else _is_identity(raw, size)
    if per_pos.shape[-1] == size and identity:
        # position i is channel i (the common case): the sums are the scores as they are
        # (not copied: the sums are only read from here on)
        return (per_pos if per_pos.dtype == torch.float64 else per_pos.to(torch.float64)), \
            torch.from_numpy(np.ones(size, dtype=bool))
    ch = torch.as_tensor(raw, dtype=torch.long)
    ok = ch >= 0
    out = torch.zeros(per_pos.shape[:-1] + (size,), dtype=torch.float64)
    out.index_add_(-1, ch[ok], per_pos[..., ok].to(torch.float64))
    present = torch.zeros(size, dtype=torch.bool)
    present[ch[ok]] = True
    return out, present


def _is_identity(raw: np.ndarray, size: int) -> bool:
    """Whether ``raw`` is ``0, 1, ..., size - 1`` (the ends first: they settle most cases)."""
    if raw.size != size:
        return False
    return size == 0 or (raw[0] == 0 and raw[-1] == size - 1 and bool((raw == np.arange(size)).all()))


def _channel_rows(member: GroupMember, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One flat vector per covered channel: the rows (positions) of the channel, concatenated in
    position order. Channels owning fewer positions than the others are zero-padded.
    Returns ``(channels, vectors[len(channels), k * rows.shape[1]])``."""
    ch = np.asarray(member._channel_of)
    pos = np.nonzero(ch >= 0)[0]
    order = pos[np.argsort(ch[pos], kind="stable")]
    chans, counts = np.unique(ch[order], return_counts=True)
    k = int(counts.max())
    d = rows.shape[1]
    if (counts == k).all():
        vec = rows[torch.as_tensor(order)].reshape(len(chans), k * d)
    else:
        vec = torch.zeros(len(chans), k * d, dtype=rows.dtype)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i, (s, c) in enumerate(zip(starts, counts)):
            vec[i, : c * d] = rows[torch.as_tensor(order[s:s + c])].reshape(-1)
    return torch.as_tensor(chans, dtype=torch.long), vec


def _normalize(s: torch.Tensor, how) -> torch.Tensor:
    if how is None or s.numel() == 0:
        return s
    if how == "standardization":
        std = s.std(unbiased=False)
        return (s - s.mean()) / std if std > 0 else torch.zeros_like(s)
    denom = {"mean": s.mean, "max": s.max, "sum": s.sum}[how]()
    return s / denom if denom != 0 else s


def _check_options(reduction, normalize):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not known; use one of {list(REDUCTIONS)}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not known; use one of {list(NORMALIZATIONS)}")


_NORM_TYPES = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                                getattr(nn, "RMSNorm", None)) if t is not None)


# ------------------------------------------------------------------------------ base class
class Importance:
    """Base class of the built-in criteria: per-member channel scores, combined per channel
    with ``reduction`` and normalized with ``normalize`` (see the module docstring).

    Subclasses implement ``_member_scores(model, member, tensor, size)``, returning
    ``(scores[size], present[size])`` for one contributing member, and may narrow
    ``_contributes(model, member)`` (default: every ``"param"`` member with at least one dim).

    Example (a custom criterion: the largest absolute weight of each channel)::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> from depgraph_prune.importance import Importance
        >>> class MaxAbs(Importance):
        ...     def _member_scores(self, model, member, tensor, size):
        ...         rows = tensor.detach().double().movedim(member.dim, 0).reshape(tensor.shape[member.dim], -1)
        ...         present = torch.zeros(size, dtype=torch.bool)
        ...         out = torch.zeros(size, dtype=torch.float64)
        ...         for pos, c in enumerate(member._channel_of):
        ...             if c >= 0:
        ...                 out[c] = max(out[c], rows[pos].abs().max()); present[c] = True
        ...         return out, present
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> group = dp.build_graph(model, torch.randn(1, 3, 8, 8)).group_of("0")
        >>> MaxAbs(reduction="first")(group).shape
        torch.Size([4])
    """

    needs_gradients = False

    def __init__(self, reduction: str = "mean", normalize: str | None = None):
        _check_options(reduction, normalize)
        self.reduction = reduction
        self.normalize = normalize

    def __call__(self, group: Group) -> torch.Tensor:
        return _normalize(self._group_scores(group), self.normalize)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r}, normalize={self.normalize!r})"

    # -- hooks ------------------------------------------------------------------------------
    def _contributes(self, model, member: GroupMember) -> bool:
        return member.kind == "param"

    def _member_scores(self, model, member: GroupMember, tensor: torch.Tensor, size: int):
        raise NotImplementedError

    # -- machinery --------------------------------------------------------------------------
    def _contributions(self, group: Group):
        model = group._graph.model
        for m in group.members:
            if not m.owned or not self._contributes(model, m):
                continue
            t = member_tensor(model, m.name)
            if t is None or t.dim() == 0:
                continue
            if t.device.type == "meta":
                raise PruningError(f"{self!r} reads weight values, but `{m.name}` is on the meta device and has "
                                   "none: use importance='random' to plan a meta model, or load its weights first")
            yield m, t

    def _group_scores(self, group: Group) -> torch.Tensor:
        model = group._graph.model
        try:
            parts = [self._member_scores(model, m, t, group.size) for m, t in self._contributions(group)]
        finally:
            # large members were read: hand the heap's churn back (at the end of a shared_reads
            # block, when in one)
            if getattr(_session, "cache", None) is None and drop_scratch() > _BLOCK:
                release_free_memory()
        return _reduce(parts, group.size, self.reduction)


def _reduce(parts, size: int, reduction: str) -> torch.Tensor:
    if reduction == "first":
        out = torch.full((size,), float("nan"), dtype=torch.float64)
        for s, present in parts:
            take = present & torch.isnan(out)
            out[take] = s[take]
        return torch.nan_to_num(out, nan=0.0)
    if reduction == "max":
        out = torch.full((size,), float("-inf"), dtype=torch.float64)
        for s, present in parts:
            out[present] = torch.maximum(out[present], s[present])
        return torch.where(torch.isinf(out) & (out < 0), torch.zeros_like(out), out)
    # in numpy: a group has a handful of short parts, and a numpy op on them costs a fraction of
    # a torch op (the same IEEE sums and quotient, so the same scores)
    total = np.zeros(size)
    count = np.zeros(size)
    for s, present in parts:
        p = present.cpu().numpy()
        v = s.detach()
        v = (v if v.dtype == torch.float64 and v.device.type == "cpu" else v.to("cpu", torch.float64)).numpy()
        if p.all():  # the common case: the same sums, without the masked copy
            total += v
            count += 1.0
        else:
            total += np.where(p, v, 0.0)
            count += p
    return torch.from_numpy(total if reduction == "sum" else total / np.maximum(count, 1.0))


# --------------------------------------------------------------------------- the criteria
class Magnitude(Importance):
    """Weight magnitude: per member, ``sum |w|^p`` over each channel's slice, i.e. the L1 norm
    (``p=1``, name ``"l1"``) or the *squared* L2 norm (``p=2``, name ``"l2"``).

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(1.0); _ = model[0].weight[2].fill_(0.0)
        >>> group = dp.build_graph(model, torch.randn(1, 3, 8, 8)).group_of("0")
        >>> scores = Magnitude(p=1, reduction="first")(group)   # first = conv 0's filters
        >>> scores.tolist()
        [27.0, 27.0, 0.0, 27.0]
    """

    def __init__(self, p: int = 1, reduction: str = "mean", normalize: str | None = None):
        if p not in (1, 2):
            raise ValueError(f"Magnitude: p must be 1 or 2, got {p!r}")
        super().__init__(reduction, normalize)
        self.p = p

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p}, reduction={self.reduction!r}, normalize={self.normalize!r})"

    def _member_scores(self, model, member, tensor, size):
        per_pos = _row_sums(tensor, member.dim, torch.abs if self.p == 1 else torch.square)
        return _to_channels(member, per_pos, size)


class BNScale(Importance):
    """Network-slimming criterion (name ``"bn_scale"``): ``|gamma|``, the absolute scale of the
    group's normalization layers (BatchNorm/InstanceNorm, GroupNorm, LayerNorm, RMSNorm; found
    by the type of ``model.get_submodule(owner)`` of each ``*.weight`` member). Only those members
    contribute; ``reduction`` combines several norm layers of one group.

    A group without any affine norm layer **falls back to the L1 magnitude** of its parameter
    members (``Magnitude(p=1)`` with the same reduction), so every group gets a score.

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.1, 1.0]))
        >>> group = dp.build_graph(model, torch.randn(1, 3, 8, 8)).group_of("0")
        >>> [round(v, 3) for v in BNScale()(group).tolist()]
        [0.5, 2.0, 0.1, 1.0]
    """

    def _contributes(self, model, member):
        owner, _, attr = member.name.rpartition(".")
        if member.kind != "param" or attr != "weight":
            return False
        return isinstance(_submodule(model, owner), _NORM_TYPES)

    def _member_scores(self, model, member, tensor, size):
        return _to_channels(member, _row_sums(tensor, member.dim, torch.abs), size)

    def _group_scores(self, group):
        if next(iter(self._contributions(group)), None) is None:
            return Magnitude(1, reduction=self.reduction)._group_scores(group)
        return super()._group_scores(group)


class FPGM(Importance):
    """Filter pruning via geometric median (name ``"fpgm"``): per member, the sum of Euclidean
    distances from each channel's slice to every other covered channel's slice. A channel close
    to all the others (near the geometric median) is redundant and scores low.

    A channel owning several positions of a member is the concatenation of their slices.

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU(), nn.Conv2d(3, 2, 1))
        >>> with torch.no_grad():   # filters at 0, 1 and 3 along one axis
        ...     _ = model[0].weight.zero_(); model[0].weight[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 3.0])
        >>> group = dp.build_graph(model, torch.randn(1, 3, 4, 4)).group_of("0")
        >>> FPGM(reduction="first")(group).tolist()   # 1+3, 1+2, 3+2
        [4.0, 3.0, 5.0]
    """

    def _member_scores(self, model, member, tensor, size):
        chans, vec = _channel_rows(member, _slices(tensor, member.dim))
        out = torch.zeros(size, dtype=torch.float64)
        out[chans] = torch.cdist(vec[None], vec[None])[0].sum(1)
        present = torch.zeros(size, dtype=torch.bool)
        present[chans] = True
        return out, present


class LAMP(Importance):
    """Layer-adaptive magnitude-based pruning score (name ``"lamp"``), per member on the
    channels' squared L2 norms ``s_c``: ``s_c / sum(s_j for every covered channel j with
    s_j >= s_c)`` (ties are all in the denominator). The largest channel of a member scores 1;
    scores are comparable across layers of different scale.

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU(), nn.Conv2d(3, 2, 1))
        >>> with torch.no_grad():   # squared norms 1, 4, 9
        ...     _ = model[0].weight.zero_(); model[0].weight[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
        >>> group = dp.build_graph(model, torch.randn(1, 3, 4, 4)).group_of("0")
        >>> [round(v, 4) for v in LAMP(reduction="first")(group).tolist()]   # 1/14, 4/13, 9/9
        [0.0714, 0.3077, 1.0]
    """

    def _member_scores(self, model, member, tensor, size):
        sq, present = _to_channels(member, _row_sums(tensor, member.dim, torch.square), size)
        vals = sq[present]
        asc = torch.sort(vals).values
        suffix = torch.flip(torch.cumsum(torch.flip(asc, [0]), 0), [0])  # suffix[i] = sum(asc[i:])
        denom = suffix[torch.searchsorted(asc, vals, right=False)]
        out = torch.zeros(size, dtype=torch.float64)
        out[present] = torch.where(denom > 0, vals / torch.where(denom > 0, denom, torch.ones_like(denom)),
                                   torch.zeros_like(vals))
        return out, present


class Random(Importance):
    """Uniform random scores in ``[0, 1)`` (name ``"random"``), a baseline. Deterministic: the
    same ``seed`` gives the same scores for the same group (the generator is seeded from
    ``seed`` and the group's first member name and size, so groups differ from each other).

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> group = dp.build_graph(model, torch.randn(1, 3, 8, 8)).group_of("0")
        >>> torch.equal(Random(seed=1)(group), Random(seed=1)(group))
        True
    """

    def __init__(self, seed: int = 0, normalize: str | None = None):
        super().__init__("mean", normalize)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"Random(seed={self.seed}, normalize={self.normalize!r})"

    def _group_scores(self, group):
        key = f"{group.members[0].name if group.members else ''}/{group.size}".encode()
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(key)) % (2 ** 63))
        return torch.rand(group.size, generator=gen, dtype=torch.float64)


# ------------------------------------------------------------------- gradient criteria
def _as_args(inputs) -> tuple[tuple, dict]:
    # same convention as example_inputs: tuple/list = positional args, dict = kwargs
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _move(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(v, device) for v in obj)
    return obj


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class GradientImportance(Importance):
    """Base of criteria that need gradients of a loss on calibration data.

    ``accumulate(model, calibration, loss_fn=None, device=None)`` runs, for every
    ``(inputs, targets)`` batch of ``calibration``, ``loss = loss_fn(model(inputs), targets)``
    (``loss_fn`` defaults to cross-entropy; ``inputs`` may be a tensor, a tuple/list of
    positional arguments or a dict of keyword arguments) and ``loss.backward()``, and keeps
    per-parameter statistics of the gradients, keyed by qualified parameter name. Batches are moved
    to ``device`` (default: the model's device). The model is run in its current mode (train or
    eval) and is left as it was: parameters, ``requires_grad`` flags, every parameter's ``.grad``
    and every buffer (e.g. BatchNorm running statistics updated by a train-mode forward) are
    restored. Frozen parameters (``requires_grad=False``) get gradients too, temporarily.
    A parameter the loss does not reach has gradient 0.

    Each call replaces the statistics of the previous one. Scoring a group uses the parameter
    names of ``group._graph.model``: accumulate on that model, and again after pruning it.
    """

    needs_gradients = True

    def __init__(self, reduction: str = "mean", normalize: str | None = None):
        super().__init__(reduction, normalize)
        self.stats: dict[str, Any] | None = None
        self.n_batches = 0

    # -- per-criterion statistics ---------------------------------------------------------
    def _init_stat(self, p: torch.Tensor):
        raise NotImplementedError

    def _update_stat(self, stat, w: torch.Tensor, g: torch.Tensor | None):
        raise NotImplementedError

    def _finish_stat(self, stat):
        return stat

    # -- protocol --------------------------------------------------------------------------
    def accumulate(self, model: nn.Module, calibration: Iterable, loss_fn: Callable | None = None,
                   device=None) -> "GradientImportance":
        loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        device = _model_device(model) if device is None else torch.device(device)
        named = list(model.named_parameters(remove_duplicate=False))
        params = list({id(p): p for _, p in named}.values())
        saved_grad = [p.grad for p in params]
        saved_req = [p.requires_grad for p in params]
        buffers = list({id(b): b for b in model.buffers()}.values())
        saved_buf = [b.detach().clone() for b in buffers]
        state = {id(p): self._init_stat(p) for p in params if p.is_floating_point() and p.dim() > 0}
        n = 0
        try:
            for p in params:
                p.grad = None
                if p.is_floating_point():
                    p.requires_grad_(True)
            with torch.enable_grad():
                for batch in calibration:
                    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                        raise PruningError(f"calibration must yield (inputs, targets) pairs, got a {type(batch).__name__}"
                                           + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
                    inputs, targets = _move(batch[0], device), _move(batch[1], device)
                    args, kwargs = _as_args(inputs)
                    loss = loss_fn(model(*args, **kwargs), targets)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise PruningError("loss_fn(outputs, targets) must return a scalar tensor, got "
                                           + (f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__))
                    loss.reshape(()).backward()
                    for p in params:
                        if id(p) in state:
                            self._update_stat(state[id(p)], p.detach(), p.grad)
                        p.grad = None
                    n += 1
        finally:
            with torch.no_grad():
                for p, g, r in zip(params, saved_grad, saved_req):
                    p.grad = g
                    p.requires_grad_(r)
                for b, v in zip(buffers, saved_buf):
                    b.copy_(v)
        if n == 0:
            raise PruningError(f"{type(self).__name__}.accumulate: calibration gave no batches")
        done = {i: self._finish_stat(s) for i, s in state.items()}
        self.stats = {name: done[id(p)] for name, p in named if id(p) in done}
        self.n_batches = n
        return self

    def _require_stats(self):
        if self.stats is None:
            raise PruningError(
                f"{type(self).__name__} scores channels with gradients and has no calibration data: pass "
                "calibration=[(inputs, targets), ...] (and optionally loss_fn=) to dp.prune, or call "
                f".accumulate(model, calibration) on the criterion before scoring")

    def _stat(self, name: str, tensor: torch.Tensor):
        self._require_stats()
        stat = self.stats.get(name)
        if stat is None or not self._stat_fits(stat, tensor):
            raise PruningError(
                f"{type(self).__name__}: the gradient statistics do not match parameter {name!r} of the model "
                f"being scored (accumulated on another model, or before it was pruned); call .accumulate again")
        return stat

    def _stat_fits(self, stat, tensor) -> bool:
        return tuple(stat.shape) == tuple(tensor.shape)

    def __call__(self, group: Group) -> torch.Tensor:
        self._require_stats()
        return super().__call__(group)


class Taylor(GradientImportance):
    """First-order Taylor criterion (name ``"taylor"``): for each calibration batch ``b`` the
    first-order estimate of the loss change when a channel's slice is zeroed, the dot product
    ``w_c · dL_b/dw_c`` over the channel's slice of a member, taken in absolute value and summed
    over batches::

        score_c = sum_b | sum_{i in slice c} w_i * dL_b/dw_i |

    Needs :meth:`accumulate` (``dp.prune(..., importance="taylor", calibration=...)``); the
    weights are those at accumulate time. Statistics per parameter: for each dim, the per-batch
    signed dot products of every position along it.

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
        >>> data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(3)]
        >>> taylor = Taylor().accumulate(model, data)
        >>> group = dp.build_graph(model, data[0][0]).group_of("0")
        >>> taylor(group).shape, taylor.n_batches
        (torch.Size([4]), 3)
    """

    def _init_stat(self, p):
        return [[] for _ in range(p.dim())]

    def _update_stat(self, stat, w, g):
        dev = w.device if w.device.type != "mps" else torch.device("cpu")  # MPS has no float64
        if g is None:
            for d, lst in enumerate(stat):
                lst.append(torch.zeros(w.shape[d], dtype=torch.float64, device=dev))
            return
        # float64: the dot products cancel heavily (a conv followed by BatchNorm in train mode is
        # scale-invariant, so w · dL/dw is ~0 over its filter)
        prod = w.to(dev).to(torch.float64) * g.to(dev).to(torch.float64)
        for d, lst in enumerate(stat):
            other = [i for i in range(prod.dim()) if i != d]
            lst.append(prod.sum(dim=other) if other else prod.clone())

    def _finish_stat(self, stat):
        return [torch.stack(lst).cpu() for lst in stat]  # per dim: (batches, positions)

    def _stat_fits(self, stat, tensor):
        return len(stat) == tensor.dim() and all(s.shape[1] == n for s, n in zip(stat, tensor.shape))

    def _member_scores(self, model, member, tensor, size):
        per_batch_pos = self._stat(member.name, tensor)[member.dim]
        per_batch, present = _to_channels(member, per_batch_pos, size)
        return per_batch.abs().sum(0), present


class Hessian(GradientImportance):
    """Optimal-brain-damage criterion (name ``"hessian"``) with the diagonal empirical Fisher as
    the Hessian: ``w^2`` times the squared gradient accumulated over calibration batches, summed
    over each channel's slice of a member::

        score_c = sum_{i in slice c} w_i^2 * sum_b (dL_b/dw_i)^2

    (no factor 1/2; ``w`` is the current weight). Needs :meth:`accumulate`
    (``dp.prune(..., importance="hessian", calibration=...)``).

    Example::

        >>> import torch, depgraph_prune as dp
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                       nn.Flatten(), nn.Linear(4 * 36, 5))
        >>> data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(3)]
        >>> hessian = Hessian(reduction="sum").accumulate(model, data)
        >>> group = dp.build_graph(model, data[0][0]).group_of("0")
        >>> bool((hessian(group) > 0).all())
        True
    """

    def _init_stat(self, p):
        return torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)

    def _update_stat(self, stat, w, g):
        if g is not None:
            g = g.to(stat.dtype)
            stat.addcmul_(g, g)

    def _finish_stat(self, stat):
        return stat.cpu().to(torch.float64)

    def _member_scores(self, model, member, tensor, size):
        fisher = self._stat(member.name, tensor)
        w = tensor.detach().to("cpu", torch.float64)
        per_pos = (w.pow(2) * fisher).movedim(member.dim, 0).reshape(tensor.shape[member.dim], -1).sum(1)
        return _to_channels(member, per_pos, size)


# ------------------------------------------------------------------------------ resolving
NAMED: dict[str, Callable[[], Importance]] = {
    "l1": lambda: Magnitude(1),
    "l2": lambda: Magnitude(2),
    "bn_scale": BNScale,
    "taylor": Taylor,
    "hessian": Hessian,
    "fpgm": FPGM,
    "lamp": LAMP,
    "random": Random,
}


def resolve(importance) -> Callable[[Group], torch.Tensor]:
    """A criterion from a name in ``NAMED`` (a new instance with default options), an
    :class:`Importance` subclass (instantiated with defaults), or any callable
    ``(group) -> scores`` (returned as is).

    >>> resolve("l2")
    Magnitude(p=2, reduction='mean', normalize=None)
    >>> resolve("nope")
    Traceback (most recent call last):
    ...
    ValueError: importance='nope' is not known; use one of ['bn_scale', 'fpgm', 'hessian', 'l1', 'l2', 'lamp', 'random', 'taylor'] or a callable (group) -> scores
    """
    if isinstance(importance, type) and issubclass(importance, Importance):
        return importance()
    if isinstance(importance, str):
        key = importance.strip().lower()
        if key in NAMED:
            return NAMED[key]()
    elif callable(importance):
        return importance
    raise ValueError(f"importance={importance!r} is not known; use one of {sorted(NAMED)} "
                     "or a callable (group) -> scores")


def prepare(scorer, model: nn.Module, calibration: Iterable | None = None, loss_fn: Callable | None = None,
            device=None):
    """Feed calibration data to a resolved criterion that needs gradients (``needs_gradients``),
    before any group is scored; returns the scorer. Raises ``PruningError`` if it needs
    gradients and ``calibration`` is None. Criteria without gradients ignore the data."""
    if getattr(scorer, "needs_gradients", False):
        if calibration is None:
            raise PruningError(f"importance {scorer!r} needs gradients: pass calibration=[(inputs, targets), ...] "
                               "(and optionally loss_fn=, default cross-entropy)")
        scorer.accumulate(model, calibration, loss_fn=loss_fn, device=device)
    return scorer
