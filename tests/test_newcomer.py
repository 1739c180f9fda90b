"""What a new user meets first (issue 15): an optimizer created before pruning keeps working, the
result table speaks in the units its numbers need and names its settings, MAC / parameter
targets, per-stage progress, ``dp.measure_latency``, and the whole-graph picture."""
from __future__ import annotations

import importlib.util
import io as _io
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import depgraph_prune as dp
from depgraph_prune import progress, viz
from depgraph_prune.errors import PruningError
from depgraph_prune.models import digits_cnn
from depgraph_prune.regularize import RegularizedPruner

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))


def _trained(opt_cls, **kw):
    torch.manual_seed(0)
    model = digits_cnn()
    opt = opt_cls(model.parameters(), **kw)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()
    return model, opt


def _kept(record, name):
    return torch.as_tensor(record["kept"][f"{name}:0"])


def _sliced(t, record, name):
    """``t`` cut to the positions the record keeps, along every dim it names for ``name``."""
    for key, kept in record["kept"].items():
        n, _, d = key.rpartition(":")
        if n == name:
            t = t.index_select(int(d), torch.as_tensor(kept))
    return t


# ============================================================================ 1. optimizer state
@pytest.mark.parametrize("opt_cls, kw, keys", [
    (torch.optim.SGD, dict(lr=0.01, momentum=0.9), ["momentum_buffer"]),
    (torch.optim.Adam, dict(lr=1e-3), ["exp_avg", "exp_avg_sq"]),
])
def test_prune_slices_the_optimizer_state(opt_cls, kw, keys):
    model, opt = _trained(opt_cls, **kw)
    w = model.conv2.weight
    old = {k: opt.state[w][k].clone() for k in keys}
    result = dp.prune(model, X[:1], ratio=0.5, optimizer=opt)
    kept = _kept(result.records[0], "conv2.weight")
    assert w.shape[0] == kept.numel() < 32
    for k in keys:  # the state of the kept channels, unchanged
        assert torch.equal(opt.state[w][k], _sliced(old[k], result.records[0], "conv2.weight")), k
    assert not any("no optimizer was passed" in n for n in result.notes)
    opt.zero_grad()
    F.cross_entropy(model(X), Y).backward()
    opt.step()  # no shape error: training goes on with the same optimizer


def test_without_optimizer_the_result_says_what_to_do():
    model, opt = _trained(torch.optim.SGD, lr=0.01, momentum=0.9)
    result = dp.prune(model, X[:1], ratio=0.5)
    note = [n for n in result.notes if "no optimizer was passed" in n]
    assert note and "dp.rebuild_optimizer(optimizer, model)" in note[0] and "optimizer=" in note[0]
    assert "note: no optimizer was passed" in str(result)
    F.cross_entropy(model(X), Y).backward()
    with pytest.raises(RuntimeError):  # what the note warns about
        opt.step()
    dp.rebuild_optimizer(opt, model)  # and what it tells to do
    opt.step()


def test_group_prune_and_regularized_pruner_take_the_optimizer():
    model, opt = _trained(torch.optim.SGD, lr=0.01, momentum=0.9)
    buf = opt.state[model.conv1.weight]["momentum_buffer"].clone()
    graph = dp.build_graph(model, X[:1])
    graph.group_of("conv1").prune([0, 5], optimizer=opt)
    keep = [i for i in range(16) if i not in (0, 5)]
    assert torch.equal(opt.state[model.conv1.weight]["momentum_buffer"], buf[keep])
    F.cross_entropy(model(X), Y).backward()
    opt.step()

    model, opt = _trained(torch.optim.SGD, lr=0.01, momentum=0.9)
    pruner = RegularizedPruner(model, X[:1], "greg1", ratio=0.5, interval=1, delta=1.0)
    while not pruner.done:
        pruner.step()
    buf = opt.state[model.conv2.weight]["momentum_buffer"].clone()
    result = pruner.prune(optimizer=opt)
    assert torch.equal(opt.state[model.conv2.weight]["momentum_buffer"], _sliced(buf, result.records[0], "conv2.weight"))
    assert not any("no optimizer was passed" in n for n in result.notes)
    assert result.settings["ratio"] == 0.5 and "GReg1" in result.settings["importance"]
    assert str(result).startswith("settings: ratio=0.5")
    opt.zero_grad()
    F.cross_entropy(model(X), Y).backward()
    opt.step()


