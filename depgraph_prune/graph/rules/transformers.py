"""Coupling rules for Hugging Face ``transformers`` layers (loaded lazily, once transformers is
imported: see ``registry.load_optional_rules``; the package never imports transformers itself).

* ``Conv1D`` (GPT-2, GPT, ...): a linear layer whose weight is stored transposed, ``(nx, nf)``,
  computed with ``torch.addmm``; kept whole as a leaf, so its ``nf``/``nx`` attributes are set
  from the pruned weight after surgery;
* mixture-of-experts ``*Experts`` modules (Mixtral, Qwen-MoE, DeepSeek, ...): hidden and inner
  widths prunable, the number of experts fixed.
"""
from __future__ import annotations

import torch

from ..registry import MODEL_SCANNERS, MODULE_RULES, WIDTH_RULES, module_rule
from ..values import TV, clean_track
from .layers import linear_core

try:
    from transformers.pytorch_utils import Conv1D as _Conv1D
except Exception:  # pragma: no cover - an old or broken transformers: no rules
    _Conv1D = None

if _Conv1D is not None:

    @module_rule(_Conv1D)
    def _conv1d(ctx, node, module, args, kwargs, out):
        w = ctx.param_tv(node.target, "weight", (0, 1))
        b = ctx.param_tv(node.target, "bias", (0,))
        # linear_core takes an (out, in) weight: view the stored (in, out) one transposed
        wt = TV((w.shape[1], w.shape[0]), {0: w.atoms(1), 1: w.atoms(0)}, origin=w.origin)
        return linear_core(ctx, args[0], wt, b, out)

    def _conv1d_widths(module, new):
        w = new.get("weight")
        return {} if w is None else {"nx": w.shape[0], "nf": w.shape[1]}

    WIDTH_RULES[_Conv1D] = _conv1d_widths


# -- mixture of experts -----------------------------------------------------------------------
# transformers 5 stores a layer's experts as 3-D tensors: ``gate_up_proj`` (E, 2F, H) and
# ``down_proj`` (E, H, F), run by a data-dependent loop over the experts the router picked (or a
# grouped matmul). The module is kept whole with this rule: the hidden width H and every
# expert's inner width F are prunable (position j of F goes in every expert at once, since the
# tensors are dense); the number of experts E, which the router's outputs index, stays.

def _experts(ctx, node, module, args, kwargs, out):
    x = args[0]
    gu = ctx.param_tv(node.target, "gate_up_proj", (0, 1, 2))
    dn = ctx.param_tv(node.target, "down_proj", (0, 1, 2))
    if not _experts_layout(module) or not isinstance(x, TV) or not isinstance(out, TV):
        ctx.freeze([args, kwargs, gu, dn], f"experts layout not understood at {ctx.where()}")
        return out
    e, f2, h = gu.shape
    ctx.freeze_dims(gu, [0], f"number of experts of {ctx.where()} (the router indexes them)")
    ctx.freeze_dims(dn, [0], f"number of experts of {ctx.where()} (the router indexes them)")
    ctx.freeze([args[1:], kwargs], f"router outputs read by {ctx.where()}")
    ctx.union(x.atoms(-1), gu.atoms(2), "experts input width")
    ctx.union(dn.atoms(1), gu.atoms(2), "experts output width (added into a copy of the input's shape)")
    inner = ctx.atoms.tie_along(gu.atoms(1).reshape(2, f2 // 2), (0,), f"gate and up halves of {ctx.where()}")
    ctx.union(inner, dn.atoms(2), "experts inner width")
    for bias, atoms in (("gate_up_proj_bias", gu.atoms(1)), ("down_proj_bias", dn.atoms(1))):
        b = ctx.param_tv(node.target, bias, (0, 1))
        if b is not None:
            ctx.freeze_dims(b, [0], f"number of experts of {ctx.where()}")
            ctx.union(b.atoms(1), atoms, "experts bias")
    track = {d: a for d, a in x.track.items() if d != x.ndim - 1}
    track[out.ndim - 1] = x.atoms(-1)
    out.track = clean_track(track)
    return out


def _experts_layout(module) -> bool:
    gu, dn = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3):
        return False
    e, f2, h = gu.shape
    return (not getattr(module, "is_transposed", False) and f2 % 2 == 0 and tuple(dn.shape) == (e, h, f2 // 2)
            and getattr(module, "intermediate_dim", f2 // 2) == f2 // 2 and getattr(module, "has_gate", True))


def _experts_widths(module, new):
    out = {}
    if "gate_up_proj" in new:
        out["intermediate_dim"] = new["gate_up_proj"].shape[1] // 2
        out["hidden_dim"] = new["gate_up_proj"].shape[2]
    return {k: v for k, v in out.items() if isinstance(getattr(module, k, None), int)}


def _scan_experts(model) -> None:
    """Register the experts rule for each ``*Experts`` class of this model with the layout above
    (a user's own rule for the class wins)."""
    for m in model.modules():
        cls = type(m)
        if cls.__name__.endswith("Experts") and cls not in MODULE_RULES and _experts_layout(m):
            MODULE_RULES[cls] = _experts
            WIDTH_RULES[cls] = _experts_widths


MODEL_SCANNERS.append(_scan_experts)
