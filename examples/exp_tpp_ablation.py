"""TPP ablation (the shape of Tables 3-4 of "Trainability Preserving Neural Pruning"): the Gram
decorrelation term on / off and the BN regularization on / off, measured by the test accuracy
right after pruning (no retraining), on a CNN with batch norm and scikit-learn's digits.

Model: ``digits_cnn`` (conv 16 - BN - ReLU - conv 32 - BN - ReLU - pool - conv 64 - BN - ReLU -
GAP - fc) on the native 8x8 digits, pretrained here. Pruned: the outputs of conv1..conv3 at
each ratio, filters chosen by L1 norm (the same filters for every variant). Variants:

* TPP: Gram term (weight 1000 * lambda) + growing L2 on pruned filters + BN scale/shift penalty;
* TPP without the Gram term (``gram_weight=0``);
* TPP without the BN penalty (``bn_reg=False``);
* neither (growing L2 on the pruned filters only, with TPP's staged zeroing);
* L1 one-shot, for reference (pruned from the pretrained weights, no training).

Each TPP variant runs the same scaled schedule (see ``--help``) with staged zeroing during
stabilization, then the zeroed channels are removed. One pretrained model; seeds change the data
order.

    python examples/exp_tpp_ablation.py            # full run, ~10-20 min on 1 core
    python examples/exp_tpp_ablation.py --quick    # smoke test, seconds
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exp_common as C  # noqa: E402

import torch  # noqa: E402

NAME = "exp_tpp_ablation"
VARIANTS = {  # name: (gram on, BN reg on)
    "TPP (Gram + BN)": (True, True),
    "no Gram": (False, True),
    "no BN reg": (True, False),
    "no Gram, no BN reg": (False, False),
}
PUBLISHED = {  # ResNet-56 / CIFAR-10, accuracy right after pruning (Tabs. 3-4), ratios 0.3/0.5/0.7/0.9/0.95
    "diagonal (Gram on all entries)": [92.67, 91.97, 90.21, 23.23, 14.23],
    "decorrelate (TPP)": [92.74, 92.07, 89.95, 30.35, 17.33]}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=C.DEFAULT_OUT)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--wd", type=float, default=5e-4)
    # TPP (published CIFAR: delta 1e-4 every 10 iterations up to 1, stabilize 10000, stage 100, LR 1e-3)
    p.add_argument("--reg-lr", type=float, default=1e-3)
    p.add_argument("--delta", type=float, default=2e-3)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--stabilize", type=int, default=300)
    p.add_argument("--stage-interval", type=int, default=50)
    C.add_output_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.ratios, a.seeds, a.pretrain_epochs = [0.5, 0.9], [0], 2
        a.delta, a.stabilize, a.stage_interval = 0.25, 8, 2
        a.n_train, a.n_test = 512, 200
    else:
        a.n_train = a.n_test = None
    return a


def main(argv=None):
    from depgraph_prune.models import digits_cnn
    from depgraph_prune.regularize import TPP, RegularizedPruner

    a = parse(argv)
    if a.replot:
        a, P = C.load_result(a, NAME)
        png = C.out_path(a, NAME, "png")
        plot(a, P["rows"], P["pretrained_acc"], ["L1 one-shot"] + list(VARIANTS), png)
        return P
    C.setup_threads()
    timer = C.Timer()
    data = C.load_digits_split(a.size)
    if a.n_train:
        data = (data[0][:a.n_train], data[1][:a.n_train], data[2][:a.n_test], data[3][:a.n_test])
    xte, yte = data[2], data[3]
    x1 = data[0][:1]

    torch.manual_seed(0)
    base = digits_cnn(width=a.width)
    C.train(base, data, a.pretrain_epochs, 0.1, milestones=(a.pretrain_epochs // 2, (3 * a.pretrain_epochs) // 4),
            weight_decay=a.wd, batch_size=a.batch, seed=12345)
    base_acc = C.accuracy(base, xte, yte)
    C.log(f"pretrained digits_cnn(width={a.width}) @ {a.size}x{a.size}: {base_acc:.2f}%  ({timer():.0f} s)", a.quiet)

    rows = []
    for ratio in a.ratios:
        m = copy.deepcopy(base)
        pr = RegularizedPruner(m, x1, "oneshot", ratio=ratio)
        chosen = pr.pruned_channels
        res = pr.prune()
        l1 = C.accuracy(m, xte, yte)
        rows.append(dict(ratio=ratio, seed=None, variant="L1 one-shot", pruned=l1, speedup=res.speedup))
        C.log(f"r={ratio}: L1 one-shot right after pruning {l1:.2f}% (speedup {res.speedup:.2f}x)", a.quiet)
        for seed in a.seeds:
            for name, (gram, bn) in VARIANTS.items():
                m = copy.deepcopy(base)
                meth = TPP(delta=a.delta, interval=a.interval, stabilize=a.stabilize, stage_interval=a.stage_interval,
                           gram_weight=1000.0 if gram else 0.0, bn_reg=bn)
                pr = RegularizedPruner(m, x1, meth, ratio=ratio)
                assert pr.pruned_channels == chosen
                accs = {}

                def on_update(it, pr=pr, m=m, accs=accs):
                    if pr.phase == "stabilize" and "at_ceiling" not in accs:
                        accs["at_ceiling"] = C.accuracy(m, xte, yte)  # before any zeroing

                iters = C.regularize(m, pr, data, a.reg_lr, weight_decay=a.wd, batch_size=a.batch, seed=seed,
                                     on_update=on_update)
                pre = C.accuracy(m, xte, yte)
                pr.prune()
                acc = C.accuracy(m, xte, yte)
                rows.append(dict(ratio=ratio, seed=seed, variant=name, pruned=acc, before_removal=pre,
                                 at_ceiling=accs.get("at_ceiling"), iters=iters))
                C.log(f"  seed {seed} {name:<20}: at lambda=ceiling {accs.get('at_ceiling', float('nan')):6.2f}%, "
                      f"right after pruning {acc:6.2f}% ({iters} it, {timer():.0f} s)", a.quiet)

    names = ["L1 one-shot"] + list(VARIANTS)
    table = ["| variant | " + " | ".join(f"ratio {r}" for r in a.ratios) + " |", "|---|" + "---|" * len(a.ratios)]
    table_ceiling = list(table)
    for name in names:
        cells, cells_c = [], []
        for r in a.ratios:
            rs = [x for x in rows if x["variant"] == name and x["ratio"] == r]
            cells.append(C.fmt([x["pruned"] for x in rs]))
            cc = [x["at_ceiling"] for x in rs if x.get("at_ceiling") is not None]
            cells_c.append(C.fmt(cc) if cc else "-")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
        if name != "L1 one-shot":
            table_ceiling.append(f"| {name} | " + " | ".join(cells_c) + " |")
    table, table_ceiling = "\n".join(table), "\n".join(table_ceiling)
    C.log(f"\nunpruned {base_acc:.2f}%\naccuracy right after pruning:\n{table}\n\n"
          f"accuracy when lambda reaches the ceiling (before the staged zeroing):\n{table_ceiling}", a.quiet)

    payload = {"experiment": NAME, "args": vars(a), "pretrained_acc": base_acc, "rows": rows,
               "table_md": table, "table_ceiling_md": table_ceiling, "published": PUBLISHED, "seconds": timer()}
    path = C.write_result(a, NAME, payload)
    plot(a, rows, base_acc, names, C.out_path(a, NAME, "png"))
    C.log(f"wrote {path} ({timer():.0f} s)", a.quiet)
    return payload


def plot(a, rows, base_acc, names, path):
    import numpy as np
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(9.5, 4))
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        ms = [C.mean_std([x["pruned"] for x in rows if x["variant"] == name and x["ratio"] == r]) for r in a.ratios]
        ax.bar(np.arange(len(a.ratios)) + (i - (len(names) - 1) / 2) * w, [m for m, _ in ms], w,
               yerr=[s for _, s in ms], capsize=2, label=name)
    ax.axhline(base_acc, color="grey", ls="--", lw=1, label="unpruned")
    ax.set_xticks(range(len(a.ratios)), [str(r) for r in a.ratios])
    ax.set_xlabel("pruning ratio (conv1-conv3)")
    ax.set_ylabel("test accuracy right after pruning (%)")
    ax.set_title(f"TPP ablation, digits_cnn @ {a.size}x{a.size} ({len(a.seeds)} seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=.3, axis="y")
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
