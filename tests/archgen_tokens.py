"""Random *token* models for the property tests (``tests/test_property_tokens.py``): the idioms of
current transformer and LLM code, written the way that code writes them.

The spec format and the contract are those of ``archgen`` (whose ``build_model``,
``make_input`` and ``spec_code`` dispatch here when ``spec["family"] == "tokens"``): a spec is a
plain ``dict`` whose ``repr`` is valid Python; ``build_model(spec)`` is deterministic (weights
from ``spec["seed"]``), float64, eval mode, with submodule names that depend only on the spec
(``embed``/``stem``, ``pos``, ``blocks.<i>.<part>``, ``norm``, ``head``).

Input (``spec["input"]``): ``"ids"``, token ids ``(B, T)`` into an ``nn.Embedding``, or
``"float"``, features ``(B, T, C_in)`` into a ``Linear`` stem. Optional learned positions
(``spec["pos"]``): an ``nn.Parameter`` ``(1, MAX_T, C)`` sliced by the sequence length, or an
``nn.Embedding`` of ``torch.arange(T)``. Optional embedding scale (``spec["embed_scale"]``,
Gemma / T5): ``x * self.embed_scale`` (a number fixed at construction), ``x * x.shape[-1] ** 0.5``
or ``x * math.sqrt(self.hidden_dim)`` (both from the width).

Blocks (pre-norm residual, ``x = x + f(norm(x))``, optionally with a layer scale
``self.gamma * f(...)``; or post-norm, ``norm(x + f(x))``):

- ``attn``: separate q/k/v Linears, a fused qkv Linear split by sizes
  (``split([q, kv, kv], -1)``), by a width attribute (``split(self.inner_dim, -1)``) or
  ``chunk(3, -1)``; heads via ``view(B, T, -1, self.head_dim)``,
  ``view(B, T, self.num_heads, self.head_dim)`` or HF's ``view(*x.shape[:-1], -1, self.head_dim)``;
  grouped-query attention with k/v heads repeated by ``repeat_interleave(n_rep, dim=1)`` or HF's
  ``repeat_kv`` (``[:, :, None].expand(...).reshape(...)``) or SDPA's ``enable_gqa=True``;
  rotary embeddings with ``rotate_half`` (halves by a constant or by ``x.shape[-1] // 2``), the
  cos/sin tables either buffers sliced by the sequence length (``self.cos_cached[:T]``) or
  computed in forward from ``torch.arange(T)`` and an ``inv_freq`` buffer; optional RMSNorm on q
  and k (qk-norm); the core is ``q @ k.transpose(-2, -1) * scale`` (scale a constant
  ``self.scale = self.head_dim ** -0.5``, ``q.size(-1) ** -0.5``, ``/ math.sqrt(self.head_dim)``
  or ``/ math.sqrt(k.size(-1))``) with an optional causal mask (nanoGPT's ``tril`` buffer sliced
  by the length, or built in forward), or ``F.scaled_dot_product_attention`` (``is_causal``)
  with or without ``scale=``, or ``torch.einsum`` for both products. Heads may also come from
  ``unflatten(-1, (-1, self.head_dim))``.
- ``parallel``: attention and an MLP side by side on one norm, ``x + attn(h) + mlp(h)`` (GPT-J).
- ``mlp``: SwiGLU ``down(silu(gate(x)) * up(x))``, a fused ``gate_up`` Linear split by
  ``chunk(2, -1)``, ``fc2(gelu(fc1(x)))`` or ``fc2(F.glu(fc1(x), -1))``.
- ``moe``: a router Linear and a ModuleList of experts (small SwiGLU / GELU MLPs), every expert
  run on every token and masked: top-k routing (``w, idx = logits.topk(k, -1)``, softmax over the
  k weights, then ``(w * (idx == e)).sum(-1, keepdim=True)``), Mixtral's softmax-then-top-k with
  renormalization, argmax routing (``idx = logits.argmax(-1)``, ``idx == e``) or Switch's top-1
  by ``w, idx = logits.softmax(-1).max(dim=-1)``; optionally a
  shared expert gated by ``sigmoid(Linear(C, 1))`` (Qwen2-MoE).

Norms (pre-norms and the final norm): a hand-written RMSNorm
(``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight``), Hugging Face's
LlamaRMSNorm (statistics in float32), ``nn.LayerNorm``, or none. Heads: tied (an ``nn.Linear``
whose weight *is* ``embed.weight``, ids input only), a per-token ``Linear(C, k)``, or the mean
over tokens then ``Linear(C, k)``.

Normalized groups: zeroing some channels of a tensor that an RMSNorm / LayerNorm normalizes
changes the other channels' statistics, so the function-preservation equality does not hold for
such a group. In this family every norm has a weight that the group then contains (the residual
stream reaches the pre-norms and the final norm; qk-norm's weight sits in the per-head-dim
group), so ``norm_param_names(model)`` tells the tests which groups to keep out of the equality
check; every other group is checked exactly, whatever norms the model has.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

MAX_T = 10  # length of the position tables and rotary / mask buffers (sequences are shorter)
MIN_C, MAX_C = 4, 24


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """As Llama / T5 write it."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormHF(nn.Module):
    """As Hugging Face's LlamaRMSNorm writes it: statistics in float32, back to the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def make_norm(kind: str | None, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "rms_hf":
        return RMSNormHF(dim)
    if kind == "ln":
        return nn.LayerNorm(dim)
    return nn.Identity()


def rotate_half_const(x, half: int):
    x1 = x[..., :half]
    x2 = x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def rotate_half(x):
    """As Hugging Face writes it: the halves come from the width."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(hidden_states, n_rep: int):
    """Hugging Face's ``repeat_kv``: (B, Hkv, T, D) -> (B, Hkv * n_rep, T, D)."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class Attention(nn.Module):
    def __init__(self, c: int, p: dict):
        super().__init__()
        self.p = dict(p)
        H, Hkv, D = p["heads"], p["kv_heads"], p["head_dim"]
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hkv, D
        self.n_rep = H // Hkv
        bias = p["bias"]
        if p["qkv"] == "separate":
            self.q_proj = nn.Linear(c, H * D, bias=bias)
            self.k_proj = nn.Linear(c, Hkv * D, bias=bias)
            self.v_proj = nn.Linear(c, Hkv * D, bias=bias)
        else:
            self.qkv = nn.Linear(c, (H + 2 * Hkv) * D, bias=bias)
            if p["qkv"] == "split_attr":
                self.inner_dim = H * D
        self.o_proj = nn.Linear(H * D, c, bias=bias)
        if p["qk_norm"]:
            self.q_norm = RMSNorm(D)
            self.k_norm = RMSNorm(D)
        if p["scale"] in ("const", "sdpa_scale", "einsum"):
            self.scale = self.head_dim ** -0.5
        if p["rope"] != "none":
            inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
            if p["rope"] == "cache":  # tables for MAX_T positions, sliced by the sequence length
                freqs = torch.outer(torch.arange(MAX_T, dtype=torch.float64), inv_freq)
                emb = torch.cat((freqs, freqs), dim=-1)
                self.register_buffer("cos_cached", emb.cos(), persistent=False)
                self.register_buffer("sin_cached", emb.sin(), persistent=False)
            else:  # "runtime": the tables are computed in forward from the positions (HF today)
                self.register_buffer("inv_freq", inv_freq, persistent=False)
        if p["causal"] == "cache" and not p["scale"].startswith("sdpa"):  # nanoGPT's mask buffer
            self.register_buffer("mask", torch.tril(torch.ones(MAX_T, MAX_T)).view(1, 1, MAX_T, MAX_T))

    def _heads(self, t, x, n):
        B, T, _ = x.shape
        view = self.p["view"]
        if view == "infer":
            t = t.view(B, T, -1, self.head_dim)
        elif view == "heads":
            t = t.view(B, T, n, self.head_dim)
        elif view == "unflatten":
            t = t.unflatten(-1, (-1, self.head_dim))
        else:  # "hf"
            input_shape = x.shape[:-1]
            hidden_shape = (*input_shape, -1, self.head_dim)
            t = t.view(hidden_shape)
        return t.transpose(1, 2)

    def _rope_tables(self, x, T):
        if self.p["rope"] == "cache":
            return self.cos_cached[:T], self.sin_cached[:T]
        t = torch.arange(T, dtype=x.dtype, device=x.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def _rope(self, t, cos, sin):
        if self.p["rotate"] == "const":
            return t * cos + rotate_half_const(t, self.head_dim // 2) * sin
        return (t * cos) + (rotate_half(t) * sin)

    def forward(self, x):
        B, T, _ = x.shape
        p = self.p
        if p["qkv"] == "separate":
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        elif p["qkv"] == "split_sizes":
            q, k, v = self.qkv(x).split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                                         self.num_kv_heads * self.head_dim], dim=-1)
        elif p["qkv"] == "split_attr":  # nanoGPT (only when the three parts are equal)
            q, k, v = self.qkv(x).split(self.inner_dim, dim=-1)
        else:  # "chunk"
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = self._heads(q, x, self.num_heads)
        k = self._heads(k, x, self.num_kv_heads)
        v = self._heads(v, x, self.num_kv_heads)
        if p["qk_norm"]:
            q, k = self.q_norm(q), self.k_norm(k)
        if p["rope"] != "none":
            cos, sin = self._rope_tables(x, T)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if self.n_rep > 1 and p["gqa"] != "sdpa":
            if p["gqa"] == "repeat_interleave":
                k = k.repeat_interleave(self.n_rep, dim=1)
                v = v.repeat_interleave(self.n_rep, dim=1)
            else:
                k = repeat_kv(k, self.n_rep)
                v = repeat_kv(v, self.n_rep)
        scale = p["scale"]
        if scale == "sdpa" and self.n_rep > 1 and p["gqa"] == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=bool(p["causal"]), enable_gqa=True)
        elif scale == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=bool(p["causal"]))
        elif scale == "sdpa_scale":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=bool(p["causal"]), scale=self.scale,
                                               enable_gqa=self.n_rep > 1 and p["gqa"] == "sdpa")
        elif scale == "einsum":
            att = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale
            if p["causal"]:
                att = att.masked_fill(~att.new_ones((T, T), dtype=torch.bool).tril(), float("-inf"))
            y = torch.einsum("bhqk,bhkd->bhqd", att.softmax(dim=-1), v)
        else:
            if scale == "const":
                att = (q @ k.transpose(-2, -1)) * self.scale
            elif scale == "size":
                att = q @ k.transpose(-2, -1) * q.size(-1) ** -0.5
            elif scale == "sqrt":
                att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            else:  # "ksize", nanoGPT
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if p["causal"] == "cache":
                att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
            elif p["causal"] == "runtime":
                causal = att.new_ones((T, T), dtype=torch.bool).tril()
                att = att.masked_fill(~causal, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2)
        if p["merge"] == "infer":
            y = y.reshape(B, T, -1)
        else:  # "hf"
            y = y.reshape(*x.shape[:-1], -1).contiguous()
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, c: int, p: dict):
        super().__init__()
        self.kind = p["kind"]
        h, bias = p["hidden"], p["bias"]
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(c, h, bias=bias)
            self.up_proj = nn.Linear(c, h, bias=bias)
            self.down_proj = nn.Linear(h, c, bias=bias)
        elif self.kind == "fused":
            self.gate_up_proj = nn.Linear(c, 2 * h, bias=bias)
            self.down_proj = nn.Linear(h, c, bias=bias)
        elif self.kind == "glu":
            self.fc1 = nn.Linear(c, 2 * h, bias=bias)
            self.fc2 = nn.Linear(h, c, bias=bias)
        else:  # "gelu"
            self.fc1 = nn.Linear(c, h, bias=bias)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(h, c, bias=bias)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.kind == "fused":
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        if self.kind == "glu":
            return self.fc2(F.glu(self.fc1(x), dim=-1))
        return self.fc2(self.act(self.fc1(x)))


class MoE(nn.Module):
    """Every expert runs on every token; the router's choice masks their outputs (fx-traceable)."""

    def __init__(self, c: int, p: dict):
        super().__init__()
        self.routing = p["routing"]
        self.num_experts, self.top_k = p["experts"], p["k"]
        self.router = nn.Linear(c, self.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(c, {"kind": p["expert"], "hidden": h, "bias": False}) for h in p["hidden"])
        self.has_shared = p["shared"]
        if self.has_shared:  # Qwen2-MoE's shared expert with a 1-wide sigmoid gate
            self.shared_expert = MLP(c, {"kind": "swiglu", "hidden": p["hidden"][0], "bias": False})
            self.shared_expert_gate = nn.Linear(c, 1, bias=False)

    def forward(self, x):
        logits = self.router(x)
        out = torch.zeros_like(x)
        if self.has_shared:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if self.routing == "argmax":
            idx = logits.argmax(-1)
            for e in range(self.num_experts):
                mask = (idx == e).unsqueeze(-1).to(x.dtype)
                out = out + mask * self.experts[e](x)
            return out
        if self.routing == "switch":  # Switch Transformer: top-1 by max(dim)
            w, idx = logits.softmax(dim=-1).max(dim=-1)
            for e in range(self.num_experts):
                out = out + (w * (idx == e)).unsqueeze(-1) * self.experts[e](x)
            return out
        if self.routing == "topk":
            w, idx = logits.topk(self.top_k, dim=-1)
            w = w.softmax(dim=-1)
        else:  # "mixtral": softmax over all experts, top-k, renormalize
            probs = F.softmax(logits, dim=-1)
            w, idx = torch.topk(probs, self.top_k, dim=-1)
            w = w / w.sum(dim=-1, keepdim=True)
        for e in range(self.num_experts):
            we = (w * (idx == e)).sum(dim=-1, keepdim=True)
            out = out + we * self.experts[e](x)
        return out


