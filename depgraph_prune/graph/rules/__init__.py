"""The coupling rules, one module per family; importing this package registers them.

* ``tensor_ops``: elementwise math, broadcasting, reshapes, permutes, cat/split, indexing,
  reductions, matmul, size arithmetic;
* ``layers``: convolutions, linear, norms, embeddings, pooling, shuffles, activations;
* ``attention``: ``nn.MultiheadAttention``;
* ``inplace``: ``x[idx] = v`` (in-place slice assignment);
* ``recurrent``: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells (input, hidden and projection widths);
* ``torchvision``: functions torchvision wraps with ``torch.fx.wrap`` (loaded lazily, once
  torchvision is imported: see ``registry.load_optional_rules``).
"""
from . import tensor_ops, layers, attention, recurrent, inplace  # noqa: F401  (registers the rules)
