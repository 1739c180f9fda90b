"""Prune a torchvision ResNet-50 by half in one call, on the CPU, and print the before/after table.

    python examples/prune_resnet50.py [--model resnet50] [--ratio 0.5]
"""
import argparse

import torch
import torchvision

import depgraph_prune as dp

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="resnet50")
parser.add_argument("--ratio", type=float, default=0.5)
args = parser.parse_args()

model = torchvision.models.get_model(args.model, weights=None).eval()  # random weights: no download
x = torch.randn(1, 3, 224, 224)
result = dp.prune(model, x, ratio=args.ratio, importance="l1")
print(result)
assert model(x).shape == (1, 1000)
