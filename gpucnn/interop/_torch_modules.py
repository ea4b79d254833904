"""PyTorch modules the twins need beyond torch.nn (imported only when torch is asked for: it imports torch).

``nn`` is torch.nn, so that a table entry writes ``t.nn.Conv2d`` or ``t.FlattenLinear`` alike. Each module keeps
torch.nn's parameter names (``weight``, ``bias``) and its children under gpucnn's names, so a state_dict loads
into the twin and, for the single-layer ones, into the torch.nn module they extend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["nn", "torch", "FlattenLinear", "PaddedConv2d", "Residual", "Concat", "cross_entropy"]


class FlattenLinear(nn.Linear):
    """nn.Linear applied to ``x.flatten(1)``: gpucnn's Affine, which flattens an (N, ...) input itself.

    Its parameters are nn.Linear's (weight (out_features, in_features), bias (out_features,)), so its state_dict
    loads into a plain nn.Linear placed after an nn.Flatten."""

    def forward(self, x):
        return super().forward(torch.flatten(x, 1))


class PaddedConv2d(nn.Conv2d):
    """nn.Conv2d after zero padding of (top, bottom, left, right), for a Conv2D padded unequally on two sides
    (nn.Conv2d pads both sides alike); the parameters are nn.Conv2d's."""

    def __init__(self, *args, pads, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        top, bottom, left, right = pads
        self.pads = (left, right, top, bottom)   # F.pad's order: last axis first

    def forward(self, x):
        return super().forward(F.pad(x, self.pads))


class Residual(nn.Module):
    """``f(x) + shortcut(x)``: f the children "0", "1", ... in order, shortcut the child "shortcut" (identity when
    None), as gpucnn's Residual names them."""

    def __init__(self, layers, shortcut=None):
        super().__init__()
        self.n = len(layers)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.shortcut = shortcut

    def forward(self, x):
        y = x
        for i in range(self.n):
            y = self._modules[str(i)](y)
        return y + (x if self.shortcut is None else self.shortcut(x))


class Concat(nn.Module):
    """``torch.cat([branch(x) for branch in children], dim)``: gpucnn's Concat, branches named "0", "1", ..."""

    def __init__(self, branches, dim):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)
        self.dim = dim

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.children()], self.dim)


def cross_entropy(layer):
    """nn.CrossEntropyLoss with a SoftmaxCrossEntropy's options; its class weights (float32) are a constructor
    argument there as in gpucnn, so they stay out of the state_dict (a non-persistent buffer)."""
    weight = None if layer.weight is None else torch.tensor(layer.weight, dtype=torch.float32)
    loss = nn.CrossEntropyLoss(ignore_index=layer.ignore_index, reduction=layer.reduction,
                               label_smoothing=layer.label_smoothing)
    loss.register_buffer("weight", weight, persistent=False)
    return loss
