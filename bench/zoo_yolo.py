"""Coverage sweep over Ultralytics YOLO models (issue 16): the documented one call on each variant of
``tests/yolo_cases.py``, built from ultralytics' YAML configs (random init, no downloads), and
the end-to-end checks of ``tests/yolo_cases.check_variant``; writes a Markdown table.

    python bench/zoo_yolo.py [--imgsz 640] [--ratio 0.5] [--only yolov8n,yolo11n] [--out docs/zoo-yolo.md]

MAC ratios are measured in the same run (before / after, on the same input). Ultralytics is
AGPL-licensed and only used here and in the tests, never by the package.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import single_thread  # noqa: E402
from yolo_cases import VARIANTS, check_variant  # noqa: E402

_CHECKS = ("structure", "train structure", "output layers kept", "fuse", "save/load", "predict")


def _human(n: float) -> str:
    for scale, p in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{p}"
    return str(int(n))


def _cell(v) -> str:
    return "yes" if v is True else ("—" if v is None else "**no**")


def table(reports, imgsz: int, ratio: float, seconds: float) -> str:
    import torch
    import ultralytics
    lines = [
        "# Ultralytics YOLO coverage",
        "",
        f"`dp.prune(model, torch.randn(1, 3, {imgsz}, {imgsz}), ratio={ratio})` on models built from the YAML "
        f"configs shipped with ultralytics {ultralytics.__version__} (random init, no downloads), torch "
        f"{torch.__version__}, {platform.machine()}, one thread. Written by `python bench/zoo_yolo.py "
        f"--imgsz {imgsz}` in {seconds / 60:.1f} min.",
        "",
        "Each row: MACs and parameters before → after on the same input (`ratio` = after / before); the "
        "time of the call; then the checks: outputs keep their structure in eval and training mode, the "
        "layers that define box / class / mask / keypoint / prototype channels keep their widths, "
        "`fuse()` gives the same inference output (the first output; end-to-end heads drop their "
        "one-to-many training branch when fused; RT-DETR: the same shapes, since its top-k query selection "
        "flips under rounding even unpruned), `dp.save` → `dp.load` into a fresh model gives identical "
        "outputs, and ultralytics' own `predict()` runs on a numpy image.",
        "",
        "| model | task | MACs | ratio | params | prune s | " + " | ".join(_CHECKS) + " | result |",
        "|---|---|---|---|---|---|" + "---|" * len(_CHECKS) + "---|",
    ]
    for variant, rep in reports:
        if rep.error:
            lines.append(f"| {rep.name} | {rep.task} | | | | {rep.seconds:.1f} |" + " |" * len(_CHECKS)
                         + f" fail: {rep.error} |")
            continue
        failed = "; ".join(f"{k}: {v}" for k, v in rep.checks.items() if v is not True)
        if rep.checks.get("macs -25%") is not True:
            failed = "; ".join(x for x in (failed, "MACs fell by less than 25%") if x)
        result = "pass" if rep.ok else f"fail: {failed}"
        lines.append(
            f"| {rep.name}{'' if variant.acceptance else ' †'} | {rep.task} | {_human(rep.macs_before)} → "
            f"{_human(rep.macs_after)} | {rep.mac_ratio:.2f} | {_human(rep.params_before)} → "
            f"{_human(rep.params_after)} | {rep.seconds:.1f} | "
            + " | ".join(_cell(rep.checks.get(k)) for k in _CHECKS) + f" | {result} |")
    acc = [r for v, r in reports if v.acceptance]
    lines += ["", f"**{sum(r.ok for r in acc)} of {len(acc)}** of the variants issue 16 counts pass every check "
              f"with ≥ 25% fewer MACs; {sum(r.ok for _, r in reports)} of {len(reports)} in all "
              f"(† the other tasks of YOLO11 and YOLO26).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/zoo_yolo.py", description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--out", default="docs/zoo-yolo.md")
    args = p.parse_args(argv)
    single_thread()
    warnings.filterwarnings("ignore")
    only = {s for s in args.only.split(",") if s}
    chosen = [v for v in VARIANTS if not only or v.name in only]
    t0 = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in chosen:
            rep = check_variant(v, imgsz=args.imgsz, ratio=args.ratio, tmpdir=tmp)
            reports.append((v, rep))
            state = "pass" if rep.ok else f"FAIL {rep.error or {k: x for k, x in rep.checks.items() if x is not True}}"
            print(f"{v.name:14s} MACs x{rep.mac_ratio:.2f}  {rep.seconds:5.1f}s  {state}", flush=True)
    text = table(reports, args.imgsz, args.ratio, time.perf_counter() - t0)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    return 0 if all(r.ok for v, r in reports if v.acceptance) else 1


if __name__ == "__main__":
    sys.exit(main())
