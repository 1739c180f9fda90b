"""GReg-2's weight-separation effect (Figure 1 of "Neural Pruning via Growing Regularization"):
under a uniformly growing L2 penalty, the spread of a layer's filter L1 norms (std / mean) grows.

GReg-2's pick phase (every ``interval`` iterations ``lambda += pick_delta`` on *all* filters of the
regularized layers) runs from pretrained weights up to ``lambda = pick_ceiling``, recording
std / mean of the filter L1 norms at every update. A control run trains for the same iterations
with the same data order and no penalty. Also recorded: the test accuracy along the way, the
sorted normalized filter norms of one layer at a few points (the figure's second row), and how
much the filters GReg-2 picks at the end differ from plain L1 on the pretrained weights.

Models (``--model``), both on scikit-learn's digits, pretrained here:

* ``cnn_nobn`` (default): ``digits_cnn`` with its BN layers replaced by identities, 8x8 input;
  regularized: conv1..conv3. The paper's argument (equilibrium ``w h / (h + lambda)`` with
  curvature ``h``) applies directly.
* ``resnet``: the CIFAR ResNet-20 at 16x16; regularized: each block's conv1 (9 layers). Every conv
  is followed by BN, which makes the loss invariant to a filter's scale; the penalty goes on the
  conv filters only (official code) and, with ``--targets group``, also on the BN scale / shift.

    python examples/exp_greg2_separation.py                    # BN-free CNN, ~2 min
    python examples/exp_greg2_separation.py --model resnet --pick-ceiling 0.5 --tag resnet
    python examples/exp_greg2_separation.py --quick            # smoke test, seconds
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exp_common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

NAME = "exp_greg2_separation"
PATTERN = "*layer*.conv1"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=C.DEFAULT_OUT)
    p.add_argument("--model", default="cnn_nobn", choices=["resnet", "cnn_nobn"],
                   help="resnet: CIFAR ResNet (BN after every conv), regularizes each block's conv1; cnn_nobn: "
                        "digits_cnn with its BN layers replaced by identities (8x8 input), regularizes conv1-conv3")
    p.add_argument("--size", type=int, default=None, help="image side (default 16 for resnet, 8 for cnn_nobn)")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--pretrain-lr", type=float, default=None, help="default 0.1 (resnet), 0.02 (cnn_nobn)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--ratio", type=float, default=0.5, help="ratio of the S_p picked at the end")
    # published pick phase: pick_delta 1e-5 every 10 iterations up to 1e-2 (10,000 iterations), LR 1e-3
    p.add_argument("--reg-lr", type=float, default=1e-3)
    p.add_argument("--pick-delta", type=float, default=1e-3)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--pick-ceiling", type=float, default=1.0)
    p.add_argument("--targets", nargs="+", default=["weights", "group"], choices=["weights", "group"],
                   help="penalty on the conv filters only (official code) and/or on filters + BN scale/shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=25, help="test accuracy every this many iterations")
    C.add_output_args(p)
    a = p.parse_args(argv)
    if a.size is None:
        a.size = 16 if a.model == "resnet" else 8
    if a.pretrain_lr is None:
        a.pretrain_lr = 0.1 if a.model == "resnet" else 0.02
    if a.model == "cnn_nobn":
        a.targets = ["weights"]  # no norm layers: "group" would be the same penalty
    if a.quick:
        a.size, a.depth, a.pretrain_epochs = 8, 8, 1
        a.pick_delta, a.pick_ceiling, a.eval_every = 0.05, 0.5, 5
        a.n_train, a.n_test = 256, 200
    else:
        a.n_train = a.n_test = None
    return a


def main(argv=None):
    from depgraph_prune.analysis import filter_norm_separation
    from depgraph_prune.regularize import GReg2, RegularizedPruner

    a = parse(argv)
    if a.replot:
        a, P = C.load_result(a, NAME)
        png = C.out_path(a, NAME, "png")
        plot(a, P, png)
        return P
    C.setup_threads()
    timer = C.Timer()
    data = C.load_digits_split(a.size, channels=3 if a.model == "resnet" else 1)
    if a.n_train:
        data = (data[0][:a.n_train], data[1][:a.n_train], data[2][:a.n_test], data[3][:a.n_test])
    xte, yte = data[2], data[3]
    x1 = data[0][:1]

    torch.manual_seed(a.seed)
    base, pattern, title = make_model(a)
    C.train(base, data, a.pretrain_epochs, a.pretrain_lr,
            milestones=(a.pretrain_epochs // 2, (3 * a.pretrain_epochs) // 4),
            weight_decay=a.wd, batch_size=a.batch, seed=12345)
    base_acc = C.accuracy(base, xte, yte)
    C.log(f"pretrained {title} @ {a.size}x{a.size}: {base_acc:.2f}%  ({timer():.0f} s)", a.quiet)

    spec = {pattern: a.ratio}
    n_updates = int(np.ceil(a.pick_ceiling / a.pick_delta - 1e-9))
    n_iters = n_updates * a.interval
    l1_choice = RegularizedPruner(copy.deepcopy(base), x1, "oneshot", ratios=spec).pruned_channels
    layers = list(l1_choice)
    sep0 = filter_norm_separation(base, layers)
    focus = layers[len(layers) // 2]
    snap_at = {n_iters // 4, n_iters // 2, n_iters}

    # GReg-2 pick phase, once per penalty target
    runs = {}
    for targets in a.targets:
        m = copy.deepcopy(base)
        meth = GReg2(pick_delta=a.pick_delta, pick_ceiling=a.pick_ceiling, interval=a.interval, targets=targets)
        pr = RegularizedPruner(m, x1, meth, ratios=spec, record_separation=True)
        assert pr.regularized == layers
        snaps = {0: _normalized(m, focus)}
        acc = [(0, 0.0, base_acc)]

        def on_update(it, m=m, pr=pr, snaps=snaps, acc=acc):
            if it % a.eval_every == 0 or it == n_iters:
                acc.append((it, pr.max_lambda, C.accuracy(m, xte, yte)))
            if it in snap_at:
                snaps[it] = _normalized(m, focus)

        iters = C.regularize(m, pr, data, a.reg_lr, weight_decay=a.wd, batch_size=a.batch, seed=a.seed,
                             max_iters=n_iters, on_update=on_update)
        assert all(v is not None for v in pr.pruned_channels.values()), "pick phase did not finish"
        runs[targets] = {
            "curves": {n: [(0, 0.0, sep0[n])] + [tuple(r) for r in pr.separation[n]] for n in layers},
            "overlap": {n: len(set(pr.pruned_channels[n]) & set(l1_choice[n])) / len(l1_choice[n]) for n in layers},
            "acc": acc, "snapshots": {str(k): v for k, v in snaps.items()}, "iters": iters}
        C.log(f"GReg-2 pick (penalty on {targets}): {iters} iterations to lambda {pr.max_lambda:.3g}, "
              f"test acc {acc[-1][2]:.2f}%  ({timer():.0f} s)", a.quiet)

    # control: same iterations, same data order, no penalty
    mc = copy.deepcopy(base)
    ctrl = {n: [(0, 0.0, sep0[n])] for n in layers}
    acc_ctrl = [(0, 0.0, base_acc)]

    def lam_at(it):
        return min(a.pick_delta * (it // a.interval), a.pick_ceiling)

    def on_ctrl(it):
        if it % a.interval == 0:
            for n, v in filter_norm_separation(mc, layers).items():
                ctrl[n].append((it, lam_at(it), v))
        if it % a.eval_every == 0 or it == n_iters:
            acc_ctrl.append((it, lam_at(it), C.accuracy(mc, xte, yte)))

    _train_plain(mc, data, a, n_iters, on_ctrl)
    C.log(f"control: {n_iters} iterations, test acc {acc_ctrl[-1][2]:.2f}%  ({timer():.0f} s)", a.quiet)

    def at_lambda(curve, lam):
        return min(curve, key=lambda r: abs(r[1] - lam))[2]

    marks = [m for m in (0.01, a.pick_ceiling / 4, a.pick_ceiling / 2) if m < a.pick_ceiling] + [a.pick_ceiling]
    rows = []
    for n in layers:
        row = {"layer": n, "filters": len(base.get_submodule(n).weight), "sep_lambda0": sep0[n]}
        for t, run in runs.items():
            for lam in marks:
                row[f"{t}@{lam:g}"] = at_lambda(run["curves"][n], lam)
            row[f"overlap_{t}"] = run["overlap"][n]
        row["control_end"] = ctrl[n][-1][2]
        rows.append(row)
    mean_row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "layer"}
    mean_row["layer"] = "**mean**"
    cols = [k for k in rows[0] if k not in ("layer", "filters")]
    head = {"sep_lambda0": "lambda 0", "control_end": "control, same iterations"}
    for t in runs:
        for lam in marks:
            head[f"{t}@{lam:g}"] = f"{t}: lambda {lam:g}"
        head[f"overlap_{t}"] = f"{t}: S_p overlap with L1"
    table = ["| layer | filters | " + " | ".join(head[c] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows + [mean_row]:
        cells = [f"{100 * r[c]:.0f}%" if c.startswith("overlap_") else f"{r[c]:.3f}" for c in cols]
        table.append(f"| {r['layer']} | {r['filters']:.0f} | " + " | ".join(cells) + " |")
    table = "\n".join(table)
    # compact: mean over the layers at a few lambdas, control at the same iterations
    compact = ["| lambda | iteration | " + " | ".join(f"penalty on {t}" for t in runs) + " | control (no penalty) |",
               "|---|---|" + "---|" * (len(runs) + 1)]
    for lam in [0.0] + marks:
        it = next(r[0] for r in runs[next(iter(runs))]["curves"][layers[0]] if r[1] >= lam - 1e-12)
        vals = [np.mean([at_lambda(run["curves"][n], lam) for n in layers]) for run in runs.values()]
        cv = np.mean([min(ctrl[n], key=lambda r: abs(r[0] - it))[2] for n in layers])
        compact.append(f"| {lam:g} | {it} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {cv:.3f} |")
    compact = "\n".join(compact)
    acc_line = ("test accuracy: pretrained " + f"{base_acc:.2f}%, " +
                ", ".join(f"end of pick phase ({t}) {run['acc'][-1][2]:.2f}%" for t, run in runs.items()) +
                f", control {acc_ctrl[-1][2]:.2f}%")
    C.log(f"\nstd / mean of filter L1 norms:\n{table}\n\nmean over the layers:\n{compact}\n{acc_line}", a.quiet)

    payload = {"experiment": NAME, "args": vars(a), "model": title, "pretrained_acc": base_acc, "layers": layers,
               "runs": runs, "control": ctrl, "acc_control": acc_ctrl, "snapshots_layer": focus,
               "rows": rows, "mean": mean_row, "table_md": table, "compact_md": compact, "accuracy_md": acc_line, "seconds": timer()}
    path = C.write_result(a, NAME, payload)
    plot(a, payload, C.out_path(a, NAME, "png"))
    C.log(f"wrote {path} ({timer():.0f} s)", a.quiet)
    return payload


def make_model(a):
    """(model, ratio pattern of the regularized layers, title)."""
    from torch import nn

    from depgraph_prune.models import cifar_resnet, digits_cnn
    if a.model == "resnet":
        return cifar_resnet(a.depth), PATTERN, f"ResNet-{a.depth}"
    net = digits_cnn()
    for name in ("bn1", "bn2", "bn3"):
        setattr(net, name, nn.Identity())  # no normalization: filter scale is not a symmetry
    return net, "conv*", "digits_cnn without BN"


def _normalized(model, name):
    from depgraph_prune.analysis import filter_l1_norms
    n = filter_l1_norms(model.get_submodule(name).weight).double()
    return sorted((n / n.max()).tolist(), reverse=True)


def _train_plain(model, data, a, n_iters, on_iter):
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(a.seed)
    opt = C.sgd(model, a.reg_lr, a.wd)
    model.train()
    it = 0
    while it < n_iters:
        for xb, yb in C.batches(data[0], data[1], a.batch, gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            on_iter(it)
            if it >= n_iters:
                break


def plot(a, P, path):
    plt = C.plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    layers = P["layers"]
    ax = axes[0]
    first = next(iter(P["runs"]))
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(layers):
        c = np.asarray(P["runs"][first]["curves"][n])
        ax.plot(c[:, 1], c[:, 2], color=cmap(i / max(len(layers) - 1, 1)), lw=.8, alpha=.6,
                label=f"{n} ({first})" if i in (0, len(layers) - 1) else None)
    for t, run, color in zip(P["runs"], P["runs"].values(), ("k", "tab:purple")):
        lam = np.asarray(run["curves"][layers[0]])[:, 1]
        mean = np.mean([np.asarray(run["curves"][n])[:, 2] for n in layers], axis=0)
        ax.plot(lam, mean, color=color, lw=2.5, label=f"mean, penalty on {t}")
    cl = np.asarray(P["control"][layers[0]])[:, 1]
    mean_c = np.mean([np.asarray(P["control"][n])[:, 2] for n in layers], axis=0)
    ax.plot(cl, mean_c, color="tab:red", lw=2.5, ls="--", label="mean, control (no penalty)")
    ax.set_xlabel("lambda (control: GReg-2's lambda at that iteration)")
    ax.set_ylabel("std / mean of filter L1 norms")
    ax.set_title("separation vs. uniformly growing penalty")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for k, v in sorted(P["runs"][first]["snapshots"].items(), key=lambda kv: int(kv[0])):
        ax.plot(range(len(v)), v, marker=".", label=f"iter {k}")
    ax.set_xlabel("filter (sorted)")
    ax.set_ylabel("L1 norm / max")
    ax.set_title(f"{P['snapshots_layer']} (penalty on {first})")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    ax = axes[2]
    for t, run in P["runs"].items():
        r = np.asarray(run["acc"])
        ax.plot(r[:, 0], r[:, 2], marker="o", ms=3, label=f"GReg-2 pick, penalty on {t}")
    c = np.asarray(P["acc_control"])
    ax.plot(c[:, 0], c[:, 2], marker="s", ms=3, ls="--", label="control")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy during the pick phase")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    model = f"ResNet-{a.depth}" if getattr(a, "model", "resnet") == "resnet" else "digits_cnn without BN"
    fig.suptitle(f"GReg-2 pick phase on {model} / digits {a.size}x{a.size}: lambda += {a.pick_delta:g} every "
                 f"{a.interval} it up to {a.pick_ceiling:g}, LR {a.reg_lr:g}")
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
