"""Ultralytics YOLO models, built from the YAML configs shipped in the ``ultralytics`` package
(random init, no weight download), and the end-to-end check of the documented one call
``dp.prune(model, x, ratio=0.5)`` on each: used by ``tests/test_yolo.py`` and ``bench/zoo_yolo.py``.

Ultralytics is AGPL-licensed: it is a test and benchmark dependency only; the package never
imports it.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field

# Before ultralytics is imported: no network checks, no auto-install, no settings file in $HOME.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("YOLO_VERBOSE", "0")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "depgraph_prune_yolo_cfg"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import depgraph_prune as dp  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    cfg: str  # a YAML config name ultralytics resolves (the scale letter picks the width)
    task: str  # detect, segment, pose, classify
    wrapper: str = "YOLO"  # the ultralytics class whose predict() path is checked
    acceptance: bool = True  # one of the 9 variants the issue counts
    # RT-DETR picks its queries by top-k over encoder scores: fusing conv + BN moves scores by
    # rounding, and with random weights a different query set comes out (the unpruned model too),
    # so only the fused model's output structure is compared
    fuse_exact: bool = True


VARIANTS = [
    Variant("yolov5nu", "yolov5nu.yaml", "detect"),
    Variant("yolov8n", "yolov8n.yaml", "detect"),
    Variant("yolov8n-seg", "yolov8n-seg.yaml", "segment"),
    Variant("yolov8n-pose", "yolov8n-pose.yaml", "pose"),
    Variant("yolov8n-cls", "yolov8n-cls.yaml", "classify"),
    Variant("yolo11n", "yolo11n.yaml", "detect"),
    Variant("yolov10n", "yolov10n.yaml", "detect"),
    Variant("yolo26n", "yolo26n.yaml", "detect"),
    Variant("rtdetr-l", "rtdetr-l.yaml", "detect", wrapper="RTDETR", fuse_exact=False),
    # the other tasks of 11 and 26 (not among the 9 the acceptance counts)
    Variant("yolo11n-seg", "yolo11n-seg.yaml", "segment", acceptance=False),
    Variant("yolo11n-pose", "yolo11n-pose.yaml", "pose", acceptance=False),
    Variant("yolo11n-cls", "yolo11n-cls.yaml", "classify", acceptance=False),
    Variant("yolo26n-seg", "yolo26n-seg.yaml", "segment", acceptance=False),
    Variant("yolo26n-pose", "yolo26n-pose.yaml", "pose", acceptance=False),
    Variant("yolo26n-cls", "yolo26n-cls.yaml", "classify", acceptance=False),
]
BY_NAME = {v.name: v for v in VARIANTS}


def build(variant: Variant, seed: int = 0):
    """The ultralytics wrapper (``YOLO`` / ``RTDETR``) around a random-init model from the config."""
    import ultralytics
    torch.manual_seed(seed)
    cls = getattr(ultralytics, variant.wrapper)
    wrapper = cls(variant.cfg) if variant.wrapper == "RTDETR" else cls(variant.cfg, task=variant.task)
    wrapper.model.eval()
    return wrapper


def output_layers(model: nn.Module) -> dict[str, int]:
    """The layers whose output widths define the model's outputs (box, class, mask-coefficient,
    keypoint and prototype channels; the classifier), with those widths."""
    head = model.model[-1]
    pre = f"model.{len(model.model) - 1}."
    names = []
    outs = ["cv2", "cv3", "cv4", "cv4_kpts", "cv4_sigma"]
    if hasattr(head, "cv4_kpts"):  # Pose26: cv4 is an inner stage, cv4_kpts / cv4_sigma the outputs
        outs.remove("cv4")
    for attr in outs + [f"one2one_{a}" for a in outs]:
        for i, m in enumerate(getattr(head, attr, None) or ()):
            names.append(f"{attr}.{i}" + (f".{len(m) - 1}" if isinstance(m, nn.Sequential) else ""))
    proto = getattr(head, "proto", None)
    if proto is not None:
        names.append("proto." + [n for n, m in proto.named_modules() if isinstance(m, nn.Conv2d)][-1])
    if hasattr(head, "linear"):  # Classify
        names.append("linear")
    for attr in ("dec_score_head", "dec_bbox_head"):  # RT-DETR: one per decoder layer
        for i, m in enumerate(getattr(head, attr, None) or ()):
            names.append(f"{attr}.{i}" + (f".layers.{len(m.layers) - 1}" if hasattr(m, "layers") else ""))
    for attr in ("enc_score_head", "enc_bbox_head"):
        m = getattr(head, attr, None)
        if m is not None:
            names.append(attr + (f".layers.{len(m.layers) - 1}" if hasattr(m, "layers") else ""))
    out = {}
    for n in names:
        # the layer itself, or the last conv / linear inside it (ultralytics' Conv wraps conv + BN)
        m = [x for x in head.get_submodule(n).modules() if isinstance(x, (nn.Conv2d, nn.Linear))][-1]
        out[pre + n] = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    assert out, f"{type(head).__name__}: no output layers found"
    return out


def shapes(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return [shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: shapes(v) for k, v in out.items()}
    return type(out).__name__


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flat(out[k])]
    return []


def run(model, x):
    with torch.no_grad():
        return model(x)


@dataclass
class Report:
    name: str
    task: str
    ok: bool = False
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    checks: dict = field(default_factory=dict)  # check name -> True, or what went wrong
    error: str = ""

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else float("nan")


def check_variant(variant: Variant, imgsz: int = 128, ratio: float = 0.5, full: bool = True,
                  tmpdir: str | None = None) -> Report:
    """Prune ``variant`` with the documented call and check it end to end.

    Checks: the output structure (eval and training mode) is unchanged, MACs fall by >= 25%, the
    output layers keep their widths, and with ``full``: ``fuse()`` gives the same outputs,
    ``dp.save``/``dp.load`` into a fresh model gives identical outputs, and ultralytics' own
    ``predict()`` runs on a numpy image."""
    rep = Report(variant.name, variant.task)
    wrapper = build(variant)
    model = wrapper.model
    x = torch.randn(1, 3, imgsz, imgsz)
    eval_shapes = shapes(run(model, x))
    train_shapes = shapes(run(copy.deepcopy(model).train(), x))
    widths = output_layers(model)
    t = time.perf_counter()
    try:
        result = dp.prune(model, x, ratio=ratio)  # the documented call
    except Exception as exc:
        rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return rep
    finally:
        rep.seconds = time.perf_counter() - t
    rep.macs_before, rep.macs_after = result.before.macs, result.after.macs
    rep.params_before, rep.params_after = result.before.params, result.after.params
    c = rep.checks
    y = run(model, x)
    c["structure"] = shapes(y) == eval_shapes or f"eval outputs {shapes(y)} != {eval_shapes}"
    model.train()
    got = shapes(run(model, x))
    model.eval()
    c["train structure"] = got == train_shapes or f"training outputs {got} != {train_shapes}"
    c["macs -25%"] = rep.mac_ratio <= 0.75 or f"MACs only fell to {rep.mac_ratio:.0%}"
    after = output_layers(model)
    c["output layers kept"] = after == widths or \
        f"changed: {[(k, widths[k], after[k]) for k in widths if widths[k] != after[k]]}"
    if full:
        c["fuse"] = _check_fuse(model, x, variant.fuse_exact)
        c["save/load"] = _check_save_load(variant, model, x, tmpdir)
        c["predict"] = _check_predict(wrapper, variant, imgsz)
    rep.ok = all(v is True for v in c.values())
    return rep


def _check_fuse(model, x, exact=True):
    """``fuse()`` merges conv + BN; end-to-end heads (v10, 26) also drop their one-to-many
    training branch, so the inference output (the first element) is what is compared."""
    try:
        ref = run(model, x)
        fused = copy.deepcopy(model).fuse()
        got = run(fused, x)
        if isinstance(ref, (tuple, list)) and isinstance(got, (tuple, list)):
            ref, got = ref[0], got[0]
        if shapes(got) != shapes(ref):
            return f"fused outputs {shapes(got)} != {shapes(ref)}"
        if not exact:
            return True
        ref, got = flat(ref), flat(got)
        diff = max((a - b).abs().max().item() / (a.abs().max().item() + 1e-6) for a, b in zip(ref, got))
        return diff < 1e-3 or f"fused outputs differ by {diff:.2e} (relative)"
    except Exception as exc:
        return f"fuse failed: {type(exc).__name__}: {exc}"


def _check_save_load(variant, model, x, tmpdir):
    try:
        with tempfile.TemporaryDirectory(dir=tmpdir) as d:
            path = os.path.join(d, "pruned.dp")
            dp.save(model, path)
            fresh = build(variant, seed=1).model
            dp.load(path, fresh)
        same = all(torch.equal(a, b) for a, b in zip(flat(run(model, x)), flat(run(fresh, x))))
        return same or "reloaded model gives other outputs"
    except Exception as exc:
        return f"save/load failed: {type(exc).__name__}: {exc}"


def _check_predict(wrapper, variant, imgsz):
    """ultralytics' own predict path (letterbox, AutoBackend, which fuses the model, NMS or top-k)."""
    try:
        img = (np.random.default_rng(0).random((imgsz * 3 // 4, imgsz, 3)) * 255).astype(np.uint8)
        results = wrapper.predict(img, imgsz=imgsz, verbose=False, save=False, device="cpu")
        r = results[0]
        if variant.task == "classify":
            return r.probs is not None and r.probs.data.numel() == len(wrapper.model.names) or "no class scores"
        if r.boxes is None:
            return "no boxes in the result"
        if variant.task == "segment" and r.boxes.shape[0] and r.masks is None:
            return "boxes but no masks"
        return True
    except Exception as exc:
        return f"predict failed: {type(exc).__name__}: {exc}"
