"""Engine speed: depgraph_prune ("ours") against Torch-Pruning ("theirs", TP).

    python bench/engine_speed.py [--repeat 3] [--timeout 180] [--models resnet50,vit_b_16] [--json out.json]

For every model, two timings, each on a *fresh* model instance (construction not timed), at
224×224, batch 1, one thread:

* **build**: the dependency graph only. Ours: ``dp.build_graph(model, x)``; theirs:
  ``tp.DependencyGraph().build_dependency(model, example_inputs=x)``.
* **prune**: the one-call path to a model with 50 % of the channels of every prunable group
  removed by L2 magnitude, classifier ignored. Ours: ``dp.prune(model, x, ratio=0.5,
  importance="l2", ignored_layers=[classifier])``, the whole call (graph + scores + plan +
  surgery + its checks + its before/after MAC count); theirs:
  ``tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=2),
  pruning_ratio=0.5, ignored_layers=[classifier])`` then ``.step()`` (graph + groups + scores +
  surgery; it neither validates nor counts MACs).

Ours and theirs run in the *same* worker process, alternately (ours first on even repeats, theirs
first on odd ones); the table shows medians over ``--repeat`` runs and the ratio theirs / ours
(the median of the per-repeat ratios of adjacent runs; > 1: ours faster). Each run has a time limit (``--timeout``): a run that does not answer in time
has its worker killed and is reported as "did not finish in T s" (later repeats of that
cell are skipped). After the first prune of each (library, model) the pruned model is run
(forward) and its output shape compared with the original; MACs kept are counted with
``dp.count_ops`` (not timed). Goals (issue 18): the one-call prune at least as fast as theirs on
every model, and ≥ 2× faster on the median of the eight. The timed ``dp.prune`` call is the whole
call: whatever it does (graph, scores, plan, surgery, its checks and numerical verification where
the package has it, the before/after MAC counts) is inside the time.

``--stages`` prints, instead, where ours' time goes: the per-stage breakdown of the same call
(bench/_stages.py). ``--profile MODEL`` prints a cProfile of it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

DEFAULT_MODELS = ["resnet50", "densenet121", "densenet201", "efficientnet_b0", "regnet_y_16gf",
                  "convnext_tiny", "vit_b_16", "swin_t"]
GOAL = 2.0


# ----------------------------------------------------------------------------- worker tasks
_reference: dict[str, tuple] = {}


def _reference_of(name):
    """(output shape, MACs, params) of the unpruned model (cached per worker)."""
    import torch
    import depgraph_prune as dp
    if name not in _reference:
        model, x, _ = C.make_model(name)
        with torch.no_grad():
            shape = tuple(model(x).shape)
        ops = dp.count_ops(model, x)
        _reference[name] = (shape, ops.macs, ops.params)
    return _reference[name]


def _prune_ours(model, x, cls):
    import depgraph_prune as dp
    dp.prune(model, x, ratio=0.5, importance="l2", ignored_layers=[cls])


def _prune_theirs(model, x, cls):
    import torch_pruning as tp
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                       ignored_layers=[model.get_submodule(cls)])
    pruner.step()


def task_build(lib, model, check=False):
    import depgraph_prune as dp
    import torch_pruning as tp
    m, x, _ = C.make_model(model)
    gc.collect()
    t = time.perf_counter()
    if lib == "ours":
        dp.build_graph(m, x)
    else:
        tp.DependencyGraph().build_dependency(m, example_inputs=x, verbose=False)
    sec = time.perf_counter() - t
    del m
    gc.collect()
    return {"seconds": sec}


def task_prune(lib, model, check=False):
    import torch
    import depgraph_prune as dp
    ref = _reference_of(model) if check else None
    m, x, cls = C.make_model(model)
    gc.collect()
    t = time.perf_counter()
    (_prune_ours if lib == "ours" else _prune_theirs)(m, x, cls)
    sec = time.perf_counter() - t
    res = {"seconds": sec}
    if check:
        shape, macs0, params0 = ref
        try:
            with torch.no_grad():
                out = m(x)
            res["forward"] = "ok"
            res["shape_kept"] = tuple(out.shape) == shape
            ops = dp.count_ops(m, x)
            res["macs_kept"] = ops.macs / macs0
            res["params_kept"] = ops.params / params0
        except Exception as exc:
            res["forward"] = C.short_error(exc)
            res["shape_kept"] = False
    del m
    gc.collect()
    return res


def warmup():
    """One untimed build + prune per library on a small model, so that one-time costs (lazy
    imports, first fx trace, kernel registration) hit neither side's first timed run."""
    import torch
    import torchvision
    import depgraph_prune as dp
    import torch_pruning as tp
    for _ in range(2):
        m, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)
        dp.prune(m, x, ratio=0.5, importance="l2", ignored_layers=["fc"])
        m = torchvision.models.resnet18().eval()
        p = tp.pruner.MagnitudePruner(m, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                      ignored_layers=[m.fc])
        p.step()


def profile(name, top=25):
    """cProfile of one ``dp.prune`` (after a warm-up), sorted by cumulative and by own time."""
    import cProfile
    import pstats
    import warnings
    C.single_thread()
    warnings.filterwarnings("ignore")
    warmup()
    m, x, cls = C.make_model(name)
    pr = cProfile.Profile()
    pr.enable()
    _prune_ours(m, x, cls)
    pr.disable()
    s = pstats.Stats(pr, stream=sys.stdout)
    s.sort_stats("cumulative").print_stats(top)
    s.sort_stats("tottime").print_stats(top)


