"""One call prunes torchvision CNNs: forward works, output shape unchanged, MACs down >= 40%,
and every conv / linear layer keeps at least 40% of its output channels at ratio 0.5 (issue 17:
the producers of a concatenation shrink by the ratio like every other layer, none collapses).

A fast subset runs by default (reduced resolution); the whole CNN list runs with ``-m slow``.
"""
import pytest
import torch
import torchvision

import depgraph_prune as dp

FAST = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121",
        "googlenet", "convnext_tiny", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5", "alexnet",
        "resnext50_32x4d", "inception_v3"]
CNNS = ["alexnet", "vgg11", "vgg11_bn", "vgg16_bn", "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101",
        "resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
        "wide_resnet101_2", "densenet121", "densenet161", "densenet169", "densenet201", "squeezenet1_0",
        "squeezenet1_1", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
        "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "efficientnet_b0", "efficientnet_b1",
        "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
        "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
        "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf",
        "regnet_x_32gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf",
        "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "convnext_tiny", "convnext_small", "convnext_base",
        "convnext_large"]


def _check(name, size, train=False):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    model.train(train)
    x = torch.randn(2 if train else 1, 3, size, size)
    with torch.no_grad():
        before = model.eval()(x).shape
    model.train(train)
    widths = lambda: {n: getattr(m, "out_channels", getattr(m, "out_features", None))  # noqa: E731
                      for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    w0 = widths()
    result = dp.prune(model, x, ratio=0.5)
    w1 = widths()
    assert model.training == train
    with torch.no_grad():
        assert model.eval()(x).shape == before
    assert result.after.macs <= 0.6 * result.before.macs, str(result)
    assert result.layers, "no layer was reported as pruned"
    frac, layer = result.min_kept
    assert frac >= 0.4, f"{name}: `{layer}` keeps {frac:.0%} of its channels at ratio 0.5"
    assert frac == min(a / b for _, b, a in result.layers)
    # the same, read off the modules themselves
    thin = {n: (w0[n], w1[n]) for n in w0 if w1[n] < 0.4 * w0[n]}
    assert not thin, f"{name}: layers below 40% of their width: {thin}"
    assert frac == pytest.approx(min(w1[n] / w0[n] for n in w0 if w1[n] != w0[n]))
    assert result.after.params < result.before.params
    return model, x


@pytest.mark.parametrize("name", FAST)
def test_zoo_fast(name):
    _check(name, 80 if name == "inception_v3" else 96)


def test_training_only_branches_stay_consistent():
    # GoogLeNet's auxiliary classifiers run only in training mode: their inputs shrink too,
    # and their outputs (like the main one) keep 1000 classes.
    model, x = _check("googlenet", 96, train=True)
    model.train()
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 1000)] * 3


@pytest.mark.slow
@pytest.mark.parametrize("name", CNNS)
def test_zoo_all_cnns(name):
    size = 299 if name == "inception_v3" else 224
    _check(name, size)
