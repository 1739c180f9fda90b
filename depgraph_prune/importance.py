"""Step 3a: importance criteria. Each scores every prunable channel of a group (higher = keep).

A criterion is any callable ``(group) -> 1-D tensor of group.size scores``.
"""
from __future__ import annotations

import numpy as np
import torch

from .graph.groups import Group


def member_tensor(model, name: str):
    obj = model
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _per_position(t: torch.Tensor, dim: int, p: int) -> np.ndarray:
    x = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    return (x.abs().sum(1) if p == 1 else x.pow(2).sum(1)).cpu().numpy()


class Magnitude:
    """L1 (``p=1``) or squared-L2 (``p=2``) norm of each channel's slice, summed within a member
    and averaged over the group's parameter members that contain the channel."""

    def __init__(self, p: int = 1):
        self.p = p

    def __call__(self, group: Group) -> torch.Tensor:
        model = group._graph.model
        total = np.zeros(group.size)
        count = np.zeros(group.size)
        for m in group.members:
            if m.kind != "param":
                continue
            t = member_tensor(model, m.name)
            if t is None or t.dim() == 0:
                continue
            ch = m._channel_of
            ok = ch >= 0
            if not ok.any():
                continue
            per_pos = _per_position(t, m.dim, self.p)
            score = np.zeros(group.size)
            np.add.at(score, ch[ok], per_pos[ok])
            present = np.zeros(group.size, dtype=bool)
            present[ch[ok]] = True
            total += score
            count += present
        return torch.as_tensor(total / np.maximum(count, 1))


NAMED = {"l1": lambda: Magnitude(1), "l2": lambda: Magnitude(2)}


def resolve(importance) -> callable:
    if callable(importance):
        return importance
    if isinstance(importance, str) and importance in NAMED:
        return NAMED[importance]()
    raise ValueError(f"importance={importance!r} is not known; use one of {sorted(NAMED)} or a callable (group) -> scores")
