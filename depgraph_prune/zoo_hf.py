"""Small random-initialized Hugging Face models (transformers, diffusers) for the coverage sweep.

Each entry builds a tiny config of a real architecture (hidden sizes of 32-64, 1-2 layers, no hub
download) and the example inputs the documented call takes, e.g.
``dp.prune(model, {"input_ids": ids}, ratio=0.5)``. transformers/diffusers are imported inside
the builders only: the package itself never needs them.

    >>> from depgraph_prune.zoo_hf import MODELS
    >>> len(MODELS)
    36
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .zoo import structure

VOCAB, HIDDEN, FFN, HEADS, KV, LAYERS, SEQ = 128, 64, 128, 4, 2, 2, 8


@dataclass(frozen=True)
class HFModel:
    name: str
    family: str  # decoder, encoder, encoder-decoder, vision, audio, diffusers
    build: Callable[[], tuple[torch.nn.Module, Any]]


def _ids(n=SEQ, vocab=VOCAB):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (1, n), generator=g)


def _causal(config_cls: str, **kw):
    def build():
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**kw)
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        return model, {"input_ids": _ids()}
    return build


_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                   num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64)


def _encoder(config_cls: str, model_cls: str, **kw):
    def build():
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**kw)
        model = getattr(transformers, model_cls)(cfg).eval()
        ids = _ids()
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return build


_BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, max_position_embeddings=64)


def _seq2seq(config_cls: str, model_cls: str, **kw):
    def build():
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**kw)
        model = getattr(transformers, model_cls)(cfg).eval()
        return model, {"input_ids": _ids(), "decoder_input_ids": _ids(4)}
    return build


def _pixels(config_cls: str, model_cls: str, size=32, **kw):
    def build():
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**kw)
        model = getattr(transformers, model_cls)(cfg).eval()
        return model, {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))}
    return build


def _clip():
    import transformers
    torch.manual_seed(0)
    text = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, max_position_embeddings=16)
    vision = dict(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  image_size=32, patch_size=8)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    model = transformers.CLIPModel(cfg).eval()
    return model, {"input_ids": _ids(), "pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def _whisper():
    import transformers
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                                     encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                     encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, num_mel_bins=16,
                                     max_source_positions=16, max_target_positions=16,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = transformers.WhisperModel(cfg).get_encoder().eval()
    return model, {"input_features": torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))}


def _wav2vec2():
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = transformers.Wav2Vec2Model(cfg).eval()
    return model, {"input_values": torch.randn(1, 800, generator=torch.Generator().manual_seed(0))}


def _unet2d():
    import diffusers
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                  block_out_channels=(32, 64), norm_num_groups=8,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    return model, {"sample": torch.randn(1, 3, 16, 16), "timestep": torch.tensor([10])}


def _unet2d_cond():
    import diffusers
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                           block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                           attention_head_dim=8,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    return model, {"sample": torch.randn(1, 4, 16, 16), "timestep": torch.tensor([10]),
                   "encoder_hidden_states": torch.randn(1, 6, 32)}


def _vae():
    import diffusers
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64), norm_num_groups=8,
                                    down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16).eval()
    return model, {"sample": torch.randn(1, 3, 16, 16)}


MODELS: list[HFModel] = [
    # decoder LMs
    HFModel("gpt2", "decoder", _causal("GPT2Config", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                       n_positions=64)),
    HFModel("gpt_neox", "decoder", _causal("GPTNeoXConfig", vocab_size=VOCAB, hidden_size=HIDDEN,
                                           intermediate_size=FFN, num_hidden_layers=LAYERS,
                                           num_attention_heads=HEADS, max_position_embeddings=64)),
    HFModel("opt", "decoder", _causal("OPTConfig", vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=FFN,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN,
                                      max_position_embeddings=64)),
    HFModel("llama", "decoder", _causal("LlamaConfig", **_LLAMA_LIKE)),
    HFModel("mistral", "decoder", _causal("MistralConfig", **_LLAMA_LIKE)),
    HFModel("qwen2", "decoder", _causal("Qwen2Config", **_LLAMA_LIKE)),
    HFModel("qwen3", "decoder", _causal("Qwen3Config", head_dim=16, **_LLAMA_LIKE)),
    HFModel("gemma", "decoder", _causal("GemmaConfig", head_dim=16, **_LLAMA_LIKE)),
    HFModel("gemma2", "decoder", _causal("Gemma2Config", head_dim=16, **_LLAMA_LIKE)),
    HFModel("phi", "decoder", _causal("PhiConfig", **_LLAMA_LIKE)),
    HFModel("phi3", "decoder", _causal("Phi3Config", pad_token_id=0, **_LLAMA_LIKE)),
    HFModel("falcon", "decoder", _causal("FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS)),
    HFModel("bloom", "decoder", _causal("BloomConfig", vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS,
                                        n_head=HEADS)),
    HFModel("gptj", "decoder", _causal("GPTJConfig", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                       rotary_dim=8, n_positions=64)),
    HFModel("gpt_bigcode", "decoder", _causal("GPTBigCodeConfig", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS,
                                              n_head=HEADS, n_positions=64)),
    HFModel("stablelm", "decoder", _causal("StableLmConfig", **_LLAMA_LIKE)),
    HFModel("starcoder2", "decoder", _causal("Starcoder2Config", **_LLAMA_LIKE)),
    HFModel("olmo", "decoder", _causal("OlmoConfig", **_LLAMA_LIKE)),
    HFModel("mixtral", "decoder", _causal("MixtralConfig", num_local_experts=4, num_experts_per_tok=2, **_LLAMA_LIKE)),
    # encoders
    HFModel("bert", "encoder", _encoder("BertConfig", "BertModel", **_BERT_LIKE)),
    HFModel("roberta", "encoder", _encoder("RobertaConfig", "RobertaModel", **_BERT_LIKE)),
    HFModel("distilbert", "encoder", _encoder("DistilBertConfig", "DistilBertForSequenceClassification",
                                              vocab_size=VOCAB, dim=HIDDEN, hidden_dim=FFN, n_layers=LAYERS,
                                              n_heads=HEADS, max_position_embeddings=64)),
    HFModel("albert", "encoder", _encoder("AlbertConfig", "AlbertModel", embedding_size=32, **_BERT_LIKE)),
    HFModel("deberta_v2", "encoder", _encoder("DebertaV2Config", "DebertaV2Model", **_BERT_LIKE)),
    HFModel("electra", "encoder", _encoder("ElectraConfig", "ElectraModel", embedding_size=32, **_BERT_LIKE)),
    # encoder-decoders
    HFModel("t5", "encoder-decoder", _seq2seq("T5Config", "T5Model", vocab_size=VOCAB, d_model=HIDDEN, d_kv=16,
                                              d_ff=FFN, num_layers=LAYERS, num_heads=HEADS)),
    HFModel("bart", "encoder-decoder", _seq2seq("BartConfig", "BartModel", vocab_size=VOCAB, d_model=HIDDEN,
                                                encoder_layers=LAYERS, decoder_layers=LAYERS,
                                                encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                                encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
                                                max_position_embeddings=64)),
    # vision
    HFModel("vit", "vision", _pixels("ViTConfig", "ViTForImageClassification", hidden_size=HIDDEN,
                                     intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                     image_size=32, patch_size=8, num_labels=10)),
    HFModel("swin", "vision", _pixels("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4,
                                      embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10)),
    HFModel("convnext", "vision", _pixels("ConvNextConfig", "ConvNextForImageClassification", image_size=32,
                                          hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10)),
    HFModel("clip", "vision", _clip),
    # audio
    HFModel("whisper_encoder", "audio", _whisper),
    HFModel("wav2vec2", "audio", _wav2vec2),
    # diffusers
    HFModel("unet2d", "diffusers", _unet2d),
    HFModel("unet2d_condition", "diffusers", _unet2d_cond),
    HFModel("autoencoder_kl", "diffusers", _vae),
]

BY_NAME = {m.name: m for m in MODELS}




def run_one(entry: HFModel, ratio: float = 0.5) -> dict:
    """Build, prune with the documented call, check; a row of the coverage table."""
    import time
    import depgraph_prune as dp
    row: dict = {"model": entry.name, "family": entry.family}
    t0 = time.perf_counter()
    try:
        model, inputs = entry.build()
    except Exception as exc:
        row.update(result="build failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return row
    try:
        with torch.no_grad():
            before_structure = structure(model(**inputs))
        result = dp.prune(model, inputs, ratio=ratio)
        with torch.no_grad():
            after_structure = structure(model(**inputs))
        row.update(macs_before=result.before.macs, macs_after=result.after.macs,
                   params_before=result.before.params, params_after=result.after.params,
                   groups=len(result.widths))
        fall = 1 - result.after.macs / max(result.before.macs, 1)
        row["mac_fall"] = fall
        if after_structure != before_structure:
            row["result"] = "output structure changed"
        elif fall < 0.25:
            row["result"] = f"MACs fell only {fall:.0%}"
        else:
            row["result"] = "pass"
        row["notes"] = [n[:160] for n in result.notes]
    except Exception as exc:
        row.update(result="error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    row["seconds"] = time.perf_counter() - t0
    return row
