"""Issue 17: plans a user would accept. Every layer shrinks by the ratio (the producers of a
concatenation included), channels of different layers compete on fair scores, and no layer
drops below its floor in global and target modes."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import depgraph_prune as dp
from depgraph_prune.models import cifar_resnet

sys.path.insert(0, os.path.dirname(__file__))
from gallery.models import C2f, UNet, YoloV5Tiny, YoloV8Backbone  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Cat(nn.Module):
    """The issue's example: a 1x1 and a 7x7 producer concatenated, read by one consumer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(3, 32, 7, padding=3)
        self.c = nn.Conv2d(64, 8, 1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))


X16 = torch.randn(1, 3, 16, 16)


def conv_widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def assert_every_layer_keeps(model, x, at_least, **kw):
    """Prune and check every conv's output width directly on the modules (not on the report)."""
    before = conv_widths(model)
    result = dp.prune(model, x, **kw)
    after = conv_widths(model)
    thin = {n: (before[n], after[n]) for n in before if after[n] < at_least * before[n]}
    assert not thin, thin
    assert any(after[n] < before[n] for n in before)
    return before, after, result


# ---------------------------------------------------------------------------------- local mode
def test_cat_example_prunes_each_producer_by_the_ratio():
    torch.manual_seed(0)
    model = Cat()
    result = dp.prune(model, X16, ratio=0.5)
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (16, 16, 32)
    assert sorted(result.layers) == [("a", 32, 16), ("b", 32, 16)]
    assert result.min_kept == (0.5, "a")
    assert model(X16).shape == (1, 8, 16, 16)


def test_parts_follow_the_producers():
    graph = dp.build_graph(Cat(), X16)
    g = graph.group_of("a")
    assert g is graph.group_of("b")
    assert [p.tolist() for p in g.parts] == [list(range(32)), list(range(32, 64))]
    import torchvision
    dense = dp.build_graph(torchvision.models.densenet121(), torch.randn(1, 3, 32, 32))
    block1 = dense.group_of("features.conv0")
    assert [len(p) for p in block1.parts] == [64] + [32] * 6  # stem + six dense layers


def test_within_a_part_the_lowest_scores_go():
    # a's channel j has magnitude j+1, b's channel j has 100*(64-j): each part loses its own weakest
    model = Cat()
    with torch.no_grad():
        for j in range(32):
            model.a.weight[j].fill_(j + 1.0)
            model.b.weight[j].fill_(100.0 * (64 - j))
        model.a.bias.zero_()
        model.b.bias.zero_()
        model.c.weight.fill_(0.01)
    dp.prune(model, X16, ratio=0.25)
    assert model.a.weight[:, 0, 0, 0].tolist() == [float(j + 1) for j in range(8, 32)]
    assert model.b.weight[:, 0, 0, 0].tolist() == [100.0 * (64 - j) for j in range(24)]


def test_per_layer_ratios_inside_a_concatenation():
    model = Cat()
    dp.prune(model, X16, ratios={"b": 0.5})
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (32, 16, 48)
    model = Cat()
    dp.prune(model, X16, ratio=0.25, ratios={"a": 0.75})
    assert (model.a.out_channels, model.b.out_channels) == (8, 24)


def test_round_to_holds_for_each_producer():
    model = Cat()
    dp.prune(model, X16, ratio=0.3, round_to=8)
    assert (model.a.out_channels, model.b.out_channels) == (24, 24)


@pytest.mark.parametrize("build,x", [
    (lambda: UNet(base=8), torch.randn(1, 3, 32, 32)),
    (lambda: YoloV8Backbone(), torch.randn(1, 3, 64, 64)),
    (lambda: YoloV5Tiny(), torch.randn(1, 3, 64, 64)),        # C3 blocks and SPPF
    (lambda: nn.Sequential(C2f(32, 64, n=2), C2f(64, 64, n=1, shortcut=True)), torch.randn(1, 32, 16, 16)),
], ids=["unet", "yolov8-c2f", "yolov5-sppf", "c2f-stack"])
def test_concatenating_models_keep_every_layer_at_40_percent(build, x):
    torch.manual_seed(0)
    model = build().eval()
    shapes = lambda out: [tuple(o.shape) for o in out] if isinstance(out, (list, tuple)) else tuple(out.shape)  # noqa: E731
    with torch.no_grad():
        shape = shapes(model(x))
    before, after, result = assert_every_layer_keeps(model, x, 0.4, ratio=0.5)
    with torch.no_grad():
        assert shapes(model(x)) == shape
    assert result.min_kept[0] >= 0.4
    assert not [n for n in result.notes if n.startswith("warning")]


