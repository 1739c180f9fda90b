"""Element-wise (unstructured) sparsity: zero individual weights and keep them zero.

    >>> import torch, depgraph_prune as dp
    >>> from depgraph_prune.models import digits_cnn
    >>> model = digits_cnn()
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    >>> report = dp.sparsify(model, sparsity=0.8, optimizer=opt)   # masks kept through opt.step()
    >>> round(report.sparsity, 2)
    0.8
    >>> dp.remove_masks(model)                                      # zeros stay, masks gone
    4

Which weights: by default the ``weight`` of every conv (``nn.Conv*d``, ``nn.ConvTranspose*d``) and
``nn.Linear`` module, classifier and shortcuts included (the GReg official code's set); ``layers``
narrows it (module names, fnmatch patterns or modules), ``ignored_layers`` removes some.

How many: layer ``l`` with ``n_l`` weights loses ``k_l = ceil(s_l * n_l)`` of them (at most
``n_l - 1``: a layer always keeps a weight) with ``scope="layer"``; with ``scope="global"`` the
``ceil(s * sum n_l)`` smallest scores over all chosen layers go, wherever they are (a small layer
may lose all its weights). Scores are ``|w|`` (``importance="magnitude"``) or a callable
``(name, weight) -> scores`` of the weight's shape. Ties are broken by position: the earlier layer
(module order) and, inside a layer, the lower flat index goes first, so the count is exact and the
choice reproducible.

Why masks and how they are kept
-------------------------------
A zeroed weight gets a nonzero gradient on the next backward, so plain training revives it. We
keep a boolean mask per sparsified tensor, in the owning module's ``__dict__`` (so ``state_dict``,
tracing and structural surgery see an ordinary module; ``copy.deepcopy`` and pickling keep it;
:func:`depgraph_prune.save` stores it compactly), and **re-apply it after every optimizer step**:
:func:`keep_masks` registers an ``optimizer.register_step_post_hook`` that sets the masked weights
to zero and also zeroes the optimizer's per-parameter state tensors (momentum, Adam moments) at
the masked positions, so neither momentum nor weight decay can bring a weight back, now or after
:func:`remove_masks`. Cost: after each step, one multiply by a cached 0/1 tensor per masked tensor and per
same-shaped state tensor (an element-wise pass over the sparsified weights and their state;
nothing in forward or backward); memory: the bool mask (1 byte per weight) plus that 0/1 tensor in
the weight's dtype (4 bytes per float32 weight). ``bench/sparse_cpu.py`` measures it.
We did not use ``torch.nn.utils.parametrize``: it renames the parameters
(``parametrizations.weight.original``), so ``state_dict`` keys, optimizer groups and the engine's
tracing and surgery would all see a different model, and it recomputes ``w * mask`` in every
forward and backward. Without an optimizer hook (a hand-written update), call
:func:`apply_masks` after each update.

Structural and unstructured pruning together: sparsify after structural pruning (the masks fit the
narrow weights), or before: a mask whose tensor was narrowed by the surgeon since is sliced to the
kept positions of ``surgery.history(model)`` the next time it is applied, as
:func:`~depgraph_prune.rebuild_optimizer` does for optimizer state.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import weakref
from typing import Callable, Iterable

import torch
from torch import nn

from . import surgery
from .errors import PruningError
from .specs import layer_ranges, match_ratio, name_patterns, resnet_stages, validate_ratios

__all__ = ["sparsify", "Sparsity", "LayerSparsity", "apply_masks", "keep_masks", "remove_masks", "masks",
           "set_mask", "sparsity_report", "prunable_weights", "smallest_k"]

MASKS_ATTR = "_depgraph_prune_masks"  # module.__dict__[MASKS_ATTR] = {attr: bool tensor, True = pruned}
KEEP_ATTR = "_depgraph_prune_keep"    # cache: {attr: (mask, 1 - mask in the weight's dtype)}
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
           nn.Linear)


# ============================================================================ report
@dataclasses.dataclass
class LayerSparsity:
    """One sparsified tensor: ``params`` weights, ``nonzeros`` of them nonzero, ``masked`` held at
    zero by a mask."""
    name: str
    shape: tuple
    params: int
    nonzeros: int
    masked: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclasses.dataclass
class Sparsity:
    """What :func:`sparsify` did (or :func:`sparsity_report` measures): per-tensor and total
    sparsity over the chosen tensors, and over every parameter of the model. Printable."""
    layers: list
    model_params: int
    model_nonzeros: int

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.layers)

    @property
    def masked(self) -> int:
        return sum(r.masked for r in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros over the chosen tensors."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @property
    def model_sparsity(self) -> float:
        """Fraction of exact zeros over all parameters (biases and norms included)."""
        return 1.0 - self.model_nonzeros / self.model_params if self.model_params else 0.0

    def __getitem__(self, name: str) -> LayerSparsity:
        for r in self.layers:
            if r.name == name or r.name.rpartition(".")[0] == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        w = max([len(r.name) for r in self.layers] + [6])
        lines = [f"{'tensor':<{w}}  {'shape':<18} {'params':>10} {'nonzeros':>10} {'sparsity':>9}"]
        for r in self.layers:
            lines.append(f"{r.name:<{w}}  {str(tuple(r.shape)):<18} {r.params:>10} {r.nonzeros:>10} "
                         f"{r.sparsity:>8.2%}")
        lines.append(f"{'total':<{w}}  {'':<18} {self.params:>10} {self.nonzeros:>10} {self.sparsity:>8.2%}")
        lines.append(f"whole model: {self.model_params} params, {self.model_nonzeros} nonzero "
                     f"({self.model_sparsity:.2%} sparse)")
        return "\n".join(lines)


def _count(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.detach()))


def sparsity_report(model: nn.Module, names: Iterable[str] | None = None) -> Sparsity:
    """Measure the sparsity of ``model`` now: per masked tensor (or per tensor in ``names``,
    qualified parameter names) and over all its parameters."""
    if names is None:
        names = [n for n, _ in masks(model).items()]
    params = dict(model.named_parameters())
    mk = masks(model)
    rows = []
    for n in names:
        if n not in params:
            raise PruningError(f"sparsity_report: {type(model).__name__} has no parameter `{n}`")
        p = params[n]
        m = mk.get(n)
        rows.append(LayerSparsity(n, tuple(p.shape), p.numel(), _count(p),
                                  int(m.sum()) if m is not None and m.shape == p.shape else 0))
    return Sparsity(rows, sum(p.numel() for p in params.values()), sum(_count(p) for p in params.values()))


# ============================================================================ selection
def n_to_prune(s: float, n: int) -> int:
    """``ceil(s * n)``, robust to ``0.7 * 10 = 7.000000000000001``."""
    return min(n, math.ceil(round(s * n, 6)))


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) of the ``k`` smallest entries; ties go to the lower flat
    index, so exactly ``k`` are chosen, deterministically. O(n) (``kthvalue``), no full sort."""
    flat = scores.reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k <= 0:
        return out.view(scores.shape)
    if torch.isnan(flat).any():
        raise PruningError("weight scores contain NaN: cannot rank the weights (is the model diverged?)")
    if k >= flat.numel():
        return out.fill_(True).view(scores.shape)
    v = flat.kthvalue(k).values
    less = flat < v
    out |= less
    need = k - int(less.sum())
    if need > 0:
        eq = (flat == v).nonzero().squeeze(1)[:need]
        out[eq] = True
    return out.view(scores.shape)


