"""Step 1 of the pipeline: trace a model into an fx graph with shapes.

Front ends, one module each: ``symbolic`` (``torch.fx`` symbolic tracing helped by the example
input's concrete values). Every front end produces a :class:`Trace` that the graph builder reads.
"""
from .symbolic import (Trace, _modes, normalize_inputs, rule_type, structural_copy, trace)

__all__ = ["Trace", "trace", "normalize_inputs", "rule_type", "structural_copy"]
