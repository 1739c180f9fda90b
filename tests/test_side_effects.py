"""Analysis runs never reach the user's model (issue 16: Ultralytics' ``Detect`` head was left with
meta-tensor ``anchors`` after ``dp.prune``, and the pruned model's next forward failed).

Modules here cache things on ``self`` during ``forward`` the ways real code does: a tensor built
from the input's shape (anchors), the shape itself, a flag, a counter, a list and a dict cache, a
buffer registered lazily. After ``build_graph``, ``count_ops`` and ``dp.prune`` (whose surgeon runs
the pruned model to check it), every module's attributes are exactly what they were, and the model
runs on real tensors. One variant's forward cannot run on meta tensors (``x.sum().item()``), so
the engine falls back to real runs after a meta run already cached things.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import depgraph_prune as dp
from depgraph_prune._isolation import side_effects_undone

pytestmark = pytest.mark.usefixtures("one_thread")


class Head(nn.Module):
    def __init__(self, data_dependent=False):
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 1)
        self.shape = None
        self.anchors = torch.empty(0)
        self.ready = False
        self.calls = 0
        self.seen = []
        self.by_device = {}
        self.data_dependent = data_dependent

    def forward(self, x):
        y = self.conv(x)
        if self.shape != y.shape:  # Ultralytics' Detect: rebuild the anchors when the shape changes
            self.anchors = torch.arange(y.shape[-1], dtype=y.dtype, device=y.device)
            self.shape = y.shape
        self.ready = True
        self.calls += 1
        self.seen.append(y.shape[-1])
        self.by_device.setdefault("cache", torch.zeros(1, device=y.device))
        if "lazy" not in self._buffers:
            self.register_buffer("lazy", torch.ones(1, device=y.device))
        if self.data_dependent and y.sum().item() > 1e9:  # cannot be decided on meta tensors
            y = y * 2
        return y + self.anchors + self.by_device["cache"] * self.lazy


class Net(nn.Module):
    def __init__(self, data_dependent=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.mid = nn.Conv2d(6, 8, 3, padding=1)
        self.head = Head(data_dependent)  # data_dependent: kept whole (opaque), run for real

    def forward(self, x):
        return self.head(torch.relu(self.mid(torch.relu(self.stem(x)))))


def state(model):
    """Every module's attributes, by identity (tensors compared as objects)."""
    out = {}
    for name, m in model.named_modules():
        for k, v in m.__dict__.items():
            if isinstance(v, (list, dict, set)):
                out[(name, k)] = (id(v), [(a, id(b)) for a, b in v.items()] if isinstance(v, dict)
                                  else [id(a) for a in v])
            else:
                out[(name, k)] = v if isinstance(v, (int, float, str, bool, type(None))) else id(v)
    return out


@pytest.mark.parametrize("data_dependent", [False, True], ids=["meta", "real-fallback"])
@pytest.mark.parametrize("step", ["build_graph", "count_ops", "prune_check"])
def test_analysis_leaves_no_trace(step, data_dependent):
    model = Net(data_dependent).eval()
    x = torch.randn(1, 3, 8, 8)
    before = state(model)
    if step == "build_graph":
        dp.build_graph(model, x)
    elif step == "count_ops":
        assert dp.count_ops(model, x).macs > 0
    else:
        graph = dp.build_graph(model, x)
        g = graph.group_of("stem")
        before = state(model)  # what the surgeon itself changes is checked below
        g.prune([0, 1])  # the surgeon runs the pruned model once to check it
    after = state(model)
    if step == "prune_check":  # surgery replaces tensors' data and width attributes only
        changed = {k for k in before if before[k] != after.get(k)}
        assert changed == {("stem", "out_channels"), ("mid", "in_channels")}, changed
        assert set(after) - set(before) <= {("", "_depgraph_prune_history")}
    else:
        assert after == before
    head = model.head
    assert head.shape is None and head.anchors.device.type == "cpu" and not head.ready
    assert head.calls == 0 and head.seen == [] and head.by_device == {} and "lazy" not in head._buffers
    assert model(x).shape == (1, 4, 8, 8)  # the real forward runs
    assert head.anchors.device.type == "cpu" and head.calls == 1


def test_dp_prune_then_forward():
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    model(x)  # a cache filled by a real run before pruning stays real
    anchors = model.head.anchors
    result = dp.prune(model, x, ratio=0.5)
    assert model.head.anchors is anchors and model.head.calls == 1
    assert result.after.macs < result.before.macs
    assert model(x).shape == (1, 4, 8, 8)


def test_side_effects_undone_restores_in_place_edits():
    model = Net()
    seen, cache = model.head.seen, model.head.by_device
    with side_effects_undone(model):
        model.head.seen.append(3)
        model.head.by_device["x"] = 1
        model.head.new_attr = 1
        model.head.conv = nn.Identity()
        model.training = False
    assert model.head.seen is seen and seen == [] and cache == {} and model.head.by_device is cache
    assert not hasattr(model.head, "new_attr") and isinstance(model.head.conv, nn.Conv2d) and model.training


def test_a_layer_that_only_adds_a_constructor_to_an_inert_one_is_skipped_and_others_restored():
    """Snapshots skip torch.nn's plain layers and subclasses that only add an ``__init__`` to one
    (torchvision's ``Conv2dNormActivation``); a subclass with a forward of its own is restored."""
    from depgraph_prune._isolation import _inert, snapshot

    class Block(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv2d(3, 3, 1), nn.ReLU())

    class Writes(nn.Sequential):
        def forward(self, x):
            self.seen = tuple(x.shape)
            return super().forward(x)

    assert _inert(Block) and _inert(nn.Sequential) and not _inert(Writes)
    m = nn.Sequential(Block(), Writes(nn.ReLU()))
    assert [s[0] for s in snapshot(m)] == [m[1]]  # the root is a plain Sequential too
    with side_effects_undone(m):
        m(torch.randn(1, 3, 4, 4))
        assert m[1].seen == (1, 3, 4, 4)
    assert not hasattr(m[1], "seen")