def prunable_weights(model: nn.Module, layers=None, ignored_layers: Iterable = ()) -> list[tuple[str, nn.Module, str]]:
    """``(parameter name, module, attr)`` of the tensors :func:`sparsify` works on, in module order.

    ``layers``: None (the ``weight`` of every conv and linear module), or module names, fnmatch
    patterns of module names, or modules; a name may also be a qualified parameter name
    (``"fc.bias"``). ``ignored_layers``: the same forms, removed."""
    def _norm(items):
        if items is None:
            return None
        if isinstance(items, (str, nn.Module)):
            items = [items]
        out = []
        for it in items:
            if isinstance(it, nn.Module):
                out.append(("module", it))
            elif isinstance(it, str):
                out.append(("name", it))
            else:
                raise PruningError(f"layers / ignored_layers: expected module names or modules, got {it!r}")
        return out

    chosen, ignored = _norm(layers), _norm(ignored_layers) or []
    params = dict(model.named_parameters())
    seen, out, used = set(), [], set()

    def _hits(spec, mod_name, mod, pname):
        kind, v = spec
        if kind == "module":
            return mod is v
        return v == mod_name or v == pname or fnmatch.fnmatchcase(mod_name, v)

    for mod_name, mod in model.named_modules():
        for attr, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            pname = f"{mod_name}.{attr}" if mod_name else attr
            if pname not in params:
                continue
            if chosen is None:
                ok = isinstance(mod, _LAYERS) and attr == "weight"
            else:
                hit = [s for s in chosen if _hits(s, mod_name, mod, pname)]
                used.update(id(s) for s in hit)
                # a module-level hit takes its conv/linear `weight` (or every weight-like tensor of
                # another module type); a parameter-name hit takes exactly that tensor
                ok = bool(hit) and (any(s[1] == pname for s in hit) or
                                    (attr == "weight" if hasattr(mod, "weight") else p.dim() > 1))
            if ok and any(_hits(s, mod_name, mod, pname) for s in ignored):
                ok = False
            if ok:
                if not p.dtype.is_floating_point:
                    raise PruningError(f"sparsify: `{pname}` is {p.dtype}, not a floating-point tensor")
                seen.add(id(p))
                out.append((pname, mod, attr))
    if chosen is not None:
        missing = [s[1] if s[0] == "name" else type(s[1]).__name__ for s in chosen if id(s) not in used]
        if missing:
            raise PruningError(f"sparsify: layers={missing[0]!r} matches no module or parameter of "
                               f"{type(model).__name__}")
    return out


