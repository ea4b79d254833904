"""Your own network on your own arrays with gpucnn.fit: a validation split, early stopping, the best epoch kept.

    python examples/fit_own_data.py [--data my.npz] [--epochs 15] [--device auto|cpu|cuda] [--out runs/own]
    python examples/fit_own_data.py --make-data my.npz     # only write the data set

Without --data it makes a small data set of its own (three kinds of 16x16 shapes, NHWC uint8 arrays, as
images often come), saves it as shapes.npz beside the run, and trains on that. The same run from the command
line: gpucnn train --dataset shapes.npz --model examples/fit_own_data.py:build --val-split 0.1 --early-stop 3
"""
import argparse
import os

import numpy as np

import gpucnn
from gpucnn.layers import Affine, BatchNorm2D, Conv2D, Dropout, Flatten, MaxPool2D, ReLU


def build(in_channels, input_size, num_classes):
    """The network: gpucnn passes the data's channels, (height, width) and number of classes."""
    h, w = input_size
    return gpucnn.Sequential(
        Conv2D(in_channels, 16, 3, padding=1), BatchNorm2D(16), ReLU(), MaxPool2D(2),
        Conv2D(16, 32, 3, padding=1), BatchNorm2D(32), ReLU(), MaxPool2D(2),
        Flatten(), Dropout(0.3), Affine(32 * (h // 4) * (w // 4), num_classes))


def make_shapes(n, rng, size=16):
    """n grayscale images (n, size, size, 1) of a square outline, a filled disc or a cross, and their labels."""
    yy, xx = np.mgrid[:size, :size]
    images = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    labels = rng.integers(0, 3, n)
    for img, k in zip(images, labels):
        cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(3, 5)
        if k == 0:
            mask = (np.maximum(abs(yy - cy), abs(xx - cx)) == r)
        elif k == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = ((yy == cy) | (xx == cx)) & (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        img[mask, 0] = rng.integers(170, 256)
    return images, labels


def save_shapes(path, n_train=1200, n_test=300):
    """The made-up data set as an .npz gpucnn reads (x_train, y_train, x_test, y_test, classes)."""
    rng = np.random.default_rng(0)
    (x, y), (xt, yt) = make_shapes(n_train, rng), make_shapes(n_test, rng)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, classes=["square", "disc", "cross"])
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an .npz with x_train, y_train (and x_test, y_test); default: made here")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=os.path.join("runs", "own"))
    ap.add_argument("--make-data", metavar="PATH", help="write the made-up data set to PATH (.npz) and stop")
    ap.add_argument("--n-train", type=int, default=1200, help="training images of the made-up data set (and a "
                                                              "quarter as many test images)")
    args = ap.parse_args()

    if args.make_data:
        save_shapes(args.make_data, args.n_train, args.n_train // 4)
        return
    if args.data is None:
        os.makedirs(args.out, exist_ok=True)
        args.data = save_shapes(os.path.join(args.out, "shapes.npz"), args.n_train, args.n_train // 4)

    history = gpucnn.fit(build, args.data, validation=0.1, early_stopping=3, epochs=args.epochs, batch_size=64,
                         lr=3e-3, device=args.device, out=os.path.join(args.out, "run"), overwrite=True)
    print(history.summary())

    # the model comes back in eval mode with the best epoch's weights: predict a few test images
    model = history.model
    with np.load(args.data) as z:
        x, y = z["x_test"][:5], z["y_test"][:5]
    ckpt = gpucnn.train.checkpoint.load(os.path.join(args.out, "run", "best.npz"))
    from gpucnn.train.predict import predict, prepare_images
    top = predict(model, prepare_images(x.transpose(0, 3, 1, 2), ckpt.data, "x_test"), top=1)
    names = ckpt.data["classes"]
    for (k, p), truth in zip((t[0] for t in top), y):
        print(f"predicted {names[k]} ({100 * p:.1f}%), truly {names[truth]}")


if __name__ == "__main__":
    main()
