"""Save and reload (``depgraph_prune.io``): a pruned model written with ``save`` and replayed by
``load`` into a freshly built model gives bit-identical outputs, weights, widths and record, in
safetensors files and in files of the earlier torch-archive container (still read); a corrupt, truncated, tampered, foreign or newer-version file, or a record that
does not fit the model, raises a ``LoadError`` and leaves the model exactly as it was; loading
never runs code from the file; the regularizer's state round-trips the same way."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import depgraph_prune as dp
from depgraph_prune import io as dio
from depgraph_prune import surgery
from depgraph_prune.errors import PruningError
from depgraph_prune.io import FormatError, LoadError, ModelMismatchError
from depgraph_prune.models import digits_cnn
from depgraph_prune.regularize import RegularizedPruner

# "safetensors": what save writes; "torch": a file of the earlier torch.save container, made by the
# old writer (kept in io._write for this) from the same header and tensors: it must still load.
CONTAINERS = ["safetensors", "torch"]


def legacy_copy(path, out):
    """Rewrite a saved file in the earlier torch-archive container (header, checksum, tensors as is)."""
    header, _, tensors = dio._read_raw(path)
    dio._write(out, header, tensors, "torch")
    with open(out, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"  # really the zip container


def save_in(container, fn, obj, path):
    """``fn(obj, path)`` (dio.save / dio.save_state), then, for "torch", the same file in the old container."""
    if container == "safetensors":
        fn(obj, path)
        return
    tmp = f"{path}.st"
    fn(obj, tmp)
    legacy_copy(tmp, path)
    os.unlink(tmp)


pytestmark = pytest.mark.usefixtures("one_thread")


# ======================================================================================= helpers
class Net(nn.Module):
    """conv-bn, depthwise conv, residual add, GroupNorm, flatten -> linear head, a non-persistent
    buffer (a per-channel scale) that is pruned with the channels."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 1)
        self.gn = nn.GroupNorm(3, 6)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1), persistent=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.c1(x))) * self.scale
        y = y + F.relu(self.bn2(self.dw(y)))
        y = F.relu(self.gn(self.c2(y)))
        return self.fc2(F.relu(self.fc1(torch.flatten(y, 1))))


