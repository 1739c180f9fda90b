"""Unstructured pruning: GReg-1 and GReg-2 at weight granularity vs one-shot magnitude pruning (the
shape of Table 4 of "Neural Pruning via Growing Regularization", Wang et al., ICLR 2021), on
scikit-learn's digits.

Model: the small digits CNN (``digits_cnn()``, width 16: three 3x3 convs with BN, global pooling, a
linear classifier; 23,824 conv/linear weights) on the native 8x8 images. Sparsity: the same
fraction ``s`` of the weights of *every* conv and linear layer, classifier included (the official
code's local per-layer ratio), ``ceil(s * n)`` weights per layer chosen by ``|w|``.

* one-shot: zero the smallest ``|w|`` of the pretrained model, fine-tune with masks.
* GReg-1: ``S_p`` = the same weights; growing per-weight L2 penalty on them (schedule compressed,
  see ``--help`` and docs/experiments.md) until ``max lambda > ceiling`` or the magnitude ratio
  reaches ``early_stop``; stabilize; zero and mask; fine-tune.
* GReg-2: uniform growth on all weights until ``pick_ceiling``, ``S_p`` by the current ``|w|``,
  then the GReg-1 push with the negative kept penalty; stabilize; zero and mask; fine-tune.
* control: one-shot with a longer fine-tuning budget (``ft_epochs`` plus as many epochs as GReg-2
  spent regularizing), so that GReg's extra training is not the only thing compared.

Every method fine-tunes with the same epochs / LR schedule, from a fresh optimizer, with the masks
kept by ``dp.keep_masks``. One pretrained model; each seed changes the data order of
regularization and fine-tuning. Reported: test accuracy right after pruning and after fine-tuning,
mean ± std over seeds.

    python examples/exp_unstructured_greg.py            # full run, a few minutes on 1 core
    python examples/exp_unstructured_greg.py --quick    # smoke test, seconds
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exp_common as C  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

NAME = "exp_unstructured_greg"
PUBLISHED = {  # ResNet-50 / ImageNet at 82.7% sparsity, top-1 (Table 4): base 76.13
    "greg1": 75.45, "greg2": 75.27, "woodfisher": 75.20, "gsm": 74.71, "dpf": 74.73}
METHODS = ("oneshot", "greg1", "greg2", "oneshot_long")
LABELS = {"oneshot": "one-shot magnitude", "greg1": "GReg-1", "greg2": "GReg-2",
          "oneshot_long": "one-shot, longer FT"}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    p.add_argument("--out", default=C.DEFAULT_OUT, help="directory of the result JSON and plot")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--pretrain-lr", type=float, default=0.1)
    p.add_argument("--ft-epochs", type=int, default=8)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--wd", type=float, default=5e-4)
    # GReg (published: LR 1e-3, delta 1e-4 every K_u = 5-10 iterations up to 1, stabilize 1e4-4e4,
    # GReg-2 pick: 1e-5 up to 1e-2): compressed so that lr * sum(lambda) over the run is of the same order
    p.add_argument("--reg-lr", type=float, default=0.01)
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--ceiling", type=float, default=5.0)
    p.add_argument("--early-stop", type=float, default=1000.0)
    p.add_argument("--stabilize", type=int, default=50)
    p.add_argument("--pick-delta", type=float, default=5e-4)
    p.add_argument("--pick-ceiling", type=float, default=0.05)
    p.add_argument("--kept-penalty", type=float, default=-1e-4)
    p.add_argument("--bn-probe", action="store_true",
                   help="only pretrain and probe one-shot pruning: conv1 dense or not, BN statistics re-estimated "
                        "or not (writes <name>_bnprobe.json)")
    C.add_output_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.sparsities, a.seeds, a.width = [0.8, 0.95], [0], 8
        a.pretrain_epochs, a.ft_epochs = 1, 1
        a.delta, a.ceiling, a.stabilize, a.pick_delta, a.pick_ceiling = 0.5, 2.0, 2, 0.01, 0.02
        a.n_train, a.n_test = 256, 200
    else:
        a.n_train = a.n_test = None
    return a


def finetune(model, data, a, seed, epochs):
    """The experiments' SGD fine-tuning, with the masks re-applied after every step."""
    import depgraph_prune as dp
    xtr, ytr = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    opt = C.sgd(model, a.ft_lr, a.wd)
    dp.keep_masks(opt, model)
    model.train()
    for ep in range(epochs):
        C.set_lr(opt, C.step_lr(a.ft_lr, (epochs // 2, (3 * epochs) // 4), ep))
        for xb, yb in C.batches(xtr, ytr, a.batch, gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()


def main(argv=None):
    import depgraph_prune as dp
    from depgraph_prune.models import digits_cnn
    from depgraph_prune.regularize import GReg1, GReg2, RegularizedPruner

    a = parse(argv)
    if a.replot:
        a, P = C.load_result(a, NAME)
        plot(a, P["rows"], P["pretrained_acc"], C.out_path(a, NAME, "png"))
        return P
    C.setup_threads()
    timer = C.Timer()
    data = C.load_digits_split(8)
    if a.n_train:
        data = (data[0][:a.n_train], data[1][:a.n_train], data[2][:a.n_test], data[3][:a.n_test])
    xte, yte = data[2], data[3]
    iters_per_epoch = math.ceil(len(data[1]) / a.batch)

    torch.manual_seed(0)
    base = digits_cnn(width=a.width)
    C.train(base, data, a.pretrain_epochs, a.pretrain_lr,
            milestones=(a.pretrain_epochs // 2, (3 * a.pretrain_epochs) // 4), weight_decay=a.wd,
            batch_size=a.batch, seed=12345)
    base_acc = C.accuracy(base, xte, yte)
    n_weights = sum(p.numel() for n, _, _ in dp.unstructured.prunable_weights(base)
                    for p in [dict(base.named_parameters())[n]])
    C.log(f"pretrained digits CNN (width {a.width}, {n_weights} conv/linear weights): {base_acc:.2f}%  "
          f"({timer():.0f} s)", a.quiet)

    if a.bn_probe:
        return bn_probe(a, base, data, base_acc, timer)

    rows = []
    for s in a.sparsities:
        for seed in a.seeds:
            row = dict(sparsity=s, seed=seed)
            # one-shot magnitude
            m = copy.deepcopy(base)
            rep = dp.sparsify(m, sparsity=s, scope="layer")
            oneshot_masks = {k: v.clone() for k, v in dp.masks(m).items()}
            row["achieved"] = rep.sparsity
            row["oneshot_pruned"] = C.accuracy(m, xte, yte)
            long_model = copy.deepcopy(m)
            finetune(m, data, a, seed, a.ft_epochs)
            row["oneshot_ft"] = C.accuracy(m, xte, yte)
            msg = f"s={s:<5} seed={seed} | one-shot: pruned {row['oneshot_pruned']:6.2f} ft {row['oneshot_ft']:6.2f}"
            # GReg-1 and GReg-2
            for name in ("greg1", "greg2"):
                m = copy.deepcopy(base)
                if name == "greg1":
                    meth = GReg1(delta=a.delta, interval=a.interval, ceiling=a.ceiling, stabilize=a.stabilize,
                                 early_stop_ratio=a.early_stop)
                else:
                    meth = GReg2(delta=a.delta, interval=a.interval, ceiling=a.ceiling, stabilize=a.stabilize,
                                 pick_delta=a.pick_delta, pick_ceiling=a.pick_ceiling, kept_penalty=a.kept_penalty,
                                 early_stop_ratio=a.early_stop)
                pr = RegularizedPruner(m, None, meth, sparsity=s, granularity="weight")
                if name == "greg1":  # the same weights as one-shot
                    assert all(torch.equal(pr.pruned_masks[k], oneshot_masks[k]) for k in oneshot_masks)
                iters = C.regularize(m, pr, data, a.reg_lr, weight_decay=a.wd, batch_size=a.batch, seed=seed)
                row[f"{name}_iters"] = iters
                row[f"{name}_mag_ratio"] = C.nan_to_none(pr.mag_ratio)
                row[f"{name}_regularized"] = C.accuracy(m, xte, yte)
                rep = pr.prune()
                assert abs(rep.sparsity - row["achieved"]) < 1e-9
                if name == "greg2":
                    row["greg2_overlap"] = sum(int((dp.masks(m)[k] & oneshot_masks[k]).sum()) for k in oneshot_masks) \
                        / sum(int(v.sum()) for v in oneshot_masks.values())
                row[f"{name}_pruned"] = C.accuracy(m, xte, yte)
                finetune(m, data, a, seed, a.ft_epochs)
                row[f"{name}_ft"] = C.accuracy(m, xte, yte)
                msg += (f" | {LABELS[name]}: {iters} it, h {row[f'{name}_mag_ratio'] or float('nan'):.3g}, "
                        f"pruned {row[f'{name}_pruned']:6.2f} ft {row[f'{name}_ft']:6.2f}")
            # control: one-shot with GReg-2's regularization iterations added to fine-tuning
            extra = math.ceil(row["greg2_iters"] / iters_per_epoch)
            row["oneshot_long_epochs"] = a.ft_epochs + extra
            row["oneshot_long_pruned"] = row["oneshot_pruned"]
            finetune(long_model, data, a, seed, a.ft_epochs + extra)
            row["oneshot_long_ft"] = C.accuracy(long_model, xte, yte)
            assert dp.sparsity_report(long_model).masked == sum(int(v.sum()) for v in oneshot_masks.values())
            msg += f" | one-shot {a.ft_epochs + extra} ep: ft {row['oneshot_long_ft']:6.2f}"
            C.log(f"{msg}   ({timer():.0f} s)", a.quiet)
            rows.append(row)

    table, summary = tables(a, rows)
    C.log(f"\nunpruned: {base_acc:.2f}%\n{table}", a.quiet)
    payload = {"experiment": NAME, "args": vars(a), "pretrained_acc": base_acc, "n_weights": n_weights,
               "rows": rows, "summary": summary, "table_md": table, "published": PUBLISHED, "seconds": timer()}
    path = C.write_result(a, NAME, payload)
    plot(a, rows, base_acc, C.out_path(a, NAME, "png"))
    C.log(f"wrote {path} ({timer():.0f} s)", a.quiet)
    return payload


def bn_probe(a, base, data, base_acc, timer):
    """Why one-shot drops to chance right after pruning: the first conv (9 weights per filter) and
    stale BN running statistics. Deterministic (no training): one run per cell."""
    import depgraph_prune as dp
    out = []
    for s in a.sparsities:
        for skip in (False, True):
            m = copy.deepcopy(base)
            dp.sparsify(m, s, ignored_layers=["conv1"] if skip else ())
            pruned = C.accuracy(m, data[2], data[3])
            for mod in m.modules():  # re-estimate BN statistics on the training images, no training
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
                    mod.momentum = None
            m.train()
            with torch.no_grad():
                m(data[0])
            out.append({"sparsity": s, "conv1": "dense" if skip else "pruned", "pruned": pruned,
                        "bn_reestimated": C.accuracy(m, data[2], data[3])})
    table = ["| sparsity | conv1 | one-shot, pruned | + BN statistics re-estimated |", "|---|---|---|---|"]
    table += [f"| {r['sparsity']:.0%} | {r['conv1']} | {r['pruned']:.2f} | {r['bn_reestimated']:.2f} |" for r in out]
    table = "\n".join(table)
    C.log(table, a.quiet)
    a.tag = (a.tag + "_" if a.tag else "") + "bnprobe"
    payload = {"experiment": NAME, "args": vars(a), "pretrained_acc": base_acc, "probe": out, "table_md": table,
               "seconds": timer()}
    C.write_result(a, NAME, payload)
    return payload


def tables(a, rows):
    cols = [("oneshot_pruned", "one-shot, pruned"), ("greg1_pruned", "GReg-1, pruned"),
            ("greg2_pruned", "GReg-2, pruned"), ("oneshot_ft", "one-shot + FT"), ("greg1_ft", "GReg-1 + FT"),
            ("greg2_ft", "GReg-2 + FT"), ("oneshot_long_ft", "one-shot + longer FT"),
            ("greg1_iters", "GReg-1 reg. iters"), ("greg2_iters", "GReg-2 reg. iters")]
    out = ["| sparsity | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    summary = []
    for s in a.sparsities:
        rs = [r for r in rows if r["sparsity"] == s]
        summary.append({"sparsity": s, **{k: C.mean_std([r[k] for r in rs]) for k, _ in cols}})
        out.append(f"| {s:.0%} | " + " | ".join(C.fmt([r[k] for r in rs], 0 if k.endswith("iters") else 2)
                                             for k, _ in cols) + " |")
    return "\n".join(out), summary


def plot(a, rows, base_acc, path):
    plt = C.plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = a.sparsities
    marks = {"oneshot": "o", "greg1": "s", "greg2": "^", "oneshot_long": "x"}
    for ax, suffix, title in ((axes[0], "ft", "after fine-tuning"), (axes[1], "pruned", "right after pruning")):
        for meth in METHODS:
            if suffix == "pruned" and meth == "oneshot_long":
                continue
            k = f"{meth}_{suffix}"
            ms = [C.mean_std([r[k] for r in rows if r["sparsity"] == x]) for x in xs]
            ax.errorbar([100 * x for x in xs], [m for m, _ in ms], yerr=[s for _, s in ms], marker=marks[meth],
                        capsize=3, label=LABELS[meth], ls=":" if meth == "oneshot_long" else "-")
        ax.axhline(base_acc, color="grey", ls="--", lw=1, label="unpruned")
        ax.set_xlabel("sparsity of every conv / linear layer (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Unstructured pruning, digits CNN (width {a.width}): GReg ceiling {a.ceiling:g}, "
                 f"delta {a.delta:g}; {len(a.seeds)} seeds, {a.ft_epochs} fine-tuning epochs")
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
