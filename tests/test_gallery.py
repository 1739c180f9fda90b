"""The model gallery (issue 9, item 5): small models written the way third-party code writes them.

For every model of ``tests/gallery/models.py``:

* ``test_prune_runs``: ``dp.prune(model, x, ratio=0.5)`` succeeds, the pruned model runs, keeps its
  output structure and shapes, its width attributes agree with its tensors, and, where the
  architecture has a prunable width (``Entry.prunable``, decided by reasoning), MACs fall by at
  least 25%.
* ``test_function_preservation``: zero the *producers* of some channels of a prunable group (every
  parameter slice of the group except the input dims of the convolutions / linears that consume
  them), prune exactly those channels with ``g.prune``, and the output must not change (float64,
  eval mode, 1e-5). Models without a channel-normalizing op check the largest prunable group
  alone, then every prunable group at once in one surgery; models with one
  check only the groups of ``Entry.fp_modules``, whose channels never reach that op.
* ``test_build_graph_leaves_model_untouched``: tracing leaves no ``torch.fx`` values in the
  user's modules (timm's LeViT caches attention biases in a dict keyed by ``str(x.device)``), and a
  second graph of the same model builds.
* ``test_untraceable_becomes_opaque``: a model with a submodule that ``torch.fx`` cannot trace
  must still prune: that submodule becomes an opaque leaf, the channels entering it are frozen
  with a reason that names it, and its own parameters are untouched.

``python tests/test_gallery.py`` prints the results table of ``docs/gallery.md``.
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.fx
from torch import nn

import depgraph_prune as dp

sys.path.insert(0, os.path.dirname(__file__))
from gallery.models import BY_NAME, GALLERY  # noqa: E402

TOL = 1e-5
MAX_MAC_RATIO = 0.75  # ratio=0.5 must cut at least 25% of the MACs where a prunable width exists

TRACEABLE = [e.name for e in GALLERY if e.untraceable is None]
UNTRACEABLE = [e.name for e in GALLERY if e.untraceable is not None]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def forward(model, x):
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, (tuple, list)):
            return model(*x)
        return model(x)


def shapes(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return [shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: shapes(v) for k, v in out.items()}
    return out


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flat(out[k])]
    return []


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(flat(a), flat(b)))


def to_double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(to_double(v) for v in x)
    if isinstance(x, dict):
        return {k: to_double(v) for k, v in x.items()}
    return x


def check_widths(model: nn.Module) -> None:
    """Every module's width attributes agree with its tensors."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            w, g = mod.weight, mod.groups
            if mod.transposed:
                assert (w.shape[0], w.shape[1] * g) == (mod.in_channels, mod.out_channels), f"{name}: {mod!r} {tuple(w.shape)}"
            else:
                assert (w.shape[0], w.shape[1] * g) == (mod.out_channels, mod.in_channels), f"{name}: {mod!r} {tuple(w.shape)}"
            assert mod.in_channels % g == 0 and mod.out_channels % g == 0, f"{name}: {mod!r}"
            if mod.bias is not None:
                assert mod.bias.shape == (w.shape[1] * g if mod.transposed else w.shape[0],), name
        elif isinstance(mod, nn.modules.batchnorm._NormBase):
            if mod.weight is not None:
                assert mod.weight.numel() == mod.num_features, f"{name}: {mod!r} weight {tuple(mod.weight.shape)}"
            if mod.running_mean is not None:
                assert mod.running_mean.numel() == mod.num_features, f"{name}: {mod!r}"
        elif isinstance(mod, nn.Linear):
            assert mod.weight.shape == (mod.out_features, mod.in_features), f"{name}: {mod!r} {tuple(mod.weight.shape)}"
        elif isinstance(mod, nn.GroupNorm):
            if mod.weight is not None:
                assert mod.weight.numel() == mod.num_channels, f"{name}: {mod!r} weight {tuple(mod.weight.shape)}"
            assert mod.num_channels % mod.num_groups == 0, f"{name}: {mod!r}"
        elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
            assert tuple(mod.normalized_shape) == tuple(mod.weight.shape), f"{name}: {mod!r} weight {tuple(mod.weight.shape)}"
    repr(model)


