"""What numerical verification adds to the one-call prune: ``dp.prune(..., verify=True)`` against
``verify=False``, side by side in one process, one thread, medians of ``--repeat`` runs.

    python bench/verify_cost.py [--repeat 3] [--models resnet50,vit_b_16,llama4]

Prints, per model, the median time of each and their ratio, and what the check did (precision,
groups checked exactly, forward passes).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import depgraph_prune as dp


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    """Llama-style: RMSNorm, grouped-query attention (constant scale), SwiGLU MLP."""

    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.num_heads, self.num_kv, self.head_dim = heads, kv_heads, d // heads
        self.scale = self.head_dim ** -0.5
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q_proj = nn.Linear(d, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, d, bias=False)
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.norm1(x)
        q = self.q_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
        rep = self.num_heads // self.num_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, -1))
        return x + self.down_proj(F.silu(self.gate_proj(self.norm2(x))) * self.up_proj(self.norm2(x)))


class Llama(nn.Module):
    def __init__(self, vocab=8000, d=512, layers=4, heads=8, kv_heads=2, hidden=1376):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads, kv_heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def models(names):
    import torchvision
    for name in names:
        if name == "llama4":
            yield name, lambda: Llama(), torch.randint(0, 8000, (1, 64)), None
        else:
            small = torch.randn(1, 3, 64, 64) if not name.startswith("vit") else None
            yield name, (lambda n=name: getattr(torchvision.models, n)()), torch.randn(1, 3, 224, 224), small


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="resnet50,vit_b_16,llama4")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median of {args.repeat}")
    print(f"{'model':<12}{'verify=False':>14}{'verify=True':>13}{'ratio':>8}{'64x64 check':>13}{'ratio':>8}  check")
    for name, make, x, small in models(args.models.split(",")):
        kinds = ["off", "on"] + (["small"] if small is not None else [])
        times = {k: [] for k in kinds}
        rep = None
        for _ in range(args.repeat):
            for kind in kinds:  # alternating, so drift hits all alike
                torch.manual_seed(0)
                m = make().eval()
                kw = {"verify": kind != "off"}
                if kind == "small":
                    kw["verify_inputs"] = small
                t = time.perf_counter()
                res = dp.prune(m, x, ratio=0.5, **kw)
                times[kind].append(time.perf_counter() - t)
                if kind == "on":
                    rep = res.verification[0] if res.verification else None
                del m, res
        a, b = statistics.median(times["off"]), statistics.median(times["on"])
        c = statistics.median(times["small"]) if small is not None else None
        how = "" if rep is None else (f"{rep.dtype}, {rep.exact} groups exact ({rep.affine_norm} affine-norm), "
                                      f"{len(rep.structural)} structural, {rep.runs} forward passes, "
                                      f"max diff {rep.max_diff:.2g}")
        sm = f"{c:>12.2f}s{c / a:>8.2f}" if c is not None else f"{'-':>13}{'-':>8}"
        print(f"{name:<12}{a:>13.2f}s{b:>12.2f}s{b / a:>8.2f}{sm}  {how}", flush=True)


if __name__ == "__main__":
    main()
