"""Diagnostics used by the regularization papers.

* :func:`mean_jsv`: trainability metric of TPP, the mean singular value of the per-sample
  input-output Jacobian of the logits.
* :func:`filter_norm_separation`: GReg-2's Figure 1 quantity, std / mean of a layer's filter L1
  norms (it grows as a uniform L2 penalty grows).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

__all__ = ["jacobian_singular_values", "mean_jsv", "filter_l1_norms", "filter_norm_separation"]


def _first_tensor(inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], torch.Tensor):
        return inputs[0]
    raise TypeError("inputs must be a tensor (or a tuple/list whose first element is the input tensor)")


def jacobian_singular_values(model: nn.Module, inputs: Any, *, eval_mode: bool = True) -> torch.Tensor:
    """Singular values of the Jacobian of the logits w.r.t. the input, one row per sample:
    shape ``(B, min(K, D))`` for ``K`` logits and ``D`` input features.

    The Jacobians come from ``K`` backward passes with one-hot output gradients (row ``k`` of every
    sample's Jacobian at once; this needs samples to be independent, hence ``eval_mode=True``
    puts the model in eval mode for the call and restores every module's flag afterwards).
    Other positional inputs (a tuple) are passed through unchanged; the first one is differentiated.
    """
    x0 = _first_tensor(inputs)
    rest = tuple(inputs[1:]) if isinstance(inputs, (tuple, list)) else ()
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    try:
        with torch.enable_grad():
            x = x0.detach().clone().requires_grad_(True)
            y = model(x, *rest)
            if y.dim() != 2:
                y = y.reshape(y.shape[0], -1)
            b, k = y.shape
            rows = []
            for j in range(k):
                g = torch.zeros_like(y)
                g[:, j] = 1.0
                (gx,) = torch.autograd.grad(y, x, grad_outputs=g, retain_graph=j < k - 1)
                rows.append(gx.reshape(b, -1))
        jac = torch.stack(rows, dim=1)  # (B, K, D)
        return torch.linalg.svdvals(jac.double()).to(jac.dtype)
    finally:
        for m, t in modes:
            m.training = t


def mean_jsv(model: nn.Module, inputs: Any, *, eval_mode: bool = True) -> float:
    """Mean Jacobian singular value (JSV) over a batch: the mean of all singular values of every
    sample's logits-vs-input Jacobian (see :func:`jacobian_singular_values`).

    For a linear MLP it is the mean singular value of the product of its weight matrices.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
        >>> prod = net[1].weight @ net[0].weight
        >>> abs(mean_jsv(net, torch.randn(5, 4)) - torch.linalg.svdvals(prod).mean().item()) < 1e-5
        True
    """
    return float(jacobian_singular_values(model, inputs, eval_mode=eval_mode).double().mean())


def filter_l1_norms(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``||W_j||_1`` for every filter ``j`` along ``dim`` (the output-channel dim, 0 for conv and
    linear weights)."""
    w = weight.detach()
    return w.movedim(dim, 0).reshape(w.shape[dim], -1).abs().sum(1)


def _separation(norms: torch.Tensor) -> float:
    norms = norms.double()
    mean = norms.mean()
    if mean == 0:
        return float("nan")
    return float(norms.std(unbiased=False) / mean)


def _producer_of(group) -> tuple[str, str, int]:
    """(module name, parameter qualname, dim) of a group's producing weight: the first ``param``
    member with dim 0, else the first ``param`` member."""
    params = [m for m in group.members if m.kind == "param"]
    if not params:
        raise ValueError(f"group {group.index} has no parameter member")
    m = next((m for m in params if m.dim == 0), params[0])
    return m.name.rpartition(".")[0], m.name, m.dim


def filter_norm_separation(model: nn.Module, groups_or_names) -> dict[str, float]:
    """Per layer, ``std / mean`` of its filter L1 norms (population std), keyed by module name.

    ``groups_or_names``: module names (their ``.weight``, filters along dim 0; along dim 1 for
    transposed convs), :class:`~depgraph_prune.graph.Group` objects (their producing weight: the
    first parameter member with dim 0), a mapping whose keys are such names, or a single one.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1., 1., 1.], [3., 3., 3.]]))
        >>> filter_norm_separation(net, ["0"])  # norms 3 and 9: std 3, mean 6
        {'0': 0.5}
    """
    if isinstance(groups_or_names, (str,)) or not isinstance(groups_or_names, Iterable):
        groups_or_names = [groups_or_names]
    if isinstance(groups_or_names, Mapping):
        groups_or_names = list(groups_or_names)
    out: dict[str, float] = {}
    for item in groups_or_names:
        if isinstance(item, str):
            mod = model.get_submodule(item)
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise ValueError(f"module {item!r} has no weight tensor")
            dim = 1 if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
            out[item] = _separation(filter_l1_norms(w, dim))
        else:
            name, qual, dim = _producer_of(item)
            owner, _, attr = qual.rpartition(".")
            w = getattr(model.get_submodule(owner) if owner else model, attr)
            out[name] = _separation(filter_l1_norms(w, dim))
    return out
