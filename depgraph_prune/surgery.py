"""Step 4: the surgeon. Removes channels from the user's own modules, all or nothing.

Build phase: every new shape and width attribute is worked out on meta tensors (no memory), so
anything the plan cannot do is refused before the model is touched. Commit phase, tensor by
tensor: each tensor is split into the kept part and the removed parts, and the kept part takes
its place. The removed parts are all an undo needs, so the weights of a large model are never held
twice (the peak is the model plus its largest tensor); up to ``KEEP_OLD_LIMIT`` bytes of weights
the old tensors are kept instead, which saves a copy. Parameters keep their identity (``param.data``
is swapped, so optimizers still hold the right objects, see ``rebuild_optimizer`` for their
state); buffers and width attributes are replaced. If the commit fails half-way, everything done
so far is rolled back, bit for bit.
"""
from __future__ import annotations

import operator
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ._fast_meta import to_meta
from ._memory import release_free_memory
from ._walk import named_modules
from .errors import PruningError, SurgeryError

#: the model attribute that holds the pruning record (one entry per surgery; see ``history``)
HISTORY_ATTR = "_depgraph_prune_history"


#: bytes of parameters to shrink up to which the surgery keeps the old tensors for its undo
#: (the model is then held twice until the prune is accepted); above it, only the removed parts
KEEP_OLD_LIMIT = 512 << 20


def _resolve(model: nn.Module, qualname: str, modules: Mapping[str, nn.Module] | None = None):
    """``(owning module, attribute name)`` of a qualified tensor name; ``modules``: a name ->
    module table already made, looked up first."""
    owner_name, _, attr = qualname.rpartition(".")
    return _submodule(model, owner_name, modules), attr


def _submodule(model: nn.Module, name: str, modules: Mapping[str, nn.Module] | None = None) -> nn.Module:
    if modules is not None and name in modules:
        return modules[name]
    return model.get_submodule(name) if name else model


def removed_components(graph, plan: Mapping) -> np.ndarray:
    removed = np.zeros(graph._ncomp, dtype=bool)
    for group, channels in plan.items():
        ch = np.asarray(list(channels), dtype=np.int64)
        if ch.size == 0:
            continue
        if ch.min() < 0 or ch.max() >= group.size:
            raise PruningError(f"group {group.index}: channel indices must lie in [0, {group.size}), got {ch.tolist()}")
        distinct = int(np.count_nonzero(np.bincount(ch, minlength=group.size)))
        if distinct != ch.size:
            raise PruningError(f"group {group.index}: channel indices repeat: {ch.tolist()}")
        if distinct == group.size and group.n_frozen == 0:
            raise PruningError(f"group {group.index}: refusing to prune all {group.size} channels "
                               f"(members would become empty, e.g. {group.members[0].name})")
        removed[group._comps[ch]] = True
    return removed


def removed_masks(graph, removed: np.ndarray) -> list:
    """``(member, mask of its removed positions)`` for every member that loses positions.

    All members' atoms are looked up in one pass over their concatenation (kept on the graph,
    since the members never change after the build), not a handful of numpy calls per member."""
    members, atoms, real, starts = _member_atoms(graph)
    rem = np.zeros(atoms.shape, dtype=bool)
    rem[real] = removed[graph._labels[atoms[real]]]
    hits = np.add.reduceat(rem, starts[:-1]) if len(members) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(starts)
    out = []
    for i in np.flatnonzero(hits):
        m = members[i]
        if hits[i] == sizes[i]:
            raise PruningError(f"pruning would remove every position of `{m.name}` (dim {m.dim})")
        out.append((m, rem[starts[i]:starts[i + 1]].reshape(m.atoms.shape)))
    return out


def _member_atoms(graph):
    """(members, their atoms concatenated, which of those are real, start offsets + total)."""
    members = list(graph._ctx.members.values())
    cached = graph.__dict__.get("_member_atoms")
    if cached is not None and len(cached[0]) == len(members) and all(map(operator.is_, cached[0], members)):
        return cached[1]
    every = members
    # an empty member (it loses nothing) would make reduceat read the next member's first position
    members = [m for m in members if m.atoms.size]
    flat = [m.atoms.reshape(-1) for m in members]
    starts = np.zeros(len(members) + 1, dtype=np.int64)
    np.cumsum([f.size for f in flat], out=starts[1:])
    atoms = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    table = (members, atoms, atoms >= 0, starts)
    graph.__dict__["_member_atoms"] = (every, table)
    return table


