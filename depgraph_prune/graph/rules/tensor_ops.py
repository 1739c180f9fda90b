"""Coupling rules for tensor operations: elementwise math, broadcasting, reshapes, permutes,
concatenation, splitting, indexing, reductions, matmul and size arithmetic."""
from __future__ import annotations

import builtins
import math
import operator
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from ..context import HEAD_WORDS
from ..registry import function_rule, method_rule
from ..values import TV, Opaque, Sym, clean_track


def tensors(*values):
    out = []
    for v in values:
        if isinstance(v, TV):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(tensors(*v))
        elif isinstance(v, dict):
            out.extend(tensors(*v.values()))
    return out


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


# --- broadcasting ---------------------------------------------------------------------------
def broadcast_track(ctx, inputs, out_shape) -> dict[int, np.ndarray]:
    """Right-aligned broadcasting: positions that meet in the output are tied together."""
    nd = len(out_shape)
    track = {}
    for d in range(nd):
        entries = []
        for tv in inputs:
            k = d - (nd - tv.ndim)
            if k < 0:
                continue
            if tv.shape[k] == 1 and out_shape[d] != 1:
                if k in tv.track:
                    ctx.atoms.freeze(tv.track[k], f"a 1-wide prunable dim is broadcast at {ctx.where()}")
                continue
            entries.append(tv.atoms(k))
        tracked = [e for e in entries if (e >= 0).any()]
        if not tracked:
            continue
        base = tracked[0]
        for e in entries:
            if e is not base:
                ctx.union(base, e, "broadcast")
        if len(tracked) == len(entries):
            track[d] = base  # otherwise a fixed operand pins this dim: it stays untracked
    return track


def widths_as_values(ctx, values) -> None:
    """A width read as a number and used as data (``y * y.shape[1] ** -0.5``, ``clamp(max=n)``)
    changes the function when it shrinks: pin it."""
    for v in values:
        if isinstance(v, (Sym, Opaque)):
            ctx.atoms.freeze(v.atoms, f"a width is used as a value (not a shape) at {ctx.where()}")
        elif isinstance(v, (list, tuple)):
            widths_as_values(ctx, v)


def elementwise(ctx, node, args, kwargs, out):
    ins = tensors(*args, *kwargs.values())
    if not ins:
        return scalar_math(ctx, node, args, kwargs, out)
    widths_as_values(ctx, list(args) + list(kwargs.values()))
    if not isinstance(out, TV):
        ctx.freeze(ins, f"unexpected output of {ctx.where()}")
        return out
    out.track = broadcast_track(ctx, ins, out.shape)
    return out


def passthrough(ctx, node, args, kwargs, out):
    """Unary ops whose output has the input's shape and channel layout."""
    x = args[0] if args else next(iter(kwargs.values()))
    others = tensors(*args[1:], *kwargs.values())
    if not isinstance(x, TV):
        return scalar_math(ctx, node, args, kwargs, out)
    widths_as_values(ctx, list(args[1:]) + list(kwargs.values()))
    if others or not isinstance(out, TV) or out.shape != x.shape:
        return elementwise(ctx, node, args, kwargs, out)
    out.track = dict(x.track)
    return out


_ELEMENTWISE_FUNCS = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
                      operator.pow, operator.mod, operator.iadd, operator.isub, operator.imul,
                      operator.itruediv, torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply,
                      torch.div, torch.divide, torch.true_divide, torch.maximum, torch.minimum, torch.where,
                      torch.lerp, torch.addcmul, torch.addcdiv, torch.pow, torch.fmod, torch.remainder,
                      torch.masked_fill, torch.eq, torch.ne, torch.lt, torch.gt, torch.le, torch.ge,
                      operator.eq, operator.ne, operator.lt, operator.gt, operator.le, operator.ge,
                      operator.and_, operator.or_, torch.logical_and, torch.logical_or, torch.max, torch.min]
_ELEMENTWISE_METHODS = ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "pow",
                        "pow_", "maximum", "minimum", "masked_fill", "masked_fill_", "where", "lerp",
                        "addcmul", "addcdiv", "eq", "ne", "lt", "gt", "le", "ge", "fmod", "remainder",
                        "logical_and", "logical_or", "__and__", "__or__", "copy_"]
_UNARY_FUNCS = [torch.relu, torch.relu_, F.relu, F.relu6, F.relu_, F.gelu, F.silu, F.mish, F.hardswish,
                F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu, F.selu,
                F.celu, F.softplus, F.softsign, F.hardtanh, F.logsigmoid, F.dropout, F.dropout1d,
                F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.exp, torch.log,
                torch.sqrt, torch.rsqrt, torch.abs, torch.neg, operator.neg, operator.pos, torch.clamp,
                torch.clip, torch.erf, torch.square, torch.sign, torch.sin, torch.cos, torch.reciprocal,
                F.normalize, torch.zeros_like, torch.ones_like, torch.empty_like, torch.rand_like,
                torch.randn_like, torch.full_like, torch.clone, torch.detach, torch.nan_to_num,
                torch.floor, torch.ceil, torch.round, torch.trunc, torch.frac, torch.exp2, torch.log2,
                torch.log1p, torch.expm1, torch.sinh, torch.cosh, torch.atan, torch.bitwise_not,
                torch.logical_not, torch.isnan, torch.isfinite, operator.invert, F.threshold,
                F.rrelu, F.tanhshrink, F.softshrink, F.hardshrink, F.silu]
