"""Shared helpers of the ``examples/exp_*.py`` experiments: the digits data, training loops with
an optional :class:`~depgraph_prune.regularize.RegularizedPruner`, evaluation, result files.

Data: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 grey images, no download), scaled to
[0, 1], bilinearly upsampled, standardized with the training mean / std, split once with a fixed
seed (stratified, 1,297 train / 500 test).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("depgraph_prune") is None:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join(ROOT, "docs", "img")
SPLIT_SEED = 0
N_TEST = 500


def setup_threads(n: int = 1) -> None:
    """Small models on a shared machine: one intra-op thread is fastest and fair to neighbours."""
    torch.set_num_threads(n)


def load_digits_split(size: int = 16, channels: int = 1, flatten: bool = False):
    """``(x_train, y_train, x_test, y_test)`` as tensors: images ``(N, channels, size, size)``
    (grey repeated over ``channels``), or ``(N, size*size)`` with ``flatten``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=N_TEST, random_state=SPLIT_SEED, stratify=d.target)
    tr, te = torch.as_tensor(np.sort(tr)), torch.as_tensor(np.sort(te))
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    if channels > 1:
        x = x.repeat(1, channels, 1, 1)
    if flatten:
        x = x.reshape(len(x), -1)
    return x[tr].contiguous(), y[tr], x[te].contiguous(), y[te]


def batches(x, y, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        j = perm[i:i + batch_size]
        yield x[j], y[j]


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 500) -> float:
    """Test accuracy in percent (eval mode; the previous mode is restored)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was)
    return 100.0 * correct / len(y)


def sgd(model, lr: float, weight_decay: float, momentum: float = 0.9):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def step_lr(base: float, milestones, epoch: int) -> float:
    """``base`` divided by 10 at each milestone epoch reached."""
    return base * 0.1 ** sum(epoch >= m for m in milestones)


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train(model, data, epochs: int, lr: float, milestones=(), weight_decay: float = 5e-4,
          batch_size: int = 64, seed: int = 0, on_epoch: Callable | None = None) -> None:
    """Plain SGD (momentum 0.9) with a step schedule; ``on_epoch(epoch)`` after each epoch
    (1-based)."""
    xtr, ytr = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    opt = sgd(model, lr, weight_decay)
    model.train()
    for ep in range(epochs):
        set_lr(opt, step_lr(lr, milestones, ep))
        for xb, yb in batches(xtr, ytr, batch_size, gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(ep + 1)


def regularize(model, pruner, data, lr: float, weight_decay: float = 5e-4, batch_size: int = 64,
               seed: int = 0, max_iters: int | None = None, on_update: Callable | None = None) -> int:
    """The training-loop companion pattern at a constant LR until ``pruner.done`` (or ``max_iters``):
    ``loss + pruner.penalty()`` → backward → ``pruner.regularize()`` → step → ``pruner.step()``.
    Returns the number of iterations."""
    xtr, ytr = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    opt = sgd(model, lr, weight_decay)
    model.train()
    it = 0
    while not pruner.done and (max_iters is None or it < max_iters):
        for xb, yb in batches(xtr, ytr, batch_size, gen):
            loss = F.cross_entropy(model(xb), yb) + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            pruner.regularize()
            opt.step()
            pruner.step()
            it += 1
            if on_update is not None:
                on_update(it)
            if pruner.done or (max_iters is not None and it >= max_iters):
                break
    return it


def mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt(values, digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def out_path(a, name: str, ext: str) -> str:
    """``<out>/<name>[_<tag>].<ext>``."""
    tag = getattr(a, "tag", "")
    return os.path.join(a.out, f"{name}{'_' + tag if tag else ''}.{ext}")


def write_result(a, name: str, payload: dict) -> str:
    os.makedirs(a.out, exist_ok=True)
    path = out_path(a, name, "json")
    payload = dict(payload)
    payload.setdefault("environment", environment())
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    return path


def load_result(a, name: str):
    """``(args of the stored run, payload)`` for ``--replot`` (output paths from the command line)."""
    import argparse
    with open(out_path(a, name, "json")) as f:
        payload = json.load(f)
    stored = argparse.Namespace(**payload["args"])
    stored.out, stored.tag = a.out, a.tag
    return stored, payload


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(type(o))


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt().close(fig)


def add_output_args(p) -> None:
    """The options every experiment script shares: result-file suffix, replot, quiet."""
    p.add_argument("--tag", default="", help="suffix of the result / plot file names (variants)")
    p.add_argument("--replot", action="store_true", help="redraw the plot from the existing result JSON, no training")
    p.add_argument("--quiet", action="store_true")


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


def nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
