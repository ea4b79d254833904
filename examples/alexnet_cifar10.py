"""An AlexNet-style net on CIFAR-10, meant for a machine with an NVIDIA GPU (pip install 'gpucnn[cuda12]').

    python examples/alexnet_cifar10.py [--device cuda] [--epochs 30] [--out runs/alexnet-cifar10]

Uses the trainer behind `gpucnn train`: the small AlexNet form for 32 px inputs (five conv layers, LRN after
the first two, overlapping 3x3/2 max-pools, two dropout+affine layers), SGD with Nesterov momentum, cosine
decay, crop+flip augmentation. CIFAR-10 is downloaded (and checksum-verified) on first use. On a CPU it runs
too, slowly: try --device cpu --epochs 1 --limit-train 2000 to see it work.
"""
import argparse

from gpucnn.train import TrainConfig, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--out", default="runs/alexnet-cifar10")
    args = ap.parse_args()
    result = train(TrainConfig(model="alexnet", dataset="cifar10", device=args.device, epochs=args.epochs,
                               batch_size=args.batch_size, optimizer="nesterov", lr=0.05, weight_decay=5e-4,
                               schedule="cosine", warmup=200, augment=True, out=args.out,
                               limit_train=args.limit_train))
    print(result)


if __name__ == "__main__":
    main()
