"""Walks of a model's module tree, as ``nn.Module.named_modules`` makes them, without its nesting.

torch's walk is a recursive generator: each module yielded passes up through one generator
frame per level above it. A prune walks the tree a few dozen times (mode switches, snapshots,
name tables, the check's hooks), so the engine walks with one loop and an explicit stack
instead, which yields the same modules, names and order at well under half the cost.
"""
from __future__ import annotations

from torch import nn


def named_modules(model: nn.Module, remove_duplicate: bool = True) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules(remove_duplicate=...))``: pre-order, children in registration
    order, ``None`` children skipped; with ``remove_duplicate`` a module reached again (shared)
    is left out together with what lies below it, as torch does."""
    out: list = []
    seen: set = set()
    stack = [("", model)]
    pop, push, add = stack.pop, stack.append, out.append
    while stack:
        prefix, mod = pop()
        if remove_duplicate:
            key = id(mod)
            if key in seen:
                continue
            seen.add(key)
        add((prefix, mod))
        children = mod._modules
        if children:
            base = prefix + "." if prefix else ""
            for name, child in reversed(children.items()):
                if child is not None:
                    push((base + name, child))
    return out


def modules(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())``."""
    return [m for _, m in named_modules(model)]


def named_tensors(model: nn.Module, buffers: bool = True) -> dict:
    """Every parameter and buffer by qualified name, tied ones under each of their names: the
    same table as ``named_parameters(remove_duplicate=False)`` followed by ``named_buffers``
    (without ``buffers``: the parameters only)."""
    items = named_modules(model, remove_duplicate=False)
    out: dict = {}
    for table in ("_parameters", "_buffers") if buffers else ("_parameters",):
        for prefix, mod in items:
            tensors = mod.__dict__.get(table)
            if tensors:
                base = prefix + "." if prefix else ""
                for key, t in tensors.items():
                    if t is not None:
                        out[base + key] = t
    return out


def parameters(model: nn.Module) -> list:
    """``list(model.parameters())``: each parameter once (a tied one where first met)."""
    out: list = []
    seen: set = set()
    for _, mod in named_modules(model):
        params = mod.__dict__.get("_parameters")
        if params:
            for p in params.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out
