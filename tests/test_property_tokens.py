"""Property tests on random *token* models (``archgen_tokens.token_archs()``): the idioms of
transformer and LLM code (hand-written RMSNorm, SwiGLU and fused gate/up MLPs, attention with
separate or fused q/k/v, heads by ``view``, grouped-query attention by ``repeat_interleave`` /
``repeat_kv`` / SDPA's ``enable_gqa``, rotary embeddings with ``rotate_half``, scales from
constants or from widths, SDPA with and without ``scale=``, tied embeddings, learned positions,
layer scales, mixture-of-experts routers with top-k or argmax).

- ``test_token_pruned_model_runs_and_keeps_shape``: ``dp.prune(model, x, ratio=r)`` gives a
  model that runs (eval and train mode, and at the longest sequence length), keeps its output
  shape, keeps tied weights tied, has consistent width attributes and fewer parameters.
- ``test_token_function_preservation``: zero every parameter slice of some channels of a group,
  then prune exactly those channels: the output must not change (float64, eval mode, 1e-5), at
  the traced sequence length and at the longest one the model accepts (``MAX_T``).
  Groups holding a norm's weight (the residual stream of a model with RMSNorm / LayerNorm, the
  per-head dims under qk-norm) are normalized, so the equality cannot hold for them: they are
  pruned in their own rounds with the shape and width checks only (and with numerical
  verification on, which must accept them). Every other group, in every model, gets the exact
  check, pruned with ``verify=False`` so that the coupling rules themselves are tested.

The same helpers as ``test_property.py`` (the conv family); a failing example prints Python code
that rebuilds its model. ``DP_PROPERTY_SCALE`` / ``DP_PROPERTY_RANDOM`` work the same way.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from torch import nn

import depgraph_prune as dp
from depgraph_prune.errors import PruningError

sys.path.insert(0, os.path.dirname(__file__))
from archgen import build_model, make_input, norm_param_names, spec_code, token_archs  # noqa: E402
from archgen_tokens import MAX_T  # noqa: E402
from test_property import (TOL, _settings, _zero_and_prune, channel_subset, check_widths,  # noqa: E402
                           empties_a_member, forward, member_params, n_params)

pytestmark = pytest.mark.usefixtures("one_thread")


def check_token_widths(model: nn.Module) -> None:
    check_widths(model)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            assert mod.weight.shape == (mod.num_embeddings, mod.embedding_dim), \
                f"{name}: weight {tuple(mod.weight.shape)} vs {mod!r}"
    if hasattr(model, "embed") and getattr(model, "head_kind", None) == "tied":
        assert model.head.weight is model.embed.weight, "pruning untied the tied embedding / output weights"


def is_normalized(group, norm_params: set[str]) -> bool:
    return any(m.name in norm_params for m in group.members)


def long_input(spec):
    """An input of the longest length the model accepts (the traced one is shorter): a prune
    must not tie the model to the traced sequence length (position tables, rotary caches)."""
    return make_input({**spec, "seq": MAX_T})


def zero_and_prune_tokens(model, x, graph, plan, normalizing, spec):
    """``_zero_and_prune`` (zero the plan's slices, prune, same output), and the same equality at
    the longest sequence length. Exact groups are pruned with ``verify=False``: what the rules
    call prunable must be exact by itself (the verification safety net has its own tests, and
    cannot see other sequence lengths). Normalized groups are pruned with verification on: the
    verifier must accept these correct prunes."""
    x_long = long_input(spec)
    with torch.no_grad():
        for g, chans in plan.items():
            for m, t in member_params(model, g):
                t.index_fill_(m.dim, m.indices(chans), 0)
    y_long = forward(model, x_long)
    _zero_and_prune(model, x, graph, plan, normalizing, verify=normalizing)  # zeroing again: a no-op
    try:
        y_long_pruned = forward(model, x_long)
    except RuntimeError as e:
        raise AssertionError(f"the pruned model no longer runs at sequence length {MAX_T} "
                             f"(traced at {x.shape[1]}): {e}") from e
    assert y_long_pruned.shape == y_long.shape
    if not normalizing:
        diff = (y_long_pruned - y_long).abs().max().item()
        assert diff <= TOL, (f"at sequence length {MAX_T} (traced at {x.shape[1]}) the pruned model differs "
                             f"from the zeroed model by {diff:.3g}")


# ---------------------------------------------------------------------------------------------
# 1. one-call pruning
# ---------------------------------------------------------------------------------------------
def _prune_runs_and_keeps_shape(spec, ratio):
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    y0, y0_long = forward(model, x), forward(model, long_input(spec))
    p0 = n_params(model)
    result = dp.prune(model, x, ratio=ratio)
    note(f"ratio={ratio}; pruned widths: {result.widths}")
    y1 = forward(model, x)
    assert y1.shape == y0.shape
    assert torch.isfinite(y1).all()
    try:
        y1_long = forward(model, long_input(spec))
    except RuntimeError as e:
        raise AssertionError(f"the pruned model no longer runs at sequence length {MAX_T} "
                             f"(traced at {x.shape[1]}): {e}") from e
    assert y1_long.shape == y0_long.shape
    check_token_widths(model)
    if result.widths:
        assert n_params(model) < p0, "channels were pruned but the parameter count did not decrease"
        assert result.after.macs <= result.before.macs
    else:
        assert n_params(model) == p0
    model.train()
    assert model(x).shape == y0.shape
    model.eval()


# ---------------------------------------------------------------------------------------------
# 2. function preservation
# ---------------------------------------------------------------------------------------------
def _function_preservation(spec, data):
    note(spec_code(spec))
    model, x = build_model(spec), make_input(spec)
    norm_params = norm_param_names(model)
    y_orig = forward(model, x)
    rounds = data.draw(st.integers(1, 3), label="rounds")
    for r in range(rounds):
        graph = dp.build_graph(model, x)
        prunable = graph.prunable_groups
        if not prunable:
            break
        exact = [g for g in prunable if not is_normalized(g, norm_params)]
        normed = [g for g in prunable if is_normalized(g, norm_params)]
        modes = ["one", "one", "one", "all", "refuse"] if exact else []
        modes += ["normed"] if normed else []
        mode = data.draw(st.sampled_from(modes), label=f"round {r} mode") if modes else "refuse"
        if mode == "refuse":
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
                check_token_widths(model)
            continue
        pool = normed if mode == "normed" else exact
        if mode == "all":
            plan = {g: data.draw(channel_subset(g), label=f"channels of group {g.index}") for g in pool}
        else:
            g = pool[data.draw(st.integers(0, len(pool) - 1), label="group")]
            plan = {g: data.draw(channel_subset(g), label=f"channels of group {g.index}")}
        plan = {g: c for g, c in plan.items() if c and not empties_a_member(g, c)}
        if not plan:
            continue
        note(f"round {r} ({mode}): plan " + "; ".join(
            f"group {g.index} ({', '.join(sorted({m.name for m in g.members}))}; size {g.size}, "
            f"frozen {g.n_frozen}): {c}" for g, c in plan.items()))
        zero_and_prune_tokens(model, x, graph, plan, mode == "normed", spec)
        check_token_widths(model)
    y = forward(model, x)
    assert y.shape == y_orig.shape


# ---------------------------------------------------------------------------------------------
# the tests: a modest default run, a bigger sweep behind -m slow
# ---------------------------------------------------------------------------------------------
@_settings(40)
@given(spec=token_archs(), ratio=st.floats(0.1, 0.9))
def test_token_pruned_model_runs_and_keeps_shape(spec, ratio):
    _prune_runs_and_keeps_shape(spec, ratio)


@_settings(80)
@given(spec=token_archs(), data=st.data())
def test_token_function_preservation(spec, data):
    _function_preservation(spec, data)


@pytest.mark.slow
@_settings(600)
@given(spec=token_archs(max_blocks=6), ratio=st.floats(0.1, 0.9))
def test_token_pruned_model_runs_and_keeps_shape_sweep(spec, ratio):
    _prune_runs_and_keeps_shape(spec, ratio)


@pytest.mark.slow
@_settings(1000)
@given(spec=token_archs(max_blocks=6), data=st.data())
def test_token_function_preservation_sweep(spec, data):
    _function_preservation(spec, data)