def kept_positions(graph, removed: np.ndarray, masks: list | None = None) -> dict[tuple[str, int], np.ndarray]:
    masks = removed_masks(graph, removed) if masks is None else masks
    return {(m.name, m.dim): np.nonzero(~rem)[0] for m, rem in masks}


def removal(graph, plan: Mapping) -> tuple[np.ndarray, list]:
    """The plan's removed components and ``removed_masks``: made once when a check and the
    surgery it checks both need them."""
    removed = removed_components(graph, plan)
    return removed, removed_masks(graph, removed)


def apply_plan(graph, plan: Mapping, removal_of_plan: tuple | None = None) -> dict:
    """``removal_of_plan``: ``removal(graph, plan)`` when the caller already made it."""
    model = graph.model
    removed, masks = removal(graph, plan) if removal_of_plan is None else removal_of_plan
    keeps = kept_positions(graph, removed, masks)
    if not keeps:
        return {}
    kinds = {(m.name, m.dim): m.kind for m in graph._ctx.members.values()}
    rescale = _rescales(graph, removed, keeps)
    # ---- build phase -------------------------------------------------------------------------
    by_tensor: dict[str, dict[int, np.ndarray]] = {}
    widths: dict[str, dict[str, int]] = {}
    for (name, dim), idx in keeps.items():
        if kinds[(name, dim)] == "width":
            owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
            widths.setdefault(owner, {})[attr] = len(idx)
        else:
            by_tensor.setdefault(name, {})[dim] = idx
    new_tensors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    holders: dict[int, list[tuple[nn.Module, str, str]]] = {}
    modules = dict(named_modules(model, remove_duplicate=False))  # one walk, not a lookup per name
    for mod_name, mod in modules.items():
        for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is not None:
                holders.setdefault(id(t), []).append((mod, attr, mod_name))
    with torch.no_grad():
        for name, dims in by_tensor.items():
            t = getattr(*_resolve(model, name, modules))
            # shapes only: the real slices are cut in the commit, one tensor at a time
            shape = list(t.shape)
            for dim, idx in dims.items():
                shape[dim] = len(idx)
            new_tensors[id(t)] = (t, torch.empty(shape, dtype=t.dtype, device="meta"), dims)
    attr_updates = []
    touched_modules = {}
    for tid in new_tensors:
        for mod, attr, mod_name in holders.get(tid, []):
            touched_modules[id(mod)] = (mod, mod_name)
            if ".parametrizations." in f".{mod_name}":  # the module whose weight it parametrizes
                owner = mod_name.rpartition("parametrizations.")[0].rstrip(".")
                omod = _submodule(model, owner, modules)
                touched_modules[id(omod)] = (omod, owner)
    for owner in widths:
        mod = _submodule(model, owner, modules)
        touched_modules[id(mod)] = (mod, owner)
    for mod, mod_name in touched_modules.values():
        attr_updates.extend(_width_attrs(mod, mod_name, new_tensors, widths.get(mod_name, {})))
    # the record is built before anything is touched, so it cannot fail after the commit
    names = _module_names(model, modules) if attr_updates else {}
    record = {"kept": {f"{n}:{d}": idx.tolist() for (n, d), idx in keeps.items()},
              "rescaled": [[n, d, np.asarray(i).tolist(), f] for n, d, i, f in rescale],
              "attrs": {(f"{n}.{a}" if (n := names.get(id(m), "?")) else a): _jsonable(v)
                        for m, a, v in attr_updates}}
    # ---- commit phase ------------------------------------------------------------------------
    undo = []
    freed = 0
    # a small model's old tensors are simply kept for the undo (one gather per tensor instead of
    # two); a large one's are split into kept and removed parts, so it is never held twice
    split_bytes = sum(t.numel() * t.element_size() for t, _, _ in new_tensors.values() if isinstance(t, nn.Parameter))
    keep_old = split_bytes <= KEEP_OLD_LIMIT
    refresh = _refreshers(touched_modules.values())
    try:
        for fn, mod in refresh:  # first in, last undone: after a rollback restored the tensors
            undo.append(("refresh", fn, mod))
        with torch.no_grad():
            for tid, (t, _, dims) in new_tensors.items():
                if isinstance(t, nn.Parameter):
                    if keep_old:
                        new = _slice(t.detach(), dims)
                        undo.append(("param", t, t.data, t.grad))
                    else:  # the model holds the kept part, the undo entry the rest
                        new, parts = _split(t.detach(), dims)
                        undo.append(("param_split", t, tuple(t.shape), parts, t.grad))
                        del parts
                    grad = _slice(t.grad, dims) if t.grad is not None else None
                    t.grad = None
                    t.data = new
                    t.grad = grad
                    del new
                    if not keep_old:
                        freed += t.numel() * t.element_size()
                        if freed > 1 << 26:  # the old tensors may sit in glibc's heap: give it back as we go
                            release_free_memory()
                            freed = 0
                else:
                    new = _slice(t, dims)
                    for mod, attr, _ in holders.get(tid, []):
                        old = mod._buffers[attr]
                        mod._buffers[attr] = new
                        undo.append(("buffer", mod, attr, old))
        with torch.no_grad():
            for name, dim, idx, factor in rescale:
                t = getattr(*_resolve(model, name, modules))
                idx = torch.as_tensor(idx, dtype=torch.long, device=t.device)
                orig = t.data.index_select(dim, idx)
                undo.append(("rows", t, dim, idx, orig))
                t.data.index_copy_(dim, idx, orig * factor)
        for mod, attr, value in attr_updates:
            old = getattr(mod, attr)
            setattr(mod, attr, value)
            undo.append(("attr", mod, attr, old))  # only once the set took effect
        for fn, mod in refresh:
            fn(mod)
    except Exception as exc:
        _rollback(undo)
        raise SurgeryError(f"surgery failed while committing ({exc}); the model was restored") from exc
    history = model.__dict__.setdefault(HISTORY_ATTR, [])
    history.append(record)

    def undo_all():
        history.remove(record)
        _rollback(undo)
    return {**record, "undo": undo_all}


