"""The fast paths of issue 18 give the same answers as the slow ones they replace.

* the meta memo's in-place ops and FLOP counting (``_fast_meta``) against running the ops and
  against ``FlopCounterMode``;
* the MACs counted during shape propagation against ``count_ops``;
* scoring in one pass per weight (``shared_reads``) against a plain float64 reference;
* ``steps=k`` deriving each round's graph from the last (``graph.reuse``) against re-tracing.
"""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import depgraph_prune as dp
from depgraph_prune._fast_meta import MetaMemo, on_meta, to_meta
from depgraph_prune.graph.reuse import after_prune
from depgraph_prune.importance import Magnitude, _dim01_sums, shared_reads

prune_mod = importlib.import_module("depgraph_prune.prune")


class Attn(nn.Module):
    """Conv stem, in-place activations and an nn.MultiheadAttention (its fused path)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardtanh(0.0, 6.0, inplace=True)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.act(self.conv(x)).flatten(2).transpose(1, 2)
        y = y + self.attn(y, y, y, need_weights=False)[0]
        return self.head(torch.relu_(y).mean(1))


def _models():
    torch.manual_seed(0)
    return [("resnet18", torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)),
            ("mobilenet_v2", torchvision.models.mobilenet_v2().eval(), torch.randn(1, 3, 64, 64)),
            ("attn", Attn().eval(), torch.randn(1, 3, 8, 8))]


# ------------------------------------------------------------------------------ meta memo
def test_inplace_ops_return_their_argument_and_stay_correct():
    x = torch.empty(2, 3, 4, device="meta")
    with MetaMemo():
        for _ in range(3):  # first call runs, the others come from the memo
            assert torch.relu_(x) is x
            assert torch.nn.functional.hardtanh_(x, 0.0, 6.0) is x
        out = torch.empty(2, 3, 4, device="meta")
        assert torch.add(x, x, out=out) is out
        assert torch.add(x, x, out=out) is out
        # an in-place op that changes its argument's metadata is never answered from the memo
        assert x.unsqueeze_(0) is x and x.shape == (1, 2, 3, 4)
        assert x.unsqueeze_(0) is x and x.shape == (1, 1, 2, 3, 4)
        # a failing in-place op keeps failing (broadcasting into a smaller tensor)
        small = torch.empty(3, device="meta")
        for _ in range(2):
            with pytest.raises(RuntimeError):
                small.add_(torch.empty(2, 3, device="meta"))


def test_memo_keys_tell_apart_what_changes_an_ops_output():
    from depgraph_prune._fast_meta import _key, _NotCacheable
    t = torch.empty(2, 3, device="meta")
    keys = [_key(v) for v in (1, 1.0, True, (1, 2), [1, 2], (t,), (t.t(),), (t[1:],), {"a": 1}, {"a": 1.0}, {},
                              (torch.float32,), (torch.float16,), (None,), ("1",))]
    assert len(set(keys)) == len(keys)  # 1 == 1.0 == True in Python: the key must not merge them
    # equal metadata, equal keys, whatever the tensor object; dict order does not matter
    assert _key((t, [1, 2], {"a": 1, "b": 2})) == _key((torch.empty(2, 3, device="meta"), [1, 2], {"b": 2, "a": 1}))
    for bad in ((torch.zeros(2),), [torch.zeros(2)], {"x": torch.zeros(2)}, (object(),)):
        with pytest.raises(_NotCacheable):  # real tensors and unknown objects are never memoized
            _key(bad)


@pytest.mark.parametrize("i", range(3))
def test_memo_counts_flops_as_flop_counter_mode(i):
    name, model, x = _models()[i]
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # torch's own counter, on the memo's meta run (real CPU attention would dispatch to a
        # flash kernel the counter has no formula for)
        with torch.no_grad(), on_meta(model), FlopCounterMode(display=False) as counter:
            model(to_meta(x))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    want = counter.get_total_flops() // 2
    assert want > 0
    for _ in range(2):  # cold and memoized
        assert dp.count_ops(model, x).macs == want, name
    with torch.no_grad(), on_meta(model, count_flops=True) as memo:
        model(to_meta(x))
    assert memo.flops // 2 == want


@pytest.mark.parametrize("i", range(3))
def test_graph_counts_the_same_macs_as_count_ops(i):
    name, model, x = _models()[i]
    graph = dp.build_graph(model, x)
    assert graph._ctx.macs == dp.count_ops(model, x).macs, name
    result = dp.prune(model, x, ratio=0.3)
    fresh = dp.count_ops(model, x)
    assert result.after.macs == fresh.macs and result.before.macs > fresh.macs


# ------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("shape", [(6, 5, 3, 3), (7, 4), (3, 300000), (5, 2, 4, 1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_sums_match_float64_reference(shape, dtype):
    torch.manual_seed(1)
    w = torch.randn(shape).to(dtype)
    for fn in (torch.abs, torch.square):
        s0, s1 = _dim01_sums(w, fn)
        ref = fn(w.double())
        others0 = [d for d in range(w.dim()) if d != 0]
        others1 = [d for d in range(w.dim()) if d != 1]
        assert s0.dtype == torch.float64 and s1.dtype == torch.float64
        torch.testing.assert_close(s0, ref.sum(others0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s1, ref.sum(others1), rtol=1e-12, atol=1e-12)
    # a transposed (non-contiguous) view reads the same values
    if w.dim() == 2:
        torch.testing.assert_close(_dim01_sums(w.t(), torch.abs)[0], torch.abs(w.double()).sum(0))


def test_shared_reads_give_bit_identical_scores_and_equal_channels_tie_by_index():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():  # two identical filters: an exact tie, broken by channel index
        model.layer1[0].conv1.weight[3].copy_(model.layer1[0].conv1.weight[5])
        model.layer1[0].bn1.weight[3] = model.layer1[0].bn1.weight[5]
        model.layer1[0].bn1.bias[3] = model.layer1[0].bn1.bias[5]
        model.layer1[0].conv2.weight[:, 3].copy_(model.layer1[0].conv2.weight[:, 5])
    graph = dp.build_graph(model, torch.randn(1, 3, 32, 32))
    for p in (1, 2):
        score = Magnitude(p=p)
        alone = [score(g) for g in graph.prunable_groups]
        with shared_reads():
            shared = [score(g) for g in graph.prunable_groups]
        assert all(torch.equal(a, b) for a, b in zip(alone, shared))
    g = graph.group_of("layer1.0.conv1")
    s = Magnitude(p=2)(g)
    assert s[3] == s[5]
    from depgraph_prune.plan import select_channels
    n = int((s < s[3]).sum()) + 1  # the cut falls between the two equal channels
    chosen = select_channels(g, s, n)
    assert 3 in chosen and 5 not in chosen


# ------------------------------------------------------------------------------ steps=k
def _no_reuse(monkeypatch):
    monkeypatch.setattr(prune_mod, "after_prune", lambda graph, record: None)


@pytest.mark.parametrize("i", range(3))
def test_steps_reuse_the_graph_and_match_retracing(i, monkeypatch):
    name, model, x = _models()[i]
    twin = copy.deepcopy(model)
    traces = []
    real_trace = prune_mod.build_graph

    def counting(*a, **k):
        traces.append(1)
        return real_trace(*a, **k)
    monkeypatch.setattr(prune_mod, "build_graph", counting)
    fast = dp.prune(model, x, ratio=0.5, steps=3, importance="l2")
    assert len(traces) == 1, "rounds 2 and 3 must derive their graph, not trace again"
    _no_reuse(monkeypatch)
    slow = dp.prune(twin, x, ratio=0.5, steps=3, importance="l2")
    assert len(traces) == 4
    assert [r["kept"] for r in fast.records] == [r["kept"] for r in slow.records], name
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k
    assert fast.after == slow.after


def test_derived_graph_equals_a_fresh_build():
    torch.manual_seed(0)
    model, x = torchvision.models.mobilenet_v3_small().eval(), torch.randn(1, 3, 64, 64)
    graph = dp.build_graph(model, x)
    plan = {g: list(range(0, g.size, 3)) for g in graph.prunable_groups if g.size > 3}
    record = graph.prune(plan)
    derived, fresh = after_prune(graph, record), dp.build_graph(model, x)
    assert len(derived.groups) == len(fresh.groups)
    for a, b in zip(derived.groups, fresh.groups):
        assert (a.size, a.n_frozen, a.reason) == (b.size, b.n_frozen, b.reason)
        assert [(m.name, m.dim, m.kind, m._channel_of.tolist()) for m in a.members] == \
               [(m.name, m.dim, m.kind, m._channel_of.tolist()) for m in b.members]


def test_a_callback_that_changes_the_model_gets_a_fresh_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    x = torch.randn(1, 3, 16, 16)

    def widen(m, i):
        if i == 1:  # replace the middle conv by a wider one: the old graph no longer fits
            c = m[2]
            m[2] = nn.Conv2d(c.in_channels, 12, 3)
            m[4] = nn.Conv2d(12, 4, 3)
    graph = dp.build_graph(model, x)
    record = graph.prune({graph.group_of("0"): [0, 1]})
    widen(model, 1)
    assert after_prune(graph, record) is None
    model2 = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    result = dp.prune(model2, x, ratio=0.5, steps=2, callback=widen)
    assert model2(x).shape == (1, 4, 10, 10)
    assert model2[2].out_channels < 12 and len(result.records) == 2


class _Record(torch.utils._python_dispatch.TorchDispatchMode):
    """Metadata of every op's outputs, as the model sees them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.seen.append((str(func), [(tuple(t.shape), t.stride(), t.dtype, t.storage_offset())
                                      for t in outs if isinstance(t, torch.Tensor)]))
        return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_memo_and_output_formulas_give_what_the_meta_kernels_give(channels_last):
    """Batch norm, broadcasting products (SE blocks) and means answered by formula or memo have
    exactly the shapes, strides and dtypes the real meta kernels return, at shapes never seen."""
    from torch.nn.utils import stateless
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=fmt)
    for size in (48, 40, 48):  # new shapes, new shapes again, then memoized
        x = to_meta(torch.randn(1, 3, size, size).contiguous(memory_format=fmt))
        plain = to_meta({**dict(model.named_parameters()), **dict(model.named_buffers())})
        with torch.no_grad(), stateless._reparametrize_module(model, plain), _Record() as want:
            model(x)  # the meta kernels themselves
        with torch.no_grad(), on_meta(model), _Record() as got:
            model(x)  # the memo and its formulas underneath
        assert got.seen == want.seen