class TokenBlock(nn.Module):
    """``x + [gamma *] f(norm(x))`` (pre-norm), ``norm(x + f(x))`` (post-norm, BERT), or for
    ``parallel``, ``x + attn(norm(x)) + mlp(norm(x))`` with one norm (GPT-J, PaLM)."""

    def __init__(self, c: int, kind: str, p: dict):
        super().__init__()
        self.norm = make_norm(p["norm"], c)
        self.post_norm = p.get("post_norm", False)
        if kind == "parallel":
            self.f, self.g = Attention(c, p["attn"]), MLP(c, p["mlp"])
        else:
            self.f, self.g = {"attn": Attention, "mlp": MLP, "moe": MoE}[kind](c, p), None
        self.layer_scale = p["layer_scale"]
        if self.layer_scale:
            self.gamma = nn.Parameter(torch.ones(c))

    def forward(self, x):
        if self.post_norm:
            return self.norm(x + self.f(x))
        h = self.norm(x)
        y = self.f(h) if self.g is None else self.f(h) + self.g(h)
        if self.layer_scale:
            return x + self.gamma * y
        return x + y


class TokenNet(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        c = spec["dim"]
        self.input_kind, self.pos_kind = spec["input"], spec["pos"]
        self.embed_scale_kind = spec.get("embed_scale")
        self.hidden_dim = c
        if self.embed_scale_kind == "const":
            self.embed_scale = c ** 0.5
        if self.input_kind == "ids":
            self.embed = nn.Embedding(spec["vocab"], c)
        else:
            self.stem = nn.Linear(spec["in_dim"], c)
        if self.pos_kind == "param":
            self.pos = nn.Parameter(torch.zeros(1, MAX_T, c))
        elif self.pos_kind == "embedding":
            self.pos = nn.Embedding(MAX_T, c)
        self.blocks = nn.ModuleList(TokenBlock(c, kind, p) for kind, p in spec["blocks"])
        self.norm = make_norm(spec["final_norm"], c)
        h = spec["head"]
        self.head_kind = h["kind"]
        if self.head_kind == "tied":
            self.head = nn.Linear(c, spec["vocab"], bias=False)
            self.head.weight = self.embed.weight
        else:
            self.head = nn.Linear(c, h["classes"], bias=h["bias"])

    def forward(self, x):
        if self.input_kind == "ids":
            x = self.embed(x)
        else:
            x = self.stem(x)
        if self.embed_scale_kind == "const":  # a number fixed at construction
            x = x * self.embed_scale
        elif self.embed_scale_kind == "width":  # Gemma / T5 style, from the width
            x = x * x.shape[-1] ** 0.5
        elif self.embed_scale_kind == "attr":  # from a width attribute the surgeon may rewrite
            x = x * math.sqrt(self.hidden_dim)
        T = x.size(1)
        if self.pos_kind == "param":
            x = x + self.pos[:, :T]
        elif self.pos_kind == "embedding":
            x = x + self.pos(torch.arange(T, device=x.device))
        for b in self.blocks:
            x = b(x)
        x = self.norm(x)
        if self.head_kind == "mean":
            x = x.mean(1)
        return self.head(x)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def build_model(spec: dict) -> nn.Module:
    gen = torch.Generator().manual_seed(spec["seed"])
    model = TokenNet(spec).double()
    with torch.no_grad():
        for name, t in model.named_parameters():  # tied weights appear once
            last = name.rsplit(".", 1)[-1]
            if t.dim() <= 1:  # biases, norm weights, layer scales
                base = 1.0 if last in ("weight", "gamma") else 0.0
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.3 + base)
            elif name == "pos" or name.startswith("embed.") or name.startswith("pos."):
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.5)
            else:  # Linear weights (out, in): fan-in scaled so activations stay O(1)
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) / t.shape[-1] ** 0.5)
    return model.eval()


