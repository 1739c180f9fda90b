"""Regularized pruning (GReg-1, GReg-2, TPP, growing regularization, L1 / OrthP baselines) and the
analysis helpers: schedules against the formulas of ALGORITHMS.md, gradients against autograd of
the explicit losses, a short GReg-1 run, exact resume, and the mean Jacobian singular value."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from depgraph_prune.analysis import filter_norm_separation, jacobian_singular_values, mean_jsv
from depgraph_prune.errors import PruningError
from depgraph_prune.importance import Magnitude
from depgraph_prune.models import cifar_resnet, digits_cnn, mlp7_linear
from depgraph_prune.regularize import (TPP, GReg1, GReg2, GrowingReg, OneShot, OrthP, RegularizedPruner,
                                       orthogonalize_)


pytestmark = pytest.mark.usefixtures("one_thread")


X1 = torch.zeros(1, 1, 8, 8)


def _digits(seed=0, **kw):
    torch.manual_seed(seed)
    return digits_cnn(**kw)


def _l1(w):
    return w.detach().reshape(w.shape[0], -1).abs().sum(1)


def _producer_weight(model, name):
    return model.get_submodule(name).weight


def _lam(pruner, name):
    return pruner.lambdas[name]


def _state_roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # plain data only, no pickled objects


# ------------------------------------------------------------------------------------ selection
def test_group_selection_and_l1_choice():
    model = _digits()
    p = RegularizedPruner(model, X1, "greg1", ratio=0.3)
    assert p.regularized == ["conv1", "conv2", "conv3"]  # fc's outputs (classes) are frozen
    for name, n in [("conv1", 16), ("conv2", 32), ("conv3", 64)]:
        n_p = min(math.ceil(0.3 * n), n - 1)
        expect = sorted(torch.argsort(_l1(_producer_weight(model, name)), stable=True)[:n_p].tolist())
        assert p.pruned_channels[name] == expect
    # per-layer specs: exact names, fnmatch patterns (last match wins), unmatched -> 0
    p = RegularizedPruner(model, X1, "greg1", ratios={"conv*": 0.5, "conv3": 0.0})
    assert p.regularized == ["conv1", "conv2"]
    p = RegularizedPruner(model, X1, "tpp", ratios="conv2:0.9", stabilize=1000)
    assert p.regularized == ["conv2"] and len(p.pruned_channels["conv2"]) == math.ceil(0.9 * 32)
    # ratio is the default of unmatched layers when both are given
    p = RegularizedPruner(model, X1, "greg1", ratio=0.5, ratios={"conv2": 0.0})
    assert p.regularized == ["conv1", "conv3"]
    # never all channels
    p = RegularizedPruner(model, X1, "greg1", ratio=0.999)
    assert len(p.pruned_channels["conv1"]) == 15
    # ResNet stage list: each block's conv1
    net = cifar_resnet(20)
    p = RegularizedPruner(net, torch.zeros(1, 3, 32, 32), "greg1", ratios=[0, 0.5, 0, 0.7])
    assert p.regularized == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                             "layer3.0.conv1", "layer3.1.conv1", "layer3.2.conv1"]
    with pytest.raises(ValueError):
        RegularizedPruner(model, X1, "greg1")
    with pytest.raises(ValueError):
        RegularizedPruner(model, X1, "nope", ratio=0.5)
    with pytest.raises(ValueError):
        RegularizedPruner(model, X1, "greg1", ratio=0.5, targets="everything")


# ------------------------------------------------------------------------------------ GReg-1
def test_greg1_schedule_growth_ceiling_stabilize():
    model = _digits()
    meth = GReg1(delta=0.25, interval=3, ceiling=1.0, stabilize=4, early_stop_ratio=math.inf)
    p = RegularizedPruner(model, X1, meth, ratio=0.5)
    kept = {n: torch.ones(len(l), dtype=torch.bool) for n, l in p.lambdas.items()}
    for n, ch in p.pruned_channels.items():
        kept[n][ch] = False
    finish_update = next(k for k in range(1, 100) if k * 0.25 > 1.0)  # max lambda > tau: 5 updates
    t_stab = finish_update * 3
    for t in range(1, t_stab + 4 + 3):
        p.step()
        assert p.t == t
        k = min(t // 3, finish_update)
        for n, lam in p.lambdas.items():
            assert torch.all(lam[~kept[n]] == 0.25 * k)
            assert torch.all(lam[kept[n]] == 0)
        if t < t_stab:
            assert p.phase == "grow" and not p.done
        elif t < t_stab + 4:
            assert p.phase == "stabilize" and p.t_stab == t_stab and not p.done
        else:
            assert p.done
    # the pruned set never changes
    assert all(torch.equal(kept[n], torch.as_tensor([c not in ch for c in range(len(kept[n]))]))
               for n, ch in p.pruned_channels.items())


def test_greg1_early_stop_on_magnitude_ratio():
    model = _digits()
    limit = 20.0
    seen = []
    p = RegularizedPruner(model, X1, GReg1(delta=1e-3, interval=1, ceiling=1.0, stabilize=0, early_stop_ratio=limit),
                          ratio=0.5, log_hook=seen.append)
    pruned = p.pruned_channels
    h = {}
    stop_at = None
    for t in range(1, 40):
        with torch.no_grad():  # shrink the pruned filters: the magnitude ratio grows
            for n, ch in pruned.items():
                _producer_weight(model, n)[ch] *= 0.7
        for n, ch in pruned.items():
            s = _l1(_producer_weight(model, n)).double()
            mask = torch.zeros(len(s), dtype=torch.bool)
            mask[ch] = True
            r = (s[~mask].mean() / s[mask].mean()).item()
            h[n] = r if n not in h else 0.9 * h[n] + 0.1 * r
        p.step()
        assert seen[-1]["t"] == t
        assert seen[-1]["mag_ratio"] == pytest.approx(min(h.values()), rel=1e-9)
        if all(v >= limit for v in h.values()):
            stop_at = t
            break
        assert p.phase == "grow"
        assert p.max_lambda == pytest.approx(1e-3 * t)
    assert stop_at is not None and p.done and p.t_stab == stop_at
    assert p.max_lambda == pytest.approx(1e-3 * stop_at)  # far below the ceiling: early stop


# ------------------------------------------------------------------------------------ GReg-2
def test_greg2_pick_then_push_with_negative_kept_penalty():
    model = _digits()
    meth = GReg2(delta=0.1, interval=2, ceiling=0.5, stabilize=0, pick_delta=1e-3, pick_ceiling=5e-3,
                 kept_penalty=-1e-4)
    seps = []
    p = RegularizedPruner(model, X1, meth, ratio=0.25, record_separation=True)
    assert p.phase == "pick" and all(v is None for v in p.pruned_channels.values())
    k_pick = next(k for k in range(1, 100) if k * 1e-3 >= 5e-3)
    t_pick = 2 * k_pick
    for t in range(1, t_pick):
        p.step()
        k = t // 2
        for lam in p.lambdas.values():  # uniform growth of every channel
            assert torch.all(lam == 1e-3 * k)
        if t % 2 == 0:
            seps.append(filter_norm_separation(model, p.regularized))
    # change the ranking right before the pick: S_p must follow the *current* weights
    with torch.no_grad():
        for n in p.regularized:
            w = _producer_weight(model, n)
            w.copy_(torch.arange(1, w.shape[0] + 1, dtype=w.dtype).flip(0).view(-1, *[1] * (w.dim() - 1)) * w.sign())
    p.step()
    seps.append(filter_norm_separation(model, p.regularized))
    assert p.phase == "grow"
    for n, ch in p.pruned_channels.items():
        size = _producer_weight(model, n).shape[0]
        n_p = math.ceil(0.25 * size)
        assert ch == sorted(torch.argsort(_l1(_producer_weight(model, n)), stable=True)[:n_p].tolist())
        assert ch == list(range(size - n_p, size))
    t = t_pick
    n_push = next(k for k in range(1, 100) if 1e-3 * k_pick + 0.1 * k > 0.5)
    while not p.done:
        p.step()
        t += 1
        k = (t - t_pick) // 2
        for n, lam in p.lambdas.items():
            mask = torch.zeros(len(lam), dtype=torch.bool)
            mask[p.pruned_channels[n]] = True
            if k == 0:
                assert torch.all(lam == 1e-3 * k_pick)
            else:
                assert torch.allclose(lam[mask], torch.full((int(mask.sum()),), 1e-3 * k_pick + 0.1 * k, dtype=lam.dtype))
                assert torch.all(lam[~mask] == -1e-4)
    assert t == t_pick + 2 * n_push
    # separation recorded at every update, equal to filter_norm_separation at that time
    for name in p.regularized:
        rec = p.separation[name]
        assert [r[0] for r in rec] == list(range(2, t + 1, 2))
        for r, s in zip(rec, seps):
            assert r[2] == pytest.approx(s[name])


def test_greg2_uniform_penalty_separates_magnitudes():
    """GReg-2's Figure 1: under a uniformly growing L2 penalty, std/mean of filter norms grows."""
    torch.manual_seed(0)
    model = digits_cnn()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    p = RegularizedPruner(model, x[:1], GReg2(interval=1, pick_delta=0.02, pick_ceiling=2.0), ratio=0.5,
                          record_separation=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        p.regularize()
        opt.step()
        p.step()
    growth = []
    for name in p.regularized:
        rec = p.separation[name]
        assert rec[-1][1] > rec[0][1]  # lambda grew
        growth.append(rec[-1][2] / rec[0][2])
    assert min(growth) > 1.2 and sum(growth) / len(growth) > 2.0, growth


# ------------------------------------------------------------------------------------ TPP
def test_tpp_linear_growth_and_staged_zeroing():
    model = _digits()
    meth = TPP(delta=0.3, interval=2, ceiling=1.0, stabilize=350)
    p = RegularizedPruner(model, X1, meth, ratio=0.5)
    k_top = next(k for k in range(1, 100) if 0.3 * k >= 1.0)
    t_stab = 2 * k_top
    for t in range(1, t_stab + 1):
        p.step()
        lam_t = min(0.3 * (t // 2), 1.0)
        assert p.lam_t == pytest.approx(lam_t)
        for n, lam in p.lambdas.items():
            mask = torch.zeros(len(lam), dtype=torch.bool)
            mask[p.pruned_channels[n]] = True
            assert torch.allclose(lam[mask], torch.full_like(lam[mask], lam_t)) and torch.all(lam[~mask] == 0)
    assert p.phase == "stabilize" and p.t_stab == t_stab
    order = ["conv1", "conv2", "conv3"]  # module order
    bns = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}

    def fill():
        with torch.no_grad():
            for prm in model.parameters():
                prm.fill_(1.0)

    def zeroed(name):
        ch = p.pruned_channels[name]
        w, bn = _producer_weight(model, name), model.get_submodule(bns[name])
        z = [bool((w[ch] == 0).all()), bool((bn.weight[ch] == 0).all()), bool((bn.bias[ch] == 0).all())]
        kept = [c for c in range(w.shape[0]) if c not in ch]
        assert (w[kept] == 1).all() and (bn.weight[kept] == 1).all()
        assert all(z) or not any(z)
        return all(z)

    t = t_stab
    for target in [t_stab + 99, t_stab + 100, t_stab + 199, t_stab + 200, t_stab + 299, t_stab + 300]:
        while t < target - 1:
            p.step()
            t += 1
        fill()
        p.step()
        t += 1
        since = t - t_stab
        for i, name in enumerate(order):
            assert zeroed(name) == (since >= (i + 1) * 100), (since, name)
        assert p.lam_t == 1.0
    while not p.done:
        p.step()
        t += 1
    assert t == t_stab + 350


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 24), d=st.integers(1, 40), data=st.data())
def test_tpp_closed_form_gram_gradient_matches_autograd(n, d, data):
    # both branches (through G_P = W_P W^T, or through the d x d Grams) against autograd of the
    # explicit loss sum(M * G^2), for any shape and any set of pruned rows
    from depgraph_prune.regularize.methods import _tpp_gram_grad_into
    pruned = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    W = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 100 + d),
                    requires_grad=True)
    m = torch.ones(n, dtype=torch.float64)
    m[pruned] = 0
    M = 1 - torch.outer(m, m)
    ((M * (W @ W.t()) ** 2).sum() / 4).backward()   # d/dW sum(M G^2) = 4 (M*G) W
    start = torch.randn(n, d, dtype=torch.float64)
    got = start.clone()
    _tpp_gram_grad_into(got, W.detach(), torch.tensor(sorted(pruned)), 0.5)  # accumulates, scaled
    assert torch.allclose(got, start + 0.5 * W.grad, rtol=1e-10, atol=1e-10)