def test_coarse_groups_round_to_the_nearest_block_count():
    # ShuffleNet's stage-2 stream is 3 blocks of 8 channels: half of it is 1 block, not 2
    import torchvision
    model = torchvision.models.shufflenet_v2_x0_5()
    x = torch.randn(1, 3, 64, 64)
    g = dp.build_graph(model, x).group_of("stage2.0.branch1.2")
    assert (g.size, g.unit) == (3, 8)
    assert dp.plan.n_to_prune(g, 0.5) == 1 and dp.plan.n_to_prune(g, 0.6) == 2
    dp.prune(model, x, ratio=0.5)
    assert model.stage2[0].branch1[2].out_channels == 16


# ----------------------------------------------------------------------------------- fair scores
def _equal_magnitude_cat(seed=0):
    """Cat whose a-filter j and b-filter j have the same per-weight magnitude m_j (random signs),
    read by consumer columns of that magnitude too; biases zero."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(32, generator=g) + 0.1
    model = Cat()
    sign = lambda t: torch.where(torch.rand(t.shape, generator=g) < 0.5, -1.0, 1.0)  # noqa: E731
    with torch.no_grad():
        model.a.weight.copy_(sign(model.a.weight) * m.view(32, 1, 1, 1))
        model.b.weight.copy_(sign(model.b.weight) * m.view(32, 1, 1, 1))
        model.a.bias.zero_()
        model.b.bias.zero_()
        model.c.weight.copy_(sign(model.c.weight) * torch.cat([m, m]).view(1, 64, 1, 1))
    return model, m


def test_fair_scores_rank_a_1x1_and_a_7x7_producer_as_equals():
    model, m = _equal_magnitude_cat()
    g = dp.build_graph(model, X16).group_of("a")
    raw = dp.importance.resolve("l1")(g).numpy()
    assert raw[:32].max() < raw[32:].min()          # raw L1: every 1x1 filter below every 7x7 one
    fair = dp.plan.fair_scores(g, raw)
    np.testing.assert_allclose(fair[:32], fair[32:], rtol=1e-12)
    np.testing.assert_allclose(fair[:32], (m / m.mean()).double().numpy(), rtol=1e-6)
    for p in g.parts:
        assert fair[p].mean() == pytest.approx(1.0)


def test_group_wide_ranking_uses_fair_scores():
    model, m = _equal_magnitude_cat()
    dp.prune(model, X16, ratio=0.5, per_layer=False)
    assert (model.a.out_channels, model.b.out_channels) == (16, 16)
    # the same 16 magnitudes survive in both
    keep = sorted(torch.topk(m, 16).values.tolist())
    assert sorted(model.a.weight.abs()[:, 0, 0, 0].tolist()) == pytest.approx(keep)
    assert sorted(model.b.weight.abs()[:, 0, 0, 0].tolist()) == pytest.approx(keep)


def _mostly_dead_a():
    model = Cat()
    with torch.no_grad():
        model.a.weight.mul_(1e-3)
        model.a.weight[:2].fill_(1.0)
        model.b.weight.fill_(0.05)
        model.a.bias.zero_()
        model.b.bias.zero_()
        model.c.weight.fill_(1e-4)
    return model


def test_group_wide_ranking_keeps_the_floor():
    # b's filters are all alike, a's are mostly dead: group-wide ranking takes most of a,
    # but never below ceil((1 - max_ratio) * 32)
    model = _mostly_dead_a()
    dp.prune(model, X16, ratio=0.5, per_layer=False)
    assert (model.a.out_channels, model.b.out_channels) == (math.ceil(0.1 * 32), 64 - 32 - math.ceil(0.1 * 32))
    model = _mostly_dead_a()
    dp.prune(model, X16, ratio=0.5, per_layer=False, max_ratio=0.6)
    assert model.a.out_channels == math.ceil(0.4 * 32)
    model = _mostly_dead_a()
    dp.prune(model, X16, ratio=0.5)  # per layer (default): the skew does not matter
    assert (model.a.out_channels, model.b.out_channels) == (16, 16)


# ------------------------------------------------------------------------- global / target floors
class TwoLayers(nn.Module):
    """A skewed layer (most filters near zero) next to a uniform one, in separate groups."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 40, 3, padding=1), nn.Conv2d(3, 40, 3, padding=1)
        self.ha, self.hb = nn.Conv2d(40, 4, 1), nn.Conv2d(40, 4, 1)
        with torch.no_grad():
            self.a.weight.mul_(1e-3)
            self.a.weight[:3].fill_(1.0)
            self.b.weight.copy_(0.2 + 0.01 * torch.rand_like(self.b.weight))

    def forward(self, x):
        return self.ha(self.a(x)) + self.hb(self.b(x))