class Tied(nn.Module):
    """Embedding and output head share one weight; the hidden width is prunable."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.fc = nn.Linear(8, 12)
        self.back = nn.Linear(12, 8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.back(F.relu(self.fc(self.emb(ids)))))


def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def _vit():
    return torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=5)


def _mobilenet():
    return torchvision.models.mobilenet_v3_small(num_classes=5)


# name: (builder, example input, prune kwargs)
MODELS = {
    "net": (Net, lambda: torch.randn(2, 3, 4, 4), dict(ratio=0.4)),
    "net_twice": (Net, lambda: torch.randn(2, 3, 4, 4), [dict(ratio=0.3), dict(ratio=0.3)]),  # two surgeries
    "vit": (_vit, lambda: torch.randn(2, 3, 16, 16), dict(ratio=0.5)),
    "mobilenet_v3": (_mobilenet, lambda: torch.randn(1, 3, 32, 32), dict(ratio=0.5)),
    "tied": (Tied, lambda: torch.randint(0, 11, (2, 5)), dict(ratio=0.5)),
    "digits_double": (lambda: digits_cnn().double(), lambda: torch.randn(2, 1, 8, 8, dtype=torch.float64),
                      dict(ratio=0.5)),
}


def _build(name, seed=0):
    builder, _, _ = MODELS[name]
    torch.manual_seed(seed)
    return _randomize(builder()).eval()


def _pruned(name, seed=0):
    model = _build(name, seed)
    torch.manual_seed(123)
    x = MODELS[name][1]()
    kws = MODELS[name][2]
    for kw in (kws if isinstance(kws, list) else [kws]):
        dp.prune(model, x, **kw)
    assert len(surgery.history(model)) == (len(kws) if isinstance(kws, list) else 1), "nothing was pruned"
    return model, x


def snapshot(model):
    sd = {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    bufs = {k: v.detach().clone() for k, v in model.named_buffers()}
    simple = (int, float, bool, str, tuple, type(None))
    attrs = {n: (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)})
             for n, m in model.named_modules()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    return repr(model), sd, bufs, attrs, grads, surgery.history(model)


def assert_unchanged(model, snap):
    rep, sd, bufs, attrs, grads, hist = snap
    assert repr(model) == rep
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(sd)
    for k, (obj, val) in sd.items():
        assert now[k] is obj, f"{k} was replaced"
        assert now[k].dtype == val.dtype and now[k].shape == val.shape and torch.equal(now[k].detach(), val), k
    for k, v in model.named_buffers():  # non-persistent ones too
        assert torch.equal(v, bufs[k]), k
    simple = (int, float, bool, str, tuple, type(None))
    for n, m in model.named_modules():
        assert (type(m), m.training, {k: v for k, v in vars(m).items() if isinstance(v, simple)}) == attrs[n], n
    for n, p in model.named_parameters():
        assert (p.grad is None) == (grads[n] is None) and (p.grad is None or torch.equal(p.grad, grads[n])), n
    assert surgery.history(model) == hist


def assert_same_model(a, b, x):
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert list(ba) == list(bb) and all(torch.equal(ba[k], bb[k]) for k in ba)
    assert surgery.history(a) == surgery.history(b)
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert torch.equal(ya, yb), (ya - yb).abs().max()


# ======================================================================================= round trip
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_identical(name, container, tmp_path):
    model, x = _pruned(name)
    path = tmp_path / f"{name}.dpp"
    dp_save(model, path, container)
    fresh = _build(name, seed=5)  # other random weights: everything must come from the file
    params = dict(fresh.named_parameters())
    out = dio.load(path, fresh, example_inputs=x)
    assert out is fresh
    assert_same_model(model, fresh, x)
    for n, p in fresh.named_parameters():
        assert p is params[n], f"{n}: parameter identity lost"  # an optimizer built before load still works
    if name == "tied":
        assert fresh.head.weight is fresh.emb.weight


def dp_save(model, path, container):
    save_in(container, dio.save, model, path)
    assert os.path.getsize(path) > 0
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".depgraph_prune-")]  # no temp left


def test_unpruned_model_round_trips(tmp_path):
    model = _build("net")
    dio.save(model, tmp_path / "m")
    fresh = _build("net", seed=3)
    dio.load(tmp_path / "m", fresh)
    assert_same_model(model, fresh, torch.randn(2, 3, 4, 4))
    assert surgery.history(fresh) == []


def test_loaded_model_can_be_pruned_further_and_saved_again(tmp_path):
    model, x = _pruned("net")
    dio.save(model, tmp_path / "a")
    fresh = dio.load(tmp_path / "a", _build("net"))
    dp.prune(fresh, x, ratio=0.3)
    assert len(surgery.history(fresh)) == 2
    dio.save(fresh, tmp_path / "b")
    again = dio.load(tmp_path / "b", _build("net"))
    assert_same_model(fresh, again, x)


def test_model_dtype_and_device_follow_the_given_model(tmp_path):
    """As with load_state_dict: the values are cast into the given model's tensors' dtype."""
    model, x = _pruned("net")
    dio.save(model, tmp_path / "m")
    fresh = dio.load(tmp_path / "m", _build("net").double())
    assert all(p.dtype == torch.float64 for p in fresh.parameters())
    with torch.no_grad():
        assert torch.allclose(fresh(x.double()).float(), model(x), atol=1e-5)


def test_bfloat16_round_trip(tmp_path):
    model = _build("net").to(torch.bfloat16)
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    dp.prune(model, x, ratio=0.5)
    dio.save(model, tmp_path / "m")
    fresh = dio.load(tmp_path / "m", _build("net").to(torch.bfloat16))
    assert_same_model(model, fresh, x)


def test_header_is_readable_json(tmp_path):
    model, _ = _pruned("net")
    dio.save(model, tmp_path / "m")
    head = dio.read_header(tmp_path / "m")
    assert head["format"] == "depgraph_prune" and head["version"] == dio.FORMAT_VERSION and head["kind"] == "model"
    assert head["record"] == surgery.history(model)
    assert "scale" in head["buffers"]


def test_meta_model_cannot_be_saved(tmp_path):
    with torch.device("meta"):
        model = Net()
    with pytest.raises(PruningError, match="meta"):
        dio.save(model, tmp_path / "m")
    assert not os.path.exists(tmp_path / "m")


# ======================================================================================= bad files
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One pruned Net saved in each container: {container: (path, bytes)}."""
    model, _ = _pruned("net_twice")
    out = {}
    for c in ("safetensors", "torch"):
        p = tmp_path_factory.mktemp(c) / "m"
        save_in(c, dio.save, model, p)
        out[c] = (p, p.read_bytes())
    return out


