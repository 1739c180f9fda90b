"""Random architectures for the property tests (``tests/test_property.py``).

A model is described by a *spec*: a plain ``dict`` of ints, strings, tuples and lists whose
``repr`` is valid Python, so a failing example can be rebuilt exactly::

    import sys; sys.path.insert(0, "tests")   # from the repository root
    from archgen import build_model, make_input
    spec = {...}                      # as printed by the failing test
    model = build_model(spec)         # deterministic: weights come from spec["seed"]
    x = make_input(spec)

``archs()`` is the hypothesis strategy that draws specs. ``build_model`` turns a spec into an
``nn.Module`` (float64, eval mode) whose submodule names depend only on the spec
(``stem``, ``blocks.<i>.<part>``, ``head``), so qualified parameter names are stable.

Building blocks (``spec["blocks"]`` entries are ``(kind, params)`` pairs):

- ``conv``: Conv2d (plain, grouped with ``groups`` dividing both widths, or depthwise with a
  channel multiplier), optional BatchNorm2d, optional activation;
- ``res``: ``act(f(x) + proj(x))``, ``f`` = conv→BN→act→conv→BN, ``proj`` a 1x1 conv+BN when
  widths differ, identity otherwise;
- ``cat``: branches (identity, conv, or max-pool) concatenated along channels;
- ``split``: ``torch.split`` (constant sizes) / ``chunk`` along channels, one branch per part,
  concatenated again;
- ``se``: ``x * sigmoid(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs;
- ``shuffle``: ShuffleNet's ``channel_shuffle`` (``x.size()``, ``view``, ``transpose``, ``view``);
- ``pool``: max / avg pooling (same size or stride 2);
- ``shared``: one conv applied twice, in sequence (``conv(act(conv(x)))``) or in parallel
  (``conv(x) + conv(pool(x))``);
- ``norm``: LayerNorm over channels (permute → LayerNorm(C) → permute back) or GroupNorm.
  LayerNorm and one-group GroupNorm make the model *normalizing* (``is_normalizing``): zeroing
  a channel changes the statistics of the others, so the function-preservation check does not
  apply to them (the shape checks still do).

Heads: ``AdaptiveAvgPool2d((2, 2))`` → ``flatten`` → ``Linear(4C, k)``, or a global mean (or
``adaptive_avg_pool2d(x, 1).flatten(1)``) → ``Linear(C, k)``.

A second family, token models with the idioms of transformer / LLM code (``spec["family"] ==
"tokens"``, drawn by ``token_archs()``), lives in ``archgen_tokens``; ``build_model``,
``make_input`` and ``spec_code`` handle both.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import archgen_tokens  # the token family (transformer / LLM idioms): spec["family"] == "tokens"
from archgen_tokens import norm_param_names, token_archs  # noqa: F401  (re-exported)

ACTS = ("relu", "silu", "hardswish", "gelu")
_ACT_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "gelu": nn.GELU}
_ACT_FUNCS = {"relu": F.relu, "silu": F.silu, "hardswish": F.hardswish, "gelu": F.gelu}

MIN_W, MAX_W = 4, 24


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
def make_act(name: str | None) -> nn.Module:
    return _ACT_MODULES[name]() if name else nn.Identity()


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, bn: bool = True,
                 act: str | None = "relu", bias: bool = False, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = make_act(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ConvBlock(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        self.body = ConvBNAct(cin, p["out"], p["k"], p["groups"], p["bn"], p["act"], p["bias"], p.get("stride", 1))

    def forward(self, x):
        return self.body(x)


class ResBlock(nn.Module):
    """``act(f(x) + proj(x))``; ``proj`` is a 1x1 conv + BN when the widths differ."""

    def __init__(self, cin, p):
        super().__init__()
        out, hid = p["out"], p["hidden"]
        self.conv1 = ConvBNAct(cin, hid, p["k"], p["groups"], True, p["act"])
        self.conv2 = ConvBNAct(hid, out, 1, 1, True, None)
        self.proj = ConvBNAct(cin, out, 1, 1, True, None) if out != cin else None
        self.act_name = p["act"]
        self.functional = p["functional"]
        self.act = make_act(p["act"])

    def forward(self, x):
        identity = x if self.proj is None else self.proj(x)
        y = self.conv2(self.conv1(x))
        if self.functional:
            return _ACT_FUNCS[self.act_name](y + identity)
        y = y + identity
        return self.act(y)


class CatBlock(nn.Module):
    """Branches concatenated along channels: ``("id",)``, ``("conv", out, k)``, ``("maxpool",)``."""

    def __init__(self, cin, p):
        super().__init__()
        self.kinds = [b[0] for b in p["branches"]]
        self.branches = nn.ModuleList()
        for b in p["branches"]:
            if b[0] == "conv":
                self.branches.append(ConvBNAct(cin, b[1], b[2], 1, True, p["act"]))
            elif b[0] == "maxpool":
                self.branches.append(nn.MaxPool2d(3, 1, 1))
            else:
                self.branches.append(nn.Identity())

    def forward(self, x):
        return torch.cat([br(x) for br in self.branches], dim=1)


class SplitBlock(nn.Module):
    """``torch.split``/``chunk`` along channels, one branch per part, then ``cat``."""

    def __init__(self, cin, p):
        super().__init__()
        self.mode = p["mode"]
        self.sizes = list(p["sizes"])
        self.parts = nn.ModuleList()
        for size, b in zip(self.sizes, p["branches"]):
            if b[0] == "conv":
                self.parts.append(ConvBNAct(size, b[1], b[2], 1, True, p["act"]))
            elif b[0] == "dw":
                self.parts.append(ConvBNAct(size, size, b[2], size, True, p["act"]))
            else:
                self.parts.append(nn.Identity())

    def forward(self, x):
        if self.mode == "chunk":
            xs = x.chunk(len(self.sizes), dim=1)
        elif self.mode == "torch.chunk":
            xs = torch.chunk(x, len(self.sizes), 1)
        else:
            xs = torch.split(x, self.sizes, dim=1)
        return torch.cat([part(xs[i]) for i, part in enumerate(self.parts)], dim=1)  # fx: index, never iterate


class SEBlock(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs."""

    def __init__(self, cin, p):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, p["hidden"], 1)
        self.act = make_act(p["act"])
        self.fc2 = nn.Conv2d(p["hidden"], cin, 1)
        self.gate = nn.Sigmoid() if p["gate"] == "sigmoid" else nn.Hardsigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * s


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """As in torchvision's ShuffleNetV2."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


class ShuffleBlock(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        self.groups = p["groups"]

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class PoolBlock(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        if p["kind"] == "max":
            self.pool = nn.MaxPool2d(p["k"], p["stride"], p["k"] // 2)
        else:
            self.pool = nn.AvgPool2d(p["k"], p["stride"], p["k"] // 2)

    def forward(self, x):
        return self.pool(x)


class SharedBlock(nn.Module):
    """One conv (``cin → cin``) used twice."""

    def __init__(self, cin, p):
        super().__init__()
        self.mode = p["mode"]
        self.conv = nn.Conv2d(cin, cin, p["k"], padding=p["k"] // 2, groups=p["groups"], bias=p["bias"])
        self.act = make_act(p["act"])
        self.pool = nn.AvgPool2d(3, 1, 1)

    def forward(self, x):
        if self.mode == "seq":
            return self.conv(self.act(self.conv(x)))
        return self.act(self.conv(x) + self.conv(self.pool(x)))


class NormBlock(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        self.kind = p["kind"]
        if self.kind == "ln":
            self.norm = nn.LayerNorm(cin)
        else:
            self.norm = nn.GroupNorm(p["groups"], cin)

    def forward(self, x):
        if self.kind == "ln":
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


BLOCKS = {"conv": ConvBlock, "res": ResBlock, "cat": CatBlock, "split": SplitBlock, "se": SEBlock,
          "shuffle": ShuffleBlock, "pool": PoolBlock, "shared": SharedBlock, "norm": NormBlock}


class Head(nn.Module):
    def __init__(self, cin, p):
        super().__init__()
        self.kind = p["kind"]
        if self.kind == "flatten":
            self.pool = nn.AdaptiveAvgPool2d((2, 2))
            self.fc = nn.Linear(cin * 4, p["classes"])
        else:
            self.fc = nn.Linear(cin, p["classes"])

    def forward(self, x):
        if self.kind == "flatten":
            return self.fc(torch.flatten(self.pool(x), 1))
        if self.kind == "mean":
            return self.fc(x.mean((2, 3)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # "gap"


class GenNet(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        s = spec["stem"]
        self.stem = ConvBNAct(3, s["out"], s["k"], 1, s["bn"], s["act"], s["bias"])
        c = s["out"]
        self.blocks = nn.ModuleList()
        for kind, p in spec["blocks"]:
            self.blocks.append(BLOCKS[kind](c, p))
            c = block_out(kind, p, c)
        self.head = Head(c, spec["head"])

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def block_out(kind: str, p: dict, c: int) -> int:
    if kind in ("conv", "res"):
        return p["out"]
    if kind == "cat":
        return sum(c if b[0] in ("id", "maxpool") else b[1] for b in p["branches"])
    if kind == "split":
        return sum(s if b[0] in ("id", "dw") else b[1] for s, b in zip(p["sizes"], p["branches"]))
    return c


def is_normalizing(spec: dict) -> bool:
    """Whether the model normalizes over several prunable channels at once (LayerNorm over
    channels, GroupNorm with one group): zeroing a channel then changes the others' statistics.
    GroupNorm with several groups is not: its channels can only go a whole group at a time, and
    the other groups' statistics do not depend on it."""
    return any(kind == "norm" and (p["kind"] == "ln" or p["groups"] == 1) for kind, p in spec["blocks"])


