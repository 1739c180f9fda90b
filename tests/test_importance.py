"""Importance criteria against hand computations on a tiny model.

The model is conv1 → bn1 → relu → conv2 → flatten → fc. The group of ``conv1`` has five parameter
members: conv1.weight[0], conv1.bias[0], bn1.weight[0], bn1.bias[0], conv2.weight[1] (plus BN
buffers and the width, which no criterion scores). The group of ``conv2`` has conv2.weight[0] and
fc.weight[1], where each channel owns 4·4 = 16 columns of fc.weight (flatten).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_prune as dp
from depgraph_prune import importance as imp
from depgraph_prune.errors import PruningError

C1, C2, NCLS = 6, 5, 3


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, C1, 3)
        self.bn1 = nn.BatchNorm2d(C1)
        self.conv2 = nn.Conv2d(C1, C2, 3, bias=False)
        self.fc = nn.Linear(C2 * 4 * 4, NCLS)

    def forward(self, x):
        return self.fc(self.conv2(self.bn1(self.conv1(x)).relu()).flatten(1))


def _model(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():  # non-trivial BN affine parameters and statistics
        m.bn1.weight.uniform_(-2, 2)
        m.bn1.bias.uniform_(-1, 1)
        m.bn1.running_mean.uniform_(-1, 1)
        m.bn1.running_var.uniform_(0.5, 2)
    return m


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def setup():
    m = _model()
    g = dp.build_graph(m, X)
    return m, g


def _rows_conv1_group(m):
    """Per member of conv1's group: the (channels, slice) matrix, in group.members order."""
    d = lambda t: t.detach().double()
    return [d(m.conv1.weight).reshape(C1, -1), d(m.conv1.bias).reshape(C1, 1),
            d(m.bn1.weight).reshape(C1, 1), d(m.bn1.bias).reshape(C1, 1),
            d(m.conv2.weight).transpose(0, 1).reshape(C1, -1)]


def _reduce(per_member, how):
    s = torch.stack(per_member)
    return {"mean": s.mean(0), "sum": s.sum(0), "max": s.max(0).values, "first": s[0]}[how]


def _close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-9), (a, b)


