"""Issue 9: models nobody here wrote. Opaque leaves, traceability patterns, user rules, frozen=."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph_prune as dp


class DataDependent(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # control flow on tensor values: not symbolically traceable
            return self.conv(x)
        return x


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.odd = DataDependent(16)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.odd(F.relu(self.b(F.relu(self.a(x)))))
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


def test_untraceable_submodule_becomes_an_opaque_leaf():
    model, x = WithOpaque().eval(), torch.randn(1, 3, 8, 8)
    graph = dp.build_graph(model, x)
    g = graph.group_of("b")  # feeds the opaque module: frozen, and the reason says which and why
    assert g.size == 0 and "`odd`" in g.reason and "DataDependent" in g.reason and "control flow" in g.reason
    assert graph.group_of("a").size == 16 and graph.group_of("c").size == 8  # the rest is analyzed
    assert any("odd" in n for n in graph.notes)
    ref = model(x).shape
    result = dp.prune(model, x, ratio=0.5)
    assert model(x).shape == ref and model.a.out_channels == 8 and model.c.out_channels == 4
    assert result.after.macs < result.before.macs


class ChangesWidth(nn.Module):
    """Untraceable (value-dependent branch) and it changes the width: 16 in, 12 out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 12, 1)

    def forward(self, x):
        y = self.conv(x)
        return y if y.amax() > -1e9 else -y


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(8, 16, 1)
        self.odd = ChangesWidth()
        self.post = nn.Conv2d(12, 8, 1)

    def forward(self, x):
        return x + self.post(F.relu(self.odd(F.relu(self.pre(x)))))


class Stage(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Block()
        self.extra = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.extra(self.inner(x))


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.stage = Stage()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.stage(F.relu(self.stem(x)))))


def test_opaque_leaf_found_at_any_depth_and_frozen_on_both_sides():
    # the failure is three modules deep: only `stage.inner.odd` is kept whole, its parents are still
    # traced through, its input (16) and output (12) channels are frozen with a reason naming it
    model, x = Deep().eval(), torch.randn(1, 3, 8, 8)
    graph = dp.build_graph(model, x)
    assert [n for n in graph.notes if "opaque" in n] and all("stage.inner.odd`" in n for n in graph.notes
                                                               if "opaque" in n)
    reading = [g for g in graph.groups if ("stage.inner.post.weight", 1) in {(m.name, m.dim) for m in g.members}]
    for g in (graph.group_of("stage.inner.pre"), *reading):  # odd's input channels, and its output's reader
        assert g.size == 0 and "`stage.inner.odd`" in g.reason and "ChangesWidth" in g.reason, g.reason
    assert len(reading) == 1
    assert graph.group_of("stem").size == 8  # the residual stream through the traced parents
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    dp.prune(model, x, ratio=0.5)
    assert model.stem.out_channels == model.stage.extra.out_channels == 4
    assert (model.stage.inner.pre.out_channels, model.stage.inner.odd.conv.out_channels) == (16, 12)
    assert model(x).shape == ref.shape and before["stage.inner.odd.conv.weight"].shape == (12, 16, 1, 1)


