"""Walk a traced graph, apply the coupling rules, and produce a ``DependencyGraph``."""
from __future__ import annotations

import re

from typing import Any, Iterable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .. import progress as _progress
from .. import trace as _trace
from . import rules  # noqa: F401  (registers the rules)
from .._walk import named_modules
from ..errors import PruningError
from .context import KERNEL_DIM, BuildContext
from .registry import FUNCTION_RULES, METHOD_RULES, MODEL_SCANNERS, MODULE_RULES, load_optional_rules
from .values import TV


# Modules we have no rule for but want kept whole rather than traced into (their internals
# check shapes against constant attributes); their channels are frozen.
OPAQUE_TYPES: tuple[type, ...] = (nn.Transformer,
                                  nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _template(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    return _from_meta(meta)


def _from_meta(meta):
    if meta is None:
        return None
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return TV(tuple(int(s) for s in meta.shape))
    if isinstance(meta, (tuple, list)):
        return tuple(_from_meta(m) for m in meta)  # namedtuples become plain tuples
    if isinstance(meta, dict):
        return {k: _from_meta(v) for k, v in meta.items()}
    return None


def _named_tensors(modules: dict[str, nn.Module]) -> tuple[list, list]:
    """``named_parameters`` and ``named_buffers`` (``remove_duplicate=False``, same order) from
    the name -> module table already made: one pass, not a module walk per question."""
    params, buffers = [], []
    for name, mod in modules.items():
        prefix = f"{name}." if name else ""
        params += [(prefix + k, t) for k, t in mod._parameters.items() if t is not None]
        buffers += [(prefix + k, t) for k, t in mod._buffers.items() if t is not None]
    return params, buffers


def _canonical_names(named: Iterable) -> dict[int, str]:
    names: dict[int, str] = {}
    for n, t in named:
        names.setdefault(id(t), n)
    return names


def _freeze_unread(ctx: BuildContext) -> None:
    """Positions of a tensor that no rule related to anything (a weight read in ``forward`` only
    for its ``dtype``, a kernel dim reached through ``get_attr``) are not channels: freeze them.
    Pruning such a dim would change a tensor that nothing else knows the size of."""
    table = ctx.atoms
    touched = np.zeros(table.n, dtype=bool)
    src, dst = table.edge_arrays()
    touched[src] = True
    touched[dst] = True
    for atoms, _ in table.freezes:
        touched[atoms] = True
    for c in table.constraints:
        touched[c.a[c.a >= 0]] = True
        touched[c.b[c.b >= 0]] = True
    members = list(ctx.members.values())
    # which members have real positions and none touched, for all members in one pass
    sizes = np.fromiter((m.atoms.size for m in members), dtype=np.int64, count=len(members))
    full = np.flatnonzero(sizes > 0)
    if not full.size:
        return
    flat = np.concatenate([m.atoms.ravel() for m in members])
    real = flat >= 0
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1][full]
    has_real = np.add.reduceat(real.astype(np.int64), offsets) > 0
    hit = np.logical_or.reduceat(real & touched[np.maximum(flat, 0)], offsets)
    for i in full[has_real & ~hit].tolist():
        m = members[i]
        if m.kind == "width":
            continue
        real = m.atoms[m.atoms >= 0]
        owner = ctx.modules.get(m.name.rpartition(".")[0]) if "." in m.name else ctx.model
        if isinstance(owner, nn.modules.conv._ConvNd) and m.name.endswith(".weight") and m.dim >= 2:
            table.freeze(real, f"{KERNEL_DIM}`{m.name}` (dim {m.dim})")
        else:
            table.freeze(real, f"`{m.name}` dim {m.dim} is read in forward but related to no other "
                               "tensor (e.g. only its dtype or device): its positions are not channels")


_NUMBER_USE = re.compile(r"sqrt|\*\*|math\.|float\(|(?<!/)/(?!/)")


def _forward_lines(cls) -> list[str]:
    import inspect
    try:
        return inspect.getsource(cls.forward).splitlines()
    except (OSError, TypeError):
        return []


def _freeze_widths_read_as_numbers(ctx: BuildContext) -> None:
    """A plain integer attribute the surgeon will rewrite (``self.head_dim`` bound to a reshape)
    that ``forward`` also turns into a number (``1 / math.sqrt(self.head_dim)``): fx folds that
    number into the graph, so no rule sees it, and the rewritten attribute would change it.
    Freeze the width when a line of the module's ``forward`` reads the attribute in arithmetic
    that yields a value (``sqrt``, ``**``, ``/``, ``math.``, ``float(``)."""
    for m in list(ctx.members.values()):
        if m.kind != "width" or "[" in m.name:
            continue
        owner_name, _, attr = m.name.rpartition(".")
        owner = ctx.modules.get(owner_name) if owner_name else ctx.model
        if owner is None or type(getattr(owner, attr, None)) is not int or type(owner).__module__.startswith("torch."):
            continue
        pat = re.compile(rf"self\.{re.escape(attr)}\b")
        for line in _forward_lines(type(owner)):
            code = line.split("#")[0]
            if pat.search(code) and _NUMBER_USE.search(code):
                ctx.atoms.freeze(m.atoms, f"`{m.name}` is also read as a number in forward "
                                          f"(`{code.strip()}`): pruning it would change that value")
                break


def _hooked_modules(model: nn.Module) -> dict[str, str]:
    """Modules whose forward hooks fx cannot see (module name -> description); a global forward
    hook changes every module, so it is refused outright."""
    from torch.nn.modules import module as _module
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        hooks = getattr(_module, kind, {})
        if hooks:
            fn = next(iter(hooks.values()))
            raise PruningError(f"a global forward hook is registered ({getattr(fn, '__qualname__', fn)!r}, "
                               f"torch.nn.modules.module.register_module_forward{'_pre' if 'pre' in kind else ''}"
                               "_hook): torch.fx cannot see what it does to every module's output, so pruning "
                               "could change the function. Remove it (handle.remove()) before pruning.")
    out = {}
    for name, mod in named_modules(model):
        fns = [h for h in list(mod._forward_hooks.values()) + list(mod._forward_pre_hooks.values())
               if not _known_hook(h)]
        if fns:
            what = getattr(fns[0], "__qualname__", type(fns[0]).__name__)
            out[name] = f"`{name or type(model).__name__}` has a forward hook ({what}) that torch.fx cannot see"
    return out


def _known_hook(h) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm
    return isinstance(h, WeightNorm)


def _node_modules(node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(node.target)
    return paths


def walk(ctx: BuildContext, gm: fx.GraphModule, decided=()) -> None:
    env: dict[fx.Node, Any] = {}
    decided = set(decided)
    canonical = ctx.canonical
    hooked = ctx.hooked
    for node in gm.graph.nodes:
        ctx.node = node
        out = _template(node)
        if node.op == "placeholder":
            env[node] = _input_value(ctx, node, out)
            continue
        if node.op == "get_attr":
            env[node] = _get_attr(ctx, node, out, canonical)
            continue
        args = fx.node.map_arg(node.args, lambda n: env.get(n))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env.get(n))
        if node.op == "output":
            ctx.freeze([args, kwargs], "reaches the model output (output shapes never change)")
            if ctx.output_structure is None:
                ctx.output_structure = _structure(node.args[0])
            continue
        env[node] = _apply(ctx, node, args, kwargs, out)
        if hooked:
            hit = [p for p in _node_modules(node) if any(p == h or p.startswith(h + ".") or not h for h in hooked)]
            if hit:
                h = next(h for h in hooked if any(p == h or p.startswith(h + ".") or not h for p in hit))
                ctx.freeze([args, kwargs, env[node]], hooked[h])
        if node.name in decided:
            ctx.freeze(env[node], f"a width decides control flow (`if`/`assert`) at {ctx.where()}")


def _structure(arg):
    """Nested shapes of the traced outputs, to compare against the pruned model's outputs."""
    if isinstance(arg, fx.Node):
        tm = arg.meta.get("tensor_meta")
        return _meta_structure(tm)
    if isinstance(arg, (tuple, list)):
        return [_structure(a) for a in arg]
    if isinstance(arg, dict):
        return {k: _structure(v) for k, v in arg.items()}
    return None


def _meta_structure(tm):
    if tm is None:
        return None
    if hasattr(tm, "shape") and hasattr(tm, "dtype"):
        return tuple(int(s) for s in tm.shape)
    if isinstance(tm, (tuple, list)):
        return [_meta_structure(t) for t in tm]
    if isinstance(tm, dict):
        return {k: _meta_structure(v) for k, v in tm.items()}
    return None


def _input_value(ctx, node, out):
    """Model inputs get atoms of their own, frozen, so what they feed says why it is fixed."""
    return _frozen_output(ctx, out, f"model input `{node.target}` (input widths never change)")


def _frozen_output(ctx, out, why: str):
    """A value whose widths never change (a model input, the output of an op we cannot see
    into): its dims get atoms of their own, frozen for ``why``, so what reads them names it
    (instead of just meeting a fixed-size tensor)."""
    def one(v):
        if isinstance(v, TV):
            for d in range(1, v.ndim):  # dim 0 is the batch, or an untracked leading dim
                if v.shape[d] > 1 and d not in v.track:
                    v.track[d] = ctx.atoms.new(v.shape[d])
                    ctx.atoms.freeze(v.track[d], why)
        elif isinstance(v, (tuple, list)):
            for o in v:
                one(o)
        return v
    return one(out)


def _get_attr(ctx, node, out, canonical):
    obj = ctx.model
    try:
        for part in node.target.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        # a constant fx made of a tensor forward computed from no module attribute (a
        # `torch.tensor(...)` literal): its values are data and its sizes are fixed
        return TV(tuple(out.shape), {}) if isinstance(out, TV) else None
    if not isinstance(obj, torch.Tensor):
        return None
    name = canonical.get(id(obj), node.target)
    kind = "param" if isinstance(obj, nn.Parameter) else "buffer"
    if not (obj.is_floating_point() or obj.is_complex()):
        return TV(tuple(obj.shape), {}, origin=name)  # index tables and masks are data, not channels
    track = {d: ctx.tensor_atoms(name, d, s, kind) for d, s in enumerate(obj.shape) if s > 1}
    return TV(tuple(obj.shape), track, origin=name)


def _apply(ctx, node, args, kwargs, out):
    rule, module = None, None
    if node.op == "call_module":
        module = ctx.modules[node.target]
        rule = MODULE_RULES.get(_trace.rule_type(module, MODULE_RULES))
        kind = f"module {type(module).__name__}"
    elif node.op == "call_function":
        rule = FUNCTION_RULES.get(node.target)
        kind = "function"
    elif node.op == "call_method":
        rule = METHOD_RULES.get(node.target)
        kind = "method"
    if rule is None and node.op == "call_function" and isinstance(node.target, type) \
            and issubclass(node.target, tuple):
        return tuple(args)  # a namedtuple of outputs (GoogLeNetOutputs): just a container
    if rule is None:
        if module is not None and node.target in ctx.opaque:
            why = f"opaque module `{node.target}` ({type(module).__name__}) could not be traced: {ctx.opaque[node.target]}"
        else:
            why = f"no coupling rule for {kind} {ctx.where()}"
        ctx.freeze([args, kwargs], why)
        return _frozen_output(ctx, out, why)
    try:
        if module is not None:
            return rule(ctx, node, module, args, kwargs, out)
        return rule(ctx, node, args, kwargs, out)
    except Exception as exc:  # a rule that cannot prove its case must freeze, never guess
        ctx.freeze([args, kwargs], f"rule for {ctx.where()} could not apply ({type(exc).__name__}: {exc})")
        return out


ATTENTION_MODES = ("heads", "head_dim")


def _readers(gm, names: Iterable[str]) -> dict[str, str]:
    """Tensor name -> the innermost module whose forward reads it: a leaf module reads every
    tensor below it; a ``get_attr`` is read by the module on top of fx's module stack.
    ``names``: every parameter and buffer name of the model."""
    from ..trace.symbolic import names_under
    under = names_under(names)
    seen: dict[str, set] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            for n in under.get(node.target, ()):
                seen.setdefault(n, set()).add(node.target)
        elif node.op == "get_attr" and isinstance(node.target, str):
            stack = node.meta.get("nn_module_stack") or {}
            inner = next(reversed(stack.values()))[0] if stack else ""
            seen.setdefault(node.target, set()).add(inner if isinstance(inner, str) else "")
    # read by two modules: the root, whose forward spans both, is where it is zeroed
    out = {n: (next(iter(r)) if len(r) == 1 else "") for n, r in seen.items()}
    return out


#: layers whose FLOPs (as counted: convolution and matrix-product formulas) are their weight's
#: element count times a factor set by the positions they run over, which pruning channels
#: does not change (a grouped convolution's weight holds its per-group widths already)
_WEIGHT_FLOP_LAYERS = frozenset({nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                 nn.ConvTranspose2d, nn.ConvTranspose3d})


def _flops_per_weight(gm) -> list | None:
    """``BuildContext.flops_per_weight`` from the FLOPs shape propagation recorded per node;
    None when any node that counted FLOPs is something else (attention's products of two
    activations, a functional convolution, a parametrized weight)."""
    sites = []
    for node in gm.graph.nodes:
        flops = node.meta.get("flops")
        if not flops:
            continue
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        w = mod._parameters.get("weight") if type(mod) in _WEIGHT_FLOP_LAYERS else None
        if w is None or not w.numel() or flops % w.numel() or "parametrizations" in mod._modules:
            return None
        sites.append((node.target, flops // w.numel()))
    return sites


def build_context(model: nn.Module, example_inputs: Any, leaf_names: Iterable[str] = (),
                  attention: str = "heads") -> tuple[BuildContext, list[str]]:
    load_optional_rules()
    for scan in MODEL_SCANNERS:
        scan(model)
    leaf_types = tuple(MODULE_RULES) + OPAQUE_TYPES
    real = model
    try:
        model = _trace.structural_copy(model)
    except Exception:  # an attribute deepcopy cannot handle: trace the model itself
        pass
    ctx = BuildContext(model, dict(named_modules(model, remove_duplicate=False)), attention=attention)
    params, buffers = _named_tensors(ctx.modules)
    ctx.canonical = _canonical_names(params + buffers)
    ctx.hooked = _hooked_modules(real)
    with _progress.stage("trace"):
        tr = _trace.trace(model, example_inputs, leaf_types=leaf_types, leaf_names=leaf_names, training=False,
                          real_model=real)
    ctx.opaque = dict(tr.opaque)
    ctx.meta_ok = tr.meta_ok
    ctx.macs = tr.macs
    ctx.readers = _readers(tr.gm, [n for n, _ in params + buffers])
    ctx.size_generic = not tr.decided and not tr.opaque and tr.meta_ok
    ctx.flops_per_weight = _flops_per_weight(tr.gm) if tr.macs is not None else None
    with _progress.stage("build"):
        walk(ctx, tr.gm, tr.decided)
    reached = set(tr.reached_params)
    all_params = set(_canonical_names(params).values())  # named_parameters(): each tensor's first name
    notes = []
    if all_params - reached:
        # Branches that run only in training mode (auxiliary classifiers) read feature maps too:
        # add the training-mode graph's constraints so both modes stay valid.
        snapshot = ctx.snapshot()
        try:
            with _progress.stage("trace"):  # training mode
                tr2 = _trace.trace(model, example_inputs, leaf_types=leaf_types, leaf_names=leaf_names,
                                   training=True, real_model=real)
            ctx.opaque.update(tr2.opaque)
            with _progress.stage("build"):
                walk(ctx, tr2.gm, tr2.decided)
            reached |= tr2.reached_params
        except Exception as exc:
            ctx.restore(snapshot)  # a half-walked graph would be inconsistent
            notes.append(f"training-mode trace failed ({type(exc).__name__}: {exc}); branches that run "
                         f"only in training mode were not analyzed, so use the pruned model in eval mode")
    _freeze_unread(ctx)
    _freeze_widths_read_as_numbers(ctx)
    for name, why in ctx.opaque.items():
        notes.append(f"`{name}` was kept whole (opaque): {why}")
    missing = sorted(all_params - reached)
    if missing:
        notes.append(f"{len(missing)} parameters are never used by forward (e.g. {missing[0]}); they are not pruned")
    return ctx, notes
