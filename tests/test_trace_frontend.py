"""The tracing front end takes forwards as real code writes them (issue 16, item 1).

Each model below is a small stand-in for a pattern found in transformers, diffusers or
Ultralytics. Every test prunes through the documented call, checks the output structure and,
where the pattern sits on a prunable path, function preservation: the channels to remove are
zeroed first (producers and readers), so the pruned model must give the zeroed model's output.
"""
import functools
import math

import pytest
import torch
from torch import nn

import depgraph_prune as dp
from depgraph_prune.errors import TraceError

pytestmark = pytest.mark.usefixtures("one_thread")


def call(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def preserved(model, x, tol=1e-9):
    """Zero every prunable group's every other channel in all its members, prune exactly those,
    and return the largest output difference (float64)."""
    model = model.double().eval()
    x = dp_double(x)
    graph = dp.build_graph(model, x)
    plan = {g: list(range(0, g.size, 2)) for g in graph.prunable_groups if g.size > 1}
    assert plan, "nothing prunable: " + graph.summary()
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for g, chans in plan.items():
            for m in g.members:
                if m.kind == "param":
                    params[m.name].index_fill_(m.dim, m.indices(chans), 0.0)
        y0 = call(model, x)
    graph.prune(plan)
    with torch.no_grad():
        y1 = call(model, x)
    assert y1.shape == y0.shape
    return (y1 - y0).abs().max().item()


def dp_double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: dp_double(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(dp_double(v) for v in x)
    return x


def deco(f):  # what transformers' @can_return_tuple / @auto_docstring / @check_model_inputs do
    @functools.wraps(f)
    def wrapper(self, *args, **kwargs):
        return f(self, *args, **kwargs)
    return wrapper


class Decorated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(4, 8), nn.Linear(8, 2)

    @deco
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        h = torch.relu(self.a(input_ids))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.o(h)


@pytest.mark.parametrize("form", ["tensor", "dict", "dict+mask"])
def test_decorated_forward_with_kwargs(form):
    x = torch.randn(2, 3, 4)
    inputs = {"tensor": x, "dict": {"input_ids": x},
              "dict+mask": {"input_ids": x, "attention_mask": torch.ones(2, 3)}}[form]
    model = Decorated()
    y0 = call(model, inputs)
    result = dp.prune(model, inputs, ratio=0.5)
    assert model.a.out_features == 4 and result.after.macs < result.before.macs
    assert call(model, inputs).shape == y0.shape
    assert preserved(Decorated(), inputs) < 1e-9


def test_unknown_keyword_names_the_argument():
    class NoKw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)
    with pytest.raises(TraceError, match="pixel_values"):
        dp.build_graph(NoKw(), {"pixel_values": torch.randn(1, 4)})


class Optional(nn.Module):  # diffusers' UNet2DModel.forward(sample, timestep, class_labels=None)
    def __init__(self):
        super().__init__()
        self.fc, self.out, self.class_embedding = nn.Linear(8, 16), nn.Linear(16, 2), None

    def forward(self, x, class_labels=None, scale: float = 1.0):
        h = self.fc(x) * scale
        if class_labels is not None:
            if self.class_embedding is None:
                raise ValueError("class_embedding needs to be initialized in order to use class conditioning")
            h = h + self.class_embedding(class_labels)
        return self.out(torch.relu(h))


@pytest.mark.parametrize("inputs", [torch.randn(2, 8), {"x": torch.randn(2, 8)}, {"x": torch.randn(2, 8), "scale": 2.0}])
def test_absent_optional_arguments_keep_their_defaults(inputs):
    model = Optional()
    dp.prune(model, inputs, ratio=0.5)
    assert model.fc.out_features == 8
    assert preserved(Optional(), inputs) < 1e-9


class VarArgs(nn.Module):  # forward(self, *xs); YOLO's forward(self, x, *args, **kwargs)
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, *xs, **kwargs):
        h = self.a(xs[0])
        for extra in xs[1:]:
            h = h + self.b(extra)
        return self.o(torch.relu(h))


