"""The surgeon: what it keeps (device, dtype, requires_grad, mode, parameter identity, running
statistics, gradients), what it refuses (empty groups, bad indices, a second prune through a used
graph) and that it is all or nothing: a failure injected at any point of the build phase or the
commit phase leaves the model bit-identical to what it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn as nn
import torch.nn.functional as F

import depgraph_prune as dp
from depgraph_prune import surgery
from depgraph_prune.errors import PruningError, SurgeryError


pytestmark = pytest.mark.usefixtures("one_thread")


# ======================================================================================= models
class Net(nn.Module):
    """conv-bn-relu, depthwise conv, SE-free residual add, flatten -> linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.gn = nn.GroupNorm(3, 6)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        y = F.relu(self.bn1(self.c1(x)))
        y = y + F.relu(self.bn2(self.dw(y)))
        y = F.relu(self.gn(self.c2(y)))
        return self.fc2(F.relu(self.fc1(torch.flatten(y, 1))))


def _randomize(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return model


def _x(dtype=torch.float32, device="cpu"):
    return torch.randn(2, 3, 4, 4, dtype=dtype, device=device)


def _plan(graph):
    """A multi-group plan: two channels of each of the net's prunable groups."""
    return {graph.group_of("c1"): [0, 5], graph.group_of("c2"): [1], graph.group_of("fc1"): [2, 3, 9]}


def _kept(n, removed):
    return [i for i in range(n) if i not in removed]


def snapshot(model):
    sd = {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    flags = {n: (p.requires_grad, type(p)) for n, p in model.named_parameters()}
    simple = (int, float, bool, str, tuple, type(None))
    attrs = {n: (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)})
             for n, m in model.named_modules()}
    return repr(model), sd, grads, flags, attrs


def assert_unchanged(model, snap):
    rep, sd, grads, flags, attrs = snap
    assert repr(model) == rep
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(sd)
    for k, (obj, val) in sd.items():
        assert now[k] is obj, f"{k} was replaced"
        t = now[k].detach()
        assert (t.dtype, t.shape, t.device) == (val.dtype, val.shape, val.device), k
        assert torch.equal(t, val), k
    for n, p in model.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert p.grad is not None and p.grad.shape == grads[n].shape and torch.equal(p.grad, grads[n]), n
        assert (p.requires_grad, type(p)) == flags[n], n
    simple = (int, float, bool, str, tuple, type(None))
    for n, m in model.named_modules():
        assert (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)}) == attrs[n], n


# ================================================================= what the surgeon keeps
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_device_requires_grad_kept(dtype):
    model = _randomize(Net()).to(dtype)
    model.bn1.bias.requires_grad_(False)
    model.fc2.weight.requires_grad_(False)
    x = _x(dtype)
    before = {n: (p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()}
    bufs = {n: (b.dtype, b.device) for n, b in model.named_buffers()}
    graph = dp.build_graph(model, x)
    graph.prune(_plan(graph))
    for n, p in model.named_parameters():
        assert isinstance(p, nn.Parameter), n
        assert (p.dtype, p.device, p.requires_grad) == before[n], n
    for n, b in model.named_buffers():
        assert (b.dtype, b.device) == bufs[n], n
    assert model.c1.out_channels == 6 and model.c1.weight.dtype == dtype
    out = model.eval()(x)
    assert out.shape == (2, 3) and out.dtype == dtype


def test_meta_device_model_is_pruned_on_meta():
    with torch.device("meta"):
        model = Net()
    graph = dp.build_graph(model, torch.randn(2, 3, 4, 4, device="meta"))
    graph.prune(_plan(graph))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "meta" for b in model.buffers())
    assert model.c1.weight.shape == (6, 3, 3, 3) and model.bn1.running_mean.shape == (6,)
    assert model.fc1.weight.shape == (7, 4 * 16)  # GroupNorm(3, 6): one pair of c2 channels went


