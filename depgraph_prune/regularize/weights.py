"""GReg at weight granularity: ``RegularizedPruner(model, x, "greg1", sparsity=0.8, granularity="weight")``.

The GReg paper prunes filters *and* single weights with the same algorithms: "for unstructured
pruning, a single weight makes a group" (ALGORITHMS.md, "Unstructured GReg"). Here each chosen
tensor (by default the ``weight`` of every conv and linear layer) is one schedule unit with a
per-weight penalty ``lambda_i``: the schedules of :class:`GReg1` / :class:`GReg2` run unchanged
(they only see units that have ``set_lambda``, ``choose``, ``observe_ratio``, ``finished``, ...),
with the weight ``|w_i|`` as the score and ``grad(w_i) += lambda_i * w_i`` after backward, one
``addcmul_`` per tensor (no Python loop over weights). ``prune()`` zeroes ``S_p`` and attaches the
masks of :func:`depgraph_prune.sparsify`; the model keeps its shapes.

Which methods apply at weight granularity:

* ``greg1``, ``greg2``: yes (the paper's Table 4).
* ``oneshot`` / ``l1``: yes, as one-shot magnitude pruning (done at once; ``prune()`` masks).
* ``growing_reg``: yes; its standardized-importance growth becomes per weight
  (``s_i = (max|w| - |w_i|) / (max|w| - min|w| + 1e-8)`` within a tensor), which needs one float64
  penalty per weight (8 bytes per weight, kept on the CPU).
* ``tpp``: no. Its Gram term decorrelates *filters* (rows of ``W``) and its staged zeroing works
  on channels; a single weight has no row to decorrelate. ``ValueError``.
* ``orthp``: no. Orthogonalizing a weight matrix after pruning fills the zeros back in.
  ``ValueError``.

The methods' ``targets`` (which slices of a channel group) have no meaning here: the penalty goes
on exactly the chosen weights.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import PruningError
from .. import unstructured as _sp
from .methods import TPP, GReg1, GReg2, GrowingReg, OneShot, OrthP
from .pruner import RegularizedPruner, _init_signature

__all__ = ["WeightRegularizedPruner"]


class _WeightState:
    """Schedule state of one sparsified tensor (duck-types the channel ``_GroupState`` for the
    methods): per-weight penalties, stored as two scalars (``lam_p`` on ``S_p``, ``lam_k`` on the
    rest; ``S_p`` unknown: uniform) or, for GrowingReg, one float64 value per weight."""

    def __init__(self, name: str, module: nn.Module, attr: str, ratio: float, n_prune: int):
        self.name = self.producer = name
        self.module, self.attr = module, attr
        p = self.tensor()
        self.shape = tuple(p.shape)
        self.size = p.numel()
        self.ratio = ratio
        self.n_prune = n_prune
        self.lam_p = 0.0
        self.lam_k = 0.0
        self._full: torch.Tensor | None = None
        self.version = 0
        self.mask: torch.Tensor | None = None  # bool, True = in S_p
        self.chosen = False
        self.h: float | None = None
        self.r: float | None = None
        self.finished = False
        self.picked = False
        self.n_up = 0
        self.n_pick = 0
        self.t_pick = -1
        self.group = self  # GrowingReg asks the pruner's scorer for `gs.group`'s importance
        self._cache = None

    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    # -- penalties ------------------------------------------------------------------------------
    def _has(self) -> tuple[bool, bool]:
        """Whether the pruned / kept sets are non-empty."""
        if not self.chosen:
            return True, True
        n = int(self.n_prune)
        return n > 0, n < self.size

    @property
    def lam(self) -> torch.Tensor:
        """Per-weight penalty (float64, CPU, the weight's shape); a fresh tensor unless GrowingReg
        keeps one (``gs.lam += ...`` then stores it)."""
        if self._full is not None:
            return self._full
        return self.lam_tensor(torch.device("cpu"), torch.float64, cache=False)

    @lam.setter
    def lam(self, value: torch.Tensor) -> None:
        self._full = torch.as_tensor(value, dtype=torch.float64).reshape(self.shape)

    def lam_tensor(self, device, dtype, cache: bool = True) -> torch.Tensor:
        key = (self.version, device, dtype)
        if cache and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if self._full is not None:
            val = self._full.to(device=device, dtype=dtype)
        else:
            val = torch.full(self.shape, self.lam_k, dtype=dtype, device=device)
            if self.chosen and self.lam_p != self.lam_k:
                val.masked_fill_(self.mask.to(device), self.lam_p)
            elif not self.chosen:
                val.fill_(self.lam_p)
        if cache:
            self._cache = (key, val)
        return val

    @property
    def max_lambda(self) -> float:
        if self._full is not None:
            return float(self._full.max()) if self.size else 0.0
        has_p, has_k = self._has()
        vals = ([self.lam_p] if has_p else []) + ([self.lam_k] if has_k and self.chosen else [])
        return max(vals) if vals else 0.0

    @property
    def active(self) -> bool:
        if self._full is not None:
            return bool((self._full != 0).any())
        has_p, has_k = self._has()
        return (has_p and self.lam_p != 0) or (has_k and self.chosen and self.lam_k != 0)

    def set_lambda(self, pruned: float | None = None, kept: float | None = None, uniform: float | None = None):
        self._full = None
        if uniform is not None:
            self.lam_p = self.lam_k = float(uniform)
        else:
            if pruned is not None:
                self.lam_p = float(pruned)
            if kept is not None:
                self.lam_k = float(kept)
        self.version += 1

    # -- choice ------------------------------------------------------------------------------------
    def set_pruned(self, mask: torch.Tensor) -> None:
        p = self.tensor()
        self.mask = mask.to(device=p.device, dtype=torch.bool).reshape(self.shape)
        self.n_prune = int(self.mask.sum())
        self.chosen = True
        self.version += 1

    def choose(self, pruner: "WeightRegularizedPruner") -> None:
        self.set_pruned(pruner._choose(self))
        if self.n_prune == 0 and not self.finished:  # global ranking left this tensor whole
            self.finished = True
            self.h = math.inf
            self.set_lambda(uniform=0.0)

    def observe_ratio(self, pruner: "WeightRegularizedPruner") -> None:
        """``r_t = mean |w| kept / mean |w| pruned``; ``h = 0.9 h + 0.1 r_t`` (first: ``h = r_t``)."""
        s = pruner._score(self).double()
        m = self.mask
        n_p = int(self.n_prune)
        if n_p == 0 or n_p == self.size:
            r = math.inf
        else:
            sp = float(s[m].sum()) / n_p
            sk = float(s[~m].sum()) / (self.size - n_p)
            r = sk / sp if sp > 0 else math.inf
        self.r = r
        self.h = r if self.h is None else 0.9 * self.h + 0.1 * r

    def zero_pruned(self, pruner) -> None:
        if self.mask is not None:
            with torch.no_grad():
                self.tensor().masked_fill_(self.mask, 0.0)

    # -- state ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        full = self._full is not None
        lam = self._full.clone() if full else torch.tensor([self.lam_p, self.lam_k], dtype=torch.float64)
        pruned = self.mask.detach().cpu().clone() if self.chosen else torch.zeros(0, dtype=torch.bool)
        return {"producer": self.producer, "size": self.size, "n_prune": self.n_prune, "lam": lam,
                "lam_full": full, "pruned": pruned, "chosen": self.chosen,
                "h": math.nan if self.h is None else float(self.h),
                "r": math.nan if self.r is None else float(self.r),
                "finished": self.finished, "picked": self.picked, "n_up": self.n_up,
                "n_pick": self.n_pick, "t_pick": self.t_pick}

    def load(self, st: dict) -> None:
        if st["producer"] != self.producer or int(st["size"]) != self.size:
            raise PruningError(f"state_dict tensor {st['producer']!r} ({st['size']} weights) does not match "
                               f"this pruner's {self.producer!r} ({self.size} weights)")
        lam = torch.as_tensor(st["lam"], dtype=torch.float64)
        if st["lam_full"]:
            self._full = lam.clone().reshape(self.shape)
        else:
            self._full = None
            self.lam_p, self.lam_k = float(lam[0]), float(lam[1])
        if st["chosen"]:
            self.set_pruned(torch.as_tensor(st["pruned"]))
        else:
            self.mask, self.chosen = None, False
        self.n_prune = int(st["n_prune"])
        self.version += 1
        h, r = float(st["h"]), float(st["r"])
        self.h = None if math.isnan(h) else h
        self.r = None if math.isnan(r) else r
        self.finished = bool(st["finished"])
        self.picked = bool(st["picked"])
        self.n_up = int(st["n_up"])
        self.n_pick = int(st["n_pick"])
        self.t_pick = int(st["t_pick"])


class WeightRegularizedPruner(RegularizedPruner):
    """:class:`RegularizedPruner` at weight granularity (built by
    ``RegularizedPruner(..., granularity="weight")``; see the module docstring).

    Args:
        model: pruned in place by :meth:`prune` (weights zeroed and masked, shapes unchanged).
        example_inputs: accepted for symmetry with channel granularity; not needed (no graph).
        method: ``"greg1"``, ``"greg2"``, ``"growing_reg"``, ``"oneshot"`` or an instance.
        sparsity: fraction of weights to prune, or a per-layer spec as in
            :func:`depgraph_prune.sparsify` (``scope="layer"`` only).
        scope: ``"layer"`` (each tensor loses ``ceil(s n)``, the official GReg code) or
            ``"global"`` (one magnitude ranking over all chosen tensors, made when ``S_p`` is
            chosen: at construction for GReg-1, at the pick for GReg-2).
        layers: which tensors (see :func:`depgraph_prune.unstructured.prunable_weights`).
        ignored_layers: tensors left out.
        importance: ``"magnitude"`` (``"l1"`` is the same for one weight) or a callable
            ``(name, weight) -> scores``.
        progress: a tqdm bar, as for channels.
        record_separation: record ``(t, max lambda, std / mean of |w|)`` of each tensor per update.
        log_hook: as for channels.

    Example:
        >>> import torch, depgraph_prune as dp
        >>> from depgraph_prune.models import digits_cnn
        >>> model = digits_cnn()
        >>> pruner = dp.RegularizedPruner(model, None, "greg1", sparsity=0.8, granularity="weight",
        ...                               delta=0.5, interval=1, stabilize=0)
        >>> while not pruner.done:
        ...     pruner.step()            # training steps go here (backward, regularize, opt.step)
        >>> report = pruner.prune()      # zeroes S_p and keeps masks: dp.keep_masks(new_optimizer, model)
        >>> round(report.sparsity, 3)
        0.8
    """

    def __init__(self, model: nn.Module, example_inputs: Any = None, method="greg1", ratio=None, ratios=None,
                 ignored_layers: Iterable = (), importance="magnitude", progress: bool = False, *,
                 sparsity=None, granularity: str = "weight", scope: str = "layer", layers=None,
                 record_separation: bool = False, log_hook: Callable[[dict], Any] | None = None,
                 leaf_modules: Iterable[str] = (), attention: str = "heads", **method_kwargs):
        from .pruner import _unwrap_parallel
        from .methods import make_method
        if granularity != "weight":
            raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")
        if ratio is not None or ratios is not None:
            raise ValueError("granularity='weight' takes sparsity= (a number or a per-layer spec), not ratio= / ratios=")
        if sparsity is None:
            raise ValueError("granularity='weight' needs sparsity= (e.g. sparsity=0.8)")
        model = _unwrap_parallel(model)
        self.model = model
        self.example_inputs = example_inputs
        self.method = make_method(method, **method_kwargs)
        m = self.method
        if isinstance(m, OrthP):
            raise ValueError("method 'orthp' does not apply at granularity='weight': orthogonalizing the weights "
                             "after pruning would fill the pruned zeros back in; use 'oneshot', 'greg1' or 'greg2'")
        if isinstance(m, TPP):
            raise ValueError("method 'tpp' does not apply at granularity='weight': its Gram term decorrelates "
                             "filters (rows of W) and its staged zeroing works on channels; a single weight has "
                             "neither. Use 'greg1', 'greg2', 'growing_reg' or 'oneshot'")
        if not isinstance(m, (GReg1, GReg2, GrowingReg, OneShot)):
            raise ValueError(f"method {type(m).__name__} is not supported at granularity='weight'")
        if isinstance(m, (GReg1, GReg2)) and m.targets != "weights":
            raise ValueError(f"targets={m.targets!r} selects slices of a channel group; at granularity='weight' the "
                             "penalty goes on the chosen weights only (leave targets at its default)")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if scope == "global" and not isinstance(sparsity, (int, float)):
            raise ValueError("scope='global' takes one sparsity number; use scope='layer' for a per-layer spec")
        if importance == "l1":
            importance = "magnitude"
        if importance != "magnitude" and not callable(importance):
            raise ValueError(f"importance must be 'magnitude' or a callable (name, weight) -> scores, got {importance!r}")
        self.importance = importance
        self.granularity = "weight"
        self.scope = scope
        self.sparsity = sparsity
        self.record_separation = bool(record_separation)
        self.log_hook = log_hook
        self.progress = bool(progress)
        self._bar = None
        self.ratio, self.ratios = None, None
        self.graph = None
        self._global = None  # (key, masks) of the last global ranking
        targets = _sp.prunable_weights(model, layers, ignored_layers)
        if not targets:
            raise PruningError(f"RegularizedPruner: {type(model).__name__} has no conv or linear weight (pass layers=)")
        self._targets = targets
        per = _sp._resolve_sparsities(model, sparsity, targets)
        self._groups: list[_WeightState] = []
        for name, mod, attr in targets:
            s = per[name]
            n = getattr(mod, attr).numel()
            k = min(_sp.n_to_prune(s, n), n - 1)
            if scope == "layer" and k <= 0:
                continue
            if scope == "global" and s <= 0:
                continue
            self._groups.append(_WeightState(name, mod, attr, s, k))
        self._scorer = self._score
        self.t = 0
        self.t_stab = None
        self.lam_t = 0.0
        self.separation = {gs.producer: [] for gs in self._groups}
        self.phase = "done" if (m.one_shot or not self._groups) else m.initial_phase
        if m.select_at_start:
            for gs in self._groups:
                gs.choose(self)
            if scope == "global":  # tensors left whole by the ranking are not regularized at all
                self._groups = [gs for gs in self._groups if gs.n_prune > 0]
                self.separation = {gs.producer: [] for gs in self._groups}
                if not self._groups:
                    self.phase = "done"
        m.setup(self)

    # -- scores and choice -----------------------------------------------------------------------
    def _score(self, gs: _WeightState) -> torch.Tensor:
        return _sp._scores(self.importance, gs.name, gs.tensor(), None)

    def _choose(self, gs: _WeightState) -> torch.Tensor:
        if self.scope == "layer":
            return _sp.smallest_k(self._score(gs), gs.n_prune)
        tensors = [getattr(m, a) for _, m, a in self._targets]
        key = (self.t, tuple(t._version for t in tensors), tuple(t.data_ptr() for t in tensors))
        if self._global is None or self._global[0] != key:
            # the ranking covers every chosen tensor, regularized or not (same as dp.sparsify)
            self._global = (key, _sp.select(self.model, self._targets, float(self.sparsity), "global",
                                            self.importance))
        return self._global[1][gs.name]

    # -- inspection ------------------------------------------------------------------------------
    @property
    def pruned_masks(self) -> dict[str, torch.Tensor | None]:
        """``S_p`` of each regularized tensor as a bool mask (``None`` while not chosen yet)."""
        return {gs.producer: (gs.mask.clone() if gs.chosen else None) for gs in self._groups}

    pruned_channels = pruned_masks

    @property
    def lambdas(self) -> dict[str, torch.Tensor]:
        """Current per-weight penalty of each regularized tensor (float64 copies, the weight's shape)."""
        return {gs.producer: gs.lam.clone() for gs in self._groups}

    def __repr__(self) -> str:
        return (f"<RegularizedPruner {type(self.method).__name__} (weights, {self.scope}): {len(self._groups)} "
                f"tensors, phase {self.phase}, t={self.t}>")

    # -- training-loop hooks --------------------------------------------------------------------------
    def regularize(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: ``grad(w_i) += lambda_i * w_i``."""
        self._check_live("regularize")
        with torch.no_grad():
            for gs in self._groups:
                if not gs.active:
                    continue
                p = gs.tensor()
                if not p.requires_grad:
                    continue
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.addcmul_(gs.lam_tensor(p.device, p.dtype), p.detach())

    def penalty(self) -> torch.Tensor:
        return self._zero()

    def _after_update(self) -> None:
        if self.record_separation:
            for gs in self._groups:
                a = gs.tensor().detach().abs().double()
                mean = a.mean()
                sep = float(a.std(unbiased=False) / mean) if mean != 0 else math.nan
                self.separation[gs.producer].append([self.t, gs.max_lambda, sep])
        if self.log_hook is not None or self._bar is not None:
            info = {"t": self.t, "phase": self.phase, "max_lambda": self.max_lambda,
                    "mag_ratio": self.mag_ratio, "lambda_t": self.lam_t}
            if self.log_hook is not None:
                self.log_hook(info)
            if self._bar is not None:
                self._postfix(refresh=False)

    # -- pruning -----------------------------------------------------------------------------------------
    def _check_structure(self) -> None:
        for gs in self._groups:
            if tuple(gs.tensor().shape) != gs.shape:
                raise PruningError(f"`{gs.name}` has shape {tuple(gs.tensor().shape)}, not {gs.shape}: the model's "
                                   "structure changed after the pruner was built")

    def prune(self) -> "_sp.Sparsity":
        """Zero ``S_p`` of every regularized tensor and attach masks (:func:`depgraph_prune.sparsify`);
        returns the :class:`~depgraph_prune.unstructured.Sparsity` report. GReg-2 before its pick and
        GrowingReg choose ``S_p`` now. For fine-tuning, attach the masks to the new optimizer:
        ``dp.keep_masks(optimizer, model)``."""
        self._check_live("prune")
        self._close_bar()
        if not self.done and self.method.warn_if_not_done:
            warnings.warn(f"prune() called in phase {self.phase!r} at t={self.t}, before the schedule is done",
                          stacklevel=2)
        self._check_structure()
        for gs in self._groups:
            if not gs.chosen:
                gs.choose(self)
        for gs in self._groups:
            _sp.set_mask(self.model, gs.name, gs.mask)
        self.phase = "pruned"
        return _sp.sparsity_report(self.model, [n for n, _, _ in self._targets])

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        st = super().state_dict()
        st["granularity"] = "weight"
        st["scope"] = self.scope
        return st

    def load_state_dict(self, state: dict) -> None:
        if state.get("granularity", "channel") != "weight":
            raise PruningError("state_dict comes from a channel-granularity pruner; this one prunes weights")
        if state.get("scope") != self.scope:
            raise PruningError(f"state_dict was saved with scope={state.get('scope')!r}, this pruner has {self.scope!r}")
        super().load_state_dict(state)

    def state_digest(self, include_weights: bool = False, include_buffers: bool = False) -> str:
        h = hashlib.sha256()
        h.update(repr((self.method.name, self.t, self.t_stab, self.phase, self.scope)).encode())
        for gs in self._groups:
            st = gs.state()
            for k in sorted(st):
                v = st[k]
                h.update(k.encode())
                h.update(v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode())
        base = super().state_digest(include_weights, include_buffers) if (include_weights or include_buffers) else ""
        h.update(base.encode())
        return h.hexdigest()


WeightRegularizedPruner.__signature__ = _init_signature(WeightRegularizedPruner)
