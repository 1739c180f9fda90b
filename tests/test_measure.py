import doctest
import types
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from depgraph_prune import measure
from depgraph_prune.measure import OpCount, count_ops, speedup

# ---------------------------------------------------------------------------
# Agreement with torchvision's published metadata (meta["_ops"] in GMACs, meta["num_params"])
# ---------------------------------------------------------------------------

CLASSIFICATION_MODELS = torchvision.models.list_models(module=torchvision.models)
# Cheap models for the default run. vit_b_16 matters most: nn.MultiheadAttention's eval/no_grad
# fast path is invisible to FlopCounterMode, and attention is ~4% of its MACs (over the 2% bound).
FAST_MODELS = ["resnet18", "mobilenet_v3_small", "squeezenet1_0", "shufflenet_v2_x0_5", "vit_b_16"]


def _build_as_default_weights(name: str):
    """Random-weight model with the architecture its DEFAULT weights are published for, plus
    those weights (for their metadata; nothing is downloaded) and the evaluation resolution."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    kwargs = {}
    # Mirror the builders' own overrides when weights are given, so the architecture matches:
    if name.startswith("vit_"):
        # the position embedding is sized for the weights' resolution (518 for SWAG vit_h_14)
        kwargs["image_size"] = weights.meta["min_size"][0]
    if name == "googlenet":
        # published googlenet drops its auxiliary heads (inception_v3 keeps them, the default)
        kwargs["aux_logits"] = False
    with warnings.catch_warnings():
        # googlenet / inception_v3 warn about a future change of their default init
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    # weights.transforms is a functools.partial of the preset; building it downloads nothing
    size = weights.transforms().crop_size[0]
    return model, weights, size


def _check_against_metadata(name: str) -> None:
    torch.manual_seed(0)
    model, weights, size = _build_as_default_weights(name)
    model.eval()
    x = torch.randn(1, 3, size, size)
    # eval + no_grad at the call site: the setting where MultiheadAttention would take its fast path
    with torch.no_grad():
        ops = count_ops(model, x)
    published = weights.meta["_ops"]
    rel = abs(ops.macs / 1e9 - published) / published
    assert rel <= 0.02, f"{name} @ {size}px: {ops.macs / 1e9:.3f} GMACs vs published {published} ({rel:.2%})"
    assert ops.params == weights.meta["num_params"], name


@pytest.mark.parametrize("name", FAST_MODELS)
def test_matches_torchvision_metadata_fast(name):
    _check_against_metadata(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_matches_torchvision_metadata_all(name):
    _check_against_metadata(name)


# ---------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------


def test_conv_macs():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    ops = count_ops(conv, torch.randn(1, 3, 10, 10))
    assert ops == OpCount(macs=8 * 3 * 9 * 100, params=8 * 3 * 9)


def test_linear_macs():
    ops = count_ops(nn.Linear(10, 5), torch.randn(2, 10))
    assert ops == OpCount(macs=2 * 10 * 5, params=10 * 5 + 5)


def test_shared_parameters_counted_once():
    lin = nn.Linear(10, 10)
    # the same module applied twice: MACs twice, parameters once
    ops = count_ops(nn.Sequential(lin, nn.ReLU(), lin), torch.randn(1, 10))
    assert ops == OpCount(macs=2 * 100, params=110)

    # weight tying across two distinct modules
    a, b = nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False)
    b.weight = a.weight
    ops = count_ops(nn.Sequential(a, b), torch.randn(1, 10))
    assert ops == OpCount(macs=2 * 100, params=100)


def test_model_without_parameters():
    class Gram(nn.Module):
        def forward(self, x):
            return x @ x.T

    assert count_ops(nn.ReLU(), torch.randn(4, 4)) == OpCount(macs=0, params=0)
    assert count_ops(Gram(), torch.randn(3, 7)) == OpCount(macs=3 * 7 * 3, params=0)


def test_multihead_attention_fast_path_is_counted():
    E, L, N = 16, 12, 2
    mha = nn.MultiheadAttention(E, num_heads=4, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    model, x = SelfAttention(), torch.randn(N, L, E)
    # in/out projections + Q@K^T + attn@V
    expected = 4 * N * L * E * E + 2 * N * L * L * E

    # Precondition that makes this test meaningful: a naive count under no_grad misses MACs.
    with torch.no_grad(), FlopCounterMode(display=False) as naive:
        model(x)
    assert naive.get_total_flops() // 2 < expected

    with torch.no_grad():
        assert count_ops(model, x).macs == expected
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored


def test_meta_device():
    # nothing is moved: a model and inputs on another device are measured where they are
    cpu = count_ops(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 10, 10))
    with torch.device("meta"):
        conv = nn.Conv2d(3, 8, 3)
    assert count_ops(conv, torch.randn(1, 3, 10, 10, device="meta")) == cpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)).eval()
    x = torch.randn(2, 10, 32)
    cpu = count_ops(model, x)
    with torch.no_grad():
        cuda = count_ops(model.cuda(), x.cuda())
    assert cuda == cpu
    assert all(p.device.type == "cuda" for p in model.parameters())


# ---------------------------------------------------------------------------
# Mode and state preservation
# ---------------------------------------------------------------------------


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_train_mode_and_state_preserved():
    model = _bn_net().train()
    model[4].eval()  # a deliberately mixed model: every module's own flag must come back
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}

    count_ops(model, torch.randn(4, 3, 16, 16))

    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # running stats and num_batches_tracked untouched
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_preserved():
    model = _bn_net().eval()
    count_ops(model, torch.randn(1, 3, 16, 16))
    assert not any(m.training for m in model.modules())


def test_mode_restored_when_forward_raises():
    model = _bn_net().train()
    with pytest.raises(RuntimeError):
        count_ops(model, torch.randn(1, 5, 16, 16))  # wrong channel count
    assert all(m.training for m in model.modules())


# ---------------------------------------------------------------------------
# Input conventions
# ---------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 5)
        self.b = nn.Linear(6, 5)

    def forward(self, x, y=None):
        out = self.a(x)
        return out if y is None else out + self.b(y)


def test_tuple_list_and_dict_inputs():
    model = TwoInputs()
    x, y = torch.randn(2, 10), torch.randn(2, 6)
    both = OpCount(macs=2 * 10 * 5 + 2 * 6 * 5, params=55 + 35)
    assert count_ops(model, (x, y)) == both
    assert count_ops(model, [x, y]) == both
    assert count_ops(model, {"x": x, "y": y}) == both
    assert count_ops(model, {"x": x}) == OpCount(macs=100, params=90)
    assert count_ops(model, x) == OpCount(macs=100, params=90)  # a bare tensor is one argument


# ---------------------------------------------------------------------------
# Formatting, speedup, docstring example
# ---------------------------------------------------------------------------


def test_str():
    assert str(OpCount(macs=4_089_184_256, params=25_557_032)) == "4.09 GMACs, 25.56 M params"
    assert str(OpCount(macs=12, params=0)) == "12 MACs, 0 params"


def test_speedup():
    assert speedup(OpCount(macs=400, params=10), OpCount(macs=100, params=3)) == 4.0
    with pytest.raises(ZeroDivisionError):
        speedup(OpCount(macs=400, params=10), OpCount(macs=0, params=0))


def test_docstring_examples():
    result = doctest.testmod(measure)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------
# Counting keeps no activations alive and sees attention op by op
# ---------------------------------------------------------------------------
class _SeesGradMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        # an object, not a list: counting runs on a detached copy of the model (so that what
        # forward stores on self stays off the model), which shares this log with the original
        self.log = types.SimpleNamespace(grad_modes=[], devices=[])

    def forward(self, x):
        self.log.grad_modes.append(torch.is_grad_enabled())
        self.log.devices.append(x.device.type)
        return self.fc(x)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > -1e9:  # needs real values: impossible on meta tensors
            return self.fc(x)
        return x


def test_count_runs_without_autograd_and_leaves_the_model_alone():
    model = _SeesGradMode()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ops = count_ops(model, torch.randn(3, 8))
    assert model.log.grad_modes == [False]  # no graph: activations are freed as the forward goes
    assert model.log.devices == ["meta"]  # shapes only: no compute, no activation memory
    assert ops.macs == 3 * 8 * 4
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_attention_fast_path_setting_is_restored():
    mha = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    for setting in (True, False):
        torch.backends.mha.set_fastpath_enabled(setting)
        try:
            ops = count_ops(mha, x)
            assert torch.backends.mha.get_fastpath_enabled() is setting
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        # q, k, v and output projections, the two attention matmuls, the feed-forward
        assert ops.macs == 2 * 5 * (4 * 16 * 16 + 2 * 5 * 16 + 2 * 16 * 32)


def test_data_dependent_forward_falls_back_to_a_real_count():
    assert count_ops(_DataDependent(), torch.randn(3, 8)).macs == 3 * 8 * 4


class _Attention(torch.nn.Module):
    """Attention through ``scaled_dot_product_attention`` without a mask: on the CPU it runs a
    flash kernel that torch's FLOP counter has no formula for."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv, self.heads = torch.nn.Linear(d, 3 * d, bias=False), heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)


def test_cpu_flash_attention_is_counted_and_agrees_with_the_graph():
    import depgraph_prune as dp
    m, x = _Attention().eval(), torch.randn(2, 10, 32)
    attention = 2 * 4 * (10 * 10 * 8) * 2  # batch * heads * (QK^T and AV, each t*t*head_dim)
    assert count_ops(m, x).macs == 2 * 10 * 32 * 96 + attention
    assert dp.build_graph(m, x)._ctx.macs == count_ops(m, x).macs