def make_input(spec: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    b, t = spec["batch"], spec["seq"]
    if spec["input"] == "ids":
        return torch.randint(0, spec["vocab"], (b, t), generator=gen)
    return torch.randn(b, t, spec["in_dim"], generator=gen, dtype=torch.float64)


def norm_param_names(model: nn.Module) -> set[str]:
    """Qualified names of every RMSNorm / LayerNorm parameter (groups holding one of them are
    normalized: see the module docstring)."""
    out = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, (RMSNorm, RMSNormHF, nn.LayerNorm)):
            for pname, _ in mod.named_parameters(recurse=False):
                out.add(f"{mname}.{pname}" if mname else pname)
    return out


# ---------------------------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------------------------
NORMS = ("rms", "rms_hf", "ln", None, None)


@st.composite
def _attn_block(draw, c):
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    rope = draw(st.sampled_from(["none", "none", "runtime", "runtime", "cache"]))
    head_dim = draw(st.sampled_from([2, 4, 6, 8] if rope != "none" else [2, 3, 4, 5, 6, 8]))
    qkv = draw(st.sampled_from(["separate", "separate", "split_sizes", "split_attr", "chunk"]))
    if qkv in ("split_attr", "chunk") and kv_heads != heads:
        qkv = "split_sizes"
    scale = draw(st.sampled_from(["const", "size", "sqrt", "ksize", "sdpa", "sdpa_scale", "einsum"]))
    gqa = draw(st.sampled_from(["repeat_interleave", "repeat_kv"] + (["sdpa"] if scale.startswith("sdpa") else [])))
    return {"norm": draw(st.sampled_from(NORMS)), "layer_scale": draw(st.booleans()),
            "post_norm": draw(st.integers(0, 4)) == 0,
            "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "qkv": qkv, "bias": draw(st.booleans()),
            "view": draw(st.sampled_from(["infer", "heads", "hf", "unflatten"])),
            "gqa": gqa,
            "rope": rope, "rotate": draw(st.sampled_from(["const", "shape"])),
            "qk_norm": draw(st.integers(0, 4)) == 0,
            "scale": scale,
            "causal": draw(st.sampled_from([False, False, "runtime", "runtime", "cache"])),
            "merge": draw(st.sampled_from(["infer", "hf"]))}


