"""Analysis runs of a user's model leave no trace on it.

The engine runs the user's ``forward`` to measure it (``count_ops``), to check a pruned model
(``surgery.check_runs``) and, when a structural copy cannot be made, to trace it. Code in
``forward`` often caches things on ``self``: Ultralytics' ``Detect`` head keeps ``self.anchors``,
``self.strides`` and ``self.shape``, other models keep flags, counters, lists or lazily registered
buffers. Run on meta tensors, such a cache would be left holding meta tensors, and the model's
next real forward would fail (``Tensor on device cpu is not on the expected device meta!``).

:func:`side_effects_undone` remembers every module's attributes, one level deep (the values of
its ``__dict__``, and the contents of the lists, dicts and sets held there, which includes the
parameter, buffer and submodule tables; hook tables are kept by identity), and puts them back
when the block ends, whatever happened inside. Writes into objects nested deeper are not seen,
nor writes into the plain torch.nn layers (convolutions, norms, activations, ...; ``_INERT``),
whose own forward never writes to them, nor into subclasses that only add a constructor to one.
"""
from __future__ import annotations

import collections
import contextlib
import operator

from torch import nn

from ._walk import modules


def _content(value):
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return list(value.items())  # keeps order (OrderedDict tables)
    if isinstance(value, set):
        return set(value)
    return None


def _put_back(value, content) -> None:
    if isinstance(value, list):
        if len(value) != len(content) or any(a is not b for a, b in zip(value, content)):
            value[:] = content
    elif isinstance(value, dict):
        if len(value) != len(content) or any(value.get(k, _MISSING) is not v for k, v in content):
            value.clear()
            value.update(content)
    elif isinstance(value, set):
        if len(value) != len(content) or not all(any(a is b for b in content) for a in value):
            value.clear()
            value.update(content)


_MISSING = object()


#: hook tables (``_forward_hooks``, ``_state_dict_pre_hooks``, ...) are kept by identity only:
#: forward does not register hooks, and copying a dozen empty tables per module per analysis run
#: was most of the cost of a snapshot
_HOOK_TABLES = frozenset(k for k in nn.Module().__dict__ if "hook" in k)
_MODULE_TABLES = ("_parameters", "_buffers", "_modules")
_BOXES = {list, dict, set, collections.OrderedDict}


def _inert_types() -> frozenset:
    """torch.nn layers whose ``forward`` reads its module's attributes and never writes any
    (nor registers anything): an instance of exactly one of these types, with that forward, has
    nothing to snapshot. Most of a model's modules are such layers, and a snapshot of each cost
    more than the meta run it guards."""
    names = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
             "Bilinear", "Embedding", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
             "RMSNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm", "Dropout",
             "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "Flatten", "Unflatten", "ReLU",
             "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh",
             "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "Softmax", "LogSoftmax", "MaxPool1d",
             "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
             "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
             "AdaptiveMaxPool3d", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle",
             "PixelUnshuffle", "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d",
             "ChannelShuffle", "Sequential")
    return frozenset(getattr(nn, n) for n in names if hasattr(nn, n))


_INERT = _inert_types()
_INERT_OF: dict[type, bool] = {}
#: what a class may define of its own and still run an inert base's forward untouched
_INERT_OWN = frozenset({"__init__", "__module__", "__qualname__", "__doc__", "__annotations__", "__dict__",
                        "__weakref__", "__firstlineno__", "__static_attributes__", "__orig_bases__",
                        "__parameters__"})


def _inert(cls: type) -> bool:
    """One of ``_INERT``, or a subclass that only adds an ``__init__`` to one (torchvision's
    ``Conv2dNormActivation``, a ``Sequential`` built in its constructor): its forward is the
    inert base's, reading the module tables it filled."""
    ok = _INERT_OF.get(cls)
    if ok is None:
        ok = cls in _INERT
        if not ok:
            for c in cls.__mro__[1:]:
                if c in _INERT:
                    own = cls.__mro__[:cls.__mro__.index(c)]
                    ok = all(set(vars(k)) <= _INERT_OWN for k in own)
                    break
        _INERT_OF[cls] = ok
    return ok


def snapshot(model: nn.Module, tables: str = "contents"):
    """What :func:`restore` puts back. ``tables="added"``: of the parameter, buffer and
    submodule tables only the names are kept, so restoring removes what was added to them
    (a lazily registered buffer) and leaves tensors swapped in meanwhile alone."""
    saved = []
    by_name = tables == "added"
    skip = _HOOK_TABLES | set(_MODULE_TABLES) if by_name else _HOOK_TABLES
    for m in modules(model):
        if _inert(type(m)):
            continue
        d = m.__dict__
        names = [(d[k], set(d[k])) for k in _MODULE_TABLES if isinstance(d.get(k), dict)] if by_name else []
        saved.append((m, d.copy(), [(v, _content(v)) for k, v in d.items() if k not in skip and type(v) in _BOXES],
                      names))
    return saved


def restore(saved) -> None:
    for m, attrs, boxes, names in saved:
        d = m.__dict__
        # the common case, nothing rebound, checked in C: same keys in the same order, each
        # value the same object
        if d.keys() != attrs.keys() or any(map(operator.is_not, d.values(), attrs.values())):
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, v in attrs.items():
                if d.get(k, _MISSING) is not v:
                    d[k] = v
        for v, content in boxes:
            _put_back(v, content)
        for v, keys in names:
            if len(v) != len(keys):
                for name in [n for n in v if n not in keys]:
                    del v[name]


@contextlib.contextmanager
def side_effects_undone(model: nn.Module):
    """Within the block, ``model`` may be run freely: every module's attributes are restored after.

    >>> import torch
    >>> class Caches(torch.nn.Module):
    ...     def forward(self, x):
    ...         self.last_shape = x.shape
    ...         return x
    >>> m = Caches()
    >>> with side_effects_undone(m):
    ...     _ = m(torch.ones(2))
    >>> hasattr(m, "last_shape")
    False
    """
    saved = snapshot(model)
    try:
        yield
    finally:
        restore(saved)
