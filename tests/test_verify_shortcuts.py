"""The check's two shortcuts (``depgraph_prune.verify._Checker``) and what backs them.

* a smaller input (``reduced_inputs``) where the trace made no decision on input values, with
  the pruned model then run at the user's size on meta tensors (which also counts its MACs),
  unless its MACs follow from its weights (``macs_from_weights``);
* in the model's own dtype, masking one module at a time (``masked_lazily``) instead of
  zeroing and restoring slices in place.

A failure seen with a shortcut is never reported: the check is made again without it, so a
wrong rule is still caught (on the given input, in place), and a model the shortcut does not
suit is still pruned.
"""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_prune as dp
from depgraph_prune import verify as V
from depgraph_prune.graph import builder

from test_verify import TwoPaths, _same, _state, wrong_roll_rule  # noqa: F401 (fixture)


@pytest.fixture
def seen_inputs(monkeypatch):
    """The spatial sizes every verification run was made on."""
    sizes = []
    run = V.run

    def spy(model, example_inputs, *a, **k):
        x = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
        sizes.append(tuple(x.shape[2:]))
        return run(model, example_inputs, *a, **k)
    monkeypatch.setattr(V, "run", spy)
    return sizes


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = self.c2(torch.relu(self.bn(self.c1(x))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_reduced_inputs_only_spatial_dims_of_size_generic_graphs():
    g = dp.build_graph(Net().eval(), torch.randn(2, 3, 200, 120))
    small = V.reduced_inputs(g)
    assert small.shape == (2, 3, 64, 64)  # max(min(d, 64), d // 4)
    assert torch.equal(small, g.example_inputs[:, :, 68:132, 28:92])  # a centre crop of real pixels
    g = dp.build_graph(Net().eval(), torch.randn(1, 3, 400, 32))
    assert V.reduced_inputs(g).shape == (1, 3, 100, 32)
    assert V.reduced_inputs(dp.build_graph(Net().eval(), torch.randn(1, 3, 64, 64))) is None  # nothing to gain

    ids = torch.randint(0, 11, (2, 100))
    g = dp.build_graph(Mixed().eval(), ids)  # token ids: a prefix of the sequence
    assert torch.equal(V.reduced_inputs(g), ids[:, :25])
    assert V.reduced_inputs(dp.build_graph(Mixed().eval(), ids[:, :16])) is None

    class Decides(Net):
        def forward(self, x):
            if x.shape[-1] > 100:  # a decision on the input's size: the ops depend on it
                x = x[..., ::2]
            return super().forward(x)
    g = dp.build_graph(Decides().eval(), torch.randn(1, 3, 256, 256))
    assert not g._ctx.size_generic and V.reduced_inputs(g) is None


@pytest.mark.parametrize("native", [False, True])
def test_prune_is_checked_on_the_smaller_input(seen_inputs, monkeypatch, native):
    if native:
        monkeypatch.setattr(V, "F64_LIMIT", 0)
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(1, 3, 160, 160)
    res = dp.prune(m, x, ratio=0.5)
    rep = res.verification[0]
    assert not rep.guilty and rep.exact == 2 and rep.max_diff <= rep.tolerance  # c1+bn, c2
    assert set(seen_inputs) == {(64, 64)}  # every numerical run on the smaller input
    # the pruned model's MACs at the user's size, from its weights (no full-size run needed)
    assert res.after == dp.count_ops(m, x)
    assert m.c1.out_channels == 8


@pytest.mark.parametrize("native", [False, True])
def test_wrong_rule_still_caught_and_reported_on_the_given_input(wrong_roll_rule, seen_inputs, monkeypatch, native):
    if native:
        monkeypatch.setattr(V, "F64_LIMIT", 0)
    torch.manual_seed(0)
    m, x = TwoPaths(zero_head=True).eval(), torch.randn(1, 3, 128, 128)
    before = _state(m)
    with pytest.raises(V.VerificationError):
        dp.prune(m, x, ratio=0.5, verify="raise")
    assert _same(before, _state(m))
    assert (64, 64) in seen_inputs and (128, 128) in seen_inputs  # tried small, failed, checked as given
    seen_inputs.clear()
    res = dp.prune(m, x, ratio=0.5)
    assert len(res.verification[0].guilty) == 1
    assert m.a1.out_channels == 8 and m.b1.out_channels == 4
    assert (128, 128) in seen_inputs  # the failure confirmed on the given input before freezing


class FixedSize(nn.Module):
    """Takes exactly one input size (a flatten into a linear layer)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, stride=4)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, stride=4)
        self.fc = nn.Linear(8 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.c2(torch.relu(self.c1(x))).flatten(1))


def test_model_that_refuses_the_smaller_input_is_checked_on_the_given_one(seen_inputs):
    torch.manual_seed(0)
    m, x = FixedSize().eval(), torch.randn(1, 3, 96, 96)
    res = dp.prune(m, x, ratio=0.5)
    rep = res.verification[0]
    assert not rep.guilty and rep.exact >= 1
    assert seen_inputs[-1] == (96, 96)
    assert m.c1.out_channels == 4 and m(x).shape == (1, 3)


def test_lazy_masking_that_misses_a_reader_falls_back_to_masking_in_place(monkeypatch):
    monkeypatch.setattr(V, "F64_LIMIT", 0)
    # every tensor said to be read by a module that never reads it: the lazily masked model is
    # then the unmasked one, the check fails, and is made again with in-place masking
    monkeypatch.setattr(builder, "_readers", lambda gm, names: {n: "fc" for n in names})
    used = []
    lazily, in_place = V.masked_lazily, V.masked
    monkeypatch.setattr(V, "masked_lazily", lambda *a: (used.append("lazy"), lazily(*a))[1])
    monkeypatch.setattr(V, "masked", lambda *a: (used.append("in place"), in_place(*a))[1])
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
    ref = m(x)
    res = dp.prune(m, x, ratio=0.5)
    assert used[0] == "lazy" and "in place" in used
    assert not res.verification[0].guilty and m.c1.out_channels == 8
    assert torch.isfinite(m(x)).all() and m(x).shape == ref.shape


def test_lazy_masks_are_put_back_when_forward_raises():
    m = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    w, fw = m.c1.weight, m.fc.weight
    removed = {"c1.weight": {0: torch.tensor([0, 1])}, "fc.weight": {1: torch.tensor([2])}}
    inside = []

    def boom(mod, args):
        inside.append((m.c1.weight[:2].any().item(), m.fc.weight[:, 2].any().item()))
        raise RuntimeError("boom")
    h = m.c2.register_forward_pre_hook(boom)
    # c1.weight zeroed for the whole run (root), fc.weight for the length of c2's call
    with pytest.raises(RuntimeError, match="boom"):
        with V.masked_lazily(m, removed, {"c1.weight": "", "fc.weight": "c2"}):
            m(x)
    h.remove()
    assert inside == [(False, False)]
    assert m.c1.weight is w and m.fc.weight is fw and w[:2].any() and fw[:, 2].any()  # back, untouched
    assert not m.c2._forward_pre_hooks and not m.c2._forward_hooks


def test_engine_calls_leave_the_collector_as_they_found_it(monkeypatch):
    calls = []
    freeze, unfreeze = gc.freeze, gc.unfreeze
    monkeypatch.setattr(gc, "freeze", lambda: (calls.append("freeze"), freeze())[1])
    monkeypatch.setattr(gc, "unfreeze", lambda: (calls.append("unfreeze"), unfreeze())[1])
    m, x = Net().eval(), torch.randn(1, 3, 16, 16)
    assert gc.get_freeze_count() == 0
    dp.prune(m, x, ratio=0.5)  # dp.prune calls build_graph and graph.prune inside: one freeze
    assert calls == ["freeze", "unfreeze"]
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    calls.clear()
    with pytest.raises(dp.PruningError):
        dp.prune(Net().eval(), x, ratio=2.0)
    assert calls == ["freeze", "unfreeze"] and gc.get_freeze_count() == 0  # also when the call fails
    calls.clear()
    freeze()  # a process that froze its own objects keeps them frozen
    try:
        dp.prune(Net().eval(), x, ratio=0.5)
        assert calls == [] and gc.get_freeze_count() > 0
    finally:
        unfreeze()


class Mixed(nn.Module):
    """Every kind of layer masked_lazily handles: activation masks (linear, convolution,
    embedding) and zeroed copies (norms, a parameter read in forward, attention)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16, bias=False)
        self.ln = nn.LayerNorm(16)
        self.scale = nn.Parameter(torch.rand(16) + 0.5)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.conv = nn.Conv1d(16, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.fc2(torch.relu(self.fc1(h))) * self.scale
        h = h + self.attn(h, h, h, need_weights=False)[0]
        y = self.bn(self.conv(self.ln(h).transpose(1, 2)))
        return self.head(torch.relu(y).mean(2))


@pytest.mark.parametrize("narrow_from", [0, 10 ** 9], ids=["narrowed", "masked"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_masking_computes_exactly_what_in_place_masking_computes(seed, narrow_from, monkeypatch):
    monkeypatch.setattr(V, "NARROW_FROM", narrow_from)
    from depgraph_prune import importance as I
    from depgraph_prune.plan import local_plan
    torch.manual_seed(seed)
    m, ids = Mixed().eval(), torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    g = dp.build_graph(m, ids)
    plan = {k: v for k, v in local_plan(g, I.resolve("random"), {gr.index: 0.5 for gr in g.groups}).items() if len(v)}
    assert len(plan) >= 3
    removed = V._removed_positions(g, plan)
    before = _state(m)
    with V.masked(m, removed):
        ref = V.run(m, ids, affine_norms=True)
    seen = []  # fc1's weight during its call: gathered to the kept channels, or the full one
    h = m.fc1.register_forward_pre_hook(lambda mod, a: seen.append(tuple(mod.weight.shape)))
    with V.masked_lazily(m, removed, g._ctx.readers):
        out = V.run(m, ids, affine_norms=True)
    h.remove()
    assert _same(before, _state(m))
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out - ref).abs().max()
    if "fc1.weight" in removed:
        assert (seen[0] != (32, 16)) == (narrow_from == 0), seen
    unmasked = V.run(m, ids, affine_norms=True)
    assert not torch.allclose(unmasked, ref)  # the masks did something


def test_token_model_is_checked_on_a_prefix(monkeypatch):
    monkeypatch.setattr(V, "F64_LIMIT", 0)
    lengths = []
    run = V.run
    monkeypatch.setattr(V, "run", lambda model, x, *a, **k: (lengths.append(x.shape[1]), run(model, x, *a, **k))[1])
    torch.manual_seed(0)
    m, ids = Mixed().eval(), torch.randint(0, 11, (1, 64))
    res = dp.prune(m, ids, ratio=0.5)
    assert set(lengths) == {16} and not res.verification[0].guilty
    assert res.after == dp.count_ops(m, ids)


# ------------------------------------------------------------------ property: the oracle itself
import os  # noqa: E402
import sys  # noqa: E402

from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from archgen import archs, build_model, make_input, spec_code, token_archs  # noqa: E402

_SCALE = int(os.environ.get("DP_PROPERTY_SCALE", "1"))
_RANDOM = os.environ.get("DP_PROPERTY_RANDOM", "") == "1"


@settings(max_examples=40 * _SCALE, deadline=None, derandomize=not _RANDOM, print_blob=True)
@given(spec=st.one_of(archs(), token_archs()), data=st.data())
def test_lazily_masked_model_equals_the_model_masked_in_place(spec, data):
    """The masked original made one module at a time (activation masks for linear/conv layers,
    zeroed copies elsewhere) computes exactly what the model with its removed slices zeroed in
    place computes, for generated convolutional and token architectures and random plans."""
    from depgraph_prune import importance as I
    from depgraph_prune.plan import local_plan
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    graph = dp.build_graph(model, x)
    if not graph.prunable_groups:
        return
    ratio = data.draw(st.floats(0.1, 0.8), label="ratio")
    plan = {g: c for g, c in local_plan(graph, I.resolve("random"), {g.index: ratio for g in graph.prunable_groups}).items()
            if len(c)}
    if not plan:
        return
    removed = V._removed_positions(graph, plan)
    before = _state(model)
    with V.masked(model, removed):
        ref = V.run(model, x)
    saved = V.NARROW_FROM
    try:
        # masked at full width (exact: the same products, the zero ones included), then run on
        # the kept channels only (the same nonzero terms, summed in other blocks: float32 rounding)
        for narrow_from, tol in ((10 ** 9, 1e-12), (0, 1e-5)):
            V.NARROW_FROM = narrow_from
            with V.masked_lazily(model, removed, graph._ctx.readers):
                out = V.run(model, x)
            assert _same(before, _state(model))
            assert V.compare(ref, out) <= tol, (narrow_from, V.compare(ref, out))
    finally:
        V.NARROW_FROM = saved


def test_a_full_size_run_that_fails_after_a_crop_passed_sends_the_check_to_the_given_input(monkeypatch, seen_inputs):
    from depgraph_prune import surgery
    # (Net's MACs follow from its weights, which spares the full-size run: make it run)
    monkeypatch.setattr(V, "macs_from_weights", lambda graph: None)
    calls = []
    check_runs = surgery.check_runs

    def first_fails(model, inputs, expected, meta=True, macs=None):
        calls.append(tuple(inputs.shape[2:]))
        if len(calls) == 1:
            return "output shapes changed (injected)"
        return check_runs(model, inputs, expected, meta=meta, macs=macs)
    monkeypatch.setattr(surgery, "check_runs", first_fails)
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(1, 3, 160, 160)
    res = dp.prune(m, x, ratio=0.5)
    assert calls == [(160, 160)]  # after the crop passed; the plain check then needs no meta run
    assert (64, 64) in seen_inputs and seen_inputs[-1] == (160, 160)
    assert not res.verification[0].guilty and m.c1.out_channels == 8
    assert res.after == dp.count_ops(m, x)


def test_batch_norm_is_masked_on_its_outputs_without_a_copy():
    """An eval batch norm zeroed at some channels outputs zero there whatever its statistics, so
    the lazily masked model multiplies its output by the channel mask and copies nothing."""
    from depgraph_prune import importance as I
    from depgraph_prune.plan import local_plan
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
        m[1].bias.uniform_(-1, 1)
    x = torch.randn(1, 3, 6, 6)
    g = dp.build_graph(m, x)
    plan = {k: v for k, v in local_plan(g, I.resolve("random"), {gr.index: 0.5 for gr in g.groups}).items() if len(v)}
    removed = V._removed_positions(g, plan)
    assert {"1.weight", "1.running_var"} <= set(removed)
    with V.masked(m, removed):
        ref = V.run(m, x)
    seen = []
    h = m[1].register_forward_pre_hook(lambda mod, a: seen.append(mod.weight is m[1]._parameters["weight"]
                                                                 and mod.running_var.min() > 0))
    weight = m[1].weight
    with V.masked_lazily(m, removed, g._ctx.readers):
        out = V.run(m, x)
    h.remove()
    assert seen == [True] and m[1].weight is weight  # the norm's own tensors, unzeroed, during its call
    assert V.compare(ref, out) <= 1e-6


class Gram(nn.Module):
    """A product of two activations (attention's kind of op): its FLOPs do not follow from a weight."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(2)
        g = torch.bmm(y, y.transpose(1, 2)) / y.shape[-1]  # (b, 16, 16)
        return self.fc(g.mean(1))


def _full_size_runs(monkeypatch):
    from depgraph_prune import surgery
    calls = []
    check_runs = surgery.check_runs

    def spy(model, inputs, *a, **k):
        calls.append(tuple(inputs.shape[2:]))
        return check_runs(model, inputs, *a, **k)
    monkeypatch.setattr(surgery, "check_runs", spy)
    return calls


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "googlenet"])
def test_macs_from_the_weights_are_the_counted_ones(monkeypatch, name):
    """Convolution and linear layers only: the pruned model's MACs come from its weights, with
    no run at the given size, and equal what count_ops counts on the pruned model."""
    import torchvision
    calls = _full_size_runs(monkeypatch)
    torch.manual_seed(0)
    m, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 128, 128)
    res = dp.prune(m, x, ratio=0.5)
    assert calls == [] and res.after.macs < 0.5 * res.before.macs
    assert res.after == dp.count_ops(m, x)


def test_a_product_of_activations_keeps_the_full_size_run(monkeypatch):
    calls = _full_size_runs(monkeypatch)
    torch.manual_seed(0)
    m, x = Gram().eval(), torch.randn(1, 3, 128, 128)
    g = dp.build_graph(m, x)
    assert g._ctx.size_generic and g._ctx.flops_per_weight is None and V.macs_from_weights(g) is None
    assert dp.build_graph(Net().eval(), x)._ctx.flops_per_weight is not None
    res = dp.prune(m, x, ratio=0.5)
    assert calls == [(128, 128)]  # after the check on the crop, the run at the given size
    assert res.after == dp.count_ops(m, x) and m.c1.out_channels == 8