def test_global_ranking_never_goes_below_the_floor():
    torch.manual_seed(0)
    model = TwoLayers()
    result = dp.prune(model, X16, ratio=0.5, global_ranking=True)
    assert model.a.out_channels == math.ceil(0.1 * 40)     # the floor binds
    assert model.a.out_channels + model.b.out_channels == 40
    warn = [n for n in result.notes if n.startswith("warning")]
    assert len(warn) == 1 and "`a` (40 -> 4)" in warn[0] and "warning" in str(result)


def test_global_ranking_floor_on_resnet18():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 64, 64)
    before = conv_widths(model)
    result = dp.prune(model, x, ratio=0.75, global_ranking=True)
    after = conv_widths(model)
    for n, w in before.items():
        assert after[n] >= math.ceil(0.1 * w), (n, w, after[n])
    assert result.layers and all(w1 >= math.ceil(0.1 * w0) for _, w0, w1 in result.layers)


def test_target_speedup_keeps_every_layer_above_its_floor():
    torch.manual_seed(0)
    model = cifar_resnet(20)
    x = torch.randn(1, 3, 32, 32)
    before = conv_widths(model)
    result = dp.prune(model, x, target_speedup=6.0)
    # option-A shortcuts freeze the residual streams: only the blocks' first convs shrink, and
    # 6x is only just reachable; the floor binds, so the search lands a little short
    assert result.speedup == pytest.approx(6.0, rel=0.05)
    after = conv_widths(model)
    for n, w in before.items():
        assert after[n] >= math.ceil(0.1 * w), (n, w, after[n])
    assert any(after[n] == math.ceil(0.1 * w) for n, w in before.items() if after[n] < w)


def test_unreachable_target_names_max_ratio():
    model = Cat()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dp.PruningError, match="max_ratio"):
        dp.prune(model, X16, target_speedup=10.0)   # each conv keeps >= 4 of 32: at most 8x
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    r = dp.prune(Cat(), X16, target_speedup=10.0, max_ratio=0.95)
    assert r.speedup == pytest.approx(10.0, rel=0.1)


def test_per_layer_argument_is_checked():
    with pytest.raises(dp.PruningError, match="per_layer"):
        dp.prune(Cat(), X16, per_layer="yes")


def test_cli_reports_layers_and_takes_group_wide(capsys):
    import json

    from depgraph_prune import cli
    argv = ["prune", "--model", "googlenet", "--input-shape", "1,3,64,64", "--ratio", "0.5", "--json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["min_kept"]["fraction"] == 0.5
    assert all(r["after"] >= 0.4 * r["before"] for r in report["layers"])
    assert cli.main(argv + ["--group-wide"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["min_kept"]["fraction"] >= 0.1 - 1e-9    # the max_ratio floor
    assert any(r["after"] != r["before"] // 2 for r in wide["layers"])  # ranked across producers
