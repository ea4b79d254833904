"""MaxPool2D (dilation, ceil_mode), AvgPool2D (ceil_mode, count_include_pad=False), GlobalAvgPool2D and
AdaptiveAvgPool2D against torch.nn.functional, forward and input gradient, on seeded random shapes including
ceil_mode's edge cases, on the CPU and the emulated GPU (and a real one where present)."""
import numpy as np
import pytest
import torch.nn.functional as F

from _oracle import against_torch, case_rng, randn
from gpucnn import layers as L
from gpucnn import devices as backend
from gpucnn.devices.ops import out_size

N_RANDOM = 24


def every_window_reads_input(size, k, s, p, d, ceil_mode):
    """False if a window holds only padding (possible with dilation): PyTorch then points outside the input."""
    return all(any(0 <= o * s - p + i * d < size for i in range(k))
               for o in range(out_size(size, k, s, p, d, ceil_mode)))


def pool_case(rng, kind):
    """(n, c, (h, w), kernel, stride or None, padding, dilation, ceil_mode, count_include_pad)."""
    while True:
        k = tuple(int(v) for v in rng.integers(1, 5, size=2))
        stride = None if rng.random() < 0.3 else tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = tuple(int(v) for v in rng.integers(1, 4, size=2)) if kind == "max" and rng.random() < 0.5 else (1, 1)
        ceil = bool(rng.integers(0, 2))
        h, w = (int(v) for v in rng.integers(1, 10, size=2))
        s = stride or k
        if all(out_size(size, kk, ss, pp, dd, ceil) >= 1 and every_window_reads_input(size, kk, ss, pp, dd, ceil)
               for size, kk, ss, pp, dd in zip((h, w), k, s, p, d)):
            return (int(rng.integers(1, 4)), int(rng.integers(1, 4)), (h, w), k, stride, p, d, ceil,
                    bool(rng.integers(0, 2)))


def pool_cases(kind, count=N_RANDOM, seed=11):
    cases = [  # ceil_mode edge cases: (n, c, (h, w), kernel, stride, padding, dilation, ceil_mode, count_include_pad)
        (1, 1, (5, 5), (2, 2), (2, 2), (0, 0), (1, 1), True, True),    # a last window half outside the input
        (2, 1, (5, 6), (2, 2), (2, 2), (1, 1), (1, 1), True, False),   # last window would start in the padding: dropped
        (1, 2, (4, 7), (3, 3), (2, 2), (1, 1), (1, 1), True, True),    # ceil adds a window on one axis only
        (1, 1, (1, 1), (3, 3), (2, 2), (1, 1), (1, 1), True, False),   # one input element, all around padding
        (2, 2, (6, 6), (3, 2), None, (1, 0), (1, 1), False, False),     # stride None = kernel
        (1, 1, (7, 9), (3, 2), (1, 3), (1, 1), (1, 1), True, True),
    ]
    if kind == "max":
        cases += [(2, 2, (9, 8), (3, 2), (2, 1), (1, 1), (2, 3), True, True),   # dilation with ceil_mode
                  (1, 1, (6, 6), (2, 2), (1, 1), (1, 1), (3, 2), False, True)]
    rng = np.random.default_rng(seed + (kind == "max"))
    return cases + [pool_case(rng, kind) for _ in range(count)]


@pytest.mark.parametrize("case", pool_cases("max"), ids=str)
def test_maxpool2d_options_match_torch(case, any_device):
    n, c, (h, w), k, stride, p, d, ceil, _ = case
    rng = case_rng(("max", case))
    x = randn(rng, n, c, h, w)
    x[rng.random(x.shape) < 0.15] = -np.inf        # -inf inputs next to padding: padding must never win
    x[rng.random(x.shape) < 0.15] = 0.5            # ties
    layer = L.MaxPool2D(k, stride=stride, padding=p, dilation=d, ceil_mode=ceil)
    fn = lambda xt: F.max_pool2d(xt, k, stride=stride, padding=p, dilation=d, ceil_mode=ceil)
    against_torch(layer, x, fn, rng, any_device)