def test_tpp_closed_form_trains_like_the_loss_form():
    # the same TPP run, Gram term as a loss (reference) or as a closed-form gradient: same weights
    runs = []
    for closed_form in (False, True):
        torch.manual_seed(0)
        model = digits_cnn().double()
        pr = RegularizedPruner(model, X1.double(), TPP(delta=0.5, interval=2, gram_weight=1000.0, stabilize=6,
                                                       stage_interval=2, closed_form=closed_form), ratio=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        for _ in range(8):
            loss = F.cross_entropy(model(x.double()), y) + pr.penalty()
            opt.zero_grad()
            loss.backward()
            pr.regularize()
            opt.step()
            pr.step()
        runs.append(model.state_dict())
    for k, v in runs[0].items():
        assert torch.allclose(v, runs[1][k], rtol=1e-9, atol=1e-12), k


@pytest.mark.parametrize("closed_form", [False, True])
def test_tpp_gram_penalty_and_gradient(closed_form):
    torch.manual_seed(0)
    model = digits_cnn().double()
    # the L2 terms are off so that .grad holds the Gram gradient alone
    tpp = TPP(delta=0.25, interval=1, gram_weight=1000.0, closed_form=closed_form, weight_reg=False, bn_reg=False)
    p = RegularizedPruner(model, X1.double(), tpp, ratio=0.5)
    p.step()
    p.step()
    lam = p.lam_t
    assert lam == 0.5
    model.zero_grad()
    pen = p.penalty()
    if closed_form:  # the gradient comes from regularize(); penalty() must not add it a second time
        assert pen.item() == 0.0 and not pen.requires_grad
        p.regularize()
    else:
        pen.backward()
    total = 0.0
    for name in p.regularized:
        w = _producer_weight(model, name)
        n = w.shape[0]
        W = w.detach().reshape(n, -1)
        m = torch.ones(n, dtype=W.dtype)
        m[p.pruned_channels[name]] = 0
        M = 1 - torch.outer(m, m)
        G = W @ W.t()
        total += (M * G ** 2).sum().item() / n ** 2
        expect = 1000.0 * lam * (4.0 / n ** 2) * (M * G) @ W
        assert torch.allclose(w.grad.reshape(n, -1), expect, rtol=1e-10, atol=1e-12)
        # entries between two kept filters are untouched: the kept rows' gradient only sees pruned rows
        kept = m.bool()
        assert torch.allclose(expect[kept], 1000.0 * lam * (4.0 / n ** 2) * (G[kept][:, ~kept] @ W[~kept]))
    if not closed_form:
        assert pen.item() == pytest.approx(1000.0 * lam * total, rel=1e-12)
    # other methods: zero
    assert RegularizedPruner(model, X1.double(), "greg1", ratio=0.5).penalty().item() == 0.0


# ------------------------------------------------------------------------------------ growing reg
def test_growing_reg_standardized_update():
    model = _digits()
    meth = GrowingReg(delta=0.5, interval=3, reg=1e-4)
    p = RegularizedPruner(model, X1, meth, ratio=0.5)
    for lam in p.lambdas.values():
        assert torch.all(lam == 1e-4)
    expect = {}
    for n, g in zip(p.regularized, p.groups):
        imp = Magnitude(1)(g).double()
        expect[n] = 1e-4 + 0.5 * (imp.max() - imp) / (imp.max() - imp.min() + 1e-8)
    p.update_reg()
    for n, lam in p.lambdas.items():
        assert torch.allclose(lam, expect[n], rtol=1e-12)
        assert lam.argmax() == Magnitude(1)(p.groups[p.regularized.index(n)]).argmin()  # least important grows most
    with torch.no_grad():
        model.conv1.weight.mul_(torch.linspace(0.1, 2.0, 16).view(-1, 1, 1, 1))
    imp = Magnitude(1)(p.groups[0]).double()
    e1 = expect["conv1"] + 0.5 * (imp.max() - imp) / (imp.max() - imp.min() + 1e-8)
    p.step(); p.step()
    assert torch.allclose(p.lambdas["conv1"], expect["conv1"], rtol=1e-12)  # not yet: interval 3
    p.step()
    assert torch.allclose(p.lambdas["conv1"], e1, rtol=1e-12)
    assert not p.done  # ceiling inf: the user decides when to prune
    res = p.prune()  # S_p by importance now
    assert model.conv1.out_channels == 8 and res.speedup > 1


# ------------------------------------------------------------------------------------ gradients
def _explicit_penalty(model, pruner, select):
    """sum over regularized groups and selected param members of lambda_c / 2 * ||w_slice_c||^2."""
    total = 0.0
    for g, lam in zip(pruner.groups, pruner.lambdas.values()):
        for m in g.members:
            if m.kind != "param" or not select(model, m):
                continue
            owner, _, attr = m.name.rpartition(".")
            w = getattr(model.get_submodule(owner), attr)
            ch = torch.as_tensor(m._channel_of)
            lam_pos = torch.where(ch >= 0, lam[ch.clamp(min=0)], torch.zeros((), dtype=lam.dtype)).to(w.dtype)
            shape = [1] * w.dim()
            shape[m.dim] = -1
            total = total + (lam_pos.view(shape) / 2 * w ** 2).sum()
    return total


def _is_weight_row(model, m):
    owner, _, attr = m.name.rpartition(".")
    mod = model.get_submodule(owner)
    return isinstance(mod, (nn.Conv2d, nn.Linear)) and attr == "weight" and m.dim == 0


def _is_consumer(model, m):
    owner, _, attr = m.name.rpartition(".")
    mod = model.get_submodule(owner)
    return isinstance(mod, (nn.Conv2d, nn.Linear)) and attr == "weight" and m.dim == 1


SELECT = {"weights": _is_weight_row,
          "group": lambda model, m: not _is_consumer(model, m),
          "all": lambda model, m: True}


@pytest.mark.parametrize("targets", ["weights", "group", "all"])
def test_regularize_equals_autograd_of_explicit_penalty(targets):
    torch.manual_seed(0)
    net = cifar_resnet(8, shortcut="B").double()  # residual-coupled groups have many members
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    p = RegularizedPruner(net, x[:1], GReg1(targets=targets), ratio=0.5)
    assert any(len(g.members) > 10 for g in p.groups)
    gen = torch.Generator().manual_seed(1)
    for gs in p._groups:  # arbitrary per-channel penalties, negative ones included
        gs.lam = torch.rand(gs.size, generator=gen, dtype=torch.float64) - 0.2
        gs.version += 1
    net2 = copy.deepcopy(net)
    p2 = RegularizedPruner(net2, x[:1], GReg1(targets=targets), ratio=0.5)
    F.cross_entropy(net(x), y).backward()
    p.regularize()
    (F.cross_entropy(net2(x), y) + _explicit_penalty(net2, p, SELECT[targets])).backward()
    for (n1, a), (n2, b) in zip(net.named_parameters(), net2.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), n1
    del p2


def test_tpp_regularize_slices():
    torch.manual_seed(0)
    model = digits_cnn().double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for bn_reg, weight_reg in [(True, True), (False, True), (True, False)]:
        net, net2 = copy.deepcopy(model), copy.deepcopy(model)
        meth = TPP(delta=0.5, interval=1, bn_reg=bn_reg, weight_reg=weight_reg)
        p = RegularizedPruner(net, x[:1], meth, ratio=0.5)
        p.step()
        assert p.lam_t == 0.5
        # the reference gets the Gram term as a loss (closed_form=False) on the twin model
        ref = RegularizedPruner(net2, x[:1], TPP(delta=0.5, interval=1, closed_form=False), ratio=0.5)
        ref.step()

        def sel(mdl, m):
            owner = mdl.get_submodule(m.name.rpartition(".")[0])
            if isinstance(owner, nn.BatchNorm2d):
                return bn_reg
            return weight_reg and not _is_consumer(mdl, m)

        net(x).square().sum().backward()
        p.regularize()
        (net2(x).square().sum() + _explicit_penalty(net2, p, sel) + ref.penalty()).backward()
        for (n1, a), (_, b) in zip(net.named_parameters(), net2.named_parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), (n1, bn_reg, weight_reg)


# ------------------------------------------------------------------------------------ a short run
def test_greg1_drives_pruned_filters_to_zero_and_pruning_preserves_output():
    torch.manual_seed(0)
    model = digits_cnn()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    # "group" targets: filters and the BN scale/shift that follows (the group extension); a larger
    # delta and a small interval keep the run short (published: delta 1e-4, interval 10)
    p = RegularizedPruner(model, x[:1], GReg1(delta=0.1, interval=2, stabilize=150, targets="group"), ratio=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    while not p.done:
        loss = F.cross_entropy(model(x), y) + p.penalty()
        opt.zero_grad()
        loss.backward()
        p.regularize()
        opt.step()
        p.step()
    assert p.t == 22 + 150  # 11 updates (1.1 > 1), then stabilization
    for name, ch in p.pruned_channels.items():
        s = _l1(_producer_weight(model, name))
        mask = torch.zeros(len(s), dtype=torch.bool)
        mask[ch] = True
        assert s[~mask].min() >= 1000 * s[mask].max(), name
    model.eval()
    xe = torch.randn(128, 1, 8, 8)
    with torch.no_grad():
        before = model(xe)
    result = p.prune()
    with torch.no_grad():
        after = model(xe)
    assert model.conv1.out_channels == 8 and model.conv2.out_channels == 16 and model.conv3.out_channels == 32
    assert ((after - before).norm() / before.norm()).item() < 0.01
    assert result.speedup > 3 and result.after.params < result.before.params
    with pytest.raises(PruningError):
        p.regularize()
    with pytest.raises(PruningError):
        p.step()


# ------------------------------------------------------------------------------------ resume
def _train(model, pruner, opt, t0, t1):
    for t in range(t0, t1):
        gen = torch.Generator().manual_seed(1000 + t)
        x = torch.randn(16, 1, 8, 8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.regularize()
        opt.step()
        pruner.step()


RESUME = {
    "greg1": lambda: GReg1(delta=0.05, interval=2, stabilize=10),
    "greg2": lambda: GReg2(delta=0.05, interval=2, stabilize=10, pick_delta=1e-3, pick_ceiling=1e-2),
    "tpp": lambda: TPP(delta=0.1, interval=2, stabilize=10, stage_interval=3),
    "growing_reg": lambda: GrowingReg(delta=0.01, interval=2),
}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_is_bit_identical(name):
    total, cut = 40, 13  # cut mid-schedule (GReg-2: still picking)

    def fresh(seed):
        torch.manual_seed(seed)
        m = digits_cnn()
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return m, opt

    m1, o1 = fresh(0)
    p1 = RegularizedPruner(m1, X1, RESUME[name](), ratio=0.5)
    _train(m1, p1, o1, 0, total)

    m2, o2 = fresh(0)
    p2 = RegularizedPruner(m2, X1, RESUME[name](), ratio=0.5)
    _train(m2, p2, o2, 0, cut)
    if name == "greg2":
        assert p2.phase == "pick"
    saved = _state_roundtrip({"model": m2.state_dict(), "opt": o2.state_dict(), "pruner": p2.state_dict()})
    del m2, o2, p2

    m3, o3 = fresh(123)  # different initial weights: everything must come from the checkpoint
    m3.load_state_dict(saved["model"])
    o3.load_state_dict(saved["opt"])
    p3 = RegularizedPruner(m3, X1, RESUME[name](), ratio=0.5)
    p3.load_state_dict(saved["pruner"])
    assert p3.t == cut
    _train(m3, p3, o3, cut, total)

    assert p3.t == p1.t and p3.phase == p1.phase and p3.t_stab == p1.t_stab
    assert p3.pruned_channels == p1.pruned_channels
    for a, b in zip(p1.lambdas.values(), p3.lambdas.values()):
        assert torch.equal(a, b)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), k
    s1, s3 = p1.state_dict(), p3.state_dict()
    assert s1["groups"][0]["h"] == s3["groups"][0]["h"] or (math.isnan(s1["groups"][0]["h"]) and math.isnan(s3["groups"][0]["h"]))
    with _nullcontext() if p1.done or name == "growing_reg" else pytest.warns(UserWarning):
        r1 = p1.prune()
    with _nullcontext() if p3.done or name == "growing_reg" else pytest.warns(UserWarning):
        r3 = p3.prune()
    assert r1.widths == r3.widths
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), k


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_state_dict_mismatch_is_refused():
    p = RegularizedPruner(_digits(), X1, "greg1", ratio=0.5)
    with pytest.raises(PruningError):
        RegularizedPruner(_digits(), X1, "tpp", ratio=0.5, stabilize=1000).load_state_dict(p.state_dict())
    with pytest.raises(PruningError):
        RegularizedPruner(_digits(), X1, "greg1", ratios={"conv1": 0.5}).load_state_dict(p.state_dict())


# ------------------------------------------------------------------------------------ baselines
def test_oneshot_l1_and_orthp():
    model = _digits()
    w = _producer_weight(model, "conv2").detach().clone()
    p = RegularizedPruner(model, X1, OneShot(), ratio=0.5)
    assert p.done
    assert p.pruned_channels["conv2"] == sorted(torch.argsort(_l1(w), stable=True)[:16].tolist())
    kept_in = [c for c in range(16) if c not in p.pruned_channels["conv1"]]
    keep = [c for c in range(32) if c not in p.pruned_channels["conv2"]]
    p.prune()
    assert model.conv2.out_channels == 16
    assert torch.equal(model.conv2.weight.detach(), w[keep][:, kept_in])

    # OrthP: orthonormal rows / columns times the gain
    torch.manual_seed(0)
    net = digits_cnn()
    assert OrthP().resolve_gain(net) == pytest.approx(math.sqrt(2))
    RegularizedPruner(net, X1, OrthP(), ratio=0.5).prune()
    for mod in [net.conv1, net.conv2, net.conv3, net.fc]:
        W = mod.weight.detach().reshape(mod.weight.shape[0], -1).double()
        A = W @ W.t() if W.shape[0] <= W.shape[1] else W.t() @ W
        assert torch.allclose(A, 2.0 * torch.eye(A.shape[0], dtype=A.dtype), atol=1e-5)
    w = torch.randn(5, 3, 2, 2)
    q = orthogonalize_(w.clone())
    r = torch.linalg.qr(w.reshape(5, -1).t().double())
    assert torch.allclose(q.reshape(5, -1).double(), (r.Q * torch.sign(torch.diagonal(r.R))).t(), atol=1e-6)


# ------------------------------------------------------------------------------------ analysis
def test_mean_jsv_of_linear_mlp_is_mean_singular_value_of_weight_product():
    torch.manual_seed(0)
    net = mlp7_linear(in_features=64, width=20, num_classes=10).double()
    x = torch.randn(6, 64, dtype=torch.float64)
    prod = None
    for i in range(1, 8):
        W = getattr(net, f"fc{i}").weight.detach()
        prod = W if prod is None else W @ prod
    expect = torch.linalg.svdvals(prod).mean().item()
    assert mean_jsv(net, x) == pytest.approx(expect, rel=1e-10)
    sv = jacobian_singular_values(net, x)
    assert sv.shape == (6, 10)
    net.train()
    mean_jsv(net, x)
    assert net.training  # modes restored


def test_jsv_collapses_after_l1_pruning_and_orthp_restores_one():
    torch.manual_seed(0)
    x = torch.randn(8, 256)
    net = mlp7_linear(in_features=256, width=50)
    before = mean_jsv(net, x)
    pruned = copy.deepcopy(net)
    RegularizedPruner(pruned, x[:1], "oneshot", ratio=0.8).prune()
    orth = copy.deepcopy(net)
    p = RegularizedPruner(orth, x[:1], "orthp", ratio=0.8)
    assert p.method.resolve_gain(orth) == 1.0  # linear network
    p.prune()
    assert orth.fc2.out_features == 10
    assert mean_jsv(orth, x) == pytest.approx(1.0, abs=1e-5)
    assert mean_jsv(pruned, x) < before


def test_filter_norm_separation():
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Conv2d(1, 4, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]]))
        net[1].weight.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1))
    assert filter_norm_separation(net, ["0", "1"]) == {"0": pytest.approx(0.5), "1": 0.0}
    model = _digits()
    p = RegularizedPruner(model, X1, "greg1", ratio=0.5)
    by_group = filter_norm_separation(model, p.groups)
    by_name = filter_norm_separation(model, p.regularized)
    assert by_group == by_name
    norms = _l1(model.conv2.weight).double()
    assert by_name["conv2"] == pytest.approx((norms.std(unbiased=False) / norms.mean()).item())


# ------------------------------------------------------------------------------------ misc
def test_progress_log_hook_and_warning(capsys):
    model = _digits()
    logs = []
    p = RegularizedPruner(model, X1, "greg1", ratio=0.5, progress=True, log_hook=logs.append,
                          delta=0.5, interval=2, stabilize=3)
    for _ in range(5):
        p.step()
    assert [d["t"] for d in logs] == [2, 4]
    assert set(logs[0]) >= {"t", "phase", "max_lambda", "mag_ratio"}
    assert logs[-1]["max_lambda"] == 1.0
    with pytest.warns(UserWarning, match="before the schedule is done"):
        p.prune()
    err = capsys.readouterr().err  # prune() closes the bar, which shows its last state
    assert "GReg1: 5it" in err and "max_lambda=1" in err and "mag_ratio=" in err
    with pytest.raises(PruningError):
        p.prune()