def _rescales(graph, removed, keeps) -> list:
    """``(tensor, dim, positions in the pruned tensor, factor)`` for the scale fix-ups whose
    width shrinks (see ``BuildContext.keep_scale``)."""
    labels = graph._labels
    out = []
    for fix in graph._ctx.scale_fixups:
        w = fix["width"]
        real = w[w >= 0]
        n_old = w.size
        n_new = n_old - int(removed[labels[real]].sum())
        if n_new == n_old:
            continue
        factor = (n_new / n_old) ** fix["power"]
        for name, dim, positions in fix["tensors"]:
            kept = keeps.get((name, dim))
            if kept is None:
                out.append((name, dim, positions, factor))
            else:
                out.append((name, dim, np.nonzero(np.isin(kept, positions))[0], factor))
    return out


def _module_names(model, modules: dict | None = None) -> dict[int, str]:
    """Each module's first qualified name (a shared module is recorded under one name);
    ``modules``: the model's ``named_modules(remove_duplicate=False)`` table, when made already."""
    names: dict[int, str] = {}
    for n, m in (modules.items() if modules is not None else named_modules(model, remove_duplicate=False)):
        names.setdefault(id(m), n)
    return names


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def history(model: nn.Module) -> list[dict]:
    """The pruning record of ``model``: one entry per surgery, in order, each with the kept
    positions per ``"param_name:dim"`` and the width attributes set (``"module.attr": value``)."""
    return list(model.__dict__.get(HISTORY_ATTR, []))


def _rollback(undo):
    errors = []
    for entry in reversed(undo):
        try:
            _undo_one(entry)
        except Exception as exc:  # keep restoring the rest
            errors.append(exc)
    if errors:
        raise SurgeryError(f"rollback could not restore {len(errors)} item(s): {errors[0]}")


def _refreshers(modules):
    from .graph.registry import REFRESH_RULES
    out = []
    for mod, _ in modules:
        fn = next((REFRESH_RULES[b] for b in type(mod).__mro__ if b in REFRESH_RULES), None)
        if fn is not None:
            out.append((fn, mod))
    return out