def test_group_layout(setup):
    m, g = setup
    grp = g.group_of("conv1")
    assert grp.size == C1
    assert [(x.name, x.dim) for x in grp.members if x.kind == "param"] == [
        ("conv1.weight", 0), ("conv1.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0), ("conv2.weight", 1)]


# ----------------------------------------------------------------------------- magnitude
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("how", ["mean", "sum", "max", "first"])
def test_magnitude_reductions(setup, p, how):
    m, g = setup
    per = [r.abs().sum(1) if p == 1 else r.pow(2).sum(1) for r in _rows_conv1_group(m)]
    _close(imp.Magnitude(p, reduction=how)(g.group_of("conv1")), _reduce(per, how))


def test_magnitude_default_names(setup):
    m, g = setup
    grp = g.group_of("conv1")
    _close(imp.resolve("l1")(grp), _reduce([r.abs().sum(1) for r in _rows_conv1_group(m)], "mean"))
    _close(imp.resolve("l2")(grp), _reduce([r.pow(2).sum(1) for r in _rows_conv1_group(m)], "mean"))


def test_magnitude_flatten_member_sums_positions(setup):
    m, g = setup
    grp = g.group_of("conv2")
    w2 = m.conv2.weight.detach().double().reshape(C2, -1).abs().sum(1)
    fc = m.fc.weight.detach().double().abs().reshape(NCLS, C2, 16).sum((0, 2))
    _close(imp.Magnitude(1, reduction="sum")(grp), w2 + fc)
    _close(imp.Magnitude(1, reduction="first")(grp), w2)


@pytest.mark.parametrize("norm", [None, "mean", "max", "sum", "standardization"])
def test_normalizations(setup, norm):
    m, g = setup
    s = _reduce([r.abs().sum(1) for r in _rows_conv1_group(m)], "sum")
    want = {None: s, "mean": s / s.mean(), "max": s / s.max(), "sum": s / s.sum(),
            "standardization": (s - s.mean()) / s.std(unbiased=False)}[norm]
    got = imp.Magnitude(1, reduction="sum", normalize=norm)(g.group_of("conv1"))
    _close(got, want)
    if norm == "standardization":
        assert abs(got.mean()) < 1e-9 and abs(got.std(unbiased=False) - 1) < 1e-9


def test_normalization_of_zero_scores(setup):
    m, g = setup
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    grp = g.group_of("conv1")
    for norm in ["mean", "max", "sum", "standardization"]:
        got = imp.Magnitude(1, normalize=norm)(grp)
        assert torch.equal(got, torch.zeros(C1, dtype=torch.float64))


def test_bad_options():
    with pytest.raises(ValueError, match="reduction"):
        imp.Magnitude(1, reduction="median")
    with pytest.raises(ValueError, match="normalize"):
        imp.LAMP(normalize="gaussian")
    with pytest.raises(ValueError, match="p must be"):
        imp.Magnitude(3)


# ----------------------------------------------------------------------------- bn scale
def test_bn_scale_is_abs_gamma(setup):
    m, g = setup
    gamma = m.bn1.weight.detach().double().abs()
    for how in ["mean", "first", "max", "sum"]:
        _close(imp.BNScale(reduction=how)(g.group_of("conv1")), gamma)
    _close(imp.resolve("bn_scale")(g.group_of("conv1")), gamma)
    _close(imp.BNScale(normalize="max")(g.group_of("conv1")), gamma / gamma.max())


def test_bn_scale_other_norm_layers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 1)
            self.gn = nn.GroupNorm(2, 4)
            self.conv2 = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.conv2(self.gn(self.conv1(x)))

    torch.manual_seed(0)
    m = M()
    with torch.no_grad():
        m.gn.weight.copy_(torch.tensor([0.3, -1.0, 2.0, -0.1]))
    grp = dp.build_graph(m, X).group_of("conv1")
    gn = next(x for x in grp.members if x.name == "gn.weight")
    # a group channel is whatever the graph couples: sum |gamma| over its positions
    want = torch.zeros(grp.size, dtype=torch.float64)
    want.index_add_(0, torch.as_tensor(gn._channel_of), torch.tensor([0.3, 1.0, 2.0, 0.1], dtype=torch.float64))
    _close(imp.BNScale()(grp), want)
    _close(imp.BNScale(reduction="first")(grp), want)


def test_bn_scale_falls_back_to_l1(setup):
    m, g = setup
    grp = g.group_of("conv2")  # conv2 → fc: no norm layer
    for how in ["mean", "first"]:
        _close(imp.BNScale(reduction=how)(grp), imp.Magnitude(1, reduction=how)(grp))


# ---------------------------------------------------------------------------------- fpgm
def _fpgm_hand(rows):
    n = rows.shape[0]
    return torch.tensor([sum(float(torch.sqrt(((rows[i] - rows[j]) ** 2).sum())) for j in range(n) if j != i)
                         for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("how", ["mean", "first", "max"])
def test_fpgm(setup, how):
    m, g = setup
    want = _reduce([_fpgm_hand(r) for r in _rows_conv1_group(m)], how)
    _close(imp.FPGM(reduction=how)(g.group_of("conv1")), want)


def test_fpgm_flatten_member_concatenates_positions(setup):
    m, g = setup
    fc = m.fc.weight.detach().double().reshape(NCLS, C2, 16).transpose(0, 1)  # channel, out, col
    fc_rows = fc.transpose(1, 2).reshape(C2, -1)  # positions of a channel in order, each a column
    w2 = m.conv2.weight.detach().double().reshape(C2, -1)
    _close(imp.FPGM(reduction="sum")(g.group_of("conv2")), _fpgm_hand(w2) + _fpgm_hand(fc_rows))


# ---------------------------------------------------------------------------------- lamp
def _lamp_hand(rows):
    s = rows.pow(2).sum(1)
    return torch.stack([s[i] / s[s >= s[i]].sum() if s[s >= s[i]].sum() > 0 else s[i] * 0
                        for i in range(len(s))])


@pytest.mark.parametrize("how", ["mean", "first", "sum"])
def test_lamp(setup, how):
    m, g = setup
    want = _reduce([_lamp_hand(r) for r in _rows_conv1_group(m)], how)
    _close(imp.LAMP(reduction=how)(g.group_of("conv1")), want)


def test_lamp_ties_are_all_in_the_denominator(setup):
    m, g = setup
    with torch.no_grad():
        m.conv1.weight.zero_()
        m.conv1.weight[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 2.0, 3.0, 0.0, 1.0])
    got = imp.LAMP(reduction="first")(g.group_of("conv1"))
    # squared norms 1 4 4 9 0 1: ties 1/1 → 1/(1+1+4+4+9), 4/4 → 4/(4+4+9); zero → 0/(all)
    want = torch.tensor([1 / 19, 4 / 17, 4 / 17, 1.0, 0.0, 1 / 19], dtype=torch.float64)
    _close(got, want)
    _close(got, _lamp_hand(_rows_conv1_group(m)[0]))


# -------------------------------------------------------------------------------- random
def test_random_is_seeded(setup):
    m, g = setup
    grp = g.group_of("conv1")
    a, b, c = imp.Random(seed=3)(grp), imp.Random(seed=3)(grp), imp.Random(seed=4)(grp)
    assert a.shape == (C1,) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all()
    # a new graph of the same model gives the same scores; another group gets other ones
    assert torch.equal(a, imp.Random(seed=3)(dp.build_graph(m, X).group_of("conv1")))
    assert not torch.equal(imp.Random(seed=3)(g.group_of("conv2")), a[:C2])
    assert isinstance(imp.resolve("random"), imp.Random)


# ------------------------------------------------------------------- gradient criteria
def _batches(n=3, bs=4, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 8, 8, generator=gen), torch.randint(0, NCLS, (bs,), generator=gen)) for _ in range(n)]


