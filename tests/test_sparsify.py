"""Unstructured pruning: ``dp.sparsify`` (exact counts, deterministic ties, per-layer specs), masks
that survive training and ``remove_masks``, structured + unstructured together, compact sparse
files, and GReg-1 / GReg-2 (and GrowingReg, one-shot) at weight granularity: schedules and
gradients per weight against the formulas of ALGORITHMS.md, and exact resume."""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import depgraph_prune as dp
from depgraph_prune import io as dio
from depgraph_prune import unstructured as us
from depgraph_prune.errors import PruningError
from depgraph_prune.models import cifar_resnet, digits_cnn
from depgraph_prune.regularize import GReg1, GReg2, GrowingReg, RegularizedPruner, WeightRegularizedPruner

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.zeros(1, 1, 8, 8)
LAYERS = ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]


def _digits(seed=0):
    torch.manual_seed(seed)
    return digits_cnn()


def _params(model):
    return dict(model.named_parameters())


def _stable_smallest(scores, k):
    """Reference: the first k of a stable argsort (ties by flat index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.argsort(flat, stable=True)[:k]] = True
    return mask.view(scores.shape)


def _batch(t, n=16):
    gen = torch.Generator().manual_seed(1000 + t)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# ================================================================================ selection
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.data())
def test_smallest_k_is_exact_and_breaks_ties_by_index(values, data):
    scores = torch.tensor(values, dtype=torch.float32).abs()
    k = data.draw(st.integers(0, len(values)))
    got = us.smallest_k(scores, k)
    assert int(got.sum()) == k
    assert torch.equal(got, _stable_smallest(scores, k))


def test_n_to_prune_is_ceil_without_float_noise():
    assert us.n_to_prune(0.7, 10) == 7          # 0.7 * 10 = 7.000000000000001
    assert us.n_to_prune(0.8, 23824) == math.ceil(0.8 * 23824)
    assert us.n_to_prune(0.71, 10) == 8
    assert us.n_to_prune(0.0, 10) == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
       st.floats(0.0, 0.99), st.sampled_from(["layer", "global"]), st.integers(0, 2 ** 16))
def test_sparsify_counts_are_exact_on_random_stacks(shapes, s, scope, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(i, o) for o, i in shapes])
    with torch.no_grad():  # coarse values: many ties
        for p in model.parameters():
            p.copy_(torch.round(p * 4))
    rep = dp.sparsify(model, s, scope=scope)
    sizes = [o * i for o, i in shapes]
    if scope == "global":
        assert rep.masked == min(math.ceil(round(s * sum(sizes), 6)), sum(sizes))
    else:
        assert [r.masked for r in rep.layers] == [min(math.ceil(round(s * n, 6)), n - 1) for n in sizes]
    for n, m in dp.masks(model).items():
        assert torch.all(dict(model.named_parameters())[n][m] == 0)
    assert rep.params == sum(sizes) and rep.nonzeros <= rep.params - rep.masked


@pytest.mark.parametrize("s", [0.5, 0.8, 0.95])
def test_layer_scope_hits_the_sparsity_of_every_layer_exactly(s):
    model = _digits()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = dp.sparsify(model, sparsity=s, scope="layer")
    assert [r.name for r in rep.layers] == LAYERS
    for r in rep.layers:
        w0 = before[r.name]
        k = min(math.ceil(round(s * w0.numel(), 6)), w0.numel() - 1)
        expect = _stable_smallest(w0.abs(), k)
        assert torch.equal(dp.masks(model)[r.name], expect)
        assert r.masked == k and r.nonzeros == w0.numel() - k
        w = _params(model)[r.name]
        assert torch.all(w[expect] == 0) and torch.equal(w[~expect], w0[~expect])
    # biases and BN untouched
    for n, p in model.named_parameters():
        if n not in LAYERS:
            assert torch.equal(p, before[n])
    assert "total" in str(rep) and f"{rep.sparsity:.2%}" in str(rep)


def test_global_scope_hits_the_total_exactly_with_ties_by_module_order():
    model = _digits()
    with torch.no_grad():  # many exact ties, across layers too
        for n in LAYERS:
            p = _params(model)[n]
            p.copy_(torch.round(p * 8) / 8)
    w0 = torch.cat([_params(model)[n].detach().reshape(-1).abs() for n in LAYERS])
    rep = dp.sparsify(model, sparsity=0.8, scope="global")
    k = math.ceil(0.8 * w0.numel())
    assert rep.masked == k
    expect = _stable_smallest(w0, k)
    got = torch.cat([dp.masks(model)[n].reshape(-1) for n in LAYERS])
    assert torch.equal(got, expect)
    # deterministic: a second model with the same weights makes the same choice
    again = _digits()
    with torch.no_grad():
        for n in LAYERS:
            p = _params(again)[n]
            p.copy_(torch.round(p * 8) / 8)
    dp.sparsify(again, sparsity=0.8, scope="global")
    assert all(torch.equal(dp.masks(again)[n], dp.masks(model)[n]) for n in LAYERS)


def test_per_layer_specs_layers_and_errors():
    model = _digits()
    rep = dp.sparsify(model, sparsity={"conv*": 0.5, "conv3": 0.9})
    assert rep["conv1"].masked == 72 and rep["conv3"].masked == math.ceil(0.9 * 18432)
    assert rep["fc"].masked == 0
    model = _digits()
    rep = dp.sparsify(model, sparsity="conv2:0.75,fc:0.5")
    assert rep["conv2"].masked == 3456 and rep["fc"].masked == 320 and rep["conv1"].masked == 0
    model = _digits()
    rep = dp.sparsify(model, sparsity="[0:0, 1-2:0.5]")
    assert rep["conv1"].masked == 0 and rep["conv2"].masked == 2304 and rep["conv3"].masked == 9216
    net = cifar_resnet(20)
    rep = dp.sparsify(net, sparsity=[0, 0.5, 0, 0.7])
    assert rep["layer1.0.conv1"].masked == math.ceil(0.5 * 16 * 16 * 9)
    assert rep["layer2.0.conv1"].masked == 0 and rep["layer3.2.conv1"].masked == math.ceil(0.7 * 64 * 64 * 9)
    # layers= / ignored_layers=
    model = _digits()
    rep = dp.sparsify(model, 0.5, layers=["conv2", "fc.bias"], ignored_layers=())
    assert [r.name for r in rep.layers] == ["conv2.weight", "fc.bias"]
    rep = dp.sparsify(_digits(), 0.5, ignored_layers=["fc"])
    assert [r.name for r in rep.layers] == LAYERS[:3]
    # errors name the argument, and leave the model untouched
    model = _digits()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="sparsity"):
        dp.sparsify(model, 1.0)
    with pytest.raises(ValueError, match="global"):
        dp.sparsify(model, {"conv1": 0.5}, scope="global")
    with pytest.raises(ValueError, match="scope"):
        dp.sparsify(model, 0.5, scope="row")
    with pytest.raises(PruningError, match="nope"):
        dp.sparsify(model, 0.5, layers=["nope"])
    with pytest.raises(ValueError, match="importance"):
        dp.sparsify(model, 0.5, importance="taylor")
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))
    assert dp.masks(model) == {}


def test_custom_importance_and_sparsifying_again_adds_to_the_masks():
    model = _digits()
    w0 = _params(model)["fc.weight"].detach().clone()
    dp.sparsify(model, 0.25, layers=["fc"], importance=lambda name, t: -t.abs())  # largest first
    assert torch.equal(dp.masks(model)["fc.weight"], _stable_smallest(-w0.abs(), 160))
    first = dp.masks(model)["fc.weight"].clone()
    rep = dp.sparsify(model, 0.5, layers=["fc"])
    m = dp.masks(model)["fc.weight"]
    assert rep.masked == 320 and torch.all(m[first])  # once masked, always masked


# ================================================================================ masks
@pytest.mark.parametrize("opt_name", ["sgd", "nesterov", "adam", "adamw"])
def test_masks_survive_100_steps_with_momentum_and_weight_decay(opt_name):
    model = _digits()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
            "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2)}[opt_name]
    opt = make(model.parameters())
    for t in range(5):  # momentum built up *before* sparsifying: it must not revive anything
        x, y = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    dp.sparsify(model, 0.8, optimizer=opt)
    masks = {n: m.clone() for n, m in dp.masks(model).items()}
    kept0 = {n: _params(model)[n].detach().clone() for n in masks}
    for t in range(100):
        x, y = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for n, m in masks.items():
        p = _params(model)[n]
        assert torch.all(p[m] == 0) and not torch.signbit(p[m]).any(), n  # +0.0: all-zero bits
        assert not torch.equal(p[~m], kept0[n][~m])  # the rest trains
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert torch.all(v[m] == 0), (n, "optimizer state")
    assert dp.sparsity_report(model).masked == sum(int(m.sum()) for m in masks.values())


def test_without_the_hook_training_revives_pruned_weights():
    model = _digits()
    dp.sparsify(model, 0.8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    p, m = _params(model)["conv2.weight"], dp.masks(model)["conv2.weight"]
    assert (p[m] != 0).any()          # why the masks exist
    dp.apply_masks(model, opt)        # the manual route
    assert torch.all(p[m] == 0) and torch.all(opt.state[p]["momentum_buffer"][m] == 0)


def test_keep_masks_once_per_optimizer_and_handle_removal():
    model = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp.sparsify(model, 0.5, optimizer=opt)
    assert dp.keep_masks(opt, model) is None  # already attached: not twice
    with pytest.raises(PruningError):
        dp.keep_masks("not an optimizer", model)


def test_remove_masks_keeps_exactly_the_same_function():
    model = _digits().eval()
    x = torch.randn(32, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    dp.sparsify(model, 0.9, optimizer=opt)
    model.train()
    for t in range(10):
        xb, yb = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    ref = model(x)
    state = copy.deepcopy(model.state_dict())
    assert dp.remove_masks(model) == 4
    assert dp.masks(model) == {}
    assert torch.equal(model(x), ref)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values()))
    # the masks are gone: the old hook is a no-op and training may use the zeros again
    model.train()
    xb, yb = _batch(99)
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    opt.step()
    assert dp.sparsity_report(model, LAYERS).sparsity < 0.9


def test_masks_follow_deepcopy_and_device_moves_and_stay_out_of_state_dict():
    model = _digits()
    dp.sparsify(model, 0.7)
    keys = list(model.state_dict())
    assert keys == list(_digits().state_dict())           # state_dict unchanged
    twin = copy.deepcopy(model)
    assert set(dp.masks(twin)) == set(LAYERS)
    assert all(torch.equal(dp.masks(twin)[n], dp.masks(model)[n]) for n in LAYERS)
    twin.double()
    with torch.no_grad():
        twin.conv1.weight.fill_(1.0)
    dp.apply_masks(twin)
    assert torch.all(twin.conv1.weight[dp.masks(twin)["conv1.weight"]] == 0)


# ================================================================================ structured + unstructured
def test_structurally_pruned_model_can_be_sparsified_trained_saved_and_loaded(tmp_path):
    model = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for t in range(3):
        x, y = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    dp.prune(model, X, ratio=0.5)
    dp.rebuild_optimizer(opt, model)
    rep = dp.sparsify(model, 0.8, optimizer=opt)
    assert rep["conv2"].shape == (16, 8, 3, 3)
    for t in range(3, 20):
        x, y = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.all(_params(model)[n][m] == 0) for n, m in dp.masks(model).items())
    path = tmp_path / "pruned_sparse.safetensors"
    dp.save(model, path)
    assert {e["mask"] for e in dio.read_header(path)["sparse"].values()} == {"values"}  # no extra mask bits
    again = dp.load(path, digits_cnn(), example_inputs=X)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert set(dp.masks(again)) == set(dp.masks(model))
    assert all(torch.equal(dp.masks(again)[n], dp.masks(model)[n]) for n in dp.masks(model))
    model.eval(), again.eval()
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    # the reloaded masks hold through training
    opt2 = torch.optim.SGD(again.parameters(), lr=0.05, momentum=0.9)
    dp.keep_masks(opt2, again)
    again.train()
    x, y = _batch(0)
    F.cross_entropy(again(x), y).backward()
    opt2.step()
    assert all(torch.all(_params(again)[n][m] == 0) for n, m in dp.masks(again).items())


def test_sparsified_then_structurally_pruned_masks_follow_the_surgery():
    model = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    dp.sparsify(model, 0.8, optimizer=opt)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    old = {n: m.clone() for n, m in dp.masks(model).items()}
    dp.prune(model, X, ratio=0.5)
    dp.rebuild_optimizer(opt, model)
    for t in range(1, 6):
        x, y = _batch(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    rec = dp.optim._parse_entry(dp.surgery.history(model)[0])
    for n, m in dp.masks(model).items():
        p = _params(model)[n]
        assert m.shape == p.shape and torch.all(p[m] == 0)
        dims = rec.get(n, {})
        expect = old[n]
        for d, kept in sorted(dims.items()):
            expect = expect.index_select(d, torch.as_tensor(kept))
        assert torch.equal(m, expect), n


# ================================================================================ files
def test_sparse_resnet50_file_is_small_and_loads_bit_identically(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    dp.sparsify(net, 0.8)
    dense, sparse = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    dp.save(net, dense, sparse=False)
    dp.save(net, sparse)
    ratio = os.path.getsize(sparse) / os.path.getsize(dense)
    assert ratio <= 0.35, ratio
    again = dp.load(sparse, torchvision.models.resnet50())
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(torch.equal(dp.masks(again)[n], m) for n, m in dp.masks(net).items())
    assert len(dp.masks(again)) == len(dp.masks(net)) == 54


@pytest.mark.parametrize("container", ["safetensors", "torch"])
def test_sparse_encoding_edge_cases_round_trip_bit_identically(container, tmp_path):
    model = _digits()
    dp.sparsify(model, 0.6)
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = -0.0              # a kept -0.0: the bitmap follows bits
        m = dp.masks(model)["conv3.weight"]
        w = model.conv3.weight
        w[~m] = torch.where(torch.arange(int((~m).sum())) % 7 == 0, 0.0, w[~m])  # kept but zero: own mask
    dp.remove_masks(model.fc)                               # one tensor unmasked but sparse
    path = tmp_path / "edge.bin"
    dp.save(model, path, sparse="auto")
    if container == "torch":  # the earlier torch-archive container, as the old writer made it
        header, _, tensors = dio._read_raw(path)
        dio._write(path, header, tensors, "torch")
    head = dio.read_header(path)
    assert head["sparse"]["fc.weight"]["mask"] is None and "bn3.bias" in head["sparse"]  # zero-initialized
    assert head["sparse"]["conv2.weight"]["mask"] == "values"
    assert head["sparse"]["conv3.weight"]["mask"] == "own"
    again = dp.load(path, digits_cnn())
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b) and a.view(-1).view(torch.uint8).equal(b.view(-1).view(torch.uint8)), k
    assert torch.equal(dp.masks(again)["conv3.weight"], dp.masks(model)["conv3.weight"])
    assert set(dp.masks(again)) == set(dp.masks(model))
    # dense on request; an unmasked dense model has no sparse table
    dp.save(model, tmp_path / "dense.bin", sparse=False)
    assert "sparse" not in dio.read_header(tmp_path / "dense.bin")
    assert os.path.getsize(tmp_path / "dense.bin") > os.path.getsize(path)
    dp.save(_digits(), tmp_path / "plain.bin")                 # default "masked": nothing to pack
    assert "sparse" not in dio.read_header(tmp_path / "plain.bin")
    dp.save(model, tmp_path / "masked.bin")
    assert set(dio.read_header(tmp_path / "masked.bin")["sparse"]) == set(dp.masks(model))
    with pytest.raises(PruningError, match="sparse"):
        dp.save(model, tmp_path / "x.bin", sparse="yes")


def _resave(src, dst, tensors_fn=None, header_fn=None, fix_checksum=True):
    """Rewrite a saved safetensors file: change tensors / header, with or without a valid checksum."""
    import json
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(src))
    header = meta[dio._HEADER_KEY]
    if tensors_fn:
        tensors_fn(t)
    if header_fn:
        h = json.loads(header)
        header_fn(h)
        header = json.dumps(h)
    checksum = dio._checksum(header, t) if fix_checksum else meta[dio._CHECKSUM_KEY]
    save_file(t, str(dst), metadata={dio._HEADER_KEY: header, dio._CHECKSUM_KEY: checksum})
    return dst


def test_tampered_or_malformed_sparse_files_are_refused(tmp_path):
    pytest.importorskip("safetensors")
    model = _digits()
    dp.sparsify(model, 0.8)
    path = tmp_path / "s.safetensors"
    dp.save(model, path)
    bad = tmp_path / "bad.safetensors"
    fresh = digits_cnn()
    before = copy.deepcopy(fresh.state_dict())

    def flip_value(t):
        t["conv2.weight::values"][3] += 1.0

    def flip_bitmap(t):
        t["conv2.weight::bitmap"][0] ^= 0x0F

    with pytest.raises(dio.FormatError, match="checksum"):
        dp.load(_resave(path, bad, flip_value, fix_checksum=False), fresh)
    with pytest.raises(dio.FormatError, match="checksum"):
        dp.load(_resave(path, bad, flip_bitmap, fix_checksum=False), fresh)
    # a consistent checksum over an inconsistent table is still refused, by name
    with pytest.raises(dio.FormatError, match="values for"):
        dp.load(_resave(path, bad, flip_bitmap), fresh)
    with pytest.raises(dio.FormatError, match="malformed"):
        dp.load(_resave(path, bad, header_fn=lambda h: h["sparse"].update(
            {"conv2.weight": {"shape": "x", "mask": None}})), fresh)
    with pytest.raises(dio.FormatError, match="not described"):
        dp.load(_resave(path, bad, header_fn=lambda h: h.pop("sparse")), fresh)
    with pytest.raises(dio.FormatError, match="no `conv2.weight::bitmap`"):
        dp.load(_resave(path, bad, lambda t: t.pop("conv2.weight::bitmap")), fresh)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), fresh.state_dict().values()))
    assert dp.masks(fresh) == {}
    dp.load(path, fresh)  # the good file still loads into it
    assert set(dp.masks(fresh)) == set(LAYERS)


# ================================================================================ GReg at weight granularity
def _wp(model, method, s=0.5, **kw):
    return RegularizedPruner(model, X, method, sparsity=s, granularity="weight", **kw)


def test_weight_pruner_selection_and_argument_errors():
    model = _digits()
    p = _wp(model, GReg1(delta=0.1, interval=1), 0.7)
    assert isinstance(p, WeightRegularizedPruner) and p.regularized == LAYERS
    for n, m in p.pruned_masks.items():
        w = _params(model)[n]
        k = min(math.ceil(round(0.7 * w.numel(), 6)), w.numel() - 1)
        assert torch.equal(m, _stable_smallest(w.detach().abs(), k))
    # global scope: the same choice as dp.sparsify's global ranking
    p = _wp(model, "greg1", 0.8, scope="global")
    twin = copy.deepcopy(model)
    dp.sparsify(twin, 0.8, scope="global")
    assert all(torch.equal(p.pruned_masks[n], dp.masks(twin)[n]) for n in p.regularized)
    with pytest.raises(ValueError, match="tpp"):
        _wp(model, "tpp")
    with pytest.raises(ValueError, match="orthp"):
        _wp(model, "orthp")
    with pytest.raises(ValueError, match="sparsity"):
        RegularizedPruner(model, X, "greg1", ratio=0.5, granularity="weight")
    with pytest.raises(ValueError, match="sparsity"):
        RegularizedPruner(model, X, "greg1", ratio=0.5, sparsity=0.5)
    with pytest.raises(ValueError, match="granularity"):
        RegularizedPruner(model, X, "greg1", ratio=0.5, granularity="row")
    with pytest.raises(ValueError, match="targets"):
        _wp(model, GReg1(targets="group"))
    assert dp.masks(model) == {}  # construction never touches the model


def test_greg1_weight_schedule_growth_ceiling_stabilize():
    model = _digits()
    p = _wp(model, GReg1(delta=0.25, interval=3, ceiling=1.0, stabilize=4, early_stop_ratio=math.inf), 0.6)
    sp = p.pruned_masks
    finish = 5  # first k with 0.25 k > 1
    t_stab = finish * 3
    for t in range(1, t_stab + 7):
        p.step()
        k = min(t // 3, finish)
        for n, lam in p.lambdas.items():
            assert lam.shape == _params(model)[n].shape
            assert torch.all(lam[sp[n]] == 0.25 * k) and torch.all(lam[~sp[n]] == 0)
        if t < t_stab:
            assert p.phase == "grow"
        elif t < t_stab + 4:
            assert p.phase == "stabilize" and p.t_stab == t_stab
        else:
            assert p.done
    assert all(torch.equal(sp[n], m) for n, m in p.pruned_masks.items())  # S_p never changes


def test_greg1_weight_early_stop_on_magnitude_ratio():
    model = _digits()
    p = _wp(model, GReg1(delta=1e-3, interval=1, ceiling=1.0, stabilize=0, early_stop_ratio=20.0), 0.5)
    sp = p.pruned_masks
    h = {}
    for t in range(1, 60):
        with torch.no_grad():
            for n, m in sp.items():
                _params(model)[n][m] *= 0.7
        for n, m in sp.items():
            a = _params(model)[n].detach().abs().double()
            r = (a[~m].mean() / a[m].mean()).item()
            h[n] = r if n not in h else 0.9 * h[n] + 0.1 * r
        p.step()
        assert p.mag_ratio == pytest.approx(min(h.values()), rel=1e-9)
        if all(v >= 20.0 for v in h.values()):
            break
        assert p.phase == "grow"
    assert p.done and p.max_lambda == pytest.approx(1e-3 * p.t)


def test_greg2_weight_pick_then_push_with_negative_kept_penalty():
    model = _digits()
    meth = GReg2(delta=0.1, interval=2, ceiling=0.5, stabilize=0, pick_delta=1e-3, pick_ceiling=5e-3,
                 kept_penalty=-1e-4, early_stop_ratio=math.inf)
    p = _wp(model, meth, 0.8)
    assert p.phase == "pick" and all(v is None for v in p.pruned_masks.values())
    t = 0
    for n_pick in range(1, 6):
        for _ in range(2):
            t += 1
            with torch.no_grad():  # weights move between updates: the pick must read the current ones
                for n in LAYERS:
                    _params(model)[n].mul_(torch.linspace(0.5, 1.5, _params(model)[n].numel()).view_as(_params(model)[n]))
            p.step()
        if n_pick < 5:
            assert p.phase == "pick"
            assert all(torch.allclose(lam, torch.tensor(1e-3 * n_pick, dtype=torch.float64), rtol=1e-12, atol=0)
                       for lam in p.lambdas.values())
    assert p.phase == "grow" and p.t == 10
    for n, m in p.pruned_masks.items():
        w = _params(model)[n]
        k = min(math.ceil(round(0.8 * w.numel(), 6)), w.numel() - 1)
        assert torch.equal(m, _stable_smallest(w.detach().abs(), k))
    sp = p.pruned_masks
    for n_up in range(1, 6):
        for _ in range(2):
            p.step()
        for n, lam in p.lambdas.items():
            assert torch.allclose(lam[sp[n]], torch.tensor(5e-3 + 0.1 * n_up, dtype=torch.float64))
            assert torch.all(lam[~sp[n]] == -1e-4)
    assert p.done  # 5e-3 + 0.5 > 0.5 at n_up = 5


def test_weight_regularize_equals_autograd_of_the_explicit_penalty():
    model = _digits()
    p = _wp(model, GReg2(delta=0.05, interval=1, pick_delta=1e-2, pick_ceiling=2e-2, stabilize=0), 0.7)
    for _ in range(4):
        p.step()  # picked at t=2, then two push updates: pruned 0.02 + 0.1, kept -1e-4
    x, y = _batch(0)
    lam = p.lambdas
    ref = copy.deepcopy(model)
    loss = F.cross_entropy(ref(x), y)
    for n, l in lam.items():
        w = _params(ref)[n]
        loss = loss + (l.float() / 2 * w.pow(2)).sum()
    loss.backward()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    p.regularize()
    for n, w in model.named_parameters():
        assert torch.allclose(w.grad, _params(ref)[n].grad, rtol=1e-5, atol=1e-7), n
    # the per-weight formula, exactly
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g0 = {n: _params(model)[n].grad.clone() for n in LAYERS}
    p.regularize()
    for n in LAYERS:
        w = _params(model)[n]
        assert torch.equal(w.grad, g0[n].addcmul(lam[n].float(), w.detach()))


def test_growing_reg_and_oneshot_at_weight_granularity():
    model = _digits()
    p = _wp(model, GrowingReg(delta=0.1, interval=1, reg=1e-3), 0.5)
    lam0 = {n: torch.full(_params(model)[n].shape, 1e-3, dtype=torch.float64) for n in LAYERS}
    assert all(torch.equal(p.lambdas[n], lam0[n]) for n in LAYERS)
    a = {n: _params(model)[n].detach().abs().double() for n in LAYERS}
    p.step()
    for n in LAYERS:
        s = (a[n].max() - a[n]) / (a[n].max() - a[n].min() + 1e-8)
        assert torch.allclose(p.lambdas[n], lam0[n] + 0.1 * s, rtol=0, atol=1e-15)
    rep = p.prune()  # S_p chosen now, by magnitude
    assert rep.masked == sum(min(math.ceil(0.5 * _params(model)[n].numel()), _params(model)[n].numel() - 1)
                             for n in LAYERS)
    # one-shot magnitude: done at once, the same masks as dp.sparsify
    m1, m2 = _digits(), _digits()
    p = _wp(m1, "oneshot", 0.9)
    assert p.done
    p.prune()
    dp.sparsify(m2, 0.9)
    assert all(torch.equal(dp.masks(m1)[n], dp.masks(m2)[n]) for n in LAYERS)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def _train(model, pruner, opt, t0, t1):
    for t in range(t0, t1):
        x, y = _batch(t)
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.regularize()
        opt.step()
        pruner.step()


RESUME = {
    "greg1": lambda: GReg1(delta=0.05, interval=2, stabilize=10),
    "greg2": lambda: GReg2(delta=0.05, interval=2, stabilize=10, pick_delta=1e-3, pick_ceiling=1e-2),
    "growing_reg": lambda: GrowingReg(delta=0.01, interval=2),
}


@pytest.mark.parametrize("name,scope", [("greg1", "layer"), ("greg2", "layer"), ("growing_reg", "layer"),
                                        ("greg1", "global"), ("greg2", "global")])
def test_weight_resume_mid_schedule_is_bit_identical(name, scope, tmp_path):
    total, cut = 40, 13  # GReg-2 still picking at the cut

    def fresh(seed):
        torch.manual_seed(seed)
        m = digits_cnn()
        return m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    m1, o1 = fresh(0)
    p1 = _wp(m1, RESUME[name](), 0.8, scope=scope)
    _train(m1, p1, o1, 0, total)
    m2, o2 = fresh(0)
    p2 = _wp(m2, RESUME[name](), 0.8, scope=scope)
    _train(m2, p2, o2, 0, cut)
    if name == "greg2":
        assert p2.phase == "pick"
    dp.save_state({"model": m2.state_dict(), "opt": o2.state_dict(), "pruner": p2.state_dict()}, tmp_path / "ck")
    del m2, o2, p2
    saved = dp.load_state(tmp_path / "ck")
    m3, o3 = fresh(123)
    m3.load_state_dict(saved["model"])
    o3.load_state_dict(saved["opt"])
    p3 = _wp(m3, RESUME[name](), 0.8, scope=scope)
    p3.load_state_dict(saved["pruner"])
    assert p3.state_digest() != "" and p3.t == cut
    _train(m3, p3, o3, cut, total)
    assert p3.state_digest(include_weights=True) == p1.state_digest(include_weights=True)
    assert p3.phase == p1.phase and p3.t_stab == p1.t_stab
    for n in p1.regularized:
        assert torch.equal(p1.lambdas[n], p3.lambdas[n])
        a, b = p1.pruned_masks[n], p3.pruned_masks[n]
        assert (a is None and b is None) or torch.equal(a, b)
    with pytest.warns(UserWarning) if not p1.done and name != "growing_reg" else _null():
        r1 = p1.prune()
    with pytest.warns(UserWarning) if not p3.done and name != "growing_reg" else _null():
        r3 = p3.prune()
    assert r1.masked == r3.masked
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(PruningError):
        _wp(fresh(0)[0], RESUME[name](), 0.8, scope=scope).load_state_dict(
            {**saved["pruner"], "granularity": "channel"})


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_greg1_weight_run_shrinks_sp_then_prune_masks_and_finetune_keeps_them():
    model = _digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    p = _wp(model, GReg1(delta=0.05, interval=2, ceiling=2.0, stabilize=5, early_stop_ratio=math.inf), 0.8,
            record_separation=True)
    sp = p.pruned_masks
    a0 = {n: _params(model)[n].detach().abs()[sp[n]].mean().item() for n in LAYERS}
    t = 0
    while not p.done:
        _train(model, p, opt, t, t + 1)
        t += 1
    a1 = {n: _params(model)[n].detach().abs()[sp[n]].mean().item() for n in LAYERS}
    assert all(a1[n] < 0.5 * a0[n] for n in LAYERS), (a0, a1)
    assert len(p.separation["conv2.weight"]) == (t - 5) // 2
    before = {n: _params(model)[n].detach().clone() for n in LAYERS}
    rep = p.prune()
    assert rep.masked == sum(int(m.sum()) for m in sp.values())
    for n in LAYERS:  # prune() zeroes exactly S_p and masks it
        w = _params(model)[n]
        assert torch.equal(dp.masks(model)[n], sp[n])
        assert torch.all(w[sp[n]] == 0) and torch.equal(w[~sp[n]], before[n][~sp[n]])
    with pytest.raises(PruningError):
        p.step()
    ft = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    dp.keep_masks(ft, model)
    model.train()
    for t in range(20):
        x, y = _batch(t)
        ft.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ft.step()
    assert dp.sparsity_report(model).masked == rep.masked
    assert all(torch.all(_params(model)[n][sp[n]] == 0) for n in LAYERS)


def test_sparsify_again_after_structural_pruning_keeps_the_old_masks_first():
    model = _digits()
    dp.sparsify(model, 0.5)
    dp.prune(model, X, ratio=0.5)
    rep = dp.sparsify(model, 0.6)  # the old (sliced) masks are counted in the new 60 %
    for r in rep.layers:
        k = min(math.ceil(round(0.6 * r.params, 6)), r.params - 1)
        assert r.masked == k, r.name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_sparse_files_in_other_dtypes_round_trip_bit_identically(dtype, tmp_path):
    model = _digits().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dp.sparsify(model, 0.9, optimizer=opt)
    x, y = _batch(0)
    F.cross_entropy(model(x.to(dtype)), y).backward()
    opt.step()
    dp.save(model, tmp_path / "m.bin")
    again = dp.load(tmp_path / "m.bin", digits_cnn().to(dtype))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype == (dtype if a.is_floating_point() else a.dtype)
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), k
    assert all(torch.equal(dp.masks(again)[n], m) for n, m in dp.masks(model).items())
