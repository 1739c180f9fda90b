"""Running a model on meta tensors (shapes only, no memory), fast.

``to_meta`` / ``on_meta`` give a model meta twins of its inputs, parameters and buffers.

Memoization: what each aten op returns for given input metadata is remembered.

Shape propagation, the surgeon's validation run and the ``target_speedup`` search run the model
on meta tensors. Many meta kernels are Python decompositions (batch norm ~2 ms, relu ~1 ms per
call, against microseconds for a real op on a small tensor). A meta kernel's output depends only
on its inputs' metadata and its other arguments, so the first call of an op on given metadata is
run for real and the shapes, strides and dtypes it returned are reused for every identical call,
which deep networks repeat block after block.

In-place ops (``relu_``, ``hardtanh_``, ``add_``, ...) return their written argument itself. Their
Python meta kernels are as slow as the functional ones (MobileNet's 140 ``hardtanh_`` calls cost
~6 ms each), so they are memoized too: the first call on given metadata runs for real, and when it
returned its written argument(s) with shape, strides, dtype and offset unchanged, every identical
call is answered with those arguments, without running. Ops that change their argument's
metadata (``resize_``, ``unsqueeze_``), views and random ops always run.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from torch.nn.utils import stateless
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ._walk import named_tensors

_LIMIT = 1 << 14
_CACHE: dict = {}
_CACHEABLE: dict = {}
_KEEP: list = []  # every op the tables below have seen (they are keyed by its id)
_INPLACE: dict = {}
_FLOPS: dict = {}  # FLOPs of a memoized call (same key as _CACHE), when a counting run saw it
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class _NotCacheable(Exception):
    pass


def _cacheable(func) -> bool:
    ok = _CACHEABLE.get(id(func))
    if ok is None:
        _KEEP.append(func)  # tables are keyed by id(func): keep the op alive so its id stays its own
        schema = func._schema
        ok = _CACHEABLE[id(func)] = not schema.is_mutable and all(r.alias_info is None for r in schema.returns) \
            and not any(torch.Tag.nondeterministic_seeded == t for t in func.tags)
    return ok


def _inplace_outputs(func):
    """For an op whose every return is one of its written (``Tensor(a!)``) arguments, the
    ``(position, name)`` of the argument behind each return; None for any other op."""
    try:
        return _INPLACE[id(func)]
    except KeyError:
        pass
    schema = func._schema
    outs = None
    if schema.is_mutable and schema.returns and not any(torch.Tag.nondeterministic_seeded == t for t in func.tags):
        written, ok = {}, True
        for i, a in enumerate(schema.arguments):
            if a.alias_info is not None:
                if not a.alias_info.is_write or str(a.type) != "Tensor":
                    ok = False  # a view of an argument, or a written list of tensors
                    break
                written[frozenset(a.alias_info.before_set)] = (i, a.name)
        if ok:
            outs = []
            for r in schema.returns:
                k = frozenset(r.alias_info.before_set) if r.alias_info is not None else None
                if k is None or not r.alias_info.is_write or k not in written:
                    outs = None
                    break
                outs.append(written[k])
            if outs is not None and len(set(outs)) != len(written):
                outs = None  # an argument written but not returned
            outs = tuple(outs) if outs else None
    _INPLACE[id(func)] = outs
    return outs


def _argument(args, kwargs, where):
    i, name = where
    return args[i] if i < len(args) else kwargs[name]


def _meta_of(t):
    return (t.shape, t.stride(), t.dtype, t.storage_offset())


_PLAIN_TENSORS = frozenset({torch.Tensor, nn.Parameter})
_PLAIN_SCALARS = frozenset(_SCALARS)


def _key(obj):
    """A hashable key of ``obj``'s metadata (tensors: shape, strides, dtype, offset; scalars: type
    and value, so ``1``, ``1.0`` and ``True`` differ). The common containers (the argument tuple,
    a list of sizes) are keyed in one loop: this runs a dozen times per op of every meta run."""
    cls = type(obj)
    if cls in _PLAIN_TENSORS:
        if not obj.is_meta:
            raise _NotCacheable
        return _meta_of(obj)
    if cls is tuple or cls is list:
        out = [cls]
        for o in obj:
            c = type(o)
            if c in _PLAIN_TENSORS:
                if not o.is_meta:
                    raise _NotCacheable
                # _meta_of inlined: the one hot loop, a call per tensor argument saved
                out.append((o.shape, o.stride(), o.dtype, o.storage_offset()))
            elif c in _PLAIN_SCALARS:
                out.append((c, o))
            else:
                out.append(_key(o))
        return tuple(out)
    if cls is dict and not obj:
        return _EMPTY_DICT_KEY
    if cls in _PLAIN_SCALARS:
        return (cls, obj)
    if isinstance(obj, torch.Tensor):  # subclasses (fake tensors, ...) run as they are
        raise _NotCacheable
    if isinstance(obj, (tuple, list)):
        return (type(obj),) + tuple(_key(o) for o in obj)
    if isinstance(obj, dict):
        return (dict,) + tuple((k, _key(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, _SCALARS):
        return (type(obj), obj)
    raise _NotCacheable


_EMPTY_DICT_KEY = (dict,)


def _spec(out):
    if isinstance(out, torch.Tensor):
        if type(out) is not torch.Tensor or not out.is_meta:
            raise _NotCacheable
        return ("T", tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, (tuple, list)):
        return (type(out),) + tuple(_spec(o) for o in out)
    if out is None:
        return None
    raise _NotCacheable


def _build(spec):
    if spec is None:
        return None
    if spec[0] == "T":
        _, shape, stride, dtype = spec
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    kind, items = spec[0], spec[1:]
    return kind(_build(s) for s in items)


def _remember(key, spec, flops: int | None = None) -> None:
    """Store a memoized call (and its FLOPs, when counted), emptying the tables when full."""
    if len(_CACHE) >= _LIMIT:
        _CACHE.clear()
        _FLOPS.clear()
    _CACHE[key] = spec
    if flops is not None:
        _FLOPS[key] = flops


class MetaMemo(TorchDispatchMode):
    """Active around a run on meta tensors; calls on real tensors pass straight through.

    ``count_flops=True``: also count FLOPs as :class:`torch.utils.flop_counter.FlopCounterMode`
    does (same formulas, same decomposition of ops that have none), into ``self.flops``, with the
    count of each memoized call remembered next to its output, and without the counter's
    per-module bookkeeping (a module tracker and a pytree walk per op)."""

    def __init__(self, count_flops: bool = False):
        super().__init__()
        self.count_flops = count_flops
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.count_flops and _decomposable(func):
            key = None
            if _cacheable(func):
                try:
                    key = (id(func), "decomposed", _key(args), _key(kwargs))
                except (_NotCacheable, TypeError):
                    key = None
                spec = _CACHE.get(key) if key is not None else None
                if spec is not None and key in _FLOPS:  # seen: its parts' output and count
                    self.flops += _FLOPS[key]
                    return _build(spec)
            before = self.flops
            with self:  # as FlopCounterMode does: a composite op is counted through its parts
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                if key is not None:
                    try:
                        spec = _spec(r)
                    except _NotCacheable:
                        spec = None
                    if spec is not None:
                        _remember(key, spec, self.flops - before)
                return r
        if not _cacheable(func):
            outs = _inplace_outputs(func)
            if outs is None:
                return self._counted(func, None, func(*args, **kwargs), args, kwargs)
            return self._counted(func, None, self._inplace(func, outs, args, kwargs), args, kwargs)
        try:
            key = (id(func), _key(args), _key(kwargs))
        except (_NotCacheable, TypeError):  # a real tensor, a subclass or an unhashable argument
            return self._counted(func, None, func(*args, **kwargs), args, kwargs)
        spec = _CACHE.get(key)
        if spec is not None:
            return self._counted(func, key, _build(spec), args, kwargs)
        out = _formula_or_run(func, args, kwargs)
        try:
            spec = _spec(out)
        except _NotCacheable:
            return self._counted(func, None, out, args, kwargs)
        if spec is not None:
            _remember(key, spec)
        return self._counted(func, key, out, args, kwargs)

    def _counted(self, func, key, out, args, kwargs):
        if not self.count_flops:
            return out
        n = _FLOPS.get(key) if key is not None else None
        if n is None:
            formula = _flop_registry().get(func._overloadpacket)
            n = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
            if key is not None:
                _FLOPS[key] = n
        self.flops += n
        return out

    @staticmethod
    def _inplace(func, outs, args, kwargs):
        try:
            key = (id(func), _key(args), _key(kwargs))
        except (_NotCacheable, TypeError):
            return func(*args, **kwargs)
        targets = [_argument(args, kwargs, w) for w in outs]
        if _CACHE.get(key) == "inplace":
            return targets[0] if len(targets) == 1 else tuple(targets)
        before = [_meta_of(t) for t in targets]
        out = func(*args, **kwargs)
        got = out if isinstance(out, (tuple, list)) else (out,)
        # memoize only what provably changed nothing but the (absent) data of its arguments
        if len(got) == len(targets) and all(a is b for a, b in zip(got, targets)) \
                and [_meta_of(t) for t in targets] == before:
            _remember(key, "inplace")
        return out


# ---------------------------------------------------------------------------- output formulas
# A few meta kernels are slow Python decompositions even on first sight of a shape (eval-mode
# batch norm: ~3.5 ms, against microseconds for its output's metadata), and a pruned model shows
# every one of them new shapes. For those, the output metadata is written down as a formula of
# the inputs' metadata. A formula is trusted only for a *class* of calls (op, dtypes, rank,
# memory format, which optional arguments are given) once it agreed with the real meta kernel on
# the first call of that class; a class where it did not always runs the kernel.
_FORMULAS: dict = {}
_FORMULA_OK: dict = {}


def _dense_format(x) -> str | None:
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return None


def _bn_class(func, x, stats, training):
    if training or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    fmt = _dense_format(x)
    if fmt is None:
        return None
    return (id(func), x.dtype, x.dim(), fmt,
            tuple(None if t is None else (t.dtype, t.dim(), t.is_contiguous()) for t in stats))


def _bn_eval(x, stats):
    c = x.shape[1]
    dtype = next((t.dtype for t in stats[2:] if t is not None), x.dtype)
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return (out, torch.empty((c,), dtype=dtype, device="meta"), torch.empty((c,), dtype=dtype, device="meta"))


def _layout(x) -> str | None:
    """``"channels_last"`` only where that is the tensor's one dense format, else contiguous."""
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def _binary_class(func, a, b):
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() == 0 or b.dim() == 0:
        return None
    la, lb = _layout(a), _layout(b)
    if la is None or lb is None:
        return None
    return (id(func), a.dtype, b.dtype, la, lb, tuple(s == 1 for s in a.shape), tuple(s == 1 for s in b.shape))