def _hand_grads(model, batches, loss_fn=F.cross_entropy):
    """[per batch: {name: grad}] by a plain loop on a deep copy (same mode)."""
    ref = copy.deepcopy(model)
    out = []
    for x, y in batches:
        ref.zero_grad(set_to_none=True)
        loss_fn(ref(x), y).backward()
        out.append({n: p.grad.detach().double().clone() for n, p in ref.named_parameters()})
    return out


def _conv1_slices(t):
    """The conv1 group's member tensors (same order as _rows_conv1_group), each (C1, slice)."""
    return [t["conv1.weight"].reshape(C1, -1), t["conv1.bias"].reshape(C1, 1), t["bn1.weight"].reshape(C1, 1),
            t["bn1.bias"].reshape(C1, 1), t["conv2.weight"].transpose(0, 1).reshape(C1, -1)]


def _weights(m):
    return {n: p.detach().double() for n, p in m.named_parameters()}


@pytest.mark.parametrize("train", [True, False])
def test_hessian_three_batches_by_hand(setup, train):
    m, g = setup
    m.train(train)
    batches = _batches(3)
    grads = _hand_grads(m, batches)
    assert len(grads) == 3
    fisher = {n: sum(gb[n] ** 2 for gb in grads) for n in grads[0]}
    w = _weights(m)
    per = [(a ** 2 * b).sum(1) for a, b in zip(_conv1_slices(w), _conv1_slices(fisher))]
    h = imp.Hessian().accumulate(m, batches)
    assert h.n_batches == 3
    _close(h(g.group_of("conv1")), _reduce(per, "mean"))
    h.reduction = "first"
    _close(h(g.group_of("conv1")), per[0])
    # the flatten group: fc columns of a channel add up
    w2f = (w["conv2.weight"] ** 2 * fisher["conv2.weight"]).reshape(C2, -1).sum(1)
    fcf = (w["fc.weight"] ** 2 * fisher["fc.weight"]).reshape(NCLS, C2, 16).sum((0, 2))
    h = imp.Hessian(reduction="sum").accumulate(m, iter(batches))  # any iterable of batches
    _close(h(g.group_of("conv2")), w2f + fcf)