_UNARY_METHODS = ["relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "sqrt",
                  "rsqrt", "abs", "neg", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "erf",
                  "square", "sign", "contiguous", "clone", "detach", "detach_",
                  "float", "double", "half", "bfloat16", "to", "type", "type_as", "cpu", "cuda",
                  "requires_grad_", "zero_", "fill_", "normal_", "uniform_", "sin", "cos", "reciprocal",
                  "floor", "ceil", "round", "trunc", "exp2", "log2", "log1p", "expm1", "bool", "int",
                  "long", "sigmoid", "nan_to_num", "logical_not", "__invert__", "new_zeros_like",
                  "hardswish", "gelu", "silu", "pin_memory", "bernoulli", "bernoulli_", "exponential_",
                  "random_"]


@function_rule(*_ELEMENTWISE_FUNCS)
def _elementwise_func(ctx, node, args, kwargs, out):
    if node.target in (torch.max, torch.min) and (len(args) > 1 and not isinstance(args[1], TV)
                                                 or "dim" in kwargs or len(args) == 1):
        return reduction(ctx, node, args, kwargs, out)
    return elementwise(ctx, node, args, kwargs, out)


method_rule(*_ELEMENTWISE_METHODS)(elementwise)
function_rule(*_UNARY_FUNCS)(passthrough)
method_rule(*_UNARY_METHODS)(passthrough)


@method_rule("type_as", "to", "expand_as", "view_as", "reshape_as")
def _as_other(ctx, node, args, kwargs, out):
    x = args[0]
    other = args[1] if len(args) > 1 and isinstance(args[1], TV) else None
    if node.target in ("type_as", "to") or other is None:
        if node.target == "to" and other is not None:  # .to(other) only changes dtype/device
            return passthrough(ctx, node, (x,), {}, out)
        return passthrough(ctx, node, (x,), {}, out)
    if node.target == "expand_as":
        out.track = broadcast_track(ctx, [x, other], out.shape)
        return out
    sizes = [Sym(other.track[d]) if d in other.track else other.shape[d] for d in range(other.ndim)]
    return reshape(ctx, x, out, sizes)


# --- integer arithmetic on sizes ----------------------------------------------------------
def scalar_math(ctx, node, args, kwargs, out):
    vals = list(args) + list(kwargs.values())
    if not any(isinstance(v, (Sym, Opaque)) for v in vals):
        try:
            return node.target(*args, **kwargs) if callable(node.target) else None
        except Exception:
            return None
    a = args[0] if args else None
    b = args[1] if len(args) > 1 else None
    t = node.target
    if isinstance(a, Sym) and isinstance(b, int) and not isinstance(b, bool):
        if t in (operator.mul,):
            return a.scaled(b)
        if t in (operator.floordiv, operator.truediv) and b != 0:
            return a.scaled(Fraction(1, b))
    if isinstance(b, Sym) and isinstance(a, int) and t is operator.mul:
        return b.scaled(a)
    atoms = [v.atoms for v in vals if isinstance(v, (Sym, Opaque))]
    return Opaque(np.concatenate([np.ravel(x) for x in atoms]))


@function_rule(builtins.getattr)
def _getattr(ctx, node, args, kwargs, out):
    x, name = args[0], args[1]
    if isinstance(x, IndexedResult):
        if name == "values":
            return x[0]
        _indices_used(ctx, x)
        return x[1] if name == "indices" else None
    if isinstance(x, TV):
        if name == "shape":
            return tuple(Sym(x.track[d]) if d in x.track else x.shape[d] for d in range(x.ndim))
        if name == "ndim":
            return x.ndim
        if name in ("T", "mT"):
            perm = list(range(x.ndim))
            if name == "T":
                perm = perm[::-1]
            else:
                perm[-1], perm[-2] = perm[-2], perm[-1]
            return permute(ctx, x, out, perm)
        if name in ("dtype", "device", "is_cuda", "requires_grad", "layout"):
            return None
        ctx.freeze(x, f"tensor attribute `{name}` read at {ctx.where()}")
        return out
    return None