def test_a_bad_optimizer_is_refused_before_any_surgery():
    model, _ = _trained(torch.optim.SGD, lr=0.01)
    before = [p.shape for p in model.parameters()]
    with pytest.raises(PruningError, match="optimizer must be a torch.optim.Optimizer"):
        dp.prune(model, X[:1], ratio=0.5, optimizer="sgd")
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(PruningError, match="none of the model's parameters"):
        dp.prune(model, X[:1], ratio=0.5, optimizer=other)
    assert [p.shape for p in model.parameters()] == before


# ============================================================================ 3, 4. the result table
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _row(text, name):
    return next(line for line in text.splitlines() if line.startswith(name))


def test_table_units_follow_the_magnitude():
    r = dp.prune(MLP(), torch.randn(1, 8), ratio=0.5)
    text = str(r)
    assert "0.0000G" not in text and "G" not in _row(text, "MACs")
    assert _row(text, "MACs").split()[1:5] == ["192", "MACs", "96", "MACs"]  # 8*16+16*4 -> half
    assert "after/before" in text.splitlines()[1] and " ratio " not in text.splitlines()[1]
    big = dp.prune(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64), ratio=0.5)
    assert re.search(r"\d+\.\d\d MMACs", _row(str(big), "MACs"))
    assert re.search(r"11\.69 M params", _row(str(big), "params"))
    frac = float(_row(str(big), "MACs").split()[-1])
    assert frac == pytest.approx(big.after.macs / big.before.macs, abs=5e-4)


def test_parameter_free_model_is_not_a_zero_speedup():
    r = dp.prune(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(1, 8))
    assert r.speedup == 1.0
    text = str(r)
    assert "0.000x" not in text and "speedup: -" in text
    assert _row(text, "MACs").split()[1:] == ["0", "MACs", "0", "MACs", "-"]


def test_unreachable_target_names_its_unit():
    with pytest.raises(PruningError, match=r"leaves \d+\.\d\d [KM]MACs \(target \d+\.\d\d [KM]MACs\)") as e:
        dp.prune(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), target_speedup=1000)
    assert "0.000 GMACs" not in str(e.value)


def test_settings_are_stored_and_printed():
    r = dp.prune(digits_cnn(), X[:1], ratio=0.3, importance="l2", global_ranking=True, round_to=2)
    assert r.settings["ratio"] == 0.3 and r.settings["importance"] == "l2" and r.settings["round_to"] == 2
    head = str(r).splitlines()[0]
    assert head.startswith("settings: ratio=0.3 (fraction of each group's channels removed)")
    assert "importance=l2" in head and "scope=global ranking" in head and "round_to=2" in head
    r = dp.prune(digits_cnn(), X[:1], target_speedup=2.0)
    assert r.settings["ratio"] is None and "target_speedup=2.0" in str(r).splitlines()[0]
    assert "scope=each group" in str(r).splitlines()[0]


