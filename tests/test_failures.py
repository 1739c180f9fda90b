"""Failure paths: bad arguments, models the engine cannot analyze, faults injected into the
surgeon, dtypes and devices, determinism. The rule throughout: a clear exception or a frozen group
with a reason, and the model either correctly pruned or exactly as it was, never silently wrong.

(``tests/test_surgery.py`` covers the surgeon's own refusals and injects failures at chosen
``index_select`` / ``_slice`` calls and width-attribute commits; here every torch call of a
multi-group prune, the width rules and the coupling rules are made to fail in turn.)"""
from __future__ import annotations

import resource
import sys

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import depgraph_prune as dp
from depgraph_prune import surgery
from depgraph_prune.errors import PruningError, SurgeryError, TraceError
from depgraph_prune.graph import registry
from depgraph_prune.plan import local_plan


pytestmark = pytest.mark.usefixtures("one_thread")


# ======================================================================================= helpers
class Net(nn.Module):
    """Several coupled groups: conv-bn, a depthwise conv on a residual, concat of two convs,
    GroupNorm over the concat, flatten -> linear, a hidden linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.gn = nn.GroupNorm(5, 10)
        self.fc1 = nn.Linear(10 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        y = F.relu(self.bn1(self.c1(x)))
        y = y + F.relu(self.bn2(self.dw(y)))
        y = torch.cat([self.c2(y), self.c3(y)], 1)
        y = F.relu(self.gn(y))
        return self.fc2(F.relu(self.fc1(torch.flatten(y, 1))))


def _net(seed=0, grads=True):
    torch.manual_seed(seed)
    model = Net()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(3)
    if grads:
        model(_x()).sum().backward()
        model.fc2.bias.grad = None
    model.eval()
    model.bn2.train()  # mixed modes must survive too
    return model


def _x(dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(42)
    return torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def snapshot(model):
    sd = {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    flags = {n: (p.requires_grad, type(p)) for n, p in model.named_parameters()}
    simple = (int, float, bool, str, tuple, type(None))
    attrs = {n: (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)})
             for n, m in model.named_modules()}
    return repr(model), sd, grads, flags, attrs, surgery.history(model)


def assert_unchanged(model, snap):
    rep, sd, grads, flags, attrs, hist = snap
    assert repr(model) == rep
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(sd)
    for k, (obj, val) in sd.items():
        assert now[k] is obj, f"{k} was replaced"
        t = now[k].detach()
        assert (t.dtype, t.shape, t.device) == (val.dtype, val.shape, val.device), k
        assert torch.equal(t, val), k
    for n, p in model.named_parameters():
        assert (p.requires_grad, type(p)) == flags[n], n
        assert (p.grad is None) == (grads[n] is None), n
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n]), n
    simple = (int, float, bool, str, tuple, type(None))
    for n, m in model.named_modules():
        assert (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)}) == attrs[n], n
    assert surgery.history(model) == hist


def _expect_refusal(build, call, err, match):
    model = build()
    snap = snapshot(model)
    with pytest.raises(err, match=match):
        call(model)
    assert_unchanged(model, snap)


def _masked_reference(model, x, producer: str, channels):
    """Output of the *unpruned* model with ``producer``'s output channels zeroed (by a hook): what
    the pruned model must compute when every op between producer and consumer maps 0 to 0."""
    mod = model.get_submodule(producer)

    def hook(_m, _inp, out):
        out = out.clone()
        out[:, list(channels)] = 0
        return out

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        h.remove()


# ======================================================================================= bad arguments
@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.5", [0.5]])
def test_ratio_outside_unit_interval(ratio):
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), ratio=ratio), PruningError, "ratio")


@pytest.mark.parametrize("ratios", [{"c1": 1.0}, {"c1": -0.5}, {"nothing_like_this*": 0.5}])
def test_bad_ratio_patterns(ratios):
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), ratios=ratios), PruningError, "ratios")


def test_unknown_importance_name():
    # ValueError today (importance.resolve); a PruningError subclass would match the library's
    # convention (see the report): accept both, require the argument to be named
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), ratio=0.5, importance="l7"), (PruningError, ValueError),
                    "importance")


@pytest.mark.parametrize("item", ["no_such_layer", "c1.weight", nn.Conv2d(3, 8, 3)])
def test_ignored_layers_naming_a_missing_module(item):
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), ratio=0.5, ignored_layers=[item]), PruningError,
                    "ignored_layers")


@pytest.mark.parametrize("bad", [
    torch.randn(2, 5, 4, 4),                    # channels
    torch.randn(2, 3, 5, 5),                    # spatial size the flatten head cannot take
    torch.randn(3, 4, 4),                       # rank
    torch.randn(2, 3, 4, 4, dtype=torch.float64),
    torch.randint(0, 5, (2, 3, 4, 4)),
    None,
])
def test_example_inputs_of_the_wrong_shape_or_dtype(bad):
    _expect_refusal(_net, lambda m: dp.prune(m, bad, ratio=0.5), TraceError, "example_inputs")


def test_missing_forward_argument():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x, y):
            return self.c(x) + y

    _expect_refusal(Two, lambda m: dp.prune(m, torch.randn(1, 3, 2, 2), ratio=0.5), TraceError, "example_inputs")


@pytest.mark.parametrize("kw,match", [(dict(steps=0), "steps"), (dict(steps=1.5), "steps"),
                                      (dict(round_to=0), "round_to"), (dict(target_speedup=0.5), "target_speedup"),
                                      (dict(target_speedup=2.0, ratio=0.5), "ratio or target_speedup"),
                                      (dict(global_ranking=True, max_ratio=1.0), "max_ratio"),
                                      (dict(importance="taylor"), "calibration")])
def test_other_bad_arguments(kw, match):
    kw = {"ratio": 0.5, **kw} if "ratio" not in kw and "target_speedup" not in kw else kw
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), **kw), PruningError, match)


def test_negative_min_channels():
    _expect_refusal(_net, lambda m: dp.prune(m, _x(), ratio=0.5, min_channels=-3), PruningError, "min_channels")


def test_model_that_is_not_a_module():
    with pytest.raises(PruningError, match="model"):
        dp.prune("resnet50", _x(), ratio=0.5)


def _nothing_to_prune(model, x):
    """An empty model and a model without a prunable group: a PruningError naming the model, or a
    no-op result whose notes say why (see the report for which is preferable)."""
    snap = snapshot(model)
    try:
        result = dp.prune(model, x, ratio=0.5)
    except PruningError as exc:
        assert "model" in str(exc) or "prunable" in str(exc)
    else:
        assert result.widths == [] and result.records == []
        assert any("prunable" in n or "parameters" in n for n in result.notes), \
            f"a no-op prune must say why; notes: {result.notes}"
    assert_unchanged(model, snap)


def test_empty_model():
    _nothing_to_prune(nn.Sequential(), torch.randn(2, 3))


def test_model_without_a_prunable_group():
    _nothing_to_prune(nn.Linear(4, 3), torch.randn(2, 4))


def test_nothing_to_prune_never_touches_the_model():
    """Whatever the chosen convention, the unprunable models come out as they went in."""
    for model, x in ((nn.Sequential(), torch.randn(2, 3)), (nn.Linear(4, 3), torch.randn(2, 4))):
        snap = snapshot(model)
        try:
            dp.prune(model, x, ratio=0.5)
        except PruningError:
            pass
        assert_unchanged(model, snap)
    with pytest.raises(PruningError, match="target_speedup"):  # a target that cannot be met is an error
        dp.prune(nn.Linear(4, 3), torch.randn(2, 4), target_speedup=2.0)


# ======================================================================================= unanalyzable models
class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, cin=3):
        super().__init__()
        self.c1 = nn.Conv2d(cin, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        if y.sum() > 0:
            y = y * 2
        return self.c2(y)


def test_untraceable_model_raises_a_clear_error():
    """Data-dependent control flow in the top-level forward: nothing to keep whole, a TraceError
    that says what to do."""
    _expect_refusal(Branchy, lambda m: dp.prune(m, _x(), ratio=0.5), TraceError, "could not trace")


class Chain(nn.Module):
    """c1 -> op -> c2 -> relu -> c3: groups c1|c2 (through ``op``) and c2|c3."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.c3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.c2(self.op(self.c1(x)))))


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class Flip(torch.autograd.Function):
    """Reverses the channels: pruning through it would need the permutation."""

    @staticmethod
    def forward(ctx, x):
        return x.flip(1)

    @staticmethod
    def backward(ctx, g):
        return g.flip(1)


class NumpyOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(x.detach().numpy() * 2)

    @staticmethod
    def backward(ctx, g):
        return g * 2


def opaque_double(x):
    return Double.apply(x)


torch.fx.wrap("opaque_double")  # fx records a call to it instead of tracing into it


def _chain_case(op):
    torch.manual_seed(0)
    return Chain(op).eval()


def _check_chain(op, c1_prunable: bool, reason: str | None):
    """Build the graph; c1's group is prunable or frozen with ``reason``; c2's group is prunable
    either way; pruning both gives exactly the hook-masked reference."""
    model = _chain_case(op)
    x = _x()
    graph = dp.build_graph(model, x)
    g1, g2 = graph.group_of("c1"), graph.group_of("c2")
    assert g1.prunable == c1_prunable, str(g1)
    if reason:
        assert not g1.prunable and reason in (g1.reason or ""), g1.reason
    assert g2.prunable
    drop1, drop2 = ([1, 4, 6] if c1_prunable else []), [0, 3]
    if drop1:  # mask both producers at once
        h = model.c2.register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor(drop2), 0.0))
        ref = _masked_reference(model, x, "c1", drop1)
        h.remove()
    else:
        ref = _masked_reference(model, x, "c2", drop2)
    plan = {g2: drop2, **({g1: drop1} if drop1 else {})}
    graph.prune(plan)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-6), (out - ref).abs().max()
    assert model.c2.out_channels == 4 and model.c1.out_channels == (5 if c1_prunable else 8)


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_custom_autograd_function_traced_through_is_pruned_correctly():
    # torch.fx traces into Function.forward: an elementwise body couples channels one to one
    _check_chain(_Lambda(Double.apply), True, None)