def test_training_mode_kept_per_module():
    model = _randomize(Net()).train()
    model.bn2.eval()
    model.fc1.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    graph = dp.build_graph(model, _x())
    assert {n: m.training for n, m in model.named_modules()} == modes  # tracing restores modes
    graph.prune(_plan(graph))
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_batchnorm_running_stats_sliced():
    model = _randomize(Net())
    old = {n: b.clone() for n, b in model.named_buffers()}
    graph = dp.build_graph(model, _x())
    g = graph.group_of("c1")
    removed_pos = sorted({int(i) for c in (0, 5) for i in g.members[0].indices([c])})
    record = graph.prune({g: [0, 5]})
    keep = _kept(8, removed_pos)
    assert record["kept"]["bn1.running_mean:0"] == keep
    for bn in ("bn1", "bn2"):
        for stat in ("running_mean", "running_var"):
            new = getattr(model, bn).__getattr__(stat)
            assert torch.equal(new, old[f"{bn}.{stat}"][keep]), (bn, stat)
        assert getattr(model, bn).num_batches_tracked.item() == 7
        assert getattr(model, bn).num_features == 6


def test_parameter_identity_kept_and_values_sliced():
    model = _randomize(Net())
    params = dict(model.named_parameters())
    old = {n: p.detach().clone() for n, p in params.items()}
    graph = dp.build_graph(model, _x())
    rec = graph.prune(_plan(graph))["kept"]
    now = dict(model.named_parameters())
    assert list(now) == list(params)
    for n, p in now.items():
        assert p is params[n], n
    k1 = rec["c1.weight:0"]
    assert len(k1) == 6
    assert torch.equal(model.c1.weight, old["c1.weight"][k1])
    assert torch.equal(model.dw.weight, old["dw.weight"][k1])
    assert torch.equal(model.bn1.weight, old["bn1.weight"][k1])
    assert torch.equal(model.c2.weight, old["c2.weight"][rec["c2.weight:0"]][:, k1])
    kfc = rec["fc1.weight:1"]
    assert len(kfc) == 4 * 16
    k2 = rec["c2.weight:0"]
    assert kfc == [c * 16 + i for c in k2 for i in range(16)]
    assert torch.equal(model.fc1.weight, old["fc1.weight"][rec["fc1.weight:0"]][:, kfc])
    assert model.fc1.weight.shape == (7, 64) and model.fc2.weight.shape == (3, 7)
    assert (model.gn.num_groups, model.gn.num_channels) == (2, 4)


def test_grad_sliced_when_present():
    model = _randomize(Net())
    model(_x()).sum().backward()
    model.fc2.bias.grad = None  # one without grad
    old = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    graph = dp.build_graph(model, _x())
    rec = graph.prune(_plan(graph))["kept"]
    k1 = rec["c1.weight:0"]
    assert torch.equal(model.c1.weight.grad, old["c1.weight"][k1])
    assert torch.equal(model.c2.weight.grad, old["c2.weight"][rec["c2.weight:0"]][:, k1])
    assert torch.equal(model.fc1.weight.grad, old["fc1.weight"][rec["fc1.weight:0"]][:, rec["fc1.weight:1"]])
    assert model.fc2.bias.grad is None
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.shape == p.shape, n
    # training goes on: a new backward accumulates into the sliced grads
    model(_x()).sum().backward()


def test_optimizer_keeps_pruned_parameters():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    graph = dp.build_graph(model, _x())
    graph.prune(_plan(graph))
    ids = {id(p) for grp in opt.param_groups for p in grp["params"]}
    assert ids == {id(p) for p in model.parameters()}
    model(_x()).sum().backward()
    opt.step()  # momentum-free SGD has no state to go stale


# ============================================================================ refusals
def test_pruning_all_channels_of_a_group_raises_and_leaves_model_unchanged():
    model = _randomize(Net())
    graph = dp.build_graph(model, _x())
    snap = snapshot(model)
    g = graph.group_of("c2")
    with pytest.raises(PruningError, match="all"):
        g.prune(list(range(g.size)))
    assert_unchanged(model, snap)


def test_pruning_every_position_a_member_reads_raises():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.c2 = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c2(self.c1(x)[:, 4:])

    model = M()
    graph = dp.build_graph(model, _x())
    g = graph.group_of("c1")
    assert (g.size, g.n_frozen) == (4, 4)
    snap = snapshot(model)
    with pytest.raises(PruningError, match="c2.weight"):
        g.prune([0, 1, 2, 3])
    assert_unchanged(model, snap)


