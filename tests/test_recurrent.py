"""Recurrent layers (issue 16, item 4): ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` are pruned, not kept whole.

* function preservation: zero the *producers* of some hidden units (their rows in every gate of
  every layer and direction, and the gate biases; for ``proj_size``, the projection rows), prune
  exactly those units, and the outputs (``output``, ``h_n``, ``c_n``) do not change (float64, eval);
  for 1 and 2 layers, bidirectional, ``batch_first``, LSTM (with and without ``proj_size``), GRU
  and RNN, fixed cases and a ``hypothesis`` sweep over the options;
* the pruned module's width attributes agree with its tensors, it runs forward and backward, and
  its cached ``_flat_weights`` are its own (pruned) parameters;
* an initial state given by the caller couples to the hidden units (from a model input: frozen);
* ``dp.prune`` at ratio 0.5 cuts the MACs of a recurrent model by at least 25%.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import depgraph_prune as dp

TOL = 1e-9  # float64

pytestmark = pytest.mark.usefixtures("one_thread")

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


class Seq(nn.Module):
    """Linear -> RNN -> heads on the per-step output, on h_n and (LSTM) on c_n."""

    def __init__(self, cls=nn.LSTM, n_in=5, width=8, hidden=6, **kw):
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.rnn = cls(width, hidden, **kw)
        d = 2 if kw.get("bidirectional") else 1
        r = kw.get("proj_size") or hidden
        self.head = nn.Linear(d * r, 3)
        self.h_head = nn.Linear(r, 2)
        self.c_head = nn.Linear(hidden, 2) if cls is nn.LSTM else None

    def forward(self, x):
        y, state = self.rnn(torch.tanh(self.inp(x)))
        if self.c_head is not None:
            h, c = state
            return self.head(y), self.h_head(h), self.c_head(c)
        return self.head(y), self.h_head(state)


class WithState(nn.Module):
    """The initial state comes from another layer (an encoder summary), so it couples to the units."""

    def __init__(self, cls=nn.GRU, hidden=6, num_layers=2):
        super().__init__()
        self.cls = cls
        self.init_h = nn.Linear(4, hidden)
        self.init_c = nn.Linear(4, hidden)
        self.rnn = cls(5, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x, z):
        n = self.rnn.num_layers
        h0 = self.init_h(z).unsqueeze(0).expand(n, -1, -1).contiguous()
        if self.cls is nn.LSTM:
            c0 = self.init_c(z).unsqueeze(0).expand(n, -1, -1).contiguous()
            y, _ = self.rnn(x, (h0, c0))
        else:
            y, _ = self.rnn(x, h0)
        return self.head(y)


def _input(kw, batch=2, steps=7, n_in=5):
    return torch.randn(batch, steps, n_in) if kw.get("batch_first") else torch.randn(steps, batch, n_in)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _is_consumer(model, member) -> bool:
    """The input side of a layer that reads the group's channels (zeroing it is not needed)."""
    owner_name, _, attr = member.name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if isinstance(owner, nn.Linear):
        return attr == "weight" and member.dim == 1
    if isinstance(owner, nn.RNNBase):
        return attr.startswith(("weight_ih", "weight_hh", "weight_hr")) and member.dim == 1
    return False


def _every_other(group):
    chans = list(range(0, group.size, 2))
    return chans[:-1] if len(chans) == group.size else chans


def check_rnn_widths(rnn: nn.RNNBase) -> None:
    g = _GATES[type(rnn)]
    H, P = rnn.hidden_size, getattr(rnn, "proj_size", 0)
    R, D = P or H, 2 if rnn.bidirectional else 1
    for layer in range(rnn.num_layers):
        for sfx in ("", "_reverse")[:D]:
            tag = f"l{layer}{sfx}"
            n_in = rnn.input_size if layer == 0 else D * R
            assert getattr(rnn, f"weight_ih_{tag}").shape == (g * H, n_in), tag
            assert getattr(rnn, f"weight_hh_{tag}").shape == (g * H, R), tag
            if rnn.bias:
                assert getattr(rnn, f"bias_ih_{tag}").shape == (g * H,), tag
                assert getattr(rnn, f"bias_hh_{tag}").shape == (g * H,), tag
            if P:
                assert getattr(rnn, f"weight_hr_{tag}").shape == (P, H), tag
    # the tensors torch hands to its RNN kernels are the module's own parameters
    assert all(a is getattr(rnn, n) for a, n in zip(rnn._flat_weights, rnn._flat_weights_names))


