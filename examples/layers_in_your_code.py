"""Use gpucnn layers inside your own numpy/cupy code: a hand-written loop that fits a tiny conv net to
synthetic data (is the bright bar horizontal or vertical?), written once for both array modules.

    python examples/layers_in_your_code.py [--device cpu|cuda|auto]

Each layer is a plain object with forward/backward and params/grads dicts, so you can mix it with your own
array code: here the "optimizer" is two lines of xp arithmetic.
"""
import argparse

import numpy as np

import gpucnn
from gpucnn.layers import Affine, Conv2D, MaxPool2D, ReLU, SoftmaxCrossEntropy


def bars(n, rng):
    """n 1x12x12 images with one bright horizontal (label 0) or vertical (label 1) bar, plus noise."""
    x = rng.normal(0, 0.3, (n, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 2, n)
    pos = rng.integers(0, 12, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] += 2
        else:
            x[i, 0, :, pos[i]] += 2
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = gpucnn.get_device(args.device)
    gpucnn.seed(1)
    rng = np.random.default_rng(1)

    layers = [Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Affine(4 * 6 * 6, 2)]
    layers = [layer.to(device) for layer in layers]
    loss_layer = SoftmaxCrossEntropy()

    x_host, y_host = bars(256, rng)
    x, y = gpucnn.to_device(x_host, device), gpucnn.to_device(y_host, device)
    xp = gpucnn.get_array_module(x)            # numpy or cupy: the rest of the code is the same

    for step in range(60):
        h = x
        for layer in layers:
            h = layer.forward(h)
        loss = loss_layer.forward(h, y)
        d = loss_layer.backward()
        for layer in reversed(layers):
            d = layer.backward(d)
        for layer in layers:                   # plain SGD, in place, on the device
            for key, p in layer.params.items():
                p -= xp.float32(0.1) * layer.grads[key]
        if step % 20 == 0 or step == 59:
            print(f"step {step:2d}: loss {float(loss):.4f}")

    h = x
    for layer in layers:
        h = layer.forward(h, train=False)
    accuracy = float((h.argmax(axis=1) == y).mean())
    print(f"training accuracy {accuracy:.3f} on {device}")


if __name__ == "__main__":
    main()
