"""Step 1 of the pipeline: trace a model with ``torch.fx`` and propagate shapes.

The trace is for analysis only; surgery always works on the user's own module.
Shape propagation runs on ``meta``-device copies of the parameters and inputs, so it
allocates no real memory, never touches the model's weights or BatchNorm statistics, and
also works for models on the ``meta`` device.
"""
from __future__ import annotations

import contextlib
import operator
from collections import OrderedDict
import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.nn.utils import stateless
from torch.utils import _pytree as pytree

from .._fast_meta import on_meta, to_meta
from .._isolation import restore, side_effects_undone, snapshot
from .._walk import modules as _modules_of, named_modules as _named_modules, named_tensors
from ..errors import TraceError
from ..surgery import HISTORY_ATTR, _resolve, _submodule
from .inputs import Binding, bind, normalize_inputs  # noqa: F401  (normalize_inputs is re-exported)

try:  # generates the graph's Python code only if something calls or prints it: the analysis never does
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover  (older torch)
    _GraphModule = fx.GraphModule


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

    # Python-level uses of a traced integer (``range(n)``, ``python_list[i]``, ``int(n)``,
    # ``math.sqrt(d)``) take its value on the example input. The tracer records the node as
    # deciding, so the builder pins every width the value was read from: a size baked into the
    # graph as a constant can then never go stale.
    def __index__(self):
        return self.tracer.concretize(self, int)

    def __int__(self):
        return self.tracer.concretize(self, int)

    def __float__(self):
        return self.tracer.concretize(self, float)


class _Proxy(_SequenceLength, fx.Proxy):
    def __setitem__(self, idx, value):
        # ``y[:, 2::3] = y[:, 2::3].sigmoid()`` (Ultralytics' Pose head): recorded as an in-place
        # ``operator.setitem``; the rule ties the written slice to the value's channels
        return self.tracer.create_proxy("call_function", operator.setitem, (self, idx, value), {})


class _Attribute(_SequenceLength, fx.proxy.Attribute):
    pass


class _Unknown:
    """A node whose value on the meta example input could not be computed (see ``_concrete``)."""

    def __init__(self, why: str):
        self.why = why


class _ModuleStack(OrderedDict):
    """fx's module stack, copied onto every node it creates (``nn_module_stack``) with
    ``copy.copy``, whose generic path cost ten times a dict copy, per node of every trace."""

    def __copy__(self):
        return _ModuleStack(self)


class _Scope(fx.proxy.Scope):
    """fx's scope, copied (``copy.copy``) at every module call: the same, copied directly."""

    def __copy__(self):
        return _Scope(self.module_path, self.module_type)


class _Graph(fx.Graph):
    """fx's graph, less a scan of every new node's arguments (a pytree walk) for raw symbolic
    integers to warn about: a symbolic trace of concrete-shaped meta values makes none."""

    def create_node(self, op, target, args=None, kwargs=None, name=None, type_expr=None):
        node = super().create_node(op, target, None, None, name, type_expr)
        if args:  # (fx's own accounting of uses and users, as when given to the constructor)
            node.args = args
        if kwargs:
            node.kwargs = kwargs
        return node