# ------------------------------------------------------------------------ removed positions
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_removed_masks_in_one_pass_equal_the_per_member_lookup(ratio):
    """``surgery.removed_masks`` looks all members up in one concatenated pass; each member's
    mask must be what its own atoms give, and members that lose nothing are left out."""
    import numpy as np

    from depgraph_prune.surgery import removed_components, removed_masks
    for name, model, x in _models():
        g = dp.build_graph(model, x)
        plan = {gr: list(range(0, gr.size, int(1 / ratio))) for gr in g.groups if gr.prunable and gr.size > 2}
        removed = removed_components(g, plan)
        got = {(m.name, m.dim): rem for m, rem in removed_masks(g, removed)}
        want = {}
        for m in g._ctx.members.values():
            real = m.atoms >= 0
            rem = np.zeros(m.atoms.shape, dtype=bool)
            rem[real] = removed[g._labels[m.atoms[real]]]
            if rem.any():
                want[(m.name, m.dim)] = rem
        assert got.keys() == want.keys() and want, name
        assert all(np.array_equal(got[k], want[k]) for k in want), name
        # the table kept on the graph is reused, and answers the same the second time
        again = {(m.name, m.dim): rem for m, rem in removed_masks(g, removed)}
        assert all(np.array_equal(again[k], want[k]) for k in want)


