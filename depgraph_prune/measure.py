"""Measure a model's cost: multiply-accumulates of one forward pass and parameter count.

The MAC count comes from :class:`torch.utils.flop_counter.FlopCounterMode`, which sees every
aten matmul/conv/attention op actually dispatched, so it follows whatever the model's forward
really does (including after pruning surgery) rather than a table of per-module formulas.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._fast_meta import MetaMemo, to_meta
from ._walk import modules

__all__ = ["OpCount", "count_ops", "speedup", "measure_latency"]


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
    from .trace.inputs import normalize_inputs
    from .trace.symbolic import detached
    args, kwargs = normalize_inputs(example_inputs)
    # Remember each module's own flag: a model can mix train and eval submodules on purpose.
    flags = [(m, m.training) for m in modules(model)]
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
            # memoized or not. Run on a detached copy: what forward caches on ``self`` stays off
            # the model.
            margs, mkwargs = to_meta((args, kwargs))
            memo = MetaMemo(count_flops=True)
            with torch.no_grad(), detached(model, memo=memo) as twin:
                twin(*margs, **mkwargs)
            flops = memo.flops
        except Exception:  # data-dependent code (x.item(), nonzero) needs the real tensors
            with torch.no_grad(), detached(model, meta=False) as twin, \
                    FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
                twin(*args, **kwargs)
            flops = counter.get_total_flops()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in flags:
            m.training = training
    macs = flops // 2  # FLOP formulas count 2 FLOPs per multiply-add
    # parameters() already de-duplicates shared Parameter objects; empty models give 0.
    params = sum(p.numel() for p in model.parameters())
    return OpCount(macs=int(macs), params=int(params))


def _extra_formulas() -> dict:
    """Formulas ``FlopCounterMode`` lacks (on shapes): CPU attention's flash kernel, which
    ``scaled_dot_product_attention`` runs on the CPU without a mask."""
    from ._fast_meta import _flop_registry
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    formula = _flop_registry().get(op) if op is not None else None
    if formula is None:
        return {}

    def on_tensors(*args, **kwargs):  # the registry's formulas take tensors already
        return formula(*args, **kwargs)
    on_tensors._get_raw = True
    return {op: on_tensors}


def speedup(before: OpCount, after: OpCount) -> float:
    """Theoretical speed-up as the ratio of MACs, ``before.macs / after.macs``."""
    if after.macs == 0:
        raise ZeroDivisionError("speedup: the pruned model has 0 MACs")
    return before.macs / after.macs


def measure_latency(model: nn.Module, example_inputs, repeat: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass of ``model`` on ``example_inputs``, in milliseconds.

    Runs ``warmup`` untimed passes, then ``repeat`` timed ones, in eval mode under
    ``torch.inference_mode()`` with one torch thread (timings on a shared machine are noisy with
    more; compare models measured side by side). The thread count and every module's
    ``training`` flag are restored afterwards. Inputs are used where they are: put model and
    inputs on the device to time (on CUDA the call synchronizes before reading the clock).

    >>> import torch
    >>> from torch import nn
    >>> ms = measure_latency(nn.Linear(64, 64), torch.randn(8, 64), repeat=3)
    >>> ms > 0
    True
    """
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"measure_latency: repeat must be a positive integer, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"measure_latency: warmup must be a non-negative integer, got {warmup!r}")
    from .trace.inputs import normalize_inputs
    args, kwargs = normalize_inputs(example_inputs)
    cuda = any(t.is_cuda for t in list(model.parameters())[:1]) and torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    threads = torch.get_num_threads()
    flags = [(m, m.training) for m in modules(model)]
    times = []
    try:
        torch.set_num_threads(1)
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args, **kwargs)
            sync()
            for _ in range(repeat):
                t = time.perf_counter()
                model(*args, **kwargs)
                sync()
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
        for m, f in flags:
            m.training = f
    return statistics.median(times) * 1000.0