@method_rule("size")
def _size(ctx, node, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    shape = _getattr(ctx, node, (x, "shape"), {}, out)
    return shape if dim is None else shape[dim]


@method_rule("dim", "ndimension")
def _dim(ctx, node, args, kwargs, out):
    return args[0].ndim


@method_rule("numel")
def _numel(ctx, node, args, kwargs, out):
    x = args[0]
    return Opaque(x.all_atoms()) if x.track else math.prod(x.shape)


@function_rule(operator.getitem)
def _getitem(ctx, node, args, kwargs, out):
    x, idx = args
    if isinstance(x, TV):
        return tensor_index(ctx, x, idx, out)
    if isinstance(x, IndexedResult) and not (isinstance(idx, int) and idx == 0):
        _indices_used(ctx, x)
    if isinstance(x, (tuple, list)):
        if isinstance(idx, slice):
            return x[idx]
        if isinstance(idx, int):
            return x[idx]
    if isinstance(x, dict):
        return x.get(idx)
    ctx.freeze([x, idx], f"indexing {ctx.where()}")
    return out


# --- permutes -----------------------------------------------------------------------------
def permute(ctx, x: TV, out, perm):
    perm = [p % x.ndim for p in perm]
    out.track = {new: x.track[old] for new, old in enumerate(perm) if old in x.track}
    return out


@function_rule(torch.permute)
@method_rule("permute")
def _permute(ctx, node, args, kwargs, out):
    x = args[0]
    dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else \
        _arg(args, kwargs, 1, "dims")
    return permute(ctx, x, out, list(dims))


@function_rule(torch.transpose, torch.swapaxes, torch.swapdims)
@method_rule("transpose", "swapaxes", "swapdims", "transpose_")
def _transpose(ctx, node, args, kwargs, out):
    x = args[0]
    a = _arg(args, kwargs, 1, "dim0")
    b = _arg(args, kwargs, 2, "dim1")
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return permute(ctx, x, out, perm)


@function_rule(torch.t)
@method_rule("t")
def _t(ctx, node, args, kwargs, out):
    x = args[0]
    return permute(ctx, x, out, list(range(x.ndim))[::-1])


@function_rule(torch.movedim, torch.moveaxis)
@method_rule("movedim", "moveaxis")
def _movedim(ctx, node, args, kwargs, out):
    x = args[0]
    src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [d % x.ndim for d in src]
    dst = [d % x.ndim for d in dst]
    perm = [d for d in range(x.ndim) if d not in src]
    for s_, d_ in sorted(zip(dst, src)):
        perm.insert(s_, d_)
    return permute(ctx, x, out, perm)


# --- reshapes -----------------------------------------------------------------------------
FREE = "free"    # the size is computed by the op itself (flatten, squeeze)
INFER = "infer"  # -1


def _blocks(ins, outs):
    """Pair minimal runs of input and output dims with equal products (size-1 dims skipped)."""
    I = [d for d, s in enumerate(ins) if s != 1]
    O = [d for d, s in enumerate(outs) if s != 1]
    blocks, a, b = [], 0, 0
    while a < len(I) and b < len(O):
        bi, bo = [I[a]], [O[b]]
        pi, po = ins[I[a]], outs[O[b]]
        a, b = a + 1, b + 1
        while pi != po:
            if pi < po:
                bi.append(I[a]); pi *= ins[I[a]]; a += 1
            else:
                bo.append(O[b]); po *= outs[O[b]]; b += 1
        blocks.append((bi, bo))
    if a != len(I) or b != len(O):
        raise ValueError("shapes do not pair")
    return blocks


def reshape(ctx, x: TV, out: TV, sizes) -> TV:
    """Map tracked dims through a reshape.

    ``sizes[j]`` says how output dim ``j``'s size is given: an int constant, INFER (-1),
    FREE, a ``Sym`` (read from a tracked dim) or an ``Opaque``. Within a block of dims whose
    products match, one tracked input dim spreads over the block's output dims; positions are
    tied along every output dim except one ``changing`` dim, whose size must not be a constant.
    """
    sizes = list(sizes)
    out.track = {}
    for d in list(x.track):
        if x.shape[d] == 1:
            ctx.atoms.freeze(x.track[d], f"1-wide dim reshaped at {ctx.where()}")
    try:
        blocks = _blocks(x.shape, out.shape)
    except (ValueError, IndexError):
        ctx.freeze([x, sizes], f"reshape {tuple(x.shape)} -> {tuple(out.shape)} not understood at {ctx.where()}")
        return out
    used_syms = set()
    for bi, bo in blocks:
        tracked = [d for d in bi if d in x.track]
        if not tracked:
            continue
        if len(tracked) > 1:
            for d in tracked:
                ctx.atoms.freeze(x.track[d], f"reshape merges two prunable dims at {ctx.where()}")
            continue
        t = tracked[0]
        # atoms of the block's input positions, constant along untracked (fixed) dims
        shape_i = [x.shape[d] for d in bi]
        view = [1] * len(bi)
        view[bi.index(t)] = x.shape[t]
        field = np.broadcast_to(x.track[t].reshape(view), shape_i).reshape([out.shape[d] for d in bo])
        kinds = {j: sizes[j] if j < len(sizes) else FREE for j in bo}
        cands = [j for j in bo if isinstance(kinds[j], Sym)]
        if not cands:
            cands = [j for j in bo if kinds[j] in (INFER, FREE)]
        width_attr = None
        if not cands:
            # a constant read from a module attribute (ViT's `self.hidden_dim`, a `self.head_dim`):
            # the surgeon can update that attribute, so that one dim may change after all
            consts = [j for j in bo if isinstance(kinds[j], int) and not isinstance(kinds[j], bool)]
            found = {j: f for j in consts if (f := ctx.attribute_for_constant(kinds[j]))}
            if not found:  # `view(B, N, self.num_heads, 6)`: whole heads, and num_heads follows
                found = {j: f for j in consts if (f := ctx.attribute_for_constant(kinds[j], HEAD_WORDS))}
            if len(found) == 1:
                (j0, width_attr), = found.items()
                cands = [j0]
        if len(cands) != 1:
            consts = [kinds[j] for j in bo if isinstance(kinds[j], int)]
            why = (f"reshape with constant size {consts[0] if len(consts) == 1 else tuple(consts)}"
                   if consts else "reshape whose changing dim is ambiguous")
            ctx.atoms.freeze(x.track[t], f"{why} at {ctx.where()}")
            continue
        j = cands[0]
        axis = bo.index(j)
        rep = ctx.atoms.tie_along(np.moveaxis(field, axis, -1), tuple(range(len(bo) - 1)),
                                  f"reshape splits a prunable dim at {ctx.where()}")
        out.track[j] = rep
        if width_attr is not None:
            ctx.width_atoms(width_attr[0], width_attr[1], rep)
        if isinstance(kinds[j], Sym):
            used_syms.add(j)
            s = kinds[j]
            c = _constraint(s, rep, ctx)
            # if the widths do not already follow each other, tie them (checked after union-find)
            c.tie = (s.scale == 1 and s.atoms.shape == rep.shape) or (
                s.scale.numerator == 1 and s.atoms.size == s.scale.denominator * rep.size)
            ctx.atoms.constraints.append(c)
        elif isinstance(kinds[j], Opaque):
            ctx.atoms.freeze(rep, f"reshape size computed in a way we cannot follow at {ctx.where()}")
    for j, k in enumerate(sizes):
        if isinstance(k, (Sym, Opaque)) and j not in used_syms:
            ctx.atoms.freeze(k.atoms, f"a prunable width is used as a fixed reshape size at {ctx.where()}")
    out.track = clean_track(out.track)
    return out


def _constraint(sym: Sym, rep, ctx):
    from ..atoms import Constraint
    # new size of the output dim (count of kept rep atoms) == scale * new size of the source dim
    return Constraint(a=np.asarray(sym.atoms).ravel(), b=np.asarray(rep).ravel(), scale=float(sym.scale),
                      reason=f"reshape size read from another tensor's width at {ctx.where()}")


def _shape_args(args, kwargs, start=1):
    rest = args[start:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = rest[0]
    elif not rest:
        rest = kwargs.get("shape", kwargs.get("size", ()))
    return [INFER if (isinstance(s, int) and s == -1) else s for s in rest]


@function_rule(torch.reshape)
@method_rule("view", "reshape")
def _view(ctx, node, args, kwargs, out):
    x = args[0]
    if len(args) == 2 and not isinstance(args[1], (tuple, list, int, Sym, Opaque)):
        return passthrough(ctx, node, (x,), {}, out)  # view(dtype)
    return reshape(ctx, x, out, _shape_args(args, kwargs))


@function_rule(torch.flatten)
@method_rule("flatten")
def _flatten(ctx, node, args, kwargs, out):
    return reshape(ctx, args[0], out, [FREE] * out.ndim)


@function_rule(torch.squeeze, torch.unsqueeze)
@method_rule("squeeze", "unsqueeze", "squeeze_", "unsqueeze_")
def _squeeze(ctx, node, args, kwargs, out):
    return reshape(ctx, args[0], out, [FREE] * out.ndim)


@function_rule(torch.unflatten)
@method_rule("unflatten")
def _unflatten(ctx, node, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim") % x.ndim
    sizes = list(_arg(args, kwargs, 2, "sizes"))
    kinds = [FREE] * dim + [INFER if s == -1 else s for s in sizes] + [FREE] * (x.ndim - dim - 1)
    return reshape(ctx, x, out, kinds)


@function_rule(torch.broadcast_to)
@method_rule("expand")
def _expand(ctx, node, args, kwargs, out):
    x = args[0]
    sizes = _shape_args(args, kwargs)
    off = len(sizes) - x.ndim
    for k, d in enumerate(range(x.ndim)):
        s = sizes[off + k]
        if d in x.track and x.shape[d] != 1 and not (s == INFER or isinstance(s, Sym)):
            ctx.atoms.freeze(x.track[d], f"expand to a constant size at {ctx.where()}")
        if isinstance(s, Sym) and d in x.track:
            if x.shape[d] == 1:  # one position broadcast to a width: it cannot follow that width
                ctx.atoms.freeze(x.track[d], f"a 1-wide prunable dim is expanded at {ctx.where()}")
            else:
                ctx.union(x.track[d], s.atoms, "expand")
    out.track = {off + d: a for d, a in x.track.items() if x.shape[d] != 1}
    for j, s in enumerate(sizes):
        d = j - off
        if isinstance(s, Sym) and (d < 0 or x.shape[d] == 1):
            out.track[j] = s.atoms  # expanded to another tensor's width: positions follow it
        elif isinstance(s, Opaque):
            ctx.atoms.freeze(s.atoms, f"expand to a computed size at {ctx.where()}")
    return out


# --- concatenation and splitting ----------------------------------------------------------
@function_rule(torch.cat, torch.concat, torch.concatenate)
def _cat(ctx, node, args, kwargs, out):
    xs = list(_arg(args, kwargs, 0, "tensors"))
    dim = _arg(args, kwargs, 1, "dim", 0)
    xs = [x for x in xs if isinstance(x, TV)]
    d = dim % out.ndim
    # all dims but the concatenated one are elementwise-aligned
    others = [TV(x.shape[:d] + (1,) + x.shape[d + 1:], {k: a for k, a in x.track.items() if k != d}) for x in xs]
    track = broadcast_track(ctx, others, out.shape[:d] + (1,) + out.shape[d + 1:])
    parts = [x.atoms(d) for x in xs]
    cat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if (cat >= 0).any():
        track[d] = cat
    out.track = track
    return out


@function_rule(torch.stack)
def _stack(ctx, node, args, kwargs, out):
    xs = [x for x in _arg(args, kwargs, 0, "tensors") if isinstance(x, TV)]
    dim = _arg(args, kwargs, 1, "dim", 0) % out.ndim
    expanded = [TV(x.shape[:dim] + (1,) + x.shape[dim:], {(k if k < dim else k + 1): a for k, a in x.track.items()})
                for x in xs]
    out.track = broadcast_track(ctx, expanded, out.shape[:dim] + (1,) + out.shape[dim + 1:])
    return out


def _split_parts(ctx, x: TV, outs, dim, equal: bool, width_attr=None):
    d = dim % x.ndim
    if d not in x.track:
        for o in outs:
            o.track = {k: a for k, a in x.track.items() if k != d}
        return list(outs)
    atoms = x.track[d]
    sizes = [o.shape[d] for o in outs]
    if equal and len(set(sizes)) == 1:
        # chunk(k): every part keeps the same width, so position j of every part goes together
        grid = atoms.reshape(len(outs), sizes[0])
        rep = ctx.atoms.tie_along(grid, (0,), f"equal chunks at {ctx.where()}")
        if width_attr is not None:  # split(x, self.width): the surgeon updates the attribute
            ctx.width_atoms(width_attr[0], width_attr[1], rep)
        for o in outs:
            o.track = {**{k: a for k, a in x.track.items() if k != d}, d: rep}
            o.track = clean_track(o.track)
        return list(outs)
    ctx.atoms.freeze(atoms, f"split into constant sizes {tuple(sizes)} at {ctx.where()}")
    for o in outs:
        o.track = {k: a for k, a in x.track.items() if k != d}
    return list(outs)


@function_rule(torch.chunk)
@method_rule("chunk")
def _chunk(ctx, node, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 2, "dim", 0)
    return tuple(_split_parts(ctx, x, out, dim, equal=True))


@function_rule(torch.split, torch.tensor_split)
@method_rule("split", "tensor_split")
def _split(ctx, node, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 2, "dim", 0)
    size = _arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    attr = None
    if isinstance(size, int) and not isinstance(size, bool) and node.target in ("split", torch.split) \
            and x.shape[dim % x.ndim] % size == 0:
        attr = ctx.attribute_for_constant(size)  # equal parts sized by a width attribute
    return tuple(_split_parts(ctx, x, out, dim, equal=attr is not None, width_attr=attr))


@function_rule(torch.unbind)
@method_rule("unbind")
def _unbind(ctx, node, args, kwargs, out):
    x = args[0]
    d = _arg(args, kwargs, 1, "dim", 0) % x.ndim
    ctx.freeze_dims(x, [d], f"unbind over a prunable dim at {ctx.where()}")
    for o in out:
        o.track = {(k if k < d else k - 1): a for k, a in x.track.items() if k != d}
    return out


def tensor_index(ctx, x: TV, idx, out):
    """Basic indexing: ints, slices, None and Ellipsis. Anything else freezes the dims it reads."""
    if isinstance(idx, TV) and isinstance(out, TV):
        # table[index]: dim 0 is gathered (its positions are data), the other dims pass through
        ctx.freeze_dims(x, [0], f"gather along a prunable dim at {ctx.where()}")
        ctx.freeze(idx, f"index tensor at {ctx.where()}")
        shift = idx.ndim - 1
        out.track = {d + shift: a for d, a in x.track.items() if d > 0}
        return out
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (TV, list)) for i in idx) or not isinstance(out, TV):
        ctx.freeze([x, idx], f"advanced indexing at {ctx.where()}")
        return out
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (x.ndim - sum(1 for i in expanded if i is not None)))
    track, d_in, d_out = {}, 0, 0
    for i in expanded:
        if i is None:
            d_out += 1
            continue
        atoms = x.track.get(d_in)
        size = x.shape[d_in]
        if isinstance(i, (Sym, Opaque)):
            ctx.freeze([x, i], f"index computed from a width at {ctx.where()}")
            d_in += 1
            continue
        if isinstance(i, int):
            if atoms is not None:
                k = i % size
                # position k keeps its meaning only if nothing before it (or after it, for
                # negative indices) is removed
                ctx.atoms.freeze(atoms[:k + 1] if i >= 0 else atoms[k:], f"index [{i}] on a prunable dim at {ctx.where()}")
            d_in += 1
            continue
        if isinstance(i, slice):
            if atoms is not None:
                track[d_out] = _slice_atoms(ctx, atoms, i, out.shape[d_out])
            d_in += 1
            d_out += 1
            continue
        ctx.freeze([x], f"indexing with {type(i).__name__} at {ctx.where()}")
        return out
    out.track = clean_track(track)
    return out


