"""One focused test per coupling rule, each on a tiny hand-written module.

Every test asserts the exact group structure the rule must produce (which parameter dims end up
in one group, the group's size, frozen or not and why) and then prunes a couple of channels:
the pruned model must run, keep its output shape, and -- in eval mode and float64 -- compute
exactly what the original computed once the pruned channels' *producers* (conv/linear output
rows, biases, norm scales and shifts, per-channel parameters) were zeroed first. Spaces that
are normalized over channels (LayerNorm over C, GroupNorm with one group) only get the shape check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import depgraph_prune as dp
from depgraph_prune.errors import PruningError

torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


# ======================================================================================= helpers
def _owner(model, qualname):
    owner, _, attr = qualname.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def _is_consumer(model, member) -> bool:
    """Does this member read the group's channels as *input* (conv/linear in-dims)?"""
    mod, attr = _owner(model, member.name)
    if attr != "weight":
        return False
    if isinstance(mod, nn.modules.conv._ConvNd):
        return member.dim == (0 if mod.transposed else 1)
    if isinstance(mod, nn.Linear):
        return member.dim == 1
    return False


def zero_channels(model, group, channels, consumers=False):
    """Zero the producers of ``channels`` (and, with ``consumers``, also their readers)."""
    with torch.no_grad():
        for m in group.members:
            if m.kind == "width" or m.name.endswith("running_var"):
                continue
            if _is_consumer(model, m) and not consumers:
                continue
            mod, attr = _owner(model, m.name)
            t = getattr(mod, attr)
            idx = m.indices(channels)
            if idx.numel():
                t.index_fill_(m.dim, idx, 0.0)


