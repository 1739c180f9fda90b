"""GReg-1 vs L1 one-shot pruning with the same fine-tuning budget (the shape of Table 1 of
"Neural Pruning via Growing Regularization", Wang et al., ICLR 2021), on scikit-learn's digits.

Model: the CIFAR ResNet-20 (16/32/64 channels, option-A shortcuts) on digits upsampled to 16x16
(grey repeated over 3 channels). Pruned layers: the first conv of every residual block (the
published single-layer spec, ``"*layer*.conv1"``), ``ceil(r * N)`` filters chosen by L1 norm on the
pretrained weights, the same filters for both methods.

* L1: remove them from the pretrained model, fine-tune.
* GReg-1: growing L2 penalty on them (schedule scaled, see ``--help`` and docs/experiments.md),
  stop at the published magnitude-ratio criterion, stabilize, remove, fine-tune.

Both fine-tune with the same epochs / LR schedule, from a fresh optimizer. One pretrained model;
each seed changes the data order of regularization and fine-tuning. Reported: test accuracy right
after pruning and after fine-tuning, mean ± std over seeds; MAC speedup (conv + linear).

    python examples/exp_greg1_vs_l1.py            # full run, ~15-30 min on 1 core
    python examples/exp_greg1_vs_l1.py --quick    # smoke test, seconds
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

NAME = "exp_greg1_vs_l1"
PATTERN = "*layer*.conv1"
PUBLISHED = {  # ResNet-56 / CIFAR-10, GReg-1 vs L1 (Table 1)
    0.5: (93.06, 92.97), 0.7: (92.23, 91.88), 0.9: (89.49, 87.34), 0.95: (85.97, 82.79)}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
    p.add_argument("--methods", nargs="+", default=["l1", "greg1"], choices=["l1", "greg1"],
                   help="which methods to run (e.g. '--methods l1 --ft-epochs 20 --tag l1_ft20': a longer-budget control)")
    p.add_argument("--out", default=C.DEFAULT_OUT, help="directory of the result JSON and plot")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=16, help="image side after upsampling")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--pretrain-lr", type=float, default=0.1)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--wd", type=float, default=5e-4)
    # GReg-1 (published: delta 1e-4, interval 10, ceiling 1, stabilize 10000, LR 1e-3, batch 128)
    p.add_argument("--reg-lr", type=float, default=0.01)
    p.add_argument("--reg-batch", type=int, default=32)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--ceiling", type=float, default=math.inf)
    p.add_argument("--early-stop", type=float, default=1000.0)
    p.add_argument("--stabilize", type=int, default=20)
    p.add_argument("--targets", default="group", choices=["weights", "group"],
                   help="group: filters + BN scale/shift of the pruned channels; weights: conv filters only")
    C.add_output_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.ratios, a.seeds, a.size, a.depth = [0.5, 0.9], [0], 8, 8
        a.pretrain_epochs, a.ft_epochs = 1, 1
        a.delta, a.ceiling, a.stabilize, a.early_stop = 0.5, 1.0, 2, 1000.0
        a.n_train, a.n_test = 256, 200
    else:
        a.n_train = a.n_test = None
    return a


def finetune(model, data, a, seed):
    C.train(model, data, a.ft_epochs, a.ft_lr, milestones=(a.ft_epochs // 2, (3 * a.ft_epochs) // 4),
            weight_decay=a.wd, batch_size=a.batch, seed=seed)


def main(argv=None):
    from depgraph_prune.models import cifar_resnet
    from depgraph_prune.regularize import GReg1, RegularizedPruner

    a = parse(argv)
    if a.replot:
        a, P = C.load_result(a, NAME)
        png = C.out_path(a, NAME, "png")
        plot(a, P["rows"], P["pretrained_acc"], png)
        return P
    C.setup_threads()
    timer = C.Timer()
    data = C.load_digits_split(a.size, channels=3)
    if a.n_train:
        data = (data[0][:a.n_train], data[1][:a.n_train], data[2][:a.n_test], data[3][:a.n_test])
    xte, yte = data[2], data[3]
    x1 = data[0][:1]

    torch.manual_seed(0)
    base = cifar_resnet(a.depth)
    C.train(base, data, a.pretrain_epochs, a.pretrain_lr,
            milestones=(a.pretrain_epochs // 2, (3 * a.pretrain_epochs) // 4), weight_decay=a.wd,
            batch_size=a.batch, seed=12345)
    base_acc = C.accuracy(base, xte, yte)
    C.log(f"pretrained ResNet-{a.depth} @ {a.size}x{a.size}: {base_acc:.2f}%  ({timer():.0f} s)", a.quiet)

    rows = []
    for ratio in a.ratios:
        spec = {PATTERN: ratio}
        for seed in a.seeds:
            row = dict(ratio=ratio, seed=seed)
            # L1 one-shot
            m = copy.deepcopy(base)
            pr = RegularizedPruner(m, x1, "oneshot", ratios=spec)
            l1_chosen = pr.pruned_channels
            res = pr.prune()
            row["speedup"] = res.speedup
            msg = f"r={ratio:<5} seed={seed} speedup {res.speedup:.2f}x"
            if "l1" in a.methods:
                row["l1_pruned"] = C.accuracy(m, xte, yte)
                finetune(m, data, a, seed)
                row["l1_ft"] = C.accuracy(m, xte, yte)
                msg += f" | L1: pruned {row['l1_pruned']:6.2f} ft {row['l1_ft']:6.2f}"
            if "greg1" in a.methods:
                m = copy.deepcopy(base)
                meth = GReg1(delta=a.delta, interval=a.interval, ceiling=a.ceiling, stabilize=a.stabilize,
                             early_stop_ratio=a.early_stop, targets=a.targets)
                pr = RegularizedPruner(m, x1, meth, ratios=spec)
                assert pr.pruned_channels == l1_chosen  # the same filters for both methods
                iters = C.regularize(m, pr, data, a.reg_lr, weight_decay=a.wd, batch_size=a.reg_batch, seed=seed)
                row.update(greg_iters=iters, greg_mag_ratio=pr.mag_ratio, greg_max_lambda=pr.max_lambda,
                           greg_regularized=C.accuracy(m, xte, yte))
                pr.prune()
                row["greg_pruned"] = C.accuracy(m, xte, yte)
                finetune(m, data, a, seed)
                row["greg_ft"] = C.accuracy(m, xte, yte)
                msg += (f" | GReg-1: {iters} it, h {row['greg_mag_ratio']:.3g}, lambda {row['greg_max_lambda']:.3g}, "
                        f"reg {row['greg_regularized']:6.2f} pruned {row['greg_pruned']:6.2f} ft {row['greg_ft']:6.2f}")
            C.log(f"{msg}   ({timer():.0f} s)", a.quiet)
            rows.append(row)

    cols = [("l1_pruned", "L1 right after pruning"), ("greg_pruned", "GReg-1 right after pruning"),
            ("l1_ft", "L1 + FT"), ("greg_ft", "GReg-1 + FT"), ("greg_iters", "GReg-1 reg. iters")]
    cols = [(k, h) for k, h in cols if k in rows[0]]
    summary = []
    table = ["| ratio | speedup | " + " | ".join(h for _, h in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for ratio in a.ratios:
        rs = [r for r in rows if r["ratio"] == ratio]
        sm = {"ratio": ratio, "speedup": rs[0]["speedup"]}
        sm.update({k: C.mean_std([r[k] for r in rs]) for k, _ in cols})
        summary.append(sm)
        table.append(f"| {ratio} | {rs[0]['speedup']:.2f}x | " +
                     " | ".join(C.fmt([r[k] for r in rs], 0 if k == "greg_iters" else 2) for k, _ in cols) + " |")
    table = "\n".join(table)
    C.log(f"\nunpruned: {base_acc:.2f}%\n{table}", a.quiet)

    payload = {"experiment": NAME, "args": {k: v for k, v in vars(a).items()}, "pretrained_acc": base_acc,
               "rows": rows, "summary": summary, "table_md": table, "published": PUBLISHED,
               "seconds": timer()}
    path = C.write_result(a, NAME, payload)
    plot(a, rows, base_acc, C.out_path(a, NAME, "png"))
    C.log(f"wrote {path} ({timer():.0f} s)", a.quiet)
    return payload


def plot(a, rows, base_acc, path):
    plt = C.plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = a.ratios
    for ax, keys, title in ((axes[0], ("l1_ft", "greg_ft"), "after fine-tuning"),
                            (axes[1], ("l1_pruned", "greg_pruned"), "right after pruning (no fine-tuning)")):
        for k, label, mk in ((keys[0], "L1 one-shot", "o"), (keys[1], "GReg-1", "s")):
            if k not in rows[0]:
                continue
            ms = [C.mean_std([r[k] for r in rows if r["ratio"] == x]) for x in xs]
            ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker=mk, capsize=3, label=label)
        ax.axhline(base_acc, color="grey", ls="--", lw=1, label="unpruned")
        ax.set_xlabel("pruning ratio of each block's conv1")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=.3)
        ax.legend()
    fig.suptitle(f"ResNet-{a.depth} on digits {a.size}x{a.size}: " + " vs ".join(
        {"greg1": "GReg-1", "l1": "L1 one-shot"}[x] for x in getattr(a, "methods", ["greg1", "l1"])) + " "
                 f"({len(a.seeds)} seeds, {a.ft_epochs} fine-tuning epochs)")
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
