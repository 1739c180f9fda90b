"""TPP vs L1 vs L1 + OrthP on MLP-7-Linear (the shape of Figure 3 and Tables 11-12 of
"Trainability Preserving Neural Pruning", Wang & Fu, ICLR 2023), on scikit-learn's digits.

Data: digits upsampled to 32x32 and flattened to 1,024 inputs. Model: MLP-7-Linear (1024 -> 100,
five 100 -> 100, 100 -> 10, no activations), trained from scratch with the paper's MNIST recipe
(SGD 0.9, weight decay 1e-4, batch 100, LR 1e-2 divided by 10 at epochs 30 and 60, 90 epochs),
one model per seed. Pruning: ratio 0.9 on the outputs of fc1..fc6 (100 -> 10 each; fc7's outputs
are the classes), filters chosen by L1 norm.

* L1: remove them, retrain.
* L1 + OrthP: remove them, orthogonalize every weight (gain 1, linear network), retrain.
* TPP: Gram decorrelation + growing penalty (schedule scaled, see ``--help``), staged zeroing,
  remove, retrain.

Measured: the mean Jacobian singular value (JSV) of the pretrained and the just-pruned network,
then, while retraining at LR 1e-2 and at 1e-3 (each divided by 10 at 1/3 and 2/3 of the epochs),
the test accuracy and mean JSV after every epoch; mean over seeds.

    python examples/exp_tpp_jsv.py            # full run, a few minutes
    python examples/exp_tpp_jsv.py --quick    # smoke test, seconds
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

NAME = "exp_tpp_jsv"
METHODS = ("l1", "orthp", "tpp")
LABEL = {"l1": "L1", "orthp": "L1 + OrthP", "tpp": "TPP"}
PUBLISHED = {"jsv_pretrained": 2.4987, "jsv_pruned": {"l1": 0.0040, "orthp": 1.0, "tpp": 3.4875},
             "best_acc_lr1e-2/1e-3": {"l1": (91.36, 90.54), "orthp": (92.79, 92.77), "tpp": (92.81, 92.77)}}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=C.DEFAULT_OUT)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=90, help="pretraining epochs (LR 1e-2, /10 at 1/3 and 2/3)")
    p.add_argument("--retrain-epochs", type=int, default=100)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 1e-3])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--wd", type=float, default=1e-4)
    # TPP (published MNIST: delta 1e-4 every 10 iterations up to 1, stabilize 10000, LR 1e-3)
    p.add_argument("--reg-lr", type=float, default=1e-3)
    p.add_argument("--delta", type=float, default=2.5e-4)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--stabilize", type=int, default=1000)
    p.add_argument("--stage-interval", type=int, default=100)
    p.add_argument("--jsv-samples", type=int, default=32)
    C.add_output_args(p)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.size, a.epochs, a.retrain_epochs = [0], 16, 3, 3
        a.delta, a.stabilize, a.stage_interval = 0.25, 14, 2
    return a


def mlp(a):
    from depgraph_prune.models import mlp7_linear
    return mlp7_linear(in_features=a.size * a.size)


def main(argv=None):
    from depgraph_prune.analysis import mean_jsv
    from depgraph_prune.regularize import TPP, RegularizedPruner

    a = parse(argv)
    if a.replot:
        a, P = C.load_result(a, NAME)
        png = C.out_path(a, NAME, "png")
        plot(a, P["curves"], png)
        return P
    C.setup_threads()
    timer = C.Timer()
    data = C.load_digits_split(a.size, flatten=True)
    xte, yte = data[2], data[3]
    xj = xte[:a.jsv_samples]
    x1 = data[0][:1]
    third = lambda n: (n // 3, (2 * n) // 3)  # noqa: E731

    runs = []  # one per (seed, method, lr)
    pre = []
    for seed in a.seeds:
        torch.manual_seed(seed)
        base = mlp(a)
        C.train(base, data, a.epochs, 1e-2, milestones=third(a.epochs), weight_decay=a.wd, batch_size=a.batch,
                seed=100 + seed)
        pre.append({"seed": seed, "acc": C.accuracy(base, xte, yte), "jsv": mean_jsv(base, xj)})
        C.log(f"seed {seed}: pretrained {pre[-1]['acc']:.2f}%, mean JSV {pre[-1]['jsv']:.4f}  ({timer():.0f} s)", a.quiet)
        for method in METHODS:
            m = copy.deepcopy(base)
            info = {}
            if method == "tpp":
                meth = TPP(delta=a.delta, interval=a.interval, stabilize=a.stabilize, stage_interval=a.stage_interval)
                pr = RegularizedPruner(m, x1, meth, ratio=a.ratio)
                info["reg_iters"] = C.regularize(m, pr, data, a.reg_lr, weight_decay=a.wd, batch_size=a.batch, seed=seed)
                info["acc_regularized"] = C.accuracy(m, xte, yte)
            else:
                pr = RegularizedPruner(m, x1, method, ratio=a.ratio)
            res = pr.prune()
            acc0, jsv0 = C.accuracy(m, xte, yte), mean_jsv(m, xj)
            C.log(f"  {LABEL[method]:<11} right after pruning: {acc0:6.2f}%, mean JSV {jsv0:.4f} "
                  f"(params {res.before.params} -> {res.after.params}) {info}", a.quiet)
            for lr in a.lrs:
                mm = copy.deepcopy(m)
                accs, jsvs = [acc0], [jsv0]

                def on_epoch(ep, mm=mm, accs=accs, jsvs=jsvs):
                    accs.append(C.accuracy(mm, xte, yte))
                    jsvs.append(mean_jsv(mm, xj))

                C.train(mm, data, a.retrain_epochs, lr, milestones=third(a.retrain_epochs), weight_decay=a.wd,
                        batch_size=a.batch, seed=1000 + seed, on_epoch=on_epoch)
                runs.append({"seed": seed, "method": method, "lr": lr, "acc": accs, "jsv": jsvs,
                             "best": max(accs[1:]), "final": accs[-1], **info})
                C.log(f"    retrain LR {lr:g}: epoch 1 {accs[1]:6.2f}%, best {max(accs[1:]):6.2f}%, "
                      f"final {accs[-1]:6.2f}%, JSV epoch 1 {jsvs[1]:.3f}  ({timer():.0f} s)", a.quiet)

    def sel(method, lr):
        return [r for r in runs if r["method"] == method and r["lr"] == lr]

    # Figure-3 shape: JSV right after pruning, best accuracy at each LR
    head = "| method | mean JSV right after pruning | acc. right after pruning | " + \
        " | ".join(f"best acc. (LR {lr:g})" for lr in a.lrs) + " |"
    t1 = [head, "|" + "---|" * (3 + len(a.lrs))]
    t1.append(f"| unpruned | {C.fmt([p['jsv'] for p in pre], 4)} | {C.fmt([p['acc'] for p in pre])} |" + " |" * len(a.lrs))
    for method in METHODS:
        rs = sel(method, a.lrs[0])
        t1.append(f"| {LABEL[method]} | {C.fmt([r['jsv'][0] for r in rs], 4)} | {C.fmt([r['acc'][0] for r in rs])} | " +
                  " | ".join(C.fmt([r["best"] for r in sel(method, lr)]) for lr in a.lrs) + " |")
    # Tables 11-12 shape: the first epochs of retraining
    n_ep = min(10, a.retrain_epochs)
    hdr = "| method, LR | " + " | ".join(str(e) for e in range(n_ep + 1)) + " |"
    sep = "|---|" + "---|" * (n_ep + 1)
    t_jsv, t_acc = [hdr, sep], [hdr, sep]
    curves = {}
    for method in METHODS:
        for lr in a.lrs:
            rs = sel(method, lr)
            ja = np.mean([r["jsv"] for r in rs], axis=0)
            aa = np.mean([r["acc"] for r in rs], axis=0)
            curves[f"{method}@{lr:g}"] = {"jsv": ja.tolist(), "acc": aa.tolist()}
            t_jsv.append(f"| {LABEL[method]}, {lr:g} | " + " | ".join(f"{v:.2f}" for v in ja[:n_ep + 1]) + " |")
            t_acc.append(f"| {LABEL[method]}, {lr:g} | " + " | ".join(f"{v:.1f}" for v in aa[:n_ep + 1]) + " |")
    tables = {"summary_md": "\n".join(t1), "jsv_epochs_md": "\n".join(t_jsv), "acc_epochs_md": "\n".join(t_acc)}
    C.log("\n" + "\n\n".join(tables.values()), a.quiet)

    payload = {"experiment": NAME, "args": vars(a), "pretrained": pre, "runs": runs, "curves": curves,
               "published": PUBLISHED, **tables, "seconds": timer()}
    path = C.write_result(a, NAME, payload)
    plot(a, curves, C.out_path(a, NAME, "png"))
    C.log(f"wrote {path} ({timer():.0f} s)", a.quiet)
    return payload


def plot(a, curves, path):
    plt = C.plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = {"l1": "tab:blue", "orthp": "tab:orange", "tpp": "tab:green"}
    styles = {a.lrs[0]: "-", a.lrs[-1]: "--"}
    for key, c in curves.items():
        method, lr = key.split("@")
        lr = float(lr)
        ep = np.arange(len(c["acc"]))
        kw = dict(color=colors[method], ls=styles.get(lr, ":"), label=f"{LABEL[method]}, LR {lr:g}",
                  marker="." if len(ep) <= 31 else None)
        axes[0].plot(ep, np.maximum(c["jsv"], 1e-5), **kw)
        axes[1].plot(ep, c["acc"], **kw)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean JSV")
    axes[1].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("retraining epoch (0 = right after pruning; linear up to 10, log after)")
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MLP-7-Linear on digits ({a.size}x{a.size} flattened), ratio {a.ratio}: mean over {len(a.seeds)} seeds")
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
