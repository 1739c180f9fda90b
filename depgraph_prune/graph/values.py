"""What the graph builder knows about each traced value.

* ``TV``: a tensor, with its shape and, for each *tracked* dim, the atom id at every
  position (``FIXED`` where the position is not backed by a parameter). An untracked dim
  never changes size: every rule either maps a tracked dim to its outputs or freezes it.
* ``Sym``: an integer read from a tracked dim (``x.size(1) // 2``): ``scale * size(atoms)``.
* anything else: a Python constant (or ``None`` when unknown).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .atoms import FIXED


@dataclass
class TV:
    shape: tuple[int, ...]
    track: dict[int, np.ndarray] = field(default_factory=dict)
    origin: str | None = None  # qualified name when the tensor is a parameter read by get_attr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def atoms(self, dim: int) -> np.ndarray:
        """Atoms of ``dim``, FIXED-filled when untracked."""
        dim = dim % self.ndim
        if dim in self.track:
            return self.track[dim]
        return np.full(self.shape[dim], FIXED, dtype=np.int64)

    def tracked(self, dim: int) -> bool:
        return (dim % self.ndim) in self.track if self.ndim else False

    def all_atoms(self) -> np.ndarray:
        if not self.track:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([a.ravel() for a in self.track.values()])


def clean_track(track: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Drop dims whose atoms are all FIXED: they are simply untracked."""
    return {d: a for d, a in track.items() if (a >= 0).any()}


@dataclass
class Sym:
    atoms: np.ndarray
    scale: Fraction = Fraction(1)

    def scaled(self, factor) -> "Sym":
        return Sym(self.atoms, self.scale * Fraction(factor))


class Opaque:
    """An integer derived from tracked sizes in a way we cannot follow."""

    def __init__(self, atoms: np.ndarray):
        self.atoms = atoms