def _undo_one(entry):
    if entry[0] == "refresh":
        entry[1](entry[2])
    elif entry[0] == "param":  # the old data itself was kept (io.load)
        _, t, data, grad = entry
        t.grad = None
        t.data = data
        t.grad = grad
    elif entry[0] == "param_split":
        _, t, shape, parts, grad = entry
        t.grad = None
        if tuple(t.shape) != shape:  # the kept part is in place: put the removed parts back
            with torch.no_grad():
                t.data = _merge(t.detach(), parts)
        t.grad = grad
    elif entry[0] == "rows":
        _, t, dim, idx, orig = entry
        with torch.no_grad():
            t.data.index_copy_(dim, idx, orig)
    elif entry[0] == "buffer":
        _, mod, attr, old = entry
        mod._buffers[attr] = old
    else:
        _, mod, attr, old = entry
        setattr(mod, attr, old)


def _slice(t: torch.Tensor, dims: dict[int, np.ndarray]) -> torch.Tensor:
    out = t
    for dim, idx in sorted(dims.items()):
        out = out.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))
    return out.clone() if out is t else out


def _split(t: torch.Tensor, dims: dict[int, np.ndarray]):
    """The kept part of ``t`` and the removed parts, from which ``_merge`` rebuilds ``t``."""
    parts = []
    out = t
    for dim, idx in sorted(dims.items()):
        keep = torch.as_tensor(idx, dtype=torch.long, device=t.device)
        dropped = np.ones(out.shape[dim], dtype=bool)
        dropped[idx] = False  # idx: sorted, distinct positions (kept_positions)
        drop = torch.as_tensor(np.flatnonzero(dropped), dtype=torch.long, device=t.device)
        parts.append((dim, keep, drop, out.index_select(dim, drop)))
        out = out.index_select(dim, keep)
    return (out.clone() if out is t else out), parts


def _merge(kept: torch.Tensor, parts) -> torch.Tensor:
    out = kept
    for dim, keep, drop, removed in reversed(parts):
        shape = list(out.shape)
        shape[dim] = len(keep) + len(drop)
        full = out.new_empty(shape)
        full.index_copy_(dim, keep, out)
        full.index_copy_(dim, drop, removed)
        out = full
    return out


def _new(mod, attr, new_tensors):
    t = getattr(mod, attr, None)
    if isinstance(t, torch.Tensor) and id(t) in new_tensors:
        return new_tensors[id(t)][1]
    return t


