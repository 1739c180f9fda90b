"""Realized speedup: measured CPU latency of pruned models next to their MAC speedup.

    python bench/latency.py [--quick] [--models resnet50,mobilenet_v2,vit_b_16] [--targets 1.5,2,3]
                            [--batches 1,16] [--formats nchw,channels_last] [--repeat 7]

Each model (random weights, eval mode, 224×224) is pruned by ``dp.prune(model, x,
target_speedup=S, importance="l2", ignored_layers=[classifier], round_to=R)`` for every target S
and R in {None, 8}. Then, for every batch size and memory format (NCHW, channels_last), the dense
model and all its pruned variants are timed *interleaved* (one forward of each per round, the
starting variant rotating; ``torch.inference_mode``, one thread, 2 untimed warm-up forwards per
variant), ``--repeat`` rounds; latency speedup = median dense latency / median pruned latency,
measured side by side. ``--quick``: only S = 2, batch 1 (both formats, both round_to).

GPU latency is not measured: this machine has no GPU (the script says so and skips it).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,mobilenet_v2,vit_b_16")
    p.add_argument("--targets", default="1.5,2,3")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--formats", default="nchw,channels_last")
    p.add_argument("--round-to", default="none,8", help="comma list of round_to values ('none' = not given)")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per (model, batch, format)")
    p.add_argument("--quick", action="store_true", help="targets 2 only, batch 1 only")
    args = p.parse_args()
    if args.quick:
        args.targets, args.batches = "2", "1"
    C.single_thread()
    warnings.filterwarnings("ignore")
    import depgraph_prune as dp

    targets = [float(t) for t in args.targets.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    formats = args.formats.split(",")
    rounds = [None if r.lower() == "none" else int(r) for r in args.round_to.split(",")]
    print(C.machine_line(), flush=True)
    print(f"command: python bench/latency.py {' '.join(sys.argv[1:])}", flush=True)
    if not torch.cuda.is_available():
        print("GPU part skipped: no CUDA device on this machine.", flush=True)

    all_rows = []
    for name in args.models.split(","):
        dense, x1, cls = C.make_model(name)
        variants = [("dense", None, None, 1.0, dense)]
        for s in targets:
            for rt in rounds:
                m, x, _ = C.make_model(name)
                t = time.perf_counter()
                try:
                    r = dp.prune(m, x, target_speedup=s, importance="l2", ignored_layers=[cls], round_to=rt)
                except Exception as exc:
                    print(f"  {name} target {s} round_to {rt}: prune failed: {C.short_error(exc)}", flush=True)
                    continue
                sec = time.perf_counter() - t
                print(f"  {name} target {s}× round_to {rt}: MAC speedup {r.speedup:.2f}× "
                      f"(params {r.after.params / r.before.params:.0%}), pruned in {sec:.1f} s", flush=True)
                variants.append((f"{s:g}×", s, rt, r.speedup, m))
        lat = {}  # (variant index, batch, fmt) -> median seconds
        for b in batches:
            for fmt in formats:
                xb = torch.randn(b, 3, x1.shape[-2], x1.shape[-1])
                mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                xb = xb.contiguous(memory_format=mf)
                for *_, m in variants:
                    m.to(memory_format=mf)
                times = {i: [] for i in range(len(variants))}
                with torch.inference_mode():
                    for i, (*_, m) in enumerate(variants):
                        for _ in range(2):
                            m(xb)
                    for r in range(args.repeat):
                        k = r % len(variants)
                        for i in list(range(k, len(variants))) + list(range(k)):
                            t = time.perf_counter()
                            variants[i][-1](xb)
                            times[i].append(time.perf_counter() - t)
                for i in times:
                    lat[(i, b, fmt)] = statistics.median(times[i])
                base = lat[(0, b, fmt)]
                print(f"  {name} batch {b} {fmt}: dense {1000 * base:.0f} ms; " + ", ".join(
                    f"{v[0]}/rt={v[2]} {base / lat[(i, b, fmt)]:.2f}×" for i, v in enumerate(variants) if i), flush=True)
        for i, (label, s, rt, macsp, _) in enumerate(variants):
            row = [name, label if s else "dense", "—" if s is None else ("8" if rt == 8 else ("none" if rt is None else rt)),
                   f"{macsp:.2f}×"]
            for b in batches:
                for fmt in formats:
                    if i == 0:
                        row.append(f"1.00× ({1000 * lat[(0, b, fmt)]:.0f} ms)")
                    else:
                        row.append(f"{lat[(0, b, fmt)] / lat[(i, b, fmt)]:.2f}×")
            all_rows.append(row)
        del variants, dense
        gc.collect()
    headers = ["model", "target", "round_to", "MAC speedup"] + [f"latency speedup b{b} {fmt}" for b in batches
                                                                 for fmt in formats]
    print()
    print(f"CPU, 1 thread, median of {args.repeat} interleaved rounds; dense row: its median latency in ms "
          "(context only, the machine is shared)")
    print(C.table(headers, all_rows))


if __name__ == "__main__":
    main()