class _Tracer(fx.Tracer):
    @property
    def graph(self) -> fx.Graph:
        return self.__dict__["graph"]

    @graph.setter
    def graph(self, g: fx.Graph):
        # fx.Tracer.trace makes a plain fx.Graph: it becomes a _Graph (same state, one method less costly)
        if type(g) is fx.Graph:
            g.__class__ = _Graph
        self.__dict__["graph"] = g

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str], meta_args: tuple = (),
                 real: nn.Module | None = None):
        super().__init__()
        self.module_stack = _ModuleStack()
        self.scope = _Scope("", None)
        self._real = real
        # buffers become get_attr nodes (not constants folded from their values), so the rules
        # see them and the surgeon can slice them (FrozenBatchNorm2d, `self.slopes * self.dist`)
        self.proxy_buffer_attributes = True
        self._meta_args = meta_args
        self._evaluating = False
        self.decided: list[str] = []  # nodes whose concrete value decided an `if`/`assert`
        self.record_stack_traces = True  # source lines let rules see which attribute a constant came from
        self._leaf_types = frozenset(leaf_types)
        self._leaf_of_type: dict[type, bool] = {}
        self._leaf_names = leaf_names
        self._stack: list[str] = []
        self.failed_in: str | None = None  # innermost module whose forward raised
        self._values: dict = {}  # node -> its value on the meta example input (see _concrete)
        self._interp = None

    def _run_real(self, n: fx.Node):
        """A leaf module whose kernels have no meta support (e.g. ``_grouped_mm`` in float32):
        run the user's module on zero tensors of the inputs' shapes (on a detached copy, so no
        state reaches it) and keep the output's metadata."""
        real = self._real.get_submodule(n.target)
        zeros = lambda t: torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) and t.is_meta else t  # noqa: E731
        args = pytree.tree_map(zeros, fx.node.map_arg(n.args, lambda a: self._values[a]))
        kwargs = pytree.tree_map(zeros, fx.node.map_arg(n.kwargs, lambda a: self._values[a]))
        with detached(real, meta=False) as twin:
            return to_meta(twin(*args, **kwargs))

    def concretize(self, proxy, kind):
        """The value of a traced scalar on the example input, as ``kind``; recorded as deciding."""
        value = self._concrete(proxy.node)
        if isinstance(value, torch.Tensor):
            if value.device.type == "meta" or value.numel() != 1:
                raise fx.proxy.TraceError(f"{kind.__name__}() of a traced tensor depends on its data")
            value = value.item()
        if isinstance(value, fx.Proxy) or not isinstance(value, (int, float, bool)):
            raise fx.proxy.TraceError(f"could not take {kind.__name__}() of {proxy.node.name!r} on the example input")
        self.decided.append(proxy.node.name)
        return kind(value)

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
        """``node``'s value on the example input (meta tensors). Values are kept between calls
        and only the nodes added since are run, in graph order (so in-place ops apply in order)."""
        if node in self._values:
            return self._values[node]
        if not self._meta_args:
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")
        if self._evaluating:
            # A traced value reached a module run for its value (an object holding proxies, as a
            # detector's ImageList): evaluating it would evaluate itself again, to Python's
            # recursion limit, which on a detector took minutes. Fail at once instead.
            raise fx.proxy.TraceError(f"evaluating {node.name!r} needs a value that is itself being evaluated")
        try:
            from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
        except ImportError:  # pragma: no cover
            _unpatched = contextlib.nullcontext
        self._evaluating = True  # module calls made while evaluating must run, not be traced
        try:
            with _unpatched(), torch.no_grad():
                # Unpatched: the tracer's patched Module.__getattr__ would hand the interpreter
                # proxies instead of the parameters its get_attr nodes read.
                if self._interp is None:
                    self._interp = fx.Interpreter(self.root, garbage_collect_values=False, graph=self.graph)
                    self._interp.env = self._values
                    self._placeholders = 0
                for n in self.graph.nodes:
                    if n in self._values:
                        continue
                    if n.op == "placeholder":
                        self._values[n] = self._meta_args[self._placeholders]
                        self._placeholders += 1
                    elif any(isinstance(self._values.get(a), _Unknown) for a in n.all_input_nodes):
                        self._values[n] = _Unknown(self._values[next(
                            a for a in n.all_input_nodes if isinstance(self._values.get(a), _Unknown))].why)
                    else:
                        try:
                            try:
                                self._values[n] = self._interp.run_node(n)
                            except Exception:
                                if n.op != "call_module" or self._real is None:
                                    raise
                                self._values[n] = self._run_real(n)
                        except Exception as exc:
                            # e.g. a kernel with no meta support: only what depends on it is unknown
                            self._values[n] = _Unknown(f"{type(exc).__name__}: {_first_line(exc)}")
                    if n is node:
                        break
                value = self._values[node]
                if isinstance(value, _Unknown):
                    raise RuntimeError(value.why)
                return value
        except Exception as exc:
            raise fx.proxy.TraceError(f"control flow on a value that could not be evaluated ({exc})") from exc
        finally:
            self._evaluating = False

    def create_arg(self, a):
        """Objects fx has no node for (a transformers ``DynamicCache`` handed to a leaf module)
        become attributes of the root read with ``get_attr``: the leaf still runs in shape
        propagation, and the builder sees a value that is not a tensor."""
        # the common arguments first, as fx ends up treating them: fx tests each against
        # nn.Parameter (a Python-level isinstance), Tensor, Module and more before that
        kind = type(a)
        if kind is _Proxy or kind is _Attribute:
            return a.node
        if kind in _ATOMS:
            return a
        if kind is tuple or kind is list:
            return kind([self.create_arg(x) for x in a])
        try:
            return super().create_arg(a)
        except NotImplementedError:
            consts = self.__dict__.setdefault("_object_consts", {})
            name = consts.get(id(a))
            if name is None:
                name = consts[id(a)] = f"_depgraph_prune_object_{len(consts)}"
                setattr(self.root, name, a)
                self.__dict__.setdefault("_object_refs", []).append(a)  # keep id(a) unique
            return self.create_node("get_attr", name, (), {})

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        # Source lines are only read to tell which attribute an integer constant came from, and
        # capturing a traceback per node is a large part of tracing: record them where needed.
        self.record_stack_traces = _has_int_constant((args, kwargs)) and not _takes_dims_only(kind, target)
        return super().create_node(kind, target, args, kwargs, name, type_expr)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        """fx's ``getattr`` finds a parameter's name by walking ``root.named_parameters()`` on
        every access (quadratic in a model that reads parameters in ``forward``, as ConvNeXt's
        layer scales); the same lookup from one table per trace."""
        if not isinstance(attr_val, torch.Tensor):
            return attr_val  # (a submodule, mostly: what fx returns too, after a slow Parameter test)
        if self.param_shapes_constant:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        tables = getattr(self, "_name_tables", None)
        if tables is None or tables[0] is not self.root:
            params, buffers = {}, {}
            for n, p in self.root.named_parameters():
                params.setdefault(id(p), n)
            for n, b in self.root.named_buffers():
                buffers.setdefault(id(b), n)
            tables = self._name_tables = (self.root, params, buffers)
        name = tables[1].get(id(attr_val)) if isinstance(attr_val, nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes:
            name = tables[2].get(id(attr_val))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        if m not in (self.submodule_paths or {}) and not any(True for _ in m.parameters()) \
                and not any(True for _ in m.buffers()):
            # built inside forward (``nn.ReLU()(x)``, transformers' ``ACT2FN[name](x)``): it has
            # no weights of the model, so its forward is traced inline
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
        if qualname in self._leaf_names:
            return True
        kind = type(m)
        leaf = self._leaf_of_type.get(kind)
        if leaf is None:  # a question of the type alone (fx's own answer too): asked once per type
            leaf = self._leaf_of_type[kind] = rule_type(m, self._leaf_types) is not None or \
                super().is_leaf_module(m, qualname)
        return leaf


# Ops whose integer arguments are dim indices or part counts, never widths: the rules never ask
# which attribute those came from, so their nodes skip the (costly) stack-trace capture.
_DIMS_ONLY = frozenset({
    "permute", "transpose", "swapaxes", "swapdims", "flatten", "movedim", "moveaxis", "unsqueeze", "squeeze",
    "mean", "sum", "amax", "amin", "softmax", "log_softmax", "cat", "concat", "concatenate", "stack", "size",
    "dim", "chunk", "contiguous", "type_as", "cumsum", "argmax", "argmin", "norm", "var", "std"})


def _takes_dims_only(kind: str, target) -> bool:
    if kind == "call_method":
        return target in _DIMS_ONLY
    if kind == "call_function":
        return getattr(target, "__name__", None) in _DIMS_ONLY and \
            getattr(target, "__module__", "") in ("torch", "torch.nn.functional", "torch._C._VariableFunctions", None)
    return False


def _has_int_constant(obj) -> bool:
    kind = type(obj)
    if kind is int:
        return abs(obj) > 1
    if kind in _NO_INTS:  # (most arguments: nodes; asked at every node created)
        return False
    if isinstance(obj, (tuple, list)):
        for o in obj:
            if _has_int_constant(o):
                return True
        return False
    if isinstance(obj, dict):
        return _has_int_constant(tuple(obj.values()))
    if isinstance(obj, slice):
        return _has_int_constant((obj.start, obj.stop, obj.step))
    return False


_NO_INTS = frozenset({fx.Node, float, str, bool, type(None)})


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool):
    """Temporarily set every module's mode; restore each module's own flag afterwards."""
    saved = [(m, m.training) for m in _modules_of(model)]
    try:
        for m, flag in saved:
            if flag is not training:  # (an eval-mode model run in eval mode: nothing to switch)
                _set_training(m, training)
        yield
    finally:
        for m, flag in saved:
            if m.training is not flag:
                _set_training(m, flag)


