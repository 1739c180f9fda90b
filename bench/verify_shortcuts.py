"""Does the check's centre-crop shortcut accept exactly what the check on the given input accepts?

    python bench/verify_shortcuts.py [--models resnet18,densenet121,...] [--size 224]

For every model: two identical random-init copies, one pruned with the default check (on a
centre crop where the trace is size-generic, layers masked one at a time), the other with
``verify_inputs=x`` (the check on the given input, so no crop). Both must keep the same channels
and freeze nothing; then the first copy's pruned model is compared, at the given size, with its
own masked original made independently (the removed slices zeroed in place, ``verify.masked``):
the relative difference must be within the float32 tolerance. Prints one row per model.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

import depgraph_prune as dp
from depgraph_prune import verify as V

DEFAULT = ("resnet18,resnet50,resnext50_32x4d,wide_resnet50_2,densenet121,googlenet,mobilenet_v2,mobilenet_v3_large,"
           "efficientnet_b0,efficientnet_v2_s,regnet_y_800mf,regnet_x_1_6gf,convnext_tiny,shufflenet_v2_x1_0,"
           "mnasnet1_0,squeezenet1_1,vgg11_bn,alexnet,swin_t,swin_v2_t,maxvit_t")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<20}{'cropped':>9}{'same plan':>11}{'frozen':>8}{'pruned vs masked, full size':>30}{'s':>7}")
    bad = 0
    for name in args.models.split(","):
        torch.manual_seed(0)
        a = torchvision.models.get_model(name).eval()
        b = copy.deepcopy(a)
        x = torch.randn(1, 3, args.size, args.size)
        t = time.perf_counter()
        graph = dp.build_graph(a, x)
        cropped = V.reduced_inputs(graph) is not None
        ref_model = copy.deepcopy(a)
        ra = dp.prune(a, x, ratio=0.5)
        rb = dp.prune(b, x, ratio=0.5, verify_inputs=x)
        same = ra.records[0]["kept"] == rb.records[0]["kept"] if ra.records and rb.records else ra.records == rb.records
        frozen = sum(len(v.guilty) for v in ra.verification + rb.verification)
        # the independent comparison at the given size: the unpruned copy with the removed
        # slices zeroed in place, against the pruned model
        kept = ra.records[0]["kept"] if ra.records else {}
        removed = {}
        tensors = dict(ref_model.named_parameters())
        tensors.update(ref_model.named_buffers())
        for key, idx in kept.items():
            tname, _, dim = key.rpartition(":")
            if tname not in tensors:
                continue  # a width attribute
            size = tensors[tname].shape[int(dim)]
            drop = sorted(set(range(size)) - set(idx))
            removed.setdefault(tname, {})[int(dim)] = torch.tensor(drop, dtype=torch.long)
        with V.masked(ref_model, removed):
            want = V.run(ref_model, x, affine_norms=True)
        got = V.run(a, x, affine_norms=True)
        diff = V.compare(want, got)
        ok = same and not frozen and diff <= 1e-4
        bad += not ok
        print(f"{name:<20}{str(cropped):>9}{str(same):>11}{frozen:>8}{diff:>30.2e}{time.perf_counter() - t:>7.1f}"
              + ("" if ok else "  <-- MISMATCH"), flush=True)
    print(f"\n{bad} model(s) where the shortcut and the plain check disagree" if bad else "\nall agree")


if __name__ == "__main__":
    main()
