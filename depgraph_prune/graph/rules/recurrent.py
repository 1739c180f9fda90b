"""Coupling rules for the recurrent layers ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (and their cells).

An RNN keeps one ``hidden_size`` (and, for an LSTM with ``proj_size``, one ``proj_size``) for all of
its layers and both directions, so hidden unit ``j`` is one channel of the whole module:

* the gates are stacked along dim 0 of ``weight_ih_l{k}``, ``weight_hh_l{k}`` and the biases
  (LSTM: input, forget, cell, output; GRU: reset, update, new; RNN: one block), so unit ``j``
  owns rows ``j, H + j, 2H + j, ...`` of each, in every layer and direction;
* the recurrent input is the hidden state: unit ``j`` owns column ``j`` of every ``weight_hh``
  (with ``proj_size``: the projected state, a second channel space, rows of ``weight_hr`` and
  columns of ``weight_hh``; unit ``j`` of the cell then owns column ``j`` of ``weight_hr``);
* a deeper layer reads the previous layer's output, forward half then reverse half, so unit ``j``
  owns columns ``j`` and ``R + j`` of its ``weight_ih`` (``R`` the output width, ``2R`` in all when
  bidirectional), and likewise positions ``j`` and ``R + j`` of the module's ``output``;
* ``h_n`` (and an initial ``h_0`` given to ``forward``) carry the output width in their last dim,
  ``c_n`` / ``c_0`` the cell width.

Removing a unit whose gate rows and biases are all zero preserves the function when the initial
state is zero (the default): every gate pre-activation of that unit is 0, so an LSTM's cell input
``tanh(0)`` and a GRU's candidate ``tanh(0)`` are 0, its state stays 0 and so does its output.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ...errors import SurgeryError
from ..registry import REFRESH_RULES, WIDTH_RULES, module_rule
from .tensor_ops import _arg
from ..values import TV, clean_track

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _state_dim(ctx, state, atoms, what):
    """An initial state passed to forward: its last dim is ``atoms``; the others never change."""
    if state is None:
        return
    if not isinstance(state, TV):
        raise ValueError(f"{what} of {ctx.where()} is not a tensor the rules can follow")
    ctx.freeze_dims(state, range(state.ndim - 1), f"layer/batch dim of {what} of {ctx.where()}")
    ctx.union(state.atoms(-1), atoms, f"{what} of a recurrent layer")


def _with_last(ctx, tv, atoms):
    if isinstance(tv, TV):
        tv.track = clean_track({tv.ndim - 1: atoms})
    return tv


@module_rule(nn.LSTM, nn.GRU, nn.RNN)
def _rnn_module(ctx, node, module, args, kwargs, out):
    name = node.target
    x = _arg(args, kwargs, 0, "input")
    hx = _arg(args, kwargs, 1, "hx")
    if not isinstance(x, TV):  # a PackedSequence: its data and batch sizes are not followed
        raise ValueError("only tensor inputs are followed (a PackedSequence is kept whole)")
    gates = _GATES[module.mode]
    H, P = module.hidden_size, getattr(module, "proj_size", 0)
    R = P or H  # what each direction outputs (and feeds back): the projection, if there is one
    D = 2 if module.bidirectional else 1
    ctx.freeze_dims(x, range(x.ndim - 1), f"sequence/batch dim entering {ctx.where()}")
    cell = ctx.atoms.new(H)
    proj = ctx.atoms.new(P) if P else cell
    ctx.width_atoms(name, "input_size", x.atoms(-1))
    ctx.width_atoms(name, "hidden_size", cell)
    if P:
        ctx.width_atoms(name, "proj_size", proj)
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[:D]:
            tag = f"l{layer}{suffix}"
            w_ih = ctx.param_tv(name, f"weight_ih_{tag}", (0, 1))
            w_hh = ctx.param_tv(name, f"weight_hh_{tag}", (0, 1))
            ctx.union(w_ih.atoms(0).reshape(gates, H), cell[None, :], "gate rows of a recurrent layer")
            ctx.union(w_hh.atoms(0).reshape(gates, H), cell[None, :], "gate rows of a recurrent layer")
            ctx.union(w_hh.atoms(1), proj, "recurrent input (the hidden state)")
            if layer == 0:
                ctx.union(w_ih.atoms(1), x.atoms(-1), "recurrent layer input")
            else:  # the previous layer's output: forward half, then reverse half
                ctx.union(w_ih.atoms(1).reshape(D, R), proj[None, :], "output of the layer below")
            for b in ("bias_ih", "bias_hh"):
                bias = ctx.param_tv(name, f"{b}_{tag}", (0,))
                if bias is not None:
                    ctx.union(bias.atoms(0).reshape(gates, H), cell[None, :], "gate bias of a recurrent layer")
            if P:
                w_hr = ctx.param_tv(name, f"weight_hr_{tag}", (0, 1))
                ctx.union(w_hr.atoms(0), proj, "projection rows")
                ctx.union(w_hr.atoms(1), cell, "projection input (the cell's hidden state)")
    if module.mode == "LSTM":
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ValueError("an LSTM's initial state must be a pair (h_0, c_0)")
            _state_dim(ctx, hx[0], proj, "h_0")
            _state_dim(ctx, hx[1], cell, "c_0")
    else:
        _state_dim(ctx, hx, proj, "h_0")
    output, state = out
    _with_last(ctx, output, np.tile(proj, D))
    if module.mode == "LSTM":
        h_n, c_n = state
        state = (_with_last(ctx, h_n, proj), _with_last(ctx, c_n, cell))
    else:
        state = _with_last(ctx, state, proj)
    return (output, state)


def _rnn_widths(module, changed) -> dict:
    """Width attributes from the narrowed tensors (``changed``: attribute -> new tensor, shapes only)."""
    def shape(attr):
        t = changed.get(attr)
        return tuple((t if t is not None else getattr(module, attr)).shape)

    gates = _GATES[module.mode]
    hidden = shape("weight_hh_l0")[0] // gates
    ups = {"input_size": shape("weight_ih_l0")[1], "hidden_size": hidden}
    if getattr(module, "proj_size", 0):
        proj = shape("weight_hr_l0")[0]
        if proj >= hidden:  # torch refuses to build (and run) such an LSTM
            raise SurgeryError(f"{module!r}: proj_size {proj} would not stay below hidden_size {hidden}; "
                               f"prune fewer hidden units or more projection units")
        ups["proj_size"] = proj
    return ups


WIDTH_RULES[nn.RNNBase] = _rnn_widths


def _refresh(module) -> None:
    # Parameters keep their identity (the surgeon replaces ``.data``), so ``_flat_weights`` still
    # holds them; on CUDA the weights are re-packed into one cuDNN buffer (a no-op on the CPU).
    module._init_flat_weights()


REFRESH_RULES[nn.RNNBase] = _refresh


_CELL_GATES = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


@module_rule(nn.LSTMCell, nn.GRUCell, nn.RNNCell)
def _cell_module(ctx, node, module, args, kwargs, out):
    """One step: ``weight_ih`` / ``weight_hh`` stack the gates as in the full layers; the new
    state (``h'``, and ``c'`` for an LSTM cell) carries the hidden units in its last dim. A cell
    called in a Python loop is one shared module: every call ties to the same units."""
    name = node.target
    x = _arg(args, kwargs, 0, "input")
    hx = _arg(args, kwargs, 1, "hx")
    if not isinstance(x, TV):
        raise ValueError("the input is not a tensor the rules can follow")
    gates = next(g for t, g in _CELL_GATES.items() if isinstance(module, t))
    H = module.hidden_size
    ctx.freeze_dims(x, range(x.ndim - 1), f"batch dim entering {ctx.where()}")
    cell = ctx.atoms.new(H)
    ctx.width_atoms(name, "input_size", x.atoms(-1))
    ctx.width_atoms(name, "hidden_size", cell)
    w_ih = ctx.param_tv(name, "weight_ih", (0, 1))
    w_hh = ctx.param_tv(name, "weight_hh", (0, 1))
    ctx.union(w_ih.atoms(1), x.atoms(-1), "recurrent cell input")
    for w in (w_ih, w_hh):
        ctx.union(w.atoms(0).reshape(gates, H), cell[None, :], "gate rows of a recurrent cell")
    ctx.union(w_hh.atoms(1), cell, "recurrent input (the hidden state)")
    for b in ("bias_ih", "bias_hh"):
        bias = ctx.param_tv(name, b, (0,))
        if bias is not None:
            ctx.union(bias.atoms(0).reshape(gates, H), cell[None, :], "gate bias of a recurrent cell")
    if isinstance(module, nn.LSTMCell):
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ValueError("an LSTM cell's state must be a pair (h, c)")
            _state_dim(ctx, hx[0], cell, "h")
            _state_dim(ctx, hx[1], cell, "c")
        h, c = out
        return (_with_last(ctx, h, cell), _with_last(ctx, c, cell))
    _state_dim(ctx, hx, cell, "h")
    return _with_last(ctx, out, cell)


def _cell_widths(module, changed) -> dict:
    def shape(attr):
        t = changed.get(attr)
        return tuple((t if t is not None else getattr(module, attr)).shape)
    return {"input_size": shape("weight_ih")[1], "hidden_size": shape("weight_hh")[1]}


WIDTH_RULES[nn.RNNCellBase] = _cell_widths
