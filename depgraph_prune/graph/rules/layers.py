"""Coupling rules for layers: convolutions, linear, normalization, PReLU, embeddings, pooling,
and their functional forms (``F.conv2d(x, self.weight)`` on a parameter read in ``forward``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..context import KERNEL_DIM
from ..registry import function_rule, module_rule
from .tensor_ops import _arg, passthrough
from ..values import TV, clean_track

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_TCONVS = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def _base(module, table):
    """The class in ``table`` that ``module`` is (subclasses inheriting its forward included)."""
    return next(b for b in type(module).__mro__ if b in table)


def conv_core(ctx, x: TV, w: TV, b: TV | None, groups: int, n_spatial: int, out: TV, transposed=False):
    cdim = 1 if x.ndim == n_spatial + 2 else 0
    ctx.freeze_dims(x, [d for d in range(x.ndim) if d != cdim], f"non-channel dim entering {ctx.where()}")
    ctx.freeze_dims(w, range(2, w.ndim), f"{KERNEL_DIM}{ctx.where()}")
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    if groups == 1:
        ctx.union(x.atoms(cdim), w.atoms(in_dim), "convolution input")
        out_atoms = w.atoms(out_dim)
    elif transposed:
        ctx.freeze([x, w], f"grouped transposed convolution {ctx.where()} has no rule")
        out_atoms = w.atoms(out_dim)
        out_atoms = np.full(out.shape[cdim], -1, dtype=np.int64)
    else:
        # Group-wise structure: a group of input channels feeds only its group of outputs,
        # so whole groups go together (a depthwise conv ties channel i in to channel i out).
        ctx.freeze_dims(w, [1], f"per-group input dim of {ctx.where()}")
        out_atoms = w.atoms(0)
        rows = np.concatenate([x.atoms(cdim).reshape(groups, -1), out_atoms.reshape(groups, -1)], axis=1)
        ctx.atoms.tie_along(rows.T, (0,), f"grouped convolution {ctx.where()}")
    if b is not None:
        ctx.union(b.atoms(0), out_atoms, "convolution bias")
    out.track = clean_track({cdim: out_atoms})
    return out


@module_rule(*_CONVS, *_TCONVS)
def _conv_module(ctx, node, module, args, kwargs, out):
    name = node.target
    base = _base(module, {**_CONVS, **_TCONVS})
    transposed = base in _TCONVS
    n_sp = (_TCONVS if transposed else _CONVS)[base]
    dims = (0, 1) if module.groups == 1 or transposed else (0,)
    w = ctx.param_tv(name, "weight", dims)
    b = ctx.param_tv(name, "bias", (0,))
    if getattr(module, "padding_mode", "zeros") != "zeros":
        pass  # padding modes act on spatial dims only
    return conv_core(ctx, args[0], w, b, module.groups, n_sp, out, transposed)


def _functional_conv(n_sp, transposed=False):
    def rule(ctx, node, args, kwargs, out):
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 6 if not transposed else 6, "groups", 1)
        if transposed:
            groups = _arg(args, kwargs, 6, "groups", 1)
        if not isinstance(groups, int):
            ctx.freeze([x, w, b], f"computed groups in {ctx.where()}")
            return out
        return conv_core(ctx, x, w, b if isinstance(b, TV) else None, groups, n_sp, out, transposed)
    return rule


for _f, _n in ((F.conv1d, 1), (F.conv2d, 2), (F.conv3d, 3)):
    function_rule(_f)(_functional_conv(_n))
for _f, _n in ((F.conv_transpose1d, 1), (F.conv_transpose2d, 2), (F.conv_transpose3d, 3)):
    function_rule(_f)(_functional_conv(_n, transposed=True))


def linear_core(ctx, x: TV, w: TV, b: TV | None, out: TV):
    ctx.union(x.atoms(-1), w.atoms(1), "linear input")
    if b is not None:
        ctx.union(b.atoms(0), w.atoms(0), "linear bias")
    track = {d: a for d, a in x.track.items() if d != x.ndim - 1}
    track[out.ndim - 1] = w.atoms(0)
    out.track = clean_track(track)
    return out


@module_rule(nn.Linear)
def _linear_module(ctx, node, module, args, kwargs, out):
    w = ctx.param_tv(node.target, "weight", (0, 1))
    b = ctx.param_tv(node.target, "bias", (0,))
    return linear_core(ctx, args[0], w, b, out)


@function_rule(F.linear)
def _linear_f(ctx, node, args, kwargs, out):
    w, b = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    ctx.freeze_dims(w, range(2, w.ndim), f"weight of {ctx.where()}")
    return linear_core(ctx, args[0], w, b if isinstance(b, TV) else None, out)


def channel_affine(ctx, x: TV, tensors, out: TV, cdim=1):
    """Per-channel parameters (norm scale/shift, running stats) follow the channel dim."""
    cdim = cdim if x.ndim > 1 else 0
    for t in tensors:
        if isinstance(t, TV):
            ctx.union(x.atoms(cdim), t.atoms(0), "per-channel parameter")
    out.track = dict(x.track)
    return out


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d)


@module_rule(*_NORMS)
def _norm_module(ctx, node, module, args, kwargs, out):
    name = node.target
    x = args[0]
    cdim = 1 if x.ndim > 1 else 0
    if isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and x.ndim == module._get_no_batch_dim() if hasattr(module, "_get_no_batch_dim") else False:
        cdim = 0
    ts = [ctx.param_tv(name, p, (0,)) for p in ("weight", "bias", "running_mean", "running_var")]
    ctx.width_atoms(name, "num_features", x.atoms(cdim))
    return channel_affine(ctx, x, ts, out, cdim)


@function_rule(F.batch_norm, F.instance_norm)
def _norm_f(ctx, node, args, kwargs, out):
    names = ("running_mean", "running_var", "weight", "bias")
    if node.target is F.instance_norm:
        names = ("running_mean", "running_var", "weight", "bias")
    ts = [_arg(args, kwargs, i + 1, n) for i, n in enumerate(names)]
    return channel_affine(ctx, args[0], ts, out)


@module_rule(nn.LayerNorm)
def _layernorm_module(ctx, node, module, args, kwargs, out):
    name = node.target
    k = len(module.normalized_shape)
    w = ctx.param_tv(name, "weight", tuple(range(k)))
    b = ctx.param_tv(name, "bias", tuple(range(k)))
    x = args[0]
    for i in range(k):
        ctx.width_atoms(name, f"normalized_shape[{i}]", x.atoms(x.ndim - k + i))
    return layernorm_core(ctx, x, k, w, b, out)


def layernorm_core(ctx, x, k, w, b, out):
    for i in range(k):
        d = x.ndim - k + i
        for t in (w, b):
            if isinstance(t, TV):
                ctx.union(x.atoms(d), t.atoms(i), "layer norm parameter")
        if x.tracked(d):
            ctx.normalizes(x.track[d], affine_norm=True)
    out.track = dict(x.track)
    return out


@function_rule(F.layer_norm)
def _layernorm_f(ctx, node, args, kwargs, out):
    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    k = len(shape)
    # The shape is a constant in the trace; it may change only if the surgeon can update the
    # attribute it came from: the normalized_shape of the LayerNorm that owns the weight.
    owner = _owner(ctx, w)
    # any owner whose `normalized_shape` attribute is what forward passed (nn.LayerNorm, its
    # subclasses, or a third-party LayerNorm class) can be updated by the surgeon
    if isinstance(getattr(owner, "normalized_shape", None), (tuple, list, torch.Size)) \
            and tuple(owner.normalized_shape) == tuple(shape):
        oname = w.origin.rsplit(".", 1)[0]
        for i in range(k):
            ctx.width_atoms(oname, f"normalized_shape[{i}]", x.atoms(x.ndim - k + i))
    else:
        ctx.freeze_dims(x, range(x.ndim - k, x.ndim), f"layer_norm with a constant normalized_shape at {ctx.where()}")
    return layernorm_core(ctx, x, k, w, b, out)


if hasattr(nn, "RMSNorm"):
    @module_rule(nn.RMSNorm)
    def _rmsnorm_module(ctx, node, module, args, kwargs, out):
        name = node.target
        k = len(module.normalized_shape)
        w = ctx.param_tv(name, "weight", tuple(range(k)))
        x = args[0]
        for i in range(k):
            ctx.width_atoms(name, f"normalized_shape[{i}]", x.atoms(x.ndim - k + i))
        return layernorm_core(ctx, x, k, w, None, out)

if hasattr(F, "rms_norm"):
    @function_rule(F.rms_norm)
    def _rmsnorm_f(ctx, node, args, kwargs, out):
        x = args[0]
        shape = _arg(args, kwargs, 1, "normalized_shape")
        w = _arg(args, kwargs, 2, "weight")
        k = len(shape)
        owner = _owner(ctx, w)
        if isinstance(getattr(owner, "normalized_shape", None), (tuple, list, torch.Size)) \
                and tuple(owner.normalized_shape) == tuple(shape):
            for i in range(k):
                ctx.width_atoms(w.origin.rsplit(".", 1)[0], f"normalized_shape[{i}]", x.atoms(x.ndim - k + i))
        else:
            ctx.freeze_dims(x, range(x.ndim - k, x.ndim), f"rms_norm with a constant normalized_shape at {ctx.where()}")
        return layernorm_core(ctx, x, k, w if isinstance(w, TV) else None, None, out)


def _owner(ctx, t):
    if isinstance(t, TV) and t.origin and "." in t.origin:
        return ctx.modules.get(t.origin.rsplit(".", 1)[0])
    if isinstance(t, TV) and t.origin:
        return ctx.model
    return None


def groupnorm_core(ctx, x, groups, w, b, out, can_drop_groups):
    ch = x.atoms(1)
    if groups > 1 and can_drop_groups:
        # whole groups go together: the other groups' statistics are untouched
        ctx.atoms.tie_along(ch.reshape(groups, -1).T, (0,), f"group norm groups at {ctx.where()}")
    elif groups > 1:
        # same positions in every group: the group count stays, channels stay divisible
        ctx.atoms.tie_along(ch.reshape(groups, -1), (0,), f"group norm at {ctx.where()}")
        ctx.normalizes(ch, affine_norm=True)
    else:
        ctx.normalizes(ch, affine_norm=True)
    return channel_affine(ctx, x, [w, b], out)


@module_rule(nn.GroupNorm)
def _groupnorm_module(ctx, node, module, args, kwargs, out):
    name = node.target
    w = ctx.param_tv(name, "weight", (0,))
    b = ctx.param_tv(name, "bias", (0,))
    ctx.width_atoms(name, "num_channels", args[0].atoms(1))
    return groupnorm_core(ctx, args[0], module.num_groups, w, b, out, can_drop_groups=True)


@function_rule(F.group_norm)
def _groupnorm_f(ctx, node, args, kwargs, out):
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    owner = _owner(ctx, w)
    g = _arg(args, kwargs, 1, "num_groups")
    owned = isinstance(owner, nn.GroupNorm) and owner.num_groups == g
    if owned:  # a GroupNorm subclass with its own forward: the surgeon updates its widths
        ctx.width_atoms(w.origin.rsplit(".", 1)[0], "num_channels", args[0].atoms(1))
    return groupnorm_core(ctx, args[0], g, w, b, out, can_drop_groups=owned)


@module_rule(nn.PReLU)
def _prelu_module(ctx, node, module, args, kwargs, out):
    x = args[0]
    if module.num_parameters == 1:
        return passthrough(ctx, node, (x,), {}, out)
    w = ctx.param_tv(node.target, "weight", (0,))
    return channel_affine(ctx, x, [w], out)


@function_rule(F.prelu)
def _prelu_f(ctx, node, args, kwargs, out):
    x, w = args[0], args[1]
    if isinstance(w, TV) and w.shape[0] > 1:
        return channel_affine(ctx, x, [w], out)
    return passthrough(ctx, node, (x,), {}, out)


@module_rule(nn.Embedding)
def _embedding_module(ctx, node, module, args, kwargs, out):
    w = ctx.param_tv(node.target, "weight", (1,))
    return _embedding_core(ctx, args[0], w, out)


@function_rule(F.embedding)
def _embedding_f(ctx, node, args, kwargs, out):
    w = args[1]
    ctx.freeze_dims(w, [0], f"embedding rows at {ctx.where()}")
    return _embedding_core(ctx, args[0], w, out)


def _embedding_core(ctx, idx, w, out):
    if isinstance(idx, TV):
        ctx.freeze(idx, f"indices of {ctx.where()}")
    out.track = clean_track({out.ndim - 1: w.atoms(1)})
    return out


# --- shape-preserving-on-channels ops: pooling, resampling, padding of spatial dims ---------
_SPATIAL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
                    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
                    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
                    nn.LPPool2d: 2, nn.Upsample: None, nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2,
                    nn.ZeroPad2d: 2, nn.ConstantPad1d: 1, nn.ConstantPad2d: 2, nn.ConstantPad3d: 3,
                    nn.ReflectionPad1d: 1, nn.ReflectionPad2d: 2, nn.ReplicationPad1d: 1,
                    nn.ReplicationPad2d: 2, nn.ReplicationPad3d: 3, nn.FractionalMaxPool2d: 2}


def spatial_core(ctx, x: TV, out, n_spatial=None):
    """Channels (and batch) pass through; the trailing spatial dims are rebuilt by the op."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    n_spatial = x.ndim - 2 if n_spatial is None else n_spatial
    first_spatial = x.ndim - n_spatial
    ctx.freeze_dims(x, range(first_spatial, x.ndim), f"spatial dim of {ctx.where()}")
    for o in outs:
        if isinstance(o, TV):
            o.track = {d: a for d, a in x.track.items() if d < first_spatial and o.shape[d] == x.shape[d]}
    return out


