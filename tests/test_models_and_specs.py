"""Reference models (CIFAR ResNet, MLP-7-Linear, digits CNN) and the published ratio-spec formats.

The speedup checks reproduce the numbers of the GReg / TPP papers analytically: MACs of every conv
and linear layer (``k_h * k_w * C_in / groups * C_out * H_out * W_out``, linear ``in * out``) with
the pruned layers' output channels and their consumers' input channels reduced by
``min(ceil(r * N), N - 1)``; no surgery involved.
"""

import math
import pickle

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from depgraph_prune.models import cifar_resnet, digits_cnn, mlp7_linear
from depgraph_prune.specs import (
    layer_ranges,
    match_ratio,
    name_patterns,
    prunable_layer_names,
    resnet_stages,
    validate_ratios,
)


# ----------------------------------------------------------------------------------- helpers
def _tv(name):
    """A torchvision model on the meta device: no weight init (fast); shapes still propagate."""
    with torch.device("meta"):
        return getattr(torchvision.models, name)()


def _layer_shapes(model, example):
    """{name: (module, output spatial numel)} for every conv / linear layer, from one forward."""
    out = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, outp, name=name):
                out[name] = (mod, outp[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(example.to(next(model.parameters()).device))
    for h in hooks:
        h.remove()
    return out


def _n_pruned(r, n):
    return min(math.ceil(r * n), n - 1) if r > 0 else 0


def _consumer(name):
    """The conv fed by a block's ``convK``: ``convK+1`` of the same block (ResNet blocks)."""
    head, last = name.rsplit(".", 1)
    assert last.startswith("conv"), name
    return f"{head}.conv{int(last[4:]) + 1}"


def _macs(shapes, ratio_of=lambda name: 0.0):
    """Conv + linear MACs with each layer's out channels cut by ratio_of(name), consumers' in too."""
    out_keep = {}
    for name, (m, _) in shapes.items():
        n_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        out_keep[name] = n_out - _n_pruned(ratio_of(name), n_out)
    in_keep = {}
    for name, keep in out_keep.items():
        m = shapes[name][0]
        n_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        if keep != n_out:
            in_keep[_consumer(name)] = keep
    total = 0
    for name, (m, hw) in shapes.items():
        if isinstance(m, nn.Conv2d):
            cin = in_keep.get(name, m.in_channels)
            kh, kw = m.kernel_size
            total += kh * kw * (cin // m.groups) * out_keep[name] * hw
        else:
            total += in_keep.get(name, m.in_features) * out_keep[name]
    return total


def _speedup(shapes, ratios):
    return _macs(shapes) / _macs(shapes, lambda n: match_ratio(n, ratios, 0.0))


@pytest.fixture(scope="module")
def r56_shapes():
    return _layer_shapes(cifar_resnet(56), torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def resnet50():
    return _tv("resnet50")


@pytest.fixture(scope="module")
def r50_shapes(resnet50):
    return _layer_shapes(resnet50, torch.zeros(1, 3, 224, 224))


# ------------------------------------------------------------------------------------ models
def test_cifar_resnet56_size_and_macs():
    net = cifar_resnet(56).eval()
    params = sum(p.numel() for p in net.parameters())
    assert abs(params / 0.85e6 - 1) < 0.02, params
    with FlopCounterMode(display=False) as fc:
        y = net(torch.zeros(1, 3, 32, 32))
    assert y.shape == (1, 10)
    macs = fc.get_total_flops() / 2
    assert abs(macs / 0.125e9 - 1) < 0.02, macs
    # the analytic count used by the speedup tests agrees with the FLOP counter
    assert _macs(_layer_shapes(net, torch.zeros(1, 3, 32, 32))) == macs


def test_cifar_resnet_structure_and_names():
    net = cifar_resnet(56)
    names = dict(net.named_modules())
    for key in ["conv1", "bn1", "layer1", "layer2", "layer3", "fc",
                "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
                "layer2.0.downsample", "layer3.0.downsample", "layer3.8.conv2"]:
        assert key in names, key
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 9
    assert "layer1.0.downsample" not in names and "layer3.9" not in names
    assert net.conv1.in_channels == 3 and net.conv1.out_channels == 16
    assert [net.layer1[0].conv1.out_channels, net.layer2[0].conv1.out_channels,
            net.layer3[0].conv1.out_channels] == [16, 32, 64]
    assert net.fc.in_features == 64
    # 55 convs + fc = 56 weighted layers, no conv in the (option A) shortcut
    assert len(prunable_layer_names(net)) == 56
    assert sum(p.numel() for p in cifar_resnet(20).parameters()) == pytest.approx(0.27e6, rel=0.02)
    assert sum(p.numel() for p in cifar_resnet(110).parameters()) == pytest.approx(1.7e6, rel=0.02)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(51)


def test_cifar_resnet_shortcut_b_and_serialization():
    net_b = cifar_resnet(20, num_classes=100, shortcut="B")
    assert isinstance(net_b.layer2[0].downsample[0], nn.Conv2d)
    assert net_b(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError):
        cifar_resnet(20, shortcut="C")
    net = cifar_resnet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x), net(x))
    gm = torch.fx.symbolic_trace(net)
    torch.testing.assert_close(gm(x), net(x))


def test_pad_shortcut_matches_reference_lambda():
    net = cifar_resnet(20)
    x = torch.randn(2, 16, 32, 32)
    ref = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 32 // 4, 32 // 4), "constant", 0)
    torch.testing.assert_close(net.layer2[0].downsample(x), ref)


def test_mlp7_linear():
    net = mlp7_linear()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 100)] + [(100, 100)] * 5 + [(100, 10)]
    assert all(m.bias is not None for m in linears)
    assert not any(isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU)) for m in net.modules())
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(net(x), net(x.flatten(1)))
    # no activations: the network is one affine map
    w = linears[0].weight
    b = linears[0].bias
    for m in linears[1:]:
        b = m.weight @ b + m.bias
        w = m.weight @ w
    torch.testing.assert_close(net(x), x.flatten(1) @ w.T + b, rtol=1e-4, atol=1e-4)
    assert mlp7_linear(784, 50, 5)(torch.zeros(2, 784)).shape == (2, 5)


