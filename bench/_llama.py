"""A small, hand-written Llama-architecture decoder for the scale benchmarks (no transformers needed).

Same modules, names and shapes as Hugging Face's ``LlamaForCausalLM``: token embedding (tied to
the LM head), pre-norm blocks of RMSNorm → grouped-query attention with rotary position
embeddings → RMSNorm → SwiGLU MLP (``gate_proj``, ``up_proj``, ``down_proj``), a final RMSNorm.

Two deliberate simplifications keep it traceable by the released tracer: the rotary tables are
buffers of exactly the example sequence length (no slicing by a traced length), and the key/value
heads are repeated for their query heads with a constant factor (``expand(-1, -1, rep, -1, -1)``),
the form the coupling rules prove GQA-consistent: a key/value head and its ``rep`` query heads are
one channel of one group, so head pruning keeps grouped-query attention whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaShape:
    vocab: int = 128256
    hidden: int = 2048
    intermediate: int = 8192
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    seq: int = 16

    def params(self) -> int:
        hd = self.hidden // self.heads
        attn = 2 * self.hidden * self.heads * hd + 2 * self.hidden * self.kv_heads * hd
        return self.vocab * self.hidden + self.layers * (attn + 3 * self.hidden * self.intermediate + 2 * self.hidden) \
            + self.hidden


#: Llama-3.2-1B's shape (1.24 B parameters with the tied embedding)
LLAMA_1B = LlamaShape()
#: Llama-2-7B's shape (6.7 B parameters, untied head: counted here tied, 6.5 B)
LLAMA_7B = LlamaShape(vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32)


def _rotate(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden, heads, kv_heads):
        super().__init__()
        self.head_dim = hidden // heads
        self.rep = heads // kv_heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate(q) * sin
        k = k * cos + _rotate(k) * sin
        k = k[:, :, None].expand(-1, -1, self.rep, -1, -1).reshape(b, -1, t, self.head_dim)
        v = v[:, :, None].expand(-1, -1, self.rep, -1, -1).reshape(b, -1, t, self.head_dim)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, hidden, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(s.hidden, eps=1e-5)
        self.self_attn = Attention(s.hidden, s.heads, s.kv_heads)
        self.post_attention_layernorm = nn.RMSNorm(s.hidden, eps=1e-5)
        self.mlp = MLP(s.hidden, s.intermediate)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLike(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab, s.hidden)
        self.layers = nn.ModuleList(Block(s) for _ in range(s.layers))
        self.norm = nn.RMSNorm(s.hidden, eps=1e-5)
        self.lm_head = nn.Linear(s.hidden, s.vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as Llama-3.2-1B
        hd = s.hidden // s.heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32, device="cpu") / hd))
        freqs = torch.outer(torch.arange(s.seq, dtype=torch.float32, device="cpu"), inv)
        emb = torch.cat((freqs, freqs), -1)
        dtype = self.embed_tokens.weight.dtype
        dev = self.embed_tokens.weight.device
        self.register_buffer("cos", emb.cos().to(dev, dtype), persistent=False)
        self.register_buffer("sin", emb.sin().to(dev, dtype), persistent=False)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin)
        return self.lm_head(self.norm(x))


def build(shape: LlamaShape, dtype=torch.bfloat16, device="cpu", seed=0) -> nn.Module:
    """The model, built directly in ``dtype`` on ``device`` (never a float32 copy first): modules
    are created on the meta device, then given uninitialized storage and filled with N(0, 0.02)
    (RMSNorm scales 1), as a random-init Llama is. ``device="meta"`` leaves it weightless."""
    with torch.device("meta"):
        model = LlamaLike(shape).to(dtype)
    if device == "meta":
        return model.eval()
    model = model.to_empty(device=device)
    model.lm_head.weight = model.embed_tokens.weight  # to_empty off the meta device unties them
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
        hd = shape.hidden // shape.heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        emb = torch.outer(torch.arange(shape.seq, dtype=torch.float32), inv)
        emb = torch.cat((emb, emb), -1)
        model.cos.copy_(emb.cos())
        model.sin.copy_(emb.sin())
    return model.eval()


def example_ids(shape: LlamaShape, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, shape.vocab, (1, shape.seq), generator=g).to(device)


#: ``dp.prune`` ratios: half of every MLP's intermediate width, a quarter of the key/value heads
#: (each with its query heads)
# a group takes the ratio of its first producer a pattern matches: the MLP widths (gate/up),
# the key/value heads with the query heads that read them (q/k/v); the residual width, whose
# producers are the embedding, o_proj and down_proj, is left whole
RATIOS = {"layers.*.mlp.[gu]*_proj": 0.5, "layers.*.self_attn.[qkv]_proj": 0.25}
