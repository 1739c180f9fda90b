"""Groups: the sets of coupled channels that are pruned together, and their inspection."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._gc import old_objects_frozen
from .context import KERNEL_DIM, BuildContext


@dataclass(frozen=True)
class GroupMember:
    """One parameter/buffer dimension (or width attribute) that a group's channels slice.

    ``name`` is the qualified name (``"layer1.0.conv1.weight"``), ``dim`` the sliced dimension,
    ``kind`` is ``"param"``, ``"buffer"`` or ``"width"`` (a module attribute such as
    ``num_features`` of a BatchNorm without parameters).
    """

    name: str
    dim: int
    kind: str
    _channel_of: np.ndarray  # group channel per position, -1 for positions the group doesn't own
    #: positions the group owns, and whether position i is channel i of all the group's channels
    #: (the common case); computed for all members at once when the groups are made
    _owned: int | None = field(default=None, compare=False, repr=False)
    _identity: bool | None = field(default=None, compare=False, repr=False)

    @property
    def owned(self) -> int:
        """How many positions the group owns (the others are fixed)."""
        return int((self._channel_of >= 0).sum()) if self._owned is None else self._owned

    def indices(self, channels: Iterable[int]) -> torch.LongTensor:
        """Positions along ``dim`` that belong to the given group channels (a flatten→linear
        member maps one channel to H·W positions)."""
        ch = np.asarray(list(channels), dtype=np.int64)
        pos = np.nonzero(np.isin(self._channel_of, ch) & (self._channel_of >= 0))[0]
        return torch.as_tensor(pos, dtype=torch.long)

    @property
    def size(self) -> int:
        return int(self._channel_of.size)

    def __repr__(self) -> str:
        return f"GroupMember({self.name!r}, dim={self.dim}, kind={self.kind!r})"


class Group:
    """A set of coupled channels. Channels are numbered ``0 .. size-1`` (prunable ones only).

    Example::

        >>> import torch, torchvision, depgraph_prune as dp
        >>> m = torchvision.models.resnet18()
        >>> g = dp.build_graph(m, torch.randn(1, 3, 64, 64)).group_of("layer1.0.conv1")
        >>> g.size, g.prunable
        (64, True)
        >>> g.prune([0, 3, 5]); m.layer1[0].conv1.out_channels
        61
    """

    def __init__(self, graph, index: int, members: list[GroupMember], size: int,
                 frozen_reasons: Counter, n_frozen: int, comps: np.ndarray):
        self._graph = graph
        self.index = index
        self.members = members
        self.size = size
        self.frozen_reasons = frozen_reasons
        self.n_frozen = n_frozen
        self._comps = comps  # component id of each prunable channel
        self._parts = None
        self._unit = None
        self.verify_reason: str | None = None  # set when the numerical check refused this group

    @property
    def prunable(self) -> bool:
        if self.verify_reason:
            return False
        # removing one channel must leave every member non-empty
        return self.size > 1 or (self.size == 1 and self.n_frozen > 0)

    @property
    def reason(self) -> str | None:
        """Why (some of) the group's channels are frozen, or None if none is."""
        if self.verify_reason:
            return self.verify_reason
        if not self.frozen_reasons:
            return None if self.size > 1 else ("a single channel cannot be pruned" if self.size == 1 else None)
        return self.frozen_reasons.most_common(1)[0][0]

    @property
    def parts(self) -> list[np.ndarray]:
        """The group's channels split by *which members cover them*, in order of first channel.

        A plain group (one conv's outputs, or a residual stream) is one part. A concatenation
        ``cat([a(x), b(x)])`` is two: ``a``'s channels (covered by ``a.weight``, ``a.bias``, the
        consumer's input slice) and ``b``'s. A consumer that reads a slice splits the parts it
        reads from the rest. Every member covers a union of whole parts, so removing the same
        fraction of every part removes that fraction from every member: the plan uses this to
        shrink every layer of a concatenation by its own ratio."""
        if self._parts is None:
            self._parts = channel_parts(self.members, self.size)
        return self._parts

    @property
    def unit(self) -> int:
        """Positions per channel of the group's finest member: 1 for ordinary channels, more where
        every channel of the group is a block of a layer's filters (attention heads, channels a
        shuffle or a grouped conv ties together). Only for the planner's rounding."""
        if self._unit is None:
            best = None
            if any(m._identity for m in self.members):  # one position per channel: the finest there is
                self._unit = 1
                return 1
            for m in self.members:
                ch = np.asarray(m._channel_of)
                ch = ch[ch >= 0]
                if ch.size:
                    per = ch.size // max(np.count_nonzero(np.bincount(ch)), 1)  # distinct channels
                    best = per if best is None else min(best, per)
            self._unit = max(best or 1, 1)
        return self._unit

    @property
    def modules(self) -> list[str]:
        seen = []
        for m in self.members:
            owner = m.name.rsplit(".", 1)[0] if "." in m.name else ""
            if owner not in seen:
                seen.append(owner)
        return seen

    @old_objects_frozen
    def prune(self, channels: Sequence[int], *, verify=True, optimizer=None) -> None:
        """Remove exactly these channels from every member, in the user's model, all or nothing.

        With ``verify`` (default) the pruned model must compute what the original computes with
        these channels zeroed (see :mod:`depgraph_prune.verify`); if it does not, nothing is
        pruned, the group is frozen and :class:`~depgraph_prune.verify.VerificationError` is raised.
        ``optimizer``: its state (momentum, Adam moments) is sliced along, in place."""
        from ..verify import VerificationError
        self._graph.prune({self: list(channels)}, verify=verify, optimizer=optimizer)
        report = getattr(self._graph, "last_verification", None)
        if report is not None and self.index in report.guilty:
            raise VerificationError(f"group {self.index} ({self.members[0].name}): {report.guilty[self.index]}; "
                                    "nothing was pruned")

    def __repr__(self) -> str:
        return f"<Group {self.index}: {self.size} prunable channels, {len(self.members)} members>"

    def __str__(self) -> str:
        head = f"Group {self.index}: {self.size} prunable channels"
        if self.n_frozen:
            head += f", {self.n_frozen} frozen"
        lines = [head]
        if self.frozen_reasons:
            for r, c in self.frozen_reasons.most_common(3):
                lines.append(f"  frozen ({c} channels): {r}")
        for m in self.members:
            lines.append(f"  {m.name:<48} dim {m.dim}  {m.size:>6} positions  [{m.kind}]")
        return "\n".join(lines)