def test_varargs_with_several_inputs():
    x = (torch.randn(2, 4), torch.randn(2, 4))
    model = VarArgs()
    dp.prune(model, x, ratio=0.5)
    assert model.a.out_features == model.b.out_features == 4
    assert call(model, x).shape == (2, 2)
    assert preserved(VarArgs(), x) < 1e-9


class Routed(nn.Module):
    """Ultralytics' loop: each layer reads ``y[m.f]`` (an index or a list of indices) from the
    outputs kept so far; ``forward(self, x, *args, **kwargs)``."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1),
                  Concat(), nn.Conv2d(16, 4, 1)]
        for i, (m, f) in enumerate(zip(layers, [-1, -1, -1, [-1, 1], -1])):
            m.f, m.i = f, i
        self.model = nn.ModuleList(layers)
        self.save = [1]

    def forward(self, x, *args, **kwargs):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


def test_module_list_loop_with_outputs_in_a_list():
    x = torch.randn(1, 3, 8, 8)
    model = Routed()
    dp.prune(model, x, ratio=0.5)
    m = model.model
    assert m[0].out_channels == 4 and m[4].in_channels == m[1].out_channels + m[2].out_channels < 16
    assert preserved(Routed(), x) < 1e-9


class SizedBuffers(nn.Module):
    """Buffers sliced by traced sizes (BERT's ``position_ids[:, :n]``, rotary ``cos[:T]``,
    nanoGPT's causal ``bias[:, :, :T, :T]``), ``torch.ones(b, n)``, ``torch.finfo(x.dtype)``,
    ``torch.tensor(n)``, ``int(n)`` and ``math.sqrt`` of a traced size."""

    def __init__(self, d=16):
        super().__init__()
        self.register_buffer("position_ids", torch.arange(32)[None])
        self.register_buffer("bias", torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32))
        self.register_buffer("cos", torch.cos(torch.arange(32.0))[:, None])
        self.tok, self.pos = nn.Embedding(50, d), nn.Embedding(32, d)
        self.q, self.k, self.v, self.o = nn.Linear(d, 32), nn.Linear(d, 32), nn.Linear(d, 32), nn.Linear(32, d)
        self.head = nn.Linear(d, 5)

    def forward(self, ids):
        b, n = ids.shape
        h = self.tok(ids) + self.pos(self.position_ids[:, :n])
        h = h * self.cos[:n].to(h.dtype)
        mask = torch.ones(b, n, dtype=h.dtype)
        q, k, v = self.q(h), self.k(h), self.v(h)
        att = (q[:, None] @ k[:, None].transpose(-2, -1)) / math.sqrt(int(torch.tensor(n)) or 1)
        att = att.masked_fill(self.bias[:, :, :n, :n] == 0, torch.finfo(att.dtype).min)
        y = (att.softmax(-1) @ v[:, None])[:, 0] * mask[..., None]
        return self.head(self.o(y) + h)


def test_buffers_sliced_by_traced_sizes_and_size_factories():
    ids = torch.randint(0, 50, (2, 7))
    graph = dp.build_graph(SizedBuffers(), ids)
    assert not graph.notes, graph.notes  # nothing kept opaque
    inner = graph.group_of("v")
    assert inner.prunable and inner.size == 32
    assert graph.group_of("tok").prunable  # the embedding width, through the sliced buffers
    model = SizedBuffers()
    dp.prune(model, ids, ratio=0.5)
    assert model.v.out_features == 16 and model.tok.embedding_dim == 8
    assert model(ids).shape == (2, 7, 5)


class Inline(nn.Module):  # DistilBERT's head: nn.ReLU()(x); transformers' ACT2FN[name](x)
    def __init__(self):
        super().__init__()
        self.pre, self.cls = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, h):
        return self.cls(nn.GELU()(nn.ReLU()(self.pre(h))))


def test_modules_built_inside_forward():
    x = torch.randn(2, 8)
    graph = dp.build_graph(Inline(), x)
    assert not graph.notes and graph.group_of("pre").prunable
    assert preserved(Inline(), x) < 1e-9


class Caching(nn.Module):
    """Caches a tensor, a shape and a flag on ``self`` during forward (Ultralytics' Detect keeps
    its anchors and the input shape): analysis runs must leave all of it untouched."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.anchors, self.shape, self.calls = torch.zeros(0), None, 0

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
            self.shape = x.shape
        self.calls += 1
        return self.head(torch.relu(self.conv(x))) + self.anchors


def test_forward_side_effects_never_reach_the_model():
    model, x = Caching(), torch.randn(1, 3, 8, 8)
    dp.prune(model, x, ratio=0.5)
    assert model.calls == 0 and model.shape is None and model.anchors.numel() == 0
    assert model.conv.out_channels == 4
    model(x)
    assert model.anchors.device.type == "cpu" and model.calls == 1


def test_traced_outputs_drop_objects_that_are_state():
    class Cache:  # what transformers returns next to the logits (DynamicCache)
        def __init__(self, k):
            self.k = [k]

    class WithCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.k, self.a, self.o = nn.Linear(4, 6), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return {"logits": self.o(torch.relu(self.a(x))), "cache": Cache(self.k(x))}

    model, x = WithCache(), torch.randn(2, 4)
    dp.prune(model, x, ratio=0.5)
    assert model.a.out_features == 4 and model.k.out_features == 3  # the cache is no output
    assert model(x)["logits"].shape == (2, 2)


def test_tracing_patches_do_not_leak_into_modules_torch_imports_lazily():
    """A fresh process that prunes before anything imported torch._dynamo: dynamo must still see
    the real `torch.finfo` type (a wrapper captured during the trace broke torch.compile)."""
    import subprocess
    import sys
    code = ("import torch, depgraph_prune as dp\n"
            "from depgraph_prune.models import cifar_resnet\n"
            "dp.prune(cifar_resnet(20).eval(), torch.randn(2, 3, 32, 32), ratio=0.5)\n"
            "import torch._dynamo.utils as u\n"
            "assert torch.finfo in u.common_constant_types and isinstance(torch.finfo, type)\n"
            "assert all(isinstance(t, type) for t in u.common_constant_types)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_shape_propagation_records_what_fx_shape_prop_records():
    """The lean graph runner records, per node, the shape, dtype and strides fx's own ShapeProp
    finds (on the same graph, real tensors), through modules, functions, methods, tuples and
    get_attr nodes; and its MAC count is count_ops'."""
    import torchvision
    from torch.fx.passes.shape_prop import ShapeProp
    from depgraph_prune.trace import symbolic

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torchvision.models.resnet18().layer1
            self.scale = nn.Parameter(torch.ones(64, 1, 1))
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            y = self.features(x) * self.scale
            a, b = y.chunk(2, dim=1)
            z = torch.cat([b, a], 1).flatten(2).mean(-1)
            return self.head(z), a.shape[1]

    model, x = Net().eval(), torch.randn(2, 64, 16, 16)
    tr = symbolic.trace(symbolic.structural_copy(model), x)
    ours = {n.name: n.meta.get("tensor_meta") for n in tr.gm.graph.nodes}
    gm = torch.fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    theirs = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
    compared = 0
    for name, ref in theirs.items():
        if hasattr(ref, "shape") and name in ours:
            got = ours[name]
            assert (tuple(got.shape), got.dtype, tuple(got.stride)) == (tuple(ref.shape), ref.dtype, tuple(ref.stride)), name
            compared += 1
    assert compared >= 15
    assert tr.macs == dp.count_ops(model, x).macs
