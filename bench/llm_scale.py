"""Language-model scale on one machine: a ~1B-parameter Llama pruned in one call, a 7B one planned on
the meta device, and the build time against the layer count.

    python bench/llm_scale.py                  # every part below, each in a fresh process
    python bench/llm_scale.py --part prune     # 1B, bfloat16: time and peak memory of one dp.prune
    python bench/llm_scale.py --part meta7b    # 7B on the meta device: graph, groups, a random plan
    python bench/llm_scale.py --part scaling   # build time at 4, 16 and 32 layers (1B widths, meta)
    python bench/llm_scale.py --impl local     # bench/_llama.py's hand-written decoder instead

The model (``--impl hf``, default) is ``transformers.LlamaForCausalLM`` built from a
``LlamaConfig`` with Llama-3.2-1B's shape (hidden 2048, MLP 8192, 16 layers, 32 query / 8
key-value heads, vocabulary 128,256, tied embedding: 1.24 B parameters), random init, in
bfloat16. ``--impl local`` is ``bench/_llama.py``'s hand-written decoder of the same shape.

``prune``: ``dp.prune(model, ids, ratios=RATIOS, importance="l2")`` (``bench/_llama.py``), one
thread, 16 example tokens: half of every MLP's intermediate width and a quarter of the key/value
heads, each with the query heads that read it; the residual width is left whole. Memory is measured as in ``bench/memory.py``:
``(peak RSS - RSS before the model was built) / weight bytes`` (goal <= 1.3) and the pruning
overhead over the loaded model. Goals (issue 18): <= 2 minutes, <= 1.3x.

``meta7b``: Llama-2-7B's shape on the meta device: ``dp.build_graph`` and a ``local_plan`` with
``importance="random"`` (goal: under a minute, no weight memory: the RSS growth is printed).

``scaling``: ``dp.build_graph`` of the 1B-wide model on the meta device with 4, 16 and 32 layers,
median of ``--repeat``; the log-log slope of build time against layers and parameters.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import _llama as L  # noqa: E402
from memory import peak, reset_peak, rss  # noqa: E402

MiB = 2 ** 20


def _model(impl, shape, dtype, device):
    import torch
    if impl == "local":
        return L.build(shape, dtype=dtype, device=device), L.RATIOS
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, max_position_embeddings=max(shape.seq, 128),
                      tie_word_embeddings=True, torch_dtype=dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(dtype)
    if device != "meta":
        model = model.to_empty(device=device)
        model.tie_weights()  # to_empty off the meta device unties them
        with torch.no_grad():
            for n, p in model.named_parameters():
                (p.fill_(1.0) if n.endswith("norm.weight") else p.normal_(0.0, 0.02))
            for n, b in model.named_buffers():
                if n.endswith("inv_freq"):
                    hd = shape.hidden // shape.heads
                    b.copy_(1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)))
    return model.eval(), {f"model.{k}": v for k, v in L.RATIOS.items()}


def _inputs(impl, shape, device="cpu"):
    ids = L.example_ids(shape, device)
    return ids if impl == "local" else {"input_ids": ids}


def part_prune(impl):
    import torch
    import depgraph_prune as dp
    C.single_thread()
    shape = L.LLAMA_1B
    gc.collect()
    base = rss()
    t = time.perf_counter()
    model, ratios = _model(impl, shape, torch.bfloat16, "cpu")
    build_s = time.perf_counter() - t
    ids = _inputs(impl, shape)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    n_params = sum(p.numel() for p in model.parameters())
    gc.collect()
    with_model = rss()
    reset_peak()
    t = time.perf_counter()
    result = dp.prune(model, ids, ratios=ratios, importance="l2")
    sec = time.perf_counter() - t
    top = peak()
    after = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        out = model(**ids) if isinstance(ids, dict) else model(ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    print(f"model: {impl} Llama, {n_params / 1e9:.3f} B parameters, {weights / MiB:.0f} MiB of bfloat16 weights "
          f"(built in {build_s:.1f} s, not timed)")
    print(result)
    print(f"dp.prune: {sec:.1f} s on 1 thread (goal <= 120 s)")
    print(f"peak RSS: (peak - base) / weights = {(top - base) / weights:.2f}x (goal <= 1.3x); "
          f"pruning overhead over the loaded model: {(top - with_model) / MiB:.0f} MiB = "
          f"{(top - with_model) / weights:.2f}x weights; base {base / MiB:.0f} MiB, with model "
          f"{with_model / MiB:.0f} MiB, peak {top / MiB:.0f} MiB")
    print(f"after: {after / MiB:.0f} MiB of weights; output {tuple(logits.shape)}, dtype {logits.dtype}")


def part_meta7b(impl):
    import torch
    import depgraph_prune as dp
    from depgraph_prune.importance import resolve
    from depgraph_prune.plan import group_ratios, local_plan
    C.single_thread()
    shape = L.LLAMA_7B
    base = rss()
    model, ratios = _model(impl, shape, torch.bfloat16, "meta")
    ids = _inputs(impl, shape)
    reset_peak()
    t = time.perf_counter()
    graph = dp.build_graph(model, ids)
    t_graph = time.perf_counter() - t
    plan = local_plan(graph, resolve("random"), group_ratios(graph, None, ratios))
    total = time.perf_counter() - t
    removed = sum(len(c) for c in plan.values())
    print(f"7B ({shape.params() / 1e9:.2f} B parameters, {shape.layers} layers) on the meta device: "
          f"graph {t_graph:.1f} s, graph + groups + plan {total:.1f} s (goal < 60 s); "
          f"{len(graph.groups)} groups, {len(graph.prunable_groups)} prunable, plan removes {removed} channels "
          f"in {len(plan)} groups; RSS {base / MiB:.0f} -> peak {peak() / MiB:.0f} MiB "
          f"(weights would be {shape.params() * 2 / MiB:.0f} MiB in bfloat16)")


def part_scaling(impl, repeat):
    import statistics
    import torch
    import depgraph_prune as dp
    C.single_thread()
    rows = []
    for n in (4, 16, 32):
        shape = L.LlamaShape(layers=n)
        times = []
        for _ in range(repeat):
            model, _ = _model(impl, shape, torch.bfloat16, "meta")
            ids = _inputs(impl, shape)
            gc.collect()
            t = time.perf_counter()
            dp.build_graph(model, ids)
            times.append(time.perf_counter() - t)
            del model
        rows.append((n, shape.params(), statistics.median(times)))
        print(f"  {n} layers: build {rows[-1][2]:.2f} s", flush=True)

    def slope(xs, ys):
        lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    print(C.table(["layers", "parameters", "build s", "ms per layer"],
                  [[n, f"{p / 1e9:.2f} B", f"{s:.2f}", f"{1e3 * s / n:.0f}"] for n, p, s in rows]))
    print(f"log-log slope: build time vs layers {slope([r[0] for r in rows], [r[2] for r in rows]):.2f}, "
          f"vs parameters {slope([r[1] for r in rows], [r[2] for r in rows]):.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "prune", "meta7b", "scaling"], default="all")
    p.add_argument("--impl", choices=["local", "hf"], default="hf")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.part == "all":
        print(C.machine_line(), flush=True)
        for part in ("prune", "meta7b", "scaling"):
            print(f"\n== {part}", flush=True)
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--part", part, "--impl", args.impl,
                            "--repeat", str(args.repeat)], env=env, check=False)
        return
    import warnings
    warnings.filterwarnings("ignore")
    {"prune": lambda: part_prune(args.impl), "meta7b": lambda: part_meta7b(args.impl),
     "scaling": lambda: part_scaling(args.impl, args.repeat)}[args.part]()


if __name__ == "__main__":
    main()
