"""A long randomised sweep of the layers' options against PyTorch, run by hand (not collected by pytest):

    PYTHONPATH=$PWD python tests/sweep_torch.py --cases 300 --seed 1 --devices cpu,emulated

Draws `cases` fresh cases per layer family from the same generators as the committed tests (which run a few
dozen), with another seed, and checks each exactly as those tests do. Prints each failure and a tally; exits 1
if any case failed.
"""
import argparse
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_conv_variants as conv  # noqa: E402
import test_loss as loss  # noqa: E402
import test_pool_variants as pool  # noqa: E402


def families(seed, cases):
    rng = lambda k: np.random.default_rng([seed, k])
    return {
        "Conv2D": (lambda r: conv.conv_case(r), conv.check_conv, rng(0)),
        "ConvTranspose2D": (lambda r: conv.transpose_cases(1, int(r.integers(2**31)))[-1], conv.check_transpose,
                            rng(1)),
        "MaxPool2D": (lambda r: pool.pool_case(r, "max"), pool.test_maxpool2d_options_match_torch, rng(2)),
        "AvgPool2D": (lambda r: pool.pool_case(r, "avg"), pool.test_avgpool2d_options_match_torch, rng(3)),
        "SoftmaxCrossEntropy": (loss.loss_case, loss.test_cross_entropy_options_match_torch, rng(4)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--devices", default="cpu")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    failed = 0
    for name, (draw, check, rng) in families(args.seed, args.cases).items():
        ok = 0
        for _ in range(args.cases):
            case = draw(rng)
            for device in args.devices.split(","):
                try:
                    check(case, device)
                    ok += 1
                except Exception:  # noqa: BLE001 - report every failure, keep sweeping
                    failed += 1
                    print(f"FAIL {name} {case} on {device}:\n{traceback.format_exc(limit=3)}")
        print(f"{name}: {ok} of {args.cases * len(args.devices.split(','))} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
