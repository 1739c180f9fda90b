"""Step 1 of the pipeline: trace a model with ``torch.fx`` and propagate shapes.

The trace is for analysis only; surgery always works on the user's own module.
Shape propagation runs on ``meta``-device copies of the parameters and inputs, so it
allocates no real memory, never touches the model's weights or BatchNorm statistics, and
also works for models on the ``meta`` device.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.nn.utils import stateless
from torch.utils import _pytree as pytree

from .._fast_meta import on_meta, to_meta
from ..errors import TraceError


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tuple/list is positional args, a dict is keyword args, anything else one positional arg."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def rule_type(m: nn.Module, types) -> type | None:
    """The type whose rule applies to ``m``: its own, or a base class's when ``m`` inherits that
    class's ``forward`` unchanged (e.g. torchvision's ``Conv3DSimple(nn.Conv3d)``). Subclasses that
    override ``forward`` (torchvision's ``LayerNorm2d``) are traced through instead."""
    for base in type(m).__mro__:
        if base in types:
            return base if type(m).forward is base.forward else None
        if base is nn.Module:
            break
    return None


class _SequenceLength:
    def __len__(self):
        # ``len(x.shape)``, and the length hint Python takes before ``*x.shape`` unpacking: the
        # length of a traced sequence, from the example input (see ``_Tracer.iter``)
        value = self.tracer._concrete(self.node)
        if isinstance(value, (tuple, list)):
            return len(value)
        return fx.Proxy.__len__(self)

    def __getattr__(self, k):
        return _Attribute(self, k)  # x.shape is an attribute proxy: it needs the same length


class _Proxy(_SequenceLength, fx.Proxy):
    pass


class _Attribute(_SequenceLength, fx.proxy.Attribute):
    pass


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str], meta_args: tuple = ()):
        super().__init__()
        # buffers become get_attr nodes (not constants folded from their values), so the rules
        # see them and the surgeon can slice them (FrozenBatchNorm2d, `self.slopes * self.dist`)
        self.proxy_buffer_attributes = True
        self._meta_args = meta_args
        self._evaluating = False
        self.decided: list[str] = []  # nodes whose concrete value decided an `if`/`assert`
        self.record_stack_traces = True  # source lines let rules see which attribute a constant came from
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names
        self._stack: list[str] = []
        self.failed_in: str | None = None  # innermost module whose forward raised

    def to_bool(self, obj) -> bool:
        """Shape checks (``assert x.shape[-2:] == (1, 1)``, ``if x.dim() == 4``) are decided on the
        example input by running the graph so far on meta tensors; the builder then pins every width
        the decision read. Data-dependent conditions cannot be decided on meta tensors and fail as
        usual (the module becomes an opaque leaf)."""
        value = self._concrete(obj.node)
        if isinstance(value, fx.Proxy):  # evaluation leaked into tracing: never recurse on it
            raise fx.proxy.TraceError(f"could not evaluate the condition {obj.node.name!r} on the example input")
        if isinstance(value, torch.Tensor):
            if value.device.type == "meta":
                raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")
        self.decided.append(obj.node.name)
        return bool(value)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def iter(self, obj):
        """Iteration over a traced *sequence* (``b, n, h = *x.shape, self.heads``, ``list(x.chunk(2,
        1))``) unrolls to its length on the example input. That length is a rank or a number of
        parts, which pruning never changes (the split/chunk rules keep the number of parts or
        freeze). Iterating over a tensor (its batch dim) still fails: that becomes an opaque leaf."""
        value = self._concrete(obj.node)
        if isinstance(value, (tuple, list)):
            return iter([obj[i] for i in range(len(value))])
        return super().iter(obj)

    def _concrete(self, node):
        if not self._meta_args:
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")
        graph, env = fx.Graph(), {}
        for n in self.graph.nodes:
            env[n] = graph.node_copy(n, lambda a: env[a])
            if n is node:
                break
        graph.output(env[node])
        try:
            from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
        except ImportError:  # pragma: no cover
            _unpatched = contextlib.nullcontext
        self._evaluating = True  # module calls made while evaluating must run, not be traced
        try:
            with _unpatched(), torch.no_grad():
                # Built unpatched: the tracer's patched Module.__getattr__ would hand the
                # GraphModule proxies instead of the parameters its get_attr nodes copy.
                gm = fx.GraphModule(self.root, graph)
                return gm(*self._meta_args[:sum(1 for n in graph.nodes if n.op == "placeholder")])
        except Exception as exc:
            raise fx.proxy.TraceError(f"control flow on a value that could not be evaluated ({exc})") from exc
        finally:
            self._evaluating = False

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        # Source lines are only read to tell which attribute an integer constant came from, and
        # capturing a traceback per node is a large part of tracing: record them where needed.
        self.record_stack_traces = _has_int_constant((args, kwargs))
        return super().create_node(kind, target, args, kwargs, name, type_expr)

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        self._stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self._stack.pop()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Exact type match: subclasses (e.g. torchvision's LayerNorm2d, which permutes inside
        # its forward) must be traced through, not treated as their base class.
        if qualname in self._leaf_names or rule_type(m, self._leaf_types) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def _has_int_constant(obj) -> bool:
    if type(obj) is int:
        return abs(obj) > 1
    if isinstance(obj, (tuple, list)):
        return any(_has_int_constant(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_int_constant(o) for o in obj.values())
    if isinstance(obj, slice):
        return _has_int_constant((obj.start, obj.stop, obj.step))
    return False


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool):
    """Temporarily set every module's mode; restore each module's own flag afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            m.training = training
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@dataclass
class Trace:
    """A traced graph with shapes: ``node.meta['tensor_meta']`` holds each node's output meta."""

    gm: fx.GraphModule
    training: bool
    reached_params: set[str] = field(default_factory=set)
    opaque: dict[str, str] = field(default_factory=dict)  # module made a leaf → why it could not be traced
    decided: list[str] = field(default_factory=list)  # nodes whose value decided control flow


def structural_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device: same classes,
    names, attributes and tied weights, no memory. Tracing runs on it, so code in ``forward`` that
    caches things on ``self`` never touches the user's module.

    Each module is copied one level deep (its own dictionaries, lists and sets are new; other
    attribute values are shared), which is what ``forward`` code can write to, at a fraction of a
    ``deepcopy``'s cost."""
    tensors: dict[int, torch.Tensor] = {}
    modules: dict[int, nn.Module] = {}

    def tensor(t):  # one meta twin per tensor, so tied weights stay tied
        if t is None:
            return None
        out = tensors.get(id(t))
        if out is None:
            meta = t.detach().to("meta")
            out = tensors[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else meta
        return out

    def value(v):
        if isinstance(v, nn.Module):
            return module(v)
        if type(v) in (list, tuple, set):
            return type(v)(value(x) for x in v)
        if type(v) is dict:
            return {k: value(x) for k, x in v.items()} if v else {}
        return v

    def module(m):
        out = modules.get(id(m))
        if out is not None:
            return out
        if not _plainly_copyable(type(m)):
            # a class that copies itself its own way: deepcopy it, with the same meta twins
            memo = {id(t): tensor(t) for t in list(m.parameters()) + list(m.buffers())}
            out = modules[id(m)] = copy.deepcopy(m, memo)
            return out
        out = modules[id(m)] = object.__new__(type(m))
        state = dict(m.__dict__)
        for k, v in state.items():
            if k == "_parameters" or k == "_buffers":
                state[k] = type(v)((n, tensor(t)) for n, t in v.items())
            elif k == "_modules":
                state[k] = type(v)((n, None if c is None else module(c)) for n, c in v.items())
            elif k in _FORWARD_HOOK_DICTS:
                # user hooks must not run on the analysis copy (their side effects would reach the
                # user's objects with meta tensors); the modules they sit on are frozen instead.
                # Weight-norm's pre-hook computes the weight, so it stays.
                state[k] = OrderedDict((i, h) for i, h in v.items() if _computes_weights(h))
            else:
                state[k] = v.copy() if type(v) is OrderedDict else value(v)  # hook dicts and the like
        object.__setattr__(out, "__dict__", state)
        return out

    return module(model)


_FORWARD_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                       "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _computes_weights(hook) -> bool:
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
    return isinstance(hook, (WeightNorm, SpectralNorm))


_PLAIN: dict[type, bool] = {}


def _plainly_copyable(cls: type) -> bool:
    """True unless the class copies itself its own way (``__deepcopy__``/``__copy__``/
    ``__getstate__`` below nn.Module, e.g. fx's GraphModule) or keeps state in ``__slots__``."""
    ok = _PLAIN.get(cls)
    if ok is None:
        own = [c for c in cls.__mro__ if c not in (nn.Module, object)]
        ok = _PLAIN[cls] = not any(k in vars(c) for c in own
                                   for k in ("__deepcopy__", "__copy__", "__getstate__", "__reduce__",
                                             "__reduce_ex__", "__slots__"))
    return ok


def trace(model: nn.Module, example_inputs: Any, *, leaf_types: Iterable[type] = (),
          leaf_names: Iterable[str] = (), training: bool = False, real_model: nn.Module | None = None) -> Trace:
    """Trace ``model`` symbolically in the given mode and attach shapes from ``example_inputs``.

    When tracing fails inside a submodule, that submodule is kept whole (an *opaque leaf*) and
    tracing is retried, recursively, so the rest of the model is still analyzed. Only a failure in
    the top-level ``forward`` itself raises ``TraceError``.
    """
    args, kwargs = normalize_inputs(example_inputs)
    leaf_names = set(leaf_names)
    opaque: dict[str, str] = {}
    meta_args = _meta_positional(model, args, kwargs)
    with _modes(model, training):
        while True:
            tracer = _Tracer(tuple(leaf_types), frozenset(leaf_names), meta_args)
            try:
                graph = tracer.trace(model)
                break
            except Exception as exc:  # fx raises many types; all mean "not traceable as is"
                culprit = tracer.failed_in
                if culprit and culprit not in leaf_names:
                    leaf_names.add(culprit)
                    opaque[culprit] = f"{type(exc).__name__}: {_first_line(exc)}"
                    continue
                raise TraceError(_untraceable_message(model, exc)) from exc
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        _propagate_shapes(gm, model, args, kwargs, real_model or model)
    reached = set()
    named_modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            reached.add(node.target)
        elif node.op == "call_module":
            mod = named_modules[node.target]
            reached.update(f"{node.target}.{n}" for n, _ in mod.named_parameters())
    return Trace(gm, training, reached, opaque, tracer.decided)


def _meta_positional(model: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """The example inputs as meta tensors, in forward's parameter order (for deciding shape checks)."""
    import inspect
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    values = list(args) + [kwargs[p] for p in params[len(args):] if p in kwargs]
    return tuple(to_meta(values))


def _untraceable_message(model: nn.Module, exc: BaseException) -> str:
    if isinstance(getattr(model, "backbone", None), nn.Module):
        hint = ("This model has a `.backbone`: prune that part in place instead, e.g. "
                "dp.prune(model.backbone, torch.randn(1, 3, H, W), ratio=0.5); the rest of "
                "the model keeps working because the backbone's output widths never change.")
    else:
        hint = ("Its top-level forward must be traceable: move data-dependent control flow into a "
                "submodule (which is then kept whole), or prune a traceable submodule instead.")
    return (f"torch.fx could not trace {type(model).__name__}.forward "
            f"({type(exc).__name__}: {_first_line(exc)}). {hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class _NodeFailure(RuntimeError):
    pass


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output metadata (like fx's ShapeProp, without
    ShapeProp's deep copy of the module)."""

    def call_function(self, target, args, kwargs):
        # fx freezes list constants into immutable_list; real functions may mutate their copy
        thaw = lambda v: list(v) if isinstance(v, list) else v  # noqa: E731
        return super().call_function(target, tuple(thaw(a) for a in args), {k: thaw(v) for k, v in kwargs.items()})

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _NodeFailure(f"at node `{n.name}` ({n.format_node()[:120]}): {type(exc).__name__}: {msg}") from exc
        found = []

        def meta(x):
            if isinstance(x, torch.Tensor):
                found.append(True)
                return _extract_tensor_metadata(x)
            return x

        tm = pytree.tree_map(meta, result)
        if found:
            n.meta["tensor_meta"] = tm
        return result


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, args: tuple, kwargs: dict, real: nn.Module) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat_args = list(args)
    for node in placeholders[len(args):]:
        if node.target in kwargs:
            flat_args.append(kwargs[node.target])
        elif node.args:  # default value recorded by fx
            flat_args.append(node.args[0])
        else:
            raise TraceError(f"example_inputs gives no value for the forward argument '{node.target}'")
    state = {**dict(gm.named_parameters(remove_duplicate=False)),
             **dict(gm.named_buffers(remove_duplicate=False))}
    # BatchNorm in training mode refuses batch 1; the trace is already fixed, so shapes can be
    # propagated with every module in eval mode.
    with _modes(gm, False), torch.no_grad():
        try:
            # meta tensors: shapes only, no memory, and the model's own tensors are never touched
            with on_meta(gm):
                _ShapeRecorder(gm).run(*to_meta(flat_args))
            return
        except Exception:
            pass  # some ops have no meta kernel or compare devices: use real tensors
        try:
            # the real tensors, by name, from the user's model (the traced copy may hold meta ones)
            real_state = {k: v.detach() for k, v in real.named_parameters(remove_duplicate=False)}
            real_state.update({k: v.detach().clone() for k, v in real.named_buffers(remove_duplicate=False)})
            real_state = {k: v for k, v in real_state.items() if k in state}
            with stateless._reparametrize_module(gm, real_state):
                _ShapeRecorder(gm).run(*flat_args)
        except Exception as exc:
            raise TraceError(
                f"example_inputs: running {type(model).__name__} on them failed {str(exc).splitlines()[0]}. Check that "
                f"example_inputs has the shape and dtype the model expects.") from exc
