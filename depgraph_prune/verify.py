"""Step 5 of the pipeline: check numerically that a surgery computed what the plan promised.

The promise: the pruned model computes exactly what the original computes with every removed
slice of every member zeroed (the *masked* original). Rules and tracers can be wrong, so every
prune is checked before it is kept:

1. the masked original runs on the example inputs (eval mode, fixed random seed);
2. the surgery is applied and the pruned model runs on the same inputs;
3. the outputs are compared, leaf by leaf, relative to the largest magnitude of each output.

Where the model is small (``F64_LIMIT`` parameter and buffer elements) both runs are in float64,
on float64 copies of the tensors, so the tolerance is tight (``TOLERANCE[torch.float64]``).
Otherwise they run in the model's own dtype and on its own tensors, and no second copy of a big
model is made: the masked original is made one module at a time (:func:`masked_lazily`), or, if
the check fails that way, by zeroing the removed slices in place and putting them back afterwards
(:func:`masked`, which holds only the removed slices).

On a mismatch the surgery is undone, the plan is bisected to find the groups at fault, those are
reported (and frozen by the caller), and the rest is checked again.

Two shortcuts make the check cheap, and neither is trusted with a failure (a mismatch seen with
one is checked again without it, and the shortcut is dropped): where the trace is size-generic,
image inputs are checked on a centre crop (:func:`reduced_inputs`), the pruned model then run at
the given size on meta tensors (which counts its MACs), except where every op that counts is a
plain convolution or linear layer: its MACs then follow from its weights (:func:`macs_from_weights`)
and the run at the given size is implied by the crop's; in the model's own dtype the masked original is made one module
at a time (:func:`masked_lazily`), with no copy of the model and nothing to restore.

Groups whose channels reach a channel-normalizing op cannot pass this test as it stands, since
zeroing a channel is not the same as removing it for a mean or a norm over the channels:

* layer, group and RMS norms (``F.layer_norm``, ``F.group_norm``, ``F.rms_norm`` and the modules
  that call them): both runs are made with those norms reduced to their affine part
  (``x * weight + bias``). Every coupling, slice, offset and width the rules derived is then
  checked exactly; only the norm's own statistics, whose width the surgeon sets from the same
  coupling, are not;
* other normalizing ops (softmax or a mean over channels, a hand-written RMSNorm): these groups
  are checked by running the pruned model (it runs, every output keeps its shape) and listed in
  the report as checked structurally, never silently.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import stateless

from ._walk import named_modules as _named_modules, named_tensors as _tensors
from .errors import SurgeryError
from .progress import stage

#: models with at most this many parameter and buffer elements are checked in float64
F64_LIMIT = 5_000_000

#: relative tolerance per dtype: max |pruned - masked| / max |masked| for each output. Removing
#: zero terms changes the order and blocking of the sums, which in float32 moves results by a few
#: units in the last place per layer; measured on the torchvision zoo in float32 the largest such
#: difference was below 1e-5, a wrong coupling gives differences of order 1.
TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class VerificationError(SurgeryError):
    """The pruned model does not compute what the masked original computes (``verify="raise"``)."""


@dataclass
class Verification:
    """What the numerical check found: how it ran, and the groups it could not accept."""

    dtype: str = ""
    tolerance: float = 0.0
    max_diff: float = 0.0  # largest relative difference among the accepted plan's outputs
    exact: int = 0  # groups checked numerically
    affine_norm: int = 0  # of those, groups checked with their layer/group/RMS norms reduced to affine
    structural: dict = field(default_factory=dict)  # group index -> why only the run check applies
    guilty: dict = field(default_factory=dict)  # group index -> reason (not pruned)
    skipped: str | None = None  # why no numerical check ran at all
    runs: int = 0  # forward passes spent

    def notes(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"verification: {self.skipped}")
        if self.guilty:
            out.append(f"verification froze {len(self.guilty)} group(s) whose pruning changed the output: "
                       + "; ".join(f"group {g}: {r}" for g, r in list(self.guilty.items())[:3]))
        if self.structural:
            why = next(iter(self.structural.values()))
            out.append(f"verification: {len(self.structural)} group(s) reach a channel-normalizing op that "
                       f"zeroing cannot mimic ({why}); they were checked by running the pruned model, "
                       "not numerically")
        return out


# ------------------------------------------------------------------------------------------ runs
def choose_dtype(model: nn.Module, tensors: list | None = None) -> torch.dtype | None:
    """float64 for small real-valued models; None (the model's own dtypes) otherwise
    (``tensors``: the model's tensors, when already listed)."""
    ts = list(_tensors(model).values()) if tensors is None else tensors
    if any(t.is_complex() or t.device.type == "meta" for t in ts):
        return None
    if sum(t.numel() for t in ts) <= F64_LIMIT:
        return torch.float64
    return None


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextlib.contextmanager
def _affine_norms():
    """Layer, group and RMS norms computed as their affine part only (see the module doc)."""
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        y = x if weight is None else x * weight
        return y if bias is None else y + bias

    def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x if weight is None else x * weight.reshape(shape)
        return y if bias is None else y + bias.reshape(shape)

    def rms_norm(x, normalized_shape, weight=None, eps=None):
        return x if weight is None else x * weight

    saved = []
    for owner, name, fn in ((F, "layer_norm", layer_norm), (F, "group_norm", group_norm), (F, "rms_norm", rms_norm),
                            (torch, "layer_norm", layer_norm), (torch, "group_norm", group_norm),
                            (torch, "rms_norm", rms_norm)):
        if hasattr(owner, name):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, fn)
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


@contextlib.contextmanager
def _default_dtype(dtype):
    if dtype is None:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _map_tensors(obj, fn):
    """``obj`` (example inputs: a tensor, plain lists and tuples, dicts) with ``fn`` applied to
    every tensor in it."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(o, fn) for o in obj) if type(obj) in (list, tuple) else obj
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _cast_inputs(obj, dtype):
    if dtype is None:
        return obj
    return _map_tensors(obj, lambda t: t.to(dtype) if t.is_floating_point() else t)


def run(model: nn.Module, example_inputs, dtype=None, state: Mapping | None = None, affine_norms=False,
        probe: "Probe | None" = None):
    """One forward pass in eval mode, without autograd, with a fixed seed (models that draw random
    numbers in eval mode give the same draws in both runs); ``state`` replaces tensors by name;
    ``probe`` records (or checks) the kept channels of every layer's output."""
    from .trace import _modes, normalize_inputs
    from .trace.symbolic import preserved_attributes
    args, kwargs = normalize_inputs(_cast_inputs(example_inputs, dtype))
    # (no tensor can be on a GPU before CUDA is initialized: skip the walk then)
    devices = sorted({t.device.index for t in _tensors(model).values() if t.device.type == "cuda"} - {None}) \
        if torch.cuda.is_initialized() else []
    reparam = stateless._reparametrize_module(model, dict(state)) if state else contextlib.nullcontext()
    norms = _affine_norms() if affine_norms else contextlib.nullcontext()
    hooks = probe.attach() if probe is not None else contextlib.nullcontext()
    # preserved_attributes: what forward caches on ``self`` (anchors, shapes, flags) stays off the model
    with _modes(model, False), torch.no_grad(), torch.random.fork_rng(devices=devices), _default_dtype(dtype), \
            norms, reparam, hooks, preserved_attributes(model):
        _seed(devices)
        return model(*args, **kwargs)


def _seed(devices):
    """Seed the generators ``fork_rng`` saved, and only those: ``torch.manual_seed`` would also
    reseed every other device's generator for good (and queue a lazy CUDA, XPU and MTIA seeding
    with a captured stack, a tenth of a millisecond a call, when CUDA is not initialized)."""
    torch.default_generator.manual_seed(0)
    for d in devices:
        torch.cuda.default_generators[d].manual_seed(0)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


_PROBED: dict[type, bool] = {}  # module type -> whether it is one of the kinds Probe looks at


class Probe:
    """Layer outputs compared on their kept channels, so the check does not rest on the model's
    final output alone (a randomly initialised model may have a zero classifier, making its
    output blind to everything before it). The masked run records, for every convolution,
    linear, embedding and norm layer, its output's first sample restricted to the channels that
    stay; the pruned run compares as it goes. Recording stops at ``budget`` bytes."""

    def __init__(self, model: nn.Module, removed: dict, budget: int = 1 << 28):
        self.model, self.budget = model, budget
        self.layers = []  # (module, name, channel dim (negative: from the end), kept positions or None)
        kept_of: dict = {}
        for name, mod in _named_modules(model):
            probed = _PROBED.get(type(mod))
            if probed is None:  # (most modules are containers and activations: one lookup each)
                probed = _PROBED[type(mod)] = isinstance(mod, (*_CONVS, *_TCONVS, nn.Linear, nn.Embedding,
                                                                nn.LayerNorm, *_NORMS))
            if not probed:
                continue
            prefix = f"{name}." if name else ""
            if isinstance(mod, (*_CONVS, *_TCONVS)):
                wdim = 1 if isinstance(mod, _TCONVS) else 0
                cdim = -(len(mod.kernel_size) + 1)
            elif isinstance(mod, nn.Linear):
                wdim, cdim = 0, -1
            elif isinstance(mod, nn.Embedding):
                wdim, cdim = 1, -1
            elif isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1 and mod.weight is not None:
                wdim, cdim = 0, -1
            elif isinstance(mod, _NORMS) and getattr(mod, "weight", None) is not None:
                wdim, cdim = 0, None  # dim 1, or 0 when unbatched
            else:
                continue
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() <= wdim:
                continue
            size = w.shape[wdim]
            drop = removed.get(f"{prefix}weight", {}).get(wdim)
            if drop is None:
                kept = None
            else:  # one per shared positions tensor (see _removed_positions)
                kept = kept_of.get((size, id(drop)))
                if kept is None:
                    kept = kept_of[(size, id(drop))] = _kept_positions(size, drop)
            self.layers.append((mod, name, cdim, kept, size))
        self.recorded: dict = {}
        self._worst = 0.0
        self._where = None
        self._pending: list = []  # (layer, recorded, pruned) compared together after the run
        self._pending_bytes = 0
        self.mode = "record"
        self._bytes = 0

    @property
    def worst(self) -> float:
        """The largest relative difference over the probed layers (of the check runs so far)."""
        self._compare_pending()
        return self._worst

    @property
    def where(self) -> str | None:
        self._compare_pending()
        return self._where

    def _compare_pending(self):
        # one batched pass over every layer (max |a - b| and max |a| per pair) instead of a
        # handful of small ops and two host syncs per layer; a pair with a non-finite value
        # is compared alone by compare(), which knows what to do with those
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        up = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t  # noqa: E731
        refs = [up(r) for _, r, _ in pending]
        outs = [up(o) for _, _, o in pending]
        if all(r.device.type == "cpu" and r.dtype == refs[0].dtype and o.dtype == r.dtype and
               r.dtype in (torch.float32, torch.float64) for r, o in zip(refs, outs)):
            diffs, scales = _max_abs_pairs(refs, outs)
        else:
            diffs = torch.stack(torch._foreach_norm(torch._foreach_sub(refs, outs), float("inf"))).tolist()
            scales = torch.stack(torch._foreach_norm(refs, float("inf"))).tolist()
        for (name, ref, out), d, sc in zip(pending, diffs, scales):
            if math.isfinite(d) and math.isfinite(sc):
                diff = d / sc if sc > 0 else d
            else:
                diff = compare(ref, out)
            if diff > self._worst:
                self._worst, self._where = diff, name

    @contextlib.contextmanager
    def attach(self):
        handles = []
        calls: dict = {}
        for mod, name, cdim, kept, size in self.layers:
            def hook(module, inputs, out, name=name, cdim=cdim, kept=kept, size=size):
                if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0:
                    return
                k = calls[name] = calls.get(name, -1) + 1
                d = cdim if cdim is not None else (1 if out.dim() > 1 else 0)
                d %= out.dim()
                sample = out[:1] if out.dim() > 1 and d != 0 else out
                if self.mode == "record":
                    if sample.shape[d] != size or self._bytes > self.budget:
                        return
                    # index_select makes a copy already; a plain slice is a view to copy
                    sample = sample.index_select(d, kept.to(sample.device)) if kept is not None \
                        else sample.detach().clone()
                    self.recorded[(name, k)] = sample
                    self._bytes += sample.numel() * sample.element_size()
                else:
                    ref = self.recorded.get((name, k))
                    if ref is None or ref.shape != sample.shape or ref.numel() == 0:
                        return
                    # a copy: a later in-place op (ReLU(inplace=True)) may overwrite the output
                    self._pending.append((name, ref, sample.detach().clone()))
                    self._pending_bytes += ref.numel() * ref.element_size()
                    if self._pending_bytes > 1 << 24:  # the copies held stay small (16 MiB)
                        self._compare_pending()
            handles.append(mod.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _max_abs_pairs(refs: list, outs: list) -> tuple[list, list]:
    """``max |ref - out|`` and ``max |ref|`` of each pair of same-shaped CPU tensors, in numpy,
    pair by pair: on the CPU torch's inf-norm (``_foreach_norm``) cost ~40 us per layer, and
    laying all layers end to end cost more in fresh pages than it saved. NaN propagates, as in
    the norm."""
    diffs, scales = [], []
    with np.errstate(invalid="ignore"):  # inf - inf: a NaN, which the caller checks again
        for r, o in zip(refs, outs):
            rn, on = r.numpy(), o.numpy()
            d = np.subtract(rn, on)
            np.abs(d, out=d)
            diffs.append(float(d.max()))
            scales.append(float(np.abs(rn).max()))
    return diffs, scales


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [x for o in out for x in _flatten(o)]
    if isinstance(out, Mapping):
        return [x for k in sorted(out, key=repr) for x in _flatten(out[k])]
    return []


def compare(ref, out) -> float:
    """The largest relative difference between two outputs (inf when their structure differs)."""
    a, b = _flatten(ref), _flatten(out)
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if not (x.is_floating_point() or x.is_complex()):
            if not torch.equal(x, y.to(x.device)):
                return float("inf")
            continue
        x, y = x.detach(), y.detach().to(x.device)
        if x.dtype in (torch.float16, torch.bfloat16):
            x, y = x.float(), y.float()
        if x.numel() == 0:
            continue
        # fast path: every value finite (one pass each for the difference and the scale)
        diff, scale = (x - y).abs().max().item(), x.abs().max().item()
        if math.isfinite(diff) and math.isfinite(scale):
            worst = max(worst, diff / scale if scale > 0 else diff)
            continue
        x, y = x.double(), y.double()
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        if not torch.equal(fx, fy) or not torch.equal(torch.nan_to_num(x[~fx], nan=0.0), torch.nan_to_num(y[~fy], nan=0.0)):
            return float("inf")  # non-finite values must sit at the same places and be the same
        if not fx.any():
            continue
        scale = x[fx].abs().max().item()
        diff = (x[fx] - y[fy]).abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


# ------------------------------------------------------------------------------- masked state
def _removed_positions(graph, plan, removal_of_plan=None) -> dict[str, dict[int, torch.Tensor]]:
    """Tensor name -> {dim: removed positions} for the plan (width members left out);
    ``removal_of_plan``: ``surgery.removal(graph, plan)``, when already made."""
    from .surgery import removal
    no_mask = graph._ctx.no_mask
    out: dict[str, dict[int, torch.Tensor]] = {}
    # members of one group mostly lose the same positions: they share one tensor of them, so
    # the masks and kept positions built from it are built once (see _same)
    shared: dict[bytes, torch.Tensor] = {}
    for m, rem in (removal(graph, plan) if removal_of_plan is None else removal_of_plan)[1]:
        if m.kind != "width" and (m.name, m.dim) not in no_mask:
            key = rem.tobytes()
            drop = shared.get(key)
            if drop is None:
                drop = shared[key] = torch.from_numpy(np.flatnonzero(rem))
            out.setdefault(m.name, {})[m.dim] = drop
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two position tensors hold the same positions (mostly the same object: see
    :func:`_removed_positions`)."""
    return a is b or torch.equal(a, b)


def _resolve(model, name, modules=None):
    """The tensor at a qualified name (``modules``: a name -> module table, looked up first)."""
    from .surgery import _resolve as owner_of
    return getattr(*owner_of(model, name, modules))


def _excite(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values of unit gain in ``t``'s shape (float64): weights ~ N(0, 1/fan_in), vectors
    (biases, norm scales) ~ 1 + N(0, 1/4). The masked and pruned models agree for any weights if
    the rules are right, and with these the check does not depend on how small or degenerate
    (zero classifiers, near-uniform attention) the model's own initialisation is."""
    if t.dim() >= 2:
        fan_in = max(1, t.numel() // t.shape[0])
        return torch.randn(t.shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5
    return 1 + 0.5 * torch.randn(t.shape, generator=gen, dtype=torch.float64)


def base_state(model: nn.Module, dtype, excite: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the model by name, cast to ``dtype`` (copies, tied names sharing one);
    with ``excite``, floating parameters replaced by :func:`_excite` values."""
    gen = torch.Generator().manual_seed(0)
    params = {id(p) for p in model.parameters()}
    copies: dict[int, torch.Tensor] = {}
    state = {}
    for name, t in _tensors(model).items():
        if id(t) not in copies:
            if not t.is_floating_point():
                c = t.detach()
            elif excite and id(t) in params:
                c = _excite(t, gen).to(device=t.device, dtype=dtype)
            else:
                c = t.detach().to(dtype)
            copies[id(t)] = c
        state[name] = copies[id(t)]
    return state


def _aliases(model: nn.Module, t: torch.Tensor) -> list[str]:
    return [n for n, u in _tensors(model).items() if u is t]


@contextlib.contextmanager
def masked(model: nn.Module, removed: dict, base: dict | None = None):
    """Within the block the model is the masked original. With ``base`` (from
    :func:`base_state`), yields masked copies of it (the model's own tensors are not touched);
    without, the removed slices are zeroed in place and restored on exit (only they are held)."""
    if base is not None:
        state = dict(base)
        with torch.no_grad():
            for name, dims in removed.items():
                c = base[name].clone()
                for dim, idx in dims.items():
                    c.index_fill_(dim, idx.to(c.device), 0)
                for n in _aliases(model, _resolve(model, name)):
                    state[n] = c
        yield state
        return
    saved = []
    try:
        with torch.no_grad():
            for name, dims in removed.items():
                t = _resolve(model, name)
                for dim, idx in dims.items():
                    idx = idx.to(t.device)
                    saved.append((t, dim, idx, t.index_select(dim, idx)))
            for t, dim, idx, _ in saved:
                t.index_fill_(dim, idx, 0)
        yield None
    finally:
        failed = []
        with torch.no_grad():
            for t, dim, idx, values in reversed(saved):
                for attempt in range(2):  # an in-place copy into existing memory: retry once, then say so
                    try:
                        t.index_copy_(dim, idx, values)
                        break
                    except Exception as exc:
                        if attempt:
                            failed.append(exc)
        if failed:
            raise SurgeryError(f"verification could not restore {len(failed)} masked slice(s) of the model "
                               f"({failed[0]}): the model is not intact")


class _Masks:
    """Zeroed copies of tensors, made when needed: ``t * keep`` with one 0/1 vector per masked
    dim, broadcast (built once per tensor). A removed slice holding inf or nan would not become
    zero this way; the check then fails and is made again with :func:`masked`."""

    def __init__(self, removed_by_id: dict):
        self.dims = removed_by_id  # id(tensor) -> {dim: removed positions}
        self._keep: dict = {}

    def zeroed(self, t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        dims = self.dims[key]
        t = t.detach()
        if not t.is_floating_point():
            out = t.clone()
            for dim, idx in dims.items():
                out.index_fill_(dim, idx.to(t.device), 0)
            return out
        keep = self._keep.get(key)
        if keep is None:
            keep = self._keep[key] = [_keep_vector(t, dim, idx) for dim, idx in dims.items()]
        out = t * keep[0]
        for m in keep[1:]:
            out.mul_(m)
        return out


_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _activation_masks(mod: nn.Module, entries, by_id: dict):
    """For a plain linear or convolution layer (or an embedding; a batch norm, see
    ``_batch_norm_mask``) whose masked tensors are only its own weight and bias: (input keep
    mask or None, output keep mask or None), so that
    ``y = layer(x * keep_in) * keep_out`` is the masked layer's output exactly (a zero weight
    column times x is the weight times a zero input; a zero weight row with a zero bias is a zero
    output) without copying the weight. None where that does not hold."""
    # (looked up in the tables: a missing attribute costs Module.__getattr__ a raised error)
    if mod._modules.get("parametrizations") is not None or "parametrizations" in mod.__dict__:
        return None
    if type(mod) in _BATCH_NORMS:
        return _batch_norm_mask(mod, entries, by_id)
    if type(mod) not in (*_LINEAR_LIKE, nn.Embedding):
        return None
    own = {id(mod._parameters.get("weight")): "weight", id(mod._parameters.get("bias")): "bias"}
    names = [own.get(id(t)) for table, key, t in entries]
    if None in names or any(table is not mod._parameters for table, _, _ in entries):
        return None
    dims = {n: by_id[id(t)] for n, (_, _, t) in zip(names, entries)}
    w, b = dims.get("weight", {}), dims.get("bias", {})
    if isinstance(mod, nn.Embedding):
        return (None, (-1, w[1])) if set(w) == {1} and not b else None
    if isinstance(mod, nn.modules.conv._ConvNd) and (mod.transposed or (mod.groups != 1 and set(w) - {0})):
        return None  # a grouped conv: only its output rows (whose zeros give zero outputs)
    if set(w) - {0, 1}:
        return None
    rows = w.get(0)
    if rows is not None and mod._parameters.get("bias") is not None and \
            not _same(b.get(0, torch.empty(0, dtype=torch.long)), rows):
        return None  # the bias is not zeroed where the rows are: the output is not zero there
    if rows is None and b:
        return None
    where = -1 if isinstance(mod, nn.Linear) else -(len(mod.kernel_size) + 1)  # the channel dim, from the end
    return ((where, w[1]) if 1 in w else None), ((where, rows) if rows is not None else None)


_BATCH_NORMS = {nn.BatchNorm2d: -3, nn.BatchNorm3d: -4}  # the channel dim, from the end


def _batch_norm_mask(mod, entries, by_id):
    """An eval-mode batch norm whose scale and shift are zeroed (its statistics too, or not)
    at the same channels outputs zero there, ``0 * (x - mean) / sqrt(var + eps) + 0``, whatever
    the statistics: ``bn(x) * keep_out`` is the masked norm's output, without copying it. The
    check always runs in eval mode."""
    if not mod.affine or mod.weight is None or mod.bias is None:
        return None
    tables = {id(mod._parameters), id(mod._buffers)}
    if any(id(table) not in tables for table, _, _ in entries):
        return None
    by_key = {key: by_id[id(t)] for _, key, t in entries}
    if set(by_key) - {"weight", "bias", "running_mean", "running_var"} or not {"weight", "bias"} <= set(by_key):
        return None
    rows = by_key["weight"].get(0)
    if rows is None or any(set(d) != {0} or not _same(d[0], rows) for d in by_key.values()):
        return None
    return None, (_BATCH_NORMS[type(mod)], rows)


def _kept_positions(n: int, drop: torch.Tensor) -> torch.Tensor:
    """The positions of ``range(n)`` not in ``drop`` (a CPU index tensor), in order."""
    keep = np.ones(n, dtype=bool)
    keep[drop.numpy()] = False
    return torch.from_numpy(np.flatnonzero(keep))


def _keep_vector(t: torch.Tensor, dim: int, drop: torch.Tensor) -> torch.Tensor:
    """1 at the positions of ``t``'s dim ``dim`` that stay, 0 at ``drop``, shaped to broadcast."""
    shape = [-1 if d == dim else 1 for d in range(t.dim())]
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):  # one torch op, not three
        v = np.ones(t.shape[dim], dtype=np.float32 if t.dtype == torch.float32 else np.float64)
        v[drop.numpy()] = 0
        return torch.from_numpy(v).view(shape)
    v = torch.ones(t.shape[dim], dtype=t.dtype, device=t.device)
    v[drop.to(t.device)] = 0
    return v.view(shape)


def _swap(entries, values):
    """Put ``values`` in the tensor slots ``entries`` ((table, key) pairs); returns the old ones."""
    old = []
    for (table, key), v in zip(entries, values):
        old.append(table[key])
        table[key] = v
    return old


def lazily_maskable(graph, removed: dict) -> bool:
    """Whether :func:`masked_lazily` applies: the graph knows who reads the tensors, and none of
    them is computed by a parametrization (whose original the owner's forward does not read)."""
    readers = getattr(graph._ctx, "readers", None)
    return bool(readers) and not any(".parametrizations." in f".{n}" or n.endswith(("_g", "_v")) for n in removed)


#: positions (tokens, pixels) per call from which a plain layer is run on its kept channels
#: instead of masked at full width: below it, gathering the kept weights costs more than the
#: full-width product they save
NARROW_FROM = 64


def _plain_layer_hooks(mod, entries, drop_in, drop_out, enter, leave, masks=None):
    """Hooks that give a plain layer its masked output without a zeroed copy of its weight (see
    ``_activation_masks``). A removed weight column meets nothing and a removed row (with its
    bias) gives zero, so either way is the masked layer's output exactly:

    - a call with at least ``NARROW_FROM`` positions runs on the kept channels only: the input's
      kept channels through the kept columns and rows of the weight (gathered once, swapped in
      for the call), scattered into a zero output of the full width, at the pruned layer's cost;
    - a smaller call multiplies its input and output by 0/1 channel masks instead.

    Channel dims are counted from the end, so unbatched calls work alike; a call the hooks
    cannot handle (the input passed by keyword) raises, and the check is made again in place.
    ``masks``: a table of 0/1 masks shared between layers (a producer's output mask is its
    consumers' input mask and its norm's output mask), keyed by content."""
    w = mod._parameters["weight"].detach()
    embedding = isinstance(mod, nn.Embedding)
    narrowable = isinstance(mod, _LINEAR_LIKE) and getattr(mod, "groups", 1) == 1
    out_dim = 1 if embedding else 0  # the weight dim of the output channels
    width = w.shape[out_dim]

    positions: list = []  # (kept input channels, kept output channels), on the first narrow call
    masks = {} if masks is None else masks
    modes: list = []  # per open call: narrowed or masked

    def mask(x, where, drop, in_place=False):
        dim = x.dim() + where
        # keyed by the positions' object: layers of one group share it (_removed_positions),
        # and it lives as long as the masking does
        key = (x.shape[dim], id(drop), x.dim(), dim, x.dtype, x.device)
        m = masks.get(key)
        if m is None:
            m = masks[key] = _keep_vector(x, dim, drop)
        return x.mul_(m) if in_place else x * m

    def pre(m, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            raise RuntimeError(f"{type(m).__name__} called without a positional input: cannot mask it")
        ch = x.shape[drop_in[0]] if drop_in is not None and x.dim() else 1
        # an embedding's lookup costs nothing to mask (narrowing it would copy its table), and
        # a grouped convolution's groups do not survive narrowing
        wide = narrowable and x.numel() // max(ch, 1) >= NARROW_FROM
        modes.append(wide)
        if not wide:
            return (mask(x, *drop_in),) + tuple(args[1:]) if drop_in is not None else None
        if not positions:
            positions.append((_kept_positions(w.shape[1], drop_in[1]).to(w.device) if drop_in is not None else None,
                              _kept_positions(width, drop_out[1]).to(w.device) if drop_out is not None else None))
        k_in, k_out = positions[0]
        # gathered per call and dropped after it: the narrowed weights of a big model are never
        # all held at once
        v = w if k_in is None else w.index_select(1, k_in)  # columns first: the faster order
        v = v if k_out is None else v.index_select(out_dim, k_out)
        b = mod._parameters.get("bias")
        values = {"weight": v, "bias": None if b is None or k_out is None else b.detach().index_select(0, k_out)}
        enter(m, entries, [values[key] for _, key, _ in entries])
        return (x.index_select(x.dim() + drop_in[0], k_in),) + tuple(args[1:]) if drop_in is not None else None

    def post(m, args, y):
        wide = modes.pop() if modes else False
        if wide:
            leave(m)
        if drop_out is None or not isinstance(y, torch.Tensor):
            return None
        if not wide:
            # in place: a plain layer's output is a tensor of its own (the input is not)
            return mask(y, *drop_out, in_place=True)
        dim = y.dim() + drop_out[0]
        shape = list(y.shape)
        shape[dim] = width
        return y.new_zeros(shape).index_copy_(dim, positions[0][1], y)

    return [mod.register_forward_pre_hook(pre, prepend=True),
            mod.register_forward_hook(post, prepend=True, always_call=True)]


@contextlib.contextmanager
def masked_lazily(model: nn.Module, removed: dict, readers: Mapping[str, str]):
    """The masked original with no state to restore and no second copy of the model: each
    module whose forward reads a masked tensor gets, for the length of its call, a zeroed copy in
    place of that tensor (forward pre-hook, put back by the forward hook). ``readers`` (from the
    trace) names that module per tensor; a tensor it does not name is zeroed for the whole run.
    What the trace may not have seen (a tensor read through a reference held elsewhere) makes
    the check fail, never pass: the caller then checks again with :func:`masked`."""
    modules = dict(_named_modules(model, remove_duplicate=False))  # one walk for every lookup below
    slots_of: dict[str, tuple] = {}  # qualified name -> (table, key, tensor), every tensor slot
    for mod_name, mod in modules.items():
        prefix = f"{mod_name}." if mod_name else ""
        for table in (mod._parameters, mod._buffers):
            for key, t in table.items():
                if t is not None:
                    slots_of[prefix + key] = (table, key, t)
    by_id = {}
    for name, dims in removed.items():
        slot = slots_of.get(name)
        by_id[id(slot[2] if slot is not None else _resolve(model, name, modules))] = dims
    masks = _Masks(by_id)
    slots: dict[str, list] = {}  # reader module name -> [(table, key, tensor)]
    for name, slot in slots_of.items():
        if id(slot[2]) in by_id:
            slots.setdefault(readers.get(name, ""), []).append(slot)
    open_swaps: list = []  # (module, entries, old values) not yet put back, innermost last
    keep_masks: dict = {}  # the plain layers' 0/1 channel masks, shared
    handles = []

    def enter(owner, entries, values=None):
        values = [masks.zeroed(t) for _, _, t in entries] if values is None else values
        old = _swap([(tb, k) for tb, k, _ in entries], values)
        open_swaps.append((owner, entries, old))

    def leave(owner=None):
        # only the swap this module's own pre-hook made (it may have failed before making one)
        if open_swaps and (owner is None or open_swaps[-1][0] is owner):
            _, entries, old = open_swaps.pop()
            _swap([(tb, k) for tb, k, _ in entries], old)

    try:
        for reader, entries in list(slots.items()):
            if not reader:
                continue
            mod = modules.get(reader)
            if mod is None:
                slots.setdefault("", []).extend(entries)
                continue
            act = _activation_masks(mod, entries, by_id)
            if act is not None and all(x is None or x[1].numel() for x in act):
                handles += _plain_layer_hooks(mod, entries, *act, enter, leave, keep_masks)
                continue
            handles.append(mod.register_forward_pre_hook(lambda m, a, e=entries: enter(m, e), prepend=True))
            handles.append(mod.register_forward_hook(lambda m, a, o: leave(m), always_call=True))
        with torch.no_grad():
            if slots.get(""):
                enter(model, slots[""])
            yield None
    finally:
        for h in handles:
            h.remove()
        while open_swaps:  # a forward that raised half-way: put back what is still swapped
            leave()


def pruned_state(model: nn.Module, dtype, base: dict, removed: dict, excite: bool,
                 rescaled=()) -> dict[str, torch.Tensor]:
    """The pruned model's tensors in ``dtype``; with ``excite``, the excited values of the
    original (``base``) sliced to the positions that stayed and rescaled as the surgeon rescaled
    (``record["rescaled"]``), so both runs use the same weights."""
    state = base_state(model, dtype)
    if not excite:
        return state
    factors: dict = {}
    for name, dim, idx, factor in rescaled:
        factors.setdefault(name, []).append((dim, idx, factor))
    for name, t in model.named_parameters(remove_duplicate=False):
        if not t.is_floating_point():
            continue
        src = base[name]
        canon = next((n for n in removed if t is _resolve(model, n)), None)
        if canon is None:
            if tuple(src.shape) == tuple(t.shape):
                state[name] = src  # not touched by the plan: the same excited values
            continue
        out = src
        for dim, drop in sorted(removed[canon].items()):
            out = out.index_select(dim, _kept_positions(out.shape[dim], drop).to(out.device))
        for dim, idx, factor in factors.get(canon, ()):
            idx = torch.as_tensor(idx, dtype=torch.long, device=out.device)
            out = out.clone() if out is src else out
            out.index_copy_(dim, idx, out.index_select(dim, idx) * factor)
        state[name] = out
    return state


# ----------------------------------------------------------------------------- classification
def classify(graph, groups) -> tuple[set, set, dict]:
    """Split groups into exact ones, ones checked with affine norms, and structural-only ones
    (index -> the normalizing site that puts them there)."""
    labels = graph._labels
    comp_group = np.full(graph._ncomp, -1, dtype=np.int64)
    for g in groups:
        comp_group[g._comps] = g.index
    affine, structural = set(), {}
    for atoms, where, affine_norm in graph._ctx.normalizing:
        a = np.asarray(atoms).ravel()
        a = a[a >= 0]
        if not a.size:
            continue
        hit = set(np.unique(comp_group[labels[a]]).tolist()) - {-1}
        for gi in hit:
            if affine_norm:
                affine.add(gi)
            else:
                structural.setdefault(gi, f"reaches {where}")
    affine -= set(structural)
    exact = {g.index for g in groups} - set(structural)
    return exact, affine, structural


# ------------------------------------------------------------------------------------ checking
def _probe_budget(model: nn.Module, tensors: list | None = None) -> int:
    """Bytes of layer outputs the probe may hold: a twentieth of the model's tensors, within
    64 to 256 MiB (a big model's memory goal is a multiple of its weights)."""
    size = sum(t.numel() * t.element_size() for t in (_tensors(model).values() if tensors is None else tensors))
    return int(min(1 << 28, max(1 << 26, size // 20)))


#: a verification input is reduced to this many positions along a spatial dim (``SMALL_SEQ``
#: along a token sequence), or a quarter of the given size when that is more
SMALL_SIDE = 64
SMALL_SEQ = 16


def reduced_inputs(graph):
    """Smaller example inputs for the check, or None. Only for a graph whose trace made no
    decision on input values (``size_generic``: the model runs the same ops at any size, so the
    couplings the check tests are the same), and only along the spatial dims of image and video
    inputs (float tensors of 4 or 5 dims: a centre crop; batch and channels stay) and along the
    sequence of token inputs (integer tensors of 2 dims: a prefix). A model that does not take
    them (a fixed position table, a flatten before a linear layer) is checked on the given ones."""
    ctx = graph._ctx
    if not getattr(ctx, "size_generic", False):
        return None
    changed = False

    def shrink(t):
        nonlocal changed
        if t.dim() == 2 and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool:
            k = max(min(t.shape[1], SMALL_SEQ), t.shape[1] // 4)
            if k == t.shape[1]:
                return t
            changed = True
            return t[:, :k].contiguous()
        if not t.is_floating_point() or t.dim() not in (4, 5):
            return t
        size = [t.shape[0], t.shape[1]] + [max(min(d, SMALL_SIDE), d // 4) for d in t.shape[2:]]
        if list(t.shape) == size:
            return t
        changed = True
        # a centre crop: real pixels (an interpolation would blur them), no new values
        index = [slice(None), slice(None)] + [slice((d - k) // 2, (d - k) // 2 + k) for d, k in zip(t.shape[2:], size[2:])]
        return t[tuple(index)].contiguous()

    out = _map_tensors(graph.example_inputs, shrink)
    return out if changed else None


def macs_from_weights(graph) -> int | None:
    """The pruned model's MACs at the example inputs, without running it: where every op that
    counts FLOPs is a plain convolution or linear layer (``BuildContext.flops_per_weight``), each
    call's FLOPs are its weight's element count times the factor counted before the surgery.

    Only for a size-generic graph checked on a smaller input: its trace made no decision on any
    input value, so the pruned model, checked there to compute what the masked original computes
    (outputs of the same shapes), runs the same ops at the example inputs' size, where the
    original ran; channel widths are all that changed, and they are in the weights. None when
    that does not hold (the check then runs the pruned model on meta tensors at the given size)."""
    ctx = graph._ctx
    sites = getattr(ctx, "flops_per_weight", None)
    if sites is None or not getattr(ctx, "size_generic", False):
        return None
    modules = dict(_named_modules(graph.model, remove_duplicate=False))
    flops = 0
    for name, per_element in sites:
        mod = modules.get(name)
        w = mod._parameters.get("weight") if mod is not None else None
        if w is None:
            return None
        flops += per_element * w.numel()
    return flops // 2


class _Checker:
    """Runs the check of a plan. Two shortcuts are tried first and given up for the rest of the
    prune as soon as a check fails with them, so that a failure is only ever reported by the
    plain check: a smaller input (``reduced_inputs``, when the caller gave none), and, in the
    model's own dtype, masking one module at a time (``masked_lazily``) instead of in place."""

    def __init__(self, graph, dtype, report: Verification, inputs=None, budget: int | None = None):
        self.graph = graph
        self.budget = budget  # the probe's (see _probe_budget); None: from the model at each check
        self.inputs = inputs
        self.small = reduced_inputs(graph) if inputs is None else None
        self.lazy = True
        self.dtype = dtype
        self.report = report
        self.tol = TOLERANCE.get(dtype or model_dtype(graph.model), 1e-4)
        self.macs_after = None  # MACs of the kept surgery at the example inputs (full-size run)

    def _relax(self) -> bool:
        """Give up the next shortcut; False when none is left."""
        if self.small is not None:
            self.small = None
            return True
        if self.lazy:
            self.lazy = False
            return True
        return False

    def check(self, plan, affine_norms: bool, keep: bool = False):
        """(relative difference, record or None). The model is restored unless ``keep`` and the
        plan passed, in which case the surgery stays and its record is returned."""
        while True:
            diff, record = self._check(plan, affine_norms, keep)
            if diff <= self.tol or not self._relax():
                return diff, record

    def _check(self, plan, affine_norms, keep):
        from .surgery import apply_plan
        model = self.graph.model
        small = self.small
        inputs = small if small is not None else self.inputs if self.inputs is not None else self.graph.example_inputs
        from .surgery import removal
        cut = removal(self.graph, plan)
        removed = _removed_positions(self.graph, plan, cut)
        lazy = self.lazy and self.dtype is None and lazily_maskable(self.graph, removed)
        try:
            with stage("verify"):
                refs = self._references(model, inputs, removed, affine_norms, lazy)
        except Exception:
            if small is not None:  # the model does not take the smaller input: use the given one
                return float("inf"), None
            if lazy:  # nor the masking hooks (a layer called in a way they do not expect)
                self.lazy = False
                return self._check(plan, affine_norms, keep)
            if self.dtype is None:
                raise
            # some kernels have no float64 version (``_grouped_mm`` of MoE experts): check in
            # the model's own dtype instead
            self.dtype = None
            self.tol = TOLERANCE.get(model_dtype(model), 1e-4)
            self.report.dtype = str(model_dtype(model)).replace("torch.", "")
            self.report.tolerance = self.tol
            return self._check(plan, affine_norms, keep)
        with stage("surgery"):
            record = apply_plan(self.graph, plan, cut)
        diff = 0.0
        try:
            for ref, probe, base, excite in refs:
                probe.mode = "check"
                state = (pruned_state(model, self.dtype, base, removed, excite, (record or {}).get("rescaled", ()))
                         if self.dtype is not None else None)
                try:
                    with stage("verify"):
                        out = run(model, inputs, self.dtype, state, affine_norms, probe)
                except Exception:  # the pruned model does not even run: as wrong as can be
                    diff = float("inf")
                    break
                self.report.runs += 1
                diff = max(diff, compare(ref, out), probe.worst)
            del refs
            if keep and diff <= self.tol and record and small is not None:
                # checked on a smaller input: the pruned model must still run, with the same output
                # shapes, on the user's (on meta tensors, counting its MACs on the way), unless
                # its MACs follow from its weights (see macs_from_weights)
                macs = macs_from_weights(self.graph)
                if macs is not None:
                    self.macs_after = macs
                else:
                    from .surgery import check_runs
                    counted: list = []
                    with stage("verify"):
                        problem = check_runs(model, self.graph.example_inputs, self.graph._output_structure,
                                             meta=getattr(self.graph._ctx, "meta_ok", True), macs=counted)
                    if problem:
                        diff = float("inf")
                    elif counted:
                        self.macs_after = counted[0]
        except BaseException:  # our own failure (not the model's): undo, then report it
            if record:
                record["undo"]()
            raise
        if keep and diff <= self.tol:
            return diff, record
        if record:
            record["undo"]()
        return diff, None

    def _references(self, model, inputs, removed, affine_norms, lazy=False):
        # float64 runs are on copies, so they are also made with excited weights (see _excite)
        variants = (False, True) if self.dtype is not None else (False,)
        refs = []
        for excite in variants:
            base = base_state(model, self.dtype, excite) if self.dtype is not None else None
            probe = Probe(model, removed, budget=self.budget if self.budget is not None else _probe_budget(model))
            mask = masked_lazily(model, removed, self.graph._ctx.readers) if lazy else masked(model, removed, base)
            with mask as state:
                refs.append((run(model, inputs, self.dtype, state, affine_norms, probe), probe, base, excite))
            self.report.runs += 1
        return refs

    def guilty(self, plan, affine: set) -> dict:
        """Bisect a failing plan: the groups that fail on their own (or, where only a combination
        fails, the combination)."""
        found = {}

        def go(groups, diff):
            if len(groups) == 1:
                found[groups[0]] = diff
                return
            half = len(groups) // 2
            hit = False
            for part in (groups[:half], groups[half:]):
                sub = {g: plan[g] for g in part}
                d, _ = self.check(sub, any(g.index in affine for g in part))
                if d > self.tol:
                    hit = True
                    go(part, d)
            if not hit:
                for g in groups:
                    found[g] = diff
        d, _ = self.check(plan, any(g.index in affine for g in plan))
        if d > self.tol:
            go(list(plan), d)
        return found


def apply(graph, plan: Mapping, mode=True, keep_partial: bool = True, inputs=None):
    """Apply ``plan`` to ``graph``'s model with numerical verification.

    Returns ``(record, report)``. ``record`` is the surgery record (``{}`` when nothing was
    pruned) or None when groups failed and ``keep_partial`` is False (the model is then as it
    was; the caller freezes ``report.guilty`` and plans again). With ``mode="raise"`` a failure
    raises :class:`VerificationError` instead, the model restored. ``inputs``: what the check runs
    on (default: the graph's example inputs), e.g. a smaller image for a convolutional network,
    whose couplings do not depend on the spatial size.
    """
    from .surgery import apply_plan, check_runs
    model = graph.model
    report = Verification()
    plan = {g: list(c) for g, c in plan.items() if len(c)}
    if not plan:
        return {}, report
    tensors = list(_tensors(model).values())  # one walk for the three questions below
    dtype = choose_dtype(model, tensors)
    if any(t.device.type == "meta" for t in tensors):
        report.skipped = "the model is on the meta device: only the structural check ran"
        record = apply_plan(graph, plan)
        return record, report
    checker = _Checker(graph, dtype, report, inputs, budget=_probe_budget(model, tensors))
    report.dtype = str(dtype or model_dtype(model)).replace("torch.", "")
    report.tolerance = checker.tol
    exact, affine, structural = classify(graph, list(plan))
    report.structural = {gi: why for gi, why in structural.items()}
    exact_plan = {g: c for g, c in plan.items() if g.index in exact}
    final_plan = dict(plan)
    while exact_plan:
        keep = len(exact_plan) == len(final_plan)  # nothing else to add: keep the checked surgery
        diff, record = checker.check(exact_plan, any(g.index in affine for g in exact_plan), keep=keep)
        if diff <= checker.tol:
            report.max_diff = diff
            report.exact = len(exact_plan)
            report.affine_norm = sum(g.index in affine for g in exact_plan)
            if record is not None:
                if checker.macs_after is not None:
                    record["macs_after"] = checker.macs_after
                return _finish(graph, record, report)
            break
        bad = checker.guilty(exact_plan, affine)
        if not bad:  # passes when bisected, fails whole: be safe, take nothing
            bad = {g: diff for g in exact_plan}
        for g, d in bad.items():
            report.guilty[g.index] = (f"numerical check: pruning these channels changes the output "
                                      f"(max relative diff {d:.3g}, tolerance {checker.tol:g} in {report.dtype})")
        if mode == "raise":
            raise VerificationError(
                f"the pruned model does not compute what the original computes with the removed channels "
                f"zeroed: {len(bad)} group(s) at fault, e.g. group {next(iter(bad)).index} "
                f"({next(iter(bad)).members[0].name}): {report.guilty[next(iter(bad)).index]}. The model "
                "was restored. Please report this model: a coupling rule is missing a case.")
        if not keep_partial:
            return None, report
        exact_plan = {g: c for g, c in exact_plan.items() if g not in bad}
        final_plan = {g: c for g, c in final_plan.items() if g not in bad}
    if not final_plan:
        return {}, report
    with stage("surgery"):
        record = apply_plan(graph, final_plan)
    if record and report.structural:
        counted: list = []
        problem = check_runs(model, graph.example_inputs, graph._output_structure,
                             meta=getattr(graph._ctx, "meta_ok", True), macs=counted)
        if problem:
            record["undo"]()
            raise SurgeryError(f"the pruned model failed its check ({problem}); the surgery was undone. "
                               f"Please report this model: a coupling rule is missing a case.")
        if counted:
            record["macs_after"] = counted[0]
    return _finish(graph, record, report)


def _finish(graph, record, report):
    if record:
        record["verification"] = {"dtype": report.dtype, "tolerance": report.tolerance,
                                  "max_diff": report.max_diff, "exact_groups": report.exact,
                                  "structural_groups": len(report.structural), "frozen": dict(report.guilty)}
    return record, report


def describe(report: Verification) -> str:
    if report.skipped:
        return f"skipped ({report.skipped})"
    parts = [f"{report.exact} group(s) exact in {report.dtype} (max relative diff {report.max_diff:.2g}, "
             f"tolerance {report.tolerance:g})"]
    if report.affine_norm:
        parts.append(f"{report.affine_norm} of them with their norms reduced to affine")
    if report.structural:
        parts.append(f"{len(report.structural)} checked by running only (channel-normalizing op)")
    if report.guilty:
        parts.append(f"{len(report.guilty)} frozen by the check")
    return "; ".join(parts)


__all__ = ["Verification", "VerificationError", "apply", "run", "compare", "masked", "classify", "describe",
           "TOLERANCE", "F64_LIMIT"]