def _expect_load_error(path, err=LoadError, match=None):
    model = _build("net")
    model(torch.randn(2, 3, 4, 4)).sum().backward()  # grads present: they must be kept too
    snap = snapshot(model)
    with pytest.raises(err, match=match):
        dio.load(path, model)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(container, fraction, saved, tmp_path):
    _, data = saved[container]
    p = tmp_path / "cut"
    p.write_bytes(data[: int(len(data) * fraction)])
    _expect_load_error(p, FormatError)


@pytest.mark.parametrize("container", CONTAINERS)
def test_flipped_bytes_anywhere_are_detected(container, saved, tmp_path):
    """A flipped bit either raises FormatError (model unchanged) or, where it hit bytes that carry
    no content (a zip entry's timestamp), loads exactly the saved model: never anything else."""
    path, data = saved[container]
    reference = dio.load(path, _build("net"))
    n = len(data)
    detected = 0
    for pos in sorted(set(range(0, 64, 3)) | {n // 7, n // 3, n // 2, 2 * n // 3, n - 200, n - 2}):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        p = tmp_path / f"flip{pos}"
        p.write_bytes(bytes(bad))
        model = _build("net")
        snap = snapshot(model)
        try:
            dio.load(p, model)
        except FormatError:
            assert_unchanged(model, snap)
            detected += 1
        else:
            assert_same_model(reference, model, torch.randn(2, 3, 4, 4))
    assert detected >= (20 if container == "safetensors" else 4)  # zip readers ignore local-header fields


def test_tampered_tensor_with_valid_container_is_detected(saved, tmp_path):
    """Rewrite a weight through the container's own API (the container is valid, the checksum is not)."""
    path, _ = saved["torch"]
    obj = torch.load(path, weights_only=True)
    name = next(iter(obj["tensors"]))
    obj["tensors"][name] = obj["tensors"][name] + 1e-3
    torch.save(obj, tmp_path / "t")
    _expect_load_error(tmp_path / "t", FormatError, match="checksum")


def test_tampered_record_is_detected(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    path, _ = saved["safetensors"]
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    head = json.loads(meta[dio._HEADER_KEY])
    key = next(iter(head["record"][0]["kept"]))
    head["record"][0]["kept"][key] = head["record"][0]["kept"][key][1:] + [0]  # an edited record
    meta[dio._HEADER_KEY] = json.dumps(head)
    save_file(tensors, str(tmp_path / "t"), metadata=meta)
    _expect_load_error(tmp_path / "t", FormatError, match="checksum")


def _rewrite(tmp_path, saved, edit, container="torch"):
    """A file whose header was edited by ``edit`` and re-signed: valid, but saying something else."""
    path, _ = saved[container]
    header, _, tensors = dio._read_raw(path)
    head = json.loads(header)
    edit(head, tensors)
    out = tmp_path / "edited"
    dio._write(out, json.dumps(head), tensors, container)
    return out


def test_newer_format_version_is_refused(saved, tmp_path):
    p = _rewrite(tmp_path, saved, lambda h, t: h.update(version=dio.FORMAT_VERSION + 1))
    _expect_load_error(p, FormatError, match="newer")


@pytest.mark.parametrize("bad", ["empty", "garbage", "text", "plain_safetensors", "plain_torch", "state_file"])
def test_foreign_files_are_refused(bad, tmp_path):
    p = tmp_path / "f"
    if bad == "empty":
        p.write_bytes(b"")
    elif bad == "garbage":
        p.write_bytes(os.urandom(4096))
    elif bad == "text":
        p.write_text("hello, I am not a model\n" * 20)
    elif bad == "plain_safetensors":
        from safetensors.torch import save_file
        save_file(_build("net").state_dict(), str(p))
    elif bad == "plain_torch":
        torch.save(_build("net").state_dict(), p)
    else:
        dio.save_state({"a": 1}, p)
    _expect_load_error(p, FormatError)


def test_missing_file_is_a_load_error(tmp_path):
    _expect_load_error(tmp_path / "nope", LoadError, match="cannot read")


class _Evil:
    ran = False

    def __reduce__(self):
        return (_set_flag, ())


def _set_flag():
    _Evil.ran = True
    return {}


def test_loading_never_runs_code_from_the_file(tmp_path):
    """A pickle that would call a function on load is refused (weights_only), and the call never happens."""
    _Evil.ran = False
    p = tmp_path / "evil"
    torch.save({dio._HEADER_KEY: "{}", dio._CHECKSUM_KEY: "0", "tensors": {}, "payload": _Evil()}, p)
    _expect_load_error(p, FormatError)
    assert not _Evil.ran
    with pytest.raises(FormatError):
        dio.load_state(p)
    assert not _Evil.ran


# ======================================================================================= wrong model
def test_file_from_another_architecture_is_refused(tmp_path):
    model, _ = _pruned("vit")
    dio.save(model, tmp_path / "vit")
    _expect_load_error(tmp_path / "vit", ModelMismatchError, match="different architecture")


def test_same_names_other_widths_are_refused(tmp_path):
    class Wider(Net):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6 * 4 * 4, 12)
            self.fc2 = nn.Linear(12, 3)

    model = _randomize(Wider())
    dp.prune(model, torch.randn(2, 3, 4, 4), ratio=0.5)
    dio.save(model, tmp_path / "w")
    _expect_load_error(tmp_path / "w", ModelMismatchError)


def test_already_pruned_model_is_refused(tmp_path):
    model, x = _pruned("net")
    dio.save(model, tmp_path / "m")
    target, _ = _pruned("net")
    snap = snapshot(target)
    with pytest.raises(ModelMismatchError, match="already pruned"):
        dio.load(tmp_path / "m", target)
    assert_unchanged(target, snap)


def _edit_kept(fn):
    def edit(head, tensors):
        entry = head["record"][0]["kept"]
        key = next(k for k in entry if k.startswith("c1.weight:0"))
        entry[key] = fn(entry[key])
    return edit


@pytest.mark.parametrize("how,match", [
    (lambda k: k + [10_000], "lie in"),           # out of range for this model
    (lambda k: [-1] + k[1:], "lie in"),
    (lambda k: list(reversed(k)), "sorted"),
    (lambda k: k[:1] + k[:1] + k[2:], "sorted"),  # repeated
    (lambda k: [], "no position"),
])
def test_bad_kept_positions_are_refused(how, match, saved, tmp_path):
    _expect_load_error(_rewrite(tmp_path, saved, _edit_kept(how)), ModelMismatchError, match=match)


def test_unknown_names_in_the_record_are_refused(saved, tmp_path):
    def edit(head, tensors):
        head["record"][0]["kept"]["nowhere.weight:0"] = [0]
    _expect_load_error(_rewrite(tmp_path, saved, edit), ModelMismatchError, match="nowhere")

    def edit_attr(head, tensors):
        head["record"][0]["attrs"]["c1.no_such_attr"] = 3
    _expect_load_error(_rewrite(tmp_path, saved, edit_attr), ModelMismatchError, match="no_such_attr")

    def edit_type(head, tensors):
        head["record"][0]["attrs"]["c1.out_channels"] = "wide"
    _expect_load_error(_rewrite(tmp_path, saved, edit_type), ModelMismatchError, match="out_channels")


def test_stored_tensor_of_the_wrong_shape_is_refused(saved, tmp_path):
    def edit(head, tensors):
        tensors["fc2.bias"] = torch.zeros(7)
    _expect_load_error(_rewrite(tmp_path, saved, edit), ModelMismatchError, match="fc2.bias")

    def missing(head, tensors):
        del tensors["fc2.bias"]
    _expect_load_error(_rewrite(tmp_path, saved, missing), ModelMismatchError, match="fc2.bias")


def test_malformed_record_is_a_format_error(saved, tmp_path):
    _expect_load_error(_rewrite(tmp_path, saved, lambda h, t: h.update(record={"kept": 1})), FormatError)
    _expect_load_error(_rewrite(tmp_path, saved, lambda h, t: h["record"][0]["kept"].update({"c1.weight": [0]})),
                       FormatError)
    _expect_load_error(_rewrite(tmp_path, saved, lambda h, t: h["record"][0]["kept"].update({"c1.weight:0": ["a"]})),
                       FormatError)


class _FailingSet(torch.overrides.TorchFunctionMode):
    """Fails the k-th tensor attribute assignment (``t.data = ...``, ``t.grad = ...``)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.n = k, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "__set__":
            self.n += 1
            if self.n == self.k:
                raise RuntimeError(f"injected failure on assignment {self.k}")
        return func(*args, **(kwargs or {}))


def test_failure_while_committing_a_load_rolls_back_everything(saved, monkeypatch):
    path, _ = saved["torch"]
    # how many assignments a successful load makes
    probe = _FailingSet(10 ** 9)
    with probe:
        dio.load(path, _build("net"))
    n = probe.n
    assert n > 20
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        model = _build("net")
        model(torch.randn(2, 3, 4, 4)).sum().backward()
        snap = snapshot(model)
        with pytest.raises(LoadError, match="injected failure"):
            with _FailingSet(k):
                dio.load(path, model)
        assert_unchanged(model, snap)
    # a failing width attribute assignment (the last step of the commit)
    model = _build("net")
    snap = snapshot(model)
    orig = nn.Module.__setattr__

    def bad_setattr(self, name, value):
        if name == "num_groups":
            raise RuntimeError("injected setattr failure")
        orig(self, name, value)

    monkeypatch.setattr(nn.Module, "__setattr__", bad_setattr)
    with pytest.raises(LoadError, match="injected setattr failure"):
        dio.load(path, model)
    monkeypatch.undo()
    assert_unchanged(model, snap)


def test_example_inputs_check_undoes_a_load_that_does_not_run(saved):
    path, _ = saved["torch"]
    model = _build("net")
    snap = snapshot(model)
    with pytest.raises(ModelMismatchError, match="does not run"):
        dio.load(path, model, example_inputs=torch.randn(2, 3, 5, 5))  # the head wants 4x4 maps
    assert_unchanged(model, snap)


# ======================================================================================= plain state
def _state_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and \
            torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("container", CONTAINERS)
def test_regularizer_state_round_trips_and_resumes_exactly(container, tmp_path):
    X = torch.randn(4, 1, 8, 8)
    Y = torch.randint(0, 10, (4,))

    def run(pruner, model, opt, n):
        for _ in range(n):
            loss = F.cross_entropy(model(X), Y) + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            pruner.regularize()
            opt.step()
            pruner.step()

    torch.manual_seed(0)
    model = digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = RegularizedPruner(model, X[:1], "greg1", ratio=0.5, interval=2, delta=0.05)
    fresh_state = pruner.state_dict()
    assert any(g["h"] != g["h"] for g in fresh_state["groups"])  # NaN (no ratio observed yet) survives
    save_in(container, dio.save_state, fresh_state, tmp_path / "fresh")
    assert _state_equal(fresh_state, dio.load_state(tmp_path / "fresh"))
    run(pruner, model, opt, 5)
    state = pruner.state_dict()
    save_in(container, dio.save_state, state, tmp_path / "reg")
    save_in(container, dio.save_state, opt.state_dict(), tmp_path / "opt")  # int keys, nested dicts
    save_in(container, dio.save, model, tmp_path / "model")
    loaded = dio.load_state(tmp_path / "reg")
    assert _state_equal(state, loaded)
    assert _state_equal(opt.state_dict(), dio.load_state(tmp_path / "opt"))
    # resume on a fresh copy: identical continuation
    model2 = dio.load(tmp_path / "model", digits_cnn())
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.01, momentum=0.9)
    opt2.load_state_dict(dio.load_state(tmp_path / "opt"))
    pruner2 = RegularizedPruner(model2, X[:1], "greg1", ratio=0.5, interval=2, delta=0.05)
    pruner2.load_state_dict(loaded)
    run(pruner, model, opt, 4)
    run(pruner2, model2, opt2, 4)
    assert _state_equal(pruner.state_dict(), pruner2.state_dict())
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n


def test_state_encoding_covers_plain_types(tmp_path):
    state = {"i": 3, "f": -0.0, "inf": float("inf"), "ninf": float("-inf"), "nan": float("nan"), "b": True,
             "none": None, "s": "x", "t": (1, [2, (3,)]), "int_keys": {0: "a", 5: {"b": 2}},
             "tensors": [torch.arange(3), torch.ones(2, 2, dtype=torch.bfloat16), torch.tensor(True)],
             "__tensor__": "a user key that looks like a tag", "empty": torch.zeros(0, 3)}
    dio.save_state(state, tmp_path / "s")
    assert _state_equal(state, dio.load_state(tmp_path / "s"))


def test_state_refuses_unsupported_objects_and_bad_files(tmp_path):
    with pytest.raises(PruningError, match="set"):
        dio.save_state({"a": {1, 2}}, tmp_path / "s")
    assert not os.path.exists(tmp_path / "s")
    dio.save_state({"lam": torch.arange(5.0)}, tmp_path / "s")
    data = bytearray((tmp_path / "s").read_bytes())
    data[-3] ^= 1
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(FormatError):
        dio.load_state(tmp_path / "bad")
    model, _ = _pruned("net")
    dio.save(model, tmp_path / "model")
    with pytest.raises(FormatError, match="dp.load"):
        dio.load_state(tmp_path / "model")


# ======================================================================================= optimizer after surgery
def _train(model, opt, X, Y, n):
    losses = []
    for _ in range(n):
        loss = F.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _optimizers():
    return {
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
        "adam": lambda ps: torch.optim.Adam(ps, lr=3e-3),
        "adamw_amsgrad": lambda ps: torch.optim.AdamW(ps, lr=3e-3, amsgrad=True),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5),
    }


@pytest.mark.parametrize("opt_name", list(_optimizers()))
def test_training_continues_after_a_prune_with_rebuilt_optimizer_state(opt_name):
    torch.manual_seed(0)
    X, Y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = digits_cnn().train()
    opt = _optimizers()[opt_name](model.parameters())
    _train(model, opt, X, Y, 15)
    old_state = {n: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
                 for n, p in model.named_parameters()}
    model.eval()
    dp.prune(model, X[:1], ratio=0.3)
    model.train()
    assert dp_rebuild(opt, model) is opt
    kept = surgery.history(model)[-1]["kept"]
    for n, p in model.named_parameters():
        st = opt.state[p]
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape, (n, k)
                expect = old_state[n][k]
                for d in range(p.dim()):
                    if f"{n}:{d}" in kept:
                        expect = expect.index_select(d, torch.tensor(kept[f"{n}:{d}"]))
                assert torch.equal(v, expect), (n, k)  # the kept channels' state, untouched
            elif isinstance(v, torch.Tensor):
                assert torch.equal(v, old_state[n][k]), (n, k)  # Adam's step count goes on
    after = _train(model, opt, X, Y, 25)
    assert after[-1] < after[0] * 0.8, after


def dp_rebuild(opt, model):
    from depgraph_prune.optim import rebuild_optimizer
    return rebuild_optimizer(opt, model)


def test_without_rebuild_the_stale_state_breaks_the_step():
    """Why rebuild_optimizer exists: the momentum buffers keep the old shapes."""
    torch.manual_seed(0)
    X, Y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model = digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, X, Y, 2)
    dp.prune(model, X[:1], ratio=0.3)
    with pytest.raises(RuntimeError):
        _train(model, opt, X, Y, 1)


def test_several_surgeries_between_steps_compose():
    """Three prunes without an optimizer step in between: rebuilding once at the end equals
    rebuilding after each surgery."""
    torch.manual_seed(0)
    X, Y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    base = digits_cnn()
    opt0 = torch.optim.Adam(base.parameters(), lr=1e-3)
    _train(base, opt0, X, Y, 3)

    def clone():
        import copy
        m = copy.deepcopy(base)
        o = torch.optim.Adam(m.parameters(), lr=1e-3)
        o.load_state_dict(opt0.state_dict())
        return m, o

    a, oa = clone()
    b, ob = clone()
    for _ in range(3):
        dp.prune(a, X[:1], ratio=0.3)
        dp.prune(b, X[:1], ratio=0.3)
        dp_rebuild(ob, b)
    assert len(surgery.history(a)) == 3
    dp_rebuild(oa, a)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.shape == pb.shape
        for k in oa.state[pa]:
            assert torch.equal(oa.state[pa][k], ob.state[pb][k]), (n, k)
    dp_rebuild(oa, a)  # a second call changes nothing
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        for k in oa.state[pa]:
            assert torch.equal(oa.state[pa][k], ob.state[pb][k]), (n, k)
    _train(a, oa, X, Y, 2)


def test_state_that_does_not_match_the_record_is_reset_with_a_warning():
    torch.manual_seed(0)
    X, Y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model = digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt, X, Y, 2)
    dp.prune(model, X[:1], ratio=0.3)
    victim = next(p for p in model.parameters() if p.dim() == 4)
    opt.state[victim]["exp_avg"] = torch.zeros(3, 3, 3, 3)  # matches nothing
    with pytest.warns(UserWarning, match="reset"):
        dp_rebuild(opt, model)
    assert victim not in opt.state or not opt.state[victim]
    _train(model, opt, X, Y, 2)  # the reset parameter starts afresh
    assert opt.state[victim]["exp_avg"].shape == victim.shape


# ======================================================================================= one format, file mode
def test_save_writes_safetensors_only(tmp_path):
    """One format: whatever is installed, save and save_state write safetensors (no container choice)."""
    from safetensors import safe_open
    model, _ = _pruned("net")
    dio.save(model, tmp_path / "m.dpz", arch="tests.Net")
    dio.save_state({"a": torch.ones(2)}, tmp_path / "s.dpz")
    for name in ("m.dpz", "s.dpz"):
        with safe_open(str(tmp_path / name), framework="pt") as f:
            assert dio._HEADER_KEY in f.metadata()
    assert dio.read_header(tmp_path / "m.dpz")["arch"] == "tests.Net"
    with pytest.raises(TypeError):
        dio.save(model, tmp_path / "x", container="torch")  # the choice is gone


def test_legacy_torch_container_file_loads(tmp_path):
    """A file in the earlier torch.save container (old writer) loads bit-identically, and its state too."""
    model, x = _pruned("net")
    dio.save(model, tmp_path / "new")
    legacy_copy(tmp_path / "new", tmp_path / "old")
    fresh = dio.load(tmp_path / "old", _build("net", seed=9))
    assert_same_model(model, fresh, x)
    dio.save_state({"k": [1, 2.5, torch.arange(3)]}, tmp_path / "snew")
    legacy_copy(tmp_path / "snew", tmp_path / "sold")
    back = dio.load_state(tmp_path / "sold")
    assert back["k"][:2] == [1, 2.5] and torch.equal(back["k"][2], torch.arange(3))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_files_follow_the_umask(umask, tmp_path):
    model, _ = _pruned("net")
    old = os.umask(umask)
    try:
        dio.save(model, tmp_path / "m.dpz")
        dio.save_state({"a": 1}, tmp_path / "s.dpz")
    finally:
        os.umask(old)
    for name in ("m.dpz", "s.dpz"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
