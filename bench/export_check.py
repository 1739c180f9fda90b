"""Deployment check of pruned models: ``torch.export``, ``torch.compile`` (inductor), TorchScript
(``script`` / ``trace``, where the unpruned model allowed it) and ONNX (run with onnxruntime), each
compared with eager outputs (max abs error <= --atol, default 1e-5).

    python bench/export_check.py                                   # ResNet-50, MobileNet v3, ViT-B/16, 5 random archs
    python bench/export_check.py --models resnet50 --skip compile  # one model, no inductor
    python bench/export_check.py --samples 20 --models none        # only hypothesis-drawn architectures

Random architectures come from ``tests/archgen.py`` (hypothesis, derandomized: the same samples
every run). Exit status 1 if any check fails (a check that the unpruned model also fails is
reported as ``n/a``, not a failure). One row per model and check is printed as a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torchvision

import depgraph_prune as dp
from depgraph_prune import surgery

CHECKS = ("export", "compile", "script", "trace", "onnx")


def _err(out, ref) -> float:
    out = torch.as_tensor(out)
    if out.shape != ref.shape:
        return float("inf")
    return (out.double() - ref.double()).abs().max().item()


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def check_export(model, x, ref, fresh):
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        return _err(ep.module()(x), ref)


def check_compile(model, x, ref, fresh):
    torch._dynamo.reset()
    c = torch.compile(model, backend="inductor")
    with torch.no_grad():
        return _err(c(x), ref)


def check_script(model, x, ref, fresh):
    try:
        _quiet(lambda: torch.jit.script(fresh()))
    except Exception:
        return "n/a"
    s = _quiet(lambda: torch.jit.script(model))
    with torch.no_grad():
        return _err(s(x), ref)


def check_trace(model, x, ref, fresh):
    try:
        _quiet(lambda: torch.jit.trace(fresh(), x))
        check = True
    except Exception:
        check = False  # the unpruned model fails trace's self-check too: compare outputs only
    t = _quiet(lambda: torch.jit.trace(model, x, check_trace=check))
    with torch.no_grad():
        return _err(t(x), ref)


def check_onnx(model, x, ref, fresh):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "skip: pip install onnx onnxscript"
    import contextlib
    import copy
    import io
    if x.dtype == torch.float64:  # onnxruntime's CPU Conv has no double kernel: check in float32
        model, x = copy.deepcopy(model).float(), x.float()
        with torch.no_grad():
            ref = model(x)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        with contextlib.redirect_stdout(io.StringIO()):
            program = _quiet(lambda: torch.onnx.export(model, (x,), dynamo=True))
        program.save(path)
        try:
            import onnxruntime as ort
        except ImportError:
            onnx.checker.check_model(path)
            return "exported (no onnxruntime)"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        return _err(torch.from_numpy(out), ref)


def zoo_cases(names, size):
    table = {
        "resnet50": (lambda: torchvision.models.resnet50(), 0.5, size),
        "mobilenet_v3_large": (lambda: torchvision.models.mobilenet_v3_large(), 0.5, size),
        "vit_b_16": (lambda: torchvision.models.vit_b_16(), 0.3, 224),  # ViT's input size is fixed
    }
    for n in names:
        if n in table:
            yield (n, *table[n])
        elif n != "none":
            raise SystemExit(f"unknown model {n!r}; choose from {sorted(table)} or 'none'")


def archgen_cases(n):
    if n <= 0:
        return []
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from archgen import archs, build_model, make_input  # noqa: E402
    from hypothesis import HealthCheck, given, settings

    specs = []

    @settings(max_examples=8 * n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=archs())
    def collect(spec):
        specs.append(spec)

    collect()
    # many small draws leave nothing to prune (every group frozen or of size 1): keep the first n
    # whose prune at ratio 0.5 removes something
    cases, seen = [], set()
    for i, spec in enumerate(specs):
        if repr(spec) in seen:
            continue
        seen.add(repr(spec))
        model, x = build_model(spec), make_input(spec)
        try:
            dp.prune(model, x, ratio=0.5)
        except Exception:
            pass  # reported when the case runs
        else:
            if not surgery.history(model):
                continue
        cases.append((f"archgen[{i}]", (lambda s=spec: build_model(s)), 0.5, x))
        if len(cases) == n:
            break
    return cases


def run_case(name, builder, ratio, x_or_size, checks, atol):
    torch.manual_seed(0)
    model = builder().eval()
    if isinstance(x_or_size, torch.Tensor):
        x = x_or_size
    else:
        dtype = next(model.parameters()).dtype
        x = torch.randn(1, 3, x_or_size, x_or_size, dtype=dtype)
    t = time.perf_counter()
    result = dp.prune(model, x, ratio=ratio)
    prune_s = time.perf_counter() - t
    model.eval()
    with torch.no_grad():
        ref = model(x)
    rows = []
    for c in checks:
        t = time.perf_counter()
        try:
            v = globals()[f"check_{c}"](model, x, ref, lambda: builder().eval())
        except Exception as exc:
            v = f"FAIL: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
            if os.environ.get("EXPORT_CHECK_TRACEBACK"):
                traceback.print_exc()
        sec = time.perf_counter() - t
        if isinstance(v, float):
            ok = v <= atol
            status = f"{'pass' if ok else 'FAIL'} (max err {v:.2e})"
        else:
            ok = not str(v).startswith("FAIL")
            status = v
        rows.append((name, c, ok, status, sec))
        print(f"| {name} | {c} | {status} | {sec:.1f} |", flush=True)
    return result, prune_s, rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v3_large", "vit_b_16"])
    p.add_argument("--samples", type=int, default=5, help="hypothesis-drawn architectures (tests/archgen.py)")
    p.add_argument("--size", type=int, default=224, help="input resolution of the CNNs")
    p.add_argument("--skip", nargs="*", default=[], choices=CHECKS)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checks = [c for c in CHECKS if c not in args.skip]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads")
    print("| model | check | result | seconds |\n|---|---|---|---|", flush=True)
    all_rows = []
    cases = list(zoo_cases(args.models, args.size)) + archgen_cases(args.samples)
    for name, builder, ratio, x in cases:
        try:
            result, sec, rows = run_case(name, builder, ratio, x, checks, args.atol)
            print(f"|   {name}: pruned at ratio {ratio} in {sec:.1f}s, speedup {result.speedup:.2f}x | | | |", flush=True)
        except Exception as exc:  # pruning itself failed
            rows = [(name, "prune", False, f"FAIL: {type(exc).__name__}: {exc}", 0.0)]
            print(f"| {name} | prune | FAIL: {type(exc).__name__}: {exc} | |", flush=True)
        all_rows += rows
    bad = [r for r in all_rows if not r[2]]
    print(f"\n{len(all_rows) - len(bad)} / {len(all_rows)} checks passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
