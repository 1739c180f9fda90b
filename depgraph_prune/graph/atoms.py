"""Channel atoms and the couplings between them.

Every prunable position of every parameter dimension is an *atom* (an integer id). Rules
record which atoms must be removed together (``union``) and which must never be removed
(``freeze``, with a reason). Position value ``FIXED`` (-1) marks a tensor position that is
not backed by any parameter and therefore never changes.

Unions are only collected as edge arrays; components are computed once, vectorized, by
``scipy.sparse.csgraph.connected_components`` (a Python union-find over 10^5 atoms is far
too slow for the build-time goal).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

FIXED = -1


@dataclass
class Constraint:
    """Deferred check: for every component k, ``mult_a(k) * scale == mult_b(k)``."""

    a: np.ndarray
    b: np.ndarray
    scale: float
    reason: str
    tie: bool = False  # when it does not hold, tie a and b elementwise instead of freezing

    def holds(self, labels: np.ndarray, ncomp: int) -> bool:
        a, b = self.a[self.a >= 0], self.b[self.b >= 0]
        if not np.isclose((self.a < 0).sum() * self.scale, (self.b < 0).sum()):
            return False
        ma = np.bincount(labels[a], minlength=ncomp) * self.scale
        return bool(np.allclose(ma, np.bincount(labels[b], minlength=ncomp)))


@dataclass
class AtomTable:
    n: int = 0
    _edges: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    freezes: list[tuple[np.ndarray, str]] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)

    def new(self, shape) -> np.ndarray:
        size = int(np.prod(shape)) if len(np.shape(shape)) else int(shape)
        ids = np.arange(self.n, self.n + size, dtype=np.int64).reshape(shape)
        self.n += size
        return ids

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        atoms = np.asarray(atoms).ravel()
        atoms = atoms[atoms >= 0]
        if atoms.size:
            self.freezes.append((atoms, reason))

    def union(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Tie ``a`` and ``b`` elementwise (broadcasting). A real atom tied to a FIXED position is frozen."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            a, b = np.broadcast_arrays(a, b)
        a, b = a.ravel(), b.ravel()
        real_a, real_b = a >= 0, b >= 0
        if real_a.all() and real_b.all():  # the common case: every position a real atom
            self._edges.append((a.copy(), b.copy()))
            return
        both = real_a & real_b
        if both.any():
            self._edges.append((a[both], b[both]))
        only_a = real_a & ~real_b
        only_b = real_b & ~real_a
        if only_a.any():
            self.freeze(a[only_a], reason)
        if only_b.any():
            self.freeze(b[only_b], reason)

    def tie_along(self, atoms: np.ndarray, axes: tuple[int, ...], reason: str) -> np.ndarray:
        """Tie all atoms that differ only along ``axes``; return the representatives (first index)."""
        if not axes:
            return atoms
        moved = np.moveaxis(atoms, axes, tuple(range(len(axes))))
        flat = moved.reshape(-1, *moved.shape[len(axes):])
        rep = flat[0]
        for other in flat[1:]:
            # A FIXED entry freezes the real atoms tied to it, so a FIXED representative is right.
            self.union(rep, other, reason)
        return rep

    def components(self) -> tuple[int, np.ndarray]:
        ncomp, labels = self._components()
        tie = [c for c in self.constraints if c.tie and not c.holds(labels, ncomp)]
        if tie:
            for c in tie:
                if c.a.shape == c.b.shape:
                    self.union(c.a, c.b, c.reason)
                else:  # b's width is a / k: position j of b goes with position j of every k-block of a
                    self.union(c.a.reshape(-1, c.b.size), c.b[None, :], c.reason)
            ncomp, labels = self._components()
        return ncomp, labels

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every union so far as two arrays (sources, destinations), concatenated once and kept
        until the next union (or a restore that changed the list)."""
        edges = self._edges
        cached = self.__dict__.get("_edge_cache")
        if cached is not None and cached[0] == len(edges) and (not edges or cached[1] is edges[-1]):
            return cached[2], cached[3]
        if edges:
            src = np.concatenate([e[0] for e in edges])
            dst = np.concatenate([e[1] for e in edges])
        else:
            src = dst = np.zeros(0, dtype=np.int64)
        self.__dict__["_edge_cache"] = (len(edges), edges[-1] if edges else None, src, dst)
        return src, dst

    def _components(self) -> tuple[int, np.ndarray]:
        if self.n == 0:
            return 0, np.zeros(0, dtype=np.int64)
        src, dst = self.edge_arrays()
        mat = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(self.n, self.n))
        count, labels = connected_components(mat, directed=False)
        return count, labels.astype(np.int64)
