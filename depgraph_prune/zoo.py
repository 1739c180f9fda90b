"""Coverage sweep over the torchvision model zoo: prune each model in one call, write a table.

This is the logic behind ``depgraph-prune zoo`` and ``python bench/zoo.py``::

    depgraph-prune zoo [--kind classification|segmentation|detection|video|all] [--family resnet]
                       [--models densenet121,googlenet] [--ratio 0.5] [--min-reduction 0.25]
                       [--max-size 96] [--out zoo.md]

Pass means: the pruned forward works, the output structure (shapes, dict keys) is unchanged,
MACs fell by at least ``min_reduction`` (default 25%), no channel was frozen for lack of a
coupling rule, and no conv / linear layer kept less than ``0.8 * (1 - ratio)`` of its output
channels (40% at ratio 0.5: every layer is meant to keep ``1 - ratio``; the table shows the
smallest kept fraction and its layer). Detection models are not traceable as a whole: their ``.backbone`` is pruned in
place and the whole detector then runs end to end on a dummy image.

Python use::

    from depgraph_prune import zoo
    todo = zoo.models("classification", family="mobilenet_v3_small")
    rows, passed = zoo.sweep(todo, ratio=0.5, max_size=64)
    print(zoo.markdown(rows, passed, len(todo), ratio=0.5, command="..."))
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import torch
import torchvision
from torchvision.models import detection, segmentation, video

import depgraph_prune as dp

__all__ = ["KINDS", "structure", "classification_size", "build", "run", "models", "sweep", "markdown",
           "kept_cell", "min_kept_fraction", "command_line", "main"]

KINDS = {"classification": torchvision.models, "segmentation": segmentation, "detection": detection,
         "video": video}


def structure(out):
    """Nested shapes of a model output (tensors → shape tuples, dicts and sequences kept);
    the Hugging Face sweep (``zoo_hf``) compares outputs with it too."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: structure(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [structure(v) for v in out]
    if hasattr(out, "to_tuple"):  # a transformers ModelOutput that is not a dict
        return structure(out.to_tuple())
    return type(out).__name__


def classification_size(name: str) -> int:
    """Input resolution of a classifier: its default weights' crop size (no download)."""
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except Exception:
        return 299 if "inception" in name else 224