def test_custom_autograd_function_mixing_channels_is_frozen_with_a_reason():
    _check_chain(_Lambda(Flip.apply), False, "flip")


class _Opaque(nn.Module):
    def forward(self, x):
        return opaque_double(x)  # a global name: the one torch.fx.wrap patches while tracing


def test_opaque_function_is_frozen_with_a_reason():
    _check_chain(_Opaque(), False, "no coupling rule")


def test_unsupported_op_is_frozen_with_a_reason():
    _check_chain(_Lambda(lambda y: torch.fft.fft2(y).real), False, "no coupling rule")


def test_custom_autograd_function_fx_cannot_trace_in_a_submodule_is_kept_whole():
    """A Function whose forward fx cannot trace (numpy inside), called by a submodule: the
    submodule becomes an opaque leaf, its channels are frozen with the reason, the rest is pruned
    correctly (validated by a real forward, as the op cannot run on meta tensors)."""
    _check_chain(_Lambda(NumpyOp.apply), False, "opaque module `op`")


class TopLevelNumpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(NumpyOp.apply(self.c1(x)))


def test_custom_autograd_function_fx_cannot_trace_at_top_level_raises():
    _expect_refusal(TopLevelNumpy, lambda m: dp.prune(m, _x(), ratio=0.5), TraceError, "could not trace")