# ----------------------------------------------------------------------------- module walks
class _Shared(nn.Module):
    """A module reached twice, a None child, and a tied parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
        self.b = nn.Sequential(self.a[0], nn.BatchNorm1d(3))
        self.c = self.a
        self.none = None
        self.register_module("gap", None)
        self.head = nn.Linear(3, 3)
        self.head.weight = self.a[0].weight


@pytest.mark.parametrize("build", [_Shared, torchvision.models.densenet121, torchvision.models.efficientnet_b0])
def test_engine_walks_equal_torchs(build):
    from depgraph_prune import _walk
    model = build()
    for dup in (True, False):
        got = _walk.named_modules(model, remove_duplicate=dup)
        want = list(model.named_modules(remove_duplicate=dup))
        assert [n for n, _ in got] == [n for n, _ in want]
        assert all(a is b for (_, a), (_, b) in zip(got, want))
    assert all(a is b for a, b in zip(_walk.modules(model), model.modules()))
    want = dict(model.named_parameters(remove_duplicate=False))
    want.update(model.named_buffers(remove_duplicate=False))
    got = _walk.named_tensors(model)
    assert list(got) == list(want) and all(got[k] is want[k] for k in want)
    params = _walk.named_tensors(model, buffers=False)
    want = list(model.named_parameters(remove_duplicate=False))
    assert list(params) == [n for n, _ in want] and all(params[n] is t for n, t in want)