def _resolve_sparsities(model, sparsity, targets) -> dict[str, float]:
    """Per-tensor sparsity from a number or a spec (mapping of patterns, TPP pattern string,
    layer-range string, stage list); the key is matched against the module name."""
    if isinstance(sparsity, bool):
        raise ValueError(f"sparsity must be a number in [0, 1) or a per-layer spec, got {sparsity!r}")
    if isinstance(sparsity, (int, float)):
        s = float(sparsity)
        if not (0.0 <= s < 1.0) or math.isnan(s):
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        return {pname: s for pname, _, _ in targets}
    if isinstance(sparsity, str):
        spec = layer_ranges(model, sparsity) if sparsity.strip().startswith("[") else name_patterns(sparsity)
    elif isinstance(sparsity, (list, tuple)):
        spec = resnet_stages(model, list(sparsity))
    elif isinstance(sparsity, dict):
        spec = validate_ratios(dict(sparsity))
    else:
        raise ValueError(f"sparsity must be a number in [0, 1) or a per-layer spec, got {type(sparsity).__name__}")
    return {pname: match_ratio(pname.rpartition(".")[0], spec, 0.0) for pname, _, _ in targets}


def _scores(importance, pname: str, p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if importance == "magnitude":
        s = p.detach().abs().float()
    elif callable(importance):
        s = torch.as_tensor(importance(pname, p.detach())).to(p.device).float()
        if s.shape != p.shape:
            raise PruningError(f"importance returned shape {tuple(s.shape)} for `{pname}` of shape {tuple(p.shape)}")
    else:
        raise ValueError(f"importance must be 'magnitude' or a callable (name, weight) -> scores, got {importance!r}")
    if mask is not None and mask.shape == p.shape:
        s = s.masked_fill(mask, -1.0)  # already-masked weights stay pruned and go first
    return s


def select(model: nn.Module, targets, sparsity, scope: str, importance="magnitude") -> dict[str, torch.Tensor]:
    """The pruned-positions mask of each target tensor (exact counts, deterministic ties)."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    per = _resolve_sparsities(model, sparsity, targets)
    old = masks(model)
    out = {}
    if scope == "global":
        if not isinstance(sparsity, (int, float)):
            raise ValueError("scope='global' takes one sparsity number (a global ranking has no per-layer ratios); "
                             "use scope='layer' with a per-layer spec")
        s = float(sparsity)
        scores = [_scores(importance, n, getattr(m, a), old.get(n)) for n, m, a in targets]
        if not scores:
            return out
        device = scores[0].device
        flat = torch.cat([sc.reshape(-1).to(device) for sc in scores])
        chosen = smallest_k(flat, n_to_prune(s, flat.numel()))
        offset = 0
        for (n, m, a), sc in zip(targets, scores):
            out[n] = chosen[offset:offset + sc.numel()].view(sc.shape).to(sc.device)
            offset += sc.numel()
        return out
    for n, m, a in targets:
        p = getattr(m, a)
        k = min(n_to_prune(per[n], p.numel()), p.numel() - 1)
        out[n] = smallest_k(_scores(importance, n, p, old.get(n)), k)
    return out


# ============================================================================ masks
def _owner(model: nn.Module, pname: str) -> tuple[nn.Module, str]:
    owner, _, attr = pname.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def set_mask(model: nn.Module, name: str, pruned: torch.Tensor) -> None:
    """Attach (or widen: union with the existing one) the mask of parameter ``name``
    (``pruned``: bool, True = held at zero) and zero those weights now."""
    mod, attr = _owner(model, name)
    p = getattr(mod, attr)
    pruned = pruned.to(device=p.device, dtype=torch.bool)
    if pruned.shape != p.shape:
        raise PruningError(f"mask for `{name}` has shape {tuple(pruned.shape)}, the weight {tuple(p.shape)}")
    table = mod.__dict__.setdefault(MASKS_ATTR, {})
    prev = _synced(model, name, mod, attr)
    table[attr] = pruned if prev is None else (prev | pruned)
    with torch.no_grad():
        p.masked_fill_(table[attr], 0.0)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask (True = pruned)}`` of every masked tensor of ``model``."""
    out = {}
    for mod_name, mod in model.named_modules():
        for attr, m in mod.__dict__.get(MASKS_ATTR, {}).items():
            out[f"{mod_name}.{attr}" if mod_name else attr] = m
    return out


def _synced(model: nn.Module, name: str, mod: nn.Module, attr: str) -> torch.Tensor | None:
    """The mask of ``mod.attr``, sliced to the weight's current shape if the surgeon narrowed the
    weight since the mask was set, and moved to its device."""
    table = mod.__dict__.get(MASKS_ATTR)
    if not table or attr not in table:
        return None
    m = table[attr]
    p = getattr(mod, attr)
    if m.shape != p.shape:
        from .optim import _entry_dims, _map_state, _parse_entry
        aliases = [n for n, q in model.named_parameters(remove_duplicate=False) if q is p] or [name]
        entries = [_entry_dims(_parse_entry(e), aliases) for e in surgery.history(model)]
        comp = _map_state(tuple(m.shape), tuple(p.shape), entries)
        if comp is None:
            raise PruningError(f"the mask of `{name}` has shape {tuple(m.shape)} but the weight is {tuple(p.shape)} "
                               "and the pruning record does not explain it; call dp.sparsify again or "
                               "dp.remove_masks(model)")
        m = surgery._slice(m, comp) if comp else m
    if m.device != p.device:
        m = m.to(p.device)
    table[attr] = m
    return m


def _sync_all(model: nn.Module) -> None:
    """Bring every existing mask to its weight's current shape (raises before anything changes
    when one cannot be explained by the pruning record)."""
    for mod_name, mod in model.named_modules():
        for attr in list(mod.__dict__.get(MASKS_ATTR, {})):
            _synced(model, f"{mod_name}.{attr}" if mod_name else attr, mod, attr)


def apply_masks(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero every masked weight of ``model`` (and, with ``optimizer``, its state tensors shaped
    like the weight at the masked positions: momentum, Adam moments). Call after each update if
    no :func:`keep_masks` hook does it."""
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            table = mod.__dict__.get(MASKS_ATTR)
            if not table:
                continue
            for attr in list(table):
                name = f"{mod_name}.{attr}" if mod_name else attr
                m = _synced(model, name, mod, attr)
                p = getattr(mod, attr)
                keep = _keep(mod, attr, m, p)
                _zero_(p, keep)
                if optimizer is not None:
                    for v in optimizer.state.get(p, {}).values():
                        if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                            _zero_(v, keep)


def _keep(mod: nn.Module, attr: str, pruned: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``1 - pruned`` in the weight's dtype and device, cached next to the mask: a multiply by it
    is about 3x faster than ``masked_fill_`` with the bool mask on a CPU (measured), and this runs
    after every optimizer step."""
    cache = mod.__dict__.setdefault(KEEP_ATTR, {})
    hit = cache.get(attr)
    if hit is not None and hit[0] is pruned and hit[1].dtype == p.dtype and hit[1].device == p.device:
        return hit[1]
    keep = (~pruned).to(device=p.device, dtype=p.dtype)
    cache[attr] = (pruned, keep)
    return keep


def _zero_(t: torch.Tensor, keep: torch.Tensor) -> None:
    # x * 0 is -0.0 for negative x: the + 0.0 makes it +0.0, so masked entries are all-zero bits
    # (a sparse file stores no value for them). A non-finite masked entry (inf * 0) would become NaN:
    # only a diverged run has one.
    t.mul_(keep).add_(0.0)


class _MaskHook:
    """Post-step hook: re-apply the masks of a model (held weakly: the hook never keeps a
    deleted model alive)."""

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)

    def __call__(self, optimizer, args, kwargs) -> None:
        model = self._model()
        if model is not None:
            apply_masks(model, optimizer)


def keep_masks(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Keep ``model``'s masks through training with ``optimizer``: after every
    ``optimizer.step()``, masked weights and their optimizer state are set to zero. Applies the
    masks once now. Returns the hook handle (``handle.remove()`` detaches it). A new optimizer
    (e.g. for fine-tuning after ``RegularizedPruner.prune()``) needs its own call."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PruningError(f"keep_masks: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for h in getattr(optimizer, "_optimizer_step_post_hooks", {}).values():
        if isinstance(h, _MaskHook) and h._model() is model:
            apply_masks(model, optimizer)
            return None  # already attached
    apply_masks(model, optimizer)
    return optimizer.register_step_post_hook(_MaskHook(model))


def remove_masks(model: nn.Module) -> int:
    """Make the sparsity permanent: zero the masked weights one last time and drop the masks
    (hooks left on optimizers become no-ops). The model's function is unchanged. Returns how many
    tensors were unmasked."""
    apply_masks(model)
    n = 0
    for mod in model.modules():
        table = mod.__dict__.pop(MASKS_ATTR, None)
        mod.__dict__.pop(KEEP_ATTR, None)
        n += len(table or ())
    return n


# ============================================================================ one call
def sparsify(model: nn.Module, sparsity=0.8, importance: str | Callable = "magnitude", scope: str = "layer",
             layers=None, ignored_layers: Iterable = (), optimizer: torch.optim.Optimizer | None = None) -> Sparsity:
    """Zero individual weights of ``model`` (in place) and keep them zero with masks.

    Args:
        sparsity: fraction of weights to zero, in ``[0, 1)``; with ``scope="layer"`` also a
            per-layer spec in the formats of ``ratios``: ``{module name or pattern: s}`` (last match
            wins), a name-pattern string ``"*layer*.conv1:0.9"``, a layer-range string
            ``"[0:0, 1-9:0.8]"`` or a ResNet stage list ``[0, .8, .8, .8, .8]``.
        importance: ``"magnitude"`` (``|w|``) or a callable ``(name, weight) -> scores``.
        scope: ``"layer"`` (every tensor loses ``ceil(s n)`` of its weights, keeping at least one)
            or ``"global"`` (one ranking over all chosen tensors).
        layers: which tensors (default: every conv and linear ``weight``); module names, fnmatch
            patterns, modules or qualified parameter names (see :func:`prunable_weights`).
        ignored_layers: tensors left out, in the same forms.
        optimizer: if given, :func:`keep_masks` is attached to it.

    Returns a :class:`Sparsity` report. Sparsifying again adds to the existing masks (a weight
    once masked stays masked). A model structurally pruned first is sparsified like any other.

    Example:
        >>> import depgraph_prune as dp
        >>> from depgraph_prune.models import digits_cnn
        >>> r = dp.sparsify(digits_cnn(), sparsity=0.5, scope="global")
        >>> r.masked == -(-r.params // 2)
        True
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"sparsify: model must be an nn.Module, got {type(model).__name__}")
    targets = prunable_weights(model, layers, ignored_layers)
    if not targets:
        raise PruningError(f"sparsify: {type(model).__name__} has no conv or linear weight to sparsify "
                           "(pass layers=)")
    _sync_all(model)  # masks set before a structural prune: to the narrowed shapes first
    chosen = select(model, targets, sparsity, scope, importance)  # everything validated before any change
    for name, _m, _a in targets:
        set_mask(model, name, chosen[name])
    if optimizer is not None:
        keep_masks(optimizer, model)
    return sparsity_report(model, [n for n, _, _ in targets])