@pytest.mark.parametrize("channels", [[8], [-1], [1, 1], [0, 3, 0], [100, 2]])
def test_bad_channel_indices_raise(channels):
    model = _randomize(Net())
    graph = dp.build_graph(model, _x())
    snap = snapshot(model)
    g = graph.group_of("c1")
    assert g.size == 8
    with pytest.raises(PruningError, match=f"group {g.index}"):
        g.prune(channels)
    assert_unchanged(model, snap)
    g.prune([1])  # the graph is still usable after a refused prune
    assert model.c1.out_channels == 7


@pytest.mark.parametrize("kind", ["list", "tuple", "range", "tensor", "numpy"])
def test_channels_given_as_any_integer_sequence(kind):
    import numpy as np

    chans = {"list": [0, 2], "tuple": (0, 2), "range": range(0, 4, 2), "tensor": torch.tensor([0, 2]),
             "numpy": np.array([0, 2])}[kind]
    model = Net()
    graph = dp.build_graph(model, _x())
    graph.group_of("c1").prune(chans)
    assert model.c1.out_channels == 6 and model.bn2.num_features == 6


def test_frozen_group_cannot_be_pruned():
    model = Net()
    graph = dp.build_graph(model, _x())
    out = graph.group_of("fc2")
    assert not out.prunable and out.size == 0
    snap = snapshot(model)
    with pytest.raises(PruningError):
        out.prune([0])
    assert_unchanged(model, snap)


def test_graph_used_once_refuses_a_second_prune():
    model = Net()
    graph = dp.build_graph(model, _x())
    g1, g2 = graph.group_of("c1"), graph.group_of("c2")
    g1.prune([0])
    snap = snapshot(model)
    with pytest.raises(PruningError, match="already"):
        g2.prune([0])
    with pytest.raises(PruningError, match="already"):
        g1.prune([1])
    with pytest.raises(PruningError, match="already"):
        graph.prune({g2: [1]})
    assert_unchanged(model, snap)
    graph = dp.build_graph(model, _x())  # a fresh graph goes on
    graph.group_of("c1").prune([0])
    assert model.c1.out_channels == 6


def test_empty_plan_changes_nothing():
    model = _randomize(Net())
    graph = dp.build_graph(model, _x())
    snap = snapshot(model)
    graph.prune({graph.group_of("c1"): []})
    assert_unchanged(model, snap)


# ============================================================================ unit: helpers
def test_slice_helper_selects_along_several_dims_and_copies():
    t = torch.arange(4 * 5 * 2, dtype=torch.float64).reshape(4, 5, 2)
    out = surgery._slice(t, {1: [0, 2, 4], 0: [3, 1]})
    assert torch.equal(out, t[[3, 1]][:, [0, 2, 4]])
    same = surgery._slice(t, {})
    assert torch.equal(same, t) and same.data_ptr() != t.data_ptr()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_split_and_merge_rebuild_the_tensor_bit_for_bit(data):
    # The commit keeps only the removed parts for its undo; merging them back must give the
    # original tensor exactly, for any dims pruned in any order.
    shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    t = torch.randn(shape, dtype=torch.float64)
    dims = {}
    for d in data.draw(st.sets(st.integers(0, len(shape) - 1))):
        keep = data.draw(st.lists(st.integers(0, shape[d] - 1), min_size=1, unique=True))
        dims[d] = np.array(sorted(keep))
    new, parts = surgery._split(t, dims)
    assert torch.equal(new, surgery._slice(t, dims))
    assert sum(p[3].numel() for p in parts) + new.numel() == t.numel()  # no element kept twice
    assert torch.equal(surgery._merge(new, parts), t)


def test_commit_never_holds_a_second_copy_of_a_large_model(monkeypatch):
    # Above KEEP_OLD_LIMIT the undo of the commit keeps the removed parts, not the old tensors:
    # what the model and the undo hold together is exactly the original weights.
    monkeypatch.setattr(surgery, "KEEP_OLD_LIMIT", 0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    graph = dp.build_graph(model, torch.randn(2, 6))
    old = [p.detach().clone() for p in model.parameters()]
    record = surgery.apply_plan(graph, {graph.group_of("0"): [1, 4, 7]})
    undo_cells = record["undo"].__closure__
    undo = next(c.cell_contents for c in undo_cells if isinstance(c.cell_contents, list)
                and c.cell_contents and isinstance(c.cell_contents[0], tuple))
    held = sum(part[3].numel() for e in undo if e[0] == "param_split" for part in e[3])
    assert held == 3 * 6 + 3 + 3 * 4  # the removed rows of 0.weight, 0.bias and columns of 2.weight
    assert all(e[0] != "param" for e in undo)
    record["undo"]()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), old))


