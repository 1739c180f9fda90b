"""Extending the engine: coupling rules for your own layers and functions.

A coupling rule says how the channels of an op's inputs, outputs and parameters correspond.
It is called as ``rule(ctx, node, args, kwargs, out)`` for functions and tensor methods, and as
``rule(ctx, node, module, args, kwargs, out)`` for module types (which then become leaves of the
trace). ``args``/``kwargs`` hold ``TV`` values for tensors: ``tv.shape`` and ``tv.track`` (tracked
dim → atom ids; ``tv.atoms(d)`` gives FIXED (-1) ids for untracked dims). ``out`` is the output as
an untracked ``TV`` (or a tuple of them): set ``out.track`` and return it. Tools on ``ctx``:
``ctx.param_tv(module_name, "weight", dims)`` (a parameter's dims as a ``TV``),
``ctx.union(a, b)`` (these positions go together), ``ctx.freeze(values, reason)`` (never prune),
``ctx.where()`` (the node, for reasons). Building blocks: ``passthrough``, ``elementwise``,
``broadcast_track``, ``reshape``, ``linear_core``, ``conv_core``, ``channel_affine``.

Example: a layer that scales channels by a learned vector and has a width attribute::

    >>> import torch, torch.nn as nn, depgraph_prune as dp
    >>> class Scale(nn.Module):
    ...     def __init__(self, c):
    ...         super().__init__(); self.c = c; self.g = nn.Parameter(torch.ones(c))
    ...     def forward(self, x):
    ...         return x * self.g.view(1, -1, 1, 1)
    >>> def scale_rule(ctx, node, module, args, kwargs, out):
    ...     g = ctx.param_tv(node.target, "g", (0,))
    ...     return dp.rules.channel_affine(ctx, args[0], [g], out)
    >>> dp.register_rule(Scale, scale_rule, widths=lambda m, new: {"c": new["g"].shape[0]})
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 4, 1))
    >>> _ = dp.prune(net, torch.randn(1, 3, 4, 4), ratio=0.5)
    >>> net[1].c, net[0].out_channels
    (4, 4)
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .graph.registry import FUNCTION_RULES, METHOD_RULES, MODULE_RULES, WIDTH_RULES, load_optional_rules
from .graph.rules.layers import channel_affine, conv_core, linear_core
from .graph.rules.tensor_ops import broadcast_track, elementwise, passthrough, reshape
from .graph.values import TV

__all__ = ["register_rule", "unregister_rule", "TV", "passthrough", "elementwise", "broadcast_track", "reshape",
           "linear_core", "conv_core", "channel_affine"]


def register_rule(target, rule: Callable, *, widths: Callable | None = None) -> None:
    """Register a coupling ``rule`` for ``target``: an ``nn.Module`` subclass, a function, or a
    tensor method name (``"my_method"``). For a module type, ``widths(module, new_tensors)`` may
    return the width attributes to set after surgery, where ``new_tensors`` maps the module's own
    parameter/buffer names to their pruned tensors (only those that changed)."""
    if not callable(rule):
        raise TypeError(f"register_rule: rule must be callable, got {rule!r}")
    load_optional_rules()  # built-in rules load first, so this registration overrides them
    if isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES[target] = rule
        if widths is not None:
            WIDTH_RULES[target] = widths
    elif isinstance(target, str):
        METHOD_RULES[target] = rule
    elif callable(target):
        FUNCTION_RULES[target] = rule
    else:
        raise TypeError(f"register_rule: target must be a module type, a function or a method name, got {target!r}")
    if widths is not None and not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise TypeError("register_rule: widths= applies to module types only")


def unregister_rule(target) -> None:
    """Remove a rule registered with ``register_rule`` (e.g. at the end of a test)."""
    load_optional_rules()
    for table in (MODULE_RULES, METHOD_RULES, FUNCTION_RULES, WIDTH_RULES):
        table.pop(target, None)
