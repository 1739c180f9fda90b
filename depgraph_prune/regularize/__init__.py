"""Step 3b: growing penalties on a group's channels during training, then pruning.

* :class:`RegularizedPruner`: the training-loop companion (``regularize()`` after backward,
  ``penalty()`` added to the loss, ``step()`` per iteration, ``done``, ``prune()``,
  ``state_dict()`` / ``load_state_dict()``).
* Methods (ALGORITHMS.md): :class:`GReg1`, :class:`GReg2`, :class:`TPP`, :class:`GrowingReg`,
  and the baselines :class:`OneShot` (L1) and :class:`OrthP`.
* ``granularity="weight"``: the same schedules on single weights (:class:`WeightRegularizedPruner`).
"""
from .methods import (METHODS, TPP, GReg1, GReg2, GrowingReg, Method, OneShot, OrthP, make_method,
                      orthogonalize_)
from .pruner import RegularizedPruner
from .weights import WeightRegularizedPruner

__all__ = ["RegularizedPruner", "WeightRegularizedPruner", "Method", "GReg1", "GReg2", "TPP", "GrowingReg", "OneShot", "OrthP",
           "METHODS", "make_method", "orthogonalize_"]
