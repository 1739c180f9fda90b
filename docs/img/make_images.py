"""Regenerate the pictures of the documentation (docs/img/*.png).

    python docs/img/make_images.py

Random weights, seed 0, one thread; needs matplotlib.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import depgraph_prune as dp
from depgraph_prune import viz

HERE = os.path.dirname(os.path.abspath(__file__))


class Tiny(nn.Module):
    """The model of docs/concepts.md."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(10 * 4 * 4, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = y + self.branch(y)                                # residual add: same channels
        y = torch.cat([self.left(y), self.right(y)], dim=1)  # 4 + 6 channels
        y = F.adaptive_avg_pool2d(y, 4)
        return self.fc(torch.flatten(y, 1))                   # channel c -> fc columns 16c .. 16c+15


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = lambda name: os.path.join(HERE, name)  # noqa: E731

    tiny = Tiny()
    graph = dp.build_graph(tiny, torch.randn(1, 3, 8, 8))
    viz.draw_group(graph, graph.group_of("left"), out("group-tiny-concat.png"))
    viz.draw_graph(graph, out("graph-tiny.png"))

    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 64, 64)
    graph = dp.build_graph(model, x)
    viz.draw_group(graph, graph.group_of("conv1"), out("group-resnet18-conv1.png"))
    viz.draw_graph(graph, out("graph-resnet18.png"))

    mobile = torchvision.models.mobilenet_v3_small()
    result = dp.prune(mobile, x, target_speedup=2.0)
    viz.plot_widths(result, out("widths-mobilenet_v3_small.png"),
                    title="mobilenet_v3_small, target speed-up 2: widths before and after")
    print("written: group-tiny-concat.png graph-tiny.png group-resnet18-conv1.png graph-resnet18.png "
          "widths-mobilenet_v3_small.png")


if __name__ == "__main__":
    main()
