"""Keep an optimizer going after surgery.

The surgeon keeps every ``nn.Parameter`` object (``param.data`` is swapped), so an optimizer still
holds the right parameters, but its per-parameter state (SGD momentum buffers, Adam moments, ...)
still has the pre-surgery shapes. :func:`rebuild_optimizer` slices that state to the kept
positions recorded by the surgeon (``surgery.history(model)``)::

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...
    dp.prune(model, x, ratio=0.3)
    dp.rebuild_optimizer(optimizer, model)   # momentum buffers now match the narrower weights
    ...                                      # training goes on
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from . import surgery
from .errors import PruningError

__all__ = ["rebuild_optimizer", "check_optimizer"]


def _parse_entry(entry: dict) -> dict[str, dict[int, list]]:
    """One record entry as ``{tensor name: {dim: kept positions}}``."""
    out: dict[str, dict[int, list]] = {}
    for key, kept in entry["kept"].items():
        name, _, dim = key.rpartition(":")
        out.setdefault(name, {})[int(dim)] = kept
    return out


def _entry_dims(parsed: dict, names: list[str]) -> dict[int, np.ndarray]:
    """Kept positions per dim of the tensor known by any of ``names`` in one parsed entry."""
    out = {}
    for name in names:
        for d, kept in parsed.get(name, {}).items():
            out[d] = np.asarray(kept, dtype=np.int64)
    return out


def _map_state(shape: tuple, param_shape: tuple, entries: list[dict[int, np.ndarray]]):
    """The positions (per dim, in a state tensor of ``shape``) that correspond to the parameter's
    current positions, composing the last k surgeries for the smallest k whose pre-surgery shape
    is ``shape``; None when no k fits. ``entries`` are the per-dim kept positions of every surgery,
    oldest first (an empty dict where a surgery did not touch this parameter)."""
    ndim = len(param_shape)
    if len(shape) != ndim:
        return None
    if tuple(shape) == tuple(param_shape):
        return {}
    n = len(entries)
    for k in range(1, n + 1):
        ok, comp = True, {}
        for d in range(ndim):
            # compose the kept positions of the window's surgeries that touched dim d, newest first
            pos = None
            first = None  # index (into entries) of the oldest surgery of the window touching d
            for j in range(n - 1, n - k - 1, -1):
                kept = entries[j].get(d)
                if kept is None:
                    continue
                pos = kept if pos is None else kept[pos]
                first = j
            if pos is None:
                if shape[d] != param_shape[d]:
                    ok = False
                    break
                continue
            # the size before surgery `first`: what an earlier surgery left, or unknown (the original)
            before = None
            for j in range(first - 1, -1, -1):
                if d in entries[j]:
                    before = len(entries[j][d])
                    break
            if (before is not None and shape[d] != before) or (before is None and shape[d] <= int(pos.max())):
                ok = False
                break
            if pos.size != param_shape[d]:
                ok = False
                break
            comp[d] = pos
        if ok:
            return comp
    return None


def check_optimizer(optimizer, model: nn.Module) -> None:
    """Refuse, before any surgery, an ``optimizer=`` argument that is not an optimizer or holds
    none of ``model``'s parameters (None passes: nothing to keep in line)."""
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PruningError(f"optimizer must be a torch.optim.Optimizer (or None), got {type(optimizer).__name__}")
    mine = {id(p) for p in model.parameters()}
    if mine and not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
        raise PruningError("optimizer holds none of the model's parameters: pass the optimizer that trains "
                           "this model")


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Bring ``optimizer``'s per-parameter state in line with ``model`` after pruning, in place,
    and return the optimizer.

    Every state tensor shaped like its parameter before the surgery (momentum buffers, Adam's
    ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, Adagrad's ``sum``, ...) is sliced to the kept
    positions of ``surgery.history(model)``; several surgeries since the optimizer last stepped are
    composed. Scalars (Adam's ``step``) are kept. A parameter whose state cannot be matched to the
    record loses its state (as if it were new to the optimizer), with a warning. State already in
    line is left alone, so calling this twice is harmless.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PruningError(f"rebuild_optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        # LBFGS keeps flattened histories of all parameters together: nothing per-parameter to slice
        optimizer.state.clear()
        warnings.warn("rebuild_optimizer: LBFGS state (flattened curvature history) was reset", stacklevel=2)
        return optimizer
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    history = [_parse_entry(e) for e in surgery.history(model)]
    reset = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                if not state:
                    continue
                entries = [_entry_dims(e, names.get(id(p), [])) for e in history]
                new_state, ok = {}, True
                for key, value in state.items():
                    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.dim() != p.dim():
                        new_state[key] = value
                        continue
                    comp = _map_state(tuple(value.shape), tuple(p.shape), entries)
                    if comp is None:
                        ok = False
                        break
                    new_state[key] = surgery._slice(value, comp) if comp else value
                if ok:
                    state.update(new_state)  # commit per parameter only once all its state is sliced
                else:
                    reset.append(names.get(id(p), ["<a parameter not in the model>"])[0])
                    del optimizer.state[p]
    if reset:
        warnings.warn(f"rebuild_optimizer: the state of {len(reset)} parameter(s) (e.g. `{reset[0]}`) did not "
                      "match the pruning record and was reset", stacklevel=2)
    return optimizer
