"""depgraph_prune: structural pruning for PyTorch.

Pipeline: trace → graph (channel spaces, couplings, groups) → importance → plan → surgery → measure.

    >>> import torch, torchvision, depgraph_prune as dp
    >>> model = torchvision.models.resnet18()
    >>> print(dp.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5))  # doctest: +SKIP
"""
from .errors import PruningError, SurgeryError, TraceError
from .graph import DependencyGraph, Group, GroupMember
from .measure import OpCount, count_ops, measure_latency
from .prune import PruneResult, build_graph, prune
from . import analysis, importance, io, optim, plan, progress, regularize, rules, specs, unstructured, verify, viz
from .io import FormatError, LoadError, ModelMismatchError, load, load_state, save, save_state
from .optim import rebuild_optimizer
from .verify import Verification, VerificationError
from .rules import register_rule, unregister_rule
from .analysis import filter_norm_separation, mean_jsv
from .regularize import GReg1, GReg2, TPP, GrowingReg, OneShot, OrthP, RegularizedPruner
from .unstructured import (LayerSparsity, Sparsity, apply_masks, keep_masks, masks, remove_masks, sparsify,
                           sparsity_report)

__all__ = ["prune", "build_graph", "count_ops", "measure_latency", "progress", "DependencyGraph", "Group",
           "GroupMember", "OpCount", "verify", "Verification", "VerificationError",
           "PruneResult", "PruningError", "SurgeryError", "TraceError", "RegularizedPruner", "GReg1", "GReg2",
           "TPP", "GrowingReg", "OneShot", "OrthP", "mean_jsv", "filter_norm_separation", "importance", "specs",
           "analysis", "regularize", "plan", "rules", "register_rule", "unregister_rule", "save", "load",
           "save_state", "load_state", "rebuild_optimizer", "io", "optim", "viz", "LoadError", "FormatError",
           "ModelMismatchError", "sparsify", "Sparsity", "LayerSparsity", "apply_masks", "keep_masks",
           "remove_masks", "masks", "sparsity_report", "unstructured"]
__version__ = "0.1.0"