@pytest.mark.parametrize("train", [True, False])
def test_taylor_three_batches_by_hand(setup, train):
    m, g = setup
    m.train(train)
    batches = _batches(3)
    grads = _hand_grads(m, batches)
    w = _weights(m)
    # per member: sum over batches of |<w_c, g_b,c>|
    per = [sum((wk * _conv1_slices(gb)[k]).sum(1).abs() for gb in grads) for k, wk in enumerate(_conv1_slices(w))]
    t = imp.Taylor().accumulate(m, batches)
    assert t.n_batches == 3
    _close(t(g.group_of("conv1")), _reduce(per, "mean"))
    for how in ["sum", "max", "first"]:
        t.reduction = how  # same statistics, other reduction
        _close(t(g.group_of("conv1")), _reduce(per, how))
    # flatten group: the 16 fc columns of a channel form one dot product per batch
    w2 = sum((w["conv2.weight"] * gb["conv2.weight"]).reshape(C2, -1).sum(1).abs() for gb in grads)
    fc = sum((w["fc.weight"] * gb["fc.weight"]).reshape(NCLS, C2, 16).sum((0, 2)).abs() for gb in grads)
    t.reduction = "sum"
    _close(t(g.group_of("conv2")), w2 + fc)


def test_custom_loss_and_input_forms(setup):
    m, g = setup
    m.eval()
    batches = _batches(2)
    loss_fn = lambda out, y: F.mse_loss(out, F.one_hot(y, NCLS).float())
    grads = _hand_grads(m, batches, loss_fn)
    fisher = {n: sum(gb[n] ** 2 for gb in grads) for n in grads[0]}
    want = (_weights(m)["conv1.weight"] ** 2 * fisher["conv1.weight"]).reshape(C1, -1).sum(1)
    for form in [lambda x: x, lambda x: (x,), lambda x: [x], lambda x: {"x": x}]:
        h = imp.Hessian(reduction="first").accumulate(m, [(form(x), y) for x, y in batches], loss_fn=loss_fn)
        _close(h(g.group_of("conv1")), want)


def test_accumulate_leaves_the_model_as_it_was(setup):
    m, g = setup
    m.train()
    m.conv1.train(False)  # mixed modes must survive; bn1 in train mode updates its running stats
    m.conv2.weight.requires_grad_(False)  # a frozen parameter still gets statistics
    m.fc.weight.grad = torch.full_like(m.fc.weight, 7.0)  # an existing .grad is kept, same object
    fc_grad = m.fc.weight.grad
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    req = {n: p.requires_grad for n, p in m.named_parameters()}
    grads = {n: p.grad for n, p in m.named_parameters()}
    for crit in [imp.Taylor(), imp.Hessian()]:
        crit.accumulate(m, _batches(3))
        for k, v in m.state_dict().items():  # parameters and buffers (BN running stats, counter)
            assert torch.equal(v, before[k]), k
        assert {n: mod.training for n, mod in m.named_modules()} == modes
        assert {n: p.requires_grad for n, p in m.named_parameters()} == req
        for n, p in m.named_parameters():
            assert p.grad is grads[n], n
        assert m.fc.weight.grad is fc_grad and torch.equal(fc_grad, torch.full_like(fc_grad, 7.0))
        assert crit.stats["conv2.weight"] is not None
        assert float(crit(g.group_of("conv2")).sum()) > 0


def test_gradient_criterion_without_calibration(setup):
    m, g = setup
    for name in ["taylor", "hessian"]:
        crit = imp.resolve(name)
        assert crit.needs_gradients
        with pytest.raises(PruningError, match="calibration="):
            crit(g.group_of("conv1"))
        with pytest.raises(PruningError, match="calibration="):
            imp.prepare(crit, m, None)
    assert not imp.resolve("l1").needs_gradients
    assert imp.prepare(imp.resolve("lamp"), m, None).__class__ is imp.LAMP


def test_gradient_statistics_from_another_model(setup):
    m, g = setup
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, NCLS))
    h = imp.Hessian().accumulate(other, _batches(1))
    with pytest.raises(PruningError, match="accumulate again"):
        h(g.group_of("conv1"))


