"""Exceptions raised by depgraph_prune. Each names the argument, module or node at fault."""


class PruningError(Exception):
    """Base class of every error this library raises on purpose."""


class TraceError(PruningError):
    """The model (or a submodule) could not be traced with ``torch.fx``."""


class SurgeryError(PruningError):
    """A surgery step could not be built; the model was left exactly as it was."""