class RankBranch(nn.Module):
    """Control flow on ``x.dim()`` (the tracer resolves it from the shapes)."""

    def __init__(self, cin=8):
        super().__init__()
        self.c1 = nn.Conv2d(cin, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        if y.dim() == 4:
            y = y * 2
        return self.c2(y)


class Outer(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 1)
        self.inner = inner  # 8 -> 4
        self.c3 = nn.Conv2d(4, 6, 1)
        self.c4 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c4(F.relu(self.c3(self.inner(self.c0(x)))))


@pytest.mark.parametrize("inner,explicit", [
    (RankBranch, True),           # traceable, kept whole on request
    (lambda: Branchy(8), True),   # value-dependent control flow, named in leaf_modules
    (lambda: Branchy(8), False),  # the same, found by the tracer
])
def test_untraceable_submodule_is_kept_whole_and_frozen_around(inner, explicit):
    """Given as ``leaf_modules`` or found by the tracer: the submodule is kept whole, the channels
    around it frozen with a reason, the rest pruned correctly (the value-dependent one is
    validated by a real forward: ``if y.sum() > 0`` cannot run on meta tensors)."""
    torch.manual_seed(0)
    model = Outer(inner()).eval()
    x = _x()
    graph = dp.build_graph(model, x, leaf_modules=["inner"] if explicit else ())
    reason = graph.group_of("c0").reason or ""
    assert not graph.group_of("c0").prunable and ("no coupling rule" in reason or "opaque" in reason), reason
    assert graph.group_of("c3").prunable
    ref = _masked_reference(model, x, "c3", [1, 2])
    graph.prune({graph.group_of("c3"): [1, 2]})
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-6)
    assert model.c0.out_channels == 8 and model.inner.c1.out_channels == 8 and model.c3.out_channels == 4


def test_a_coupling_rule_that_raises_freezes_its_channels(monkeypatch):
    """A rule that cannot prove its case (here: one that raises) freezes what it touches; the rest
    is pruned correctly."""
    def broken(*a, **k):
        raise RuntimeError("injected rule failure")

    monkeypatch.setitem(registry.MODULE_RULES, nn.GroupNorm, broken)
    model = _net()
    x = _x()
    graph = dp.build_graph(model, x)
    g = graph.group_of("c2")
    assert not g.prunable and "injected rule failure" in g.reason
    assert graph.group_of("c1").prunable and graph.group_of("fc1").prunable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    graph.prune({graph.group_of("fc1"): [0, 5]})
    assert model.c2.out_channels == 6 and model.fc1.out_features == 10
    assert torch.equal(model.c2.weight, before["c2.weight"])


# ======================================================================================= fault injection
class FailAt(TorchFunctionMode):
    """Raise on the k-th torch call (every ``__torch_function__`` dispatch: tensor allocations,
    ``index_select``, ``t.data = ...`` / ``t.grad = ...`` assignments, reads of ``.grad``...).
    With k beyond the end it only counts."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.n = k, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if "grad_enabled" not in name:  # torch's own no_grad() bookkeeping is not ours to break
            self.n += 1
            if self.n == self.k:
                raise RuntimeError(f"injected failure at torch call {self.k} ({name})")
        return func(*args, **(kwargs or {}))


def _net_plan(graph):
    plan = {g: list(range(0, g.size, 3)) for g in graph.prunable_groups}
    assert len(plan) >= 3
    return plan


def _raised_after_validation(exc) -> bool:
    """The failure hit ``check_runs`` after its guarded model run (``output_structure``): the
    engine bug shown by ``test_exception_after_the_validation_run_undoes_the_surgery``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("output_structure", "_flat") and \
                tb.tb_frame.f_code.co_filename.endswith("surgery.py"):
            return True
        tb = tb.tb_next
    return False


def test_every_torch_call_of_a_multi_group_prune_can_fail_and_leaves_the_model_bit_identical():
    probe = FailAt(10 ** 9)
    m2 = _net()
    g2 = dp.build_graph(m2, _x())
    with probe:
        g2.prune(_net_plan(g2), verify=False)  # the surgery's own atomicity (verification: test_verify.py)
    n = probe.n
    assert n > 100, n
    model = _net()
    graph = dp.build_graph(model, _x())
    plan = _net_plan(graph)
    snap = snapshot(model)
    escaped = []
    for k in range(1, n + 1):
        with pytest.raises(Exception) as info:
            with FailAt(k):
                graph.prune(plan, verify=False)
        exc = info.value
        if _raised_after_validation(exc):
            escaped.append(k)  # a failure after validation escaped the rollback
            model = _net()
            graph = dp.build_graph(model, _x())
            plan = _net_plan(graph)
            snap = snapshot(model)
            continue
        assert "injected failure" in str(exc), exc
        assert_unchanged(model, snap)
    assert escaped == [], escaped
    graph.prune(plan)  # and the real thing still works
    assert model.c1.out_channels == 5


