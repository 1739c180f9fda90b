"""Measure a model's cost: multiply-accumulates of one forward pass and parameter count.

The MAC count comes from :class:`torch.utils.flop_counter.FlopCounterMode`, which sees every
aten matmul/conv/attention op actually dispatched, so it follows whatever the model's forward
really does (including after pruning surgery) rather than a table of per-module formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._fast_meta import on_meta, to_meta

__all__ = ["OpCount", "count_ops", "speedup"]


@dataclass(frozen=True)
class OpCount:
    """Cost of a model on a given input.

    ``macs``: multiply-accumulates of one forward pass on the example inputs.
    ``params``: number of unique parameter elements (a shared parameter is counted once).
    """

    macs: int
    params: int

    def __str__(self) -> str:
        return f"{_human(self.macs, 'MACs')}, {_human(self.params, 'params', sep=' ')}"


def _human(n: int, unit: str, sep: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{sep}{unit}"
    return f"{n} {unit}"


def _as_args(example_inputs) -> tuple[tuple, dict]:
    # A tuple/list is positional args, a dict is kwargs, anything else is the single argument.
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def count_ops(model: nn.Module, example_inputs) -> OpCount:
    """Count the MACs of one forward pass of ``model`` on ``example_inputs``, and its parameters.

    ``example_inputs`` is a tensor (single positional argument), a tuple/list of positional
    arguments, or a dict of keyword arguments. Nothing is moved between devices: the inputs must
    already live where the model does. The model is measured in eval mode (so e.g. BatchNorm
    running statistics are not touched) and every module's ``training`` flag is restored
    afterwards; no parameter, buffer or ``.grad`` is modified.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    >>> ops = count_ops(net, torch.randn(1, 3, 4, 4))
    >>> ops.macs == 8 * 3 * 9 * 16 + 128 * 10
    True
    >>> ops.params == 8 * 3 * 9 + 128 * 10 + 10
    True
    >>> print(ops)
    4.74 KMACs, 1.51 K params
    """
    args, kwargs = _as_args(example_inputs)
    # Remember each module's own flag: a model can mix train and eval submodules on purpose.
    flags = [(m, m.training) for m in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        # Under no_grad, eval-mode nn.MultiheadAttention / TransformerEncoderLayer would take a
        # fused native fast path (_native_multi_head_attention, _transformer_encoder_layer_fwd)
        # that FlopCounterMode has no formula for: whole blocks would count as zero MACs. With the
        # fast path off they run op by op. no_grad (rather than grad mode) keeps no activations.
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            # The count only needs shapes: on meta copies of the weights and inputs there is no
            # compute and no activation memory, and repeated ops are memoized. The memo counts
            # with FlopCounterMode's formulas itself (see _fast_meta.MetaMemo), every op,
            # memoized or not.
            margs, mkwargs = to_meta((args, kwargs))
            with torch.no_grad(), on_meta(model, count_flops=True) as memo:
                model(*margs, **mkwargs)
            flops = memo.flops
        except Exception:  # data-dependent code (x.item(), nonzero) needs the real tensors
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(*args, **kwargs)
            flops = counter.get_total_flops()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in flags:
            m.training = training
    macs = flops // 2  # FLOP formulas count 2 FLOPs per multiply-add
    # parameters() already de-duplicates shared Parameter objects; empty models give 0.
    params = sum(p.numel() for p in model.parameters())
    return OpCount(macs=int(macs), params=int(params))


def speedup(before: OpCount, after: OpCount) -> float:
    """Theoretical speed-up as the ratio of MACs, ``before.macs / after.macs``."""
    if after.macs == 0:
        raise ZeroDivisionError("speedup: the pruned model has 0 MACs")
    return before.macs / after.macs
