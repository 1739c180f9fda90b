"""The ``depgraph-prune`` command line: each subcommand, its outputs, and its error paths.

Most tests call ``cli.main(argv)`` in-process (fast); a few run the real program in a subprocess
(``python -m depgraph_prune``, and the console script when it is installed) to check exit statuses
and that an error is exactly one line on stderr.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from depgraph_prune import cli

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
HAVE_IO = importlib.util.find_spec("depgraph_prune.io") is not None
needs_io = pytest.mark.skipif(not HAVE_IO, reason="depgraph_prune.io (save/load) is not available yet")
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed (pip install 'depgraph-prune[plot]')")

SMALL = ["--model", "resnet18", "--input-shape", "1,3,32,32"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code, err, expected_code, *fragments):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"an error must be one line, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A resnet18 pruned by half on 32x32 and saved with --out (once for the module)."""
    if not HAVE_IO:
        pytest.skip("depgraph_prune.io (save/load) is not available yet")
    path = tmp_path_factory.mktemp("saved") / "r18.dpz"
    torch.set_num_threads(1)
    code = cli.main(["prune", *SMALL, "--ratio", "0.5", "--out", str(path), "--json"])
    assert code == 0 and path.exists()
    return path


# ============================================================================ prune
def test_prune_table(capsys):
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5"], capsys)
    assert code == 0, err
    assert "resnet18 on 1x3x32x32, importance l1" in out
    assert "speedup (MACs before / after)" in out and "groups pruned" in out
    assert "layer1.0.conv1.weight" in out


