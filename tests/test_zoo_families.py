"""Issue 3: one model of every torchvision family beyond CNNs, pruned in one call with random weights.

Pass: forward works, output structure unchanged, MACs down (>= 40% for ViT-B/16, >= 25% otherwise),
no channel frozen for lack of a rule, and widths read from attributes in ``forward`` updated.
The heavier members of each family run with ``-m slow``.
"""
import pytest
import torch
import torchvision

import depgraph_prune as dp


def structure(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: structure(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [structure(v) for v in out]
    return None


def prune_and_check(model, x, min_reduction=0.25, forward=None):
    forward = forward or (lambda: model(x))
    model.eval()
    with torch.no_grad():
        ref = structure(forward())
    graph = dp.build_graph(model, x)
    missing = [r for g in graph.groups for r in g.frozen_reasons if "no coupling rule" in r]
    assert not missing, missing[:3]
    result = dp.prune(model, x, ratio=0.5)
    with torch.no_grad():
        assert structure(forward()) == ref
    assert result.after.macs <= (1 - min_reduction) * result.before.macs, str(result)
    return result


pytestmark = pytest.mark.usefixtures("one_thread")


def test_vit_b_16_one_call_updates_hidden_dim_and_heads():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16()
    result = prune_and_check(model, torch.randn(1, 3, 224, 224), min_reduction=0.40)
    attn = model.encoder.layers[0].self_attention
    assert model.hidden_dim == attn.embed_dim == model.conv_proj.out_channels == 384
    assert attn.num_heads == 6 and attn.head_dim == 64  # whole heads went, head_dim kept
    assert model.class_token.shape[-1] == model.encoder.pos_embedding.shape[-1] == 384
    assert result.speedup > 1 / 0.6


def test_small_vit_with_attention_head_dim():
    # attention="head_dim": every head loses the same dims, num_heads stays; hidden_dim follows
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ref = model(x).shape
    result = dp.prune(model, x, ratio=0.5, attention="head_dim")
    attn = model.encoder.layers[0].self_attention
    assert (attn.num_heads, attn.head_dim) == (4, 4) and model.hidden_dim == attn.embed_dim == 16
    with torch.no_grad():
        assert model(x).shape == ref
    assert result.speedup > 1.5
    # keeping the residual stream (nn.MultiheadAttention's inner width is its embed_dim, so heads stay
    # too): only the MLP hidden widths go
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
    dp.prune(model, x, ratio=0.5, ignored_layers=["conv_proj"])
    attn = model.encoder.layers[0].self_attention
    assert (model.hidden_dim, attn.num_heads, attn.head_dim) == (32, 4, 8)
    assert model.encoder.layers[0].mlp[0].out_features == 32


@pytest.mark.parametrize("name,size", [("swin_t", 224), ("maxvit_t", 224)])
def test_windowed_attention_models(name, size):
    torch.manual_seed(0)
    prune_and_check(torchvision.models.get_model(name), torch.randn(1, 3, size, size))


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_returns_the_same_dict(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    prune_and_check(model, torch.randn(1, 3, 128, 128))


def test_detector_backbone_pruned_in_place_and_detector_still_runs():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).eval()
    images = [torch.rand(3, 256, 256)]
    prune_and_check(model.backbone, torch.randn(1, 3, 256, 256),
                    forward=lambda: [sorted(o) for o in model(images)])
    model.eval()
    with torch.no_grad():
        (out,) = model(images)
    assert set(out) == {"boxes", "labels", "scores"}


def test_whole_detector_gets_an_error_pointing_to_its_backbone():
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dp.TraceError, match=r"model\.backbone"):
        dp.prune(model, ([torch.rand(3, 128, 128)],), ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["r3d_18", "swin3d_t"])
def test_video_models(name):
    torch.manual_seed(0)
    prune_and_check(torchvision.models.get_model(name), torch.randn(1, 3, 8, 112, 112))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mvit_v1_b", "mvit_v2_s", "s3d", "mc3_18", "r2plus1d_18"])
def test_video_models_slow(name):
    shape = (1, 3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (1, 3, 8, 112, 112)
    prune_and_check(torchvision.models.get_model(name), torch.randn(*shape))


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("swin_v2_t", 256), ("swin_s", 224), ("vit_l_16", 224), ("maxvit_t", 224)])
def test_transformers_slow(name, size):
    prune_and_check(torchvision.models.get_model(name), torch.randn(1, 3, size, size))


def test_frozen_widths_are_reported():
    model = torchvision.models.swin_t()
    result = dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
    text = str(result)
    assert any("relative positions" in reason for _, _, reason in result.frozen)
    assert "frozen" in text