def _sym_value(v):
    """The traced value of a slice bound: ints and None as they are, a Sym as its width x scale."""
    if isinstance(v, Sym):
        return math.floor(np.asarray(v.atoms).size * v.scale)
    return v


def _slice_atoms(ctx, atoms, s: slice, out_size: int | None = None):
    start, stop, step = s.start, s.stop, s.step
    if any(isinstance(v, (Sym, Opaque)) for v in (start, stop, step)):
        # the bound follows another tensor's size (``self.position_ids[:, :x.shape[1]]``,
        # ``x[..., :x.shape[-1] // 2]``): positions it leaves out in the trace may be read at another
        # size, so the whole dim is fixed, and the result has the traced length
        why = f"slice bounds computed from a width at {ctx.where()}"
        ctx.freeze([start, stop, step], why)
        ctx.atoms.freeze(atoms, why)  # (ctx.freeze skips bare atom arrays)
        if all(isinstance(v, (int, Sym)) or v is None for v in (start, stop, step)):
            return atoms[slice(*(_sym_value(v) for v in (start, stop, step)))]
        return atoms[:out_size] if out_size is not None else atoms[s.start if isinstance(s.start, int) else None:]
    size = len(atoms)
    if step not in (None, 1):
        ctx.atoms.freeze(atoms, f"strided slice on a prunable dim at {ctx.where()}")
        return atoms[s]
    if start is None and stop is None:
        return atoms
    start_n = 0 if start is None else start % size if start < 0 else min(start, size)
    stop_open = stop is None or (stop >= size)
    if start is not None and start < 0 or (stop is not None and stop < 0):
        ctx.atoms.freeze(atoms[start_n:], f"slice from the end at {ctx.where()}")
        return atoms[s]
    if stop_open:
        ctx.atoms.freeze(atoms[:start_n], f"slice [{start}:] at {ctx.where()}")
        return atoms[start_n:]
    table = _stored_tensor(ctx)
    if table is not None:
        # a parameter or buffer read up to a bound: `self.pos[:, :T]`, `self.mask[:, :, :T, :T]`,
        # `self.cos_cached[:T]` with T the traced sequence length. The positions past it are unread
        # only at the traced sizes; pruning them breaks (or silently changes) longer inputs.
        ctx.atoms.freeze(atoms, f"`{table}` read up to position {stop} at {ctx.where()} (a table sliced by an "
                                f"input's size: the rest is read at other sizes)")
        return atoms[s]
    ctx.atoms.freeze(atoms[:stop], f"slice [{start}:{stop}] with a constant end at {ctx.where()}")
    return atoms[s]