def test_accumulate_bad_calibration(setup):
    m, _ = setup
    with pytest.raises(PruningError, match="no batches"):
        imp.Taylor().accumulate(m, [])
    with pytest.raises(PruningError, match=r"\(inputs, targets\)"):
        imp.Taylor().accumulate(m, [X])
    with pytest.raises(PruningError, match="scalar"):
        imp.Hessian().accumulate(m, _batches(1), loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="none"))
    # a failing batch still leaves the model as it was
    assert all(p.grad is None for p in m.parameters())
    assert all(p.requires_grad for p in m.parameters())


def test_prepare_runs_accumulate(setup):
    m, g = setup
    batches = _batches(3)
    a = imp.prepare(imp.resolve("hessian"), m, batches)
    b = imp.Hessian().accumulate(m, batches)
    _close(a(g.group_of("conv1")), b(g.group_of("conv1")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gradient_criteria_on_cuda(setup):
    m, g = setup
    batches = _batches(3)  # CPU batches: moved to the model's device
    want = {c: c_(reduction="sum").accumulate(m, batches)(g.group_of("conv1")) for c, c_ in
            [("t", imp.Taylor), ("h", imp.Hessian)]}
    m.cuda()
    gc = dp.build_graph(m, X.cuda())
    for c, c_ in [("t", imp.Taylor), ("h", imp.Hessian)]:
        got = c_(reduction="sum").accumulate(m, batches)(gc.group_of("conv1"))
        assert got.device.type == "cpu"
        assert torch.allclose(got, want[c], rtol=1e-4, atol=1e-7)
    assert all(p.grad is None and p.is_cuda for p in m.parameters())


# ------------------------------------------------------------------------------ resolve
def test_resolve():
    kinds = {"l1": imp.Magnitude, "l2": imp.Magnitude, "bn_scale": imp.BNScale, "taylor": imp.Taylor,
             "hessian": imp.Hessian, "fpgm": imp.FPGM, "lamp": imp.LAMP, "random": imp.Random}
    assert set(kinds) == set(imp.NAMED)
    for name, cls in kinds.items():
        assert type(imp.resolve(name)) is cls
    assert imp.resolve("l1").p == 1 and imp.resolve("L2").p == 2
    assert imp.resolve("taylor") is not imp.resolve("taylor")  # fresh instance per call
    crit = imp.LAMP(reduction="first")
    assert imp.resolve(crit) is crit
    fn = lambda group: torch.zeros(group.size)
    assert imp.resolve(fn) is fn
    assert type(imp.resolve(imp.FPGM)) is imp.FPGM
    for bad in ["l3", "", 3, None]:
        with pytest.raises(ValueError) as e:
            imp.resolve(bad)
        for name in kinds:
            assert repr(name) in str(e.value)


def test_public_names():
    for name in imp.__all__:
        assert hasattr(imp, name), name
    for name in ["Magnitude", "BNScale", "Taylor", "Hessian", "FPGM", "LAMP", "Random", "resolve", "member_tensor"]:
        assert name in imp.__all__
        assert getattr(imp, name).__doc__


# -------------------------------------------------------------------- prune end to end
@pytest.mark.parametrize("name", ["l2", "bn_scale", "fpgm", "lamp", "random"])
def test_prune_with_each_criterion(name):
    m = _model()
    res = dp.prune(m, X, ratio=0.5, importance=name)
    assert m.conv1.out_channels == math.ceil(C1 / 2) and m.bn1.num_features == m.conv1.out_channels
    assert m(X).shape == (2, NCLS) and res.after.macs < res.before.macs


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_prune_with_a_gradient_criterion(name):
    m = _model()
    batches = _batches(3)
    scores = imp.prepare(imp.resolve(name), m, batches)(dp.build_graph(m, X).group_of("conv1"))
    keep = sorted(torch.argsort(scores, descending=True)[:C1 // 2].tolist())
    w_keep = m.conv1.weight.detach()[keep].clone()
    dp.prune(m, X, ratio=0.5, importance=name, calibration=batches)
    assert torch.equal(m.conv1.weight.detach(), w_keep)