def stages(models, repeat=3):
    """Per-stage wall-clock breakdown of the timed ``dp.prune`` call (bench/_stages.py), one row
    per model, medians of ``repeat`` calls (Torch-Pruning's totals: the comparison table)."""
    import warnings
    import _stages
    C.single_thread()
    warnings.filterwarnings("ignore")
    warmup()
    rows = []
    for name in models:
        b = _stages.breakdown(lambda: C.make_model(name), _prune_ours, repeat)
        rows.append([name] + [f"{b[k]:.3f}" for k in _stages.STAGES] + [f"{b['total']:.3f}"])
        print(f"  {name}: total {b['total']:.3f} s", flush=True)
    print(f"\nseconds per stage of dp.prune(model, x, ratio=0.5, importance='l2'), median of {repeat}, 1 thread")
    print(C.table(["model"] + _stages.STAGES + ["total"], rows))


# ----------------------------------------------------------------------------- parent

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per run (each library)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--log", default=None, help="worker stderr goes here (default: discarded)")
    p.add_argument("--profile", default=None, metavar="MODEL",
                   help="instead of the comparison: cProfile ours' dp.prune on MODEL and print the top functions")
    p.add_argument("--stages", action="store_true",
                   help="instead of the comparison: per-stage breakdown of ours' dp.prune on --models")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        C.serve({"build": task_build, "prune": task_prune}, warmup=warmup)
        return
    if args.profile:
        profile(args.profile)
        return
    models = [m for m in args.models.split(",") if m]
    if args.stages:
        print(C.machine_line(), flush=True)
        stages(models, args.repeat)
        return
    print(C.machine_line(), flush=True)
    print(f"command: python bench/engine_speed.py {' '.join(sys.argv[1:])}", flush=True)
    worker = C.Worker(os.path.abspath(__file__), log_path=args.log)
    raw: dict = {}
    try:
        for name in models:
            for r in range(args.repeat):
                order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
                for what in ("build", "prune"):
                    for lib in order:
                        cell = raw.setdefault(f"{name}/{what}/{lib}", {"times": [], "info": {}, "dnf": None})
                        if cell["dnf"] or cell.get("stop"):
                            continue
                        res = worker.call(what, args.timeout, lib=lib, model=name, check=(r == 0))
                        if res.get("ok"):
                            cell["times"].append(res["seconds"])
                            if r == 0:
                                cell["info"] = {k: v for k, v in res.items() if k not in ("ok", "seconds")}
                            msg = f"{res['seconds']:.2f} s"
                        else:
                            err = res.get("error", "failed")
                            if cell["times"]:  # earlier repeats finished: keep them, stop repeating
                                cell["late_failure"] = err
                                cell["stop"] = True
                            else:
                                cell["dnf"] = err
                            msg = err
                        print(f"  {name:16} {what:6} {lib:6} run {r + 1}/{args.repeat}: {msg}", flush=True)
    finally:
        worker.close()
    rows, verdicts = [], []
    for name in models:
        row = [name]
        ratios = []
        for what in ("build", "prune"):
            o, t = raw[f"{name}/{what}/ours"], raw[f"{name}/{what}/theirs"]
            mo, mt = C.median(o["times"]), C.median(t["times"])
            # ratio: median over repeats of the paired ratio (theirs_i / ours_i, adjacent runs)
            ratio = C.median([b / a for a, b in zip(o["times"], t["times"])]) if (mo and mt) else None
            late = lambda c: f" (a later run: {c['late_failure']})" if c.get("late_failure") else ""  # noqa: E731
            ro = (C.fmt_s(mo) + late(o)) if not o["dnf"] else o["dnf"]
            if t["dnf"]:
                rt = t["dnf"]
                # a hang/crash of theirs counts as a win only if it was a timeout
                ratio_s = f"> {args.timeout / mo:.0f}× (TP DNF)" if ("did not finish" in t["dnf"] and mo) else "— (TP failed)"
                ratios.append(args.timeout / mo if ("did not finish" in t["dnf"] and mo) else None)
            else:
                rt = C.fmt_s(mt) + late(t)
                ratio_s = C.fmt_ratio(ratio)
                ratios.append(ratio)
            row += [ro, rt, ratio_s]
        for lib in ("ours", "theirs"):
            info = raw[f"{name}/prune/{lib}"]["info"]
            if raw[f"{name}/prune/{lib}"]["dnf"]:
                row.append("n/a")
            elif info.get("forward") == "ok":
                row.append(f"ok, shape {'kept' if info.get('shape_kept') else 'CHANGED'}, "
                           f"MACs {info.get('macs_kept', 0):.0%}")
            else:
                row.append(f"forward fails ({info.get('forward', '?')})")
        prune_ratio = ratios[1]
        ok = prune_ratio is not None and prune_ratio >= 1.0
        verdicts.append((name, ok, prune_ratio))
        row.append("met" if ok else "MISSED")
        rows.append(row)
    headers = ["model", "build ours s", "build TP s", "build TP/ours", "prune ours s", "prune TP s",
               "prune TP/ours", "ours pruned model", "TP pruned model", "prune ≥ 1×"]
    print()
    print(f"median of {args.repeat} runs, seconds; TP/ours = median of the per-repeat paired ratios (> 1: ours faster)")
    print(C.table(headers, rows))
    met = sum(v[1] for v in verdicts)
    known = [v[2] for v in verdicts if v[2] is not None]
    med = C.median(known)
    print(f"\ngoal 1 (one-call prune at least as fast as Torch-Pruning's step() on every model): "
          f"{met}/{len(verdicts)} models meet it")
    print(f"goal 2 (median of the prune ratios ≥ {GOAL:.0f}×): median {C.fmt_ratio(med)} over {len(known)} models "
          f"(a Torch-Pruning timeout counts as timeout / ours, a lower bound): {'met' if med and med >= GOAL else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": C.machine_line(), "argv": sys.argv[1:], "raw": raw}, f, indent=1)


if __name__ == "__main__":
    main()
