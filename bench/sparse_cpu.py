"""What unstructured sparsity does (not) buy on a CPU, measured side by side, one thread.

    python bench/sparse_cpu.py [--rounds 15] [--size 112] [--batch 8]

1. **Whole model, dense kernels.** ResNet-18 inference (batch ``--batch``, ``--size``² images),
   dense vs the same model with 90 % of every conv / linear weight zeroed by ``dp.sparsify``:
   PyTorch's dense conv and matmul kernels do the same work whatever the values are.
2. **One linear layer, sparse kernel.** ``y = W x`` for a 2048 x 2048 ``W`` and 64 columns:
   dense ``torch.mm`` vs ``torch.sparse.mm`` on ``W`` in CSR form, at 80 / 90 / 95 / 99 % sparsity.
3. **Cost of keeping the masks.** One training step of ResNet-18 (SGD, momentum 0.9, weight decay)
   with and without the ``dp.keep_masks`` post-step hook; and the hook alone
   (``dp.apply_masks(model, optimizer)``) relative to the plain step.

Contenders alternate round by round; medians; ratios are against the dense baseline of the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as B  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rounds(contenders: dict, rounds: int, warmup: int = 2) -> dict:
    out = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            dt = _time(contenders[k])
            if r >= warmup:
                out[k].append(dt)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv=None):
    import torchvision
    import depgraph_prune as dp
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args(argv)
    B.single_thread()
    print(B.machine_line())
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)

    # 1. whole model, dense kernels
    dense = torchvision.models.resnet18().eval()
    sparse = torchvision.models.resnet18().eval()
    sparse.load_state_dict(dense.state_dict())
    rep = dp.sparsify(sparse, 0.9)
    with torch.no_grad():
        med = _rounds({"dense": lambda: dense(x), "90% sparse": lambda: sparse(x)}, a.rounds)
    print(f"\n1. ResNet-18 inference, batch {a.batch} at {a.size}px ({rep.sparsity:.0%} of conv/linear weights zero)")
    print(B.table(["model", "median", "vs dense"],
                  [[k, B.fmt_s(v, 4), B.fmt_ratio(med["dense"] / v)] for k, v in med.items()]))

    # 2. one linear layer: dense mm vs CSR sparse mm
    n, cols = 2048, 64
    W = torch.randn(n, n)
    xs = torch.randn(n, cols)
    rows = []
    for s in (0.8, 0.9, 0.95, 0.99):
        Ws = W.clone()
        Ws[us_mask(Ws, s)] = 0
        csr = Ws.to_sparse_csr()
        assert torch.allclose(torch.sparse.mm(csr, xs), Ws @ xs, atol=1e-3, rtol=1e-4)
        med = _rounds({"dense": lambda: Ws @ xs, "csr": lambda: torch.sparse.mm(csr, xs)}, a.rounds)
        rows.append([f"{s:.0%}", B.fmt_s(med["dense"], 5), B.fmt_s(med["csr"], 5), B.fmt_ratio(med["dense"] / med["csr"])])
    print(f"\n2. W x, W {n}x{n}, x {n}x{cols}: dense torch.mm vs torch.sparse.mm on CSR (speed-up > 1: CSR faster)")
    print(B.table(["sparsity", "dense", "CSR", "speed-up"], rows))

    # 3. training step with and without the mask hook
    def make():
        torch.manual_seed(0)
        m = torchvision.models.resnet18()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return m, opt
    y = torch.randint(0, 1000, (a.batch,))
    m1, o1 = make()
    m2, o2 = make()
    dp.sparsify(m1, 0.9)
    dp.sparsify(m2, 0.9, optimizer=o2)
    hook_times = []

    def step(m, o):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()

    def hooked():
        step(m2, o2)

    def plain():
        step(m1, o1)
        hook_times.append(_time(lambda: dp.apply_masks(m1, o1)))  # the hook's work, timed alone

    med = _rounds({"step, no hook": plain, "step + keep_masks hook": hooked}, max(5, a.rounds // 3), warmup=1)
    hook = statistics.median(hook_times)
    base = med["step, no hook"] - hook  # `plain` also ran the masks once, to time them
    print(f"\n3. ResNet-18 training step, batch {a.batch} at {a.size}px, SGD momentum + weight decay")
    print(B.table(["variant", "median"], [["step without masks", B.fmt_s(base, 4)],
                                          ["step + keep_masks hook", B.fmt_s(med["step + keep_masks hook"], 4)],
                                          ["apply_masks alone", B.fmt_s(hook, 5)]]))
    print(f"hook overhead: {hook / base:.1%} of a step")


def us_mask(W: torch.Tensor, s: float) -> torch.Tensor:
    from depgraph_prune.unstructured import n_to_prune, smallest_k
    return smallest_k(W.abs(), n_to_prune(s, W.numel()))


if __name__ == "__main__":
    main()
