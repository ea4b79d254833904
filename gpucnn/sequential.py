"""Sequential: a chain of layers with flat, named views of their params, grads and buffers, and checkpoints.

Names are "<layer index>.<key>" ("0.W", "3.running_mean"), built live from the layers so they always
reference the current arrays. The first layer's input gradient is skipped in backward (nobody needs it).
"""
from __future__ import annotations

import numpy as np

from .backend import CPU, device_of, get_device, to_cpu, to_device
from .layers import Layer

__all__ = ["Sequential"]


class Sequential:
    """Layers applied in order: ``forward(x, train)`` and ``backward(dout)`` through all of them."""

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential: expected at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: expected Layer instances, got {type(layer).__name__} at index {i}")
        self.layers = list(layers)
        self._device = CPU

    # -- running
    def forward(self, x, train=True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    __call__ = forward

    def backward(self, dout):
        """Backpropagate dout through every layer (filling their grads); returns None: the first layer is told
        not to compute the input gradient for this call (its own setting is restored afterwards)."""
        for layer in reversed(self.layers[1:]):
            dout = layer.backward(dout)
        first = self.layers[0]
        own = first.__dict__.get("need_input_grad")
        first.need_input_grad = False
        try:
            return first.backward(dout)
        finally:
            if own is None:
                del first.need_input_grad
            else:
                first.need_input_grad = own

    # -- containers
    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    def _named(self, attr):
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in getattr(layer, attr).items()}

    @property
    def params(self) -> dict:
        return self._named("params")

    @property
    def grads(self) -> dict:
        return self._named("grads")

    @property
    def buffers(self) -> dict:
        return self._named("buffers")

    def num_params(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    # -- devices and checkpoints
    def to(self, device):
        """Move every layer to a device; returns self."""
        dev = get_device(device)
        for layer in self.layers:
            layer.to(dev)
        self._device = dev
        return self

    @property
    def device(self):
        """The device the parameters live on."""
        for p in self.params.values():
            return device_of(p)
        return self._device

    def state_dict(self) -> dict:
        """Host (numpy) copies of all params and buffers, keyed like ``params``/``buffers``."""
        return {k: np.array(to_cpu(v)) for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: dict):
        """Copy values into the existing arrays (keeping their device and dtype); refuses any key or shape
        mismatch, naming all of them, before changing anything."""
        targets = {**self.params, **self.buffers}
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        wrong = [f"{k}: expected {tuple(v.shape)}, got {tuple(np.shape(state[k]))}"
                 for k, v in targets.items() if k in state and tuple(np.shape(state[k])) != tuple(v.shape)]
        if missing or unexpected or wrong:
            parts = ([f"missing keys {missing}"] if missing else []) + \
                    ([f"unexpected keys {unexpected}"] if unexpected else []) + \
                    ([f"shape mismatches ({'; '.join(wrong)})"] if wrong else [])
            raise ValueError(f"Sequential.load_state_dict: state does not match the model: {', '.join(parts)}")
        for k, v in targets.items():
            v[...] = to_device(np.asarray(to_cpu(state[k]), dtype=v.dtype), device_of(v))

    # -- description
    def summary(self, input_shape) -> str:
        """A table of layers, output shapes and parameter counts for an input of `input_shape` (with the
        batch dimension, e.g. (1, 1, 28, 28)); raises if a layer cannot take its input's shape."""
        shape = tuple(int(s) for s in input_shape)
        rows = [("#", "layer", "output shape", "params"), ("", "input", str(shape), "")]
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            count = sum(int(p.size) for p in layer.params.values())
            rows.append((str(i), repr(layer), str(shape), f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = lambda r: "  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                                     r[3].rjust(widths[3])]).rstrip()
        rule = "-" * len(line(tuple("-" * w for w in widths)))
        out = [line(rows[0]), rule] + [line(r) for r in rows[1:]] + [rule, f"total params: {self.num_params():,}"]
        return "\n".join(out)