def is_consumer(model: nn.Module, member) -> bool:
    """Whether a group member is the *input* side of a layer that reads the group's channels
    (a conv's / linear's input dim); everything else produces or scales the channels."""
    owner_name, _, attr = member.name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return False
    if isinstance(owner, nn.modules.conv._ConvNd) and attr == "weight":
        return member.dim == (0 if owner.transposed else 1)
    if isinstance(owner, nn.Linear) and attr == "weight":
        return member.dim == 1
    if isinstance(owner, nn.MultiheadAttention) and attr == "in_proj_weight":
        return member.dim == 1
    if isinstance(owner, nn.RNNBase) and attr.startswith("weight_ih"):
        return member.dim == 1
    return False


def pick_channels(group) -> list[int]:
    """Every other channel, keeping at least one position of every member."""
    chans = list(range(0, group.size, 2))
    if len(chans) == group.size and not group.n_frozen:
        chans = chans[:-1]
    for m in group.members:
        while len(chans) > 1 and m.indices(chans).numel() == m.size:
            mine = [c for c in chans if m.indices([c]).numel()]
            chans.remove(mine[-1])
    return chans


def groups_to_check(entry, graph) -> list[tuple[str, int]]:
    """(label, group index) of the groups the function-preservation check prunes."""
    if entry.normalizing is None:
        pr = [g for g in graph.groups if g.prunable]
        if not pr:
            return []
        picks = [max(pr, key=lambda g: g.size)]  # then all of them at once: preserve_all
        out, seen = [], set()
        for g in picks:
            if g.index not in seen:
                seen.add(g.index)
                out.append((g.members[0].name, g.index))
        return out
    return [(name, graph.group_of(name).index) for name in entry.fp_modules]


def preserve_one(entry, label: str, index: int) -> tuple[float, str]:
    """Zero the producers of every other channel of group ``index`` (graph of a fresh float64
    copy), prune those channels, and return (max output difference, description)."""
    model, x = entry.make()
    model = model.double()
    x = to_double(x)
    graph = dp.build_graph(model, x)
    g = graph.groups[index]
    assert g.prunable, f"{label}: group {index} is not prunable ({g.reason})"
    chans = pick_channels(g)
    params = dict(model.named_parameters(remove_duplicate=False))
    expect = {}
    with torch.no_grad():
        for m in g.members:
            if m.kind != "param":
                continue
            idx = m.indices(chans)
            expect[(m.name, m.dim)] = params[m.name].shape[m.dim] - idx.numel()
            if not is_consumer(model, m):
                params[m.name].index_fill_(m.dim, idx, 0)
    y_zero = forward(model, x)
    g.prune(chans)
    y = forward(model, x)
    assert shapes(y) == shapes(y_zero)
    check_widths(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    for (name, dim), size in expect.items():
        assert params[name].shape[dim] == size, f"{name} dim {dim}: {tuple(params[name].shape)}, expected {size}"
    return max_diff(y, y_zero), f"{label} ({len(chans)} of {g.size} channels)"


def preserve_all(entry) -> tuple[float, str]:
    """Zero the producers of every other channel of *every* prunable group at once, prune them
    all in one surgery, and return (max output difference, description)."""
    model, x = entry.make()
    model = model.double()
    x = to_double(x)
    graph = dp.build_graph(model, x)
    plan = {g: pick_channels(g) for g in graph.groups if g.prunable}
    plan = {g: c for g, c in plan.items() if c}
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for g, chans in plan.items():
            for m in g.members:
                if m.kind == "param" and not is_consumer(model, m):
                    params[m.name].index_fill_(m.dim, m.indices(chans), 0)
    y_zero = forward(model, x)
    graph.prune(plan)
    y = forward(model, x)
    assert shapes(y) == shapes(y_zero)
    check_widths(model)
    return max_diff(y, y_zero), f"all {len(plan)} prunable groups at once"


def prune_entry(entry, ratio=0.5):
    model, x = entry.make()
    y0 = forward(model, x)
    train_shapes = shapes(forward(copy.deepcopy(model).train(), x))
    result = dp.prune(model, x, ratio=ratio)
    result.train_shapes = train_shapes
    y1 = forward(model, x)
    return model, x, y0, y1, result


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRACEABLE)
def test_prune_runs(name):
    entry = BY_NAME[name]
    model, x, y0, y1, result = prune_entry(entry)
    assert shapes(y1) == shapes(y0)
    assert all(torch.isfinite(t).all() for t in flat(y1))
    check_widths(model)
    # training mode runs too (BatchNorm batch statistics, DropPath's random mask, training-only heads)
    model.train()
    y_train = forward(model, x)
    model.eval()
    assert shapes(y_train) == result.train_shapes
    if entry.must_prune:
        graph = dp.build_graph(*entry.make())
        for mod in entry.must_prune:
            g = graph.group_of(mod)
            assert g.prunable and not g.n_frozen, f"{name}: the output channels of `{mod}` are frozen: {g.reason}"
    if entry.prunable:
        ratio = result.after.macs / result.before.macs
        assert ratio <= MAX_MAC_RATIO, (
            f"{name}: MACs only fell to {ratio:.1%} of the original (expected <= {MAX_MAC_RATIO:.0%}: "
            f"{entry.why}); pruned: {result.widths}")


