"""Property tests on random architectures (DESIGN.md, section Tests).

Every example is a model drawn by ``archgen.archs()`` (convs, grouped/depthwise convs, BN,
activations, residual adds, concats, splits/chunks, SE scales, channel shuffles, pooling, a
shared conv, flatten→linear / mean→linear heads, sometimes LayerNorm/GroupNorm over channels).

- ``test_pruned_model_runs_and_keeps_shape``: ``dp.prune(model, x, ratio=r)`` gives a model
  that runs, keeps its output shape, has consistent width attributes and fewer parameters.
- ``test_every_layer_shrinks_by_the_ratio``: on architectures with concatenations, every conv
  loses its share of the ratio (issue 17), whichever producer of a concatenation it is.
- ``test_function_preservation``: zero every parameter slice of some channels of a group, then
  prune exactly those channels: the output must not change (float64, eval mode, 1e-5).
  Several rounds per example (the graph rebuilt each time), each round pruning either one
  group or a subset of every prunable group at once. Skipped (the equality only) for models
  with channel-normalizing layers.

A failing example prints Python code that rebuilds its model (``archgen.spec_code``).

Environment knobs: ``DP_PROPERTY_SCALE=k`` multiplies the number of examples;
``DP_PROPERTY_RANDOM=1`` draws fresh random examples instead of the fixed, reproducible set.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

import depgraph_prune as dp
from depgraph_prune.errors import PruningError

sys.path.insert(0, os.path.dirname(__file__))
from archgen import archs, build_model, is_normalizing, make_input, spec_code  # noqa: E402

SCALE = int(os.environ.get("DP_PROPERTY_SCALE", "1"))
DERANDOMIZE = os.environ.get("DP_PROPERTY_RANDOM", "0") != "1"
TOL = 1e-5


def _settings(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=DERANDOMIZE, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_widths(model: nn.Module) -> None:
    """Every module's width attributes agree with its tensors (and with its repr)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            w = mod.weight
            assert w.shape[0] == mod.out_channels, f"{name}: weight {tuple(w.shape)} vs out_channels {mod.out_channels}"
            assert w.shape[1] * mod.groups == mod.in_channels, \
                f"{name}: weight {tuple(w.shape)} x groups {mod.groups} vs in_channels {mod.in_channels}"
            assert mod.out_channels % mod.groups == 0 and mod.in_channels % mod.groups == 0, name
            if mod.bias is not None:
                assert mod.bias.shape == (mod.out_channels,), name
            assert repr(mod).startswith(f"Conv2d({w.shape[1] * mod.groups}, {w.shape[0]},"), f"{name}: {mod!r}"
            assert w.numel() > 0, name
        elif isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            assert n > 0, name
            if mod.weight is not None:
                assert mod.weight.numel() == n and mod.bias.numel() == n, f"{name}: {mod!r} weight {tuple(mod.weight.shape)}"
            if mod.running_mean is not None:
                assert mod.running_mean.numel() == n and mod.running_var.numel() == n, name
            assert repr(mod).startswith(f"BatchNorm2d({n},"), name
        elif isinstance(mod, nn.Linear):
            assert mod.weight.shape == (mod.out_features, mod.in_features), \
                f"{name}: weight {tuple(mod.weight.shape)} vs ({mod.out_features}, {mod.in_features})"
            if mod.bias is not None:
                assert mod.bias.shape == (mod.out_features,), name
            assert repr(mod).startswith(f"Linear(in_features={mod.weight.shape[1]}, out_features={mod.weight.shape[0]},"), name
        elif isinstance(mod, nn.GroupNorm):
            assert mod.weight.numel() == mod.num_channels, name
            assert mod.num_channels % mod.num_groups == 0, f"{name}: {mod!r}"
        elif isinstance(mod, nn.LayerNorm):
            assert tuple(mod.normalized_shape) == tuple(mod.weight.shape), f"{name}: {mod!r} weight {tuple(mod.weight.shape)}"
    repr(model)


def forward(model, x):
    with torch.no_grad():
        return model(x)


