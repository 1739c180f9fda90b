"""Small reference models used by the papers we reproduce (and by our tests and examples).

* :func:`cifar_resnet`: the CIFAR ResNet-20/32/44/56/110 of He et al. (2016), as used by the
  GReg and TPP code (``resnet56`` there).
* :func:`mlp7_linear`: MLP-7-Linear of the TPP paper (7 linear layers, no activations).
* :func:`digits_cnn`: a tiny conv net for scikit-learn's 8x8 digits (or upsampled versions).

All modules are plain ``nn.Module`` subclasses without lambdas, so they pickle, deep-copy and trace
with ``torch.fx``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PadShortcut",
    "CifarBasicBlock",
    "CifarResNet",
    "DigitsCNN",
    "cifar_resnet",
    "mlp7_linear",
    "digits_cnn",
]


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: spatial subsampling plus zero channel padding.

    Equivalent to the original CIFAR code's
    ``LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))``,
    written as a module so the model pickles and traces. The padding is split as evenly as
    possible, extra channel at the end: ``in_planes=16, planes=32`` pads 8 zero channels on each side.

    Example:
        >>> sc = PadShortcut(16, 32, stride=2)
        >>> sc(torch.ones(1, 16, 32, 32)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 2):
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"PadShortcut cannot reduce channels ({in_planes} -> {planes})")
        self.in_planes = in_planes
        self.planes = planes
        self.stride = stride
        self.pad_before = (planes - in_planes) // 2
        self.pad_after = planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad_before, self.pad_after), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """CIFAR ResNet BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``downsample`` is ``None`` for identity shortcuts, a :class:`PadShortcut` (option A) or a
    ``Sequential(Conv2d 1x1, BatchNorm2d)`` (option B) where the shape changes.

    Example:
        >>> blk = CifarBasicBlock(16, 32, stride=2)
        >>> blk(torch.zeros(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = PadShortcut(in_planes, planes, stride)
            elif shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem conv (3 -> 16) + BN + ReLU, three stages of BasicBlocks with 16/32/64
    channels (stride 1/2/2), global average pooling, ``fc`` (64 -> classes).

    Module names follow torchvision: ``conv1``, ``bn1``, ``layer1``..``layer3`` with blocks
    ``layerS.B.conv1/bn1/conv2/bn2/downsample``, ``fc``. Build it with :func:`cifar_resnet`.

    Example:
        >>> net = CifarResNet([3, 3, 3])
        >>> net(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, num_blocks, num_classes: int = 10, shortcut: str = "A", width: int = 16):
        super().__init__()
        if len(num_blocks) != 3:
            raise ValueError(f"CifarResNet has 3 stages, got num_blocks={num_blocks!r}")
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        for s, (n, mult) in enumerate(zip(num_blocks, (1, 2, 4)), start=1):
            planes = width * mult
            blocks = []
            for b in range(n):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        # Initialization of the reference code (Idelbayev's CIFAR ResNets, used by GReg/TPP):
        # kaiming_normal_ (fan_in) on conv and linear weights, PyTorch defaults elsewhere.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet(depth: int = 56, num_classes: int = 10, shortcut: str = "A") -> CifarResNet:
    """The CIFAR ResNet of depth ``6n + 2`` (20, 32, 44, 56, 110, ...), ``n`` BasicBlocks per stage.

    ``shortcut="A"`` (default) is the parameter-free shortcut of the original CIFAR ResNet and of
    the GReg/TPP code (``model/resnet_cifar10.py`` there, from Idelbayev's ``pytorch_resnet_cifar10``):
    stride-2 subsampling plus zero channel padding (:class:`PadShortcut`). It is the default because
    it reproduces the published numbers: ResNet-56 has 0.853 M parameters and 125.49 M MACs at 32x32
    (the papers' "0.25G FLOPs" count a multiply-add as 2), and pruning each block's ``conv1`` by
    ``ceil(r * N)`` filters (at most ``N - 1``) at r = 0.3/0.5/0.7/0.9/0.95 gives the published
    conv+linear MAC speedups 1.452/1.993/3.593/11.58/19.85 exactly. ``shortcut="B"`` (1x1 conv + BN
    where the shape changes) adds 2 convs (+0.26 M MACs, +3k params, 0.856 M); its speedups
    (1.451/1.989/3.573/11.33/19.10) miss the published ones by up to 4 % at high ratios.

    Example:
        >>> net = cifar_resnet(56)
        >>> round(sum(p.numel() for p in net.parameters()) / 1e6, 3)
        0.853
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> type(net.layer2[0].downsample).__name__, net.layer2[1].downsample is None
        ('PadShortcut', True)
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], num_classes=num_classes, shortcut=shortcut)


def mlp7_linear(in_features: int = 1024, width: int = 100, num_classes: int = 10, depth: int = 7) -> nn.Sequential:
    """MLP-7-Linear of the TPP paper: ``in_features -> width``, five ``width -> width``,
    ``width -> num_classes``; all ``nn.Linear`` with bias, **no activations**.

    An ``nn.Sequential`` named ``flatten, fc1, ..., fc7``; the leading ``nn.Flatten`` lets it take
    ``(N, 1024)`` as well as image batches ``(N, 1, 32, 32)``. ``depth`` (total linear layers,
    default 7) is there for variants.

    Example:
        >>> net = mlp7_linear()
        >>> net(torch.zeros(4, 1024)).shape, net(torch.zeros(4, 1, 32, 32)).shape
        (torch.Size([4, 10]), torch.Size([4, 10]))
        >>> [n for n, m in net.named_children()]
        ['flatten', 'fc1', 'fc2', 'fc3', 'fc4', 'fc5', 'fc6', 'fc7']
    """
    if depth < 2:
        raise ValueError(f"depth must be at least 2, got {depth!r}")
    dims = [in_features] + [width] * (depth - 1) + [num_classes]
    layers = [("flatten", nn.Flatten())]
    layers += [(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1], bias=True)) for i in range(depth)]
    return nn.Sequential(OrderedDict(layers))


class DigitsCNN(nn.Sequential):
    """See :func:`digits_cnn`."""


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> DigitsCNN:
    """A tiny conv net for scikit-learn's ``load_digits`` images (1x8x8, or upsampled e.g. to 16x16).

    ``conv1`` (1 -> w) BN ReLU, ``conv2`` (w -> 2w) BN ReLU, 2x2 max-pool, ``conv3`` (2w -> 4w) BN
    ReLU, global average pool, ``fc`` (4w -> classes); ``w = width`` (16). A flat ``nn.Sequential``
    with names ``conv1, bn1, relu1, conv2, bn2, relu2, pool, conv3, bn3, relu3, avgpool, flatten, fc``.
    Any input size >= 2x2 works thanks to the global pooling.

    Example:
        >>> net = digits_cnn()
        >>> net(torch.zeros(5, 1, 8, 8)).shape, net(torch.zeros(5, 1, 16, 16)).shape
        (torch.Size([5, 10]), torch.Size([5, 10]))
    """
    w = width
    return DigitsCNN(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, w, 3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(w)),
        ("relu1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)),
        ("bn2", nn.BatchNorm2d(2 * w)),
        ("relu2", nn.ReLU(inplace=True)),
        ("pool", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)),
        ("bn3", nn.BatchNorm2d(4 * w)),
        ("relu3", nn.ReLU(inplace=True)),
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * w, num_classes)),
    ]))
