"""Coupling rule for ``nn.MultiheadAttention``.

The module derives its inner width from ``embed_dim`` (the query width) and splits it into
``num_heads`` heads of ``head_dim`` each, so the embedding channels and the q/k/v/output
projection rows must shrink together. We tie embedding position ``i`` to inner position ``i``
of q, k and v and to the output projection. Then, by the graph's ``attention`` option:

* ``"heads"`` (default): remove *whole heads*: ``head_dim`` (and with it the softmax scale) stays
  as it was, so removing a dead head preserves the function; ``num_heads`` shrinks.
* ``"head_dim"``: remove position ``j`` of every head together: ``num_heads`` stays, ``head_dim``
  shrinks. The module divides by ``sqrt(head_dim)`` of the new width, so the surgeon scales the
  query projection rows by ``sqrt(new head_dim / old head_dim)``: the logits, and with them the
  function, stay as they were.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ..registry import module_rule
from .tensor_ops import _arg
from ..values import TV, clean_track


@module_rule(nn.MultiheadAttention)
def _mha(ctx, node, module, args, kwargs, out):
    name = node.target
    q = _arg(args, kwargs, 0, "query")
    k = _arg(args, kwargs, 1, "key")
    v = _arg(args, kwargs, 2, "value")
    for extra in ("key_padding_mask", "attn_mask"):
        m = kwargs.get(extra)
        if isinstance(m, TV):
            ctx.freeze(m, f"{extra} of {ctx.where()}")
    if not module._qkv_same_embed_dim or module.bias_k is not None or not all(isinstance(t, TV) for t in (q, k, v)):
        ctx.freeze([q, k, v], f"{ctx.where()}: only packed q/k/v projections without bias_k/bias_v have a rule")
        return _untracked_out(q, out)
    E, H = module.embed_dim, module.num_heads
    hd = E // H
    w_in = ctx.param_tv(name, "in_proj_weight", (0, 1))
    b_in = ctx.param_tv(name, "in_proj_bias", (0,))
    w_out = ctx.param_tv(f"{name}.out_proj", "weight", (0, 1))
    b_out = ctx.param_tv(f"{name}.out_proj", "bias", (0,))
    stream = w_in.atoms(1)
    for t in (q, k, v):
        ctx.union(t.atoms(-1), stream, "attention input")
    rows = w_in.atoms(0).reshape(3, E)
    if b_in is not None:
        ctx.union(b_in.atoms(0).reshape(3, E), rows, "attention projection bias")
    for inner in (rows[0], rows[1], rows[2], w_out.atoms(1), w_out.atoms(0)):
        ctx.union(inner, stream, "attention width (inner width equals embed_dim)")
    if b_out is not None:
        ctx.union(b_out.atoms(0), w_out.atoms(0), "attention output bias")
    grid = stream.reshape(H, hd)
    if ctx.attention == "head_dim":
        ctx.atoms.tie_along(grid, (0,), f"per-head dims of {ctx.where()} (attention='head_dim')")
        ctx.width_atoms(name, "head_dim", grid[0])
        # the module divides q·k by sqrt(head_dim): scaling the q rows by sqrt(new/old) keeps the
        # logits, so removing dead per-head positions preserves the function
        ctx.keep_scale(grid[0], [(f"{name}.in_proj_weight", 0, np.arange(E))]
                       + ([(f"{name}.in_proj_bias", 0, np.arange(E))] if b_in is not None else []))
    else:
        ctx.atoms.tie_along(grid.T, (0,), f"attention heads of {ctx.where()}")
        ctx.width_atoms(name, "num_heads", grid[:, 0])
    ctx.width_atoms(name, "embed_dim", stream)
    # batch and sequence dims pass from the query to the output
    batch_track = {d: a for d, a in q.track.items() if d != q.ndim - 1}
    attn = out[0] if isinstance(out, tuple) else out
    if isinstance(attn, TV):
        attn.track = clean_track({**batch_track, attn.ndim - 1: w_out.atoms(0)})
    return out


def _untracked_out(q, out):
    return out