def zero_prune_compare(model, inputs, pick=_every_other, only=None):
    """Zero the producers of ``pick(group)`` channels of every prunable group (or of the groups
    holding the members named in ``only``), prune them in one surgery, return the max output
    difference and the plan's sizes."""
    model = model.double().eval()
    inputs = tuple(t.double() for t in inputs)
    graph = dp.build_graph(model, inputs)
    groups = [g for g in graph.groups if g.prunable]
    if only is not None:
        groups = [g for g in groups if any(m.name in only for m in g.members)]
    plan = {g: c for g in groups if (c := pick(g))}
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for g, chans in plan.items():
            for m in g.members:
                if m.kind == "param" and not _is_consumer(model, m):
                    params[m.name].index_fill_(m.dim, m.indices(chans), 0)
        before = _flat(model(*inputs))
    graph.prune(plan)
    with torch.no_grad():
        after = _flat(model(*inputs))
    assert [t.shape for t in after] == [t.shape for t in before]
    return max((a - b).abs().max().item() for a, b in zip(after, before)), plan


CASES = [
    (nn.LSTM, {}),
    (nn.LSTM, {"num_layers": 2}),
    (nn.LSTM, {"bidirectional": True}),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    (nn.LSTM, {"num_layers": 2, "proj_size": 4}),
    (nn.LSTM, {"num_layers": 2, "proj_size": 3, "bidirectional": True, "batch_first": True}),
    (nn.LSTM, {"bias": False, "batch_first": True}),
    (nn.GRU, {}),
    (nn.GRU, {"num_layers": 2, "bidirectional": True}),
    (nn.GRU, {"num_layers": 2, "batch_first": True}),
    (nn.RNN, {"num_layers": 2, "bidirectional": True}),
    (nn.RNN, {"nonlinearity": "relu"}),
]


def _id(case):
    cls, kw = case
    return cls.__name__ + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_function_preservation(case):
    cls, kw = case
    torch.manual_seed(0)
    model = Seq(cls, **kw)
    H = model.rnn.hidden_size
    diff, plan = zero_prune_compare(model, (_input(kw),))
    assert len(plan) == (3 if kw.get("proj_size") else 2)  # the RNN's input, its hidden units (, projection)
    assert diff < TOL, f"output changed by {diff}"
    rnn = model.rnn
    # the hidden units, the RNN input (the Linear before it) and the projection all shrank
    assert rnn.hidden_size == H - len(range(0, H, 2))
    assert rnn.input_size == 8 - 4
    if kw.get("proj_size"):
        assert rnn.proj_size == kw["proj_size"] - len(range(0, kw["proj_size"], 2))
    check_rnn_widths(rnn)
    # still trains: forward + backward in training mode, in float32 too
    model.float().train()
    outs = _flat(model(_input(kw)))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in rnn.parameters())


def test_hidden_group_members():
    """One group holds hidden unit j of every layer and direction: gate rows j, H+j, 2H+j, 3H+j,
    column j of every weight_hh, columns j and H+j of the deeper layer's weight_ih."""
    model = Seq(nn.LSTM, num_layers=2, bidirectional=True)
    graph = dp.build_graph(model, _input({}))
    g = graph.group_of("rnn")
    H = 6
    assert g.size == H and g.prunable
    by = {(m.name, m.dim): m for m in g.members}
    assert by[("rnn.weight_ih_l0", 0)].indices([1]).tolist() == [1, H + 1, 2 * H + 1, 3 * H + 1]
    assert by[("rnn.weight_hh_l0_reverse", 1)].indices([1]).tolist() == [1]
    assert by[("rnn.weight_ih_l1", 1)].indices([1]).tolist() == [1, H + 1]
    assert by[("head.weight", 1)].indices([2]).tolist() == [2, H + 2]  # output: forward half, reverse half
    assert by[("rnn.hidden_size", 0)].kind == "width"
    assert ("c_head.weight", 1) in by and ("h_head.weight", 1) in by  # c_n and h_n follow the units
    assert graph.group_of("inp") is not g and ("rnn.weight_ih_l0", 1) in {(m.name, m.dim) for m in graph.group_of("inp").members}
    proj = Seq(nn.LSTM, num_layers=2, proj_size=4)
    pgraph = dp.build_graph(proj, _input({}))
    assert {m.name for m in pgraph.group_of("rnn").members} >= {"rnn.proj_size", "rnn.weight_hr_l0", "h_head.weight"}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_initial_state_from_a_layer(cls):
    torch.manual_seed(1)
    model = WithState(cls)
    x, z = torch.randn(2, 7, 5), torch.randn(2, 4)
    diff, plan = zero_prune_compare(model, (x, z), only={"rnn.weight_hh_l0"})
    assert diff < TOL
    (group,) = plan
    names = {m.name for m in group.members}
    assert "init_h.weight" in names  # h_0's producer goes with the units
    assert ("init_c.weight" in names) == (cls is nn.LSTM)
    assert model.init_h.out_features == model.rnn.hidden_size == 3
    check_rnn_widths(model.rnn)


