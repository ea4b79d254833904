"""PyTorch modules the twins need beyond torch.nn (imported only when torch is asked for: it imports torch).

``nn`` is torch.nn, so that a table entry writes ``t.nn.Conv2d`` or ``t.FlattenLinear`` alike.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["nn", "torch", "FlattenLinear"]


class FlattenLinear(nn.Linear):
    """nn.Linear applied to ``x.flatten(1)``: gpucnn's Affine, which flattens an (N, ...) input itself.

    Its parameters are nn.Linear's (weight (out_features, in_features), bias (out_features,)), so its state_dict
    loads into a plain nn.Linear placed after an nn.Flatten."""

    def forward(self, x):
        return super().forward(torch.flatten(x, 1))