def _call(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    return [t for o in out for t in _flat(o)]


def double(model, x):
    """float64 + eval, and the example input in float64 (integer inputs stay integer)."""
    model = model.double().eval()

    def cv(t):
        return t.double() if t.is_floating_point() else t

    if isinstance(x, dict):
        return model, {k: cv(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return model, tuple(cv(v) for v in x)
    return model, cv(x)


def check_widths(model):
    """Width attributes agree with the tensors they describe."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            w = mod.weight
            if mod.transposed:
                assert mod.in_channels == w.shape[0], name
                assert mod.out_channels == w.shape[1] * mod.groups, name
            else:
                assert mod.out_channels == w.shape[0], name
                assert mod.in_channels == w.shape[1] * mod.groups, name
            assert mod.in_channels % mod.groups == 0 and mod.out_channels % mod.groups == 0, name
            if mod.bias is not None:
                assert mod.bias.shape[0] == mod.out_channels, name
        elif isinstance(mod, nn.Linear):
            assert tuple(mod.weight.shape) == (mod.out_features, mod.in_features), name
        elif isinstance(mod, nn.modules.batchnorm._NormBase):
            for t in (mod.weight, mod.bias, mod.running_mean, mod.running_var):
                if t is not None:
                    assert t.shape == (mod.num_features,), name
        elif isinstance(mod, nn.GroupNorm):
            assert mod.num_channels % mod.num_groups == 0, name
            if mod.weight is not None:
                assert mod.weight.shape == (mod.num_channels,), name
        elif isinstance(mod, nn.LayerNorm):
            if mod.weight is not None:
                assert tuple(mod.weight.shape) == tuple(mod.normalized_shape), name
        elif isinstance(mod, nn.PReLU):
            assert mod.weight.numel() == mod.num_parameters, name
        elif isinstance(mod, nn.Embedding):
            assert mod.weight.shape[1] == mod.embedding_dim, name


def assert_prunes(model, x, graph, plan, exact=True, zero_consumers=False, atol=1e-10):
    """Prune ``plan`` ({group: channels}) through ``graph``; check shapes and function preservation."""
    if not isinstance(plan, dict):
        plan = dict(plan)
    with torch.no_grad():
        before = [t.shape for t in _flat(_call(model, x))]
        for g, ch in plan.items():
            assert g.prunable, str(g)
            zero_channels(model, g, ch, consumers=zero_consumers)
        ref = [t.clone() for t in _flat(_call(model, x))]
    graph.prune(plan)
    check_widths(model)
    with torch.no_grad():
        out = _flat(_call(model, x))
    assert [t.shape for t in out] == before
    if exact:
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-9)
    return out


def members(group):
    return {(m.name, m.dim) for m in group.members}


def member(group, name, dim):
    for m in group.members:
        if (m.name, m.dim) == (name, dim):
            return m
    raise AssertionError(f"{name}[{dim}] is not a member of\n{group}")


def group_with(graph, name, dim):
    hits = [g for g in graph.groups if (name, dim) in members(g)]
    assert len(hits) == 1, f"{name}[{dim}] in {len(hits)} groups\n{graph.summary()}"
    return hits[0]


def positions(group, name, dim, channels):
    return member(group, name, dim).indices(channels).tolist()


def channel_at(group, name, dim, pos):
    """The group channel that owns position ``pos`` of member ``name[dim]``."""
    m = member(group, name, dim)
    for c in range(group.size):
        if pos in m.indices([c]).tolist():
            return c
    raise AssertionError(f"position {pos} of {name}[{dim}] is frozen or not owned")


def assert_frozen(group, *words):
    assert not group.prunable, str(group)
    assert group.size == 0, str(group)
    assert group.n_frozen > 0
    for w in words:
        assert w in group.reason, f"{w!r} not in reason {group.reason!r}"


def conv_members(name, dim0=True, bias=True):
    out = {(f"{name}.weight", 0)} if dim0 else set()
    if bias:
        out.add((f"{name}.bias", 0))
    return out


def bn_members(name, affine=True, stats=True):
    out = {(f"{name}.num_features", 0)}
    if affine:
        out |= {(f"{name}.weight", 0), (f"{name}.bias", 0)}
    if stats:
        out |= {(f"{name}.running_mean", 0), (f"{name}.running_var", 0)}
    return out


def randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                if m.running_mean is not None:
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    return model


# ================================================================================ convolutions
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class ConvBnNet(nn.Module):
    def __init__(self, nd):
        super().__init__()
        self.c1 = _CONV[nd](3, 8, 3, padding=1)
        self.bn = _BN[nd](8)
        self.c2 = _CONV[nd](8, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1(x))))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_nd(nd):
    model, x = double(randomize_bn(ConvBnNet(nd)), torch.randn((2, 3) + (5,) * nd))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | bn_members("bn") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen, g.prunable, g.reason) == (8, 0, True, None)
    assert len(graph.groups) == 3
    inp = group_with(graph, "c1.weight", 1)
    assert members(inp) == {("c1.weight", 1)}
    assert_frozen(inp, "model input")
    outg = group_with(graph, "c2.weight", 0)
    assert members(outg) == conv_members("c2")
    assert_frozen(outg, "output")
    assert_prunes(model, x, graph, {g: [1, 5]})
    assert (model.c1.out_channels, model.bn.num_features, model.c2.in_channels) == (6, 6, 6)
    assert model.c1.in_channels == 3 and model.c2.out_channels == 4


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # 2 in, 3 out per group
        self.c3 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.g(F.relu(self.c1(x)))))


def test_grouped_conv_prunes_whole_groups():
    model, x = double(GroupedNet(), torch.randn(2, 3, 6, 6))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("g") is g
    assert members(g) == conv_members("c1") | conv_members("g") | {("c3.weight", 1)}
    assert (g.size, g.n_frozen, g.prunable) == (4, 0, True)  # one channel per conv group
    for k in range(4):
        assert positions(g, "c1.weight", 0, [k]) == [2 * k, 2 * k + 1]
        assert positions(g, "g.weight", 0, [k]) == [3 * k, 3 * k + 1, 3 * k + 2]
        assert positions(g, "c3.weight", 1, [k]) == [3 * k, 3 * k + 1, 3 * k + 2]
    assert ("g.weight", 1) not in {(m.name, m.dim) for gr in graph.groups for m in gr.members}
    assert_prunes(model, x, graph, {g: [1, 3]})
    assert model.g.groups == 2
    assert (model.g.in_channels, model.g.out_channels) == (4, 6)
    assert tuple(model.g.weight.shape) == (6, 2, 3, 3)
    assert (model.c1.out_channels, model.c3.in_channels) == (4, 6)


class DepthwiseNet(nn.Module):
    def __init__(self, mult=1):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8 * mult, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8 * mult)
        self.c3 = nn.Conv2d(8 * mult, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.bn(self.dw(F.relu(self.c1(x))))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv_ties_channel_i_in_to_i_out(mult):
    model, x = double(randomize_bn(DepthwiseNet(mult)), torch.randn(2, 3, 6, 6))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("dw") is g and graph.group_of("bn") is g
    assert members(g) == conv_members("c1") | conv_members("dw") | bn_members("bn") | {("c3.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    for pos in range(8):
        c = channel_at(g, "c1.weight", 0, pos)
        assert positions(g, "dw.weight", 0, [c]) == list(range(pos * mult, (pos + 1) * mult))
        assert positions(g, "c3.weight", 1, [c]) == list(range(pos * mult, (pos + 1) * mult))
    chans = [channel_at(g, "c1.weight", 0, p) for p in (0, 5)]
    assert_prunes(model, x, graph, {g: chans})
    assert (model.dw.groups, model.dw.in_channels, model.dw.out_channels) == (6, 6, 6 * mult)
    assert model.bn.num_features == 6 * mult and model.c3.in_channels == 6 * mult


class TConvNet(nn.Module):
    def __init__(self, nd):
        super().__init__()
        self.c1 = _CONV[nd](3, 8, 3, padding=1)
        self.t = _TCONV[nd](8, 6, 2, stride=2)
        self.c3 = _CONV[nd](6, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.t(F.relu(self.c1(x)))))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose(nd):
    model, x = double(TConvNet(nd), torch.randn((2, 3) + (3,) * nd))
    graph = dp.build_graph(model, x)
    gin = graph.group_of("c1")
    assert members(gin) == conv_members("c1") | {("t.weight", 0)}  # ConvTranspose weight is (in, out, k)
    gout = graph.group_of("t")
    assert members(gout) == {("t.weight", 1), ("t.bias", 0), ("c3.weight", 1)}
    assert (gin.size, gout.size) == (8, 6)
    assert gin.prunable and gout.prunable
    assert_prunes(model, x, graph, {gin: [0, 7], gout: [2]})
    assert (model.t.in_channels, model.t.out_channels) == (6, 5)
    assert tuple(model.t.weight.shape[:2]) == (6, 5)
    assert (model.c1.out_channels, model.c3.in_channels) == (6, 5)


class FunctionalConv(nn.Module):
    """A conv on a weight read in ``forward`` (weight standardization style)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(F.conv2d(x, self.w * 2.0, padding=1))


def test_functional_conv_on_a_parameter():
    model, x = double(FunctionalConv(), torch.randn(2, 3, 6, 6))
    graph = dp.build_graph(model, x)
    g = group_with(graph, "w", 0)
    assert members(g) == {("w", 0), ("c2.weight", 1)} and g.size == 8
    # the kernel dims are no channel space: they are not listed as (frozen) groups
    assert not any(m.name == "w" and m.dim >= 2 for grp in graph.groups for m in grp.members)
    assert "kernel dim" not in graph.summary()
    assert_prunes(model, x, graph, {g: [1, 5]})
    assert model.w.shape == (6, 3, 3, 3) and model.c2.in_channels == 6


def test_grouped_conv_transpose_freezes_with_reason():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.t = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
            self.c3 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c3(self.t(self.c1(x)))

    model, x = double(M(), torch.randn(1, 3, 4, 4))
    graph = dp.build_graph(model, x)
    assert_frozen(graph.group_of("c1"), "transposed", "`t`")
    assert_frozen(graph.group_of("t"), "transposed", "`t`")


# ======================================================================================= linear
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(16, 32)
        self.l2 = nn.Linear(32, 24)
        self.l3 = nn.Linear(24, 4)

    def forward(self, x):
        return self.l3(F.gelu(self.l2(F.relu(self.l1(x)))))


@pytest.mark.parametrize("shape", [(3, 16), (2, 5, 16)], ids=["NC", "NLC"])
def test_linear(shape):
    model, x = double(MLP(), torch.randn(*shape))
    graph = dp.build_graph(model, x)
    g1, g2 = graph.group_of("l1"), graph.group_of("l2")
    assert members(g1) == {("l1.weight", 0), ("l1.bias", 0), ("l2.weight", 1)}
    assert members(g2) == {("l2.weight", 0), ("l2.bias", 0), ("l3.weight", 1)}
    assert (g1.size, g2.size, g1.n_frozen, g2.n_frozen) == (32, 24, 0, 0)
    assert_frozen(group_with(graph, "l1.weight", 1), "model input")
    assert_frozen(graph.group_of("l3"), "output")
    assert len(graph.groups) == 4
    assert_prunes(model, x, graph, {g1: [0, 31, 7], g2: [3]})
    assert (model.l1.out_features, model.l2.in_features, model.l2.out_features, model.l3.in_features) == (29, 29, 23, 23)


# ========================================================================== normalization layers
class BN1dNet(nn.Module):
    """BatchNorm1d on (N, C) after a Linear and on (N, C, L) after a Conv1d."""

    def __init__(self, affine=True, stats=True):
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.bn_a = nn.BatchNorm1d(8, affine=affine, track_running_stats=stats)
        self.l2 = nn.Linear(8, 8)
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm1d(8, affine=affine, track_running_stats=stats)
        self.c2 = nn.Conv1d(8, 8, 1)

    def forward(self, x, s):
        a = self.l2(F.relu(self.bn_a(self.l1(x))))
        b = self.c2(F.relu(self.bn_b(self.c1(s))))
        return a.unsqueeze(-1) + b


@pytest.mark.parametrize("affine,stats", [(True, True), (False, True), (True, False)])
def test_batchnorm1d(affine, stats):
    model = randomize_bn(BN1dNet(affine, stats))
    model, x = double(model, (torch.randn(3, 6), torch.randn(3, 3, 5)))
    graph = dp.build_graph(model, x)
    ga = graph.group_of("l1")
    gb = graph.group_of("c1")
    assert graph.group_of("bn_a") is ga and graph.group_of("bn_b") is gb
    assert members(ga) == {("l1.weight", 0), ("l1.bias", 0), ("l2.weight", 1)} | bn_members("bn_a", affine, stats)
    assert members(gb) == conv_members("c1") | {("c2.weight", 1)} | bn_members("bn_b", affine, stats)
    assert (ga.size, gb.size) == (8, 8)
    if not stats:
        # batch statistics normalize each channel on its own: still function preserving
        model.train()
    exact = stats or affine
    assert_prunes(model, x, graph, {ga: [2, 3], gb: [0]}, exact=exact, zero_consumers=not affine)
    assert (model.bn_a.num_features, model.bn_b.num_features) == (6, 7)


@pytest.mark.parametrize("nd", [2, 3])
def test_batchnorm_2d_3d_without_affine(nd):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = _CONV[nd](3, 8, 1)
            self.bn = _BN[nd](8, affine=False)
            self.c2 = _CONV[nd](8, 2, 1)

        def forward(self, x):
            return self.c2(self.bn(self.c1(x)))

    model, x = double(randomize_bn(M()), torch.randn((2, 3) + (3,) * nd))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("bn") is g
    assert members(g) == conv_members("c1") | bn_members("bn", affine=False) | {("c2.weight", 1)}
    # the running mean is a producer here: zero it too, then BN outputs exactly 0
    assert_prunes(model, x, graph, {g: [4]})
    assert model.bn.num_features == 7 and model.bn.running_mean.shape == (7,)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_instance_norm(nd, affine):
    norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[nd]

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = _CONV[nd](3, 8, 1)
            self.n = norm(8, affine=affine)
            self.c2 = _CONV[nd](8, 2, 1)

        def forward(self, x):
            return self.c2(self.n(self.c1(x)))

    model, x = double(M(), torch.randn((2, 3) + (4,) * nd))
    if affine:
        with torch.no_grad():
            model.n.weight.uniform_(0.5, 2)
            model.n.bias.uniform_(-1, 1)
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("n") is g
    assert members(g) == conv_members("c1") | bn_members("n", affine=affine, stats=False) | {("c2.weight", 1)}
    assert g.size == 8
    # a zero channel normalizes to zero; other channels are normalized on their own
    assert_prunes(model, x, graph, {g: [1, 2]}, zero_consumers=not affine)
    assert model.n.num_features == 6


class GNNet(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(groups, 16)
        self.c2 = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.c2(F.relu(self.gn(self.c1(x))))


def test_group_norm_prunes_whole_groups():
    model, x = double(GNNet(4), torch.randn(2, 3, 4, 4))
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 2)
        model.gn.bias.uniform_(-1, 1)
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("gn") is g
    assert members(g) == conv_members("c1") | {("gn.weight", 0), ("gn.bias", 0), ("gn.num_channels", 0),
                                               ("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (4, 0)
    for k in range(4):
        assert positions(g, "gn.weight", 0, [k]) == list(range(4 * k, 4 * k + 4))
    # the other groups' statistics are untouched: exact
    assert_prunes(model, x, graph, {g: [1, 2]})
    assert (model.gn.num_groups, model.gn.num_channels) == (2, 8)
    assert model.gn.num_channels % model.gn.num_groups == 0


def test_group_norm_single_group():
    model, x = double(GNNet(1), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("gn.weight", 0), ("gn.bias", 0), ("gn.num_channels", 0),
                                               ("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (16, 0)
    assert_prunes(model, x, graph, {g: [0, 3, 9]}, exact=False)  # normalizes over channels
    assert (model.gn.num_groups, model.gn.num_channels) == (1, 13)


class ConvNeXtish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln = nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 32)
        self.pw2 = nn.Linear(32, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.ln(y))))
        return self.head(y.permute(0, 3, 1, 2))


def test_layernorm_channel_last_convnext_block():
    model, x = double(ConvNeXtish(), torch.randn(2, 3, 5, 5))
    graph = dp.build_graph(model, x)
    ga, gb, gc = graph.group_of("stem"), graph.group_of("pw1"), graph.group_of("pw2")
    assert graph.group_of("dw") is ga and graph.group_of("ln") is ga
    assert members(ga) == conv_members("stem") | conv_members("dw") | {
        ("ln.weight", 0), ("ln.bias", 0), ("ln.normalized_shape[0]", 0), ("pw1.weight", 1)}
    assert members(gb) == {("pw1.weight", 0), ("pw1.bias", 0), ("pw2.weight", 1)}
    assert members(gc) == {("pw2.weight", 0), ("pw2.bias", 0), ("head.weight", 1)}
    assert (ga.size, gb.size, gc.size) == (8, 32, 8)
    assert ga.prunable and gb.prunable and gc.prunable
    assert_prunes(model, x, graph, {ga: [0, 1], gb: [5, 6, 7], gc: [3]}, exact=False)
    assert model.ln.normalized_shape == (6,)
    assert (model.dw.groups, model.pw1.in_features, model.pw1.out_features, model.head.in_channels) == (6, 6, 29, 7)


def test_layernorm_channel_last_exact_outside_the_normalized_space():
    model, x = double(ConvNeXtish(), torch.randn(2, 3, 5, 5))
    graph = dp.build_graph(model, x)
    assert_prunes(model, x, graph, {graph.group_of("pw1"): [0, 9], graph.group_of("pw2"): [7]})


def test_layernorm_without_affine_updates_normalized_shape():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 8)
            self.ln = nn.LayerNorm(8, elementwise_affine=False)
            self.l2 = nn.Linear(8, 2)

        def forward(self, x):
            return self.l2(self.ln(self.l1(x)))

    model, x = double(M(), torch.randn(2, 5, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("l1")
    assert members(g) == {("l1.weight", 0), ("l1.bias", 0), ("ln.normalized_shape[0]", 0), ("l2.weight", 1)}
    assert_prunes(model, x, graph, {g: [3]}, exact=False)
    assert model.ln.normalized_shape == (7,)


class TVLayerNorm2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.ln = torchvision.models.convnext.LayerNorm2d(8)
        self.c2 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(self.ln(self.c1(x)))


def test_torchvision_layernorm2d():
    model, x = double(TVLayerNorm2dNet(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("ln") is g
    assert members(g) == conv_members("c1") | {("ln.weight", 0), ("ln.bias", 0), ("ln.normalized_shape[0]", 0),
                                               ("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    assert_prunes(model, x, graph, {g: [2, 4]}, exact=False)
    assert tuple(model.ln.normalized_shape) == (6,)
    assert model.ln.weight.shape == (6,)


def test_prelu_per_channel_and_shared():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.act = nn.PReLU(8)
            self.c2 = nn.Conv2d(8, 6, 1)
            self.act1 = nn.PReLU()
            self.c3 = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.c3(self.act1(self.c2(self.act(self.c1(x)))))

    model, x = double(M(), torch.randn(2, 3, 4, 4))
    with torch.no_grad():
        model.act.weight.uniform_(0.1, 0.5)
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("act.weight", 0), ("c2.weight", 1)}
    g2 = graph.group_of("c2")
    assert members(g2) == conv_members("c2") | {("c3.weight", 1)}  # single-slope PReLU: no member
    assert_prunes(model, x, graph, {g: [0, 6], g2: [1]})
    assert model.act.num_parameters == 6 and model.act.weight.shape == (6,)
    assert model.act1.num_parameters == 1


def test_embedding_then_linear():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.l1 = nn.Linear(8, 16)
            self.l2 = nn.Linear(16, 3)

        def forward(self, idx):
            return self.l2(F.relu(self.l1(self.emb(idx))))

    model, x = double(M(), torch.randint(0, 10, (2, 5)))
    graph = dp.build_graph(model, x)
    g = graph.group_of("emb")
    assert members(g) == {("emb.weight", 1), ("l1.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    assert ("emb.weight", 0) not in {(m.name, m.dim) for gr in graph.groups for m in gr.members}
    assert_prunes(model, x, graph, {g: [1, 2, 3]})
    assert model.emb.embedding_dim == 5 and model.emb.num_embeddings == 10
    assert model.l1.in_features == 5


# ============================================================ same-channel ops (passthrough)
_ZERO_AT_ZERO = [nn.ReLU(), nn.ReLU6(), nn.GELU(), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.Tanh(),
                 nn.LeakyReLU(0.1), nn.ELU(), nn.SELU(), nn.CELU(), nn.Softsign(), nn.Hardtanh(),
                 nn.Tanhshrink(), nn.Softshrink(), nn.Hardshrink(), nn.Identity(), nn.Dropout(0.3),
                 nn.Dropout2d(0.3), nn.AlphaDropout(0.3), nn.FeatureAlphaDropout(0.3)]
_NONZERO_AT_ZERO = [nn.Sigmoid(), nn.Hardsigmoid(), nn.Softplus(), nn.LogSigmoid()]
_FUNCS = [torch.relu, F.relu6, F.gelu, F.silu, torch.tanh, lambda t: F.leaky_relu(t, 0.2),
          lambda t: F.dropout(t, 0.5, training=False), lambda t: t.clamp(-1, 1), lambda t: t.contiguous(),
          lambda t: torch.clone(t), lambda t: -t, lambda t: t.abs()]


class ActNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.act = act
        self.c2 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


class FuncNet(ActNet):
    def __init__(self, fn):
        super().__init__(nn.Identity())
        self.fn = fn

    def forward(self, x):
        return self.c2(self.fn(self.c1(x)))


@pytest.mark.parametrize("act", _ZERO_AT_ZERO + _NONZERO_AT_ZERO + _FUNCS,
                         ids=lambda a: getattr(a, "__name__", type(a).__name__))
def test_activations_keep_channels(act):
    model = ActNet(act) if isinstance(act, nn.Module) else FuncNet(act)
    model, x = double(model, torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    nonzero = any(act is a for a in _NONZERO_AT_ZERO)
    assert_prunes(model, x, graph, {g: [0, 3]}, zero_consumers=nonzero)


_POOLS = [nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((3, 2)),
          nn.AdaptiveMaxPool2d(2), nn.LPPool2d(2, 2), nn.Upsample(scale_factor=2), nn.ZeroPad2d(1),
          nn.ReflectionPad2d(1), lambda t: F.max_pool2d(t, 2), lambda t: F.adaptive_avg_pool2d(t, 1),
          lambda t: F.avg_pool2d(t, 3, 1, 1), lambda t: F.interpolate(t, size=(5, 5)),
          lambda t: F.pad(t, (1, 1, 2, 0))]


@pytest.mark.parametrize("pool", _POOLS, ids=lambda a: type(a).__name__)
def test_pooling_and_resampling_keep_channels(pool):
    model = ActNet(pool) if isinstance(pool, nn.Module) else FuncNet(pool)
    model, x = double(model, torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    # LPPool of a zero channel is 0; Upsample/pads of zeros are zeros
    assert_prunes(model, x, graph, {g: [2, 7]})


def test_pooling_1d_3d():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(3, 8, 1)
            self.pa = nn.AdaptiveMaxPool1d(2)
            self.a2 = nn.Conv1d(8, 2, 1)
            self.b = nn.Conv3d(3, 8, 1)
            self.pb = nn.AvgPool3d(2)
            self.b2 = nn.Conv3d(8, 2, 1)

        def forward(self, s, v):
            return self.a2(self.pa(self.a(s))), self.b2(self.pb(self.b(v)))

    model, x = double(M(), (torch.randn(2, 3, 6), torch.randn(2, 3, 4, 4, 4)))
    graph = dp.build_graph(model, x)
    ga, gb = graph.group_of("a"), graph.group_of("b")
    assert members(ga) == conv_members("a") | {("a2.weight", 1)}
    assert members(gb) == conv_members("b") | {("b2.weight", 1)}
    assert_prunes(model, x, graph, {ga: [1], gb: [0, 4]})


# ========================================================================= elementwise & broadcast
_BINOPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1),
    "torch.add": lambda a, b: torch.add(a, b, alpha=2),
    "maximum": lambda a, b: torch.maximum(a, b),
    "iadd": lambda a, b: a.add_(b),
}


class BinNet(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 1)
        self.op = op

    def forward(self, x):
        return self.c(self.op(self.a(x), self.b(x)))


@pytest.mark.parametrize("op", list(_BINOPS), ids=list(_BINOPS))
def test_elementwise_binary_ties_both_producers(op):
    model, x = double(BinNet(_BINOPS[op]), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("a")
    assert graph.group_of("b") is g
    assert members(g) == conv_members("a") | conv_members("b") | {("c.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    for k in range(8):
        assert positions(g, "a.weight", 0, [k]) == positions(g, "b.weight", 0, [k]) == positions(g, "c.weight", 1, [k])
    assert_prunes(model, x, graph, {g: [0, 5]})
    assert model.a.out_channels == model.b.out_channels == model.c.in_channels == 6


class SENet(nn.Module):
    def __init__(self, use_mean=False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.use_mean = use_mean

    def forward(self, x):
        y = F.relu(self.c1(x))
        s = y.mean((2, 3), keepdim=True) if self.use_mean else F.adaptive_avg_pool2d(y, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # (N, C, 1, 1)
        return self.c3(y * s)


@pytest.mark.parametrize("use_mean", [False, True], ids=["pool", "mean"])
def test_se_broadcast_scale(use_mean):
    model, x = double(SENet(use_mean), torch.randn(2, 3, 5, 5))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("fc2") is g
    assert members(g) == conv_members("c1") | {("fc1.weight", 1)} | conv_members("fc2") | {("c3.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    inner = graph.group_of("fc1")
    assert members(inner) == conv_members("fc1") | {("fc2.weight", 1)}
    assert inner.size == 2
    assert_prunes(model, x, graph, {g: [1, 6], inner: [0]})
    assert (model.c1.out_channels, model.fc1.in_channels, model.fc2.out_channels, model.c3.in_channels) == (6, 6, 6, 6)
    assert (model.fc1.out_channels, model.fc2.in_channels) == (1, 1)


class SELinearNet(nn.Module):
    """The canonical SE block: ``b, c, _, _ = x.size()``, Linear excitation, ``view(b, c, 1, 1)``."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 2)
        self.fc2 = nn.Linear(2, 8)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        b, c, _, _ = y.size()
        s = self.avg(y).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return self.c3(y * s.expand_as(y))


def test_se_block_with_linear_and_view_of_read_sizes():
    model, x = double(SELinearNet(), torch.randn(2, 3, 5, 5))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("fc2") is g
    assert members(g) == conv_members("c1") | {("fc1.weight", 1), ("fc2.weight", 0), ("fc2.bias", 0),
                                               ("c3.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    assert_prunes(model, x, graph, {g: [0, 4, 5], graph.group_of("fc1"): [1]})
    assert (model.fc1.in_features, model.fc2.out_features, model.c3.in_channels) == (5, 5, 5)


# ==================================================================== concatenation and splitting
class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), F.relu(self.b(x))], dim=1))


def test_cat_along_channels_one_group_for_both_producers():
    model, x = double(CatNet(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("a")
    assert graph.group_of("b") is g
    assert members(g) == conv_members("a") | conv_members("b") | {("c.weight", 1)}
    assert (g.size, g.n_frozen) == (10, 0)
    for p in range(4):
        assert positions(g, "c.weight", 1, [channel_at(g, "a.weight", 0, p)]) == [p]
        assert positions(g, "b.weight", 0, [channel_at(g, "a.weight", 0, p)]) == []
    for p in range(6):
        assert positions(g, "c.weight", 1, [channel_at(g, "b.weight", 0, p)]) == [4 + p]
    chans = [channel_at(g, "a.weight", 0, 1), channel_at(g, "b.weight", 0, 0), channel_at(g, "b.weight", 0, 5)]
    assert_prunes(model, x, graph, {g: chans})
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (3, 4, 7)


def test_cat_with_the_model_input_freezes_only_the_input_part():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(11, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([x, self.a(x)], 1))

    model, x = double(M(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("a")
    # the 3 input channels read by `a` are the same channels as the cat's first part
    assert members(g) == conv_members("a") | {("c.weight", 1), ("a.weight", 1)}
    assert (g.size, g.n_frozen, g.prunable) == (8, 3, True)
    assert "model input" in g.reason
    assert sorted(member(g, "c.weight", 1).indices(range(8)).tolist()) == list(range(3, 11))
    assert_prunes(model, x, graph, {g: [0, 7]})
    assert model.c.in_channels == 9


class SplitNet(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.ca = nn.Conv2d(4 if mode != "split_uneven" else 3, 2, 1)
        self.cb = nn.Conv2d(4 if mode != "split_uneven" else 5, 2, 1)
        self.mode = mode

    def forward(self, x):
        y = self.c1(x)
        if self.mode == "split_uneven":
            a, b = torch.split(y, [3, 5], dim=1)
        elif self.mode == "split_equal":
            a, b = y.split(4, dim=1)
        else:
            a, b = y.chunk(2, dim=1)
        return self.ca(a) + self.cb(b)


@pytest.mark.parametrize("mode", ["split_uneven", "split_equal"])
def test_split_with_constant_sizes_freezes(mode):
    model, x = double(SplitNet(mode), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1")
    assert_frozen(g, "split", "constant sizes")
    node_name = "split" if mode == "split_uneven" else "split"
    assert f"node `{node_name}" in g.reason
    assert members(group_with(graph, "ca.weight", 1)) == {("ca.weight", 1)}
    assert members(group_with(graph, "cb.weight", 1)) == {("cb.weight", 1)}
    # ca/cb inputs are fed by the frozen split: frozen as well
    assert not group_with(graph, "ca.weight", 1).prunable


class SplitByWidth(nn.Module):
    """``split(y, self.width)``: equal parts sized by a width attribute (Res2Net)."""

    def __init__(self):
        super().__init__()
        self.width = 4
        self.c1, self.ca, self.cb = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.c1(x), self.width, 1)
        return self.ca(a) + self.cb(b)


def test_split_by_a_width_attribute_stays_prunable_and_updates_it():
    model, x = double(SplitByWidth(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("ca.weight", 1), ("cb.weight", 1), ("width", 0)}
    assert (g.size, g.n_frozen) == (4, 0)
    for j in range(4):  # position j of both parts goes together, so both parts keep one width
        c = channel_at(g, "ca.weight", 1, j)
        assert positions(g, "c1.weight", 0, [c]) == [j, j + 4]
    assert_prunes(model, x, graph, {g: [channel_at(g, "ca.weight", 1, 0), channel_at(g, "ca.weight", 1, 3)]})
    assert (model.width, model.c1.out_channels, model.ca.in_channels) == (2, 4, 2)


def test_chunk_ties_position_j_of_each_chunk():
    model, x = double(SplitNet("chunk"), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("ca.weight", 1), ("cb.weight", 1)}
    assert (g.size, g.n_frozen) == (4, 0)
    for j in range(4):
        c = channel_at(g, "ca.weight", 1, j)
        assert positions(g, "c1.weight", 0, [c]) == [j, j + 4]
        assert positions(g, "cb.weight", 1, [c]) == [j]
    assert_prunes(model, x, graph, {g: [channel_at(g, "ca.weight", 1, 1)]})
    assert (model.c1.out_channels, model.ca.in_channels, model.cb.in_channels) == (6, 3, 3)


class SliceNet(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(4, 2, 1)
        self.mode = mode

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y[:, 4:] if self.mode == "tail" else y[:, :4])


def test_getitem_slice_tail():
    model, x = double(SliceNet("tail"), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen, g.prunable) == (4, 4, True)
    assert "slice" in g.reason and "getitem" in g.reason
    m = member(g, "c1.weight", 0)
    assert sorted(m.indices(range(4)).tolist()) == [4, 5, 6, 7]  # the first 4 are frozen
    for p in range(4, 8):
        assert positions(g, "c2.weight", 1, [channel_at(g, "c1.weight", 0, p)]) == [p - 4]
    chans = [channel_at(g, "c1.weight", 0, 4), channel_at(g, "c1.weight", 0, 6)]
    assert_prunes(model, x, graph, {g: chans})
    assert (model.c1.out_channels, model.c2.in_channels) == (6, 2)


def test_getitem_slice_head():
    model, x = double(SliceNet("head"), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    # positions 0..3 are read with a constant end: frozen. 4..7 are never read: prunable.
    assert (g.size, g.n_frozen) == (4, 4)
    assert "slice" in g.reason
    assert sorted(member(g, "c1.weight", 0).indices(range(4)).tolist()) == [4, 5, 6, 7]
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert member(g, "c2.weight", 1).indices(range(g.size)).numel() == 0  # c2 reads only frozen ones
    assert_prunes(model, x, graph, {g: [0, 1, 2]})
    assert (model.c1.out_channels, model.c2.in_channels) == (5, 4)


# ========================================================================= reshapes and reductions
class FlattenNet(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)  # 5x5 -> 3x3
        self.flat = nn.Flatten()
        self.fc = nn.Linear(36, 5)
        self.how = how

    def forward(self, x):
        y = F.relu(self.c1(x))
        if self.how == "module":
            y = self.flat(y)
        elif self.how == "torch":
            y = torch.flatten(y, 1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        elif self.how == "reshape":
            y = y.reshape(x.shape[0], -1)
        elif self.how == "view_sym":
            y = y.view(y.size(0), y.size(1) * y.size(2) * y.size(3))
        return self.fc(y)


@pytest.mark.parametrize("how", ["module", "torch", "view", "reshape", "view_sym"])
def test_flatten_to_linear_maps_channel_to_hw_features(how):
    model, x = double(FlattenNet(how), torch.randn(2, 3, 5, 5))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("fc.weight", 1)}
    assert (g.size, g.n_frozen, g.prunable) == (4, 0, True)
    for c in range(4):
        assert positions(g, "fc.weight", 1, [c]) == list(range(c * 9, (c + 1) * 9))
        assert positions(g, "c1.weight", 0, [c]) == [c]
    assert_prunes(model, x, graph, {g: [1, 2]})
    assert model.fc.in_features == 18 and model.c1.out_channels == 2


class ConstViewNet(nn.Module):
    def __init__(self, const):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 1)
        self.fc = nn.Linear(64, 3)
        self.const = const

    def forward(self, x):
        y = self.c1(x)
        if self.const:
            y = y.view(y.size(0), 64, -1)
        else:
            y = y.view(y.size(0), y.size(1), -1)
        return self.fc(y.mean(-1))


def test_view_with_constant_channel_width_freezes():
    model, x = double(ConstViewNet(True), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1")
    assert_frozen(g, "64", "constant", "view")
    assert_frozen(group_with(graph, "fc.weight", 1))  # fed by the frozen view


def test_view_with_width_read_from_tensor_is_prunable():
    model, x = double(ConstViewNet(False), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("fc.weight", 1)}
    assert (g.size, g.n_frozen) == (64, 0)
    assert_prunes(model, x, graph, {g: list(range(0, 64, 3))})
    assert model.fc.in_features == 64 - 22


class HeadsNet(nn.Module):
    """(N, L, C) tokens split into heads: a constant head count or a constant head size."""

    def __init__(self, const):
        super().__init__()
        self.q = nn.Linear(6, 16)
        self.o = nn.Linear(16, 3)
        self.const = const

    def forward(self, x):
        n, l, _ = x.shape
        t = self.q(x)
        h = t.view(n, l, 4, -1) if self.const == "heads" else t.view(n, l, -1, 4)
        h = F.relu(h).transpose(1, 2)          # (N, heads, L, head_dim)
        return self.o(h.transpose(1, 2).reshape(n, l, -1))


def test_reshape_into_a_constant_number_of_heads():
    model, x = double(HeadsNet("heads"), torch.randn(2, 5, 6))
    graph = dp.build_graph(model, x)
    g = graph.group_of("q")
    assert members(g) == {("q.weight", 0), ("q.bias", 0), ("o.weight", 1)}
    assert (g.size, g.n_frozen) == (4, 0)  # position j of every head goes together
    for j in range(4):
        c = channel_at(g, "q.weight", 0, j)
        assert positions(g, "q.weight", 0, [c]) == [j, 4 + j, 8 + j, 12 + j]
        assert positions(g, "o.weight", 1, [c]) == [j, 4 + j, 8 + j, 12 + j]
    assert_prunes(model, x, graph, {g: [channel_at(g, "q.weight", 0, 2)]})
    assert (model.q.out_features, model.o.in_features) == (12, 12)


def test_reshape_into_heads_of_constant_size():
    model, x = double(HeadsNet("head_dim"), torch.randn(2, 5, 6))
    graph = dp.build_graph(model, x)
    g = graph.group_of("q")
    assert members(g) == {("q.weight", 0), ("q.bias", 0), ("o.weight", 1)}
    assert (g.size, g.n_frozen) == (4, 0)  # whole heads go
    for h in range(4):
        c = channel_at(g, "q.weight", 0, 4 * h)
        assert positions(g, "q.weight", 0, [c]) == list(range(4 * h, 4 * h + 4))
        assert positions(g, "o.weight", 1, [c]) == list(range(4 * h, 4 * h + 4))
    assert_prunes(model, x, graph, {g: [channel_at(g, "q.weight", 0, 4)]})
    assert (model.q.out_features, model.o.in_features) == (12, 12)


_REDUCE = {
    "mean": lambda y: y.mean((2, 3)),
    "mean_keepdim": lambda y: y.mean(dim=(-1, -2), keepdim=True).flatten(1),
    "sum": lambda y: torch.sum(y, dim=(2, 3)),
    "amax": lambda y: y.amax(dim=(2, 3)),
    "mean_twice": lambda y: y.mean(-1).mean(-1),
    "max_dim": lambda y: y.flatten(2).max(dim=2)[0],
}


@pytest.mark.parametrize("how", list(_REDUCE), ids=list(_REDUCE))
def test_reductions_over_spatial_dims(how):
    model, x = double(FuncNet(_REDUCE[how]), torch.randn(2, 3, 4, 4))
    model.c2 = nn.Linear(8, 2).double()
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    assert_prunes(model, x, graph, {g: [3, 4]})
    assert model.c2.in_features == 6


class PermuteNet(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 1)
        self.fc = nn.Linear(8, 6)
        self.c2 = nn.Conv1d(6, 2, 1)
        self.how = how

    def forward(self, x):
        y = self.c1(x)  # (N, C, L)
        if self.how == "transpose":
            y = self.fc(y.transpose(1, 2)).transpose(1, 2)
        elif self.how == "permute":
            y = self.fc(y.permute(0, 2, 1)).permute(0, 2, 1)
        elif self.how == "mT":
            y = self.fc(y.transpose(1, 2)).mT
        else:
            y = torch.movedim(self.fc(torch.movedim(y, 1, -1)), -1, 1)
        return self.c2(y)


@pytest.mark.parametrize("how", ["transpose", "permute", "mT", "movedim"])
def test_permute_transpose_move_the_channel_dim(how):
    model, x = double(PermuteNet(how), torch.randn(2, 3, 5))
    graph = dp.build_graph(model, x)
    g1, g2 = graph.group_of("c1"), graph.group_of("fc")
    assert members(g1) == conv_members("c1") | {("fc.weight", 1)}
    assert members(g2) == {("fc.weight", 0), ("fc.bias", 0), ("c2.weight", 1)}
    assert (g1.size, g2.size) == (8, 6)
    assert_prunes(model, x, graph, {g1: [0, 2], g2: [5]})
    assert (model.fc.in_features, model.fc.out_features, model.c2.in_channels) == (6, 5, 5)


def _shufflenet_shuffle(x, groups: int):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


def _torchvision_shuffle(x, groups: int):
    """torchvision.models.shufflenetv2.channel_shuffle: the last view reads num_channels."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleNet(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.shuffle = nn.ChannelShuffle(2)
        self.c2 = nn.Conv2d(8, 2, 1)
        self.how = how

    def forward(self, x):
        y = self.c1(x)
        if self.how == "module":
            y = self.shuffle(y)
        elif self.how == "functional":
            y = F.channel_shuffle(y, 2)
        elif self.how == "torchvision":
            y = _torchvision_shuffle(y, 2)
        else:
            y = _shufflenet_shuffle(y, 2)
        return self.c2(y)


@pytest.mark.parametrize("how", ["view_transpose", "torchvision", "module", "functional"])
def test_channel_shuffle(how):
    model, x = double(ShuffleNet(how), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (4, 0)
    # output 2k+i of the shuffle reads input i*4+k: input k and k+4 go together
    for k in range(4):
        c = channel_at(g, "c1.weight", 0, k)
        assert positions(g, "c1.weight", 0, [c]) == [k, k + 4]
        assert positions(g, "c2.weight", 1, [c]) == [2 * k, 2 * k + 1]
    assert_prunes(model, x, graph, {g: [channel_at(g, "c1.weight", 0, 1)]})
    assert (model.c1.out_channels, model.c2.in_channels) == (6, 6)


# ============================================================== parameters used directly in forward
class DirectParamNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.c2 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(self.c1(x) * self.scale + self.shift)


def test_parameter_used_directly_joins_the_channel_space():
    model, x = double(DirectParamNet(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("scale", 0), ("shift", 1), ("c2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    old_scale, old_shift = model.scale, model.shift
    assert_prunes(model, x, graph, {g: [0, 7]})
    assert model.scale is old_scale and model.shift is old_shift
    assert tuple(model.scale.shape) == (6, 1, 1) and tuple(model.shift.shape) == (1, 6, 1, 1)


class TokenParamNet(nn.Module):
    """Class token and position embedding on (N, L, C) tokens, layer scale on channels."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.proj(x) + self.pos
        return self.head(t * self.gamma)


def test_position_embedding_and_layer_scale_on_tokens():
    model, x = double(TokenParamNet(), torch.randn(2, 5, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("proj")
    assert members(g) == {("proj.weight", 0), ("proj.bias", 0), ("pos", 2), ("gamma", 0), ("head.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    # the token dim of pos has a fixed size (the input's length): frozen
    assert_frozen(group_with(graph, "pos", 1))
    assert_prunes(model, x, graph, {g: [1, 2, 3]})
    assert tuple(model.pos.shape) == (1, 5, 5)


def test_shared_module_called_twice_has_one_set_of_channels():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = F.relu(self.c2(F.relu(self.c1(x))))
            return self.c3(F.relu(self.c2(y)))

    model, x = double(M(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert graph.group_of("c2") is g
    assert members(g) == conv_members("c1") | conv_members("c2") | {("c2.weight", 1), ("c3.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    for k in range(8):
        p = positions(g, "c1.weight", 0, [k])
        assert positions(g, "c2.weight", 0, [k]) == positions(g, "c2.weight", 1, [k]) == p
    assert_prunes(model, x, graph, {g: [2, 3]})
    assert tuple(model.c2.weight.shape[:2]) == (6, 6)


def test_shared_batchnorm_called_twice():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.bn(self.a(x)) * self.bn(self.b(x)))

    model, x = double(randomize_bn(M()), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("a")
    assert graph.group_of("b") is g and graph.group_of("bn") is g
    assert members(g) == conv_members("a") | conv_members("b") | bn_members("bn") | {("c.weight", 1)}
    assert_prunes(model, x, graph, {g: [0]})
    assert model.bn.num_features == 7


def test_tied_weights_share_atoms():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.mid = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.emb.weight  # tied input/output embedding

        def forward(self, idx):
            return self.out(F.relu(self.mid(self.emb(idx))))

    model, x = double(M(), torch.randint(0, 10, (2, 4)))
    graph = dp.build_graph(model, x)
    g = graph.group_of("emb")
    assert members(g) == {("emb.weight", 1), ("mid.weight", 1), ("mid.weight", 0), ("mid.bias", 0)}
    assert_prunes(model, x, graph, {g: [1]})
    assert model.out.weight is model.emb.weight and model.emb.weight.shape == (10, 7)
    assert model.out.in_features == 7 and model.emb.embedding_dim == 7


# ================================================================== model inputs and outputs
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.ca = nn.Conv2d(3, 8, 1)
        self.cb = nn.Conv2d(5, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x, y):
        return self.c(F.relu(self.ca(x) + self.cb(y)))


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_several_inputs(kind):
    ex = (torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    if kind == "dict":
        ex = {"x": ex[0], "y": ex[1]}
    model, x = double(TwoInputs(), ex)
    graph = dp.build_graph(model, x)
    g = graph.group_of("ca")
    assert graph.group_of("cb") is g
    assert members(g) == conv_members("ca") | conv_members("cb") | {("c.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    for name, n in (("ca", 3), ("cb", 5)):
        inp = group_with(graph, f"{name}.weight", 1)
        assert members(inp) == {(f"{name}.weight", 1)}
        assert (inp.size, inp.n_frozen) == (0, n)
    assert_prunes(model, x, graph, {g: [0, 1]})


class TwoOutputs(nn.Module):
    def __init__(self, return_hidden=False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.h1 = nn.Conv2d(8, 2, 1)
        self.h2 = nn.Linear(8, 3)
        self.return_hidden = return_hidden

    def forward(self, x):
        y = F.relu(self.c1(x))
        out = (self.h1(y), self.h2(y.mean((2, 3))))
        return out + (y,) if self.return_hidden else out


def test_several_outputs_freeze_output_channels():
    model, x = double(TwoOutputs(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1") | {("h1.weight", 1), ("h2.weight", 1)}
    assert (g.size, g.n_frozen) == (8, 0)
    for head, n in (("h1", 2), ("h2", 3)):
        og = graph.group_of(head)
        assert members(og) == {(f"{head}.weight", 0), (f"{head}.bias", 0)}
        assert_frozen(og, "output")
        assert og.n_frozen == n
    assert_prunes(model, x, graph, {g: [3]})


def test_hidden_tensor_returned_as_output_is_frozen():
    model, x = double(TwoOutputs(return_hidden=True), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert_frozen(g, "output")
    assert g.n_frozen == 8


def test_dict_output_frozen():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.c2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return {"feat": self.c2(F.relu(self.c1(x)))}

    model, x = double(M(), torch.randn(1, 3, 4, 4))
    graph = dp.build_graph(model, x)
    assert_frozen(graph.group_of("c2"), "output")
    assert graph.group_of("c1").prunable


def test_model_input_channels_are_never_pruned():
    model, x = double(MLP(), torch.randn(3, 16))
    graph = dp.build_graph(model, x)
    inp = group_with(graph, "l1.weight", 1)
    assert members(inp) == {("l1.weight", 1)}
    assert (inp.size, inp.n_frozen, inp.prunable) == (0, 16, False)
    assert "fixed-size" in inp.reason or "input" in inp.reason
    for g in graph.groups:
        for m in g.members:
            if (m.name, m.dim) == ("l1.weight", 1):
                assert m.indices(range(max(g.size, 1))).numel() == 0


def test_input_passed_through_to_an_add_freezes_the_residual_channels():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 3, 1)
            self.c2 = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.c2(x + self.c1(x))

    model, x = double(M(), torch.randn(1, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    # c1's outputs are added to the input's channels: one frozen group, read by c2
    assert members(g) == conv_members("c1") | {("c2.weight", 1), ("c1.weight", 1)}
    assert_frozen(g, "model input")


# =================================================================== what cannot be proven safe
class NoRuleNet(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 2, 1)
        self.op = op

    def forward(self, x):
        y = self.c1(x)
        if self.op == "roll":
            y = torch.roll(y, 1, dims=1)
        elif self.op == "fft":
            y = torch.fft.fft(y, dim=1).real
        elif self.op == "cumsum":
            y = torch.cumsum(y, dim=1)
        elif self.op == "flip":
            y = torch.flip(y, dims=(1,))
        return self.c2(y)


@pytest.mark.parametrize("op,word", [("fft", "fft"), ("cumsum", "cumsum")])
def test_op_without_rule_freezes_with_reason(op, word):
    model, x = double(NoRuleNet(op), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("c1")
    assert members(g) == conv_members("c1")
    assert_frozen(g, word, "no coupling rule")
    assert f"node `{word}" in g.reason


def test_unknown_module_freezes_with_reason_naming_its_type():
    class Weird(nn.Module):
        def forward(self, x):
            return x.roll(1, 1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.w = Weird()
            self.c2 = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c2(self.w(self.c1(x)))

    model, x = double(M(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x, leaf_modules=["w"])
    assert_frozen(graph.group_of("c1"), "Weird")
    graph = dp.build_graph(model, x)  # traced through: the method has no rule either
    assert_frozen(graph.group_of("c1"), "roll")


def test_ignored_layers_freezes_that_modules_output_channels():
    model, x = double(ConvBnNet(2), torch.randn(2, 3, 4, 4))
    for item in ("c1", model.c1):
        graph = dp.build_graph(model, x, ignored_layers=[item])
        g = graph.group_of("c1")
        assert members(g) == conv_members("c1") | bn_members("bn") | {("c2.weight", 1)}
        assert_frozen(g, "ignored_layers", "`c1`")
        assert g.n_frozen == 8
        assert graph.group_of("bn") is g


def test_ignored_layers_with_a_tied_weight_still_freezes_that_module():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l0 = nn.Linear(4, 8)
            self.l1 = nn.Linear(8, 8)
            self.l2 = nn.Linear(8, 8)
            self.l2.weight = self.l1.weight  # l2's weight is reached under the name l1.weight
            self.l3 = nn.Linear(8, 2)

        def forward(self, x):
            return self.l3(F.relu(self.l2(F.relu(self.l1(F.relu(self.l0(x)))))))

    model, x = double(M(), torch.randn(2, 4))
    graph = dp.build_graph(model, x, ignored_layers=["l2"])
    g = graph.group_of("l2")
    assert_frozen(g, "ignored_layers", "`l2`")


def test_module_registered_under_two_names_is_found_by_either():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = self.a  # an alias, as in ``self.encoder = self.backbone``
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.b(x))

    model, x = double(M(), torch.randn(1, 3, 4, 4))
    graph = dp.build_graph(model, x)
    assert graph.group_of("b") is graph.group_of("a")
    graph = dp.build_graph(model, x, ignored_layers=["b"])
    assert_frozen(graph.group_of("a"), "ignored_layers")


def test_ignored_layers_unknown_name_raises():
    model, x = double(ConvBnNet(2), torch.randn(2, 3, 4, 4))
    with pytest.raises(PruningError, match="nope"):
        dp.build_graph(model, x, ignored_layers=["nope"])


def test_prune_respects_ignored_layers():
    model = ConvBnNet(2)
    res = dp.prune(model, torch.randn(2, 3, 4, 4), ratio=0.5, ignored_layers=["c1"])
    assert model.c1.out_channels == 8 and model.bn.num_features == 8
    assert res.after.macs == res.before.macs


def test_group_of_unknown_name_raises_naming_it():
    model, x = double(ConvBnNet(2), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    with pytest.raises(PruningError, match="no_such_layer"):
        graph.group_of("no_such_layer")
    with pytest.raises(PruningError, match=r"c1\.nothing"):
        graph.group_of("c1.nothing")


# ================================================================================= inspection
def test_summary_str_and_networkx():
    model, x = double(CatNet(), torch.randn(2, 3, 4, 4))
    graph = dp.build_graph(model, x)
    g = graph.group_of("a")
    s = str(g)
    for name in ("a.weight", "b.weight", "c.weight", "10 prunable"):
        assert name in s
    summ = graph.summary()
    assert f"{len(graph.groups)} groups" in summ and "frozen:" in summ
    nxg = graph.to_networkx()
    assert nxg.has_edge(("group", g.index), ("c.weight", 1))
    assert nxg.nodes[("group", g.index)]["size"] == 10
    assert sum(1 for n in nxg.nodes if n[0] == "group") == len(graph.groups)
    # every (param, dim) is in exactly one group
    seen = [(m.name, m.dim) for gr in graph.groups for m in gr.members]
    assert len(seen) == len(set(seen))


def test_member_indices_partition_positions():
    model, x = double(ShuffleNet("view_transpose"), torch.randn(1, 3, 4, 4))
    graph = dp.build_graph(model, x)
    for g in graph.groups:
        for m in g.members:
            idx = m.indices(range(g.size)).tolist()
            assert len(idx) == len(set(idx))
            if g.n_frozen == 0:
                assert sorted(idx) == list(range(m.size))
    g = graph.group_of("c1")
    allpos = np.concatenate([member(g, "c2.weight", 1).indices([c]).numpy() for c in range(g.size)])
    assert sorted(allpos.tolist()) == list(range(8))


@pytest.mark.parametrize("op", ["roll", "flip"])
def test_roll_and_flip_freeze_only_the_dims_they_move(op):
    net, x = double(NoRuleNet(op), torch.randn(1, 3, 5, 5))
    g = dp.build_graph(net, x).group_of("c1")
    assert g.size == 0 and f"{op} along a prunable dim" in g.reason and f"`{op}`" in g.reason

    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.c1(x)
            y = torch.roll(y, (1, 2), dims=(2, 3)) if op == "roll" else torch.flip(y, dims=(2, 3))
            return self.c2(y)

    model, x = double(Spatial(), torch.randn(1, 3, 5, 5))
    g = dp.build_graph(model, x).group_of("c1")
    assert g.size == 8 and g.n_frozen == 0
    ref_shape = model(x).shape
    g.prune([1, 4])
    assert model(x).shape == ref_shape and model.c2.in_channels == 6


# ============================================================================ multi-head attention
class MHABlock(nn.Module):
    """A residual stream of width E (set by ``inp``) through self-attention and out to 3 features."""

    def __init__(self, E=12, H=3):
        super().__init__()
        self.inp = nn.Linear(5, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.out = nn.Linear(E, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.attn(h, h, h, need_weights=False)[0])


def _sliced_mha(mha, keep, heads, q_scale=1.0):
    """The reference: a fresh nn.MultiheadAttention built from ``mha``'s weights at stream positions
    ``keep`` (query rows times ``q_scale``)."""
    E, e = mha.embed_dim, len(keep)
    ref = nn.MultiheadAttention(e, heads, batch_first=True).double().eval()
    rows = torch.cat([keep + i * E for i in range(3)])
    scale = torch.ones(3 * e, dtype=torch.float64)
    scale[:e] = q_scale
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.in_proj_weight[rows][:, keep] * scale[:, None])
        ref.in_proj_bias.copy_(mha.in_proj_bias[rows] * scale)
        ref.out_proj.weight.copy_(mha.out_proj.weight[keep][:, keep])
        ref.out_proj.bias.copy_(mha.out_proj.bias[keep])
    return ref


@pytest.mark.parametrize("mode", ["heads", "head_dim"])
def test_multihead_attention_heads_or_head_dim(mode):
    E, H, hd = 12, 3, 4
    model, x = double(MHABlock(E, H), torch.randn(2, 6, 5))
    orig = {k: v.clone() for k, v in model.attn.state_dict().items()}
    original = nn.MultiheadAttention(E, H, batch_first=True).double().eval()
    original.load_state_dict(orig)
    graph = dp.build_graph(model, x, attention=mode)
    g = graph.group_of("inp")
    assert {("attn.in_proj_weight", 0), ("attn.in_proj_weight", 1), ("attn.out_proj.weight", 0),
            ("attn.out_proj.weight", 1), ("attn.embed_dim", 0), ("inp.weight", 0), ("out.weight", 1)} <= members(g)
    if mode == "heads":
        assert g.size == H and ("attn.num_heads", 0) in members(g)
        c = channel_at(g, "inp.weight", 0, hd)                 # head 1
        assert positions(g, "inp.weight", 0, [c]) == list(range(hd, 2 * hd))
        assert positions(g, "attn.in_proj_weight", 0, [c]) == [r + i * E for i in range(3) for r in range(hd, 2 * hd)]
        keep, heads = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11]), 2
        # removing a dead head (zero producers) preserves the function: head_dim, so the scale, is kept
        assert_prunes(model, x, graph, {g: [c]})
        assert (model.attn.num_heads, model.attn.head_dim, model.attn.embed_dim) == (2, hd, 8)
    else:
        assert g.size == hd and ("attn.head_dim", 0) in members(g)
        c = channel_at(g, "inp.weight", 0, 1)                  # position 1 of every head
        assert positions(g, "inp.weight", 0, [c]) == [1, 1 + hd, 1 + 2 * hd]
        assert positions(g, "attn.out_proj.weight", 1, [c]) == [1, 1 + hd, 1 + 2 * hd]
        keep, heads = torch.tensor([0, 2, 3, 4, 6, 7, 8, 10, 11]), H
        # the query rows are scaled by sqrt(3/4), so the logits keep their 1/sqrt(4) and removing
        # a dead per-head position preserves the function too
        assert_prunes(model, x, graph, {g: [c]})
        check_widths(model)
        assert (model.attn.num_heads, model.attn.head_dim, model.attn.embed_dim) == (H, hd - 1, 9)
    # the pruned module computes exactly what a fresh module built from the kept weights computes
    ref = _sliced_mha(original, keep, heads, 1.0 if mode == "heads" else ((hd - 1) / hd) ** 0.5)
    for a, b in zip(model.attn.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    h = torch.randn(2, 6, len(keep), dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.attn(h, h, h)[0], ref(h, h, h)[0], atol=1e-12)
        assert model(x).shape == (2, 6, 3)


def test_attention_option_is_checked_and_reaches_prune():
    model, x = MHABlock(), torch.randn(2, 6, 5)
    with pytest.raises(PruningError, match="attention must be one of"):
        dp.build_graph(model, x, attention="rows")
    dp.prune(model, x, ratio=0.5, attention="head_dim")
    assert (model.attn.num_heads, model.attn.head_dim) == (3, 2)


# ================================================================= slices sized by another tensor
class _PosTable(nn.Module):
    """``self.pos[:, :x.size(1)]``: the bound is the input's length, not a constant."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 10, 8))
        self.fc = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.fc(x + self.pos[:, :x.size(1)]))


def test_slice_bound_from_a_size_freezes_the_whole_sliced_dim():
    """Positions past a slice bound read from a tensor's size are unread only at the traced size:
    none of them may be pruned (the model must still accept longer inputs), and the slice's
    output keeps its traced length, so the rest of the model is still pruned."""
    model = _PosTable().double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    graph = dp.build_graph(model, x)
    rows = [g for g in graph.groups if any(m.name == "pos" and m.dim == 1 for m in g.members)]
    assert len(rows) == 1 and rows[0].size == 0 and rows[0].n_frozen == 10
    assert "could not apply" not in rows[0].reason, rows[0].reason
    # the add still couples the table's channels with fc's input (no rule crashed on the slice)
    stream = [g for g in graph.groups if any(m.name == "pos" and m.dim == 2 for m in g.members)]
    assert len(stream) == 1 and {(m.name, m.dim) for m in stream[0].members} >= {("pos", 2), ("fc.weight", 1)}
    g = graph.group_of("fc")
    assert g.prunable and g.size == 6, graph.summary()
    g.prune([1, 4])
    assert model(torch.randn(2, 10, 8, dtype=torch.float64)).shape == (2, 10, 3)


class _RotateHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        y1, y2 = y[..., : y.shape[-1] // 2], y[..., y.shape[-1] // 2:]
        return self.b(torch.cat((-y2, y1), -1) * y)


def test_slice_bounds_from_the_width_itself_freeze_it_with_a_reason():
    graph = dp.build_graph(_RotateHalf(), torch.randn(2, 4))
    g = graph.group_of("a")
    assert not g.prunable and "slice bounds computed from a width" in g.reason, graph.summary()
    # one space: the halves keep their traced widths, so cat and the product still couple a and b
    assert {(m.name, m.dim) for m in g.members} >= {("a.weight", 0), ("b.weight", 1)}, graph.summary()


class _SequenceTables(nn.Module):
    """nanoGPT / early-Llama style tables read up to the sequence length (a plain int here: the
    embedding's sequence dim is not a channel)."""

    def __init__(self, c=8, max_t=10):
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(20, c), nn.Linear(c, 6), nn.Linear(6, 3)
        self.pos = nn.Parameter(torch.randn(1, max_t, c))
        self.register_buffer("cos_cached", torch.randn(max_t, c))
        self.register_buffer("mask", torch.tril(torch.ones(max_t, max_t)).view(1, max_t, max_t))

    def forward(self, ids):
        x = self.embed(ids)
        T = x.size(1)
        x = (x + self.pos[:, :T]) * self.cos_cached[:T]
        att = (x @ x.transpose(-2, -1)).masked_fill(self.mask[:, :T, :T] == 0, float("-inf")).softmax(-1)
        return self.head(self.fc(att @ x))


def test_tables_read_up_to_the_sequence_length_keep_every_row():
    """Rows of a parameter / buffer past a constant slice end are unread only at the traced
    length: none is prunable, so the pruned model still takes every length it took before."""
    model = _SequenceTables().double()
    graph = dp.build_graph(model, torch.randint(0, 20, (2, 5)))
    for name, dim in (("pos", 1), ("cos_cached", 0), ("mask", 1), ("mask", 2)):
        g, = [g for g in graph.groups if any((m.name, m.dim) == (name, dim) for m in g.members)]
        assert g.size == 0 and g.n_frozen == 10, (name, dim, graph.summary())
        assert "read up to position 5" in g.reason
    g = graph.group_of("fc")
    assert g.prunable and g.size == 6
    g.prune([0, 3])
    assert model(torch.randint(0, 20, (2, 10))).shape == (2, 10, 3)
