"""``RegularizedPruner``: a training-loop companion that grows penalties on the channels to be
pruned, then removes them through the engine.

Typical loop (GReg-1)::

    pruner = RegularizedPruner(model, example_inputs, method="greg1", ratio=0.5)
    while not pruner.done:
        for x, y in loader:
            loss = criterion(model(x), y) + pruner.penalty()   # 0 except TPP(closed_form=False)
            optimizer.zero_grad()
            loss.backward()
            pruner.regularize()          # grad += lambda * w on the regularized slices
            optimizer.step()
            pruner.step()                # advance the schedule (after optimizer.step())
            if pruner.done:
                break
    result = pruner.prune()              # surgery; print(result) for MACs / params
    optimizer = make_optimizer(model)    # fresh optimizer for fine-tuning (as in the papers)

The surgery keeps parameter objects (``param.data`` is swapped) but their optimizer state (momentum)
has the old shapes: pass it along (``pruner.prune(optimizer=optimizer)``) to have it sliced, or build a new optimizer.

Distributed data parallel (``torch.nn.parallel.DistributedDataParallel``)
-------------------------------------------------------------------------
Every rank runs its own pruner; nothing is communicated by the pruner itself. The ranks stay
identical because everything the pruner does is a deterministic function of state that DDP
already keeps identical (the weights and the all-reduced gradients)::

    ddp = DistributedDataParallel(model)        # broadcasts rank 0's weights to every rank
    pruner = RegularizedPruner(ddp.module, example_inputs, "greg1", ratio=0.5)   # after wrapping
    for x, y in loader:                         # a DistributedSampler shard per rank
        loss = criterion(ddp(x), y) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()                         # DDP's gradient all-reduce has finished here
        pruner.regularize()                     # same averaged grads + same weights -> same result
        optimizer.step()
        pruner.step()
    pruner.broadcast_buffers()                  # BN running stats: make rank 0's the common ones
    result = pruner.prune()                     # on every rank: identical pruned models
    ddp = DistributedDataParallel(model)        # re-wrap: the old reducer has the old shapes

* Build the pruner on the underlying module (``ddp.module``; passing the DDP or DataParallel
  wrapper itself is accepted and unwrapped). The channel choice ``S_p`` is made from the weights
  at construction (GReg-1, TPP, baselines) or later from the weights then (GReg-2, GrowingReg),
  so the weights must be identical on every rank when that happens: construct the pruner *after*
  wrapping (DDP broadcasts rank 0's parameters and buffers in its constructor) or after loading
  the same checkpoint everywhere.
* ``regularize()`` goes after ``loss.backward()``: by then DDP has averaged the gradients, so the
  penalty ``lambda * w`` is added once, on identical gradients, on every rank. With gradient
  accumulation under ``ddp.no_sync()``, call it once per optimizer step, after the last
  (synchronized) backward. TPP's Gram gradient is added there too, from the identical weights.
  With ``TPP(closed_form=False)`` it is ``penalty()``, part of the loss, so its gradient goes
  through the all-reduce like the data term (identical on every rank, so averaging keeps it).
* ``step()`` (schedule, magnitude ratio, GReg-2's pick, TPP's zeroing) reads only the weights and
  the iteration counter: call it on every rank, every iteration.
* Buffers are not averaged: DDP copies rank 0's buffers (BN running statistics) to the others at
  the start of each training forward, so after the last step they differ. Call
  :meth:`RegularizedPruner.broadcast_buffers` (or use ``SyncBatchNorm``) before ``prune()`` or
  before saving. :meth:`RegularizedPruner.is_synchronized` checks (collectively) that every rank
  holds the same pruner state, optionally the same weights.
* ``state_dict()`` is identical on every rank: save it from rank 0 only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import warnings
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .._gc import old_objects_frozen
from .. import importance as _imp
from ..analysis import _separation, filter_l1_norms
from ..errors import PruningError
from ..measure import count_ops
from ..prune import OPTIMIZER_NOTE, PruneResult, build_graph, select_channels, width_row
from ..specs import match_ratio, name_patterns, resnet_stages, validate_ratios
from .methods import Method, make_method

__all__ = ["RegularizedPruner"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_MHA_IN = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _role(module: nn.Module, attr: str, dim: int) -> str:
    """How a parameter slice relates to the group's channel: ``weight`` (a conv/linear filter
    producing it), ``bias`` (that filter's bias), ``norm`` (norm scale/shift), ``consumer`` (a
    conv/linear input-channel slice reading it) or ``other`` (any other per-channel parameter)."""
    if isinstance(module, _CONVT):
        if attr == "weight":
            return "weight" if dim == 1 else "consumer"
        if attr == "bias":
            return "bias"
    if isinstance(module, (*_CONV, nn.Linear)):
        if attr == "weight":
            return "weight" if dim == 0 else "consumer"
        if attr == "bias":
            return "bias"
    if isinstance(module, nn.MultiheadAttention):
        if attr in _MHA_IN:
            return "weight" if dim == 0 else "consumer"
        if attr == "in_proj_bias":
            return "bias"
    if isinstance(module, _NORM):
        return "norm"
    return "other"


class _Slice:
    """One parameter member of a group: the positions along ``dim`` and their group channels."""

    def __init__(self, model: nn.Module, member, group_size: int):
        owner, _, attr = member.name.rpartition(".")
        self.name = member.name
        self.module = model.get_submodule(owner) if owner else model
        self.attr = attr
        self.dim = member.dim
        self.role = _role(self.module, attr, member.dim)
        self.channel_of = np.asarray(member._channel_of, dtype=np.int64)
        self.size = int(self.channel_of.size)
        # index into cat(lam, [0]): positions the group does not own read the trailing 0
        self._pos_map = torch.as_tensor(np.where(self.channel_of >= 0, self.channel_of, group_size))
        self._lam_cache: dict = {}
        self._zero_cache: dict = {}

    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    def _shape(self, ndim: int) -> list[int]:
        shape = [1] * ndim
        shape[self.dim] = self.size
        return shape

    def lam_pos(self, gs: "_GroupState", p: torch.Tensor) -> torch.Tensor:
        """Per-position penalty, shaped to broadcast along ``dim`` (cached per lambda version)."""
        key = (p.device, p.dtype)
        hit = self._lam_cache.get(key)
        if hit is not None and hit[0] == gs.version:
            return hit[1]
        ext = torch.cat([gs.lam, gs.lam.new_zeros(1)]).to(device=p.device, dtype=p.dtype)
        val = ext[self._pos_map.to(p.device)].view(self._shape(p.dim()))
        self._lam_cache[key] = (gs.version, val)
        return val

    def pruned_positions(self, gs: "_GroupState", device) -> torch.Tensor:
        key = device
        hit = self._zero_cache.get(key)
        if hit is not None and hit[0] == gs.pruned_version:
            return hit[1]
        pos = np.nonzero(np.isin(self.channel_of, gs.pruned) & (self.channel_of >= 0))[0]
        val = torch.as_tensor(pos, dtype=torch.long, device=device)
        self._zero_cache[key] = (gs.pruned_version, val)
        return val


class _GroupState:
    """Schedule state of one regularized group (everything ``state_dict`` saves)."""

    def __init__(self, pruner: "RegularizedPruner", group, producer: str, score_member, ratio: float, n_prune: int):
        self.group = group
        self.producer = producer
        self.ratio = ratio
        self.n_prune = n_prune
        self.size = group.size
        self.lam = torch.zeros(group.size, dtype=torch.float64)
        self.version = 0
        self.pruned: list[int] = []
        self.chosen = False
        self.pruned_version = 0
        self._pruned_mask = torch.zeros(group.size, dtype=torch.bool)
        self.h: float | None = None
        self.r: float | None = None
        self.finished = False
        self.picked = False
        self.n_up = 0
        self.n_pick = 0
        self.t_pick = -1
        model = pruner.model
        all_slices = [_Slice(model, m, group.size) for m in group.members if m.kind == "param"]
        self.slices = [s for s in all_slices if pruner.method.slice_filter(s.role)]
        self.gram = [s for s in all_slices if s.role == "weight"]
        self.zero = [s for s in all_slices if s.role != "consumer"]
        self.score_slice = _Slice(model, score_member, group.size)
        self._active_version = -1
        self._active = False

    # -- penalties ---------------------------------------------------------------------------
    @property
    def max_lambda(self) -> float:
        return float(self.lam.max()) if self.lam.numel() else 0.0

    @property
    def active(self) -> bool:
        if self._active_version != self.version:
            self._active = bool((self.lam != 0).any())
            self._active_version = self.version
        return self._active

    def set_lambda(self, pruned: float | None = None, kept: float | None = None, uniform: float | None = None):
        if uniform is not None:
            self.lam.fill_(float(uniform))
        else:
            mask = self._pruned_mask
            if pruned is not None:
                self.lam[mask] = float(pruned)
            if kept is not None:
                self.lam[~mask] = float(kept)
        self.version += 1

    # -- channel choice -------------------------------------------------------------------------
    def set_pruned(self, channels) -> None:
        self.pruned = sorted(int(c) for c in channels)
        self.chosen = True
        self._pruned_mask = torch.zeros(self.size, dtype=torch.bool)
        if self.pruned:
            self._pruned_mask[torch.as_tensor(self.pruned)] = True
        self.pruned_version += 1

    def choose(self, pruner: "RegularizedPruner") -> None:
        self.set_pruned(select_channels(self.group, pruner._selection_scores(self), self.n_prune))

    def producer_l1(self) -> np.ndarray:
        """``||W_j||_1`` of the producing layer's filters, per group channel."""
        sl = self.score_slice
        per_pos = filter_l1_norms(sl.tensor(), sl.dim).double().cpu().numpy()
        ch = sl.channel_of
        ok = ch >= 0
        score = np.zeros(self.size)
        np.add.at(score, ch[ok], per_pos[ok])
        return score

    def observe_ratio(self, pruner: "RegularizedPruner") -> None:
        """``r_t = mean(score kept) / mean(score pruned)``; ``h = 0.9 h + 0.1 r_t`` (first: ``h = r_t``)."""
        s = np.asarray(pruner._selection_scores(self), dtype=np.float64)
        mask = self._pruned_mask.numpy()
        if not mask.any() or mask.all():
            r = math.inf
        else:
            den = float(s[mask].mean())
            num = float(s[~mask].mean())
            r = num / den if den > 0 else math.inf
        self.r = r
        self.h = r if self.h is None else 0.9 * self.h + 0.1 * r

    def zero_pruned(self, pruner: "RegularizedPruner") -> None:
        """Set the pruned channels' producing slices (filters, biases, norm scale/shift) to 0."""
        if not self.pruned:
            return
        with torch.no_grad():
            for sl in self.zero:
                p = sl.tensor()
                p.index_fill_(sl.dim, sl.pruned_positions(self, p.device), 0.0)

    # -- state ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"producer": self.producer, "size": self.size, "n_prune": self.n_prune,
                "lam": self.lam.clone(), "pruned": list(self.pruned), "chosen": self.chosen,
                "h": math.nan if self.h is None else float(self.h),
                "r": math.nan if self.r is None else float(self.r),
                "finished": self.finished, "picked": self.picked, "n_up": self.n_up,
                "n_pick": self.n_pick, "t_pick": self.t_pick}

    def load(self, st: dict) -> None:
        if st["producer"] != self.producer or int(st["size"]) != self.size:
            raise PruningError(f"state_dict group {st['producer']!r} (size {st['size']}) does not match "
                               f"this pruner's group {self.producer!r} (size {self.size})")
        self.n_prune = int(st["n_prune"])
        self.lam = torch.as_tensor(st["lam"], dtype=torch.float64).clone()
        self.version += 1
        if st["chosen"]:
            self.set_pruned(st["pruned"])
        else:
            self.pruned, self.chosen = [], False
            self._pruned_mask = torch.zeros(self.size, dtype=torch.bool)
            self.pruned_version += 1
        h, r = float(st["h"]), float(st["r"])
        self.h = None if math.isnan(h) else h
        self.r = None if math.isnan(r) else r
        self.finished = bool(st["finished"])
        self.picked = bool(st["picked"])
        self.n_up = int(st["n_up"])
        self.n_pick = int(st["n_pick"])
        self.t_pick = int(st["t_pick"])