def _set_training(m: nn.Module, flag: bool):
    # straight into the instance dict: nn.Module.__setattr__ searches its parameter, buffer and
    # module tables first, which made mode switches a visible cost on models of many modules
    d = m.__dict__
    if type(d.get("training")) is bool:
        d["training"] = flag
    else:
        m.training = flag


@dataclass
class Trace:
    """A traced graph with shapes: ``node.meta['tensor_meta']`` holds each node's output meta."""

    gm: fx.GraphModule
    training: bool
    reached_params: set[str] = field(default_factory=set)
    opaque: dict[str, str] = field(default_factory=dict)  # module made a leaf → why it could not be traced
    decided: list[str] = field(default_factory=list)  # nodes whose value decided control flow
    meta_ok: bool = True  # shapes propagated on meta tensors (False: some kernel needed real ones)
    #: MACs of one forward pass on the example inputs, counted during shape propagation (the
    #: same count as ``measure.count_ops``); None when propagation needed the real tensors
    macs: int | None = None


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
            meta = torch.empty_like(t, device="meta")  # (what .detach().to("meta") makes, in one op)
            out = tensors[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else meta
        return out

    def value(v):
        if type(v) in _ATOMS:
            return v
        if isinstance(v, nn.Module):
            return module(v)
        if type(v) is tuple and all(type(x) in _ATOMS for x in v):
            return v  # kernel sizes, strides and the like: immutable, nothing inside to copy
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
            kind = type(v)
            if kind in _ATOMS or k == HISTORY_ATTR:
                # (our pruning record: lists of kept positions, no modules, never written by forward)
                continue
            if kind in _EMPTY_BOXES and not v:  # most of a module's tables: a new empty one
                state[k] = kind()
            elif k == "_parameters" or k == "_buffers":
                state[k] = kind((n, tensor(t)) for n, t in v.items())
            elif k == "_modules":
                state[k] = kind((n, None if c is None else module(c)) for n, c in v.items())
            elif k in _FORWARD_HOOK_DICTS:
                # user hooks must not run on the analysis copy (their side effects would reach the
                # user's objects with meta tensors); the modules they sit on are frozen instead.
                # Weight-norm's pre-hook computes the weight, so it stays.
                state[k] = OrderedDict((i, h) for i, h in v.items() if _computes_weights(h))
            else:
                state[k] = v.copy() if kind is OrderedDict else value(v)  # hook dicts and the like
        object.__setattr__(out, "__dict__", state)
        return out

    return module(model)


_ATOMS = frozenset({bool, int, float, str, type(None)})
_FORWARD_HOOK_DICTS = frozenset({"_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                                 "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"})
_EMPTY_BOXES = frozenset({dict, OrderedDict, list, set})


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
    binding = bind(model, example_inputs)
    leaf_names = set(leaf_names)
    opaque: dict[str, str] = {}
    meta_args = tuple(to_meta(binding.leaves))
    with _modes(model, training):  # one switch (and walk) for the trace and the propagation
        gm, tracer = _trace_graph(model, binding, leaf_types, leaf_names, opaque, meta_args, real_model)
        meta_ok, macs = _propagate_shapes(gm, model, binding, real_model or model)
    reached = set()
    under = names_under(named_tensors(model, buffers=False))
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            reached.add(node.target)
        elif node.op == "call_module":
            reached.update(under.get(node.target, ()))
    return Trace(gm, training, reached, opaque, tracer.decided, meta_ok, macs)


def _trace_graph(model, binding, leaf_types, leaf_names, opaque, meta_args, real_model):
    """fx's trace of ``model`` through its entry function, retried with the module that failed
    made an opaque leaf; returns the graph module and the tracer."""
    with _entry(model, binding), _torch_patches():
        # what forward stores on self while traced (proxies: `self.shape = x.shape`) is put back
        # after every attempt, or the retry and the shape propagation would read stale proxies
        saved = snapshot(model)
        while True:
            tracer = _Tracer(tuple(leaf_types), frozenset(leaf_names), meta_args, real_model)
            tracer.traced_func_name = _ENTRY
            try:
                graph = tracer.trace(model)
                break
            except Exception as exc:  # fx raises many types; all mean "not traceable as is"
                restore(saved)
                culprit = tracer.failed_in
                if culprit and culprit not in leaf_names:
                    leaf_names.add(culprit)
                    opaque[culprit] = f"{type(exc).__name__}: {_first_line(exc)}"
                    continue
                raise TraceError(_untraceable_message(model, exc)) from exc
            finally:
                tracer._values.clear()  # meta values of the whole graph: drop them now
        gm = _graph_module(tracer.root, graph, type(model).__name__)
        restore(saved)
        _keep_constants(model, gm)
    return gm, tracer


def _graph_module(root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """``GraphModule(root, graph, class_name)``, built faster: the module tree fx would copy (the
    modules and tensors the graph's nodes name, under plain ``nn.Module`` containers) made from
    the module tables directly. fx's copy goes through ``nn.Module.__getattr__`` and
    ``__setattr__`` at every level of every target, a few milliseconds a trace."""
    gm = _GraphModule(root, fx.Graph(), class_name)  # no targets: only fx's own setup
    sources = dict(_named_modules(root, remove_duplicate=False))
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module"):
            continue
        target = node.target
        if not isinstance(target, str):
            raise AssertionError(f"Expected node.target to be str, got {type(target)}")
        owner, _, attr = target.rpartition(".")
        if owner not in sources:  # a target fx resolves another way: let fx copy it
            fx.graph_module._copy_attr(root, gm, target)
            continue
        to, path, installed = gm, "", False
        for item in owner.split(".") if owner else ():
            path = f"{path}.{item}" if path else item
            have = to._modules.get(item)
            if have is sources[path]:  # a parent module itself is already installed
                installed = True
                break
            if have is None:
                have = to._modules[item] = nn.Module()
            to = have
        if installed:
            continue
        src = sources[owner]
        value = getattr(src, attr)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            to.register_buffer(attr, value, persistent=attr not in src._non_persistent_buffers_set)
        else:
            setattr(to, attr, value)
    gm.graph = graph
    if graph._tracer_cls and "<locals>" not in graph._tracer_cls.__qualname__:
        gm._tracer_cls = graph._tracer_cls
    if graph._tracer_extras:
        gm._tracer_extras = graph._tracer_extras
    return gm


def names_under(names: Iterable[str]) -> dict[str, list[str]]:
    """Module name -> the tensor names below it (one walk, not one per graph node)."""
    under: dict[str, list[str]] = {}
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            under.setdefault(".".join(parts[:i]), []).append(n)
    return under


def _keep_constants(model: nn.Module, gm: fx.GraphModule) -> None:
    """The tensor constants fx stored on the traced model (``_tensor_constant0``) are read by the
    graph builder from the model: put back the ones the restore removed."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_name, _, attr = node.target.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
            if not hasattr(owner, attr):
                setattr(owner, attr, getattr(gm.get_submodule(owner_name), attr))
        except AttributeError:
            pass


_ENTRY = "_depgraph_prune_entry"


@contextlib.contextmanager
def _entry(model: nn.Module, binding: Binding):
    """fx traces ``type(root).<traced_func_name>``: give the model's class, for the duration of
    the trace, a subclass holding the entry function made for these example inputs. The model
    traced is the structural copy, so its class is set back before anyone else sees it."""
    cls = type(model)
    sub = type(cls.__name__, (cls,), {_ENTRY: binding.entry, "__module__": cls.__module__,
                                      "__qualname__": cls.__qualname__})
    object.__setattr__(model, "__class__", sub)
    try:
        yield
    finally:
        object.__setattr__(model, "__class__", cls)


_SIZE_FACTORIES = ("ones", "zeros", "empty", "rand", "randn")
_DATA_FACTORIES = ("tensor", "as_tensor")
_DTYPE_INFO = ("finfo", "iinfo")


@contextlib.contextmanager
def _torch_patches():
    """Torch calls that fx cannot record when given traced values: ``torch.ones(b, n)`` (sizes
    as separate proxies: passed on as one tuple, which torch dispatches to the tracer),
    ``torch.tensor(n)`` (recorded as a call), ``torch.finfo(x.dtype)`` (the dtype is taken on
    the example input: pruning never changes it). Patched on the ``torch`` module only while
    tracing; with no proxy among the arguments each calls the original unchanged."""
    # Modules that torch imports lazily take references to these names when first imported;
    # one imported inside the patch window would keep the wrapper for good (torch._dynamo keeps
    # `torch.finfo` in a set of types, and `torch.compile` then fails on isinstance). Import it first.
    import torch._dynamo  # noqa: F401
    saved = {n: getattr(torch, n) for n in _SIZE_FACTORIES + _DATA_FACTORIES + _DTYPE_INFO}

    def has_proxy(obj):
        return any(isinstance(v, fx.Proxy) for v in pytree.tree_leaves(obj))

    def sized(orig):
        def call(*size, **kw):
            if len(size) > 1 and has_proxy(size):
                return orig(tuple(size), **kw)
            return orig(*size, **kw)
        return call

    def data(orig):
        def call(*args, **kw):
            found = [v for v in pytree.tree_leaves((args, kw)) if isinstance(v, fx.Proxy)]
            if found:
                return found[0].tracer.create_proxy("call_function", orig, args, kw)
            return orig(*args, **kw)
        return call

    def info(orig):
        def call(arg=None, *rest):
            if isinstance(arg, fx.Proxy):
                arg = arg.tracer._concrete(arg.node)
            return orig(*(() if arg is None else (arg,)), *rest)
        return call

    try:
        for n in _SIZE_FACTORIES:
            setattr(torch, n, sized(saved[n]))
        for n in _DATA_FACTORIES:
            setattr(torch, n, data(saved[n]))
        for n in _DTYPE_INFO:
            setattr(torch, n, info(saved[n]))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch, n, f)


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


def _tensor_metadata(t: torch.Tensor):
    """fx's ``TensorMetadata`` of ``t`` without its memory-format search (up to four contiguity
    tests per node, a visible part of propagation; nothing here reads the format)."""
    if t.is_quantized:
        return _extract_tensor_metadata(t)
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), None, False, {})


def _record_shapes(gm: fx.GraphModule, args, memo=None) -> Any:
    """Run the graph node by node and record each node's output metadata in
    ``node.meta["tensor_meta"]`` (what fx's ShapeProp records, without ShapeProp's deep copy of
    the module). A lean loop instead of ``fx.Interpreter``, whose per-node bookkeeping (a progress
    bar, a context manager, a dotted-path walk per module call) cost as much as the meta ops.
    ``memo``: a FLOP-counting :class:`~depgraph_prune._fast_meta.MetaMemo`; each node that
    counted FLOPs gets them in ``node.meta["flops"]``."""
    env: dict = {}
    load = env.__getitem__
    modules = dict(_named_modules(gm, remove_duplicate=False))
    inputs = iter(gm.graph.process_inputs(*args))
    # fx freezes list constants into immutable_list; real functions may mutate their copy
    thaw = lambda v: list(v) if isinstance(v, list) else v  # noqa: E731
    for n in gm.graph.nodes:
        op = n.op
        flops = memo.flops if memo is not None else 0
        try:
            if op == "placeholder":
                if n.target.startswith("*"):
                    result = list(inputs)
                else:
                    result = next(inputs, _NO_INPUT)
                    if result is _NO_INPUT:
                        if not n.args:
                            raise RuntimeError(f"expected a positional argument for parameter {n.target}")
                        result = n.args[0]
            elif op == "get_attr":
                result = getattr(*_resolve(gm, n.target, modules))
            else:
                a, kw = fx.node.map_arg(n.args, load), fx.node.map_arg(n.kwargs, load)
                if op == "call_module":
                    result = _submodule(gm, n.target, modules)(*a, **kw)
                elif op == "call_function":
                    result = n.target(*[thaw(v) for v in a], **{k: thaw(v) for k, v in kw.items()})
                elif op == "call_method":
                    result = getattr(a[0], n.target)(*a[1:], **kw)
                elif op == "output":
                    return gm.graph.process_outputs(a[0])
                else:
                    raise RuntimeError(f"unknown node kind {op!r}")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _NodeFailure(f"at node `{n.name}` ({n.format_node()[:120]}): {type(exc).__name__}: {msg}") from exc
        env[n] = result
        if memo is not None and memo.flops != flops:
            n.meta["flops"] = memo.flops - flops
        if isinstance(result, torch.Tensor):  # most nodes: no tree walk
            n.meta["tensor_meta"] = _tensor_metadata(result)
            continue
        found = []

        def meta(x):
            if isinstance(x, torch.Tensor):
                found.append(True)
                return _tensor_metadata(x)
            return x

        tm = pytree.tree_map(meta, result)
        if found:
            n.meta["tensor_meta"] = tm
    return None


_NO_INPUT = object()



def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, binding: Binding, real: nn.Module):
    """Record every node's output metadata. Returns ``(on meta, MACs)``: the MACs of the run
    when it was on meta tensors (counted on the way, as ``count_ops`` counts them: attention's
    fused fast path off), else None."""
    flat_args = list(binding.leaves)
    # BatchNorm in training mode refuses batch 1; the trace is already fixed, so shapes can be
    # propagated with every module in eval mode.
    saved = snapshot(gm)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with _modes(gm, False), torch.no_grad():
        try:
            # meta tensors: shapes only, no memory, and the model's own tensors are never touched
            torch.backends.mha.set_fastpath_enabled(False)
            with on_meta(gm, count_flops=True) as memo:
                _record_shapes(gm, to_meta(flat_args), memo)
            return True, memo.flops // 2
        except Exception:
            restore(saved)  # meta tensors a leaf cached on self before it failed
            pass  # some ops have no meta kernel or compare devices: use real tensors
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        try:
            # the real tensors, by name, from the user's model (the traced copy may hold meta ones)
            real_state = {k: v.detach() for k, v in real.named_parameters(remove_duplicate=False)}
            real_state.update({k: v.detach().clone() for k, v in real.named_buffers(remove_duplicate=False)})
            state = named_tensors(gm)
            real_state = {k: v for k, v in real_state.items() if k in state}
            with stateless._reparametrize_module(gm, real_state):
                _record_shapes(gm, flat_args)
            return False, None
        except Exception as exc:
            raise TraceError(
                f"example_inputs: running {type(model).__name__} on them failed {str(exc).splitlines()[0]}. Check that "
                f"example_inputs has the shape and dtype the model expects.") from exc


@contextlib.contextmanager
def detached(model: nn.Module, meta: bool = True, memo=None):
    """A stand-in for ``model`` to run analysis passes on (MAC counts, the post-surgery check):
    a structural copy, so whatever ``forward`` stores on ``self`` (anchors, cached shapes, flags)
    stays on the copy and never reaches the user's model. With ``meta`` its tensors are meta
    twins (run it on ``to_meta`` inputs); otherwise it holds the model's real parameters and
    copies of its buffers. A model that cannot be copied is used itself (buffers still copied).
    ``memo``: the :class:`~depgraph_prune._fast_meta.MetaMemo` a meta run goes through (one that
    counts FLOPs); by default a plain one. One memo, not two stacked: each dispatch mode is a
    Python call per op."""
    try:
        clone = structural_copy(model)
    except RuntimeError:  # a failing torch call is a real failure: let it surface
        raise
    except Exception:  # an attribute that cannot be copied
        clone = None
    if meta:
        if clone is None:  # no copy: run the model itself, and put back what forward stores on it
            with side_effects_undone(model), on_meta(model, memo=memo):
                yield model
        else:
            from .._fast_meta import MetaMemo
            with memo if memo is not None else MetaMemo():
                yield clone
        return
    target = clone if clone is not None else model
    state = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)}
    state.update({k: v.detach().clone() for k, v in model.named_buffers(remove_duplicate=False)})
    with side_effects_undone(model) if clone is None else contextlib.nullcontext(), \
            stateless._reparametrize_module(target, state):
        yield target


@contextlib.contextmanager
def preserved_attributes(model: nn.Module):
    """Runs that must use the model itself (the numerical check compares the real pruned model)
    put back, afterwards, every plain attribute ``forward`` set on any module: rebound values,
    new attributes (removed again) and the contents of lists, dicts and sets it changed in place.
    Parameters, buffers and submodules are not touched here (the surgeon and the reparametrizing
    context own them); only what forward *adds* to those tables (a lazily registered buffer)
    goes again."""
    saved = snapshot(model, tables="added")
    try:
        yield
    finally:
        restore(saved)
