"""Coupling rules for functions torchvision wraps with ``torch.fx.wrap`` (they appear as single
calls in the trace): Swin's window attention, patch merging and relative position bias."""
from __future__ import annotations

import numpy as np

from ..registry import function_rule
from .tensor_ops import _arg, passthrough
from ..values import TV, clean_track

try:
    from torchvision.models import swin_transformer as _swin
    from torchvision.models.video import mvit as _mvit
    from torchvision.models.video import swin_transformer as _swin3d
    from torchvision.ops import stochastic_depth as _stochastic_depth
except Exception:  # pragma: no cover - torchvision is a dependency; keep the core importable
    _swin = _swin3d = _mvit = None
    _stochastic_depth = None

if _stochastic_depth is not None:
    function_rule(_stochastic_depth)(passthrough)

if _swin is not None:

    @function_rule(_swin.shifted_window_attention, _swin3d.shifted_window_attention_3d)
    def _window_attention(ctx, node, args, kwargs, out):
        """Inner q/k/v width equals the input width C (the function reshapes with C // num_heads)
        and ``num_heads`` is a constant, so the per-head dim is pruned: position j of every head
        goes together with stream channel j of every head-sized block."""
        names = ["input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
                 "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training"]
        a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
        x, wq, wp, heads = a["input"], a["qkv_weight"], a["proj_weight"], a["num_heads"]
        ctx.freeze_dims(x, range(x.ndim - 1), f"window dims of {ctx.where()}")
        for extra in ("relative_position_bias", "logit_scale"):
            if isinstance(a[extra], TV):
                ctx.freeze(a[extra], f"per-head {extra} of {ctx.where()}: the number of heads is kept")
        c = x.shape[-1]
        stream = x.atoms(-1)
        ctx.union(wq.atoms(1), stream, "window attention input")
        rows = wq.atoms(0).reshape(3, c)
        if isinstance(a["qkv_bias"], TV):
            ctx.union(a["qkv_bias"].atoms(0).reshape(3, c), rows, "window attention bias")
        for inner in (rows[0], rows[1], rows[2], wp.atoms(1)):
            ctx.union(inner, stream, "window attention width (inner width equals C)")
        rep = ctx.atoms.tie_along(stream.reshape(heads, c // heads), (0,), f"heads of {ctx.where()}")
        if not isinstance(a["logit_scale"], TV) and wq.origin:
            # v1 scales q by (C // num_heads) ** -0.5 of the new width: scale the q rows back
            qb = a["qkv_bias"]
            ctx.keep_scale(rep, [(wq.origin, 0, np.arange(c))]
                           + ([(qb.origin, 0, np.arange(c))] if isinstance(qb, TV) and qb.origin else []))
        if isinstance(a["proj_bias"], TV):
            ctx.union(a["proj_bias"].atoms(0), wp.atoms(0), "window attention output bias")
        out.track = clean_track({out.ndim - 1: wp.atoms(0)})
        return out

    @function_rule(_swin._patch_merging_pad)
    def _patch_merging(ctx, node, args, kwargs, out):
        x = args[0]
        ctx.freeze_dims(x, range(x.ndim - 1), f"spatial dims of {ctx.where()}")
        out.track = clean_track({out.ndim - 1: np.tile(x.atoms(-1), 4)})  # four pixels side by side
        return out

    @function_rule(_swin._get_relative_position_bias, _swin3d._get_relative_position_bias)
    def _rel_bias(ctx, node, args, kwargs, out):
        table, index = args[0], args[1]
        ctx.freeze_dims(table, [0], f"relative positions of {ctx.where()}")
        ctx.freeze(index, f"index of {ctx.where()}")
        out.track = clean_track({1: table.atoms(1)}) if table.tracked(1) else {}
        return out


if _mvit is not None:
    from .tensor_ops import FREE, reshape

    @function_rule(_mvit._unsqueeze)
    def _mvit_unsqueeze(ctx, node, args, kwargs, out):
        x = args[0]
        y = reshape(ctx, x, out[0], [FREE] * out[0].ndim) if isinstance(out, tuple) else out
        return (y, x.ndim)

    @function_rule(_mvit._squeeze)
    def _mvit_squeeze(ctx, node, args, kwargs, out):
        return reshape(ctx, args[0], out, [FREE] * out.ndim)

    @function_rule(_mvit._add_rel_pos)
    def _mvit_rel_pos(ctx, node, args, kwargs, out):
        """Decomposed relative positions: tables (positions, head_dim) are read per query channel."""
        attn, q = args[0], args[1]
        for table in args[4:7]:
            if isinstance(table, TV):
                ctx.freeze_dims(table, [0], f"relative positions of {ctx.where()}")
                ctx.union(table.atoms(1), q.atoms(-1), "relative position table")
        ctx.freeze_dims(q, range(q.ndim - 1), f"query positions of {ctx.where()}")
        ctx.freeze_dims(attn, [attn.ndim - 2, attn.ndim - 1], f"attention positions of {ctx.where()}")
        out.track = {d: a for d, a in attn.track.items() if d < attn.ndim - 2}
        return out

    @function_rule(_mvit._add_shortcut)
    def _mvit_shortcut(ctx, node, args, kwargs, out):
        from .tensor_ops import broadcast_track
        x, shortcut = args[0], args[1]
        out.track = broadcast_track(ctx, [x, shortcut], out.shape)  # x += shortcut, in place
        return out