def _stored_tensor(ctx) -> str | None:
    """The name of the parameter / buffer the current indexing node reads directly, if any."""
    node = ctx.node
    src = node.args[0] if node is not None and node.args else None
    return src.target if getattr(src, "op", None) == "get_attr" else None


@function_rule(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, F.softmin)
@method_rule("softmax", "log_softmax")
def _softmax(ctx, node, args, kwargs, out):
    """Softmax over a prunable dim normalizes over it: removing a channel is not zeroing it."""
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if isinstance(x, TV) and isinstance(dim, int) and x.tracked(dim):
        ctx.normalizes(x.track[dim % x.ndim])
    return passthrough(ctx, node, (x,), {}, out)


class IndexedResult(tuple):
    """``(values, indices)`` of ``max``/``min``/``sort``/``topk``/``mode`` over a prunable dim:
    the values are a reduction, the indices count positions along that dim, so using them
    (``idx == e``, gathering with them) pins it."""

    def __new__(cls, items, atoms, where):
        obj = super().__new__(cls, items)
        obj.atoms, obj.where = atoms, where
        return obj


def _indices_used(ctx, res: IndexedResult):
    ctx.atoms.freeze(res.atoms, f"indices over a prunable dim are used as data at {res.where}")


# --- reductions ---------------------------------------------------------------------------
_REDUCE_FUNCS = [torch.var_mean, torch.std_mean, torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
                 torch.norm, torch.prod, torch.argmax, torch.argmin, torch.nansum, torch.nanmean]
