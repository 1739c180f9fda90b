"""On a CUDA GPU: prune in bfloat16 on the device, then time the dense and the pruned model.

    python bench/gpu_check.py [--budget 280] [--models resnet50,vit_b_16,llama]

For ResNet-50, ViT-B/16 (torchvision, random init) and a small Llama-architecture decoder
(bench/_llama.py: hidden 1024, MLP 2816, 8 layers, 16 query / 4 key-value heads, 128 tokens), each
built in bfloat16 on ``cuda``:

1. ``dp.prune(model, x, ratio=0.5)`` (the Llama: half of every MLP, a quarter of the key/value
   heads) with the model and its example input on the GPU: graph, scores, surgery and the
   checks run on the model's own device and dtype. The script checks that every parameter is
   still on the GPU in bfloat16 afterwards (nothing moved to the CPU) and that the pruned model
   runs.
2. Latency of the dense copy and the pruned model, interleaved, at batch 1, 64 and 256 (CUDA
   events, warm-up first, median of the timed iterations; ``torch.inference_mode``).
3. The realized speedup (dense / pruned latency) next to the MAC speedup ``dp.prune`` reports.

The whole script keeps to ``--budget`` seconds (default 280, under 5 minutes): each latency cell
gets a share of it and times as many iterations as fit. Without a CUDA device it prints why and
exits with status 0: the project never needs a GPU.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _build(name, dev, dtype):
    import torch
    import torchvision
    import _llama as L
    torch.manual_seed(0)
    if name == "llama":
        shape = L.LlamaShape(vocab=32000, hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=4, seq=128)
        model = L.build(shape, dtype=dtype, device=dev)
        make = lambda b: torch.randint(0, shape.vocab, (b, shape.seq), device=dev)  # noqa: E731
        return model, make, dict(ratios=L.RATIOS)
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    model = model.to(dtype).to_empty(device=dev)
    with torch.no_grad():  # random init directly on the device, in bfloat16
        for n, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
            elif n.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.fill_(1.0)
            elif b.is_floating_point():
                b.zero_()
    cls = {"resnet50": "fc", "vit_b_16": "heads.head"}[name]
    make = lambda b: torch.randn(b, 3, 224, 224, device=dev, dtype=dtype)  # noqa: E731
    return model.eval(), make, dict(ratio=0.5, ignored_layers=[cls])


def _latency(model, x, seconds):
    """Median milliseconds of ``model(x)`` over as many iterations as fit in ``seconds``."""
    import torch
    cuda = x.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if cuda:
            torch.cuda.synchronize()
        times, start = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 200):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model(x)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                model(x)
                times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=280.0, help="seconds for the whole script")
    p.add_argument("--models", default="resnet50,vit_b_16,llama")
    p.add_argument("--batches", default="1,64,256")
    p.add_argument("--device", default="cuda", help="cuda; 'cpu' only to smoke-test this script without a GPU")
    args = p.parse_args()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_check.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure. "
              "Run it on a machine with a GPU.")
        return 0
    import warnings
    warnings.filterwarnings("ignore")
    import _common as C
    import depgraph_prune as dp
    t_start = time.perf_counter()
    dev, dtype = args.device, torch.bfloat16
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",")]
    where = f"GPU {torch.cuda.get_device_name(0)} · CUDA {torch.version.cuda}" if dev == "cuda" else f"device {dev}"
    print(f"{C.machine_line()} · {where}", flush=True)
    rows, problems = [], []
    cell = max(0.5, (args.budget * 0.6) / (len(models) * len(batches) * 2))
    for name in models:
        try:
            model, make, kw = _build(name, dev, dtype)
            dense = copy.deepcopy(model)
            x = make(1)
            sync()
            t = time.perf_counter()
            result = dp.prune(model, x, importance="l2", **kw)
            sync()
            prune_s = time.perf_counter() - t
            moved = [n for n, q in list(model.named_parameters()) + list(model.named_buffers())
                     if q.is_floating_point() and (q.device.type != torch.device(dev).type or q.dtype != dtype)]
            if moved:
                problems.append(f"{name}: {len(moved)} tensors left the GPU or bfloat16 (e.g. {moved[0]})")
            print(f"  {name}: dp.prune {prune_s:.1f} s on {dev}, MAC speedup {result.speedup:.2f}×", flush=True)
            for b in batches:
                if time.perf_counter() - t_start > args.budget:
                    problems.append(f"{name} batch {b}: skipped, over the {args.budget:.0f} s budget")
                    continue
                xb = make(b)
                ld, lp = _latency(dense, xb, cell), _latency(model, xb, cell)
                ld2 = _latency(dense, xb, cell / 2)  # interleave: dense again after the pruned run
                ld = min(ld, ld2)
                rows.append([name, b, f"{prune_s:.1f}", f"{ld:.2f}", f"{lp:.2f}", f"{ld / lp:.2f}×",
                             f"{result.speedup:.2f}×"])
                print(f"    batch {b}: dense {ld:.2f} ms, pruned {lp:.2f} ms", flush=True)
            del model, dense
            if dev == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # report and go on with the next model
            problems.append(f"{name}: {C.short_error(exc)}")
            print(f"  {name}: FAILED {C.short_error(exc)}", flush=True)
    print()
    print(C.table(["model", "batch", "prune s", "dense ms", "pruned ms", "realized speedup", "MAC speedup"], rows))
    for msg in problems:
        print(f"problem: {msg}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
