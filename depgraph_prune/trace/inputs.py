"""Bind the example inputs to ``forward``'s signature and build the function fx traces.

``torch.fx`` makes one placeholder per parameter of the traced function, so it cannot take real
forwards as they are: a decorated ``wrapper(self, *args, **kwargs)`` (transformers) hides the real
parameters, ``**kwargs`` and ``*xs`` become single opaque placeholders, and an optional argument
the user did not give (``class_labels=None``) becomes a proxy, so ``if class_labels is not None``
takes the wrong branch.

Instead we trace an *entry function* made for the example inputs at hand: one parameter per
tensor the user gave (nested tuples/lists/dicts are flattened), which calls the model's own
``forward`` with exactly the arguments the user gave (tensors replaced by proxies, everything else
concrete). What the user did not give keeps its default, concretely, because it is never passed.
"""
from __future__ import annotations

import inspect
import keyword
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import TraceError


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tuple/list is positional args, a mapping (dict, transformers' ``BatchEncoding``) is
    keyword args, anything else one positional arg."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


@dataclass
class Binding:
    """The example inputs laid out for tracing: ``leaves`` are the tensors, in placeholder order,
    named ``names``; ``entry`` is the function fx traces (``entry(self, *leaves)``)."""

    names: list[str]
    leaves: list[torch.Tensor]
    entry: Callable


def _forward_of(model: nn.Module) -> Callable:
    fn = type(model).forward
    if not isinstance(fn, types.FunctionType):  # e.g. a C-implemented or functools.partial forward
        raise TraceError(f"{type(model).__name__}.forward is not a Python function; it cannot be traced")
    return fn


def check_signature(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Fail early, naming the argument, when the example inputs do not fit ``forward``."""
    try:
        sig = inspect.signature(type(model).forward)  # follows functools.wraps to the real one
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())[1:]
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise TraceError(f"example_inputs gives {unknown[0]!r}, which {type(model).__name__}.forward{_short(sig)} "
                             f"does not take; its arguments are {sorted(names)}")
    try:
        sig.bind(None, *args, **kwargs)
    except TypeError as exc:
        params = [p for p in list(sig.parameters)[1:]]
        raise TraceError(f"example_inputs do not fit {type(model).__name__}.forward{_short(sig)}: {exc}. "
                         f"Pass a tensor, a tuple of positional arguments, or a dict keyed by "
                         f"argument name (one of {params})") from exc


def _short(sig: inspect.Signature) -> str:
    text = str(sig)
    return text if len(text) < 160 else text[:157] + "...)"


def _names_for(model: nn.Module, args: tuple, kwargs: dict) -> tuple[list, Any]:
    """One readable name per leaf of ``(args, kwargs)``: the parameter it binds to, plus its
    position inside a nested input."""
    try:
        params = list(inspect.signature(type(model).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "args")
    arg_names = [positional[i].name if i < len(positional) else f"{var}_{i - len(positional)}"
                 for i in range(len(args))]
    leaves, spec = pytree.tree_flatten_with_path((args, kwargs))
    names = []
    for path, _ in leaves:
        # path[0] picks args or kwargs, path[1] the argument, the rest the position inside it
        head = arg_names[path[1].idx] if path[0].idx == 0 else str(path[1].key)
        rest = [str(getattr(k, "idx", getattr(k, "key", getattr(k, "name", "")))) for k in path[2:]]
        names.append("_".join([head] + rest))
    return names, spec


def _identifier(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "input"
    if base[0].isdigit() or keyword.iskeyword(base) or base in ("self", "_call"):
        base = f"input_{base}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def traced_outputs(out):
    """The output as fx can record it: tensors (and proxies), in plain tuples, lists and dicts
    (transformers' ``ModelOutput`` becomes a dict of its set fields). Other objects, such as a
    ``DynamicCache`` of keys and values the model builds for the next call, are state rather than
    results: they are left out (as ``None``), so their widths are free to change."""
    if isinstance(out, (torch.Tensor, torch.fx.Proxy)) or out is None or isinstance(out, (int, float, bool, str)):
        return out
    if isinstance(out, Mapping):
        return {k: traced_outputs(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(traced_outputs(v) for v in out) if type(out) in (tuple, list) else \
            tuple(traced_outputs(v) for v in out)
    return None


_ENTRY_CODE: dict = {}  # (source, file name) -> compiled entry maker


def bind(model: nn.Module, example_inputs: Any) -> Binding:
    """The entry function and tensor leaves for tracing ``model`` on ``example_inputs``."""
    args, kwargs = normalize_inputs(example_inputs)
    forward = _forward_of(model)
    check_signature(model, args, kwargs)
    raw_names, spec = _names_for(model, args, kwargs)
    flat = pytree.tree_leaves((args, kwargs))
    tensor_at = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    taken: set[str] = set()
    names = [_identifier(raw_names[i], taken) for i in tensor_at]

    def call(self, leaves):
        values = list(flat)
        for i, proxy in zip(tensor_at, leaves):
            values[i] = proxy
        a, k = pytree.tree_unflatten(values, spec)
        return traced_outputs(forward(self, *a, **k))

    # A function with exactly these parameters (fx makes one placeholder per parameter). It is
    # built in forward's globals so that fx's autowrap of e.g. ``math`` functions still applies.
    params = ", ".join(["self"] + names)
    tup = "(" + "".join(f"{n}, " for n in names) + ")"
    src = f"def _make(_call):\n    def forward({params}):\n        return _call(self, {tup})\n    return forward\n"
    scope: dict = {}
    where = f"<depgraph_prune entry for {type(model).__name__}>"
    code = _ENTRY_CODE.get((src, where))
    if code is None:  # compiled once per signature: a prune binds several times
        if len(_ENTRY_CODE) >= 256:
            _ENTRY_CODE.clear()
        code = _ENTRY_CODE[(src, where)] = compile(src, where, "exec")
    exec(code, scope)
    made = scope["_make"](call)
    entry = types.FunctionType(made.__code__, forward.__globals__, "forward", None, made.__closure__)
    entry.__qualname__ = f"{type(model).__qualname__}.forward"
    return Binding(names, [flat[i] for i in tensor_at], entry)