def channel_parts(members: Sequence[GroupMember], size: int) -> list[np.ndarray]:
    """Partition ``range(size)`` into classes of channels covered by the same set of members."""
    if size <= 0:
        return []
    cover = np.zeros((max(len(members), 1), size), dtype=bool)
    for i, m in enumerate(members):
        ch = np.asarray(m._channel_of)
        cover[i, ch[ch >= 0]] = True
    if cover.all():  # every member covers every channel: one part (most groups)
        return [np.arange(size)]
    keys = np.packbits(cover, axis=0).T  # one row of bits per channel
    if keys.shape[1] <= 8:  # up to 64 members: one integer per channel, a 1-D unique (no row sort)
        keys = np.pad(keys, ((0, 0), (0, 8 - keys.shape[1]))).copy().view(np.uint64).ravel()
        _, label = np.unique(keys, return_inverse=True)
    else:
        _, label = np.unique(keys, axis=0, return_inverse=True)
    label = np.asarray(label).ravel()
    first = np.full(label.max() + 1, size, dtype=np.int64)
    np.minimum.at(first, label, np.arange(size))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    by_part = rank[label]
    order = np.argsort(by_part, kind="stable")
    bounds = np.searchsorted(by_part[order], np.arange(first.size + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(first.size)]


def make_groups(ctx: BuildContext, graph) -> list[Group]:
    table = ctx.atoms
    ncomp, labels = table.components()
    graph._labels, graph._ncomp = labels, ncomp
    reasons = np.empty(ncomp, dtype=object)
    # root causes first: "meets a fixed-size tensor" is usually a consequence of another freeze
    for atoms, reason in sorted(table.freezes, key=lambda f: "meets a fixed-size" in f[1]):
        comps = np.unique(labels[atoms])
        unset = comps[reasons[comps] == None]  # noqa: E711  (object array compare)
        reasons[unset] = reason
    for c in table.constraints:
        _check_constraint(c, labels, ncomp, reasons)
    members = list(ctx.members.values())
    # every member's atoms in one array (one numpy pass instead of a few per member)
    sizes = np.fromiter((m.atoms.size for m in members), dtype=np.int64, count=len(members))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    atoms = np.concatenate([m.atoms for m in members]) if members else np.zeros(0, dtype=np.int64)
    real = atoms >= 0
    comp_of = np.where(real, labels[np.maximum(atoms, 0)], -1)  # component of each position
    owner = np.repeat(np.arange(len(members)), sizes)[real]  # member of each real position
    real_comps = comp_of[real]
    # link the components that a member touches: they form one group
    same = owner[1:] == owner[:-1]
    s, d = real_comps[:-1][same], real_comps[1:][same]
    ng, glabel = connected_components(coo_matrix((np.ones(s.size, np.int8), (s, d)), shape=(ncomp, ncomp)), directed=False)
    first_atom = np.full(ncomp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_atom, labels, np.arange(labels.size))
    touched = np.zeros(ncomp, dtype=bool)
    touched[real_comps] = True
    # members touching a component, and each one's first real position (``owner`` is sorted)
    first = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]])) if owner.size else owner
    with_real = owner[first]
    member_group = dict(zip(with_real.tolist(), glabel[real_comps[first]].tolist()))
    # channels of each group, ordered by first appearance
    # by group, then first atom: one int64 key (first atoms are distinct), one sort
    order = np.argsort(glabel.astype(np.int64) * (labels.size + 1) + first_atom) if ncomp else np.zeros(0, np.int64)
    comp_channel = np.full(ncomp, -1, dtype=np.int64)
    by_group: dict[int, list[int]] = {}
    for i, gi in member_group.items():
        by_group.setdefault(gi, []).append(i)
    starts = np.searchsorted(glabel[order], np.arange(ng))
    ends = np.searchsorted(glabel[order], np.arange(ng), side="right")
    made = []  # (group id, its live components, frozen reasons, frozen count)
    for gi in sorted(by_group, key=lambda g: first_atom[order[starts[g]]]):
        comps = order[starts[gi]:ends[gi]]
        comps = comps[touched[comps]]
        frozen = reasons[comps] != None  # noqa: E711
        live = comps[~frozen]
        comp_channel[live] = np.arange(live.size)
        fr = Counter(reasons[comps[frozen]].tolist())
        if not live.size and fr and all(r.startswith(KERNEL_DIM) for r in fr):
            continue  # a functional conv's kernel dims (from a weight read in forward): not channels
        made.append((gi, live, fr, int(frozen.sum())))
    channel = np.where(comp_of >= 0, comp_channel[np.maximum(comp_of, 0)], -1)  # group channel per position
    # per member, in one pass: positions owned, and whether position i is channel i
    owned = np.zeros(len(members), dtype=np.int64)
    in_place = np.ones(len(members), dtype=bool)
    full = np.flatnonzero(sizes > 0)
    if full.size:  # segments of the non-empty members (an empty one has no segment of its own)
        local = np.arange(atoms.size) - np.repeat(offsets[:-1], sizes)
        owned[full] = np.add.reduceat((channel >= 0).astype(np.int64), offsets[full])
        in_place[full] = np.logical_and.reduceat(channel == local, offsets[full])
    owned, in_place = owned.tolist(), in_place.tolist()
    groups_out = []
    for gi, live, fr, n_frozen in made:
        n = int(live.size)
        gms = [GroupMember(members[i].name, members[i].dim, members[i].kind, channel[offsets[i]:offsets[i + 1]],
                           owned[i], in_place[i] and int(sizes[i]) == n)
               for i in by_group[gi]]
        groups_out.append(Group(graph, len(groups_out), gms, n, fr, n_frozen, live))
    return groups_out


def _check_constraint(c, labels, ncomp, reasons):
    a, b = c.a[c.a >= 0], c.b[c.b >= 0]
    fixed_a, fixed_b = (c.a < 0).sum(), (c.b < 0).sum()
    ma = np.bincount(labels[a], minlength=ncomp) * c.scale
    mb = np.bincount(labels[b], minlength=ncomp)
    bad = np.nonzero(~np.isclose(ma, mb))[0]
    if not np.isclose(fixed_a * c.scale, fixed_b):
        bad = np.union1d(labels[a], labels[b])
    if bad.size:
        unset = bad[reasons[bad] == None]  # noqa: E711
        reasons[unset] = c.reason