def _binary(a, b):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    full = a if tuple(a.shape) == tuple(shape) else b if tuple(b.shape) == tuple(shape) else None
    fmt = torch.channels_last if full is not None and _layout(full) == "channels_last" else torch.contiguous_format
    return torch.empty(shape, dtype=torch.result_type(a, b), device="meta", memory_format=fmt)


def _reduced_dims(x, dims):
    if not isinstance(dims, (list, tuple)) or not dims or not all(type(d) is int for d in dims):
        return None
    return tuple(sorted({d % x.dim() for d in dims}))


def _mean_class(func, a):
    if len(a) < 2 or not isinstance(a[0], torch.Tensor) or a[0].dim() == 0 or _layout(a[0]) is None:
        return None
    dims = _reduced_dims(a[0], a[1])
    keep = a[2] if len(a) > 2 else False
    if dims is None or type(keep) is not bool:
        return None
    return (id(func), a[0].dtype, a[0].dim(), _layout(a[0]), dims, keep)


def _mean(a):
    x, dims = a[0], _reduced_dims(a[0], a[1])
    keep = a[2] if len(a) > 2 else False
    shape = [1 if d in dims else s for d, s in enumerate(x.shape)] if keep else \
        [s for d, s in enumerate(x.shape) if d not in dims]
    return torch.empty(shape, dtype=x.dtype, device="meta")


