"""Coupling rule for in-place slice assignment, ``x[idx] = v`` (``operator.setitem``).

The written positions of ``x`` hold ``v`` afterwards, so along every dim they share the written
slice's channels are ``v``'s channels: tie them (``v`` broadcast along a dim ties nothing there).
``x``'s own value keeps its atoms, so later reads of ``x`` stay consistent. Indexing the rules
cannot follow (index tensors, widths computed from sizes) freezes what it touches.
"""
from __future__ import annotations

import operator

import torch

from ..registry import function_rule
from ..values import TV
from .tensor_ops import tensor_index


@function_rule(operator.setitem)
def _setitem(ctx, node, args, kwargs, out):
    x, idx, value = args
    if not isinstance(x, TV):
        ctx.freeze([x, idx, value], f"item assignment into a non-tensor at {ctx.where()}")
        return None
    parts = idx if isinstance(idx, tuple) else (idx,)
    if not all(p is None or p is Ellipsis or type(p) in (int, slice) and all(
            b is None or type(b) is int for b in ((p.start, p.stop, p.step) if type(p) is slice else ()))
            for p in parts):
        ctx.freeze([x, idx, value], f"item assignment with an index the rules cannot follow at {ctx.where()}")
        return None
    shape = tuple(torch.empty(x.shape, device="meta")[idx].shape)
    written = tensor_index(ctx, x, idx, TV(shape))
    if isinstance(value, TV):
        for k in range(1, value.ndim + 1):  # right-aligned, as broadcasting
            dv, dw = value.ndim - k, written.ndim - k
            if dw < 0:
                break
            if value.shape[dv] == written.shape[dw] and value.shape[dv] > 1:
                ctx.union(written.atoms(dw), value.atoms(dv), "item assignment")
            elif value.tracked(dv):
                ctx.freeze_dims(value, [dv], f"broadcast in item assignment at {ctx.where()}")
    return None
