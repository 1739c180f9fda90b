"""State shared by the coupling rules while the graph is built."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .._walk import named_tensors
from .atoms import AtomTable
from .values import TV, Opaque, Sym


# frames inside torch and inside this package (the tracer's hooks) are not the user's line
_NOT_USER = (os.path.dirname(torch.__file__) + os.sep,
             os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
             "<depgraph_prune")  # the entry function trace/inputs.py makes
_FRAME = re.compile(r'File "([^"]+)", line \d+, in [^\n]*\n\s*([^\n]*)')


def _source_attributes(stack_trace: str) -> set[str] | None:
    """``self.<name>`` attributes on the user's source line that created a node."""
    frames = [(f, code) for f, code in _FRAME.findall(stack_trace) if not f.startswith(_NOT_USER)]
    return set(re.findall(r"self\.(\w+)", frames[-1][1])) if frames else None


_WIDTH_WORDS = ("dim", "channel", "feature", "width", "hidden", "embed", "planes", "split")  # split: GPT-2 split_size
HEAD_WORDS = ("heads",)  # a head *count*: tried only where no width attribute matches
KERNEL_DIM = "kernel dim of "  # reason prefix of conv kernel dims: not channels, not listed as groups


@dataclass
class Member:
    """One parameter (or buffer, or width attribute) dimension whose positions are channels.

    ``atoms[i]`` is the atom at position ``i`` of dimension ``dim`` (FIXED where fixed).
    """

    name: str
    dim: int
    atoms: np.ndarray
    kind: str = "param"  # "param", "buffer" or "width" (a module attribute such as num_features)