@module_rule(*_SPATIAL_MODULES)
def _spatial_module(ctx, node, module, args, kwargs, out):
    return spatial_core(ctx, args[0], out, _SPATIAL_MODULES[_base(module, _SPATIAL_MODULES)])


_SPATIAL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
                  F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
                  F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
                  F.lp_pool1d: 1, F.lp_pool2d: 2, F.interpolate: None, F.upsample: None,
                  F.upsample_nearest: None, F.upsample_bilinear: None, torch.max_pool2d: 2,
                  torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1, F.max_pool2d_with_indices: 2}


def _spatial_func(ctx, node, args, kwargs, out):
    return spatial_core(ctx, args[0], out, _SPATIAL_FUNCS[node.target])


function_rule(*_SPATIAL_FUNCS)(_spatial_func)


@function_rule(F.pad)
def _pad(ctx, node, args, kwargs, out):
    x = args[0]
    pad = list(_arg(args, kwargs, 1, "pad"))
    touched = {x.ndim - 1 - i // 2 for i, p in enumerate(pad) if p != 0}
    for d in touched:
        if x.tracked(d):
            ctx.atoms.freeze(x.track[d], f"padding of a prunable dim at {ctx.where()}")
    out.track = {d: a for d, a in x.track.items() if d not in touched}
    return out


@module_rule(nn.Flatten)
def _flatten_module(ctx, node, module, args, kwargs, out):
    from .tensor_ops import FREE, reshape
    return reshape(ctx, args[0], out, [FREE] * out.ndim)


@module_rule(nn.Unflatten)
def _unflatten_module(ctx, node, module, args, kwargs, out):
    from .tensor_ops import FREE, INFER, reshape
    x = args[0]
    dim = module.dim % x.ndim
    kinds = [FREE] * dim + [INFER if s == -1 else s for s in module.unflattened_size] + [FREE] * (x.ndim - dim - 1)
    return reshape(ctx, x, out, kinds)


@module_rule(nn.ChannelShuffle)
def _shuffle_module(ctx, node, module, args, kwargs, out):
    return channel_shuffle(ctx, args[0], module.groups, out)


@function_rule(F.channel_shuffle, torch.channel_shuffle, F.native_channel_shuffle)
def _shuffle_f(ctx, node, args, kwargs, out):
    return channel_shuffle(ctx, args[0], _arg(args, kwargs, 1, "groups"), out)


def channel_shuffle(ctx, x, groups, out):
    grid = x.atoms(1).reshape(groups, -1)
    rep = ctx.atoms.tie_along(grid, (0,), f"channel shuffle at {ctx.where()}")
    out.track = dict(x.track)
    out.track[1] = np.repeat(rep, groups)
    out.track = clean_track(out.track)
    return out


@module_rule(nn.PixelShuffle)
def _pixel_shuffle(ctx, node, module, args, kwargs, out):
    x = args[0]
    r2 = module.upscale_factor ** 2
    cdim = x.ndim - 3
    rep = ctx.atoms.tie_along(x.atoms(cdim).reshape(-1, r2).T, (0,), f"pixel shuffle at {ctx.where()}")
    out.track = clean_track({**{d: a for d, a in x.track.items() if d < cdim}, cdim: rep})
    return out


@module_rule(nn.Softmax, nn.LogSoftmax, nn.Softmax2d)
def _softmax_module(ctx, node, module, args, kwargs, out):
    x = args[0]
    dim = getattr(module, "dim", None)
    if dim is not None and x.tracked(dim):
        ctx.normalizes(x.track[dim % x.ndim])
    return passthrough(ctx, node, (x,), {}, out)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Hardtanh,
                nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Threshold, nn.RReLU, nn.Tanhshrink,
                nn.Softshrink, nn.Hardshrink, nn.GLU.__mro__[0] if False else nn.Identity)


@module_rule(*_ACTIVATIONS)
def _activation(ctx, node, module, args, kwargs, out):
    return passthrough(ctx, node, (args[0],), {}, out)


@module_rule(nn.PixelUnshuffle)
def _pixel_unshuffle(ctx, node, module, args, kwargs, out):
    return _unshuffle(ctx, args[0], module.downscale_factor, out)


@function_rule(F.pixel_unshuffle)
def _pixel_unshuffle_f(ctx, node, args, kwargs, out):
    return _unshuffle(ctx, args[0], _arg(args, kwargs, 1, "downscale_factor"), out)


def _unshuffle(ctx, x, r, out):
    """Channel c becomes channels c*r² .. c*r²+r²-1 (one per pixel of each r×r block)."""
    cdim = x.ndim - 3
    ctx.freeze_dims(x, [d for d in range(cdim + 1, x.ndim)], f"spatial dims of {ctx.where()}")
    out.track = clean_track({**{d: a for d, a in x.track.items() if d < cdim},
                             cdim: np.repeat(x.atoms(cdim), r * r)})
    return out
