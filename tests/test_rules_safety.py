"""The ways real model code used to give a silently wrong model (issue "Never a silently wrong
model"): each pattern is either pruned with exact function preservation or frozen with a reason.

Function preservation is checked here independently of ``depgraph_prune.verify``: the removed
slices of every member are zeroed, the model is pruned with ``verify=False``, and the outputs
must match (float64). Where a pattern is only caught by the numerical check, the test says so.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_prune as dp

pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model):
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


def prunes_exactly(model, x, group, channels, tol=1e-10):
    """Zero every member's removed slices, prune (unverified), compare; return the outputs."""
    model.eval()
    ts = _params(model)
    skip = group._graph._ctx.no_mask  # weight norm's v along g's dim: g is zeroed there instead
    with torch.no_grad():
        for m in group.members:
            if m.kind != "width" and m.name in ts and (m.name, m.dim) not in skip:
                ts[m.name].index_fill_(m.dim, m.indices(channels), 0.0)
        ref = model(x)
    group.prune(channels, verify=False)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= tol
    return out


def frozen_reason(graph, module):
    g = graph.group_of(module)
    assert not g.prunable, str(g)
    return g.reason


# --------------------------------------------------------------------- kernel dims, however reached
class PatchEmbed(nn.Module):
    """HF ViT/DeiT/CLIP embeddings: ``x.to(self.projection.weight.dtype)``."""

    def __init__(self):
        super().__init__()
        self.projection = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = x.to(self.projection.weight.dtype)
        return self.head(self.projection(x).flatten(2).transpose(1, 2).mean(1))


def test_kernel_dims_are_never_channels_even_when_the_weight_is_read_in_forward():
    m, x = PatchEmbed().double(), torch.randn(1, 3, 32, 32, dtype=torch.float64)
    graph = dp.build_graph(m, x)
    dims = {(mb.name, mb.dim) for g in graph.groups for mb in g.members}
    assert ("projection.weight", 2) not in dims and ("projection.weight", 3) not in dims
    prunes_exactly(m, x, graph.group_of("projection"), [0, 5, 7])
    assert tuple(m.projection.weight.shape) == (13, 3, 8, 8) and m.projection.kernel_size == (8, 8)


class EmbedDtype(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids).to(self.emb.weight.dtype)
        return self.fc(h)


def test_vocabulary_rows_read_only_for_their_dtype_are_not_channels():
    m = EmbedDtype()
    graph = dp.build_graph(m, torch.randint(0, 20, (2, 5)))
    assert all(("emb.weight", 0) not in {(mb.name, mb.dim) for mb in g.members} or not g.prunable
               for g in graph.groups)
    dp.prune(m, torch.randint(0, 20, (2, 5)), ratio=0.5)
    assert m.emb.num_embeddings == 20 and m.emb.weight.shape == (20, 4)


# ------------------------------------------------------------------------ widths flowing into values
class ScaleByWidth(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * y.shape[-1] ** -0.5)


def test_a_width_used_as_a_value_is_pinned():
    m, x = ScaleByWidth(), torch.randn(2, 6)
    assert "used as a value" in frozen_reason(dp.build_graph(m, x), "a")