def _register_formulas():
    aten = torch.ops.aten
    for op in (aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor):
        _KEEP.append(op)
        _FORMULAS[id(op)] = (lambda f, a, k: _binary_class(f, a[0], a[1]) if len(a) == 2 else None,
                             lambda a, k: _binary(a[0], a[1]))
    _KEEP.append(aten.mean.dim)
    _FORMULAS[id(aten.mean.dim)] = (lambda f, a, k: _mean_class(f, a), lambda a, k: _mean(a))
    # native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)
    _KEEP.extend([aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default])
    _FORMULAS[id(aten.native_batch_norm.default)] = (
        lambda f, a, k: _bn_class(f, a[0], a[1:5], a[5]), lambda a, k: _bn_eval(a[0], a[1:5]))
    # _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps)
    _FORMULAS[id(aten._native_batch_norm_legit_no_training.default)] = (
        lambda f, a, k: _bn_class(f, a[0], a[1:5], False), lambda a, k: _bn_eval(a[0], a[1:5]))


def _formula_or_run(func, args, kwargs):
    if not _FORMULAS:
        _register_formulas()
    entry = _FORMULAS.get(id(func))
    if entry is None or kwargs:
        return func(*args, **kwargs)
    try:
        cls = entry[0](func, args, kwargs)
    except Exception:  # unexpected argument forms: the kernel decides
        cls = None
    if cls is None:
        return func(*args, **kwargs)
    ok = _FORMULA_OK.get(cls)
    if ok:
        return entry[1](args, kwargs)
    out = func(*args, **kwargs)
    if ok is None:
        try:
            _FORMULA_OK[cls] = _spec(out) == _spec(entry[1](args, kwargs))
        except Exception:
            _FORMULA_OK[cls] = False
    return out


