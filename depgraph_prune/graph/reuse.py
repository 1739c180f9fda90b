"""The graph of a pruned model, derived from the graph that pruned it, without tracing again.

Surgery removes whole components (sets of atoms that go together), so what survives is the same
channel-dependency structure with fewer atoms: every member keeps the atoms of its kept
positions, every coupling, freeze and constraint among the surviving atoms still holds, and no
rule needs to look at the model again. ``dp.prune(..., steps=k)`` derives each round's graph this
way instead of re-tracing (a trace, a meta-tensor shape propagation and a rule walk per round).

The derived graph equals a fresh ``build_graph`` of the pruned model: same groups in the same
order, same channel numbering (a fresh trace allocates atoms in the same walk order, so the
surviving atoms keep their relative order), same frozen reasons. Where the model's structure
may have changed in between (a ``callback`` that edits modules), :func:`after_prune` checks every
member's width against the model and returns ``None``, and the caller traces again.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from .._walk import named_tensors
from .groups import make_groups


def after_prune(graph, record: dict):
    """The graph of ``graph.model`` after ``graph.prune(plan)`` returned ``record``, or None when
    the model no longer matches it (then build a new graph)."""
    if graph._ctx.scale_fixups:
        return None  # fix-ups hold positions of the unpruned tensors: trace again
    ctx = copy.copy(graph._ctx)
    kept = {}
    for key, idx in (record or {}).get("kept", {}).items():
        name, _, dim = key.rpartition(":")
        kept[(name, int(dim))] = np.asarray(idx, dtype=np.int64)
    members = {}
    for key, m in graph._ctx.members.items():
        idx = kept.get(key)
        members[key] = m if idx is None else replace(m, atoms=m.atoms[idx])
    ctx.members = members
    ctx.macs = None  # the count was of the unpruned model
    if not _matches(graph.model, members.values()):
        return None
    new = object.__new__(type(graph))
    new.__dict__.update({k: v for k, v in graph.__dict__.items() if k not in ("groups", "_member_group", "_stale")})
    new._ctx = ctx
    new.groups = make_groups(ctx, new)
    new._member_group = {(m.name, m.dim): g for g in new.groups for m in g.members}
    return new


def _matches(model, members) -> bool:
    """Every tensor member still has as many positions along its dim as the graph has atoms."""
    tensors = named_tensors(model)
    for m in members:
        if m.kind == "width":
            owner, _, attr = m.name.rpartition(".")
            try:
                mod = model.get_submodule(owner) if owner else model
            except AttributeError:
                return False
            value = getattr(mod, attr.split("[")[0], None)
            if isinstance(value, int) and value != m.atoms.shape[0]:
                return False
            continue
        t = tensors.get(m.name)
        if not isinstance(t, torch.Tensor) or t.dim() <= m.dim or t.shape[m.dim] != m.atoms.shape[0]:
            return False
    return True
