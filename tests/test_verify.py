"""Numerical verification of every prune (``depgraph_prune.verify``).

A deliberately wrong coupling rule (registered with ``dp.register_rule``) must be caught: the
guilty group frozen with the numerical reason, the rest pruned, the model never wrong.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_prune as dp
from depgraph_prune import verify as V
from depgraph_prune.verify import VerificationError


class Roll(nn.Module):
    """Moves every channel one place along: a passthrough rule for it is wrong."""

    def forward(self, x):
        return torch.roll(x, 1, dims=1)


def _wrong_rule(ctx, node, module, args, kwargs, out):
    return dp.rules.passthrough(ctx, node, args, kwargs, out)


class TwoPaths(nn.Module):
    def __init__(self, zero_head=False):
        super().__init__()
        self.a1 = nn.Conv2d(3, 8, 3, padding=1)
        self.roll = Roll()
        self.a2 = nn.Conv2d(8, 6, 1)
        self.b1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b2 = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(12, 4)
        if zero_head:  # like many classifiers at initialisation: the output is blind to the body
            nn.init.zeros_(self.head.weight)

    def forward(self, x):
        a = self.a2(self.roll(torch.relu(self.a1(x))))
        b = self.b2(torch.relu(self.b1(x)))
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


@pytest.fixture
def wrong_roll_rule():
    dp.register_rule(Roll, _wrong_rule)
    yield
    dp.unregister_rule(Roll)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zero_head", [False, True])
@pytest.mark.parametrize("native", [False, True])
def test_wrong_rule_is_caught_guilty_frozen_rest_pruned(wrong_roll_rule, monkeypatch, zero_head, native):
    if native:  # the big-model path: the model's own dtype, in-place masking
        monkeypatch.setattr(V, "F64_LIMIT", 0)
    torch.manual_seed(0)
    m, x = TwoPaths(zero_head).eval(), torch.randn(2, 3, 8, 8)
    res = dp.prune(m, x, ratio=0.5)
    rep = res.verification[0]
    assert rep.dtype == ("float32" if native else "float64")
    assert len(rep.guilty) == 1
    (gi, reason), = rep.guilty.items()
    assert reason.startswith("numerical check: pruning these channels changes the output")
    assert m.a1.out_channels == 8 and m.a2.in_channels == 8  # the guilty group kept whole
    assert m.b1.out_channels == 4  # the rest pruned
    assert any("verification froze 1 group" in n for n in res.notes)
    assert "verified:" in str(res)
    assert m(x).shape == (2, 4)


def test_without_verification_the_wrong_rule_gives_a_wrong_model(wrong_roll_rule):
    """What the check protects against: the same prune, unchecked, changes the function."""
    torch.manual_seed(0)
    m, x = TwoPaths().eval().double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = dp.build_graph(m, x).group_of("a1")
    chans = [0, 1, 2, 3]
    with torch.no_grad():
        for mb in g.members:
            t = dict(m.named_parameters())[mb.name]
            t.index_fill_(mb.dim, mb.indices(chans), 0)
        ref = m(x)
    g.prune(chans, verify=False)
    assert (m(x) - ref).abs().max() > 1e-3


def test_verify_raise_restores_the_model(wrong_roll_rule):
    torch.manual_seed(0)
    m, x = TwoPaths().eval(), torch.randn(1, 3, 8, 8)
    before = _state(m)
    with pytest.raises(VerificationError, match="coupling rule"):
        dp.prune(m, x, ratio=0.5, verify="raise")
    assert _same(before, _state(m))
    assert m.a1.out_channels == 8 and m.b1.out_channels == 8


def test_group_prune_of_a_guilty_group_raises_and_changes_nothing(wrong_roll_rule):
    torch.manual_seed(0)
    m, x = TwoPaths().eval(), torch.randn(1, 3, 8, 8)
    before = _state(m)
    graph = dp.build_graph(m, x)
    g = graph.group_of("a1")
    with pytest.raises(VerificationError, match="nothing was pruned"):
        g.prune([0, 2])
    assert _same(before, _state(m))
    assert not g.prunable and g.reason.startswith("numerical check")
    graph.group_of("b1").prune([0, 2])  # the graph is still usable for the others
    assert m.b1.out_channels == 6


def test_correct_rules_pass_in_both_precisions(monkeypatch):
    torch.manual_seed(0)
    for limit in (V.F64_LIMIT, 0):
        monkeypatch.setattr(V, "F64_LIMIT", limit)
        m, x = TwoPaths().eval(), torch.randn(2, 3, 8, 8)
        res = dp.prune(m, x, ratio=0.5)
        rep = res.verification[0]
        assert not rep.guilty and rep.exact == 2  # without a rule, Roll's channels are frozen
        assert rep.max_diff <= rep.tolerance
        assert m.a1.out_channels == 8 and m.b1.out_channels == 4


def test_failed_native_check_restores_every_tensor_bit_for_bit(wrong_roll_rule, monkeypatch):
    monkeypatch.setattr(V, "F64_LIMIT", 0)
    torch.manual_seed(0)
    m, x = TwoPaths().eval(), torch.randn(1, 3, 8, 8)
    before = _state(m)
    graph = dp.build_graph(m, x)
    g = graph.group_of("a1")
    record, report = V.apply(graph, {g: [1, 5]}, keep_partial=False)
    assert record is None and g.index in report.guilty
    assert _same(before, _state(m))


class LNNet(nn.Module):
    """Channels reaching a LayerNorm: zeroing is not removing, so the norm is checked affine."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.norm(self.inp(x))
        return self.out(F.gelu(self.fc(h)))


