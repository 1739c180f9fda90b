"""Ultralytics YOLO, whole model, in the documented one call (issue 16, item 3).

``dp.prune(model, torch.randn(1, 3, S, S), ratio=0.5)`` on models built from ultralytics' own YAML
configs (random init, no downloads) prunes backbone, neck and head; the layers that define the
box, class, mask, keypoint and prototype channels keep their widths (they reach the model output,
so they are frozen by construction); the outputs keep their structure in eval and training mode;
MACs fall by at least 25%; the pruned model fuses, saves and reloads (``dp.save``/``dp.load``), and
runs ultralytics' own ``predict()`` on a numpy image. Analysis runs leave nothing on the model
(the Detect head caches ``anchors``/``strides`` in ``forward``: they must never be meta tensors).

Default run: YOLOv8n detect and classify at 128x128. ``-m slow``: every variant of
``tests/yolo_cases.py`` (``bench/zoo_yolo.py`` writes the same sweep to ``docs/zoo-yolo.md``).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import depgraph_prune as dp

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("ultralytics")
from yolo_cases import BY_NAME, VARIANTS, build, check_variant, output_layers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_tensors(model):
    """Tensors held as plain attributes of modules (caches) that live on the meta device."""
    return [f"{n}.{k}" for n, m in model.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor) and v.is_meta]


def _assert_ok(rep):
    assert not rep.error, f"{rep.name}: dp.prune failed: {rep.error}"
    bad = {k: v for k, v in rep.checks.items() if v is not True}
    assert not bad, f"{rep.name}: {bad}"
    assert rep.ok


def test_detect_output_layers_are_frozen_by_construction():
    model = build(BY_NAME["yolov8n"]).model
    x = torch.randn(1, 3, 128, 128)
    graph = dp.build_graph(model, x)
    layers = output_layers(model)
    assert len(layers) == 6  # box and class convs of three scales
    for name, width in layers.items():
        g = graph.group_of(name)
        # frozen whole: they reach the output (the box convs also meet the DFL's constant view first)
        assert not g.prunable and g.n_frozen == width, f"{name}: {g.reason}"
        assert "model output" in g.reason or "constant size" in g.reason, f"{name}: {g.reason}"
    # the rest of the model (backbone, neck, the head's inner convs) prunes
    assert sum(g.size for g in graph.groups if g.prunable) > 1000
    assert not _meta_tensors(model)


def test_yolov8n_detect_end_to_end(tmp_path):
    rep = check_variant(BY_NAME["yolov8n"], imgsz=128, tmpdir=str(tmp_path))
    _assert_ok(rep)
    assert rep.params_after < 0.5 * rep.params_before


def test_yolov8n_classify_end_to_end(tmp_path):
    _assert_ok(check_variant(BY_NAME["yolov8n-cls"], imgsz=64, tmpdir=str(tmp_path)))


def test_detect_caches_stay_real():
    """The bug of the issue: after analysis the head's cached anchors/strides were meta tensors."""
    model = build(BY_NAME["yolov8n"]).model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # fills the Detect head's anchor cache for 64x64
    head = model.model[-1]
    anchors, strides = head.anchors, head.strides
    dp.count_ops(model, torch.randn(1, 3, 96, 96))  # another size: forward would rebuild the cache
    assert head.anchors is anchors and head.strides is strides and not _meta_tensors(model)
    dp.prune(model, x, ratio=0.3)
    assert not _meta_tensors(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.slow
@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_yolo_zoo(name, tmp_path):
    _assert_ok(check_variant(BY_NAME[name], imgsz=128, tmpdir=str(tmp_path)))
