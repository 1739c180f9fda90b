"""Step 1 of the pipeline: trace a model into an fx graph with shapes.

Front ends, one module each: ``symbolic`` (``torch.fx`` symbolic tracing helped by the example
input's concrete values) and ``inputs`` (binding the example inputs to ``forward``'s signature:
decorated forwards, ``*args``/``**kwargs``, optional arguments left at their defaults). Every front
end produces a :class:`Trace` that the graph builder reads.
"""
from .inputs import bind, normalize_inputs
from .symbolic import (Trace, _modes, rule_type, structural_copy, trace)

__all__ = ["Trace", "trace", "bind", "normalize_inputs", "rule_type", "structural_copy"]
