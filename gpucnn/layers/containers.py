"""Containers: layers made of layers. Sequential chains them; blocks nest because containers are layers.

A container's ``params``, ``grads`` and ``buffers`` are flat dicts named "<child index>.<child's name>"
("0.W", "3.running_mean", "2.0.W" for a layer inside a nested block), built live from the children so they
always reference the current arrays.
"""
from __future__ import annotations

from ..devices import CPU, device_of, get_device
from .base import Layer

__all__ = ["Container", "Sequential"]


def _backward_child(child, dout, need_input_grad: bool):
    """child.backward(dout) with child.need_input_grad set to `need_input_grad` for this call (its own setting,
    if any, is restored afterwards)."""
    own = child.__dict__.get("need_input_grad")
    child.need_input_grad = need_input_grad
    try:
        return child.backward(dout)
    finally:
        if own is None:
            del child.need_input_grad
        else:
            child.need_input_grad = own


class Container(Layer):
    """A layer made of child layers (``self.layers``): their params/grads/buffers under flat dotted names,
    modes and device moves applied to all of them."""

    def __init__(self, layers, owner):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError(f"{owner}: expected at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"{owner}: expected Layer instances, got {type(layer).__name__} at index {i}")
        self.layers = list(layers)
        self.training = True
        self._cache = None
        self._scratch = {}
        self._device = None

    def children(self) -> list:
        return list(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

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

    def to(self, device):
        """Move every layer inside to a device; returns self."""
        dev = get_device(device)
        for layer in self.layers:
            layer.to(dev)
        self._device = dev
        return self

    @property
    def device(self):
        """The device the parameters live on (or the one the container was last moved to)."""
        for v in (*self.params.values(), *self.buffers.values()):
            return device_of(v)
        return self._device or CPU

    def _repr_children(self):
        return "".join("\n  " + f"({i}): {layer!r}".replace("\n", "\n  ") for i, layer in enumerate(self.layers))


class Sequential(Container):
    """Layers applied in order: ``forward(x)`` and ``backward(dout)`` through all of them.

    A model's input needs no gradient, so by default ``backward`` returns None without computing the first
    layer's input gradient; a Sequential nested where its input gradient is needed (inside another container)
    is asked for it by its parent.
    """

    need_input_grad = False

    def __init__(self, *layers):
        super().__init__(layers, "Sequential")

    def forward(self, x, train=None):
        train = self._mode(train)
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dout):
        """Backpropagate dout through every layer (filling their grads); returns the input gradient, or None
        when ``need_input_grad`` is False."""
        for layer in reversed(self.layers[1:]):
            dout = _backward_child(layer, dout, True)
        return _backward_child(self.layers[0], dout, self.need_input_grad)

    def output_shape(self, shape):
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return tuple(shape)

    def __repr__(self):
        return f"Sequential({self._repr_children()}\n)"

    def summary(self, input_shape) -> str:
        """A table of layers, output shapes and parameter counts for an input of `input_shape` (with the
        batch dimension, e.g. (1, 1, 28, 28)); raises if a layer cannot take its input's shape."""
        shape = tuple(int(s) for s in input_shape)
        rows = [("#", "layer", "output shape", "params"), ("", "input", str(shape), "")]
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            rows.append((str(i), repr(layer).replace("\n", " "), str(shape), f"{layer.num_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = lambda r: "  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                                     r[3].rjust(widths[3])]).rstrip()
        rule = "-" * len(line(tuple("-" * w for w in widths)))
        out = [line(rows[0]), rule] + [line(r) for r in rows[1:]] + [rule, f"total params: {self.num_params():,}"]
        return "\n".join(out)