def test_exception_after_the_validation_run_undoes_the_surgery(monkeypatch):
    model = _net()
    graph = dp.build_graph(model, _x())
    snap = snapshot(model)

    def broken(out):
        raise RuntimeError("injected failure in output_structure")

    monkeypatch.setattr(surgery, "output_structure", broken)
    with pytest.raises(Exception):
        graph.prune(_net_plan(graph), verify=False)
    assert_unchanged(model, snap)


class MixedKeys(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(self.a(x))
        return {0: y, "aux": y.mean()}


def test_dict_output_with_mixed_key_types_is_all_or_nothing():
    model = MixedKeys()
    snap = snapshot(model)
    try:
        dp.prune(model, _x(), ratio=0.5)
    except Exception:
        assert_unchanged(model, snap)  # refused: then untouched
    else:
        assert model.a.out_channels == 4  # or pruned, without an exception


def test_exception_while_recording_undoes_the_surgery(monkeypatch):
    model = _net()
    graph = dp.build_graph(model, _x())
    snap = snapshot(model)

    def broken(*a, **k):
        raise RuntimeError("injected failure while naming modules for the record")

    monkeypatch.setattr(surgery, "_module_names", broken)
    with pytest.raises(Exception):
        graph.prune(_net_plan(graph))
    assert_unchanged(model, snap)


def test_every_width_rule_call_can_fail(monkeypatch):
    """``_width_attrs`` (the surgeon's width rules) raising at its k-th call: build phase, nothing touched."""
    model = _net()
    calls = {"n": 0}
    orig = surgery._width_attrs

    def counting(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    probe = _net()
    g = dp.build_graph(probe, _x())
    monkeypatch.setattr(surgery, "_width_attrs", counting)
    g.prune(_net_plan(g))
    n = calls["n"]
    assert n >= 6
    graph = dp.build_graph(model, _x())
    plan = _net_plan(graph)
    snap = snapshot(model)
    for k in range(1, n + 1):
        state = {"n": 0}

        def failing(*a, **kw):
            state["n"] += 1
            if state["n"] == k:
                raise SurgeryError(f"injected width-rule failure {k}")
            return orig(*a, **kw)

        monkeypatch.setattr(surgery, "_width_attrs", failing)
        with pytest.raises(SurgeryError, match="injected width-rule failure"):
            graph.prune(plan)
        assert_unchanged(model, snap)
    monkeypatch.setattr(surgery, "_width_attrs", orig)
    graph.prune(plan)
    assert model.c1.out_channels == 5


def test_a_rollback_that_itself_fails_is_reported_not_hidden(monkeypatch):
    """If the rollback cannot restore something the error says so (the model is then not
    guaranteed intact, and the user is told)."""
    model = _net()
    graph = dp.build_graph(model, _x())
    plan = _net_plan(graph)
    seen = {"n": 0}
    orig_undo = surgery._undo_one

    def flaky_undo(entry):
        seen["n"] += 1
        if seen["n"] == 1:
            raise RuntimeError("injected rollback failure")
        return orig_undo(entry)

    monkeypatch.setattr(surgery, "_undo_one", flaky_undo)
    monkeypatch.setattr(surgery, "check_runs", lambda *a, **k: "injected validation problem")
    with pytest.raises(SurgeryError, match="rollback could not restore"):
        graph.prune(plan, verify=False)


# ======================================================================================= dtypes and devices
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("importance", ["l1", "fpgm", "lamp"])
def test_low_and_high_precision_models_keep_their_dtype(dtype, importance):
    model = _net(grads=False).to(dtype)
    x = _x(dtype)
    result = dp.prune(model, x, ratio=0.4, importance=importance)
    assert result.widths and result.speedup > 1.2
    for n, p in model.named_parameters():
        assert p.dtype == dtype, n
    for n, b in model.named_buffers():
        assert b.dtype == (torch.long if n.endswith("num_batches_tracked") else dtype), n
    with torch.no_grad():
        out = model.eval()(x)
    assert out.dtype == dtype and out.shape == (2, 3) and torch.isfinite(out).all()


def test_taylor_importance_in_bfloat16():
    model = _net(grads=False).to(torch.bfloat16)
    x = _x(torch.bfloat16)
    calib = [(x, torch.tensor([0, 2]))]
    dp.prune(model, x, ratio=0.4, importance="taylor", calibration=calib)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_model_keeps_its_device():
    model = _net(grads=False).cuda()
    x = _x(device="cuda")
    dp.prune(model, x, ratio=0.5)
    assert all(p.is_cuda for p in model.parameters()) and all(b.is_cuda for b in model.buffers())
    with torch.no_grad():
        assert model.eval()(x).is_cuda


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024


def test_meta_model_is_planned_without_allocating():
    """A 34 GB MLP on the meta device: graph, scores (a data-free criterion), plan, surgery and
    MAC count, with the peak resident memory barely moving."""
    before = _maxrss_mib()
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1024, 65536), nn.ReLU(), nn.Linear(65536, 131072), nn.ReLU(),
                              nn.Linear(131072, 1024))
    weight_gib = sum(p.numel() for p in model.parameters()) * 4 / 2 ** 30
    assert weight_gib > 30
    x = torch.randn(2, 1024, device="meta")
    graph = dp.build_graph(model, x)
    assert len(graph.prunable_groups) == 2
    plan = local_plan(graph, dp.importance.resolve("random"), {g.index: 0.5 for g in graph.prunable_groups})
    assert sum(len(v) for v in plan.values()) == 32768 + 65536
    graph.prune(plan)
    assert model[2].weight.shape == (65536, 32768) and model[2].weight.device.type == "meta"
    after = _maxrss_mib()
    assert after - before < 512, f"peak RSS grew by {after - before:.0f} MiB planning a meta model"


