"""Peak resident memory while pruning, relative to the model's weight size.

    python bench/memory.py                      # ViT-L/16, ratio 0.5, one dp.prune call
    python bench/memory.py --model resnet50 --phases

Measures (Linux, from /proc/self/status; the peak ``VmHWM`` is reset through
``/proc/self/clear_refs`` before each measured step):

* ``weights``: bytes of the model's parameters and buffers (W);
* ``base``: resident memory after the imports, before the model is built;
* ``peak``: the highest resident memory while pruning.

and prints ``(peak - base) / W``: the model itself plus everything pruning needs on top of it,
in units of the model's weights (goal: < 1.3), and ``(peak - rss with the model) / W``, the
pruning overhead alone. glibc's dynamic mmap threshold makes freed medium-sized blocks stay
resident; ``MALLOC_MMAP_THRESHOLD_=131072 python bench/memory.py`` measures without that effect.
``--phases`` breaks the pipeline into build_graph, count_ops, scoring +
plan and surgery, with the peak of each.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import torch
import torchvision

import depgraph_prune as dp
from depgraph_prune.plan import group_ratios, local_plan

MiB = 2 ** 20


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss() -> int:
    v = _status("VmRSS")
    if v is None:  # not Linux: the best we have is the lifetime peak
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
    return v


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak() -> int:
    v = _status("VmHWM")
    return v if v is not None else rss()


def measure(label, fn, rows, with_model):
    gc.collect()
    start = rss()
    reset_peak()
    t = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t
    p = peak()
    rows.append((label, p, sec))
    print(f"  {label:<22} peak {p / MiB:9.1f} MiB  (+{(p - with_model) / MiB:7.1f} MiB over the model, "
          f"+{(p - start) / MiB:7.1f} over this step's start)  {sec:6.1f}s", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_l_16")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--phases", action="store_true", help="measure each pipeline step separately")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--goal", type=float, default=1.3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not reset_peak():
        print("note: /proc/self/clear_refs is not writable: peaks are lifetime peaks (less precise)")
    gc.collect()
    base = rss()
    model = torchvision.models.get_model(args.model, weights=None).eval()
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    x = torch.randn(1, 3, args.size, args.size)
    gc.collect()
    with_model = rss()
    print(f"{args.model}: weights {weights / MiB:.1f} MiB; rss base {base / MiB:.1f} MiB, "
          f"with model {with_model / MiB:.1f} MiB (+{(with_model - base) / MiB:.1f})", flush=True)
    rows = []
    if args.phases:
        graph = measure("build_graph", lambda: dp.build_graph(model, x), rows, with_model)
        measure("count_ops", lambda: dp.count_ops(model, x), rows, with_model)
        scorer = dp.importance.resolve(args.importance)
        plan = measure("scores + plan", lambda: local_plan(graph, scorer, group_ratios(graph, args.ratio, None)),
                       rows, with_model)
        measure("surgery (graph.prune)", lambda: graph.prune(plan), rows, with_model)
        del graph, plan
    else:
        result = measure("dp.prune", lambda: dp.prune(model, x, ratio=args.ratio, importance=args.importance),
                         rows, with_model)
        print(f"  speedup {result.speedup:.2f}x, params {result.before.params / 1e6:.1f}M -> "
              f"{result.after.params / 1e6:.1f}M")
    gc.collect()
    after = rss()
    print(f"  resident after pruning: {after / MiB:.1f} MiB (+{(after - base) / MiB:.1f} MiB over base; "
          f"the pruned weights are {sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / MiB:.1f} MiB)")
    top = max(p for _, p, _ in rows)
    ratio = (top - base) / weights
    overhead = (top - with_model) / weights
    print(f"peak {top / MiB:.1f} MiB; (peak - base) / weights = {ratio:.3f} "
          f"(goal < {args.goal}: {'met' if ratio < args.goal else 'NOT met'}); "
          f"pruning overhead over the loaded model = {overhead:.3f} x weights")
    return 0 if ratio < args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