def test_layer_norm_groups_are_checked_with_affine_norms():
    torch.manual_seed(0)
    m, x = LNNet().eval(), torch.randn(2, 5, 6)
    res = dp.prune(m, x, ratio=0.5)
    rep = res.verification[0]
    assert not rep.guilty and rep.affine_norm == 1 and rep.exact == 2
    assert m.norm.normalized_shape == (8,) and m.fc.out_features == 16


class SoftmaxChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), -1))


def test_softmax_over_channels_is_reported_as_structural_only():
    torch.manual_seed(0)
    m, x = SoftmaxChannels().eval(), torch.randn(2, 6)
    res = dp.prune(m, x, ratio=0.5)
    rep = res.verification[0]
    assert len(rep.structural) == 1 and "softmax" in next(iter(rep.structural.values()))
    assert any("checked by running the pruned model, not numerically" in n for n in res.notes)
    assert m.a.out_features == 8


def test_verify_argument_is_checked():
    with pytest.raises(dp.PruningError, match="verify"):
        dp.prune(LNNet(), torch.randn(2, 6), ratio=0.5, verify="yes")


def test_meta_model_notes_that_only_the_structural_check_ran():
    with torch.device("meta"):
        m = LNNet()
    res = dp.prune(m, torch.randn(2, 5, 6, device="meta"), ratio=0.5, importance="random")
    assert res.verification[0].skipped and any("meta device" in n for n in res.notes)


def test_compare_structure_and_nonfinite():
    a = torch.tensor([1.0, float("nan"), 3.0])
    assert V.compare(a, a.clone()) == 0.0
    assert V.compare(a, torch.tensor([1.0, 2.0, 3.0])) == float("inf")
    assert V.compare((a,), (a, a)) == float("inf")
    assert V.compare(torch.tensor([1, 2]), torch.tensor([1, 3])) == float("inf")
    assert V.compare(torch.tensor([2.0, 4.0]), torch.tensor([2.0, 4.4])) == pytest.approx(0.1)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("native", [False, True])