def test_prune_json_with_options(capsys):
    code, out, err = run(["prune", *SMALL, "--ratios", "*layer*.conv1:0.5", "--importance", "l2",
                          "--ignore", "conv1", "--latency", "--repeat", "1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "resnet18" and report["input_shape"] == [1, 3, 32, 32]
    assert report["importance"] == "l2" and report["ratios"] == {"*layer*.conv1": 0.5}
    assert report["after"]["macs"] < report["before"]["macs"] and report["speedup"] > 1
    names = {w["name"] for w in report["widths"]}
    assert names == {f"layer{s}.{b}.conv1.weight" for s in range(1, 5) for b in range(2)}
    assert all(w["after"] == w["before"] // 2 for w in report["widths"])
    lat = report["latency_ms"]
    assert lat["before"] > 0 and lat["after"] > 0 and lat["threads"] == 1
    assert any("ignored_layers" in f["reason"] for f in report["frozen"])


def test_prune_verifies_by_default_and_says_so(capsys):
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5"], capsys)
    assert code == 0, err
    assert "verified:" in out and "exact" in out
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5", "--json"], capsys)
    ver = json.loads(out)["verification"]
    assert len(ver) == 1 and ver[0]["exact_groups"] > 0 and ver[0]["max_diff"] <= ver[0]["tolerance"]
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5", "--json", "--no-verify"], capsys)
    assert code == 0, err
    assert json.loads(out)["verification"] == []


def test_prune_target_speedup_and_stage_list(capsys):
    code, out, err = run(["prune", *SMALL, "--target-speedup", "2", "--json"], capsys)
    assert code == 0, err
    assert abs(json.loads(out)["speedup"] / 2 - 1) < 0.02
    code, out, err = run(["prune", *SMALL, "--ratios", "[0, .5, .5, .5, .5]", "--json"], capsys)
    assert code == 0, err
    widths = {w["name"]: (w["before"], w["after"]) for w in json.loads(out)["widths"]}
    assert widths["layer2.0.conv1.weight"] == (128, 64) and "conv1.weight" not in widths


def test_prune_out_and_plot(tmp_path, capsys):
    out_file, plot = tmp_path / "m.dpz", tmp_path / "w.png"
    argv = ["prune", *SMALL, "--ratio", "0.3", "--out", out_file]
    if HAVE_MPL:
        argv += ["--plot", plot]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out_file.exists() and "pruned model written to" in out
    if HAVE_MPL:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_io
def test_saved_file_reloads(saved, capsys):
    from depgraph_prune import io as dp_io
    model = dp_io.load(str(saved), torchvision.models.resnet18()).eval()
    assert model.layer1[0].conv1.out_channels == 32
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    # inspect the saved model, then prune it further and save again
    code, out, err = run(["inspect", "--model", saved, "--base", "resnet18", "--input-shape", "1,3,32,32",
                          "--group", "layer1.0.conv1"], capsys)
    assert code == 0, err
    assert "Group" in out and "32 prunable channels" in out
    again = saved.parent / "again.dpz"
    code, out, err = run(["prune", "--model", saved, "--base", "resnet18", "--input-shape", "1,3,32,32",
                          "--ratio", "0.5", "--out", again, "--json"], capsys)
    assert code == 0, err
    assert {w["before"] for w in json.loads(out)["widths"] if w["name"] == "layer1.0.conv1.weight"} == {32}
    model = dp_io.load(str(again), torchvision.models.resnet18())
    assert model.layer1[0].conv1.out_channels == 16


def test_own_model_factory(tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_user_net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

        def build_with_input():
            return build(), torch.randn(2, 3, 10, 10)

        def broken():
            raise RuntimeError("no weights here")

        not_callable = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_user_net", raising=False)
    code, out, err = run(["prune", "--model", "cli_user_net:build", "--input-shape", "1,3,8,8", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["widths"] == [{"name": "0.weight", "before": 8, "after": 4}]
    code, out, err = run(["prune", "--model", "cli_user_net.py:build_with_input", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [2, 3, 10, 10]
    code, out, err = run(["prune", "--model", "cli_user_net:broken"], capsys)
    assert_error(code, err, 1, "calling cli_user_net:broken() failed", "no weights here")
    code, out, err = run(["prune", "--model", "cli_user_net:nope"], capsys)
    assert_error(code, err, 2, "has no attribute 'nope'")
    code, out, err = run(["prune", "--model", "cli_user_net:not_callable"], capsys)
    assert_error(code, err, 2, "is not callable")


def test_prune_attention_granularity(tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_vit_net.py").write_text(textwrap.dedent("""
        import torch
        from torchvision.models.vision_transformer import VisionTransformer

        def build():
            return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=4, hidden_dim=32,
                                     mlp_dim=64), torch.randn(1, 3, 32, 32)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_vit_net", raising=False)
    found = {}
    for mode in ("heads", "head_dim"):
        code, out, err = run(["prune", "--model", "cli_vit_net:build", "--attention", mode, "--json"], capsys)
        assert code == 0, err
        found[mode] = {w["name"]: w["after"] for w in json.loads(out)["widths"]}
    # the stream group (first member conv_proj.weight) loses 2 whole heads, or 4 dims of each head:
    # 16 channels either way, but as 2 (of 4) head channels or 4 (of 8) per-head dims
    assert found["heads"]["conv_proj.weight"] == found["head_dim"]["conv_proj.weight"] == 16
    code, out, err = run(["inspect", "--model", "cli_vit_net:build", "--attention", "head_dim", "--json"], capsys)
    assert code == 0, err
    assert any("encoder.layers.encoder_layer_0.self_attention.head_dim" in json.dumps(g) for g in json.loads(out)["groups"])
    code, out, err = run(["prune", "--model", "cli_vit_net:build", "--attention", "rows"], capsys)
    assert code == 2 and "invalid choice" in err


# ============================================================================ inspect
def test_inspect_summary_and_group(capsys):
    code, out, err = run(["inspect", *SMALL], capsys)
    assert code == 0, err
    assert "group   size  frozen  members" in out and "14 groups, 12 prunable" in out
    assert "frozen: reaches the model output" in out
    code, out, err = run(["inspect", *SMALL, "--group", "3"], capsys)
    assert code == 0, err
    assert out.splitlines()[1].startswith("Group 3:")


def test_inspect_json_draw_dot(tmp_path, capsys):
    dot, png = tmp_path / "g.dot", tmp_path / "g.png"
    argv = ["inspect", *SMALL, "--group", "layer1.0.conv1", "--dot", dot, "--json"]
    if HAVE_MPL:
        argv += ["--draw", png]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    (group,) = report["groups"]
    assert group["size"] == 64 and group["prunable"]
    roles = {(m["name"], m["role"]) for m in group["members"]}
    assert ("layer1.0.conv1.weight", "produces") in roles and ("layer1.0.conv2.weight", "consumes") in roles
    text = dot.read_text()
    assert text.startswith("graph depgraph {") and '"layer1.0.conv2.weight:1"' in text
    if HAVE_MPL:
        assert png.read_bytes()[:4] == b"\x89PNG"
        # the whole graph too
        code, out, err = run(["inspect", *SMALL, "--draw", png], capsys)
        assert code == 0 and "picture written to" in out


# ============================================================================ zoo
def test_zoo_writes_table(tmp_path, capsys):
    out_file = tmp_path / "zoo.md"
    code, out, err = run(["zoo", "--family", "mobilenet_v3_small", "--kind", "classification", "--max-size", "64",
                          "--out", out_file, "--no-progress"], capsys)
    assert code == 0, err
    text = out_file.read_text()
    assert "**1 / 1 pass.**" in text and "| classification | mobilenet_v3_small | pass | 64 |" in text
    assert "command: `depgraph-prune zoo --kind classification --ratio 0.5 --family mobilenet_v3_small" in text
    assert "1/1 pass" in out


def test_zoo_progress_bar(tmp_path, capsys):
    code, out, err = run(["zoo", "--family", "squeezenet1_1", "--kind", "classification", "--max-size", "64",
                          "--out", tmp_path / "z.md"], capsys)
    assert code == 0, err
    assert "1/1" in err and "squeezenet1_1" in err  # tqdm's bar on stderr names the model it is on


def test_zoo_no_match(capsys):
    code, out, err = run(["zoo", "--family", "no_such_family", "--kind", "video"], capsys)
    assert_error(code, err, 2, "no_such_family")


# ============================================================================ errors
@pytest.mark.parametrize("argv, status, fragments", [
    (["prune", "--model", "resnet5O"], 2, ["unknown model 'resnet5O'", "Did you mean resnet50"]),
    (["prune", *SMALL, "--ratio", "1.5"], 2, ["argument --ratio", "[0, 1)", "--help"]),
    (["prune", *SMALL, "--ratio", "half"], 2, ["ratio must be a number"]),
    (["prune", *SMALL, "--ratio", "0.5", "--target-speedup", "2"], 2, ["not allowed with argument"]),
    (["prune", *SMALL, "--target-speedup", "0.5"], 2, ["target speedup must be a number > 1"]),
    (["prune", "--model", "resnet18", "--input-shape", "1,3,a"], 2, ["input shape must be positive integers"]),
    (["prune", "--model", "resnet18", "--input-shape", "1,3,0,8"], 2, ["input shape"]),
    (["prune", "--model", "resnet18", "--input-shape", "1,3"], 1, ["example_inputs", "--input-shape"]),
    (["prune", "--model", "does/not/exist.dpz"], 2, ["does not exist", "Check the path"]),
    (["prune", "--model", "missing.dpz", "--base", "resnet18"], 2, ["does not exist"]),
    (["prune", *SMALL, "--base", "resnet18"], 2, ["--base is only used with a saved file"]),
    (["prune", *SMALL, "--ignore", "fcc"], 2, ["--ignore 'fcc' is not a submodule", "Did you mean fc"]),
    (["prune", *SMALL, "--importance", "magic"], 2, ["unknown importance 'magic'", "l1"]),
    (["prune", *SMALL, "--importance", "taylor"], 2, ["needs gradients", "--calibration N"]),
    (["prune", *SMALL, "--importance", "l1", "--calibration", "2"], 2, ["only read by the gradient criteria"]),
    (["prune", *SMALL, "--importance", "taylor", "--calibration", "nope.pt"], 2,
     ["neither a number of batches nor an existing file"]),
    (["prune", *SMALL, "--submodule", "layer9"], 2, ["--submodule 'layer9' is not a submodule"]),
    (["prune", *SMALL, "--target-macs", "lots"], 2, ["expected a count like 2e9"]),
    (["prune", *SMALL, "--target-macs", "1G", "--ratio", "0.5"], 2, ["not allowed with argument"]),
    (["prune", *SMALL, "--target-params", "1T"], 1, ["target_params=", "is not below the model's"]),
    (["prune", *SMALL, "--ratios", "conv1=0.5"], 2, ["--ratios"]),
    (["prune", *SMALL, "--out", "no/such/dir/m.dpz"], 2, ["folder of --out", "does not exist"]),
    (["prune", "--model", "no_such_module_xyz:build"], 2, ["cannot import module 'no_such_module_xyz'"]),
    (["prune", "--model", "torch:"], 2, ["package.module:factory"]),
    (["inspect", *SMALL, "--group", "99"], 2, ["--group 99 is out of range", "14 groups"]),
    (["inspect", *SMALL, "--group", "layer9.conv1"], 2, ["--group 'layer9.conv1' is not a submodule"]),
    (["inspect", *SMALL, "--group", "layer1.0.relu"], 2, ["no prunable output channels"]),
    (["prune"], 2, ["required: --model"]),
    ([], 2, ["no command given"]),
    (["squash", "--model", "resnet18"], 2, ["invalid choice: 'squash'"]),
])
def test_errors_are_one_line(argv, status, fragments, capsys):
    code, out, err = run(argv, capsys)
    assert_error(code, err, status, *fragments)


def test_file_without_base_and_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "bad.dpz"
    bad.write_bytes(b"this is not a pruned model at all")
    code, out, err = run(["inspect", "--model", bad], capsys)
    assert_error(code, err, 2, "needs --base")
    if not HAVE_IO:
        pytest.skip("depgraph_prune.io (save/load) is not available yet")
    code, out, err = run(["inspect", "--model", bad, "--base", "resnet18"], capsys)
    assert_error(code, err, 1, "cannot load", "damaged or was not written by depgraph-prune")
    assert "--base names the architecture" not in err  # not the cause here


@needs_io
def test_file_of_another_architecture(saved, capsys):
    code, out, err = run(["inspect", "--model", saved, "--base", "resnet34", "--input-shape", "1,3,32,32"], capsys)
    assert_error(code, err, 1, "cannot load", "resnet34")


# ============================================================================ issue 15: messages
def test_importance_choices_are_what_the_cli_accepts(capsys):
    code, out, err = run(["prune", *SMALL, "--importance", "l3"], capsys)
    assert_error(code, err, 2, "unknown importance 'l3'")
    listed = err.split("Use one of", 1)[1]
    plain, grad = listed.split("with --calibration also")
    for name in ("l1", "l2", "fpgm", "lamp", "bn_scale", "random"):
        assert name in plain
    assert "taylor" not in plain and "hessian" not in plain  # only offered with --calibration
    assert "taylor" in grad and "hessian" in grad


def test_meta_device_error_names_the_flag(tmp_path, capsys, monkeypatch):
    (tmp_path / "metanet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def build():
            with torch.device("meta"):
                return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["prune", "--model", "metanet.py:build", "--input-shape", "1,3,8,8"], capsys)
    assert_error(code, err, 2, "meta device", "--importance random")
    assert "importance='random'" not in err  # the flag, not Python advice
    code, out, err = run(["prune", "--model", "metanet.py:build", "--input-shape", "1,3,8,8", "--importance",
                          "random", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["widths"] == [{"name": "0.weight", "before": 8, "after": 4}]


@needs_io
def test_load_errors_are_specific_to_their_cause(saved, tmp_path, capsys):
    from depgraph_prune import io as dp_io
    # checksum mismatch: a re-signed header is fine, an edited weight is not
    header, checksum, tensors = dp_io._read_raw(saved)
    name = next(iter(tensors))
    tensors = dict(tensors, **{name: tensors[name] + 1})
    from safetensors.torch import save_file
    bad = tmp_path / "tampered.dpz"
    save_file(tensors, str(bad), metadata={dp_io._HEADER_KEY: header, dp_io._CHECKSUM_KEY: checksum})
    code, out, err = run(["inspect", "--model", bad, "--base", "resnet18"], capsys)
    assert_error(code, err, 1, "checksum mismatch", "changed or damaged after it was saved")
    assert "--base names" not in err
    # a newer format version
    head = json.loads(header)
    head["version"] = dp_io.FORMAT_VERSION + 1
    newer = tmp_path / "newer.dpz"
    dp_io._write(newer, json.dumps(head), dict(dp_io._read_raw(saved)[2]))
    code, out, err = run(["inspect", "--model", newer, "--base", "resnet18"], capsys)
    assert_error(code, err, 1, "newer", "Upgrade depgraph-prune")
    # the safetensors package missing (it is a dependency, but a --no-deps install may lack it)
    import depgraph_prune.cli as c
    orig = dp_io._have_safetensors
    try:
        dp_io._have_safetensors = lambda: False
        code, out, err = run(["inspect", "--model", saved, "--base", "resnet18"], capsys)
    finally:
        dp_io._have_safetensors = orig
    assert_error(code, err, 1, "safetensors", "pip install safetensors")
    assert c is cli


@needs_io
def test_base_is_suggested_from_the_file(saved, tmp_path, capsys):
    assert json.loads(json.dumps(__import__("depgraph_prune").io.read_header(saved)))["arch"] == "resnet18"
    code, out, err = run(["inspect", "--model", saved], capsys)
    assert_error(code, err, 2, "needs --base", "its header records resnet18", "Add --base resnet18")
    assert "resnet50" not in err
    code, out, err = run(["inspect", "--model", saved, "--base", "resnet50", "--input-shape", "1,3,32,32"], capsys)
    assert_error(code, err, 1, "cannot load", "saved from resnet18", "pass --base resnet18")
    # a file written by dp.save without `arch`: the tensor names tell the architecture
    import depgraph_prune as dp
    m = torchvision.models.resnet34()
    dp.prune(m, torch.randn(1, 3, 32, 32), ratio=0.3)
    dp.save(m, tmp_path / "r34.dpz")
    code, out, err = run(["inspect", "--model", tmp_path / "r34.dpz"], capsys)
    assert_error(code, err, 2, "needs --base", "match resnet34", "Add --base resnet34")


@needs_io
def test_submodule_prune_save_and_reload(tmp_path, capsys):
    out_file = tmp_path / "bb.dpz"
    argv = ["prune", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--submodule", "backbone.body",
            "--input-shape", "1,3,64,64", "--ratio", "0.3", "--out", out_file]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "fasterrcnn_mobilenet_v3_large_320_fpn.backbone.body on 1x3x64x64" in out
    assert "--submodule backbone.body" in out
    code, out, err = run(["inspect", "--model", out_file, "--base", "fasterrcnn_mobilenet_v3_large_320_fpn",
                          "--submodule", "backbone.body", "--input-shape", "1,3,64,64", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_groups"] > 0


def test_gradient_criteria_with_calibration(tmp_path, capsys):
    code, out, err = run(["prune", *SMALL[:2], "--input-shape", "2,3,32,32", "--importance", "taylor",
                          "--calibration", "2", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["importance"] == "taylor" and report["calibration"] == "2" and report["speedup"] > 1
    # a file of saved inputs, with targets
    torch.save({"inputs": [torch.randn(2, 3, 32, 32)], "targets": [torch.tensor([1, 7])]}, tmp_path / "cal.pt")
    code, out, err = run(["prune", *SMALL[:2], "--input-shape", "2,3,32,32", "--importance", "hessian",
                          "--calibration", tmp_path / "cal.pt", "--json"], capsys)
    assert code == 0, err
    torch.save({"weights": 1}, tmp_path / "odd.pt")
    code, out, err = run(["prune", *SMALL, "--importance", "taylor", "--calibration", tmp_path / "odd.pt"], capsys)
    assert_error(code, err, 2, "is not a tensor, a list of tensors")
    with pytest.raises(SystemExit):
        cli.main(["prune", "--help"])
    out = capsys.readouterr().out
    assert "--calibration" in out and "predictions" in out and "taylor and hessian" in out


def test_target_params_from_the_cli(capsys):
    """(--target-macs takes the same path: dp.prune's search, tested in test_newcomer.py.)"""
    code, out, err = run(["prune", *SMALL, "--target-params", "3M", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert abs(report["after"]["params"] / 3e6 - 1) < 0.02 and report["target_params"] == 3_000_000
    assert report["settings"]["target_params"] == 3_000_000


def test_prune_header_names_settings_and_columns(capsys):
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5", "--global-ranking"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("settings: ratio=0.5 (fraction of each group's channels removed), importance=l1, "
                               "scope=global ranking")
    assert "after/before" in lines[2] and "MMACs" in lines[3]


def test_progress_on_the_command_line(capsys, monkeypatch):
    from depgraph_prune import progress
    monkeypatch.setattr(progress, "DELAY", 0.0)
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5", "--progress"], capsys)
    assert code == 0, err
    for stage in ("trace", "build", "score", "plan", "surgery", "count"):
        assert progress.LABELS[stage] in err
    assert progress.LABELS["trace"] not in out  # stdout stays the table
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5"], capsys)  # stderr is not a terminal here
    assert code == 0 and err == ""
    code, out, err = run(["inspect", *SMALL, "--progress"], capsys)
    assert code == 0 and progress.LABELS["build"] in err


@needs_io
def test_saved_file_mode_follows_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, out, err = run(["prune", *SMALL, "--out", tmp_path / "m.dpz", "--json"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert os.stat(tmp_path / "m.dpz").st_mode & 0o777 == 0o644


def test_verbose_shows_traceback(capsys):
    code, out, err = run(["prune", "--model", "resnet18", "--input-shape", "1,3", "--verbose"], capsys)
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: example_inputs")


def test_parse_helpers():
    assert cli.parse_shape("1,3,224,224") == cli.parse_shape("1x3x224x224") == cli.parse_shape("(1, 3, 224, 224)")
    assert cli.default_input_shape("inception_v3") == (1, 3, 299, 299)
    assert cli.default_input_shape("r3d_18") == (1, 3, 8, 112, 112)
    assert cli.default_input_shape("mvit_v2_s") == (1, 3, 16, 224, 224)
    assert cli.default_input_shape("resnet50") == (1, 3, 224, 224)
    model = torchvision.models.resnet18()
    assert cli.parse_ratios("*conv1:0.5,fc:0", model) == {"*conv1": 0.5, "fc": 0.0}
    assert cli.parse_ratios("[0:0, 1-2:0.5]", model) == {"layer1.0.conv1": 0.5, "layer1.0.conv2": 0.5}


# ============================================================================ the real program
def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def test_python_m_exit_status_and_one_line():
    proc = subprocess.run([sys.executable, "-m", "depgraph_prune", "prune", "--model", "resnet5O"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'resnet5O'"), proc.stderr


def test_console_script():
    exe = shutil.which("depgraph-prune", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the depgraph-prune console script is not installed (pyproject [project.scripts], "
                    "then pip install -e .)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("depgraph-prune ")


# ============================================================================ pictures (depgraph_prune.viz)
def test_viz_widths_roles_and_dot(tmp_path):
    import copy
    import depgraph_prune as dp
    from depgraph_prune import viz
    model, x = torchvision.models.resnet18(), torch.randn(1, 3, 32, 32)
    graph = dp.build_graph(model, x)
    group = graph.group_of("conv1")
    roles = {(m.name, m.dim): viz.member_role(model, m) for m in group.members}
    assert roles[("conv1.weight", 0)] == "produces" and roles[("bn1.weight", 0)] == "norm"
    assert roles[("bn1.running_mean", 0)] == "buffer" and roles[("bn1.num_features", 0)] == "width"
    assert roles[("layer2.0.downsample.0.weight", 1)] == "consumes"
    dot = viz.to_dot(graph, group)
    assert dot.count(" -- ") == len(group.members) and dot.rstrip().endswith("}")
    assert viz.to_dot(graph).count("[shape=box") == len(graph.groups)
    before = copy.deepcopy(model)
    result = dp.prune(model, x, ratio=0.5)
    rows = viz.widths_of(before, model)
    assert ("layer1.0.conv1", 64, 32) in rows and all(a > b for _, a, b in rows)
    assert viz.widths_of(result) == [(n, a, b) for n, a, b in result.widths]
    with pytest.raises(TypeError):
        viz.widths_of(42)
    if not HAVE_MPL:
        pytest.skip("matplotlib is not installed: pictures not drawn")
    fig = viz.plot_widths(before, tmp_path / "w.png", after=model)
    assert (tmp_path / "w.png").exists() and len(fig.axes[0].patches) == 2 * len(rows)
    fig = viz.draw_group(graph, 1)                      # by index, not saved
    assert "Group 1" in fig.axes[0].get_title()
    viz.draw_graph(graph, tmp_path / "g.svg", groups=[1, 2])
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_prune_output_has_no_optimizer_advice(capsys):
    """The command line has no optimizer: the Python API's note about one is left out."""
    code, out, err = run(["prune", *SMALL, "--ratio", "0.5"], capsys)
    assert code == 0, err
    assert "optimizer" not in out
