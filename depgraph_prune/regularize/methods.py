"""The regularization schedules (ALGORITHMS.md): GReg-1, GReg-2, TPP, growing regularization, and
the one-shot baselines L1 (``OneShot``) and ``OrthP``.

A method object only holds hyper-parameters; every piece of mutable state (iteration counter,
penalties, chosen channels, smoothed magnitude ratios, phase) lives in the
:class:`~depgraph_prune.regularize.RegularizedPruner`, so that one ``state_dict`` resumes a run
exactly. The pruner calls:

* ``setup(pruner)`` once, after it has built the graph and chosen the regularized groups;
* ``update(pruner)`` every ``interval`` iterations while the schedule is growing;
* ``on_step(pruner)`` after every ``step()`` (TPP's staged zeroing);
* ``penalty(pruner)`` for the extra loss term (TPP's Gram loss in ``closed_form=False`` mode; 0
  elsewhere);
* ``regularize(pruner)`` inside ``pruner.regularize()``, after the L2 terms, under ``no_grad``
  (TPP's closed-form Gram gradient);
* ``after_prune(pruner)`` once the surgery is done (OrthP's re-initialization).

Which parameter slices a penalty goes on (``targets``):

* ``"weights"``: the producing conv/linear *weights* only (rows ``W_j`` along the output-channel
  dim), as in the official GReg code. On a single-layer group this is exactly the published rule.
* ``"group"``: every parameter slice of the group on the *producing* side of the channel: conv and
  linear filters and their biases, the norm layers' scale and shift, other per-channel parameters
  (class tokens, layer scales). Consumers' input-channel slices are not included. This is the
  natural extension to residual-coupled groups (ALGORITHMS.md, introduction).
* ``"all"``: every parameter slice of the group, consumers' input-channel slices included
  (Torch-Pruning's growing regularization).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["Method", "GReg1", "GReg2", "TPP", "GrowingReg", "OneShot", "OrthP", "METHODS",
           "make_method", "orthogonalize_"]

TARGETS = ("weights", "group", "all")
_EPS = 1e-9  # relative tolerance of the ">=" / ">" schedule comparisons (floating point sums)


def _ge(a: float, b: float) -> bool:
    if math.isinf(b):
        return a >= b
    return a >= b - _EPS * abs(b)


def _gt(a: float, b: float) -> bool:
    if math.isinf(b):
        return a > b
    return a > b + _EPS * abs(b)


def _check_targets(targets: str) -> str:
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    return targets


def _check_pos(name, value, allow_zero=False, allow_inf=False):
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Method:
    """Base class: hyper-parameters plus the hooks the pruner calls (all no-ops here)."""

    name = "method"
    #: the pruner chooses S_p at construction (GReg-1, TPP, baselines) or later (GReg-2, GrowingReg)
    select_at_start = True
    #: the pruner's ``done`` is True from the start (one-shot baselines)
    one_shot = False
    #: ``prune()`` warns when called before ``done``
    warn_if_not_done = True
    targets = "weights"
    interval = 1
    stabilize = 0
    #: phase of a fresh pruner: "pick" (GReg-2's picking) or "grow"; one-shot methods start "done"
    initial_phase = "grow"

    def setup(self, pruner) -> None:
        pass

    def update(self, pruner) -> None:
        pass

    def on_step(self, pruner) -> None:
        pass

    def penalty(self, pruner) -> torch.Tensor:
        return pruner._zero()

    def regularize(self, pruner) -> None:
        pass

    def after_prune(self, pruner) -> None:
        pass

    def slice_filter(self, role: str) -> bool:
        """Whether a parameter slice with this role (``weight``, ``bias``, ``norm``, ``other``,
        ``consumer``) receives the penalty."""
        if self.targets == "weights":
            return role == "weight"
        if self.targets == "group":
            return role != "consumer"
        return True

    def hparams(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


# ------------------------------------------------------------------------------------- GReg-1
class GReg1(Method):
    """GReg-1 (Wang et al., 2021, "Neural pruning via growing regularization"), pruning schedule.

    ``S_p`` is fixed at construction (L1 of the producing filters). Every ``interval`` iterations
    ``lambda_j += delta`` for ``j in S_p``; a group stops growing when ``max lambda > ceiling``;
    all stop early when the smoothed magnitude ratio ``h = 0.9 h + 0.1 r_t`` (``r_t`` = mean L1 of
    kept filters / mean L1 of pruned filters, ``h`` starts at the first ``r_t`` as in the official
    code) reaches ``early_stop_ratio`` for every regularized group. Then ``stabilize`` more
    iterations with the penalties frozen. ``lambda`` is computed as ``delta * n_updates`` (no
    floating-point drift from repeated additions).
    """

    name = "greg1"

    def __init__(self, delta: float = 1e-4, interval: int = 10, ceiling: float = 1.0,
                 stabilize: int = 10000, early_stop_ratio: float = 1000.0, targets: str = "weights"):
        self.delta = _check_pos("delta", delta)
        self.interval = _check_int("interval", interval, 1)
        self.ceiling = _check_pos("ceiling", ceiling, allow_inf=True)
        self.stabilize = _check_int("stabilize", stabilize, 0)
        self.early_stop_ratio = _check_pos("early_stop_ratio", early_stop_ratio, allow_inf=True)
        self.targets = _check_targets(targets)

    def update(self, pruner) -> None:
        active = [gs for gs in pruner._groups if not gs.finished]
        for gs in active:
            gs.observe_ratio(pruner)
            gs.n_up += 1
            gs.set_lambda(pruned=self.delta * gs.n_up, kept=0.0)
        early = all(gs.h is not None and _ge(gs.h, self.early_stop_ratio) for gs in pruner._groups)
        for gs in active:
            if early or _gt(gs.max_lambda, self.ceiling):
                gs.finished = True
        pruner._maybe_stabilize()


# ------------------------------------------------------------------------------------- GReg-2
class GReg2(Method):
    """GReg-2: importance via a uniformly growing penalty, then the GReg-1 push.

    Pick phase: every ``interval`` iterations all channels of a regularized group get
    ``lambda += pick_delta``; at the update where ``max lambda >= pick_ceiling``, ``S_p`` is chosen
    by L1 on the current weights (official code: same update). Then every ``interval`` iterations
    ``lambda_j += delta`` for ``j in S_p`` and ``lambda_j = kept_penalty`` for kept filters.
    Stop (``max lambda > ceiling`` or the GReg-1 early stop on the magnitude ratio, measured from
    the first push update), stabilize, prune as in GReg-1.
    """

    name = "greg2"
    select_at_start = False
    initial_phase = "pick"

    def __init__(self, delta: float = 1e-4, interval: int = 10, ceiling: float = 1.0,
                 stabilize: int = 10000, pick_delta: float = 1e-5, pick_ceiling: float = 1e-2,
                 kept_penalty: float = -1e-4, early_stop_ratio: float = 1000.0, targets: str = "weights"):
        self.delta = _check_pos("delta", delta)
        self.interval = _check_int("interval", interval, 1)
        self.ceiling = _check_pos("ceiling", ceiling, allow_inf=True)
        self.stabilize = _check_int("stabilize", stabilize, 0)
        self.pick_delta = _check_pos("pick_delta", pick_delta)
        self.pick_ceiling = _check_pos("pick_ceiling", pick_ceiling)
        self.kept_penalty = float(kept_penalty)
        self.early_stop_ratio = _check_pos("early_stop_ratio", early_stop_ratio, allow_inf=True)
        self.targets = _check_targets(targets)

    def update(self, pruner) -> None:
        active = [gs for gs in pruner._groups if not gs.finished]
        for gs in active:
            if not gs.picked:
                gs.n_pick += 1
                gs.set_lambda(uniform=self.pick_delta * gs.n_pick)
                if _ge(gs.max_lambda, self.pick_ceiling):
                    gs.choose(pruner)  # L1 on the current weights
                    gs.picked = True
                    gs.t_pick = pruner.t
            else:
                gs.observe_ratio(pruner)
                gs.n_up += 1
                gs.set_lambda(pruned=self.pick_delta * gs.n_pick + self.delta * gs.n_up, kept=self.kept_penalty)
        early = all(gs.h is not None and _ge(gs.h, self.early_stop_ratio) for gs in pruner._groups)
        for gs in active:
            if gs.picked and gs.n_up > 0 and (early or _gt(gs.max_lambda, self.ceiling)):
                gs.finished = True
        if pruner.phase == "pick" and all(gs.picked for gs in pruner._groups):
            pruner.phase = "grow"
        pruner._maybe_stabilize()


# ------------------------------------------------------------------------------------- TPP
class TPP(Method):
    """TPP (Wang & Fu, 2023, "Trainability preserving neural pruning").

    ``S_p`` fixed at construction. ``lambda(t) = delta * floor(t / interval)``, capped at
    ``ceiling``. Gram term: ``gram_weight * lambda(t) * sum_layers L``,
    ``L = (1/N^2) sum_ij M_ij G_ij^2``, ``G = W W^T`` on each producing conv/linear weight of the
    group, ``M = 1 - m m^T`` (``m`` = kept indicator). With ``closed_form=True`` (default)
    ``regularize()`` adds its exact gradient ``gram_weight * lambda * (4/N^2) (M * G) W`` to
    ``.grad`` (no autograd graph, no extra backward) and ``pruner.penalty()`` is a zero tensor, so
    a loop that adds it to the loss stays correct; with ``closed_form=False`` the term is
    ``pruner.penalty()``, to be added to the loss (the reference formulation; slower).
    ``regularize()`` also adds ``grad += lambda * w`` on the pruned filters and biases
    (``weight_reg``) and norm scale/shift (``bn_reg``); not multiplied by ``gram_weight``.
    Once ``lambda`` reaches ``ceiling``: ``stabilize`` iterations with ``lambda = ceiling``; the
    ``i``-th regularized group (0-based, module order of its producer) has its pruned slices
    (filters, biases, norm scale/shift) set to exactly zero at every step once
    ``t - t_stab >= (i + 1) * stage_interval``. Call ``step()`` after ``optimizer.step()``.
    """

    name = "tpp"
    targets = "group"

    def __init__(self, delta: float = 1e-4, interval: int = 10, ceiling: float = 1.0,
                 stabilize: int = 10000, gram_weight: float = 1000.0, bn_reg: bool = True,
                 weight_reg: bool = True, stage_interval: int = 100, closed_form: bool = True):
        self.delta = _check_pos("delta", delta)
        self.interval = _check_int("interval", interval, 1)
        self.ceiling = _check_pos("ceiling", ceiling)
        self.stabilize = _check_int("stabilize", stabilize, 0)
        self.gram_weight = _check_pos("gram_weight", gram_weight, allow_zero=True)
        self.bn_reg = bool(bn_reg)
        self.weight_reg = bool(weight_reg)
        self.stage_interval = _check_int("stage_interval", stage_interval, 0)
        if not isinstance(closed_form, bool):
            raise ValueError(f"closed_form must be True or False, got {closed_form!r}")
        self.closed_form = closed_form

    def slice_filter(self, role: str) -> bool:
        if role == "norm":
            return self.bn_reg
        if role in ("weight", "bias", "other"):
            return self.weight_reg
        return False

    def setup(self, pruner) -> None:
        n = len(pruner._groups)
        if n and self.stabilize < self.stage_interval * n:
            warnings.warn(f"TPP: stabilize={self.stabilize} is shorter than stage_interval * groups = "
                          f"{self.stage_interval} * {n}: the last groups are never zeroed before pruning",
                          stacklevel=3)

    def lambda_at(self, t: int) -> float:
        return min(self.delta * (t // self.interval), self.ceiling)

    def update(self, pruner) -> None:
        k = pruner.t // self.interval
        lam = min(self.delta * k, self.ceiling)
        pruner.lam_t = lam
        for gs in pruner._groups:
            gs.n_up = k
            gs.set_lambda(pruned=lam, kept=0.0)
        if _ge(self.delta * k, self.ceiling):
            for gs in pruner._groups:
                gs.finished = True
        pruner._maybe_stabilize()

    def on_step(self, pruner) -> None:
        if pruner.phase not in ("stabilize", "done") or pruner.t_stab is None:
            return
        since = pruner.t - pruner.t_stab
        for i, gs in enumerate(pruner._groups):
            if since >= (i + 1) * self.stage_interval:
                gs.zero_pruned(pruner)

    def _gram_layers(self, pruner):
        """``(slice, tensor, W as rows, pruned rows)`` of every Gram-regularized weight."""
        for gs in pruner._groups:
            for sl in gs.gram:
                w = sl.tensor()
                p = sl.pruned_positions(gs, w.device)
                if p.numel():
                    n = w.shape[sl.dim]
                    yield sl, w, w.movedim(sl.dim, 0).reshape(n, -1), p

    def penalty(self, pruner) -> torch.Tensor:
        lam = pruner.lam_t
        if lam == 0.0 or self.gram_weight == 0.0 or self.closed_form:
            return pruner._zero()
        total = None
        for _, _, W, p in self._gram_layers(pruner):
            n = W.shape[0]
            # M = 1 - m m^T keeps the entries with a pruned row or column, so only the pruned
            # rows of G are needed: sum M*G^2 = 2 |G_P|^2 - |G_PP|^2 with G_P = W_P W^T
            # (|P|/n of the full Gram's work, and no n x n mask).
            GP = W.index_select(0, p) @ W.t()
            loss = (2 * GP.pow(2).sum() - GP.index_select(1, p).pow(2).sum()) / float(n * n)
            total = loss if total is None else total + loss
        if total is None:
            return pruner._zero()
        return total * (self.gram_weight * lam)

    def regularize(self, pruner) -> None:
        lam = pruner.lam_t
        if lam == 0.0 or self.gram_weight == 0.0 or not self.closed_form:
            return
        for sl, w, W, p in self._gram_layers(pruner):
            if not w.requires_grad:
                continue
            scale = 4.0 * self.gram_weight * lam / float(W.shape[0] ** 2)
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            if sl.dim == 0 and w.grad.is_contiguous():
                _tpp_gram_grad_into(w.grad.view(W.shape), W, p, scale)  # no n x d temporary
            else:
                g = torch.zeros_like(W)
                _tpp_gram_grad_into(g, W, p, scale)
                w.grad.add_(g.reshape(w.movedim(sl.dim, 0).shape).movedim(0, sl.dim))


def _tpp_gram_grad_into(out: torch.Tensor, W: torch.Tensor, p: torch.Tensor, alpha: float) -> None:
    """``out += alpha * (M * G) W`` for ``G = W W^T``, ``M = 1 - m m^T``, ``p`` = the pruned rows
    (``m = 0``), accumulated in place (one training step should not allocate weight-sized buffers).

    Row ``i`` in ``P`` is ``(G W)_i`` (``M`` keeps its whole row); a kept row only sees the pruned
    columns: ``(G_KP W_P)_i``. Two exact ways, and we take the cheaper for the layer's shape:
    through ``G_P = W_P W^T`` (``|P| x n``; about ``3 |P| n d`` multiply-adds), or through the
    ``d x d`` Grams ``B = W_P^T W_P`` and ``C = W_K^T W_K`` (rows ``K``: ``W_K B``, rows ``P``:
    ``W_P (B + C)``; about ``2 n d^2``), which wins for wide-output layers (1x1 expansions)."""
    n, d = W.shape
    WP = W.index_select(0, p)
    if 2 * d < 3 * p.numel():
        keep = torch.ones(n, dtype=torch.bool, device=W.device)
        keep[p] = False
        k = keep.nonzero().squeeze(1)
        WK = W.index_select(0, k)
        B = WP.t() @ WP
        out.index_add_(0, k, WK @ B, alpha=alpha)
        out.index_add_(0, p, WP @ B.addmm_(WK.t(), WK), alpha=alpha)
        return
    GP = WP @ W.t()                                    # |P| x n
    out.addmm_(GP.t(), WP, alpha=alpha)                # every row's pruned columns: G_:P W_P
    # pruned rows need their kept columns too: G_P W minus the G_PP W_P already counted
    rows = (GP @ W).addmm_(GP.index_select(1, p), WP, alpha=-1.0)
    out.index_add_(0, p, rows, alpha=alpha)


# ------------------------------------------------------------------------------------- growing reg
class GrowingReg(Method):
    """Importance-weighted growing regularization (Torch-Pruning's ``GrowingRegPruner``).

    Every channel ``c`` of a regularized group starts at ``reg_c = reg``. At each ``update_reg()``
    (called by ``step()`` every ``interval`` iterations when ``interval > 0``, or by hand, e.g.
    once per epoch): ``imp`` = the group importance (the pruner's ``importance``),
    ``s_c = (max imp - imp_c) / (max imp - min imp + 1e-8)``, ``reg_c += delta * s_c``. After
    backward ``grad(w_c) += reg_c * w_c`` on every parameter slice of channel ``c``
    (``targets="all"``: consumers' input slices included). Growth stops when ``max reg_c >
    ceiling`` (never with the default ``inf``); ``S_p`` is chosen by importance at ``prune()``.
    """

    name = "growing_reg"
    select_at_start = False
    warn_if_not_done = False
    targets = "all"

    def __init__(self, delta: float = 1e-4, interval: int = 1, ceiling: float = math.inf,
                 stabilize: int = 0, reg: float = 1e-4, targets: str = "all"):
        self.delta = _check_pos("delta", delta, allow_zero=True)
        self.interval = _check_int("interval", interval, 0)
        self.ceiling = _check_pos("ceiling", ceiling, allow_inf=True)
        self.stabilize = _check_int("stabilize", stabilize, 0)
        self.reg = _check_pos("reg", reg, allow_zero=True)
        self.targets = _check_targets(targets)

    def setup(self, pruner) -> None:
        for gs in pruner._groups:
            gs.set_lambda(uniform=self.reg)

    def standardized(self, imp: torch.Tensor) -> torch.Tensor:
        imp = imp.detach().double().cpu()
        return (imp.max() - imp) / (imp.max() - imp.min() + 1e-8)

    def update(self, pruner) -> None:
        for gs in pruner._groups:
            if gs.finished:
                continue
            s = self.standardized(pruner._scorer(gs.group))
            gs.n_up += 1
            gs.lam += self.delta * s
            gs.version += 1
            if _gt(gs.max_lambda, self.ceiling):
                gs.finished = True
        pruner._maybe_stabilize()


# ------------------------------------------------------------------------------------- baselines
class OneShot(Method):
    """L1 one-shot baseline (Li et al., 2017): ``S_p`` = the ``ceil(r N)`` smallest filters by L1
    (at most ``N - 1``), chosen at construction; the pruner is ``done`` immediately."""

    name = "oneshot"
    one_shot = True

    def __init__(self):
        pass


def orthogonalize_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """In place: reshape to ``N x D`` (transpose if ``N < D``), QR, ``Q * sign(diag R)``,
    back to the original shape, times ``gain``. Rows (or columns) become orthonormal."""
    with torch.no_grad():
        n = weight.shape[0]
        W = weight.reshape(n, -1).double()
        transposed = W.shape[0] < W.shape[1]
        A = W.t() if transposed else W
        Q, R = torch.linalg.qr(A, mode="reduced")
        d = torch.sign(torch.diagonal(R))
        d[d == 0] = 1.0
        Q = Q * d
        out = Q.t() if transposed else Q
        weight.copy_((out * gain).reshape(weight.shape).to(weight.dtype))
    return weight


_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU)
_ORTH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Linear)


class OrthP(OneShot):
    """OrthP baseline: L1 one-shot pruning, then every conv/linear weight is replaced by its
    orthogonalized version (:func:`orthogonalize_`) times ``gain``. ``gain="auto"``: ``sqrt(2)``
    when the model has a ReLU-family activation module, else 1 (linear networks); pass a number
    for models that call activations functionally."""

    name = "orthp"

    def __init__(self, gain="auto"):
        if gain != "auto":
            gain = _check_pos("gain", gain)
        self.gain = gain

    def resolve_gain(self, model: nn.Module) -> float:
        if self.gain != "auto":
            return float(self.gain)
        return math.sqrt(2.0) if any(isinstance(m, _RELU_LIKE) for m in model.modules()) else 1.0

    def after_prune(self, pruner) -> None:
        gain = self.resolve_gain(pruner.model)
        for m in pruner.model.modules():
            if isinstance(m, _ORTH_LAYERS) and isinstance(getattr(m, "weight", None), torch.Tensor):
                orthogonalize_(m.weight.data, gain)


METHODS = {"greg1": GReg1, "greg2": GReg2, "tpp": TPP, "growingreg": GrowingReg,
           "oneshot": OneShot, "l1": OneShot, "orthp": OrthP}


def make_method(method, **kwargs) -> Method:
    """A method instance from a name (``"greg1"``, ``"GReg-2"``, ``"tpp"``, ``"growing_reg"``,
    ``"oneshot"``/``"l1"``, ``"orthp"``) plus keyword hyper-parameters, or an instance as is."""
    if isinstance(method, Method):
        if kwargs:
            raise TypeError(f"method hyper-parameters {sorted(kwargs)} given with a method instance; "
                            "pass them to its constructor")
        return method
    if isinstance(method, type) and issubclass(method, Method):
        return method(**kwargs)
    if isinstance(method, str):
        key = method.lower().replace("-", "").replace("_", "").replace(" ", "")
        if key in METHODS:
            return METHODS[key](**kwargs)
    raise ValueError(f"unknown method {method!r}; use one of 'greg1', 'greg2', 'tpp', 'growing_reg', "
                     "'oneshot', 'orthp' or a Method instance")
