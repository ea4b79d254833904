"""Train LeNet-5 on Fashion-MNIST through the Python API: layers, a loss, an optimizer and a loop you can read.

    python examples/train_lenet5.py [--device auto|cpu|cuda] [--epochs 3] [--limit N]

The same code runs on the CPU (numpy) and on a GPU (cupy): only the device string changes.
"""
import argparse
import time

import gpucnn
from gpucnn import optim
from gpucnn.layers import SoftmaxCrossEntropy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    args = ap.parse_args()

    gpucnn.seed(0)
    device = gpucnn.get_device(args.device)
    train_set = gpucnn.load_dataset("fashion-mnist", "train")
    test_set = gpucnn.load_dataset("fashion-mnist", "test")
    train = gpucnn.DataLoader(train_set, batch_size=128, shuffle=True, seed=0, device=device, limit=args.limit)
    test = gpucnn.DataLoader(test_set, batch_size=1000, shuffle=False, device=device)

    model = gpucnn.models.lenet5(in_channels=1, input_size=28, num_classes=10).to(device)
    loss_layer = SoftmaxCrossEntropy()
    opt = optim.Adam(lr=2e-3)
    schedule = optim.CosineLR(2e-3, total_steps=args.epochs * len(train))
    print(model.summary((1, 1, 28, 28)))

    step = 0
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        xp = device.xp
        loss_sum, t0 = xp.zeros((), dtype="float32"), time.perf_counter()
        for x, y in train:
            schedule.apply(opt, step)
            loss = loss_layer.forward(model.forward(x, train=True), y)
            model.backward(loss_layer.backward())
            opt.update(model.params, model.grads)
            loss_sum += loss          # stays on the device: no sync per step
            step += 1
        correct = 0
        for x, y in test:
            correct += int((model.forward(x, train=False).argmax(axis=1) == y).sum())
        print(f"epoch {epoch + 1}: train loss {float(loss_sum) / len(train):.4f}, "
              f"test accuracy {correct / len(test_set.labels):.4f}, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