@pytest.mark.parametrize("importance", ["l1", "l2", "fpgm", "lamp", "bn_scale"])
def test_weight_importance_on_a_meta_model_says_why(importance):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    before = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    with pytest.raises(PruningError, match=r"`[01]\.weight` is on the meta device.*importance='random'"):
        dp.prune(model, torch.randn(2, 4, device="meta"), ratio=0.5, importance=importance)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == before
    dp.prune(model, torch.randn(2, 4, device="meta"), ratio=0.5, importance="random")  # the data-free way works
    assert model[0].out_features == 4


# ======================================================================================= determinism
@pytest.mark.parametrize("kw", [
    dict(ratio=0.5),
    dict(ratio=0.5, importance="random"),
    dict(ratio=0.4, importance="fpgm", global_ranking=True),
    dict(target_speedup=1.8),
    dict(ratio=0.6, steps=3, round_to=2),
    dict(ratio=0.5, importance="taylor"),
])
def test_same_inputs_settings_and_seed_give_bit_identical_models(kw):
    def run():
        torch.manual_seed(7)
        model = _net(seed=3, grads=False)
        x = _x()
        extra = {}
        if kw.get("importance") == "taylor":
            g = torch.Generator().manual_seed(0)
            extra["calibration"] = [(torch.randn(4, 3, 4, 4, generator=g), torch.randint(0, 3, (4,), generator=g))]
        result = dp.prune(model, x, **kw, **extra)
        return model, result

    a, ra = run()
    b, rb = run()
    assert ra.widths == rb.widths and ra.widths
    assert surgery.history(a) == surgery.history(b)
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), n
    with torch.no_grad():
        assert torch.equal(a.eval()(_x()), b.eval()(_x()))