def member_params(model: nn.Module, group):
    """(member, tensor) for the group's members of kind "param"."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for m in group.members:
        if m.kind == "param":
            assert m.name in params, f"group member {m.name!r} is not a parameter of the model"
            out.append((m, params[m.name]))
    return out


def empties_a_member(group, chans) -> bool:
    return any(m.indices(chans).numel() == m.size for m in group.members)


@st.composite
def channel_subset(draw, group):
    """A non-empty subset of the group's channels that the engine must accept: not all of them
    (unless some are frozen) and never every position of one member."""
    s = group.size
    hi = s if group.n_frozen else s - 1
    k = draw(st.integers(1, hi))
    chans = sorted(draw(st.permutations(range(s)))[:k])
    # repair: give back one channel of each member that would otherwise become empty
    for m in group.members:
        if m.indices(chans).numel() == m.size and len(chans) > 1:
            mine = [c for c in chans if m.indices([c]).numel()]
            chans.remove(mine[draw(st.integers(0, len(mine) - 1))])
    return chans


# ---------------------------------------------------------------------------------------------
# 1. one-call pruning: runs, keeps the output shape, widths consistent, fewer parameters
# ---------------------------------------------------------------------------------------------
@_settings(80)
@given(spec=archs(), ratio=st.floats(0.1, 0.9))
def test_pruned_model_runs_and_keeps_shape(spec, ratio):
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    y0 = forward(model, x)
    p0 = n_params(model)
    result = dp.prune(model, x, ratio=ratio)
    note(f"ratio={ratio}; pruned widths: {result.widths}")
    y1 = forward(model, x)
    assert y1.shape == y0.shape
    assert torch.isfinite(y1).all()
    check_widths(model)
    if result.widths:
        assert n_params(model) < p0, "channels were pruned but the parameter count did not decrease"
        assert result.after.macs <= result.before.macs
    else:
        assert n_params(model) == p0
    # train mode runs too (BatchNorm with batch statistics), and the output shape is the same
    if x.shape[0] > 1:
        model.train()
        assert model(x).shape == y0.shape
        model.eval()


# ---------------------------------------------------------------------------------------------
# 2. function preservation
# ---------------------------------------------------------------------------------------------
def _zero_and_prune(model, x, graph, plan, normalizing, verify=True):
    """Zero the plan's parameter slices, record the output, prune, compare. ``verify=False``
    checks the coupling rules alone (without the numerical verification safety net)."""
    expect = {}  # (name, dim) -> expected size after pruning
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    with torch.no_grad():
        for g, chans in plan.items():
            for m, t in member_params(model, g):
                idx = m.indices(chans)
                t.index_fill_(m.dim, idx, 0)
                expect[(m.name, m.dim)] = shapes[m.name][m.dim] - idx.numel()
    y_zero = forward(model, x)
    p0 = n_params(model)
    if len(plan) == 1:
        (g, chans), = plan.items()
        g.prune(chans, verify=verify)
    else:
        graph.prune(plan, verify=verify)
    y = forward(model, x)
    assert y.shape == y_zero.shape
    check_widths(model)
    params = dict(model.named_parameters())
    for (name, dim), size in expect.items():
        assert params[name].shape[dim] == size, \
            f"{name} dim {dim}: {tuple(params[name].shape)}, expected size {size} along that dim"
    if any(shapes[name][dim] != size for (name, dim), size in expect.items()):
        # (channels whose members are buffers alone, e.g. a table's rows, leave the count as it is)
        assert n_params(model) < p0, "channels were pruned but the parameter count did not decrease"
    if not normalizing:
        diff = (y - y_zero).abs().max().item()
        assert diff <= TOL, f"pruned model differs from the zeroed model by {diff:.3g}"


@_settings(200)
@given(spec=archs(), data=st.data())
def test_function_preservation(spec, data):
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    normalizing = is_normalizing(spec)
    y_orig = forward(model, x)
    rounds = data.draw(st.integers(1, 3), label="rounds")
    for r in range(rounds):
        graph = dp.build_graph(model, x)
        prunable = graph.prunable_groups
        if not prunable:
            break
        mode = data.draw(st.sampled_from(["one", "one", "all", "refuse"]), label=f"round {r} mode")
        if mode == "refuse":
            # what the engine must refuse, leaving the model untouched: every channel of a group
            # without frozen channels, or a subset that empties one member
            g = prunable[data.draw(st.integers(0, len(prunable) - 1), label="group")]
            bad = None
            if g.n_frozen == 0:
                bad = list(range(g.size))
            else:
                for m in g.members:
                    own = [c for c in range(g.size) if m.indices([c]).numel()]
                    if own and m.indices(own).numel() == m.size:
                        bad = own
                        break
            if bad is not None:
                state = {k: v.clone() for k, v in model.state_dict().items()}
                note(f"round {r}: expecting refusal of group {g.index} channels {bad}")
                with pytest.raises(PruningError):
                    g.prune(bad)
                after = model.state_dict()
                assert state.keys() == after.keys()
                for k, v in state.items():
                    assert torch.equal(v, after[k]), f"refused prune changed {k}"
                check_widths(model)
                graph = dp.build_graph(model, x)
                prunable = graph.prunable_groups
            mode = "one"
        if mode == "one":
            g = prunable[data.draw(st.integers(0, len(prunable) - 1), label="group")]
            plan = {g: data.draw(channel_subset(g), label=f"channels of group {g.index}")}
        else:
            plan = {g: data.draw(channel_subset(g), label=f"channels of group {g.index}") for g in prunable}
        plan = {g: c for g, c in plan.items() if c and not empties_a_member(g, c)}
        if not plan:
            continue
        note(f"round {r}: plan " + "; ".join(f"group {g.index} ({g.members[0].name}, size {g.size}, "
                                              f"frozen {g.n_frozen}): {c}" for g, c in plan.items()))
        _zero_and_prune(model, x, graph, plan, normalizing)
    y = forward(model, x)
    assert y.shape == y_orig.shape


# ---------------------------------------------------------------------------------------------
# 3. the per-layer width rule (issue 17): every conv shrinks by the ratio, concatenated or not
# ---------------------------------------------------------------------------------------------
def _has_conv_concat(spec) -> bool:
    return any(kind == "cat" and sum(b[0] == "conv" for b in p["branches"]) + any(b[0] != "conv" for b in p["branches"]) >= 2
               for kind, p in spec["blocks"])


def _expected_removals(graph, name):
    """For conv ``name``: (width, number of the group's parts its output covers, lowest and
    highest count of removed filters the rule allows at ``ratio``), or None if the rule does not
    speak about it (frozen or coarse channels)."""
    key = (f"{name}.weight", 0)
    g = graph._member_group.get(key)
    if g is None or not g.prunable or g.n_frozen:
        return None
    m = next(mm for mm in g.members if (mm.name, mm.dim) == key)
    ch = m._channel_of
    if (ch < 0).any() or np.unique(ch).size != ch.size or g.unit != 1:
        return None
    mine = [p for p in g.parts if np.isin(p[0], ch)]
    return m.size, g, mine


@_settings(60)
@given(spec=archs(kinds=("conv", "cat", "cat", "split", "res", "se", "pool")).filter(_has_conv_concat),
       ratio=st.floats(0.1, 0.9))
def test_every_layer_shrinks_by_the_ratio(spec, ratio):
    """Local mode: a conv of width ``w`` whose output covers ``k`` parts of its group loses
    within ``k`` (+1 for the group's ceil) of ``ratio * w`` filters and keeps at least one; where
    no part of the group is held at its floor, each part loses the floor or the ceiling of its
    share ``n_group * size_part / size_group``, so a concatenation's producers lose alike."""
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    graph = dp.build_graph(model, x)
    convs = {n: mod for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)}
    rules = {n: r for n in convs if (r := _expected_removals(graph, n)) is not None}
    widths = {n: convs[n].out_channels for n in rules}
    dp.prune(model, x, ratio=ratio)
    for name, (w, g, mine) in rules.items():
        removed = w - convs[name].out_channels
        k = len(mine)
        note(f"{name}: width {w}, parts {[len(p) for p in mine]} of {[len(p) for p in g.parts]}, removed {removed}")
        assert convs[name].out_channels >= 1
        assert removed < ratio * w + k + 1, f"{name} lost {removed} of {w} at ratio {ratio:.3f}"
        n_group = min(math.ceil(ratio * g.size - 1e-9), g.size - 1)
        share = [n_group * len(p) / g.size for p in g.parts]
        if all(math.ceil(q - 1e-9) <= len(p) - 1 for q, p in zip(share, g.parts)):
            lo = sum(math.floor(n_group * len(p) / g.size + 1e-9) for p in mine)
            hi = sum(math.ceil(n_group * len(p) / g.size - 1e-9) for p in mine)
            assert lo <= removed <= hi, f"{name} lost {removed} of {w}; its share is {lo}..{hi}"
            assert removed > ratio * w - k - 1
    assert widths.keys() == rules.keys()