class Patterns(nn.Module):
    """Traceability patterns from the wild in one forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.parts = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])
        self.b = nn.Conv2d(8, 6, 1)
        self.rows = RowLoop()

    def forward(self, x):
        if torch.jit.is_scripting():  # TorchScript-only branch: never taken in Python
            raise RuntimeError("unreachable")
        b, _, *spatial = x.shape                      # starred unpacking of a shape
        assert len(x.shape) == 4 and len(spatial) == 2
        y = list(self.a(x).chunk(2, 1))               # iterating over the parts of a chunk
        y = [m(t) for m, t in zip(self.parts, y)]
        z = self.b(torch.cat(y, 1))
        return self.rows(z).reshape(b, -1, *spatial)


class RowLoop(nn.Module):
    def forward(self, x):
        return torch.stack([r * 2 for r in x])  # iterating over a tensor (its batch): opaque


def test_traceability_patterns_from_the_wild():
    model, x = Patterns().eval(), torch.randn(2, 3, 6, 6)
    graph = dp.build_graph(model, x)
    notes = [n for n in graph.notes if "opaque" in n]
    assert len(notes) == 1 and "`rows`" in notes[0]  # only the loop over a tensor is kept whole
    g = graph.group_of("a")
    # position j of both chunks goes together, read by both parts' convs; their outputs, concatenated
    assert g.size == 4 and {("parts.0.weight", 1), ("parts.1.weight", 1)} <= {(m.name, m.dim) for m in g.members}
    assert graph.group_of("parts.0") is graph.group_of("parts.1") and graph.group_of("parts.0").size == 8
    assert graph.group_of("b").size == 0  # b feeds the opaque loop
    ref = model(x)
    dp.prune(model, x, ratio=0.5)
    assert model.a.out_channels == 4 and model(x).shape == ref.shape


def test_untraceable_top_level_forward_raises_with_advice():
    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.c(x) if x.mean() > 0 else x

    model = Top()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dp.TraceError, match="top-level forward"):
        dp.prune(model, torch.randn(1, 3, 4, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_assert_on_a_width_pins_it():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
            self.dim = 8

        def forward(self, x):
            y = self.a(x)
            torch._assert(y.shape[1] == self.dim, "width")
            return self.b(y)

    g = dp.build_graph(M(), torch.randn(1, 3, 4, 4)).group_of("a")
    assert g.size == 0 and "assertion" in g.reason


class Scale(nn.Module):
    """A third-party layer with a width attribute the engine knows nothing about."""

    def __init__(self, c):
        super().__init__()
        self.channels = c
        self.gain = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        assert x.shape[1] == self.channels  # a Python assert: would break tracing without a rule
        return x * self.gain.view(1, -1, 1, 1)


def _scale_rule(ctx, node, module, args, kwargs, out):
    gain = ctx.param_tv(node.target, "gain", (0,))
    return dp.rules.channel_affine(ctx, args[0], [gain], out)


def test_register_rule_for_a_custom_layer():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).double().eval()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert dp.build_graph(net, x).group_of("0").size == 0  # unknown: kept whole, frozen
    dp.register_rule(Scale, _scale_rule, widths=lambda m, new: {"channels": new["gain"].shape[0]})
    try:
        graph = dp.build_graph(net, x)
        g = graph.group_of("0")
        assert g.size == 8 and {m.name for m in g.members} >= {"0.weight", "1.gain", "3.weight"}
        with torch.no_grad():  # function preservation through the custom rule
            for m in g.members:
                if m.kind == "param":
                    t = dict(net.named_parameters())[m.name]
                    t.index_fill_(m.dim, m.indices([2, 5]), 0)
        ref = net(x)
        g.prune([2, 5])
        assert net[1].channels == 6 and net[1].gain.shape == (6,)
        assert torch.allclose(net(x), ref, atol=1e-10)
    finally:
        dp.unregister_rule(Scale)


def channel_gate(x, w):  # a free function, wrapped below so fx keeps it as one call
    return x * torch.sigmoid(w).view(1, -1, 1, 1)


torch.fx.wrap("channel_gate")


def test_register_rule_for_a_function():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            self.w = nn.Parameter(torch.zeros(8))

        def forward(self, x):
            return self.b(channel_gate(self.a(x), self.w))

    def gate_rule(ctx, node, args, kwargs, out):
        return dp.rules.channel_affine(ctx, args[0], [args[1]], out)

    model, x = M(), torch.randn(1, 3, 4, 4)
    dp.register_rule(channel_gate, gate_rule)
    try:
        g = dp.build_graph(model, x).group_of("a")
        assert g.size == 8 and "w" in {m.name for m in g.members}
        dp.prune(model, x, ratio=0.5)
        assert model.w.shape == (4,) and model(x).shape == (1, 2, 4, 4)
    finally:
        dp.unregister_rule(channel_gate)


def test_torchvision_rules_load_lazily_and_user_rules_override_them():
    # Importing torchvision costs seconds, so the package must not; its rules load on first use.
    code = ("import sys, depgraph_prune as dp; assert 'torchvision' not in sys.modules; "
            "from depgraph_prune.graph.registry import FUNCTION_RULES as R; "
            "import torchvision.ops as ops, torch; sd = ops.stochastic_depth; assert sd not in R; "
            "calls = []; dp.register_rule(sd, lambda ctx, n, a, k, out: calls.append(1) or dp.rules.passthrough(ctx, n, a, k, out)); "
            "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), ops.StochasticDepth(0.1, 'row'), torch.nn.Conv2d(4, 2, 1)); "
            "dp.build_graph(m, torch.randn(2, 3, 4, 4)); assert calls, 'user rule was overridden'; "
            "dp.unregister_rule(sd); dp.build_graph(m, torch.randn(2, 3, 4, 4)); assert sd not in R; print('ok')")
    import subprocess, sys
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_frozen_and_leaf_modules_arguments():
    model, x = WithOpaque().eval(), torch.randn(1, 3, 8, 8)
    graph = dp.build_graph(model, x, frozen=["c"])
    assert graph.group_of("c").size == 0 and "frozen" in graph.group_of("c").reason
    graph = dp.build_graph(model, x, leaf_modules=[nn.Conv2d])  # types are accepted (they have rules)
    assert graph.group_of("a").size == 16
    with pytest.raises(dp.PruningError, match="frozen names 'nope'"):
        dp.build_graph(model, x, frozen=["nope"])


def test_hand_written_attention_prunes_head_dim_with_the_stream():
    class Attn(nn.Module):
        def __init__(self, dim, num_heads=4):
            super().__init__()
            self.num_heads = num_heads
            self.scale = (dim // num_heads) ** -0.5
            self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

    class Block(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            self.attn, self.fc1, self.fc2 = Attn(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

        def forward(self, x):
            x = x + self.attn(x)
            return x + self.fc2(F.gelu(self.fc1(x)))

    model = nn.Sequential(nn.Linear(16, 32), Block(), Block(), nn.Linear(32, 10)).eval()
    x = torch.randn(2, 5, 16)
    graph = dp.build_graph(model, x)
    stream = graph.group_of("0")
    assert stream.size == 8  # per-head positions: each channel is one position in all 4 heads
    assert graph.group_of("1.fc1").size == 64
    result = dp.prune(model, x, ratio=0.5)
    assert model(x).shape == (2, 5, 10)
    assert model[1].attn.qkv.out_features == 48 and model[1].attn.num_heads == 4
    assert result.speedup > 2


def test_hand_written_attention_with_a_head_count_attribute_loses_whole_heads():
    # `view(B, N, self.num_heads, 6)`: the head size is a literal, the head count an attribute, so
    # whole heads go and the surgeon updates num_heads; removing dead heads changes nothing
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 4
            self.inp, self.q, self.o = nn.Linear(5, 8), nn.Linear(8, 24), nn.Linear(24, 3)

        def forward(self, x):
            B, N, _ = x.shape
            h = self.q(self.inp(x)).view(B, N, self.num_heads, 6).transpose(1, 2)
            h = (h @ h.transpose(-1, -2) * 6 ** -0.5).softmax(-1) @ h
            return self.o(h.transpose(1, 2).reshape(B, N, -1))

    model, x = Attn().double().eval(), torch.randn(2, 7, 5, dtype=torch.float64)
    graph = dp.build_graph(model, x)
    g = graph.group_of("q")
    assert g.size == 4 and ("num_heads", 0) in {(m.name, m.dim) for m in g.members}
    head = {c: sorted(m.indices([c]).tolist()) for m in g.members if m.name == "q.weight" for c in range(4)}
    assert sorted(head.values()) == [list(range(6 * h, 6 * h + 6)) for h in range(4)]
    dead = [c for c, rows in head.items() if rows[0] in (6, 18)]  # heads 1 and 3
    with torch.no_grad():
        for c in dead:
            rows = torch.tensor(head[c])
            model.q.weight[rows] = 0
            model.q.bias[rows] = 0
        ref = model(x)
    g.prune(dead)
    assert (model.num_heads, model.q.out_features, model.o.in_features) == (2, 12, 12)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-12)