@pytest.mark.parametrize("name", [n for n in TRACEABLE if BY_NAME[n].normalizing is None or BY_NAME[n].fp_modules])
def test_function_preservation(name):
    entry = BY_NAME[name]
    model, x = entry.make()
    graph = dp.build_graph(model.double(), to_double(x))
    checks = groups_to_check(entry, graph)
    assert checks, f"{name}: no prunable group to check ({entry.why})"
    for label, index in checks:
        diff, what = preserve_one(entry, label, index)
        assert diff <= TOL, f"{name}: pruning the zeroed channels of {what} changed the output by {diff:.3g}"
    if entry.normalizing is None:
        diff, what = preserve_all(entry)
        assert diff <= TOL, f"{name}: pruning the zeroed channels of {what} changed the output by {diff:.3g}"


def _proxies_in(model: nn.Module) -> list[str]:
    """Attributes of the model's modules that hold torch.fx values (left behind by a trace)."""
    found = []

    def walk(v, where, depth=0):
        if isinstance(v, (torch.fx.Proxy, torch.fx.Node)):
            found.append(where)
        elif depth < 3 and isinstance(v, dict):
            for k, w in v.items():
                walk(k, f"{where} key {k!r}", depth + 1)
                walk(w, f"{where}[{k!r}]", depth + 1)
        elif depth < 3 and isinstance(v, (list, tuple, set)):
            for i, w in enumerate(v):
                walk(w, f"{where}[{i}]", depth + 1)

    for mname, mod in model.named_modules():
        for attr, v in vars(mod).items():
            if attr not in ("_parameters", "_buffers", "_modules"):
                walk(v, f"{mname or type(model).__name__}.{attr}")
    return found


@pytest.mark.parametrize("name", TRACEABLE)
def test_build_graph_leaves_model_untouched(name):
    """Tracing must not leave anything behind in the user's modules: a second graph of the same
    model (``steps=2``, or ``build_graph`` before ``prune``) must build, and no module may hold a
    traced value afterwards."""
    entry = BY_NAME[name]
    model, x = entry.make()
    forward(model, x)  # warm whatever the model caches in eval mode
    dp.build_graph(model, x)
    left = _proxies_in(model)
    assert not left, f"{name}: the trace left torch.fx values in the model: {left}"
    dp.build_graph(model, x)


@pytest.mark.parametrize("name", UNTRACEABLE)
def test_untraceable_becomes_opaque(name):
    entry = BY_NAME[name]
    model, x = entry.make()
    opaque = model.get_submodule(entry.untraceable)
    before = {n: tuple(p.shape) for n, p in opaque.named_parameters()}
    graph = dp.build_graph(model, x)  # must not raise: the untraceable submodule becomes a leaf
    assert any(f"`{entry.untraceable}` was kept whole (opaque)" in n for n in graph.notes), graph.notes
    for feeder in entry.feeds_untraceable:
        g = graph.group_of(feeder)
        reasons = " | ".join(g.frozen_reasons)
        assert g.size == 0 and g.n_frozen > 0, f"{feeder} feeds `{entry.untraceable}` but has {g.size} prunable channels"
        assert entry.untraceable in reasons, f"the freeze reason does not name `{entry.untraceable}`: {reasons}"
    model, x, y0, y1, result = prune_entry(entry)
    assert shapes(y1) == shapes(y0)
    check_widths(model)
    opaque = model.get_submodule(entry.untraceable)
    assert {n: tuple(p.shape) for n, p in opaque.named_parameters()} == before
    assert result.after.macs < result.before.macs
    if entry.normalizing is None:  # the channels around the opaque block still prune exactly
        diff, what = preserve_all(entry)
        assert diff <= TOL, f"{name}: pruning the zeroed channels of {what} changed the output by {diff:.3g}"