_REDUCE_METHODS = ["mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod",
                   "argmax", "argmin", "nansum", "nanmean", "any", "all"]
_PRESERVING = {"sum", "nansum"}


@function_rule(*_REDUCE_FUNCS)
@method_rule(*_REDUCE_METHODS)
def reduction(ctx, node, args, kwargs, out):
    x = args[0]
    name = node.target if isinstance(node.target, str) else node.target.__name__
    dim = _arg(args, kwargs, 1, "dim")
    if name == "norm":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if isinstance(dim, TV) or (name in ("max", "min") and len(args) > 1 and isinstance(args[1], TV)):
        return elementwise(ctx, node, args, kwargs, out)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False)) if name != "norm" else bool(kwargs.get("keepdim", False))
    dims = list(range(x.ndim)) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    dims = {d % x.ndim for d in dims}
    if name in ("argmax", "argmin") and any(d in x.track for d in dims):
        # the result counts positions along the prunable dim (a router's chosen expert)
        for d in dims:
            if d in x.track:
                ctx.atoms.freeze(x.track[d], f"{name} over a prunable dim at {ctx.where()} (its result is a position)")
    if name not in _PRESERVING and any(d in x.track for d in dims):
        for d in dims:
            if d in x.track:
                ctx.normalizes(x.track[d])
    track = {}
    for d, a in x.track.items():
        if d in dims:
            continue
        nd = d if keepdim else d - sum(1 for r in dims if r < d)
        track[nd] = a
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, TV):
            o.track = dict(track)
    reduced = [x.track[d] for d in dims if d in x.track]
    if name in ("max", "min") and isinstance(out, (tuple, list)) and len(out) == 2 and reduced:  # (values, indices)
        outs[1].track = {}
        return IndexedResult(out, np.concatenate(reduced), ctx.where())
    return out


