"""Where coupling rules are registered: by function, by tensor-method name, by module type.

A rule is called as ``rule(ctx, node, args, kwargs, out)``: ``args``/``kwargs`` hold the
builder's values (``TV``, ``Sym`` or constants) in place of fx nodes, ``out`` is the output
as an untracked ``TV`` (or a tuple of them) built from shape propagation. The rule returns
the output value, with tracked dims filled in. A module rule gets the module's qualified name
as ``ctx.node.target`` and the module itself as ``module``.
"""
from __future__ import annotations

import sys
from typing import Callable

FUNCTION_RULES: dict[object, Callable] = {}
METHOD_RULES: dict[str, Callable] = {}
MODULE_RULES: dict[type, Callable] = {}
WIDTH_RULES: dict[type, Callable] = {}  # module type -> (module, new tensors by attr) -> {attr: value}
# module type -> fn(module): refresh what a module derives from its tensors once the surgeon (or
# its rollback) has changed them (nn.LSTM's cuDNN weight buffer: flatten_parameters)
REFRESH_RULES: dict[type, Callable] = {}
# Called with the model before each build: optional rule families whose module classes are too
# many to import up front (transformers' ~60 ``*Experts`` classes) register them from here.
MODEL_SCANNERS: list[Callable] = []


_optional_loaded: set[str] = set()


def load_optional_rules() -> None:
    """Register the rules for torchvision's wrapped functions once torchvision is imported, and
    those for transformers' layers once transformers is.

    Importing torchvision costs seconds (it pulls in ``torch._dynamo``); a model that needs
    these rules cannot exist before the user imported torchvision, so we wait for that. Called
    before every build and before every user registration, so a user's rule always wins."""
    if "torchvision" in sys.modules and "torchvision" not in _optional_loaded:
        _optional_loaded.add("torchvision")
        from .rules import torchvision  # noqa: F401  (registers on import)
    if "transformers" in sys.modules and "transformers" not in _optional_loaded:
        _optional_loaded.add("transformers")
        from .rules import transformers  # noqa: F401  (registers on import)


def function_rule(*targets):
    def deco(fn):
        for t in targets:
            FUNCTION_RULES[t] = fn
        return fn
    return deco


def method_rule(*names):
    def deco(fn):
        for n in names:
            METHOD_RULES[n] = fn
        return fn
    return deco


def module_rule(*types):
    def deco(fn):
        for t in types:
            MODULE_RULES[t] = fn
        return fn
    return deco