# ---------------------------------------------------------------------------------------------
# the results table of docs/gallery.md
# ---------------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"


def _pruned_summary(result, limit=3) -> str:
    if not result.widths:
        return "nothing"
    items = [f"`{n.rsplit('.', 1)[0]}` {a}→{b}" for n, a, b in result.widths]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} group{'s' if len(items) > 1 else ''}: " + ", ".join(items[:limit]) + more


_GENERIC = ("meets a fixed-size tensor", "reaches the model output", "kernel dim of", "1-wide", "model input")


def _frozen_notes(entry, limit=3) -> list[str]:
    """The distinct reasons the engine gives for freezing channels (its direct causes only)."""
    import re
    model, x = entry.make()
    graph = dp.build_graph(model, x)
    seen = []
    for g in graph.groups:
        for reason in g.frozen_reasons:
            if any(k in reason for k in _GENERIC):
                continue
            short = re.sub(r" at node `[^`]*`", "", reason).split(": TraceError")[0]
            short = short if len(short) <= 110 else short[:107] + "..."
            if short not in seen:
                seen.append(short)
    return [f"frozen: {r}" for r in seen[:limit]] + ([f"(+{len(seen) - limit} more freeze reasons)"]
                                                      if len(seen) > limit else [])


def gallery_report(names=None) -> list[dict]:
    """Run this file's tests on every gallery model and collect one row per model (never raises)."""
    torch.set_num_threads(1)
    rows = []
    for entry in GALLERY:
        if names and entry.name not in names:
            continue
        row = {"model": entry.name, "style": entry.style, "pruned": "—", "macs": "—", "fp": "n.a.", "notes": [],
               "pass": True}
        try:  # what ratio=0.5 does (for the table; the verdicts come from the tests below)
            _, _, _, _, result = prune_entry(entry)
            row["pruned"] = _pruned_summary(result)
            row["macs"] = f"−{1 - result.after.macs / result.before.macs:.0%}"
        except Exception:  # noqa: BLE001 - the test below records the failure
            pass
        tests = [("opaque", test_untraceable_becomes_opaque)] if entry.untraceable else \
            [("prune", test_prune_runs), ("second graph", test_build_graph_leaves_model_untouched)]
        fp = entry.untraceable is None and (entry.normalizing is None or entry.fp_modules)
        if fp:
            tests.append(("function preservation", test_function_preservation))
        for label, test in tests:
            try:
                test(entry.name)
                if test is test_function_preservation or (test is test_untraceable_becomes_opaque
                                                          and entry.normalizing is None):
                    row["fp"] = "yes" + (" (groups away from the normalizing op)" if entry.normalizing else "")
            except Exception as exc:  # noqa: BLE001 - the table records every failure
                row["pass"] = False
                msg = _first_line(exc)
                msg = msg if len(msg) <= 220 else msg[:217] + "..."
                earlier = [n for n in row["notes"] if n.endswith(msg)]
                row["notes"].append(f"{label}: same error" if earlier else f"**{label}**: {msg}")
                if test is test_function_preservation:
                    row["fp"] = "**no**"
        if entry.normalizing and not entry.fp_modules:
            row["notes"].append(f"function preservation n.a.: {entry.normalizing}")
        try:
            row["notes"] += _frozen_notes(entry)
        except Exception:  # noqa: BLE001 - already reported above
            pass
        rows.append(row)
    return rows


def markdown_table(rows) -> str:
    head = "| model | style | what got pruned | MACs | function preserved | result | notes |\n" \
           "|---|---|---|---|---|---|---|\n"
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    body = "".join(f"| {r['model']} | {esc(r['style'])} | {esc(r['pruned'])} | {r['macs']} | {esc(r['fp'])} | "
                   f"{'pass' if r['pass'] else '**FAIL**'} | {esc('; '.join(r['notes']))} |\n" for r in rows)
    n_pass = sum(r["pass"] for r in rows)
    return head + body + f"\n{n_pass} of {len(rows)} models pass every check.\n"


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    print(markdown_table(gallery_report(sys.argv[1:] or None)))