def _producer_member(group):
    params = [m for m in group.members if m.kind == "param"]
    if not params:
        return None
    return next((m for m in params if m.dim == 0), params[0])


def _make_result(before, after, widths, record: dict, notes: list, settings: dict | None = None) -> PruneResult:
    """A ``PruneResult`` whatever its field names (``record`` dict, or ``records`` list + ``notes``)."""
    names = {f.name for f in dataclasses.fields(PruneResult)}
    kw = {}
    if "records" in names:
        kw["records"] = [record] if record else []
    elif "record" in names:
        kw["record"] = record
    if "notes" in names:
        kw["notes"] = notes
    if "settings" in names and settings:
        kw["settings"] = settings
    return PruneResult(before=before, after=after, widths=widths, **kw)


def _to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to_device(v, device) for v in x)
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _unwrap_parallel(model):
    """``model.module`` for ``DistributedDataParallel`` / ``DataParallel`` wrappers, else ``model``."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


class RegularizedPruner:
    """Growing-regularization pruning as a training-loop companion (see the module docstring).

    Under ``DistributedDataParallel``: build one pruner per rank on ``ddp.module`` after wrapping
    (identical weights, hence identical channel choice), call ``regularize()`` after
    ``loss.backward()`` (DDP's all-reduce has finished by then) and ``step()`` on every rank; the
    ranks stay identical without any communication by the pruner. Before ``prune()``, call
    :meth:`broadcast_buffers` (BN running statistics are per rank), and re-wrap the pruned model in
    a new DDP. Details in the module docstring.

    Args:
        model: the model, pruned in place by :meth:`prune` (a DDP / DataParallel wrapper is
            unwrapped to its ``.module``).
        example_inputs: an input for tracing (and for counting MACs before / after pruning).
        method: ``"greg1"``, ``"greg2"``, ``"tpp"``, ``"growing_reg"``, ``"oneshot"`` (L1),
            ``"orthp"``, or a :class:`~depgraph_prune.regularize.Method` instance. With a name,
            extra keyword arguments are the method's hyper-parameters
            (``RegularizedPruner(m, x, "greg1", ratio=.5, delta=1e-3, interval=5)``).
        ratio: the ratio of every prunable group.
        ratios: per-layer ratios: a mapping ``{module name or fnmatch pattern: ratio}`` (last match
            wins, see :func:`~depgraph_prune.specs.match_ratio`), a TPP name-pattern string
            (``"*layer*.conv1:0.9"``) or a ResNet stage list (``[0, .5, .5, .5]``). A group's ratio
            is that of its *producing* module (owner of its first parameter member along dim 0);
            unmatched groups get ``ratio`` if given, else 0.
        ignored_layers: modules (or names) whose output channels are never pruned.
        importance: ``"l1"`` (default): ``S_p`` by the L1 norm of the producing layer's filters,
            the published rule (GrowingReg uses the group-wide L1 importance of
            :mod:`depgraph_prune.importance` for its ``imp``). Any other name or callable
            ``(group) -> scores`` replaces both.
        progress: show a tqdm bar (one tick per ``step()``).
        leaf_modules, attention: as in :func:`depgraph_prune.build_graph`.
        record_separation: record ``(t, max lambda, std/mean of filter L1 norms)`` of each
            regularized group's producing layer at every update in ``self.separation``.
        log_hook: callable receiving ``{"t", "phase", "max_lambda", "mag_ratio", "lambda_t"}`` at
            every update.
        granularity: ``"channel"`` (default, filter pruning through the engine) or ``"weight"``
            (unstructured: ``sparsity=`` instead of ``ratio``; see
            :class:`~depgraph_prune.regularize.weights.WeightRegularizedPruner`).

    A group is regularized iff its ratio is > 0 and ``n_p = min(ceil(r * size), size - 1) > 0``.
    """

    def __new__(cls, *args, granularity: str = "channel", **kwargs):
        # granularity="weight" (unstructured GReg) is its own class; see regularize/weights.py
        if cls is RegularizedPruner and granularity == "weight":
            from .weights import WeightRegularizedPruner
            return super().__new__(WeightRegularizedPruner)
        return super().__new__(cls)

    def __init__(self, model: nn.Module, example_inputs: Any, method="greg1", ratio: float | None = None,
                 ratios=None, ignored_layers: Iterable = (), importance="l1", progress: bool = False, *,
                 record_separation: bool = False, log_hook: Callable[[dict], Any] | None = None,
                 leaf_modules: Iterable[str] = (), attention: str = "heads", granularity: str = "channel",
                 sparsity=None, **method_kwargs):
        if granularity != "channel":
            raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")
        if sparsity is not None:
            raise ValueError("sparsity= is the amount of weights pruned at granularity='weight'; for channels "
                             "give ratio= / ratios=, or add granularity='weight'")
        model = _unwrap_parallel(model)
        self.model = model
        self.example_inputs = example_inputs
        self.method: Method = make_method(method, **method_kwargs)
        self.importance = importance
        self._scorer = _imp.resolve(importance)
        self._published_l1 = isinstance(importance, str) and importance == "l1"
        self.record_separation = bool(record_separation)
        self.log_hook = log_hook
        self.progress = bool(progress)
        self._bar = None
        if ratio is None and ratios is None:
            raise ValueError("give ratio= (every prunable group) or ratios= (per-layer spec)")
        if ratio is not None:
            r = float(ratio)
            if not (0.0 <= r < 1.0) or math.isnan(r):
                raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
        self.ratio = ratio
        self.ratios = self._parse_ratios(ratios)
        self.graph = build_graph(model, example_inputs, ignored_layers=ignored_layers, leaf_modules=leaf_modules,
                                 attention=attention)
        self._groups: list[_GroupState] = self._select_groups()
        self.t = 0
        self.t_stab: int | None = None
        self.lam_t = 0.0  # TPP's lambda(t)
        self.separation: dict[str, list] = {gs.producer: [] for gs in self._groups}
        if self.method.one_shot or not self._groups:
            self.phase = "done"
        else:
            self.phase = self.method.initial_phase
        if self.method.select_at_start:
            for gs in self._groups:
                gs.choose(self)
        self.method.setup(self)

    # -- construction ----------------------------------------------------------------------------
    def _parse_ratios(self, ratios):
        if ratios is None:
            return None
        if isinstance(ratios, str):
            return name_patterns(ratios)
        if isinstance(ratios, (list, tuple)):
            return resnet_stages(self.model, list(ratios))
        return validate_ratios(dict(ratios))

    def _select_groups(self) -> list[_GroupState]:
        order = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        out = []
        for g in self.graph.prunable_groups:
            member = _producer_member(g)
            if member is None:
                continue
            producer = member.name.rpartition(".")[0]
            if self.ratios is not None:
                r = match_ratio(producer, self.ratios, float(self.ratio) if self.ratio is not None else 0.0)
            else:
                r = float(self.ratio)
            if r <= 0:
                continue
            n_p = min(math.ceil(r * g.size), g.size - 1)
            if n_p <= 0:
                continue
            out.append(_GroupState(self, g, producer, member, r, n_p))
        out.sort(key=lambda gs: order.get(gs.producer, len(order)))
        return out

    def _selection_scores(self, gs: _GroupState):
        if self._published_l1:
            return torch.as_tensor(gs.producer_l1())
        return self._scorer(gs.group)

    # -- inspection --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the schedule (and stabilization) is over; one-shot methods start done."""
        return self.phase in ("done", "pruned")

    @property
    def regularized(self) -> list[str]:
        """Producing module of each regularized group, in module order."""
        return [gs.producer for gs in self._groups]

    @property
    def groups(self) -> list:
        """The regularized :class:`~depgraph_prune.graph.Group` objects, in module order."""
        return [gs.group for gs in self._groups]

    @property
    def pruned_channels(self) -> dict[str, list[int] | None]:
        """``S_p`` per producing module (``None`` while not chosen yet: GReg-2, GrowingReg)."""
        return {gs.producer: (list(gs.pruned) if gs.chosen else None) for gs in self._groups}

    @property
    def lambdas(self) -> dict[str, torch.Tensor]:
        """Current per-channel penalty of each regularized group (copies)."""
        return {gs.producer: gs.lam.clone() for gs in self._groups}

    @property
    def max_lambda(self) -> float:
        return max((gs.max_lambda for gs in self._groups), default=0.0)

    @property
    def mag_ratio(self) -> float | None:
        """Smallest smoothed magnitude ratio ``h`` over the groups (None before any)."""
        hs = [gs.h for gs in self._groups if gs.h is not None]
        return min(hs) if hs else None

    def summary(self) -> str:
        lines = [f"{type(self.method).__name__}: phase {self.phase}, t = {self.t}, "
                 f"{len(self._groups)} regularized groups"]
        for gs in self._groups:
            h = "-" if gs.h is None else f"{gs.h:.3g}"
            lines.append(f"  {gs.producer:<36} size {gs.size:>5}  prune {gs.n_prune:>5}  "
                         f"max lambda {gs.max_lambda:.3g}  h {h}{'  finished' if gs.finished else ''}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<RegularizedPruner {type(self.method).__name__}: {len(self._groups)} groups, "
                f"phase {self.phase}, t={self.t}>")

    # -- training-loop hooks -----------------------------------------------------------------------
    def _check_live(self, what: str) -> None:
        if self.phase == "pruned":
            raise PruningError(f"{what}: the model was already pruned by this pruner; fine-tune without it")

    def _device(self):
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), device=self._device())

    def regularize(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: ``grad += lambda_c * w`` on every
        regularized parameter slice (the gradient of ``sum lambda_c / 2 * ||w_c||^2``); for TPP
        (``closed_form=True``) also the Gram term's gradient."""
        self._check_live("regularize")
        with torch.no_grad():
            for gs in self._groups:
                if not gs.active:
                    continue
                for sl in gs.slices:
                    p = sl.tensor()
                    if not p.requires_grad:
                        continue
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.addcmul_(sl.lam_pos(gs, p), p.detach())
            self.method.regularize(self)

    def penalty(self) -> torch.Tensor:
        """Extra loss term (TPP's Gram loss with ``TPP(closed_form=False)``; a zero tensor
        otherwise, TPP's default included, whose Gram gradient ``regularize()`` adds): use
        ``loss = loss + pruner.penalty()`` before ``backward()``."""
        if self.phase == "pruned":
            return self._zero()
        return self.method.penalty(self)

    def step(self) -> None:
        """Once per iteration, after ``optimizer.step()``: advance ``t``; every ``interval``
        iterations apply the method's update; count stabilization down."""
        self._check_live("step")
        m = self.method
        self.t += 1
        updated = False
        if self.phase in ("pick", "grow") and m.interval > 0 and self.t % m.interval == 0:
            m.update(self)
            updated = True
        m.on_step(self)
        if self.phase == "stabilize" and self.t - self.t_stab >= m.stabilize:
            self.phase = "done"
        if updated:
            self._after_update()
        self._tick()

    def update_reg(self) -> None:
        """Apply the method's update now (growing regularization: typically once per epoch)."""
        self._check_live("update_reg")
        if self.phase in ("pick", "grow"):
            self.method.update(self)
            if self.phase == "stabilize" and self.t - self.t_stab >= self.method.stabilize:
                self.phase = "done"
            self._after_update()

    def _maybe_stabilize(self) -> None:
        if self.phase in ("pick", "grow") and all(gs.finished for gs in self._groups):
            self.phase = "stabilize"
            self.t_stab = self.t

    def _after_update(self) -> None:
        if self.record_separation:
            for gs in self._groups:
                sl = gs.score_slice
                sep = _separation(filter_l1_norms(sl.tensor(), sl.dim))
                self.separation[gs.producer].append([self.t, gs.max_lambda, sep])
        if self.log_hook is not None or self._bar is not None:
            info = {"t": self.t, "phase": self.phase, "max_lambda": self.max_lambda,
                    "mag_ratio": self.mag_ratio, "lambda_t": self.lam_t}
            if self.log_hook is not None:
                self.log_hook(info)
            if self._bar is not None:
                self._postfix(refresh=False)

    def _postfix(self, refresh: bool) -> None:
        mr = self.mag_ratio
        self._bar.set_postfix(phase=self.phase, max_lambda=f"{self.max_lambda:.3g}",
                              mag_ratio="-" if mr is None else f"{mr:.3g}", refresh=refresh)

    def _tick(self) -> None:
        if not self.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(desc=type(self.method).__name__, initial=self.t - 1, unit="it")
        self._bar.update(1)
        if self.done:
            self._close_bar()

    def _close_bar(self) -> None:
        """Show the bar's last state and close it (the schedule is over, or pruning starts)."""
        if self._bar is not None:
            self._postfix(refresh=True)
            self._bar.close()
            self._bar = None
        self.progress = False

    # -- surgery -------------------------------------------------------------------------------------------
    @old_objects_frozen
    def prune(self, optimizer=None, *, verify=True) -> PruneResult:
        """Remove ``S_p`` of every regularized group from the model (in place, through the
        engine) and return a :class:`~depgraph_prune.prune.PruneResult`. GReg-2 before its pick and
        GrowingReg choose ``S_p`` now, on the current weights. Pass the training ``optimizer`` to
        have its state (momentum, Adam moments) sliced along in place; without it, call
        ``dp.rebuild_optimizer(optimizer, model)`` or build a new optimizer afterwards.

        ``verify`` as in :func:`depgraph_prune.prune`: the surgery is checked numerically; a
        group whose removal changes the output is kept (``result.verification`` says which)."""
        self._check_live("prune")
        self._close_bar()
        if not self.done and self.method.warn_if_not_done:
            warnings.warn(f"prune() called in phase {self.phase!r} at t={self.t}, before the schedule is done",
                          stacklevel=2)
        if getattr(self.graph, "_stale", False):
            raise PruningError("the pruner's graph was already used to prune the model")
        self._check_structure()
        for gs in self._groups:
            if not gs.chosen:
                gs.choose(self)
        plan = {gs.group: list(gs.pruned) for gs in self._groups if gs.pruned}
        inputs = _to_device(self.example_inputs, self._device())
        before = count_ops(self.model, inputs)
        record = self.graph.prune(plan, verify=verify, optimizer=optimizer) if plan else {}
        report = getattr(self.graph, "last_verification", None)
        guilty = report.guilty if report is not None else {}
        widths = [width_row(g, c) for g, c in plan.items() if g.index not in guilty]
        self.method.after_prune(self)
        after = count_ops(self.model, inputs)
        self.phase = "pruned"
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        notes = list(getattr(self.graph, "notes", []) or []) + (report.notes() if report is not None else [])
        if record and optimizer is None:
            notes.append(OPTIMIZER_NOTE.replace("dp.prune", "prune()"))
        from ..prune import _importance_name
        settings = {"ratio": self.ratio, "ratios": self.ratios if isinstance(self.ratios, dict) else None,
                    "importance": f"{_importance_name(self.importance)} after {type(self.method).__name__} "
                                  "regularization",
                    "scope": "each regularized group"}
        result = _make_result(before, after, widths, record, notes, settings)
        if report is not None and hasattr(result, "verification"):
            result.verification = [report]
        return result

    def _check_structure(self) -> None:
        for gs in self._groups:
            for m in gs.group.members:
                if m.kind == "width":
                    continue
                owner, _, attr = m.name.rpartition(".")
                try:
                    t = getattr(self.model.get_submodule(owner) if owner else self.model, attr)
                except AttributeError:
                    t = None
                if not isinstance(t, torch.Tensor) or t.dim() <= m.dim or t.shape[m.dim] != m.size:
                    raise PruningError(f"`{m.name}` no longer has {m.size} positions along dim {m.dim}: the model's "
                                       "structure changed after the pruner was built")

    # -- distributed -----------------------------------------------------------------------------------------
    def state_digest(self, include_weights: bool = False, include_buffers: bool = False) -> str:
        """A SHA-256 digest of the schedule state (iteration, phase, chosen channels, penalties,
        magnitude ratios), plus the model's parameters (``include_weights``) and buffers
        (``include_buffers``). Equal digests on two ranks mean bit-identical state."""
        h = hashlib.sha256()
        h.update(repr((self.method.name, self.t, self.t_stab, self.phase, float(self.lam_t))).encode())
        for gs in self._groups:
            st = gs.state()
            lam = st.pop("lam")
            h.update(repr(sorted(st.items())).encode())
            h.update(lam.numpy().tobytes())
        tensors = (list(self.model.named_parameters()) if include_weights else []) + \
            (list(self.model.named_buffers()) if include_buffers else [])
        for name, t in tensors:
            h.update(name.encode())
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            if t.numel():
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def is_synchronized(self, include_weights: bool = False, include_buffers: bool = False,
                        process_group=None) -> bool:
        """Collective (call it on every rank): whether every rank of ``process_group`` holds the
        same pruner state (:meth:`state_digest`), and optionally the same parameters
        (``include_weights``) and buffers (``include_buffers``; BN running statistics differ
        between ranks until :meth:`broadcast_buffers`). True when ``torch.distributed`` is not
        initialized (a single process)."""
        import torch.distributed as dist
        mine = self.state_digest(include_weights, include_buffers)
        if not (dist.is_available() and dist.is_initialized()):
            return True
        digests = [None] * dist.get_world_size(process_group)
        dist.all_gather_object(digests, mine, group=process_group)
        return all(d == mine for d in digests)

    def broadcast_buffers(self, src: int = 0, process_group=None) -> None:
        """Collective (call it on every rank): copy the buffers (BN running statistics) of rank
        ``src`` (a global rank) to every rank. DDP syncs buffers only at the start of a training forward, so after the last
        step they differ per rank; call this before :meth:`prune` or before saving. A no-op when
        ``torch.distributed`` is not initialized."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return
        with torch.no_grad():
            for b in self.model.buffers():
                dist.broadcast(b, src, group=process_group)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed for an exact resume (plain ints, floats, strings, lists, tensors):
        save it with the model's and optimizer's state dicts."""
        return {"format": 1, "method": self.method.name, "t": self.t,
                "t_stab": -1 if self.t_stab is None else self.t_stab, "phase": self.phase,
                "lam_t": float(self.lam_t), "groups": [gs.state() for gs in self._groups],
                "separation": {k: [list(r) for r in v] for k, v in self.separation.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict`` into a pruner built on the same architecture, same method and
        same ratios (the model's own weights are restored separately)."""
        self._check_live("load_state_dict")
        if state.get("method") != self.method.name:
            raise PruningError(f"state_dict is for method {state.get('method')!r}, this pruner runs {self.method.name!r}")
        groups = state["groups"]
        if [g["producer"] for g in groups] != self.regularized:
            raise PruningError(f"state_dict regularizes {[g['producer'] for g in groups]}, this pruner "
                               f"{self.regularized}: build it with the same model, ratios and ignored layers")
        if state["phase"] == "pruned":
            raise PruningError("state_dict comes from a pruner that already pruned its model")
        for gs, st in zip(self._groups, groups):
            gs.load(st)
        self.t = int(state["t"])
        self.t_stab = None if int(state["t_stab"]) < 0 else int(state["t_stab"])
        self.phase = str(state["phase"])
        self.lam_t = float(state["lam_t"])
        self.separation = {k: [list(r) for r in v] for k, v in state.get("separation", {}).items()}
        for gs in self._groups:
            self.separation.setdefault(gs.producer, [])


def _init_signature(cls) -> inspect.Signature:
    """The constructor's signature for ``inspect`` / ``help()`` (``__new__`` only dispatches)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return inspect.Signature(params)


RegularizedPruner.__signature__ = _init_signature(RegularizedPruner)
