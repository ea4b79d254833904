"""Containers: layers made of layers. Sequential chains them, Residual adds a shortcut around a chain, Concat
joins parallel branches; blocks nest because containers are layers.

A container's ``params``, ``grads`` and ``buffers`` are flat dicts named "<child name>.<child's name>": a
child's name is its index ("0.W", "3.running_mean", "2.0.W" for a layer inside a nested block), or
"shortcut" for a Residual's shortcut ("1.shortcut.0.W"); they are built live from the children so they always
reference the current arrays.
"""
from __future__ import annotations

from ..devices import CPU, device_of, get_array_module, get_device
from .activation import ReLU
from .base import Layer

__all__ = ["Container", "Sequential", "Residual", "Concat"]


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


def _chain_forward(layers, x, train):
    """x through layers in order. A ReLU right after a layer that ``fuses_relu`` (Conv2D, Affine) is applied
    in that layer's bias pass (its ``forward_relu``; the ReLU records the result with ``rectified``): the same
    values and gradients, one pass over the activations fewer."""
    i = 0
    while i < len(layers):
        layer = layers[i]
        after = layers[i + 1] if i + 1 < len(layers) else None
        if type(after) is ReLU and getattr(layer, "fuses_relu", False):
            x = after.rectified(layer.forward_relu(x, train))
            i += 2
        else:
            x = layer.forward(x, train)
            i += 1
    return x


def _chain_backward(layers, dout, need_input_grad):
    """dout through layers in reverse; the first one computes its input gradient only if asked."""
    for layer in reversed(layers[1:]):
        dout = _backward_child(layer, dout, True)
    return _backward_child(layers[0], dout, need_input_grad)


def _chain_shape(layers, shape):
    for layer in layers:
        shape = layer.output_shape(shape)
    return tuple(shape)


def _summary_rows(container, shape, prefix, depth):
    rows = []
    for name, layer, given, out in container.child_shapes(shape):
        label = type(layer).__name__ if isinstance(layer, Container) else repr(layer).replace("\n", " ")
        rows.append((prefix + name, "  " * depth + label, str(out), f"{layer.num_params():,}"))
        if isinstance(layer, Container):
            rows += _summary_rows(layer, given, f"{prefix}{name}.", depth + 1)
    return rows


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

    def named_children(self) -> list:
        """(name, layer) of each layer directly inside, in the order of their parameter names."""
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def children(self) -> list:
        return [layer for _, layer in self.named_children()]

    def child_shapes(self, shape) -> list:
        """(name, layer, input shape, output shape) of each child for an input of `shape`: a chain by default."""
        out = []
        for name, layer in self.named_children():
            given, shape = tuple(shape), tuple(layer.output_shape(shape))
            out.append((name, layer, given, shape))
        return out

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def _named(self, attr):
        return {f"{name}.{k}": v for name, layer in self.named_children() for k, v in getattr(layer, attr).items()}

    @property
    def params(self) -> dict:
        return self._named("params")

    @property
    def grads(self) -> dict:
        return self._named("grads")

    @property
    def buffers(self) -> dict:
        return self._named("buffers")

    def _rebind(self, name, param, grad):
        child, rest = name.split(".", 1)
        dict(self.named_children())[child]._rebind(rest, param, grad)

    def to(self, device):
        """Move every layer inside to a device; returns self."""
        dev = get_device(device)
        for layer in self.children():
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
        return "".join("\n  " + f"({name}): {layer!r}".replace("\n", "\n  ") for name, layer in self.named_children())


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
        return _chain_forward(self.layers, x, self._mode(train))

    def backward(self, dout):
        """Backpropagate dout through every layer (filling their grads); returns the input gradient, or None
        when ``need_input_grad`` is False."""
        return _chain_backward(self.layers, dout, self.need_input_grad)

    def output_shape(self, shape):
        return _chain_shape(self.layers, shape)

    def __repr__(self):
        return f"Sequential({self._repr_children()}\n)"

    def summary(self, input_shape) -> str:
        """A table of layers, output shapes and parameter counts for an input of `input_shape` (with the
        batch dimension, e.g. (1, 1, 28, 28)); the layers inside a block follow its row, indented and numbered
        by their parameter-name prefix ("3.0", "3.shortcut.0"). Raises if a layer cannot take its input's shape."""
        shape = tuple(int(s) for s in input_shape)
        rows = [("#", "layer", "output shape", "params"), ("", "input", str(shape), "")]
        rows += _summary_rows(self, shape, "", 0)
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = lambda r: "  ".join([r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                                     r[3].rjust(widths[3])]).rstrip()
        rule = "-" * len(line(tuple("-" * w for w in widths)))
        out = [line(rows[0]), rule] + [line(r) for r in rows[1:]] + [rule, f"total params: {self.num_params():,}"]
        return "\n".join(out)