@st.composite
def _mlp_block(draw, c):
    return {"norm": draw(st.sampled_from(NORMS)), "layer_scale": draw(st.booleans()),
            "post_norm": draw(st.integers(0, 4)) == 0,
            "kind": draw(st.sampled_from(["swiglu", "swiglu", "fused", "gelu", "glu"])),
            "hidden": draw(st.integers(2, 32)), "bias": draw(st.booleans())}


@st.composite
def _moe_block(draw, c):
    e = draw(st.integers(2, 4))
    return {"norm": draw(st.sampled_from(NORMS)), "layer_scale": draw(st.booleans()),
            "routing": draw(st.sampled_from(["topk", "mixtral", "argmax", "switch"])), "experts": e,
            "k": draw(st.integers(1, min(2, e))), "expert": draw(st.sampled_from(["swiglu", "gelu"])),
            "shared": draw(st.integers(0, 3)) == 0,
            "hidden": tuple(draw(st.integers(2, 12)) for _ in range(e))}


@st.composite
def _parallel_block(draw, c):
    attn, mlp = draw(_attn_block(c)), draw(_mlp_block(c))
    return {"norm": attn["norm"], "layer_scale": attn["layer_scale"], "attn": attn, "mlp": mlp}


_BLOCKS = {"attn": _attn_block, "mlp": _mlp_block, "moe": _moe_block, "parallel": _parallel_block}