def test_a_failure_anywhere_in_a_verified_prune_leaves_the_model_intact(monkeypatch, native, split):
    """Inject a failure at the k-th torch call of a verified multi-group prune: either it raises
    and the model is bit-identical, or the model that comes out is a correct (verified) one."""
    from torch.overrides import TorchFunctionMode

    class FailAt(TorchFunctionMode):
        def __init__(self, k):
            super().__init__()
            self.k, self.n = k, 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if "grad_enabled" not in getattr(func, "__name__", ""):
                self.n += 1
                if self.n == self.k:
                    raise RuntimeError(f"injected failure at torch call {self.k}")
            return func(*args, **(kwargs or {}))

    if native:
        monkeypatch.setattr(V, "F64_LIMIT", 0)
    if split:  # the undo holds the removed parts (large models), not the old tensors
        from depgraph_prune import surgery
        monkeypatch.setattr(surgery, "KEEP_OLD_LIMIT", 0)

    def fresh():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        return m, torch.randn(1, 3, 6, 6)

    m, x = fresh()
    graph = dp.build_graph(m, x)
    count = FailAt(10 ** 9)
    with count:
        graph.prune({g: [0, 3] for g in graph.prunable_groups})
    n = count.n
    assert n > 50
    for k in sorted(set(range(1, n + 1, max(1, n // 40))) | {n}):
        m, x = fresh()
        graph = dp.build_graph(m, x)
        snap = _state(m)
        try:
            with FailAt(k):
                graph.prune({g: [0, 3] for g in graph.prunable_groups})
        except Exception as exc:
            assert "injected failure" in str(exc) or isinstance(exc.__cause__, RuntimeError), exc
            assert _same(snap, _state(m)), f"failure at call {k} left the model changed"
            continue
        # no exception: whatever was pruned passed the check; the model runs at its new widths
        assert m(x).shape == (1, 4, 6, 6)
        frozen = [g for g in graph.groups if g.verify_reason]
        assert m[0].out_channels == (8 if any(g.members[0].name.startswith("0.") for g in frozen) else 6)


class Chain(nn.Module):
    def __init__(self, flip=False):
        super().__init__()
        self.flip = flip
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h.flip(1) if self.flip else h)


def test_load_checks_that_the_record_replays_to_a_function_preserving_prune(tmp_path):
    torch.manual_seed(0)
    m, x = Chain(), torch.randn(1, 3, 6, 6)
    dp.prune(m, x, ratio=0.5)
    path = tmp_path / "chain.dpz"
    dp.save(m, path)
    loaded = dp.load(path, Chain(), example_inputs=x)  # the same architecture: accepted
    assert torch.equal(loaded(x), m(x))
    # same parameter names and shapes, different wiring: the shapes replay, the function does not
    other = Chain(flip=True)
    before = _state(other)
    with pytest.raises(dp.ModelMismatchError, match="does not replay to a function-preserving prune"):
        dp.load(path, other, example_inputs=x)
    assert _same(before, _state(other)) and other.a.out_channels == 8


def test_verify_inputs_run_the_check_on_a_smaller_image(wrong_roll_rule):
    torch.manual_seed(0)
    m = TwoPaths().eval()
    res = dp.prune(m, torch.randn(1, 3, 32, 32), ratio=0.5, verify_inputs=torch.randn(1, 3, 6, 6))
    assert len(res.verification[0].guilty) == 1  # the wrong rule is still caught on the small image
    assert m.a1.out_channels == 8 and m.b1.out_channels == 4


def test_probe_compares_the_layers_after_the_run_and_names_the_worst():
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval(), torch.randn(2, 4)
    probe = V.Probe(m, {})
    with torch.no_grad(), probe.attach():
        m(x)  # records
    probe.mode = "check"
    with torch.no_grad(), probe.attach():
        m(x)
    assert probe.worst == 0.0
    with torch.no_grad():
        m[2].bias.add_(1.0)
        m[0].weight[0, 0] = float("inf")  # non-finite where the recording had finite values
        with probe.attach():
            m(x)
    assert probe.worst == float("inf") and probe.where == "0"


def test_probe_cpu_comparison_equals_the_inf_norms():
    """On the CPU the probe compares layer pairs in numpy (``_max_abs_pairs``); it must give
    what torch's inf-norms give, NaN and inf included (the caller re-checks non-finite pairs)."""
    torch.manual_seed(0)
    refs = [torch.randn(3, 5), torch.randn(7), torch.randn(2, 2, 2, dtype=torch.float64), torch.randn(4)]
    outs = [r + 1e-3 * torch.randn_like(r) for r in refs]
    refs[3][1], outs[3][1] = float("inf"), float("inf")  # inf - inf
    outs[1][2] = float("nan")
    diffs, scales = V._max_abs_pairs(refs, outs)
    want_d = [torch.linalg.vector_norm(r - o, float("inf")).item() for r, o in zip(refs, outs)]
    want_s = [torch.linalg.vector_norm(r, float("inf")).item() for r in refs]
    for got, want in ((diffs, want_d), (scales, want_s)):
        for a, b in zip(got, want):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), (got, want)