def test_digits_cnn():
    net = digits_cnn().eval()
    assert net(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    assert net(torch.zeros(4, 1, 16, 16)).shape == (4, 10)
    assert prunable_layer_names(net) == ["conv1", "conv2", "conv3", "fc"]
    gm = torch.fx.symbolic_trace(net)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(gm(x), net(x))


# --------------------------------------------------------------------- published speedups
# Speedups of the TPP appendix (Tab. "w/ Taylor-FO pruned indices"), which the ALGORITHMS.md
# brief quotes. The GReg/TPP main tables print 11.41x / 19.31x at 0.9 / 0.95 (see the report).
R56_PUBLISHED = {0.3: 1.452, 0.5: 1.993, 0.7: 3.593, 0.9: 11.58, 0.95: 19.85}


@pytest.mark.parametrize("ratio", sorted(R56_PUBLISHED))
def test_resnet56_block_conv1_speedups(r56_shapes, ratio):
    ratios = name_patterns(f"*layer*.conv1:{ratio}")
    # the pattern selects exactly the 27 blocks' first convs, the same set as the stage list
    selected = [n for n in r56_shapes if match_ratio(n, ratios, 0.0) > 0]
    assert len(selected) == 27 and all(n.endswith(".conv1") and n.startswith("layer") for n in selected)
    stage = resnet_stages(cifar_resnet(56), [0, ratio, ratio, ratio])
    assert stage == {n: ratio for n in selected}
    got = _speedup(r56_shapes, ratios)
    assert got == pytest.approx(R56_PUBLISHED[ratio], rel=0.01)


R50_PUBLISHED = [
    ([0, .30, .30, .30, .14], 1.49),
    ([0, .60, .60, .60, .21], 2.31),
    ([0, .74, .74, .60, .21], 2.56),
    ([0, .68, .68, .68, .50], 3.06),
]


@pytest.mark.parametrize("stages,published", R50_PUBLISHED)
def test_resnet50_stage_specs(resnet50, r50_shapes, stages, published):
    ratios = resnet_stages(resnet50, stages)
    # every bottleneck's conv1 and conv2, 16 blocks x 2; nothing else
    assert len(ratios) == 32
    blocks = [f"layer{s}.{b}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
    assert list(ratios) == [f"{blk}.conv{k}" for blk in blocks for k in (1, 2)]
    for name, r in ratios.items():
        assert r == stages[int(name[5])], name
    assert not any("downsample" in n or n.endswith("conv3") or n in ("conv1", "fc") for n in ratios)
    assert _speedup(r50_shapes, ratios) == pytest.approx(published, rel=0.02)


def test_resnet50_trailing_classifier_entry_and_stem(resnet50):
    # TPP prints the lists with one more (classifier) entry: [0, .3, .3, .3, .14, 0]
    assert resnet_stages(resnet50, [0, .3, .3, .3, .14, 0]) == resnet_stages(resnet50, [0, .3, .3, .3, .14])
    with pytest.raises(ValueError, match="classifier"):
        resnet_stages(resnet50, [0, .3, .3, .3, .14, .5])
    with_stem = resnet_stages(resnet50, [.25, 0, 0, 0, 0])
    assert with_stem == {"conv1": 0.25}


def test_resnet34_skip_layers():
    net = _tv("resnet34")
    skip = ["layer1.0", "layer2.0", "layer2.3", "layer3.0", "layer3.5"]
    ratios = resnet_stages(net, [0, .5, .6, .4, 0], skip=skip)
    # BasicBlock: conv1 only; (3 + 4 + 6) blocks in the pruned stages, 5 skipped
    assert len(ratios) == 3 + 4 + 6 - 5
    assert not any(n.startswith(tuple(s + "." for s in skip)) for n in ratios)
    assert all(n.endswith(".conv1") for n in ratios)
    assert ratios["layer1.1.conv1"] == 0.5 and ratios["layer2.1.conv1"] == 0.6 and ratios["layer3.4.conv1"] == 0.4
    shapes = _layer_shapes(net, torch.zeros(1, 3, 224, 224))
    assert _speedup(shapes, ratios) == pytest.approx(1.32, rel=0.02)


def test_resnet_stages_other_torchvision_resnets():
    r18 = resnet_stages(_tv("resnet18"), [0, .5, .5, .5, .5])
    assert list(r18) == [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    r101 = resnet_stages(_tv("resnet101"), [0, .1, .2, .3, .4])
    assert len(r101) == 2 * (3 + 4 + 23 + 3)
    assert r101["layer3.22.conv2"] == 0.3 and "layer3.22.conv3" not in r101


def test_resnet_stages_errors():
    net = cifar_resnet(20)
    with pytest.raises(ValueError, match="4 entries"):
        resnet_stages(net, [0, .5, .5, .5, .5, .5])
    with pytest.raises(ValueError, match="layer2"):
        resnet_stages(net, [0, .5, 1.0, .5])
    with pytest.raises(ValueError, match="stem"):
        resnet_stages(net, [-0.1, .5, .5, .5])
    with pytest.raises(ValueError, match="layer9.0"):
        resnet_stages(net, [0, .5, .5, .5], skip=["layer9.0"])
    with pytest.raises(ValueError, match="no top-level"):
        resnet_stages(mlp7_linear(), [0, .5])
    # skip by block or by conv name
    assert "layer1.1.conv1" not in resnet_stages(net, [0, .5, .5, .5], skip=["layer1.1.conv1"])


# ------------------------------------------------------------------------------ layer ranges
@pytest.fixture(scope="module")
def vgg16_bn():
    return _tv("vgg16_bn")


def test_layer_ranges_vgg16_bn(vgg16_bn):
    net = vgg16_bn
    names = prunable_layer_names(net)
    assert len(names) == 16 and names[:2] == ["features.0", "features.3"]
    assert names[12] == "features.40" and names[13:] == ["classifier.0", "classifier.3", "classifier.6"]
    ratios = layer_ranges(net, "[0:0, 1-9:0.3, 10-12:0.5]")
    assert list(ratios) == names[1:13]
    assert [ratios[n] for n in names[1:10]] == [0.3] * 9
    assert [ratios[n] for n in names[10:13]] == [0.5] * 3
    # brackets optional, whitespace free-form, later entries win, unlisted layers are 0
    assert layer_ranges(net, "0-15:0.2 ,13 - 15 : 0") == {n: 0.2 for n in names[:13]}
    assert layer_ranges(net, "[3:0.1]") == {names[3]: 0.1}
    assert layer_ranges(net, "[]") == {}


def test_layer_ranges_exclude_and_all_conv_kinds():
    # the GReg code does not count ResNet downsample convs; exclude reproduces that indexing
    net = _tv("resnet18")
    assert len(prunable_layer_names(net)) == 21
    assert len(prunable_layer_names(net, exclude=["*downsample*"])) == 18
    assert layer_ranges(net, "[7:0.5]", exclude=["*downsample*"]) == {"layer2.1.conv1": 0.5}
    assert layer_ranges(net, "[7:0.5]") == {"layer2.0.downsample.0": 0.5}
    seq = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ConvTranspose2d(4, 4, 2), nn.Conv3d(4, 4, 1), nn.Linear(4, 2))
    assert list(layer_ranges(seq, "[0-3:0.5]")) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("spec,bad", [
    ("[0:0, 1-9:0.3, x:0.5]", "'x'"),
    ("[0:0, 1-9=0.3]", "'1-9=0.3'"),
    ("[0:0, 1-9:abc]", "'abc'"),
    ("[0:0, 9-1:0.3]", "'9-1'"),
    ("[0:0, 1:2:0.3]", "'1:2:0.3'"),
    ("[0:0,, 1:0.3]", "empty entry"),
    ("[0:0, 1:0.3", "unbalanced"),
    ("[0:0, 1-3:1.0]", "'1-3:1.0'"),
    ("[0:0, 1-3:-0.2]", "'1-3:-0.2'"),
    ("[-1:0.3]", "'-1'"),
])
def test_layer_ranges_malformed(spec, bad):
    with pytest.raises(ValueError, match=bad.replace("[", "\\[")):
        layer_ranges(digits_cnn(), spec)


def test_layer_ranges_out_of_range(vgg16_bn):
    with pytest.raises(ValueError, match="out of range.*4 conv/linear layers"):
        layer_ranges(digits_cnn(), "[0:0, 2-4:0.5]")
    with pytest.raises(ValueError, match="'16:0.1'"):
        layer_ranges(vgg16_bn, "[16:0.1]")


# ----------------------------------------------------------------------------- name patterns
def test_name_patterns_and_match_ratio():
    spec = name_patterns("*layer*.conv1:0.9,*layer4*conv[1-2]:0.14")
    assert list(spec.items()) == [("*layer*.conv1", 0.9), ("*layer4*conv[1-2]", 0.14)]
    assert match_ratio("layer1.0.conv1", spec, 0.0) == 0.9
    assert match_ratio("layer4.1.conv1", spec, 0.0) == 0.14  # last match wins
    assert match_ratio("layer4.1.conv2", spec, 0.0) == 0.14
    assert match_ratio("layer4.1.conv3", spec, 0.0) == 0.0
    assert match_ratio("conv1", spec, 0.0) == 0.0
    assert match_ratio("fc", spec, 0.3) == 0.3
    # order matters: reversed, the general pattern overrides
    rev = name_patterns("*layer4*conv[1-2]:0.14, *layer*.conv1:0.9")
    assert match_ratio("layer4.1.conv1", rev, 0.0) == 0.9
    # exact names are patterns without wildcards; fnmatch is case-sensitive here
    assert match_ratio("layer1.0.conv1", {"layer1.0.conv1": 0.5, "layer1.0.conv": 0.1}) == 0.5
    assert match_ratio("Layer1.0.conv1", {"layer1.0.conv1": 0.5}) == 0.0
    # braces, quotes, semicolons and a trailing separator are tolerated; mappings are validated
    assert name_patterns("{'*conv1': 0.5; \"fc\": 0.1;}") == {"*conv1": 0.5, "fc": 0.1}
    assert name_patterns({"*conv1": 0}) == {"*conv1": 0.0}
    assert name_patterns("") == {}


@pytest.mark.parametrize("spec,bad", [
    ("*layer*.conv1=0.9", "'\\*layer\\*.conv1=0.9'"),
    ("*layer*.conv1:0.9, :0.3", "':0.3'"),
    ("*layer*.conv1:high", "'high'"),
    ("*layer*.conv1:1.5", "'\\*layer\\*.conv1'"),
    ("*layer[4.conv1:0.5", "unbalanced"),
    ("*conv1:0.5,,fc:0.1", "empty entry"),
])
def test_name_patterns_malformed(spec, bad):
    with pytest.raises(ValueError, match=bad):
        name_patterns(spec)


def test_ratio_validation_names_key():
    with pytest.raises(ValueError, match="'layer1.0.conv1'"):
        validate_ratios({"layer1.0.conv1": 1.0})
    with pytest.raises(ValueError, match="'fc'"):
        validate_ratios({"fc": float("nan")})
    with pytest.raises(ValueError, match="'fc'"):
        validate_ratios({"fc": True})
    with pytest.raises(ValueError, match="'\\*conv1'"):
        name_patterns({"*conv1": "0.5"})
    with pytest.raises(ValueError, match="'\\*conv\\*'"):
        match_ratio("layer1.0.conv1", {"*conv*": 2.0})
    with pytest.raises(ValueError, match="non-empty"):
        validate_ratios({"": 0.1})