def build(kind: str, name: str, max_size: int | None):
    """Model, the input given to dp.prune, the module pruned, a callable running the whole model,
    and the input size as written in the table."""
    if kind == "classification":
        s = classification_size(name)
        s = min(s, max_size) if max_size and "vit" not in name and "max" not in name and "swin" not in name else s
        # ViTs are built for one resolution: build them for the one their weights use
        extra = {"image_size": s} if name.startswith("vit_") else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
        x = torch.randn(1, 3, s, s)
        return model, x, model, lambda: model(x), f"{s}"
    if kind == "segmentation":
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        x = torch.randn(1, 3, 224, 224)
        return model, x, model, lambda: model(x), "224"
    if kind == "video":
        model = torchvision.models.get_model(name, weights=None)
        shape = (1, 3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (1, 3, 8, 112, 112)
        x = torch.randn(*shape)
        return model, x, model, lambda: model(x), "x".join(map(str, shape[2:]))
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    images = [torch.rand(3, 320, 320)]
    # detections themselves change with the weights: compare the structure (keys), not box counts
    return model, torch.randn(1, 3, 320, 320), model.backbone, lambda: [sorted(o) for o in model(images)], "320 (backbone)"


def run(kind: str, name: str, ratio: float, min_reduction: float, max_size: int | None):
    """Prune one model; returns ``(passed, why not, input size, PruneResult, seconds)``."""
    model, x, target, forward, size = build(kind, name, max_size)
    model.eval()
    with torch.no_grad():
        ref = structure(forward())
    t = time.perf_counter()
    result = dp.prune(target, x, ratio=ratio)
    seconds = time.perf_counter() - t
    missing = sum(n for _, n, r in result.frozen if "no coupling rule" in r)
    thin = result.min_kept
    with torch.no_grad():
        out = structure(forward())
    reduction = 1 - result.after.macs / result.before.macs
    problems = []
    if out != ref:
        problems.append("output changed")
    if reduction < min_reduction:
        problems.append(f"MACs down only {reduction:.1%}")
    if missing:
        problems.append(f"{missing} channels frozen for lack of a rule")
    if thin is not None and thin[0] < min_kept_fraction(ratio):
        problems.append(f"`{thin[1]}` keeps only {thin[0]:.0%} of its channels")
    refused = sum(len(v.guilty) for v in result.verification)
    if refused:  # a coupling rule the numerical check caught: a bug to fix, not a pass
        problems.append(f"verification froze {refused} group(s)")
    if not result.verification and result.records:
        problems.append("not verified")
    return not problems, "; ".join(problems), size, result, seconds


def min_kept_fraction(ratio: float) -> float:
    """The smallest kept fraction of any layer that still passes: ``0.8 * (1 - ratio)``."""
    return 0.8 * (1 - ratio)


def kept_cell(result) -> str:
    """The table's "smallest kept" cell: fraction and layer, e.g. ``0.50 `features.conv0```."""
    thin = result.min_kept
    return "1.00" if thin is None else f"{thin[0]:.2f} `{thin[1]}`"


def models(kind: str = "all", family: str = "") -> list[tuple[str, str]]:
    """``(kind, name)`` of every torchvision model of ``kind`` whose name contains ``family``."""
    if kind != "all" and kind not in KINDS:
        raise ValueError(f"kind must be one of {[*KINDS, 'all']}, got {kind!r}")
    kinds = list(KINDS) if kind == "all" else [kind]
    todo = []
    for k in kinds:
        names = torchvision.models.list_models(module=KINDS[k])
        if k == "classification":  # list_models(module=torchvision.models) lists only classifiers
            names = [n for n in names if n not in torchvision.models.list_models(module=video)]
        todo += [(k, n) for n in names if family in n]
    return todo


def sweep(todo, ratio: float = 0.5, min_reduction: float = 0.25, max_size: int | None = None, *,
          progress: bool = True, log=None) -> tuple[list[str], int]:
    """Run every ``(kind, name)`` of ``todo``; returns the markdown table rows and the pass count.
    Each row is also written to ``log`` (default stdout) as soon as it is known."""
    from tqdm import tqdm
    log = sys.stdout if log is None else log
    rows, passed = [], 0
    for kind, name in tqdm(todo, disable=not progress):
        try:
            ok, why, size, r, sec = run(kind, name, ratio, min_reduction, max_size)
            rows.append(f"| {kind} | {name} | {'pass' if ok else 'FAIL: ' + why} | {size} | {r.before.macs / 1e9:.3f} | "
                        f"{r.after.macs / 1e9:.3f} | {r.speedup:.2f}x | {r.before.params / 1e6:.2f} | "
                        f"{r.after.params / 1e6:.2f} | {kept_cell(r)} | {sec:.1f} |")
            passed += ok
        except Exception as exc:  # a crash is a result too
            rows.append(f"| {kind} | {name} | FAIL: {type(exc).__name__}: {str(exc)[:90]} | | | | | | | | |")
        tqdm.write(rows[-1], file=log)
    return rows, passed


def command_line(prog: str, kind: str, ratio: float, family: str = "", max_size: int | None = None) -> str:
    """The command written in the table's header."""
    return (f"{prog} --kind {kind} --ratio {ratio}{' --family ' + family if family else ''}"
            f"{' --max-size ' + str(max_size) if max_size else ''}")


def markdown(rows: list[str], passed: int, total: int, *, ratio: float, min_reduction: float = 0.25,
             command: str = "") -> str:
    """The coverage page: title, versions, pass count, the table."""
    header = [f"# Zoo coverage: every torchvision model pruned in one call (ratio {ratio})", "",
              f"{datetime.date.today()} · torch {torch.__version__} · torchvision {torchvision.__version__} · "
              f"{platform.processor() or platform.machine()}, 1 thread · command: `{command}`",
              "", f"**{passed} / {total} pass.** Pass: forward works, output structure unchanged, MACs down "
              f"≥ {min_reduction:.0%}, no channel frozen for lack of a rule, every conv / linear layer keeps "
              f"≥ {min_kept_fraction(ratio):.0%} of its output channels, the numerical check (pruned == "
              "masked original) accepted every group. Random weights, L1 ranking. "
              "Detection: the backbone is pruned in place, then the whole detector runs on a 320×320 image; "
              "its MACs are the backbone's. Smallest kept: the smallest fraction of its output channels that any "
              "pruned conv / linear layer keeps, and that layer. Seconds: graph build + pruning + the numerical "
              "check + the MAC counts.", "",
              "| kind | model | result | input | GMACs before | GMACs after | speedup | M params before | "
              "M params after | smallest kept | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(header + rows) + "\n"


def main(argv=None, *, prog: str = "python bench/zoo.py", default_out: str = "docs/zoo.md") -> None:
    """``python bench/zoo.py``: the sweep with its command-line options, table written to ``--out``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="all", choices=[*KINDS, "all"])
    p.add_argument("--family", default="", help="only models whose name contains this")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--min-reduction", type=float, default=0.25)
    p.add_argument("--max-size", type=int, default=None, help="cap CNN input resolution (faster sweeps)")
    p.add_argument("--models", default="", help="only these models (comma-separated exact names)")
    p.add_argument("--out", default=default_out)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    todo = models(args.kind, args.family)
    if args.models:
        wanted = [n for n in args.models.split(",") if n]
        unknown = sorted(set(wanted) - {n for _, n in todo})
        if unknown:
            p.error(f"--models: not a torchvision model of --kind {args.kind}: {', '.join(unknown)}")
        todo = [t for t in todo if t[1] in wanted]
    rows, passed = sweep(todo, args.ratio, args.min_reduction, args.max_size)
    text = markdown(rows, passed, len(todo), ratio=args.ratio, min_reduction=args.min_reduction,
                    command=command_line(prog, args.kind, args.ratio, args.family, args.max_size))
    with open(args.out, "w") as f:
        f.write(text)
    print(f"{passed}/{len(todo)} pass; table written to {args.out}")


if __name__ == "__main__":
    main(prog="python -m depgraph_prune.zoo", default_out="zoo.md")