# ============================================================================ 8. targets, latency
def test_target_macs_and_target_params():
    x = torch.randn(1, 3, 32, 32)
    base = dp.count_ops(torchvision.models.resnet18(), x)
    r = dp.prune(torchvision.models.resnet18(), x, target_macs=base.macs // 3)
    assert abs(r.after.macs / (base.macs // 3) - 1) < 0.02
    r = dp.prune(torchvision.models.resnet18(), x, target_params=base.params // 4)
    assert abs(r.after.params / (base.params // 4) - 1) < 0.02
    assert r.settings["target_params"] == base.params // 4


@pytest.mark.parametrize("kw, match", [
    (dict(target_macs=1e6, target_params=1e5), "one target"),
    (dict(target_macs=1e6, ratio=0.5), "either ratio or target_macs"),
    (dict(target_params=-5), "target_params must be a positive number"),
    (dict(target_macs=1e15), "is not below the model's"),
])
def test_bad_targets(kw, match):
    model = digits_cnn()
    before = [p.shape for p in model.parameters()]
    with pytest.raises(PruningError, match=match):
        dp.prune(model, X[:1], **kw)
    assert [p.shape for p in model.parameters()] == before


def test_measure_latency_is_public():
    from depgraph_prune import cli
    assert dp.measure_latency is dp.measure.measure_latency is cli.measure_latency
    model = digits_cnn().train()
    threads = torch.get_num_threads()
    ms = dp.measure_latency(model, X, repeat=3, warmup=1)
    assert ms > 0 and model.training and torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="repeat"):
        dp.measure_latency(model, X, repeat=0)


# ============================================================================ 6. progress
def test_progress_reports_every_stage(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)  # show every stage, however fast
    dp.prune(digits_cnn(), X[:1], ratio=0.5, progress=True)
    err = capsys.readouterr().err
    for stage in ("trace", "build", "score", "plan", "surgery", "verify", "count"):
        assert progress.LABELS[stage] in err, stage


def test_progress_is_silent_by_default_and_for_fast_stages(capsys):
    dp.prune(digits_cnn(), X[:1], ratio=0.5)
    assert capsys.readouterr().err == ""
    with progress.reporting(delay=30.0) as rep:
        dp.prune(digits_cnn(), X[:1], ratio=0.5)
    assert capsys.readouterr().err == ""
    names = [n for n, _ in rep.timings]
    assert names.index("trace") < names.index("build") < names.index("score") < names.index("plan") \
        < names.index("surgery")
    assert names.count("count") == 2 and all(t >= 0 for _, t in rep.timings)


def test_stage_hook_outside_reporting_is_free():
    with progress.stage("verify", total=3) as s:
        s.update()  # nothing listens: nothing happens


def test_slow_one_step_stage_shows_its_time():
    buf = _io.StringIO()
    import time
    with progress.reporting(file=buf, delay=0.05):
        with progress.stage("verify"):
            time.sleep(0.3)
        with progress.stage("plan", unit="plans measured") as s:
            s.update(3)
            time.sleep(0.2)
    out = buf.getvalue()
    assert progress.LABELS["verify"] in out and "3 plans measured" in out


# ============================================================================ 7. the graph picture
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10 * 4 * 4, 5)  # defined first, called last: order must follow the data
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = torch.cat([self.left(y), self.right(y)], dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 4), 1))


def test_module_flow_is_data_flow_order_with_groups():
    graph = dp.build_graph(Tiny(), torch.randn(1, 3, 8, 8))
    rows = viz.module_flow(graph)
    assert [r["name"] for r in rows] == ["stem", "bn", "left", "right", "fc"]
    by = {r["name"]: r for r in rows}
    assert by["stem"]["out"] is by["bn"]["out"] is by["left"]["in"] is by["right"]["in"]
    assert by["left"]["out"] is by["right"]["out"] is by["fc"]["in"]  # the concat group
    assert not by["fc"]["out"].prunable and not by["stem"]["in"].prunable  # output and input: frozen
    assert by["left"]["width"] == 4 and by["fc"]["type"] == "Linear"


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed")
def test_draw_graph_boxes_legend_and_frozen_marks(tmp_path):
    graph = dp.build_graph(Tiny(), torch.randn(1, 3, 8, 8))
    fig = viz.draw_graph(graph, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert [t for t in texts if t in ("stem", "bn", "left", "right", "fc")] == ["stem", "bn", "left", "right", "fc"]
    assert "Conv2d → 4" in texts
    hatched = [p for p in ax.patches if p.get_hatch() == "xx"]
    assert len(hatched) == 2  # fc's output group and stem's input strip
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("frozen" in t and "model output" in t for t in legend)
    assert any(re.match(r"group \d+: 10 ch, 3 modules", t) for t in legend)


def test_progress_docstring_example():
    import doctest
    result = doctest.testmod(progress)
    assert result.attempted > 0 and result.failed == 0
