"""Reference models for tests, examples and benchmarks.

Example:
    >>> import torch
    >>> from depgraph_prune.models import cifar_resnet, mlp7_linear, digits_cnn
    >>> cifar_resnet(20)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from .cifar import (
    CifarBasicBlock,
    CifarResNet,
    DigitsCNN,
    PadShortcut,
    cifar_resnet,
    digits_cnn,
    mlp7_linear,
)

__all__ = [
    "CifarBasicBlock",
    "CifarResNet",
    "DigitsCNN",
    "PadShortcut",
    "cifar_resnet",
    "digits_cnn",
    "mlp7_linear",
]
