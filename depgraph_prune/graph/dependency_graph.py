"""``DependencyGraph``: the user-facing result of ``build_graph``."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
from torch import nn

from .._gc import old_objects_frozen
from .._isolation import side_effects_undone
from .._walk import named_modules
from ..errors import PruningError, SurgeryError
from .builder import ATTENTION_MODES, build_context
from .groups import Group, make_groups


class DependencyGraph:
    """Channel-dependency graph of a model: its groups of coupled channels.

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> graph = dp.build_graph(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(graph.groups) > 0
        True
        >>> print(graph.summary())  # doctest: +ELLIPSIS
        group ...
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, ignored_layers: Iterable = (),
                 leaf_modules: Iterable = (), frozen: Iterable = (), attention: str = "heads"):
        if attention not in ATTENTION_MODES:
            raise PruningError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        self.model = model
        self.example_inputs = example_inputs
        with side_effects_undone(model):  # the trace runs a copy, or the model itself where none can be made
            ctx, notes = build_context(model, example_inputs, leaf_names=self._names(leaf_modules, "leaf_modules"),
                                       attention=attention)
        self.notes = notes
        self._ignore(ctx, ignored_layers)
        self._freeze_modules(ctx, self._names(frozen, "frozen"))
        self._ctx = ctx
        self._output_structure = ctx.output_structure
        from .. import progress
        with progress.stage("build"):  # the groups: connected components of the couplings
            self.groups: list[Group] = make_groups(ctx, self)
        self._member_group = {(m.name, m.dim): g for g in self.groups for m in g.members}

    # -- construction helpers ---------------------------------------------------------------
    def _ignore(self, ctx, ignored_layers):
        names = None  # (module objects only: names are looked up by a walk of the model)
        for item in ignored_layers:
            if not isinstance(item, str) and names is None:
                names = {id(m): n for n, m in named_modules(self.model)}
            name = item if isinstance(item, str) else names.get(id(item))
            if name is None or name not in ctx.modules:
                raise PruningError(f"ignored_layers names {item!r}, which is not a submodule of the model")
            key = _out_key(name, ctx.modules[name])
            member = ctx.members.get((ctx.canonical_name(key[0]), key[1]))
            if member is not None:
                ctx.atoms.freeze(member.atoms, f"`{name}` is in ignored_layers")

    def _names(self, items, arg: str) -> list[str]:
        """Module names from names or module objects; types select every module of that type."""
        items = list(items)
        if not items:
            return []
        by_id = {id(m): n for n, m in named_modules(self.model, remove_duplicate=False)}
        names = []
        for item in items:
            if isinstance(item, type):
                names += [n for n, m in self.model.named_modules() if isinstance(m, item) and n]
            elif isinstance(item, str):
                if item not in dict(self.model.named_modules(remove_duplicate=False)):
                    raise PruningError(f"{arg} names {item!r}, which is not a submodule of the model")
                names.append(item)
            elif id(item) in by_id:
                names.append(by_id[id(item)])
            else:
                raise PruningError(f"{arg} holds {type(item).__name__} object that is not a submodule of the model")
        return names

    def _freeze_modules(self, ctx, names):
        for name in names:
            prefix = f"{name}." if name else ""
            for m in ctx.members.values():
                if m.name.startswith(prefix):
                    ctx.atoms.freeze(m.atoms, f"`{name}` is in frozen (all its widths are kept)")

    # -- inspection ---------------------------------------------------------------------------
    def group_of(self, module_name: str) -> Group:
        """The group that holds ``module_name``'s output channels."""
        mod = self._ctx.modules.get(module_name)
        if mod is None:
            raise PruningError(f"group_of: the model has no submodule named {module_name!r}")
        key = _out_key(module_name, mod)
        g = self._member_group.get((self._ctx.canonical_name(key[0]), key[1]))
        if g is None:
            for (name, _), grp in self._member_group.items():
                if name.startswith(module_name + "."):
                    return grp
            raise PruningError(f"group_of: {module_name!r} has no prunable output channels in the traced graph")
        return g

    def summary(self, max_members: int = 4) -> str:
        rows = [f"{'group':>5}  {'size':>5}  {'frozen':>6}  members"]
        for g in self.groups:
            names = ", ".join(f"{m.name}[{m.dim}]" for m in g.members[:max_members])
            more = f" (+{len(g.members) - max_members})" if len(g.members) > max_members else ""
            line = f"{g.index:>5}  {g.size:>5}  {g.n_frozen:>6}  {names}{more}"
            if g.reason and not g.prunable:
                line += f"\n{'':>21}frozen: {g.reason}"
            rows.append(line)
        pr = sum(g.prunable for g in self.groups)
        rows.append(f"{len(self.groups)} groups, {pr} prunable")
        return "\n".join(rows)

    def to_networkx(self) -> nx.Graph:
        """Bipartite graph: group nodes ``("group", i)`` linked to parameter nodes ``(name, dim)``."""
        g = nx.Graph()
        for grp in self.groups:
            g.add_node(("group", grp.index), size=grp.size, prunable=grp.prunable, reason=grp.reason)
            for m in grp.members:
                g.add_node((m.name, m.dim), kind=m.kind, positions=m.size)
                g.add_edge(("group", grp.index), (m.name, m.dim))
        return g

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    # -- surgery ------------------------------------------------------------------------------
    @old_objects_frozen
    def prune(self, plan: Mapping[Group, Sequence[int]], *, validate: bool = True, verify=True,
              optimizer=None, verify_inputs=None) -> dict:
        """Remove the given channels of each group, all or nothing. Returns the kept indices
        per ``"name:dim"``. The graph is stale afterwards: build a new one to go on.

        ``verify`` (default True): the pruned model is compared with the original whose removed
        slices are zeroed, on the example inputs (see :mod:`depgraph_prune.verify`). Groups whose
        pruning changes the output are frozen (``group.reason`` says why, the record's
        ``"verification"`` entry lists them) and the rest is pruned; ``verify="raise"`` raises
        :class:`~depgraph_prune.verify.VerificationError` instead, the model restored;
        ``verify=False`` skips the comparison. ``validate`` (with ``verify=False``): the pruned
        model is still run once on meta tensors; if it fails or its output structure changed,
        the surgery is undone and ``SurgeryError`` is raised: a broken model never comes out.
        ``optimizer``: its per-parameter state is sliced to the kept channels once the surgery
        stands (:func:`depgraph_prune.rebuild_optimizer`). ``verify_inputs``: what the check runs
        on instead of the example inputs (a smaller image makes it cheaper for a CNN)."""
        from .._memory import release_free_memory, weight_bytes
        from ..optim import check_optimizer, rebuild_optimizer
        from ..surgery import apply_plan, check_runs
        from .. import verify as _verify
        if getattr(self, "_stale", False):
            raise PruningError("this graph was already used to prune its model; build a new graph")
        if verify not in (True, False, "raise"):
            raise PruningError(f"verify must be True, False or 'raise', got {verify!r}")
        check_optimizer(optimizer, self.model)
        # before the surgery: nothing may fail after it commits
        size = weight_bytes(self.model)
        if verify:
            record, report = _verify.apply(self, plan, mode=verify, keep_partial=True, inputs=verify_inputs)
            self.last_verification = report
            self.freeze_groups(report.guilty)
        else:
            self.last_verification = None
            record = apply_plan(self, plan)
            if validate and record:
                try:
                    problem = check_runs(self.model, self.example_inputs, self._output_structure,
                                         meta=getattr(self._ctx, "meta_ok", True))
                except Exception as exc:  # whatever goes wrong here, the model goes back as it was
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    record["undo"]()
                    raise SurgeryError(f"the pruned model failed its check ({problem}); the surgery was undone. "
                                       f"Please report this model: a coupling rule is missing a case.")
        record.pop("undo", None)  # with it go the removed channels the undo kept
        if optimizer is not None and record:
            rebuild_optimizer(optimizer, self.model)
        release_free_memory(size)
        if record:
            self._stale = True
        return record

    def freeze_groups(self, reasons: Mapping[int, str]) -> None:
        """Mark groups (by index) as not prunable, with a reason (e.g. the numerical check's)."""
        by_index = {g.index: g for g in self.groups}
        for gi, reason in reasons.items():
            by_index[gi].verify_reason = reason


def _out_key(name: str, mod: nn.Module) -> tuple[str, int]:
    prefix = f"{name}." if name else ""
    if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return (f"{prefix}weight", 1)
    if isinstance(mod, nn.Embedding):
        return (f"{prefix}weight", 1)
    if isinstance(mod, nn.RNNBase):  # what it outputs: the hidden units (or their projection)
        return (f"{prefix}{'proj_size' if getattr(mod, 'proj_size', 0) else 'hidden_size'}", 0)
    if getattr(mod, "weight", None) is None:
        for attr in ("num_features", "num_channels"):
            if hasattr(mod, attr):
                return (f"{prefix}{attr}", 0)
    return (f"{prefix}weight", 0)