def build_model(spec: dict) -> nn.Module:
    """The model a spec describes: float64, eval mode, weights and BN statistics from ``spec["seed"]``."""
    if spec.get("family") == "tokens":
        return archgen_tokens.build_model(spec)
    gen = torch.Generator().manual_seed(spec["seed"])
    model = GenNet(spec).double()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.2)
            elif t.dim() <= 1:  # biases, BN / norm affine parameters
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            else:  # conv / linear weights: fan-in scaled so activations stay O(1)
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) / fan_in ** 0.5)
    return model.eval()


def make_input(spec: dict) -> torch.Tensor:
    if spec.get("family") == "tokens":
        return archgen_tokens.make_input(spec)
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    n, (h, w) = spec["batch"], spec["hw"]
    return torch.randn(n, 3, h, w, generator=gen, dtype=torch.float64)


def spec_code(spec: dict) -> str:
    """Python code that rebuilds the model and input of a spec (printed for failing examples)."""
    return ("import sys; sys.path.insert(0, 'tests')  # run from the repository root\n"
            "from archgen import build_model, make_input\n"
            f"spec = {spec!r}\n"
            "model = build_model(spec)\n"
            "x = make_input(spec)\n")


# ---------------------------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------------------------
def _divisors(n: int, lo: int = 1) -> list[int]:
    return [d for d in range(lo, n + 1) if n % d == 0]


