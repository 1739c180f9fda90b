"""Two tracing designs measured on the Hugging Face list (issue 16, item 1): how many of the 36
models each front end takes as they are, with the documented dict of inputs and no wrapper.

* ``fx``: plain ``torch.fx.symbolic_trace`` (the baseline the engine started from);
* ``ours``: depgraph_prune's front end (fx, helped by the example input's concrete values:
  signature binding, concrete fallbacks; see docs/concepts.md), counted as taken when it traces
  and keeps no module opaque;
* ``export``: ``torch.export.export(model, (), inputs, strict=False)`` (an ATen-level graph);
* ``export+``: the same, with our output handling (state such as caches left out).

    python bench/hf_coverage.py [--only gpt2,llama]

Prints one row per model and the totals, with median seconds per successful trace.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.fx as fx  # noqa: E402

from depgraph_prune.graph.builder import OPAQUE_TYPES  # noqa: E402
from depgraph_prune.graph.registry import MODEL_SCANNERS, MODULE_RULES, load_optional_rules  # noqa: E402
from depgraph_prune.trace import structural_copy, trace  # noqa: E402
from depgraph_prune.zoo_hf import MODELS  # noqa: E402


def _fx(model, inputs):
    fx.symbolic_trace(model)


def _ours(model, inputs):
    load_optional_rules()
    for scan in MODEL_SCANNERS:
        scan(model)
    tr = trace(structural_copy(model), inputs, leaf_types=tuple(MODULE_RULES) + OPAQUE_TYPES, real_model=model)
    if tr.opaque:
        raise RuntimeError(f"kept opaque: {sorted(tr.opaque)[:3]}")


def _export(model, inputs):
    torch.export.export(model, (), dict(inputs), strict=False)


class _Outputs(torch.nn.Module):
    """Design (b) as the engine would run it: the same output handling as ours (state such as a
    ``DynamicCache`` left out of the outputs), so the comparison is about tracing itself."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        from depgraph_prune.trace.inputs import traced_outputs
        return traced_outputs(self.model(**kwargs))


def _export_outputs(model, inputs):
    torch.export.export(_Outputs(model), (), dict(inputs), strict=False)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python bench/hf_coverage.py")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    names = [n for n in a.only.split(",") if n]
    designs = {"fx": _fx, "ours": _ours, "export": _export, "export+": _export_outputs}
    ok = {d: 0 for d in designs}
    secs = {d: [] for d in designs}
    print(f"{'model':<18}" + "".join(f"{d:>10}" for d in designs))
    n = 0
    for e in MODELS:
        if names and e.name not in names:
            continue
        n += 1
        model, inputs = e.build()
        cells = []
        for d, fn in designs.items():
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    fn(model, inputs)
                secs[d].append(time.perf_counter() - t0)
                ok[d] += 1
                cells.append("ok")
            except Exception as exc:
                cells.append("FAIL")
                print(f"    {e.name} {d}: {type(exc).__name__}: {str(exc).splitlines()[0][:140] if str(exc) else ''}",
                      file=sys.stderr)
        print(f"{e.name:<18}" + "".join(f"{c:>10}" for c in cells), flush=True)
    print(f"{'taken':<18}" + "".join(f"{f'{ok[d]}/{n}':>10}" for d in designs))
    print(f"{'median s':<18}" + "".join(f"{statistics.median(secs[d]) if secs[d] else float('nan'):>10.2f}" for d in designs))


if __name__ == "__main__":
    main()
