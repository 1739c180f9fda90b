"""State shared by the coupling rules while the graph is built."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .atoms import AtomTable
from .values import TV, Opaque, Sym


_FRAME = re.compile(r'File "([^"]+)", line \d+, in [^\n]*\n\s*([^\n]*)')


def _source_attributes(stack_trace: str) -> set[str] | None:
    """``self.<name>`` attributes on the user's source line that created a node."""
    frames = [(f, code) for f, code in _FRAME.findall(stack_trace)
              if "/torch/fx/" not in f and "/torch/nn/modules/module.py" not in f and "/torch/_" not in f]
    return set(re.findall(r"self\.(\w+)", frames[-1][1])) if frames else None


_WIDTH_WORDS = ("dim", "channel", "feature", "width", "hidden", "embed", "planes")
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
    normalizing: list[np.ndarray] = field(default_factory=list)
    node: fx.Node | None = None
    canonical: dict = field(default_factory=dict)
    output_structure: object = None
    opaque: dict = field(default_factory=dict)
    #: how nn.MultiheadAttention shrinks: "heads" (whole heads) or "head_dim" (every head's width)
    attention: str = "heads"
    #: MACs of the model on the example inputs, counted while shapes were propagated (or None)
    macs: int | None = None

    def snapshot(self):
        a = self.atoms
        return (a.n, len(a._edges), len(a.freezes), len(a.constraints), dict(self.members), len(self.normalizing))

    def restore(self, snap) -> None:
        a = self.atoms
        a.n = snap[0]
        del a._edges[snap[1]:], a.freezes[snap[2]:], a.constraints[snap[3]:], self.normalizing[snap[5]:]
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
        t = getattr(mod, pname, None)
        if not isinstance(t, torch.Tensor):
            return None
        qual = f"{module_name}.{pname}" if module_name else pname
        qual = self.canonical.get(id(t), qual)  # tied weights share one set of atoms
        kind = "param" if isinstance(t, nn.Parameter) else "buffer"
        track = {d: self.tensor_atoms(qual, d, t.shape[d], kind) for d in dims if t.dim() > d}
        return TV(tuple(t.shape), track, origin=qual)

    def canonical_name(self, qualname: str) -> str:
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
        # attributes named on the source line that made this node (when fx recorded it)
        named = _source_attributes(self.node.stack_trace or "")
        for path in reversed(paths):
            mod = self.modules.get(path)
            if mod is None:
                continue
            hits = [a for a, v in vars(mod).items() if type(v) is int and v == value
                    and not a.startswith("_") and any(w in a for w in words)]
            if named:
                hits = [a for a in hits if a in named]
            if len(hits) == 1:
                return path, hits[0]
            if hits:
                return None
        return None

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