widths = st.integers(MIN_W, MAX_W)
acts = st.sampled_from(ACTS)
opt_acts = st.one_of(st.none(), acts)


@st.composite
def _conv_block(draw, c):
    variant = draw(st.sampled_from(["plain", "plain", "grouped", "depthwise"]))
    if variant == "plain":
        out, groups = draw(widths), 1
    elif variant == "depthwise":
        mult = draw(st.sampled_from([m for m in (1, 2, 3) if c * m <= MAX_W] or [1]))
        out, groups = c * mult, c
    else:
        g = draw(st.sampled_from(_divisors(c, 2) or [1]))
        out = g * draw(st.integers(max(1, -(-MIN_W // g)), max(1, MAX_W // g)))
        groups = g
    return {"out": out, "k": draw(st.sampled_from([1, 3])), "groups": groups, "bn": draw(st.booleans()),
            "act": draw(opt_acts), "bias": draw(st.booleans())}


@st.composite
def _res_block(draw, c):
    out = draw(st.one_of(st.just(c), widths))
    grouped = draw(st.booleans())
    hid, groups = draw(widths), 1
    if grouped:
        g = draw(st.sampled_from(_divisors(c, 2) or [1]))
        hid, groups = g * draw(st.integers(1, max(1, MAX_W // g))), g
    return {"out": out, "hidden": hid, "k": draw(st.sampled_from([1, 3])), "groups": groups,
            "act": draw(acts), "functional": draw(st.booleans())}


@st.composite
def _cat_block(draw, c):
    n = draw(st.integers(2, 3))
    branches = []
    for _ in range(n):
        kind = draw(st.sampled_from(["id", "conv", "conv", "maxpool"]))
        branches.append(("conv", draw(st.integers(2, 12)), draw(st.sampled_from([1, 3]))) if kind == "conv" else (kind,))
    # keep the width bounded: replace convs / identities until the total fits
    total = sum(c if b[0] != "conv" else b[1] for b in branches)
    if total > 2 * MAX_W:
        branches = [("conv", 4, 1) for _ in branches]
    return {"branches": tuple(branches), "act": draw(opt_acts)}


@st.composite
def _split_block(draw, c):
    mode = draw(st.sampled_from(["split", "chunk", "torch.chunk"]))
    if mode == "split":
        first = draw(st.integers(1, c - 1))
        sizes = (first, c - first)
    else:
        n = draw(st.sampled_from(_divisors(c, 2)[:3] or [1]))
        if n == 1 or c // n < 1:
            mode, sizes = "split", (c // 2, c - c // 2)
        else:
            sizes = tuple([c // n] * n)
    branches = []
    for s in sizes:
        kind = draw(st.sampled_from(["id", "conv", "dw"]))
        if kind == "conv":
            branches.append(("conv", draw(st.integers(1, 10)), draw(st.sampled_from([1, 3]))))
        else:
            branches.append((kind, s, draw(st.sampled_from([1, 3]))))
    return {"mode": mode, "sizes": sizes, "branches": tuple(branches), "act": draw(opt_acts)}


@st.composite
def _se_block(draw, c):
    return {"hidden": draw(st.integers(1, max(1, c // 2))), "act": draw(acts),
            "gate": draw(st.sampled_from(["sigmoid", "hardsigmoid"]))}


@st.composite
def _shuffle_block(draw, c):
    return {"groups": draw(st.sampled_from(_divisors(c, 2)[:3] or [1]))}


@st.composite
def _pool_block(draw, c, hw):
    can_stride = min(hw) >= 4
    return {"kind": draw(st.sampled_from(["max", "avg"])), "k": 3,
            "stride": draw(st.sampled_from([1, 2] if can_stride else [1]))}


@st.composite
def _shared_block(draw, c):
    groups = draw(st.sampled_from([1, 1] + _divisors(c, 2)[:2]))
    return {"mode": draw(st.sampled_from(["seq", "par"])), "k": draw(st.sampled_from([1, 3])),
            "groups": groups, "act": draw(acts), "bias": draw(st.booleans())}


@st.composite
def _norm_block(draw, c):
    kind = draw(st.sampled_from(["ln", "gn"]))
    return {"kind": kind, "groups": draw(st.sampled_from(_divisors(c)[:3])) if kind == "gn" else 1}


_KINDS = ("conv", "res", "cat", "split", "se", "shuffle", "pool", "shared")


@st.composite
def archs(draw, max_blocks: int = 8, allow_norm: bool = True, kinds: tuple[str, ...] = _KINDS) -> dict:
    """Draw a spec (see the module docstring). ``build_model(spec)`` builds it."""
    hw = (draw(st.integers(8, 16)), draw(st.integers(8, 16)))
    stem_out = draw(widths)
    spec: dict[str, Any] = {
        "seed": draw(st.integers(0, 2 ** 16)),
        "batch": draw(st.integers(1, 2)),
        "hw": hw,
        "stem": {"out": stem_out, "k": 3, "bn": draw(st.booleans()), "act": draw(opt_acts), "bias": draw(st.booleans())},
    }
    c, cur = stem_out, list(hw)
    blocks = []
    menu = list(kinds) + (["norm"] if allow_norm and draw(st.integers(0, 4)) == 0 else [])
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(menu))
        if kind == "split" and c < 2:
            kind = "conv"
        if kind == "conv":
            p = draw(_conv_block(c))
        elif kind == "res":
            p = draw(_res_block(c))
        elif kind == "cat":
            p = draw(_cat_block(c))
        elif kind == "split":
            p = draw(_split_block(c))
        elif kind == "se":
            p = draw(_se_block(c))
        elif kind == "shuffle":
            p = draw(_shuffle_block(c))
        elif kind == "pool":
            p = draw(_pool_block(c, cur))
            if p["stride"] == 2:
                cur = [(s + 2 * (p["k"] // 2) - p["k"]) // 2 + 1 for s in cur]
        elif kind == "shared":
            p = draw(_shared_block(c))
        else:
            p = draw(_norm_block(c))
        blocks.append((kind, p))
        c = block_out(kind, p, c)
        if c > 2 * MAX_W:  # squeeze back with a plain 1x1 conv
            p = {"out": draw(widths), "k": 1, "groups": 1, "bn": True, "act": draw(opt_acts), "bias": False}
            blocks.append(("conv", p))
            c = p["out"]
    spec["blocks"] = blocks
    spec["head"] = {"kind": draw(st.sampled_from(["flatten", "mean", "gap"])), "classes": draw(st.integers(2, 6))}
    return spec