# --- matmul ---------------------------------------------------------------------------------
@function_rule(torch.matmul, operator.matmul, torch.bmm, torch.mm)
@method_rule("matmul", "bmm", "mm", "__matmul__")
def _matmul(ctx, node, args, kwargs, out):
    a, b = args[0], args[1]
    if not (isinstance(a, TV) and isinstance(b, TV)) or a.ndim < 2 or b.ndim < 2:
        ctx.freeze([a, b], f"matmul of vectors at {ctx.where()}")
        return out
    ctx.union(a.atoms(-1), b.atoms(-2), "matmul contraction")
    return _matmul_out(ctx, a, b, out)


def _matmul_out(ctx, a, b, out):
    nd = out.ndim
    batch_a = TV(a.shape[:-2], {d: t for d, t in a.track.items() if d < a.ndim - 2})
    batch_b = TV(b.shape[:-2], {d: t for d, t in b.track.items() if d < b.ndim - 2})
    track = broadcast_track(ctx, [batch_a, batch_b], out.shape[:-2])
    if a.tracked(-2):
        track[nd - 2] = a.track[a.ndim - 2]
    if b.tracked(-1):
        track[nd - 1] = b.track[b.ndim - 1]
    out.track = track
    return out


@function_rule(F.scaled_dot_product_attention)
def _sdpa(ctx, node, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    ctx.union(q.atoms(-1), k.atoms(-1), "attention q·k")
    ctx.union(k.atoms(-2), v.atoms(-2), "attention keys/values")
    scale = _arg(args, kwargs, 6, "scale")
    if scale is None:
        # the default scale 1/sqrt(E) follows the head width: pruning it would change the function
        ctx.freeze_dims(q, [-1], f"the default scale 1/sqrt(head width) of {ctx.where()} reads the "
                                 "head width (pass scale= to keep it constant)")
    else:
        widths_as_values(ctx, [scale])
    kv = TV(v.shape[:-2], {d: t for d, t in v.track.items() if d < v.ndim - 2})
    kb = TV(k.shape[:-2], {d: t for d, t in k.track.items() if d < k.ndim - 2})
    qb = TV(q.shape[:-2], {d: t for d, t in q.track.items() if d < q.ndim - 2})
    if _arg(args, kwargs, 7, "enable_gqa", False) and q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        # grouped-query attention: key/value head j serves query heads j*g ... j*g+g-1 (as
        # repeat_interleave), so a key/value head and its g query heads go together
        kb, kv = _gqa_heads(kb, q.shape[-3]), _gqa_heads(kv, q.shape[-3])
    batch = tuple(builtins.max(a, b) for a, b in zip(q.shape[:-2], kb.shape))
    track = broadcast_track(ctx, [qb, kb, kv], out.shape[:-2])
    mask = _arg(args, kwargs, 3, "attn_mask")
    if isinstance(mask, TV):
        # the mask (a relative-position bias per head) lines up with the attention logits
        # (batch..., queries, keys): its head dim goes with the heads
        logits = TV(batch + (q.shape[-2], k.shape[-2]),
                    {**{d: a for d, a in track.items()},
                     **({len(batch): q.track[q.ndim - 2]} if q.tracked(-2) else {}),
                     **({len(batch) + 1: k.track[k.ndim - 2]} if k.tracked(-2) else {})})
        broadcast_track(ctx, [logits, mask], logits.shape)
    if q.tracked(-2):
        track[out.ndim - 2] = q.track[q.ndim - 2]
    if v.tracked(-1):
        track[out.ndim - 1] = v.track[v.ndim - 1]
    out.track = track
    return out


def _gqa_heads(x: TV, q_heads: int) -> TV:
    d = x.ndim - 1  # the head dim, last of the batch dims
    heads = x.shape[d]
    if heads == 0 or q_heads % heads:
        raise ValueError(f"{q_heads} query heads cannot share {heads} key/value heads")
    track = dict(x.track)
    if d in track:
        track[d] = np.repeat(track[d], q_heads // heads)
    return TV(x.shape[:d] + (q_heads,), track)


@function_rule(F.glu)
def _glu(ctx, node, args, kwargs, out):
    """``a * sigmoid(b)`` of the two halves along ``dim``: position j of both halves goes together."""
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim", -1)
    halves = [TV(out.shape), TV(out.shape)]
    a, b = _split_parts(ctx, x, halves, dim, equal=True)
    return elementwise(ctx, node, (a, b), {}, out)


@function_rule(torch.einsum)
def _einsum(ctx, node, args, kwargs, out):
    eq = args[0]
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if not isinstance(eq, str) or "..." in eq or "->" not in eq or not all(isinstance(o, TV) for o in ops):
        ctx.freeze([ops], f"einsum form not handled at {ctx.where()}")
        return out
    lhs, rhs = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    by_letter: dict[str, list[np.ndarray]] = {}
    for spec, t in zip(specs, ops):
        for d, letter in enumerate(spec):
            if t.shape[d] == 1 and any(o.shape[k] != 1 for sp, o in zip(specs, ops) for k, l2 in enumerate(sp) if l2 == letter):
                ctx.freeze_dims(t, [d], f"broadcast dim in {ctx.where()}")
                continue
            by_letter.setdefault(letter, []).append(t.atoms(d))
    track = {}
    for letter, arrays in by_letter.items():
        tracked = [a for a in arrays if (a >= 0).any()]
        if not tracked:
            continue
        for a in arrays[1:]:
            ctx.union(arrays[0], a, "einsum index")
        if letter in rhs:
            track[rhs.index(letter)] = tracked[0]
    out.track = clean_track(track)
    return out


@function_rule(torch.roll)
@method_rule("roll")
def _roll(ctx, node, args, kwargs, out):
    x = args[0]
    dims = _arg(args, kwargs, 2, "dims")
    dims = list(range(x.ndim)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    ctx.freeze_dims(x, dims, f"{'flip' if node.target in ('flip', torch.flip) else 'roll'} along a prunable dim at {ctx.where()}")
    out.track = {d: a for d, a in x.track.items() if d not in {k % x.ndim for k in dims}}
    return out


@function_rule(torch.flip)
@method_rule("flip")
def _flip(ctx, node, args, kwargs, out):
    return _roll(ctx, node, (args[0], None, _arg(args, kwargs, 1, "dims")), {}, out)


@function_rule(torch.repeat_interleave)
@method_rule("repeat_interleave")
def _repeat_interleave(ctx, node, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 2, "dim")
    if dim is None or not isinstance(out, TV) or out.ndim != x.ndim:
        ctx.freeze([x], f"repeat_interleave over a flattened tensor at {ctx.where()}")
        return out
    d = dim % x.ndim
    ctx.freeze_dims(x, [d], f"repeat_interleave along a prunable dim at {ctx.where()}")
    out.track = {k: a for k, a in x.track.items() if k != d}
    return out


@function_rule(torch._assert)
def _assert(ctx, node, args, kwargs, out):
    """An assertion on a width pins it (e.g. ``torch._assert(x.shape[1] == self.dim)``)."""
    ctx.freeze([args, kwargs], f"width checked by an assertion at {ctx.where()}")
    return None


@function_rule(builtins.len)
def _len(ctx, node, args, kwargs, out):
    x = args[0]
    if isinstance(x, TV):
        return Sym(x.track[0]) if 0 in x.track else x.shape[0]
    return len(x) if isinstance(x, (tuple, list)) else None


@method_rule("new_empty", "new_zeros", "new_ones", "new_full")
def _new_like(ctx, node, args, kwargs, out):
    """A fresh tensor: its values don't come from ``x``; its dims follow the requested sizes."""
    sizes = _shape_args(args, kwargs)
    if node.target == "new_full" and len(args) > 2:
        sizes = _shape_args(args[:2], kwargs)
    track = {}
    for j, s in enumerate(sizes):
        if isinstance(s, Sym):
            track[j] = s.atoms
        elif isinstance(s, Opaque):
            ctx.atoms.freeze(s.atoms, f"size computed in a way we cannot follow at {ctx.where()}")
    out.track = clean_track(track)
    return out
