"""Running a model on meta tensors (shapes only, no memory), fast.

``to_meta`` / ``on_meta`` give a model meta twins of its inputs, parameters and buffers.

Memoization: what each aten op returns for given input metadata is remembered.

Shape propagation, the surgeon's validation run and the ``target_speedup`` search run the model
on meta tensors. Many meta kernels are Python decompositions (batch norm ~2 ms, relu ~1 ms per
call, against microseconds for a real op on a small tensor). A meta kernel's output depends only
on its inputs' metadata and its other arguments, so the first call of an op on given metadata is
run for real and the shapes, strides and dtypes it returned are reused for every identical call,
which deep networks repeat block after block. Ops that mutate or alias their inputs (in-place,
views) always run: their outputs must be the inputs themselves.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import stateless
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_LIMIT = 1 << 14
_CACHE: dict = {}
_CACHEABLE: dict = {}
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class _NotCacheable(Exception):
    pass


def _cacheable(func) -> bool:
    ok = _CACHEABLE.get(func)
    if ok is None:
        schema = func._schema
        ok = _CACHEABLE[func] = not schema.is_mutable and all(r.alias_info is None for r in schema.returns) \
            and not any(torch.Tag.nondeterministic_seeded == t for t in func.tags)
    return ok


def _key(obj):
    cls = type(obj)
    if cls is torch.Tensor or cls is torch.nn.Parameter:
        if not obj.is_meta:
            raise _NotCacheable
        return (obj.shape, obj.stride(), obj.dtype, obj.storage_offset())
    if isinstance(obj, torch.Tensor):  # subclasses (fake tensors, ...) run as they are
        raise _NotCacheable
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__,) + tuple(_key(o) for o in obj)
    if isinstance(obj, dict):
        return ("D",) + tuple((k, _key(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, _SCALARS):
        return (type(obj).__name__, obj)
    raise _NotCacheable


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


class MetaMemo(TorchDispatchMode):
    """Active around a run on meta tensors; calls on real tensors pass straight through."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _cacheable(func):
            return func(*args, **kwargs)
        try:
            key = (func, _key(args), _key(kwargs))
        except (_NotCacheable, TypeError):  # a real tensor, a subclass or an unhashable argument
            return func(*args, **kwargs)
        spec = _CACHE.get(key)
        if spec is not None:
            return _build(spec)
        out = func(*args, **kwargs)
        try:
            spec = _spec(out)
        except _NotCacheable:
            return out
        if spec is not None:
            if len(_CACHE) >= _LIMIT:
                _CACHE.clear()
            _CACHE[key] = spec
        return out


def to_meta(obj):
    """``obj`` (a tensor, or any pytree of them) with every tensor replaced by a meta twin."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("meta"), obj)


@contextlib.contextmanager
def on_meta(model: nn.Module):
    """Within the block, ``model`` holds meta twins of its parameters and buffers (its own tensors
    are never touched) and meta-op results are memoized; call it with ``to_meta`` inputs."""
    state = to_meta({**dict(model.named_parameters(remove_duplicate=False)),
                     **dict(model.named_buffers(remove_duplicate=False))})
    with stateless._reparametrize_module(model, state), MetaMemo():
        yield