def test_commit_keeps_the_old_tensors_of_a_small_model():
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    graph = dp.build_graph(model, torch.randn(2, 6))
    old = [p.detach() for p in model.parameters()]
    record = surgery.apply_plan(graph, {graph.group_of("0"): [1, 4, 7]})
    assert model[0].weight.shape == (7, 6) and model[2].weight.shape == (4, 7)
    record["undo"]()
    assert all(a is b.detach() or a.data_ptr() == b.data_ptr() for a, b in zip(old, model.parameters()))
    assert [p.shape for p in model.parameters()] == [a.shape for a in old]


def test_width_attrs_refuses_partial_groups():
    conv = nn.Conv2d(8, 12, 3, groups=4)  # 3 outputs per group
    new = {id(conv.weight): (conv.weight, torch.zeros(7, 2, 3, 3), None)}
    with pytest.raises(SurgeryError, match="group"):
        surgery._width_attrs(conv, "conv", new, {})
    new = {id(conv.weight): (conv.weight, torch.zeros(6, 2, 3, 3), None)}
    ups = dict((a, v) for _, a, v in surgery._width_attrs(conv, "conv", new, {}))
    assert ups == {"groups": 2, "in_channels": 4, "out_channels": 6}
    gn = nn.GroupNorm(4, 16)
    with pytest.raises(SurgeryError, match="group"):
        surgery._width_attrs(gn, "gn", {}, {"num_channels": 14})
    ups = dict((a, v) for _, a, v in surgery._width_attrs(gn, "gn", {}, {"num_channels": 8}))
    assert ups == {"num_groups": 2, "num_channels": 8}