def _width_attrs(mod: nn.Module, name: str, new_tensors, widths: dict[str, int]):
    """New values of the attributes that describe a module's widths."""
    from .graph.context import _get, _reparametrized
    reparam = _reparametrized(mod, "weight") if isinstance(mod, nn.Module) else None
    if reparam is not None and reparam[1] is not None:  # weight norm: the weight has v's shape
        holder, _, attr = reparam[1].rpartition(".")
        w = _new(_get(mod, holder) if holder else mod, attr, new_tensors)
    else:
        w = _new(mod, "weight", new_tensors)
    ups = []
    if isinstance(mod, nn.modules.conv._ConvNd):
        g = mod.groups
        if mod.transposed:
            ups += [("in_channels", w.shape[0]), ("out_channels", w.shape[1] * g)]
        elif g == 1:
            ups += [("in_channels", w.shape[1]), ("out_channels", w.shape[0])]
        else:
            out_pg, in_pg = mod.out_channels // g, mod.in_channels // g
            new_g, rest = divmod(w.shape[0], out_pg)
            if rest:
                raise SurgeryError(f"`{name}`: grouped convolution would lose part of a group")
            ups += [("groups", new_g), ("in_channels", new_g * in_pg), ("out_channels", w.shape[0])]
    elif isinstance(mod, nn.Linear):
        ups += [("in_features", w.shape[1]), ("out_features", w.shape[0])]
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        ups += [("num_features", widths.get("num_features", mod.num_features))]
    elif isinstance(mod, nn.GroupNorm):
        c = widths.get("num_channels", mod.num_channels)
        if mod.num_groups > 1:
            per = mod.num_channels // mod.num_groups
            if c % per:
                raise SurgeryError(f"`{name}`: group norm would lose part of a group")
            ups += [("num_groups", c // per)]
        ups += [("num_channels", c)]
    elif isinstance(mod, nn.LayerNorm):
        shape = list(mod.normalized_shape)
        for i in range(len(shape)):
            shape[i] = widths.get(f"normalized_shape[{i}]", shape[i])
        ups += [("normalized_shape", tuple(shape))]
    elif isinstance(mod, nn.PReLU):
        ups += [("num_parameters", w.shape[0])]
    elif isinstance(mod, nn.MultiheadAttention):
        e = _new(mod, "in_proj_weight", new_tensors).shape[1]
        heads, hd = widths.get("num_heads", mod.num_heads), widths.get("head_dim", mod.head_dim)
        if heads * hd != e:
            raise SurgeryError(f"`{name}`: {heads} heads of {hd} do not make embed_dim {e}")
        ups += [("embed_dim", e), ("kdim", e), ("vdim", e), ("num_heads", heads), ("head_dim", hd)]
    elif isinstance(mod, nn.Embedding):
        ups += [("embedding_dim", w.shape[1])]
    from .graph.registry import WIDTH_RULES
    for base in type(mod).__mro__:
        if base in WIDTH_RULES:
            changed = {a: _new(mod, a, new_tensors) for a, t in list(mod._parameters.items()) + list(mod._buffers.items())
                       if t is not None and id(t) in new_tensors}
            ups += list(WIDTH_RULES[base](mod, changed).items())
            break
    if not isinstance(mod, nn.LayerNorm) and any(a.startswith("normalized_shape[") for a in widths):
        shape = list(mod.normalized_shape)  # a third-party LayerNorm class
        for i in range(len(shape)):
            shape[i] = widths.get(f"normalized_shape[{i}]", shape[i])
        ups += [("normalized_shape", type(mod.normalized_shape)(shape) if isinstance(mod.normalized_shape, (tuple, list)) else tuple(shape))]
    if isinstance(mod, nn.GroupNorm) is False and "num_channels" in widths and hasattr(mod, "num_channels"):
        ups += [("num_channels", widths["num_channels"])]
    handled = {a for a, _ in ups}
    for attr, value in widths.items():
        # a plain integer attribute that forward reads as a width (e.g. ViT's hidden_dim)
        if "[" not in attr and attr not in handled and isinstance(getattr(mod, attr, None), int):
            ups.append((attr, value))
    return [(mod, a, v) for a, v in ups if getattr(mod, a, None) != v]


def output_structure(out):
    if isinstance(out, torch.Tensor):
        return tuple(int(s) for s in out.shape)
    if isinstance(out, (tuple, list)):
        return [output_structure(o) for o in out]
    if isinstance(out, dict):
        return {k: output_structure(v) for k, v in out.items()}
    return None


def check_runs(model: nn.Module, example_inputs, expected, meta: bool = True, macs: list | None = None) -> str | None:
    """Run ``model`` once (on meta copies of its tensors when possible, else for real, without
    touching its buffers) and return what went wrong, or None. ``meta=False``: the unpruned
    model already failed on meta tensors (a kernel stricter there, e.g. ``_grouped_mm`` refusing
    float32), so a meta failure says nothing and the real run decides. ``macs``: a list that
    receives the run's MAC count, counted as ``measure.count_ops`` counts (meta run only)."""
    from ._fast_meta import MetaMemo
    from .trace import _modes, normalize_inputs
    from .trace.symbolic import detached
    args, kwargs = normalize_inputs(example_inputs)
    out = None
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # on a detached copy: what forward caches on ``self`` must not reach the model
        counting = macs is not None
        if counting:  # as count_ops: the fused attention fast path has no FLOP formula
            torch.backends.mha.set_fastpath_enabled(False)
        try:
            memo = MetaMemo(count_flops=True) if counting else None
            with detached(model, memo=memo) as twin, _modes(twin, False), torch.no_grad():
                margs, mkwargs = to_meta((args, kwargs))
                out = twin(*margs, **mkwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        if counting:
            macs.append(int(memo.flops // 2))
    except Exception as exc:
        if meta and not _meta_limitation(exc):
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:  # data-dependent code (x.item(), if x.sum() > 0) cannot run on meta tensors
            with detached(model, meta=False) as twin, _modes(twin, False), torch.no_grad():
                out = twin(*args, **kwargs)
        except Exception as exc2:
            return f"{type(exc2).__name__}: {str(exc2).splitlines()[0] if str(exc2) else ''}"
    try:
        got = output_structure(out)
        if expected is not None and _flat(got) != _flat(expected):
            return f"output shapes changed from {expected} to {got}"
    except Exception as exc:
        return f"could not compare the outputs ({type(exc).__name__}: {exc})"
    return None


def _meta_limitation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or "meta" in text or "data-dependent" in text


def _flat(s):
    if isinstance(s, dict):
        return [(repr(k), _flat(v)) for k, v in sorted(s.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(s, list):
        return [_flat(v) for v in s]
    return s