@pytest.mark.parametrize("case", pool_cases("avg"), ids=str)
def test_avgpool2d_options_match_torch(case, any_device):
    n, c, (h, w), k, stride, p, _, ceil, include = case
    rng = case_rng(("avg", case))
    layer = L.AvgPool2D(k, stride=stride, padding=p, ceil_mode=ceil, count_include_pad=include)
    fn = lambda xt: F.avg_pool2d(xt, k, stride=stride, padding=p, ceil_mode=ceil, count_include_pad=include)
    against_torch(layer, randn(rng, n, c, h, w), fn, rng, any_device)


def test_maxpool_window_without_input_gives_minus_infinity_and_no_gradient(any_device):
    """A 2-tap window dilated 3 apart at padding 1 over a 2-wide input reads only padding: -inf, argmax -1,
    its gradient goes nowhere (PyTorch points such a window outside the input)."""
    layer = L.MaxPool2D((1, 2), stride=1, padding=(0, 1), dilation=3).to(any_device)
    x = np.array([[[[1.0, 2.0]]]], np.float32)
    y = backend.to_cpu(layer.forward(backend.to_device(x, any_device)))
    np.testing.assert_array_equal(y, [[[[-np.inf]]]])
    dx = backend.to_cpu(layer.backward(backend.to_device(np.ones((1, 1, 1, 1), np.float32), any_device)))
    np.testing.assert_array_equal(dx, np.zeros_like(x))


@pytest.mark.parametrize("seed", range(6))
def test_global_and_adaptive_avgpool_match_torch(seed, any_device):
    rng = np.random.default_rng(seed)
    n, c = (int(v) for v in rng.integers(1, 4, size=2))
    h, w = (int(v) for v in rng.integers(1, 12, size=2))
    x = randn(rng, n, c, h, w)
    against_torch(L.GlobalAvgPool2D(), x, lambda xt: F.adaptive_avg_pool2d(xt, 1), rng, any_device)
    # output sizes smaller, equal and larger than the input (overlapping windows), and None = keep
    size = [(int(rng.integers(1, h + 3)), int(rng.integers(1, w + 3))), int(rng.integers(1, 5)),
            (None, int(rng.integers(1, 4))), (h, w), (1, w)][seed % 5]
    layer = L.AdaptiveAvgPool2D(size)
    y, _ = against_torch(layer, x, lambda xt: F.adaptive_avg_pool2d(xt, size), rng, any_device)
    assert y.shape == layer.output_shape(x.shape)


@pytest.mark.parametrize("make, words", [
    (lambda: L.MaxPool2D(2, dilation=0), ["MaxPool2D", "dilation", ">= 1"]),
    (lambda: L.MaxPool2D(2, ceil_mode=1), ["MaxPool2D", "ceil_mode", "True or False"]),
    (lambda: L.AvgPool2D(2, count_include_pad="no"), ["AvgPool2D", "count_include_pad", "'no'"]),
    (lambda: L.AdaptiveAvgPool2D(0), ["AdaptiveAvgPool2D", "output_size", "got 0"]),
    (lambda: L.AdaptiveAvgPool2D((2, 2, 2)), ["AdaptiveAvgPool2D", "(2, 2, 2)"]),
    (lambda: L.MaxPool2D(3, stride=1, dilation=4).forward(np.zeros((1, 1, 8, 8), np.float32)),
     ["MaxPool2D", "kernel 3x3 (dilation 4x4: 9x9)", "(1, 1, 8, 8)"]),
])
def test_pool_options_are_checked(make, words):
    with pytest.raises(ValueError) as e:
        make()
    for word in words:
        assert word in str(e.value), str(e.value)


def test_pool_reprs_name_non_default_options():
    assert repr(L.MaxPool2D(2)) == "MaxPool2D(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(L.MaxPool2D(3, 2, 1, 2, True)) == ("MaxPool2D(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
                                                   "dilation=(2, 2), ceil_mode=True)")
    assert repr(L.AvgPool2D(3, 2, 1, True, False)).endswith("ceil_mode=True, count_include_pad=False)")
    assert repr(L.AdaptiveAvgPool2D((None, 3))) == "AdaptiveAvgPool2D(output_size=(None, 3))"