_REGISTRY: dict = {}
_DECOMPOSABLE: dict = {}


def _decomposable(func) -> bool:
    """Whether ``func.decompose`` would do anything (FlopCounterMode tries it on every op)."""
    ok = _DECOMPOSABLE.get(id(func))
    if ok is None:
        _KEEP.append(func)
        dk = torch._C.DispatchKey.CompositeImplicitAutograd
        ok = _DECOMPOSABLE[id(func)] = func is not torch.ops.prim.device.default and isinstance(func, torch._ops.OpOverload) \
            and (dk in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), dk))
    return ok


def _flop_registry() -> dict:
    """torch's FLOP formulas (op overloads and packets → formula), loaded once."""
    if not _REGISTRY:
        from torch.utils.flop_counter import flop_registry
        _REGISTRY.update(flop_registry)
        # CPU attention's flash kernel (what `scaled_dot_product_attention` runs without a mask)
        # has no formula in torch: it is the same attention as the CUDA flash kernel's
        aten = torch.ops.aten
        cpu_flash = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if cpu_flash is not None and aten._scaled_dot_product_flash_attention in _REGISTRY:
            _REGISTRY.setdefault(cpu_flash, _REGISTRY[aten._scaled_dot_product_flash_attention])
    return _REGISTRY


def to_meta(obj):
    """``obj`` (a tensor, or any pytree of them) with every tensor replaced by a meta twin."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("meta"), obj)


@contextlib.contextmanager
def on_meta(model: nn.Module, count_flops: bool = False, memo: "MetaMemo | None" = None):
    """Within the block, ``model`` holds meta twins of its parameters and buffers (its own tensors
    are never touched) and meta-op results are memoized; call it with ``to_meta`` inputs. Yields
    the :class:`MetaMemo` (its ``flops`` with ``count_flops=True``; ``memo``: use that one)."""
    memo = memo if memo is not None else MetaMemo(count_flops)
    state = named_tensors(model)
    if all(t.is_meta for t in state.values()):  # a structural copy already: nothing to swap
        with memo:
            yield memo
        return
    state = {k: _twin(t) for k, t in state.items()}
    with stateless._reparametrize_module(model, state), memo:
        yield memo


_TWINS: dict = {}  # id(tensor) -> (weakref to it, its metadata then, its meta twin)


def _twin(t: torch.Tensor) -> torch.Tensor:
    """``t``'s meta twin, reused while ``t`` lives with the same metadata: a model is run on
    meta tensors several times per prune (shape propagation, the check, the MAC counts), and
    making a twin per tensor per run costs more than the run's memoized ops."""
    meta = (t.shape, t.stride(), t.dtype, t.storage_offset(), t.device)
    hit = _TWINS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == meta:
        return hit[2]
    twin = t.detach().to("meta")
    try:
        ref = weakref.ref(t)
    except TypeError:
        return twin
    if len(_TWINS) >= _LIMIT:
        for k in [k for k, v in _TWINS.items() if v[0]() is None]:
            del _TWINS[k]
        if len(_TWINS) >= _LIMIT:
            _TWINS.clear()
    _TWINS[id(t)] = (ref, meta, twin)
    return twin
