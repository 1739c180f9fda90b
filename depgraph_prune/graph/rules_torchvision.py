"""Coupling rules for functions torchvision wraps with ``torch.fx.wrap`` (they appear as single
calls in the trace): Swin's window attention, patch merging and relative position bias."""
from __future__ import annotations

import numpy as np

from .registry import function_rule
from .rules_tensor import _arg, passthrough
from .values import TV, clean_track

try:
    from torchvision.models import swin_transformer as _swin
    from torchvision.ops import stochastic_depth as _stochastic_depth
except Exception:  # pragma: no cover - torchvision is a dependency; keep the core importable
    _swin = None
    _stochastic_depth = None

if _stochastic_depth is not None:
    function_rule(_stochastic_depth)(passthrough)

if _swin is not None:

    @function_rule(_swin.shifted_window_attention)
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
        ctx.atoms.tie_along(stream.reshape(heads, c // heads), (0,), f"heads of {ctx.where()}")
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

    @function_rule(_swin._get_relative_position_bias)
    def _rel_bias(ctx, node, args, kwargs, out):
        table, index = args[0], args[1]
        ctx.freeze_dims(table, [0], f"relative positions of {ctx.where()}")
        ctx.freeze(index, f"index of {ctx.where()}")
        out.track = clean_track({1: table.atoms(1)}) if table.tracked(1) else {}
        return out