def test_initial_state_from_model_input_is_frozen():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(5, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x, h0):
            return self.head(self.rnn(x, h0)[0])

    graph = dp.build_graph(M(), (torch.randn(7, 2, 5), torch.zeros(1, 2, 6)))
    g = graph.group_of("rnn")
    assert not g.prunable and "model input `h0`" in g.reason


def test_dp_prune_cuts_macs(tmp_path):
    torch.manual_seed(0)
    make = lambda: Seq(nn.LSTM, n_in=16, width=64, hidden=64, num_layers=2, bidirectional=True, batch_first=True)  # noqa: E731
    model = make()
    x = torch.randn(2, 10, 16)
    shapes = [o.shape for o in _flat(model(x))]
    result = dp.prune(model, x, ratio=0.5)
    assert [o.shape for o in _flat(model(x))] == shapes
    assert result.after.macs <= 0.75 * result.before.macs, str(result)
    assert model.rnn.hidden_size == 32
    check_rnn_widths(model.rnn)
    dp.save(model, tmp_path / "lstm.dp")
    loaded = dp.load(tmp_path / "lstm.dp", make())
    check_rnn_widths(loaded.rnn)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_flat(loaded(x)), _flat(model(x))))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cls=st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]), layers=st.integers(1, 3), bidir=st.booleans(),
       batch_first=st.booleans(), hidden=st.integers(2, 7), proj=st.integers(0, 4), bias=st.booleans(),
       data=st.data())
def test_function_preservation_property(cls, layers, bidir, batch_first, hidden, proj, bias, data):
    kw = {"num_layers": layers, "bidirectional": bidir, "batch_first": batch_first, "bias": bias}
    if cls is nn.LSTM and 0 < proj < hidden:
        kw["proj_size"] = proj
    torch.manual_seed(data.draw(st.integers(0, 2 ** 16), label="seed"))
    model = Seq(cls, hidden=hidden, **kw)

    def pick(group):
        chans = data.draw(st.lists(st.integers(0, group.size - 1), unique=True, max_size=group.size - 1),
                          label=f"channels of group {group.index}")
        return sorted(chans)

    x = _input(kw, batch=data.draw(st.integers(1, 3), label="batch"))
    try:
        diff, plan = zero_prune_compare(model, (x,), pick=pick)
    except dp.SurgeryError as exc:  # an LSTM's proj_size must stay below its hidden_size
        assert "proj_size" in str(exc) and kw.get("proj_size"), exc
        assert model.rnn.hidden_size == hidden and model.rnn.proj_size == kw["proj_size"]  # left as it was
        check_rnn_widths(model.rnn)
        return
    assert diff < TOL
    check_rnn_widths(model.rnn)
    assert model.rnn.hidden_size == hidden - sum(len(c) for g, c in plan.items()
                                                 if any(m.name == "rnn.hidden_size" for m in g.members))


def test_projection_must_stay_below_hidden_size():
    model = Seq(nn.LSTM, hidden=4, proj_size=3)
    graph = dp.build_graph(model, _input({}))
    cell = next(g for g in graph.groups if any(m.name == "rnn.hidden_size" for m in g.members))
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(dp.SurgeryError, match="proj_size 3 would not stay below hidden_size 2"):
        graph.prune({cell: [0, 1]})
    assert model.rnn.hidden_size == 4 and model.rnn.proj_size == 3
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


class Stepper(nn.Module):
    """A cell unrolled by a Python loop over time, its state fed back (and started by a layer)."""

    def __init__(self, cls, hidden=6):
        super().__init__()
        self.cls = cls
        self.inp = nn.Linear(5, 8)
        self.init = nn.Linear(5, hidden)
        self.cell = cls(8, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):  # x: (T, N, 5)
        h = torch.tanh(self.init(x[0]))
        state = (h, torch.zeros_like(h)) if self.cls is nn.LSTMCell else h
        outs = []
        for t in range(x.shape[0]):
            state = self.cell(self.inp(x[t]), state)
            outs.append(self.head(state[0] if self.cls is nn.LSTMCell else state))
        return torch.stack(outs)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells_in_a_loop(cls):
    torch.manual_seed(0)
    model = Stepper(cls)
    x = torch.randn(4, 2, 5)
    diff, plan = zero_prune_compare(model, (x,))
    assert diff < TOL and len(plan) == 2  # the cell's input and its hidden units
    cell = model.cell
    assert (cell.input_size, cell.hidden_size) == (4, 3)
    g = 4 if cls is nn.LSTMCell else 3 if cls is nn.GRUCell else 1
    assert cell.weight_ih.shape == (g * 3, 4) and cell.weight_hh.shape == (g * 3, 3)
    assert model.init.out_features == 3
