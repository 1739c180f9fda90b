"""Coverage sweep over the torchvision model zoo: prune each model in one call and write a table.

    python bench/zoo.py [--family resnet] [--ratio 0.5] [--out docs/zoo.md] [--kind classification]

A model passes when the pruned forward works, the output shape (or structure) is unchanged and
MACs fell by at least ``--min-reduction`` (default 0.40 for classification CNNs).
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch
import torchvision

import depgraph_prune as dp


def input_size(name: str, weights_enum) -> int:
    try:
        return int(weights_enum.DEFAULT.transforms().crop_size[0])
    except Exception:
        return 299 if "inception" in name else 224


def structure(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: structure(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [structure(v) for v in out]
    return type(out).__name__


def run(name: str, ratio: float, min_reduction: float, max_size: int | None):
    weights = torchvision.models.get_model_weights(name)
    size = input_size(name, weights)
    if max_size:
        size = min(size, max_size)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = structure(model(x))
    t = time.perf_counter()
    result = dp.prune(model, x, ratio=ratio)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        out = structure(model(x))
    reduction = 1 - result.after.macs / result.before.macs
    ok = out == ref and reduction >= min_reduction
    why = "" if ok else ("output changed" if out != ref else f"MACs down only {reduction:.1%}")
    return ok, why, size, result, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--family", default="", help="only models whose name contains this")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--min-reduction", type=float, default=0.40)
    p.add_argument("--max-size", type=int, default=None, help="cap the input resolution (faster sweeps)")
    p.add_argument("--out", default="docs/zoo.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = [n for n in torchvision.models.list_models(module=torchvision.models) if args.family in n]
    rows, passed = [], 0
    try:
        from tqdm import tqdm
        it = tqdm(names)
    except ImportError:  # pragma: no cover
        it = names
    for name in it:
        try:
            ok, why, size, r, sec = run(name, args.ratio, args.min_reduction, args.max_size)
            rows.append(f"| {name} | {'pass' if ok else 'FAIL: ' + why} | {size} | {r.before.macs / 1e9:.3f} | "
                        f"{r.after.macs / 1e9:.3f} | {r.speedup:.2f}x | {r.before.params / 1e6:.2f} | "
                        f"{r.after.params / 1e6:.2f} | {sec:.1f} |")
            passed += ok
        except Exception as exc:  # a crash is a result too
            rows.append(f"| {name} | FAIL: {type(exc).__name__}: {str(exc)[:80]} | | | | | | | |")
        print(rows[-1], flush=True)
    header = [f"# Zoo coverage (ratio {args.ratio}, random weights, L1)", "",
              f"{datetime.date.today()} · torch {torch.__version__} · torchvision {torchvision.__version__} · "
              f"`python bench/zoo.py --family '{args.family}' --ratio {args.ratio}`", "",
              f"**{passed} / {len(names)} pass** (forward works, output unchanged, MACs down ≥ {args.min_reduction:.0%}).", "",
              "| model | result | input | GMACs before | GMACs after | speedup | M params before | M params after | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    with open(args.out, "w") as f:
        f.write("\n".join(header + rows) + "\n")
    print(f"{passed}/{len(names)} pass; table written to {args.out}")


if __name__ == "__main__":
    main()