@st.composite
def token_archs(draw, max_blocks: int = 4,
                kinds: tuple[str, ...] = ("attn", "attn", "mlp", "mlp", "moe", "parallel")) -> dict:
    """Draw a token-model spec (see the module docstring)."""
    c = draw(st.integers(MIN_C, MAX_C))
    ids = draw(st.booleans())
    spec: dict[str, Any] = {
        "family": "tokens",
        "seed": draw(st.integers(0, 2 ** 16)),
        "batch": draw(st.integers(1, 2)),
        "seq": draw(st.integers(2, MAX_T - 2)),
        "input": "ids" if ids else "float",
        "dim": c,
        "pos": draw(st.sampled_from(["none", "none", "param", "embedding"])),
        "embed_scale": draw(st.sampled_from([None, None, None, "const", "width", "attr"])),
    }
    if ids:
        spec["vocab"] = draw(st.integers(5, 20))
    else:
        spec["in_dim"] = draw(st.integers(2, 8))
    spec["blocks"] = [(kind, draw(_BLOCKS[kind](c))) for kind in
                      (draw(st.sampled_from(kinds)) for _ in range(draw(st.integers(1, max_blocks))))]
    spec["final_norm"] = draw(st.sampled_from(NORMS))
    head = draw(st.sampled_from(["tied", "linear", "mean"] if ids else ["linear", "mean"]))
    spec["head"] = {"kind": head} if head == "tied" else \
        {"kind": head, "classes": draw(st.integers(2, 6)), "bias": draw(st.booleans())}
    return spec