@dataclass
class BuildContext:
    model: nn.Module
    modules: dict[str, nn.Module]
    atoms: AtomTable = field(default_factory=AtomTable)
    members: dict[tuple[str, int], Member] = field(default_factory=dict)
    #: channel-normalizing sites: (atoms, where, affine_norm). ``affine_norm``: the site is a
    #: layer/group/RMS norm call, which verification can run as its affine part alone
    normalizing: list[tuple[np.ndarray, str, bool]] = field(default_factory=list)
    node: fx.Node | None = None
    canonical: dict = field(default_factory=dict)
    output_structure: object = None
    opaque: dict = field(default_factory=dict)
    #: how nn.MultiheadAttention shrinks: "heads" (whole heads) or "head_dim" (every head's width)
    attention: str = "heads"
    meta_ok: bool = True  # the trace ran on meta tensors (else the post-surgery check runs for real)
    #: rows to rescale when a width that a module turns into a value shrinks (attention's
    #: 1/sqrt(head_dim)): {"width": atoms, "power": p, "tensors": [(name, dim, positions)]}
    scale_fixups: list = field(default_factory=list)
    #: modules with forward hooks fx cannot see (name -> why): everything they compute is frozen
    hooked: dict = field(default_factory=dict)
    #: (tensor, dim) whose removed slices the masked model must not zero (see ``_reparam_tv``)
    no_mask: set = field(default_factory=set)
    #: MACs of the model on the example inputs, counted while shapes were propagated (or None)
    macs: int | None = None
    #: tensor name -> the module whose forward reads it in eval mode ("" for the root): where
    #: verification zeroes it, one module at a time (see ``verify.masked_lazily``)
    readers: dict = field(default_factory=dict)
    #: no Python decision of the eval-mode trace read a value of the example input (no shape
    #: check, no ``int(x.shape[-1])``, no opaque leaf): the model runs the same ops at any input
    #: size, so verification may run on a smaller input (see ``verify.reduced_inputs``)
    size_generic: bool = False
    #: when every op of the eval-mode run that counts FLOPs is a plain convolution or linear
    #: layer: (module name, FLOPs per element of its weight) for each call, so the MACs of a
    #: pruned model at the example inputs follow from its weights' sizes (spatial sizes and
    #: token counts do not change when channels go); None otherwise
    flops_per_weight: list | None = None

    def snapshot(self):
        a = self.atoms
        return (a.n, len(a._edges), len(a.freezes), len(a.constraints), dict(self.members), len(self.normalizing),
                len(self.scale_fixups))

    def restore(self, snap) -> None:
        a = self.atoms
        a.n = snap[0]
        del a._edges[snap[1]:], a.freezes[snap[2]:], a.constraints[snap[3]:], self.normalizing[snap[5]:]
        del self.scale_fixups[snap[6]:]
        self.members = snap[4]

    # -- reasons ---------------------------------------------------------------------------
    def where(self) -> str:
        n = self.node
        if n is None:
            return "graph"
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        return f"`{target}` at node `{n.name}`"

    # -- atoms of parameters -----------------------------------------------------------------
    def tensor_atoms(self, qualname: str, dim: int, size: int, kind: str) -> np.ndarray:
        key = (qualname, dim)
        member = self.members.get(key)
        if member is None:
            member = Member(qualname, dim, self.atoms.new(size), kind)
            self.members[key] = member
        return member.atoms

    def width_atoms(self, module_name: str, attr: str, like: np.ndarray) -> None:
        """A width attribute (e.g. num_features of a BatchNorm without parameters) follows ``like``."""
        qual = f"{module_name}.{attr}" if module_name else attr  # the root model's own attribute
        key = (qual, 0)
        if key not in self.members:
            self.members[key] = Member(qual, 0, np.array(like, copy=True), "width")
        else:
            self.atoms.union(self.members[key].atoms, like, f"{self.where()}: shared module")

    def param_tv(self, module_name: str, pname: str, dims: tuple[int, ...]) -> TV | None:
        """A module's parameter as a TV with only ``dims`` tracked (None if it has no such tensor)."""
        mod = self.modules[module_name]
        reparam = _reparametrized(mod, pname)
        if reparam is not None:
            return self._reparam_tv(module_name, mod, pname, dims, *reparam)
        t = getattr(mod, pname, None)
        if not isinstance(t, torch.Tensor):
            return None
        qual = f"{module_name}.{pname}" if module_name else pname
        qual = self.canonical.get(id(t), qual)  # tied weights share one set of atoms
        kind = "param" if isinstance(t, nn.Parameter) else "buffer"
        track = {d: self.tensor_atoms(qual, d, t.shape[d], kind) for d in dims if t.dim() > d}
        return TV(tuple(t.shape), track, origin=qual)

    def _reparam_tv(self, module_name, mod, pname, dims, kind, v_path, g_path, g_dim):
        """A weight computed from other tensors: weight norm (``g * v / ||v||``, the norm over
        every dim but ``g_dim``) slices ``v`` like the weight and ``g`` along ``g_dim``: zeroed
        entries of ``v`` do not change the norms, so removing them preserves the function.
        Any other parametrization freezes the weight's channels."""
        prefix = f"{module_name}." if module_name else ""
        shape = tuple(getattr(mod, pname).shape)
        if kind != "weight_norm":
            track = {}
            for d in dims:
                if d < len(shape):
                    track[d] = self.atoms.new(shape[d])
                    self.atoms.freeze(track[d], f"`{prefix}{pname}` is computed by {kind}, which has no rule")
            return TV(shape, track, origin=None)
        v_t = self.model.get_submodule(module_name) if module_name else self.model
        v_qual = self.canonical.get(id(_get(v_t, v_path)), prefix + v_path)
        g_t = _get(v_t, g_path)
        g_qual = self.canonical.get(id(g_t), prefix + g_path)
        track = {d: self.tensor_atoms(v_qual, d, shape[d], "param") for d in dims if d < len(shape)}
        if g_dim is not None and g_dim in track and g_t.dim() > g_dim and g_t.shape[g_dim] == shape[g_dim] > 1:
            self.atoms.union(self.tensor_atoms(g_qual, g_dim, shape[g_dim], "param"), track[g_dim],
                             f"weight norm of `{prefix}{pname}`")
            # a slice of v along g's dim is normalized on its own: zeroed it would be 0/0. The
            # masked model zeroes g there instead (the weight's slice is then exactly zero)
            self.no_mask.add((v_qual, g_dim))
        return TV(shape, track, origin=v_qual)

    def canonical_name(self, qualname: str) -> str:
        # a tensor's name from one table of the model's tensors (a getattr walk per lookup was a
        # visible part of listing a model's layers); anything else by the walk
        table = self.__dict__.get("_tensor_table")
        if table is None or table[0] is not self.model:
            table = self._tensor_table = (self.model, named_tensors(self.model))
        obj = table[1].get(qualname)
        if obj is None:
            obj = self.model
            try:
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                return qualname
        return self.canonical.get(id(obj), qualname)

    def attribute_for_constant(self, value: int, words=_WIDTH_WORDS) -> tuple[str, str] | None:
        """The one integer attribute, on the innermost module running this node, equal to
        ``value`` and named like a width; None when there is none or it is ambiguous."""
        stack = self.node.meta.get("nn_module_stack") or {}
        paths = [""] + [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
        # Evidence that the constant came from the attribute: the source line that made this node
        # names it. A literal `reshape(B, 16, -1)` equal to an unrelated `self.embed_dim = 16` is
        # not bound (its dim stays fixed), nor is anything when fx recorded no source line.
        named = _source_attributes(self.node.stack_trace or "")
        if not named:
            return None
        for path in reversed(paths):
            mod = self.modules.get(path)
            if mod is None:
                continue
            hits = [a for a, v in vars(mod).items() if type(v) is int and v == value
                    and not a.startswith("_") and any(w in a for w in words) and a in named]
            if len(hits) == 1:
                return path, hits[0]
            if hits:
                return None
        return None

    def keep_scale(self, width: np.ndarray, tensors, power: float = 0.5) -> None:
        """``tensors`` (``(name, dim, positions)``) get multiplied by ``(new/old) ** power`` of the
        width ``width`` when it shrinks: attention that divides by ``sqrt(head_dim)`` keeps its
        logits when its q rows are scaled by ``sqrt(new head_dim / old)``."""
        self.scale_fixups.append({"width": np.asarray(width), "power": power,
                                  "tensors": [(n, d, np.asarray(p)) for n, d, p in tensors]})

    def normalizes(self, atoms: np.ndarray, affine_norm: bool = False) -> None:
        """These positions meet an op whose output on the other positions depends on how many
        there are (layer/RMS/group norm over channels, softmax, a mean): zeroing them is not the
        same as removing them, so verification cannot compare those groups exactly as they are."""
        self.normalizing.append((np.asarray(atoms), self.where(), affine_norm))

    # -- couplings ---------------------------------------------------------------------------
    def union(self, a: np.ndarray, b: np.ndarray, why: str = "coupled") -> None:
        self.atoms.union(a, b, f"{why} at {self.where()} meets a fixed-size tensor (a model input, or a width no rule can change)")

    def freeze(self, value, reason: str) -> None:
        """Freeze every atom reachable in a (pytree of) TV / Sym / Opaque values."""
        for v in _leaves(value):
            if isinstance(v, TV):
                self.atoms.freeze(v.all_atoms(), reason)
            elif isinstance(v, (Sym, Opaque)):
                self.atoms.freeze(v.atoms, reason)

    def freeze_dims(self, tv: TV, dims, reason: str) -> None:
        for d in dims:
            if tv.tracked(d):
                self.atoms.freeze(tv.track[d % tv.ndim], reason)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _reparametrized(mod: nn.Module, pname: str):
    """``(kind, v path, g path, g dim)`` when ``mod.<pname>`` is computed from other tensors:
    ``torch.nn.utils.parametrizations.weight_norm``, the legacy ``nn.utils.weight_norm`` hook, or
    another parametrization (kind names it; paths None)."""
    if "parametrizations" not in mod._modules and not mod._forward_pre_hooks:
        return None  # (most modules: no raised miss of Module.__getattr__ in is_parametrized)
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm
    if parametrize.is_parametrized(mod, pname):
        plist = mod.parametrizations[pname]
        if len(plist) == 1 and type(plist[0]).__name__ == "_WeightNorm":
            dim = plist[0].dim
            return ("weight_norm", f"parametrizations.{pname}.original1", f"parametrizations.{pname}.original0",
                    None if dim is None else dim % getattr(mod, pname).dim())
        return (f"the parametrization {', '.join(type(p).__name__ for p in plist)}", None, None, None)
    for h in mod._forward_pre_hooks.values():
        if isinstance(h, WeightNorm) and h.name == pname:
            dim = h.dim
            return ("weight_norm", f"{pname}_v", f"{pname}_g",
                    None if dim is None else dim % getattr(mod, f"{pname}_v").dim())
    return None


def _leaves(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, slice):
        yield from _leaves((value.start, value.stop, value.step))
    else:
        yield value


leaves = _leaves
