"""``dp.prune(..., steps=k)``: each round's graph derived from the last (no re-trace) against
re-tracing every round, side by side.

    python bench/steps_reuse.py [--model resnet50] [--steps 5] [--repeat 3]

Both variants run in this process, alternately, on fresh models (construction not timed), one
thread, L2 magnitude, ratio 0.5 reached in ``--steps`` rounds. "re-trace" is the same call
with the graph derivation switched off (``depgraph_prune.prune.after_prune`` returns None), which
is what every round did before. Both must prune identically (checked: same kept channels).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    C.single_thread()
    import depgraph_prune as dp
    P = importlib.import_module("depgraph_prune.prune")
    real = P.after_prune
    print(C.machine_line(), flush=True)
    times = {"reuse": [], "re-trace": []}
    kept = {}

    def run(variant):
        m, x, cls = C.make_model(args.model)
        P.after_prune = real if variant == "reuse" else (lambda graph, record: None)
        gc.collect()
        try:
            t = time.perf_counter()
            r = dp.prune(m, x, ratio=0.5, steps=args.steps, importance="l2", ignored_layers=[cls])
            sec = time.perf_counter() - t
        finally:
            P.after_prune = real
        kept.setdefault(variant, [rec["kept"] for rec in r.records])
        return sec

    run("reuse")  # warm-up (imports, first trace)
    kept.clear()
    for i in range(args.repeat):
        for v in (("reuse", "re-trace") if i % 2 == 0 else ("re-trace", "reuse")):
            times[v].append(run(v))
            print(f"  run {i + 1}/{args.repeat} {v:9}: {times[v][-1]:.2f} s", flush=True)
    same = kept["reuse"] == kept["re-trace"]
    ratios = [b / a for a, b in zip(times["reuse"], times["re-trace"])]
    print(f"\n{args.model}, ratio 0.5 in {args.steps} steps, median of {args.repeat}:")
    print(C.table(["variant", "seconds", "saving"],
                  [["re-trace every round", f"{C.median(times['re-trace']):.2f}", "—"],
                   ["derived graph (reuse)", f"{C.median(times['reuse']):.2f}",
                    f"{1 - C.median(times['reuse']) / C.median(times['re-trace']):.0%} "
                    f"(paired ratio {C.median(ratios):.2f}×)"]]))
    print(f"identical pruning (kept channels of every round): {same}")


if __name__ == "__main__":
    main()
