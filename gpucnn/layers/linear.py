"""Fully connected layers and reshaping."""
from __future__ import annotations

import numpy as np

from ..devices import ops
from ..devices.precision import gemm_dtype, lowered
from ..devices.fused_twins import own_strides
from .base import Layer, _dtype_arg, _init_arg, _int_arg, _on_argument_device
from .init import initialise, zeros


class Affine(Layer):
    """Fully connected: y = x.reshape(N, -1) @ W + b, with W of shape (in_features, out_features).

    One GEMM, then one pass adding the bias in place (with the ReLU after it when the layer is followed by one
    in a chain: :meth:`forward_relu`). In a bf16 scope on a GPU (:mod:`gpucnn.devices.precision`) the GEMMs
    take bfloat16 copies of x, W and dout (x's kept for backward), sum in float32, and the bias pass writes
    float32 (bias_act_bf16); W, b, their gradients, the output and dx stay float32."""

    fuses_relu = True

    def __init__(self, in_features, out_features, init="he", dtype=np.float32):
        super().__init__()
        name = "Affine"
        self.in_features = _int_arg(in_features, "in_features", name, 1)
        self.out_features = _int_arg(out_features, "out_features", name, 1)
        dtype = _dtype_arg(dtype, name)
        self._add_param("W", initialise(_init_arg(init, name), (self.in_features, self.out_features), dtype))
        self._add_param("b", zeros((self.out_features,), dtype))

    def __repr__(self):
        return f"Affine({self.in_features}, {self.out_features})"

    def output_shape(self, shape):
        if len(shape) < 2 or int(np.prod(shape[1:])) != self.in_features:
            raise ValueError(f"{self!r}: expected input (N, {self.in_features}) or (N, ...) with "
                             f"{self.in_features} features per sample, got shape {tuple(shape)}")
        return (shape[0], self.out_features)

    def forward(self, x, train=None):
        return self._forward(x, relu=False)

    @_on_argument_device
    def forward_relu(self, x, train=None):
        """max(forward(x), 0), the ReLU applied in the pass that adds the bias (what a chain calls for this
        layer followed by a ReLU; the ReLU then takes the result through ReLU.rectified)."""
        return self._forward(x, relu=True)

    def _forward(self, x, relu):
        xp = self._begin(x)
        dt = gemm_dtype(x)
        x2 = lowered(x.reshape(x.shape[0], -1), dt)
        w = lowered(self.params["W"], dt)
        y = x2 @ w
        prod = y.reshape(y.shape[0], 1, self.out_features, 1)
        out = prod if y.dtype == x.dtype else xp.empty(prod.shape, dtype=x.dtype)   # bf16: float32 out
        ops.bias_act(prod, own_strides(out.shape), self.params["b"], out, relu)
        return self._save((x2, x.shape, w), out.reshape(y.shape))

    def backward(self, dout):
        x2, x_shape, w = self._saved(dout)
        xp = self._xp(dout, x2, *self.params.values())
        xp.sum(dout, axis=0, out=self.grads["b"])
        d = lowered(dout, x2.dtype)
        xp.matmul(x2.T, d, out=self.grads["W"])   # straight into the gradient (bf16: through one widening copy)
        if not self.need_input_grad:
            return None
        return lowered(d @ w.T, dout.dtype).reshape(x_shape)


class Flatten(Layer):
    """(N, ...) -> (N, features)."""

    def output_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"{self!r}: expected an input (N, ...) with a batch dimension, got shape {tuple(shape)}")
        return (shape[0], int(np.prod(shape[1:])))

    def forward(self, x, train=None):
        self._begin(x)
        return self._save(x.shape, x.reshape(self.output_shape(x.shape)))

    def backward(self, dout):
        shape = self._saved(dout)
        return dout.reshape(shape) if self.need_input_grad else None