class Attn(nn.Module):
    """Hand-written attention; ``scale`` picks how the 1/sqrt(d) is obtained."""

    def __init__(self, scale, dim=16, heads=2):
        super().__init__()
        self.num_heads, self.head_dim, self.scale_kind = heads, dim // heads, scale
        self.scale = self.head_dim ** -0.5
        self.inp = nn.Linear(6, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.out = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.inp(x)
        B, T, _ = h.shape
        q, k, v = (p(h).view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.scale_kind == "sdpa_default":
            a = F.scaled_dot_product_attention(q, k, v)
        elif self.scale_kind == "sdpa_fixed":
            a = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            if self.scale_kind == "size":
                s = q.size(-1) ** -0.5
                w = (q @ k.transpose(-2, -1)) * s
            elif self.scale_kind == "math_attr":
                w = self._divide(q @ k.transpose(-2, -1))
            else:  # "const": a number fixed at construction
                w = (q @ k.transpose(-2, -1)) * self.scale
            a = w.softmax(-1) @ v
        return self.out(h + self.o(a.transpose(1, 2).reshape(B, T, -1)))


class AttnMath(Attn):
    """The scale read from the width attribute in ``forward`` itself."""

    def forward(self, x):
        h = self.inp(x)
        B, T, _ = h.shape
        q, k, v = (p(h).view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        w = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        return self.out(h + self.o((w.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)))


class AttnHelper(Attn):
    """The same read, hidden in a helper method: no rule sees it, the numerical check does."""

    def _divide(self, w):
        return w / math.sqrt(self.head_dim)


def _attn(kind):
    torch.manual_seed(0)
    cls = {"math_attr": AttnMath, "helper": AttnHelper}.get(kind, Attn)
    return cls("math_attr" if kind == "helper" else kind).double().eval(), torch.randn(2, 5, 6, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["sdpa_default", "size"])
def test_head_widths_that_set_the_attention_scale_are_pinned(kind):
    m, x = _attn(kind)
    reason = frozen_reason(dp.build_graph(m, x), "q")
    assert ("default scale" in reason) if kind == "sdpa_default" else ("used as a value" in reason)


@pytest.mark.parametrize("kind", ["sdpa_fixed", "const"])
def test_head_widths_with_a_constant_scale_prune_exactly(kind):
    m, x = _attn(kind)
    g = dp.build_graph(m, x).group_of("q")
    assert g.prunable
    prunes_exactly(m, x, g, [1, 3])
    assert m.head_dim == 6 and m.q.out_features == 12


def test_a_width_attribute_read_as_a_number_in_forward_is_pinned():
    """`/ math.sqrt(self.head_dim)`: fx folds the number, the surgeon would rewrite `head_dim`,
    so the scale would change. The rules see `self.head_dim` read in arithmetic in `forward`
    and pin that width; verification (which would also catch it) has nothing left to refuse."""
    m, x = _attn("math_attr")
    assert "read as a number" in frozen_reason(dp.build_graph(m, x), "q")
    res = dp.prune(m, x, ratio=0.5)
    assert not res.verification[0].guilty
    assert m.q.out_features == 16 and m.head_dim == 8


def test_the_numerical_check_catches_what_the_rules_cannot_see():
    """The read hidden in a helper method: the rules let the group through, verification freezes it."""
    m, x = _attn("helper")
    assert dp.build_graph(m, x).group_of("q").prunable
    res = dp.prune(m, x, ratio=0.5)
    assert any("numerical check" in r for r in res.verification[0].guilty.values())
    assert m.q.out_features == 16 and m.head_dim == 8


# ---------------------------------------------------------------------------- indices over channels
class MoE(nn.Module):
    def __init__(self, n_experts=4, dim=8, hidden=12, how="argmax"):
        super().__init__()
        self.how = how
        self.inp = nn.Linear(5, dim)
        self.router = nn.Linear(dim, n_experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                                     for _ in range(n_experts))
        self.out = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.inp(x)
        logits = self.router(h)
        if self.how == "argmax":
            idx = logits.argmax(-1)
        elif self.how == "max":
            idx = logits.max(-1).indices
        else:
            _, idx = torch.max(logits, -1)
        y = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            y = y + expert(h) * (idx == e).unsqueeze(-1)
        return self.out(h + y)


@pytest.mark.parametrize("how", ["argmax", "max", "max_tuple"])
def test_router_outputs_stay_and_expert_widths_prune(how):
    torch.manual_seed(0)
    m, x = MoE(how=how).double(), torch.randn(3, 5, dtype=torch.float64)
    graph = dp.build_graph(m, x)
    assert "position" in frozen_reason(graph, "router") or "indices" in frozen_reason(graph, "router")
    g = graph.group_of("experts.1.0")
    assert g.prunable
    prunes_exactly(m, x, g, [0, 4, 7])
    assert m.router.out_features == 4


class MaxValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h.max(-1, keepdim=True).values


def test_max_values_over_channels_prune_and_are_reported_as_structurally_checked():
    torch.manual_seed(0)
    m, x = MaxValues(), torch.randn(3, 5)
    res = dp.prune(m, x, ratio=0.5)
    assert m.a.out_features == 4
    assert res.verification[0].structural


# ------------------------------------------------------------------------------------------ hooks
class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_module_with_a_forward_hook_is_frozen_with_its_name():
    m, x = Body(), torch.randn(1, 3, 4, 4)
    seen = []
    m.b.register_forward_hook(lambda mod, i, o: o.flip(1))
    m.a.register_forward_pre_hook(lambda mod, i: seen.append(1))
    graph = dp.build_graph(m, x)
    assert "`b` has a forward hook" in frozen_reason(graph, "b")
    assert "`a` has a forward hook" in frozen_reason(graph, "a")
    assert seen == []  # the analysis never called the user's hook
    dp.prune(m, x, ratio=0.5)
    assert m.a.out_channels == 8 and m.b.out_channels == 8


def test_a_global_forward_hook_is_refused_with_a_clear_error():
    handle = nn.modules.module.register_module_forward_hook(lambda mod, i, o: None)
    try:
        with pytest.raises(dp.PruningError, match="global forward hook"):
            dp.build_graph(Body(), torch.randn(1, 3, 4, 4))
    finally:
        handle.remove()


# ------------------------------------------------------------------------------- literal provenance
class Literal(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_dim = 16  # unrelated to the literal below, which equals it by value alone
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        B = x.shape[0]
        h = self.a(x).reshape(B, 16, -1)
        return self.b(h.squeeze(-1))


def test_a_literal_equal_to_an_attribute_is_not_bound_to_it():
    m, x = Literal(), torch.randn(2, 4)
    graph = dp.build_graph(m, x)
    assert "reshape" in frozen_reason(graph, "a")
    dp.prune(m, x, ratio=0.5)
    assert m.embed_dim == 16 and m.a.out_features == 16


# --------------------------------------------------------------------------- buffers fx would fold
def test_frozen_batch_norm_and_buffer_arithmetic_prune_exactly():
    from torchvision.ops.misc import FrozenBatchNorm2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)
            self.bn = FrozenBatchNorm2d(8)
            self.register_buffer("slopes", torch.rand(8))
            self.register_buffer("dist", torch.rand(8))
            self.c2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = torch.relu(self.bn(self.c(x)))
            return self.c2(h * (self.slopes * self.dist).view(1, -1, 1, 1))

    torch.manual_seed(0)
    m = Net().double()
    with torch.no_grad():
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.running_mean.normal_()
        m.bn.bias.normal_()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    prunes_exactly(m, x, dp.build_graph(m, x).group_of("c"), [1, 2, 6])
    assert m.bn.weight.shape == (5,) and m.slopes.shape == (5,)


# ---------------------------------------------------------------------------------- parametrizations
class PosConv(nn.Module):
    """wav2vec2's positional conv: a weight-normed grouped conv on a residual stream."""

    def __init__(self, kind, groups=1, dim=2):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        conv = nn.Conv1d(16, 16, 5, padding=2, groups=groups)
        if kind == "parametrization":
            conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=dim)
        elif kind == "legacy":
            conv = nn.utils.weight_norm(conv, name="weight", dim=dim)
        elif kind == "spectral":
            conv = nn.utils.parametrizations.spectral_norm(conv)
        self.conv = conv
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.conv(h.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("kind", ["parametrization", "legacy"])
@pytest.mark.parametrize("groups,dim", [(1, 0), (1, 2), (4, 2)])
def test_weight_norm_prunes_exactly(kind, groups, dim):
    torch.manual_seed(0)
    m, x = PosConv(kind, groups, dim).double(), torch.randn(1, 10, 8, dtype=torch.float64)
    g = dp.build_graph(m, x).group_of("inp")
    assert g.prunable
    chans = [0, 2] if groups > 1 else [1, 5, 9]  # grouped: whole groups of 16 // 4 channels go
    prunes_exactly(m, x, g, chans)
    assert m.conv.in_channels == m.conv.out_channels == 16 - len(chans) * (16 // g.size)
    m(x).sum().backward()  # the parametrization still trains


def test_weight_norm_through_the_one_call_is_verified():
    torch.manual_seed(0)
    m, x = PosConv("parametrization", 1, 2), torch.randn(1, 10, 8)
    res = dp.prune(m, x, ratio=0.5)
    assert m.conv.out_channels == 8 and not res.verification[0].guilty


def test_other_parametrizations_freeze_cleanly():
    m, x = PosConv("spectral"), torch.randn(1, 10, 8)
    graph = dp.build_graph(m, x)
    assert "spectral" in frozen_reason(graph, "inp").lower() or "parametrization" in frozen_reason(graph, "inp")
    dp.prune(m, x, ratio=0.5)
    assert m.conv.out_channels == 16


# ----------------------------------------------------------------------------------- glu and expand
class Glu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 16, 1)
        self.b = nn.Conv1d(8, 3, 1)

    def forward(self, x):
        return self.b(F.glu(self.a(x), dim=1))


def test_glu_prunes_both_halves_together_exactly():
    torch.manual_seed(0)
    m, x = Glu().double(), torch.randn(1, 4, 6, dtype=torch.float64)
    g = dp.build_graph(m, x).group_of("a")
    assert g.size == 8
    prunes_exactly(m, x, g, [0, 5])
    assert m.a.out_channels == 12 and m.b.in_channels == 6


class Gate(nn.Module):
    """``g.expand(-1, y.shape[1], -1, -1)``: a one-channel gate spread over every channel."""

    def __init__(self):
        super().__init__()
        self.y = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(3, 1, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.y(x)
        g = torch.sigmoid(self.g(x))
        return self.out(y * g.expand(-1, y.shape[1], -1, -1))


def test_expanding_a_one_channel_gate_does_not_tie_the_channels_together():
    torch.manual_seed(0)
    m, x = Gate().double(), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    g = dp.build_graph(m, x).group_of("y")
    assert g.size == 8
    prunes_exactly(m, x, g, [2, 3])
    assert m.y.out_channels == 6