class Residual(Container):
    """A residual block (He et al. 2016, "Deep residual learning"): ``y = f(x) + shortcut(x)``, with f the given
    layers applied in order and shortcut the identity when None, else a layer (such as a 1x1 strided Conv2D
    followed by BatchNorm2D in a Sequential) mapping x to f(x)'s shape. ReLU after the sum, as in ResNet, is
    the next layer's job. Parameters are named like a Sequential's ("0.W", "1.gamma", ...) with the
    shortcut's under "shortcut." ("shortcut.0.W"). ValueError when f(x) and shortcut(x) differ in shape.
    """

    def __init__(self, *layers, shortcut=None):
        super().__init__(layers, "Residual")
        if shortcut is not None and not isinstance(shortcut, Layer):
            raise TypeError(f"Residual: shortcut must be a Layer or None (identity), got {type(shortcut).__name__}")
        self.shortcut = shortcut

    def named_children(self) -> list:
        return super().named_children() + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def __repr__(self):
        return f"Residual({self._repr_children()}\n)"

    def child_shapes(self, shape) -> list:
        rows, given = [], tuple(shape)
        for i, layer in enumerate(self.layers):
            out = tuple(layer.output_shape(given))
            rows.append((str(i), layer, given, out))
            given = out
        if self.shortcut is not None:
            rows.append(("shortcut", self.shortcut, tuple(shape), tuple(self.shortcut.output_shape(shape))))
        return rows

    def output_shape(self, shape):
        main = _chain_shape(self.layers, shape)
        side = tuple(shape) if self.shortcut is None else tuple(self.shortcut.output_shape(shape))
        if main != side:
            raise ValueError(f"Residual: the layers map {tuple(shape)} to {main} but the "
                             f"{'identity shortcut' if self.shortcut is None else 'shortcut'} to {side}; "
                             f"expected the same shape (give a shortcut that changes channels and size)")
        return main

    def forward(self, x, train=None):
        train = self._mode(train)
        self.output_shape(x.shape)
        y = _chain_forward(self.layers, x, train)
        return y + (x if self.shortcut is None else self.shortcut.forward(x, train))

    def backward(self, dout):
        """Gradients of both paths; returns dL/dx = the chain's input gradient + the shortcut's (or None when
        ``need_input_grad`` is False)."""
        dx = _chain_backward(self.layers, dout, self.need_input_grad)
        if self.shortcut is None:
            side = dout if self.need_input_grad else None
        else:
            side = _backward_child(self.shortcut, dout, self.need_input_grad)
        return None if dx is None else dx + side


class Concat(Container):
    """Parallel branches joined along an axis (Szegedy et al. 2015's Inception blocks): ``y =
    concatenate([b(x) for b in branches], axis)``, axis 1 (channels) by default. Each branch is a layer (a
    Sequential for a chain); parameters are named by branch index ("0.W", "1.0.W"). ValueError when the
    branches' outputs differ in any other axis.
    """

    def __init__(self, *branches, axis=1):
        super().__init__(branches, "Concat")
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"Concat: axis must be an int, got {axis!r}")
        self.axis = axis

    def __repr__(self):
        return f"Concat(axis={self.axis},{self._repr_children()}\n)"

    def child_shapes(self, shape) -> list:
        return [(name, branch, tuple(shape), tuple(branch.output_shape(shape))) for name, branch in
                self.named_children()]

    def output_shape(self, shape):
        shapes = [tuple(branch.output_shape(shape)) for branch in self.layers]
        ndim = len(shapes[0])
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"Concat: axis {self.axis} is out of range for branch outputs of {ndim} dims")
        ax = self.axis % ndim
        rest = {s[:ax] + s[ax + 1:] for s in shapes}
        if len(rest) > 1 or any(len(s) != ndim for s in shapes):
            raise ValueError(f"Concat: the branches' outputs {shapes} for input {tuple(shape)} differ outside "
                             f"axis {self.axis}; expected them equal there")
        return shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]

    def forward(self, x, train=None):
        train = self._mode(train)
        self.output_shape(x.shape)
        ys = [branch.forward(x, train) for branch in self.layers]
        xp = get_array_module(*ys)
        self._cache = [int(y.shape[self.axis]) for y in ys]
        return xp.concatenate(ys, axis=self.axis)

    def backward(self, dout):
        """Each branch's slice of dout through it; returns the sum of their input gradients (None when
        ``need_input_grad`` is False)."""
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        dx, start = None, 0
        index = [slice(None)] * dout.ndim
        for branch, size in zip(self.layers, self._cache):
            index[self.axis] = slice(start, start + size)
            start += size
            part = _backward_child(branch, dout[tuple(index)], self.need_input_grad)
            if part is not None:
                dx = part if dx is None else dx + part
        return dx
