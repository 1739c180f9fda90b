"""In-place slice assignment ``x[idx] = v`` (``operator.setitem``), as in Ultralytics' Pose head.

The tracer records it; the rule ties the written slice's channels to ``v``'s. Function
preservation: zero the producers of some channels, prune them, the output does not change.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import depgraph_prune as dp

pytestmark = pytest.mark.usefixtures("one_thread")


class RowWrite(nn.Module):
    """Row 0 of conv1's map is overwritten by conv2's row 0: their channels become one space."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        z = self.conv1(x).clone()
        z[:, :, 0] = self.conv2(x)[:, :, 0]
        return self.conv3(torch.relu(z))


class ChannelWrite(RowWrite):
    """Writing channels 0..3 by a constant slice: those positions are fixed (frozen)."""

    def forward(self, x):
        z = self.conv1(x).clone()
        z[:, :4] = torch.sigmoid(z[:, :4])
        return self.conv3(z)


def test_setitem_ties_channels_and_preserves_function():
    torch.manual_seed(0)
    model = RowWrite().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    graph = dp.build_graph(model, x)
    g = graph.group_of("conv1")
    assert g.prunable and g is graph.group_of("conv2")
    chans = [1, 4, 6]
    with torch.no_grad():
        for conv in (model.conv1, model.conv2):
            conv.weight[chans] = 0
            conv.bias[chans] = 0
        ref = model(x)
    g.prune(chans)
    assert model.conv1.out_channels == model.conv2.out_channels == model.conv3.in_channels == 5
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-10)


def test_setitem_with_constant_channel_slice_freezes_those_channels():
    graph = dp.build_graph(ChannelWrite(), torch.randn(1, 3, 6, 6))
    g = graph.group_of("conv1")
    assert g.n_frozen == 4 and g.size == 4  # channels 4..7 still prune
    result = dp.prune(ChannelWrite(), torch.randn(1, 3, 6, 6), ratio=0.5)
    assert result.after.macs < result.before.macs