# ================================================================================ atomicity
def _small_resnet18(w=8, num_classes=10):
    """ResNet-18's layout (torchvision BasicBlocks, [2, 2, 2, 2], strided 1x1 downsamples, fc head)
    at 1/8 of its width, so that snapshots and bit-for-bit comparisons are cheap."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    class SmallResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            inp = w
            for i, planes in enumerate((w, 2 * w, 4 * w, 8 * w)):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or inp != planes:
                    down = nn.Sequential(conv1x1(inp, planes, stride), nn.BatchNorm2d(planes))
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inp, planes, stride, down),
                                                             BasicBlock(planes, planes)))
                inp = planes
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inp, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return SmallResNet18()


def _resnet():
    torch.manual_seed(0)
    m = _small_resnet18()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    m.train()
    m(torch.randn(2, 3, 16, 16)).sum().backward()  # grads present: they must be restored too
    m.layer2.eval()  # mixed modes
    m.fc.bias.grad = None
    return m


_RX = torch.randn(1, 3, 16, 16)


def _resnet_plan(graph):
    plan = {g: list(range(0, g.size, 3)) for g in graph.prunable_groups}
    assert len(plan) >= 10
    return plan


@pytest.fixture(scope="module")
def resnet_calls():
    """How many index_select / _slice / _width_attrs calls a successful multi-group prune makes."""
    model = _resnet()
    graph = dp.build_graph(model, _RX)
    counts = {"index_select": 0, "_slice": 0, "_width_attrs": 0}
    mp = pytest.MonkeyPatch()

    def counting(owner, name):
        orig = getattr(owner, name)

        def f(*a, **k):
            counts[name] += 1
            return orig(*a, **k)

        mp.setattr(owner, name, f)

    counting(torch.Tensor, "index_select")
    counting(surgery, "_slice")
    counting(surgery, "_width_attrs")
    try:
        graph.prune(_resnet_plan(graph), verify=False)  # the surgery alone (verification: test_verify.py)
    finally:
        mp.undo()
    assert counts["index_select"] > 20 and counts["_slice"] > 20 and counts["_width_attrs"] > 10
    assert model.eval()(_RX).shape == (1, 10)
    return counts


def _failing_on(k, orig):
    state = {"n": 0}

    def f(*a, **kw):
        state["n"] += 1
        if state["n"] == k:
            raise RuntimeError(f"injected failure on call {k}")
        return orig(*a, **kw)

    return f, state


@pytest.mark.parametrize("where", ["index_select", "_slice"])
def test_build_phase_failure_leaves_model_bit_identical(where, resnet_calls, monkeypatch):
    model = _resnet()
    n = resnet_calls[where]
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        graph = dp.build_graph(model, _RX)
        plan = _resnet_plan(graph)
        snap = snapshot(model)
        if where == "index_select":
            f, state = _failing_on(k, torch.Tensor.index_select)
            monkeypatch.setattr(torch.Tensor, "index_select", f)
        else:
            f, state = _failing_on(k, surgery._slice)
            monkeypatch.setattr(surgery, "_slice", f)
        with pytest.raises(Exception, match="injected failure"):
            graph.prune(plan, verify=False)
        monkeypatch.undo()
        assert state["n"] == k
        assert_unchanged(model, snap)
    # and after all that, the real thing still works
    graph = dp.build_graph(model, _RX)
    graph.prune(_resnet_plan(graph))
    assert model.eval()(_RX).shape == (1, 10)


class _Bomb:
    """A width attribute whose setter fails ``times`` times."""

    def __init__(self, times):
        self.times = times
        self.__dict__["width"] = 1

    def __setattr__(self, name, value):
        if name == "width" and self.times > 0:
            self.times -= 1
            raise RuntimeError("injected commit failure")
        object.__setattr__(self, name, value)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_commit_phase_failure_rolls_back_everything(position, resnet_calls, monkeypatch):
    model = _resnet()
    graph = dp.build_graph(model, _RX)
    plan = _resnet_plan(graph)
    snap = snapshot(model)
    n = resnet_calls["_width_attrs"]
    target = {"first": 1, "middle": n // 2, "last": n}[position]
    bomb = _Bomb(times=1)  # fails once: the rollback can restore it
    seen = []
    orig = surgery._width_attrs

    def armed(*a, **k):
        seen.append(1)
        ups = orig(*a, **k)
        return ups + [(bomb, "width", 2)] if len(seen) == target else ups

    monkeypatch.setattr(surgery, "_width_attrs", armed)
    with pytest.raises(SurgeryError, match="injected commit failure"):
        graph.prune(plan, verify=False)
    monkeypatch.undo()
    assert len(seen) == n
    assert bomb.width == 1
    assert_unchanged(model, snap)


def test_failed_validation_undoes_the_whole_surgery(monkeypatch):
    """After the commit the pruned model is checked; a failed check must undo everything."""
    model = _resnet()
    graph = dp.build_graph(model, _RX)
    plan = _resnet_plan(graph)
    snap = snapshot(model)
    monkeypatch.setattr(surgery, "check_runs", lambda *a, **k: "injected validation problem")
    with pytest.raises(SurgeryError, match="injected validation problem"):
        graph.prune(plan, verify=False)
    assert_unchanged(model, snap)


class ArmedConv(nn.Conv2d):
    """A conv whose ``out_channels`` setter fails while armed (a user module with a property)."""

    armed = False

    @property
    def out_channels(self):
        return self.__dict__["out_channels"]

    @out_channels.setter
    def out_channels(self, value):
        if type(self).armed:
            raise RuntimeError("injected setattr failure")
        self.__dict__["out_channels"] = value


class ArmedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 1)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = ArmedConv(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn0(self.c0(x)))
        return self.c2(F.relu(self.bn1(self.c1(y))))


def test_commit_failure_in_a_user_property_setter_rolls_back(monkeypatch):
    model = _randomize(ArmedNet())
    model(_x()).sum().backward()
    graph = dp.build_graph(model, _x())
    plan = {graph.group_of("c0"): [0, 2], graph.group_of("c1"): [1]}
    snap = snapshot(model)
    monkeypatch.setattr(ArmedConv, "armed", True)
    with pytest.raises(PruningError, match="injected setattr failure"):
        graph.prune(plan)
    monkeypatch.setattr(ArmedConv, "armed", False)
    assert_unchanged(model, snap)
    graph = dp.build_graph(model, _x())
    graph.prune({graph.group_of("c0"): [0, 2], graph.group_of("c1"): [1]})
    assert (model.c1.in_channels, model.c1.out_channels, model.bn1.num_features) == (6, 7, 7)
