"""Scaling: graph build and prune time of depgraph_prune against network depth.

    python bench/scaling.py [--sizes 100,300,1000,3000,10000] [--repeat 3] [--timeout 900] [--tp]
    python bench/scaling.py --profile 3000       # cProfile of one build at that size

Synthetic networks of N *layers* (modules with parameters: conv, norm, linear), 8 channels, input
1×8×8×8 so that the forward pass costs next to nothing: a stem (conv + BN), then blocks of
4 layers, three residual bottlenecks (conv-BN-ReLU-conv-BN, ``x + out``) then one concat block
(conv-BN-ReLU; ``cat([x, y])`` → 1×1 conv-BN), repeated, then average pool + linear head. Every
residual chain couples its convs' output channels into one group; every concat breaks the chain.

For each size (smallest first): ``dp.build_graph`` and ``dp.prune(ratio=0.5, importance="l2")``,
each on a fresh model (construction not timed), median of ``--repeat`` runs, in a worker process
with a per-run limit (``--timeout``); the first size that does not finish ends the sweep and is
reported as where it breaks. The log-log slope of time against N (``numpy.polyfit``) is printed
for build and prune, over all sizes and between neighbours. Goal (issue 8): slope ≤ 1.1.
``--tp`` adds Torch-Pruning (``build_dependency``; ``MagnitudePruner`` + ``step()``) alternately,
for reference.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

WIDTH = 8
GOAL = 1.1


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ConcatBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.fuse, self.bnf = nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return torch.relu(self.bnf(self.fuse(torch.cat([x, y], 1))))


class SynthNet(nn.Module):
    def __init__(self, n_layers: int, c: int = WIDTH):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(8, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        n_blocks = max(1, (n_layers - 3) // 4)
        self.blocks = nn.Sequential(*[ConcatBlock(c) if i % 4 == 3 else Bottleneck(c) for i in range(n_blocks)])
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make(n):
    torch.manual_seed(0)
    model = SynthNet(n).eval()
    layers = sum(1 for m in model.modules() if any(True for _ in m.parameters(recurse=False)))
    return model, torch.randn(1, 8, 8, 8), layers


# ----------------------------------------------------------------------------- worker tasks

def task_run(lib, what, n, check=False):
    import depgraph_prune as dp
    model, x, layers = make(n)
    gc.collect()
    t = time.perf_counter()
    if lib == "ours":
        if what == "build":
            g = dp.build_graph(model, x)
            extra = {"groups": len(g.groups), "prunable": len(g.prunable_groups)}
            del g
        else:
            r = dp.prune(model, x, ratio=0.5, importance="l2", ignored_layers=["head"])
            extra = {"macs_kept": r.after.macs / r.before.macs}
    else:
        import torch_pruning as tp
        if what == "build":
            tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        else:
            p = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                          ignored_layers=[model.head])
            p.step()
        extra = {}
    sec = time.perf_counter() - t
    if check and what == "prune":
        with torch.no_grad():
            extra["forward"] = "ok" if tuple(model(x).shape) == (1, 10) else "shape changed"
    del model
    gc.collect()
    return {"seconds": sec, "layers": layers, **extra}


def warmup():
    import depgraph_prune as dp
    for _ in range(2):
        m, x, _ = make(40)
        dp.prune(m, x, ratio=0.5, importance="l2", ignored_layers=["head"])
    try:
        import torch_pruning as tp
        m, x, _ = make(40)
        tp.pruner.MagnitudePruner(m, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[m.head]).step()
    except ImportError:
        pass


def profile(n, top=30):
    import cProfile
    import pstats
    import depgraph_prune as dp
    C.single_thread()
    warmup()
    model, x, layers = make(n)
    print(f"cProfile of dp.build_graph on SynthNet({n}) ({layers} layers)")
    pr = cProfile.Profile()
    pr.enable()
    dp.build_graph(model, x)
    pr.disable()
    s = pstats.Stats(pr, stream=sys.stdout)
    s.sort_stats("cumulative").print_stats(top)
    s.sort_stats("tottime").print_stats(top)


# ----------------------------------------------------------------------------- parent

def slope(ns, ts):
    import numpy as np
    pts = [(n, t) for n, t in zip(ns, ts) if t]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,300,1000,3000,10000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--tp", action="store_true", help="also time Torch-Pruning (alternating), for reference")
    p.add_argument("--json", default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--profile", type=int, default=None, metavar="N")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        C.serve({"run": task_run}, warmup=warmup)
        return
    if args.profile:
        profile(args.profile)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    libs = ["ours", "theirs"] if args.tp else ["ours"]
    print(C.machine_line(), flush=True)
    print(f"command: python bench/scaling.py {' '.join(sys.argv[1:])}", flush=True)
    worker = C.Worker(os.path.abspath(__file__), log_path=args.log)
    raw: dict = {}
    layers_of: dict[int, int] = {}
    dead = {lib: None for lib in libs}  # lib -> size where it broke
    try:
        for n in sizes:
            for r in range(args.repeat):
                order = libs if r % 2 == 0 else libs[::-1]
                for what in ("build", "prune"):
                    for lib in order:
                        cell = raw.setdefault(f"{lib}/{what}/{n}", {"times": [], "dnf": None, "info": {}})
                        if dead[lib] is not None or cell["dnf"] or cell.get("stop"):
                            continue
                        res = worker.call("run", args.timeout, lib=lib, what=what, n=n, check=(r == 0))
                        if res.get("ok"):
                            cell["times"].append(res["seconds"])
                            layers_of[n] = res["layers"]
                            if r == 0:
                                cell["info"] = {k: v for k, v in res.items() if k not in ("ok", "seconds")}
                            msg = f"{res['seconds']:.2f} s"
                        else:
                            err = res.get("error", "failed")
                            if cell["times"]:  # earlier repeats finished: keep them, stop repeating
                                cell["late_failure"] = err
                                cell["dnf"] = None
                                cell["stop"] = True
                            else:
                                cell["dnf"] = err
                            if cell["dnf"]:
                                dead[lib] = n
                            msg = err
                        print(f"  N={n:<6} {what:6} {lib:6} run {r + 1}/{args.repeat}: {msg}", flush=True)
    finally:
        worker.close()

    def med(lib, what, n):
        c = raw.get(f"{lib}/{what}/{n}")
        return C.median(c["times"]) if c and not c["dnf"] else None

    def cell_s(lib, what, n):
        c = raw.get(f"{lib}/{what}/{n}")
        if c is None:
            return "not run (smaller size broke)"
        if c["dnf"]:
            return c["dnf"]
        late = f" ({len(c['times'])} runs; a later one: {c['late_failure']})" if c.get("late_failure") else ""
        return C.fmt_s(C.median(c["times"]), 3) + late

    headers = ["N (target)", "layers", "groups", "build ours s", "prune ours s", "build s / layer (ms)",
               "local slope build", "local slope prune"]
    if args.tp:
        headers += ["build TP s", "prune TP s"]
    rows = []
    prev = None
    for n in sizes:
        b, pr = med("ours", "build", n), med("ours", "prune", n)
        info = raw.get(f"ours/build/{n}", {}).get("info", {})
        ls_b = ls_p = "—"
        if prev and b and prev[1]:
            ls_b = f"{math.log(b / prev[1]) / math.log(layers_of[n] / prev[0]):.2f}"
        if prev and pr and prev[2]:
            ls_p = f"{math.log(pr / prev[2]) / math.log(layers_of[n] / prev[0]):.2f}"
        row = [n, layers_of.get(n, "—"), info.get("groups", "—"), cell_s("ours", "build", n), cell_s("ours", "prune", n),
               C.fmt_s(1000 * b / layers_of[n], 2) if b else "—", ls_b, ls_p]
        if args.tp:
            row += [cell_s("theirs", "build", n), cell_s("theirs", "prune", n)]
        rows.append(row)
        if n in layers_of and (b or pr):
            prev = (layers_of[n], b, pr)
    print()
    print(f"median of {args.repeat} runs; local slope = log-log slope from the previous size")
    print(C.table(headers, rows))
    done = [n for n in sizes if n in layers_of]
    ns = [layers_of[n] for n in done]
    verdict = []
    for lib in libs:
        for what in ("build", "prune"):
            s = slope(ns, [med(lib, what, n) for n in done])
            tag = "ours" if lib == "ours" else "TP"
            if s is None:
                print(f"slope {tag} {what}: not enough points")
                continue
            ok = s <= GOAL
            verdict.append((tag, what, s, ok))
            print(f"log-log slope, {tag} {what} time vs layers: {s:.3f}" +
                  (f"  (goal ≤ {GOAL}: {'met' if ok else 'MISSED'})" if lib == "ours" else ""))
    for lib in libs:
        if dead[lib] is not None:
            print(f"{'ours' if lib == 'ours' else 'TP'} broke at N={dead[lib]}: "
                  f"{raw[[k for k in raw if k.startswith(lib + '/') and k.endswith('/' + str(dead[lib])) and raw[k]['dnf']][0]]['dnf']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": C.machine_line(), "argv": sys.argv[1:], "raw": raw, "layers": layers_of}, f, indent=1)


if __name__ == "__main__":
    main()
