"""MAC reduction at ``ratio=0.5`` against Torch-Pruning, on the torchvision classifiers.

    python bench/vs_tp_macs.py [--models resnet18,densenet121,...] [--timeout 180] [--out FILE.md]

Each model is built fresh (random weights, seed 0, eval mode) for each library, at its default
crop size (capped at ``--max-size``, 224 by default; ViTs at their own), and pruned once:

- **ours:** ``dp.prune(model, x, ratio=0.5)`` (L1, local ranking: every layer, each producer of a
  concatenation included, loses half its channels);
- **theirs:** ``tp.pruner.MagnitudePruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5,
  ignored_layers=<every layer with 1000 outputs>).step()`` (their documented one-shot recipe;
  their classifier must be named, ours stays whole by itself).

Both pruned models are measured by the same counter (``dp.count_ops``) and run once. Reported:
MAC reduction ``1 - after / before``, and the smallest kept fraction of any conv / linear layer
(out channels after / before, by module name) with that layer's name. A library that does not
finish in ``--timeout`` seconds, or whose pruned model does not run, is reported as such and
left out of its median. Runs in a single-threaded subprocess worker (``bench/_common.py``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def _widths(model):
    from torch import nn
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _build(name, max_size):
    import torch
    import torchvision
    from depgraph_prune.zoo import classification_size
    s = classification_size(name)
    if max_size and not name.startswith(("vit", "swin", "maxvit")):
        s = min(s, max_size)
    extra = {"image_size": s} if name.startswith("vit_") else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **extra).eval()
    return model, torch.randn(1, 3, s, s), s


def task_prune(lib, model, max_size=224):
    import time

    import torch
    from torch import nn

    import depgraph_prune as dp
    name = model
    model, x, size = _build(name, max_size)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    before = dp.count_ops(model, x).macs
    w0 = _widths(model)
    t = time.perf_counter()
    if lib == "ours":
        dp.prune(model, x, ratio=0.5)
    else:
        import torch_pruning as tp
        ignored = [m for m in model.modules()
                   if getattr(m, "out_features", None) == 1000 or getattr(m, "out_channels", None) == 1000]
        assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in ignored)
        tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=ignored).step()
    seconds = time.perf_counter() - t
    try:
        with torch.no_grad():
            ok = tuple(model(x).shape) == shape
        forward = "ok" if ok else "shape changed"
    except Exception as exc:
        return {"forward": C.short_error(exc), "seconds": seconds, "size": size}
    after = dp.count_ops(model, x).macs
    w1 = _widths(model)
    frac = sorted((w1[n] / w0[n], n) for n in w0 if n in w1 and w1[n] != w0[n])
    return {"forward": forward, "reduction": 1 - after / before, "seconds": seconds, "size": size,
            "min_kept": frac[0][0] if frac else 1.0, "min_layer": frac[0][1] if frac else ""}


def warmup():
    import torch

    import depgraph_prune as dp
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    dp.prune(m, torch.randn(1, 3, 8, 8), ratio=0.5)
    import torch_pruning  # noqa: F401


def default_models():
    import torchvision
    from torchvision.models import video
    vids = set(torchvision.models.list_models(module=video))
    return [n for n in torchvision.models.list_models(module=torchvision.models) if n not in vids]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated; default: every torchvision classifier")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per model and library")
    p.add_argument("--max-size", type=int, default=224)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--log", default=None, help="worker stderr goes here (default: discarded)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        C.serve({"prune": task_prune}, warmup=warmup)
        return
    models = [m for m in args.models.split(",") if m] or default_models()
    head = [C.machine_line(), f"command: python bench/vs_tp_macs.py {' '.join(sys.argv[1:])}"]
    print("\n".join(head), flush=True)
    worker = C.Worker(os.path.abspath(__file__), log_path=args.log)
    rows, red = [], {"ours": [], "theirs": []}
    try:
        for i, name in enumerate(models):
            cells = [name]
            for lib in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
                res = worker.call("prune", args.timeout, lib=lib, model=name, max_size=args.max_size)
                print(f"  {name:22} {lib:6} {res}", flush=True)
                if not res.get("ok"):
                    text = [res.get("error", "failed"), ""]
                elif res.get("forward") != "ok":
                    text = [f"forward fails ({res.get('forward')})", ""]
                else:
                    red[lib].append(res["reduction"])
                    text = [f"{res['reduction']:.1%}", f"{res['min_kept']:.2f} `{res['min_layer']}`"]
                res_lib = (lib, text)
                cells.append(res_lib)
            by = dict(cells[1:])
            rows.append([name, *by["ours"], *by["theirs"]])
    finally:
        worker.close()
    med = {k: (statistics.median(v) if v else None) for k, v in red.items()}
    lines = [C.table(["model", "ours: MACs down", "ours: smallest kept (layer)", "TP: MACs down",
                      "TP: smallest kept (layer)"], rows), "",
             f"median MAC reduction: ours {med['ours']:.1%} over {len(red['ours'])} models, "
             f"Torch-Pruning {med['theirs']:.1%} over {len(red['theirs'])} models"
             if med["ours"] is not None and med["theirs"] is not None else "median: n/a"]
    common = [r for r in rows if r[1].endswith("%") and r[3].endswith("%")]
    if common:
        o = statistics.median(float(r[1][:-1]) for r in common)
        t = statistics.median(float(r[3][:-1]) for r in common)
        lines.append(f"on the {len(common)} models both finish: ours {o:.1f}%, Torch-Pruning {t:.1f}%")
    print("\n" + "\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(head) + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
