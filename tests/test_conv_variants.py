"""Conv2D's options (dilation, groups incl. depthwise, padding as int / pair / 4-tuple / 'same' / 'valid') and
ConvTranspose2D against torch.nn.functional, forward and every gradient, on seeded random shapes, on the CPU
and the emulated GPU (and a real one where present): stride > 1, non-square everything, batch 1."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _oracle import against_torch, case_rng, leaf, randn
from gpucnn import devices as backend
from gpucnn import layers as L

N_RANDOM = 24
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def conv_case(rng):
    """(n, cin, cout, (h, w), kernel, stride, padding, dilation, groups, bias), drawn so the output is >= 1x1."""
    kind = _pick(rng, ["plain", "grouped", "depthwise"])
    groups = 1 if kind == "plain" else int(rng.integers(2, 4))
    cin = groups * int(rng.integers(1, 3)) if kind != "depthwise" else groups
    cout = groups * int(rng.integers(1, 3))
    k = tuple(int(v) for v in rng.integers(1, 5, size=2))
    d = tuple(int(v) for v in rng.integers(1, 4, size=2)) if rng.random() < 0.6 else (1, 1)
    pad_kind = _pick(rng, ["int", "pair", "four", "same", "valid"])
    s = (1, 1) if pad_kind == "same" else tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding = {"int": int(rng.integers(0, 3)), "pair": tuple(int(v) for v in rng.integers(0, 3, size=2)),
               "four": tuple(int(v) for v in rng.integers(0, 3, size=4)), "same": "same", "valid": "valid"}[pad_kind]
    pads = L.Conv2D(cin, cout, k, s, padding, d, groups).pads
    span = [dd * (kk - 1) + 1 for dd, kk in zip(d, k)]
    h = int(rng.integers(max(1, span[0] - pads[0] - pads[1]), span[0] + 7))
    w = int(rng.integers(max(1, span[1] - pads[2] - pads[3]), span[1] + 7))
    return (int(rng.integers(1, 4)), cin, cout, (h, w), k, s, padding, d, groups, bool(rng.integers(0, 2)))


def conv_cases(count=N_RANDOM, seed=2024):
    cases = [  # (n, cin, cout, (h, w), kernel, stride, padding, dilation, groups, bias)
        (1, 4, 4, (5, 6), 3, 1, "same", 1, 4, True),            # depthwise, 'same', batch 1
        (2, 3, 6, (7, 7), (4, 2), 1, "same", (2, 3), 3, False),  # even kernel: 'same' pads more after
        (2, 2, 4, (9, 8), 3, 2, (0, 2, 1, 0), 2, 2, True),       # asymmetric padding, dilation, stride
        (1, 6, 4, (5, 9), (2, 3), (3, 2), "valid", 1, 2, True),  # 'valid', grouped, non-square stride
        (2, 1, 2, (4, 4), 3, 1, (3, 0, 0, 3), 1, 1, False),      # padding wider than the kernel on one side
    ]
    rng = np.random.default_rng(seed)
    return cases + [conv_case(rng) for _ in range(count)]


def torch_conv(x, w, b, stride, padding, dilation, groups):
    """F.conv2d, taking our (top, bottom, left, right) padding too."""
    if isinstance(padding, tuple) and len(padding) == 4:   # F.pad takes (left, right, top, bottom)
        top, bottom, left, right = padding
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def torch_weights(layer, rng):
    """Random bias values (if any), then torch leaves holding the layer's W and b, and the grads to compare."""
    if "b" in layer.params:
        layer.params["b"][...] = randn(rng, layer.out_channels)
    wt = leaf(layer.params["W"].copy())
    bt = leaf(layer.params["b"].copy()) if "b" in layer.params else None
    return wt, bt, [("W", wt)] + ([("b", bt)] if bt is not None else [])


def check_conv(case, device):
    n, cin, cout, (h, w), k, s, p, d, g, bias = case
    rng = case_rng(case)
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    assert layer.params["W"].shape == (cout, cin // g) + layer.kernel_size
    wt, bt, grads = torch_weights(layer, rng)
    x = randn(rng, n, cin, h, w)
    y, _ = against_torch(layer, x, lambda xt: torch_conv(xt, wt, bt, s, p, d, g), rng, device, grads=grads)
    if p == "same":
        assert y.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("case", conv_cases(), ids=str)
def test_conv2d_options_match_torch(case, any_device):
    check_conv(case, any_device)


def transpose_case(rng):
    """(n, cin, cout, (h, w), kernel, stride, padding, output_padding, groups, bias, dilation)."""
    groups = int(rng.integers(1, 4))
    cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k = tuple(int(v) for v in rng.integers(1, 5, size=2))
    s = tuple(int(v) for v in rng.integers(1, 4, size=2))
    d = tuple(int(v) for v in rng.integers(1, 3, size=2))
    p = tuple(int(rng.integers(0, dd * (kk - 1) // 2 + 1)) for dd, kk in zip(d, k))
    op = tuple(int(rng.integers(0, max(ss, dd))) for ss, dd in zip(s, d))
    h, w = (int(v) for v in rng.integers(1, 6, size=2))
    return (int(rng.integers(1, 4)), cin, cout, (h, w), k, s, p, op, groups, bool(rng.integers(0, 2)), d)


def transpose_cases(count=N_RANDOM, seed=77):
    cases = [  # (n, cin, cout, (h, w), kernel, stride, padding, output_padding, groups, bias, dilation)
        (1, 2, 3, (3, 4), 3, 2, 1, 1, 1, True, 1),          # the usual 2x upsampling
        (2, 4, 4, (2, 3), (2, 3), (2, 1), 0, 0, 4, False, 1),  # depthwise, stride == kernel
        (1, 2, 2, (1, 1), 1, 1, 0, 0, 1, True, 1),          # 1x1 everything
        (2, 3, 6, (4, 2), 3, 1, (2, 0), (1, 0), 3, True, 2),  # output_padding < dilation with stride 1
    ]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        case = transpose_case(rng)
        n, cin, cout, (h, w), k, s, p, op, g, bias, d = case
        if all((i - 1) * ss - 2 * pp + dd * (kk - 1) + o + 1 >= 1
               for i, ss, pp, dd, kk, o in zip((h, w), s, p, d, k, op)):
            out.append(case)
    return cases + out


def check_transpose(case, device):
    n, cin, cout, (h, w), k, s, p, op, g, bias, d = case
    rng = case_rng(case)
    layer = L.ConvTranspose2D(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, bias=bias, dilation=d)
    assert layer.params["W"].shape == (cin, cout // g) + layer.kernel_size
    wt, bt, grads = torch_weights(layer, rng)
    x = randn(rng, n, cin, h, w)
    fn = lambda xt: F.conv_transpose2d(xt, wt, bt, s, p, op, g, d)
    y, _ = against_torch(layer, x, fn, rng, device, grads=grads)
    assert y.shape == layer.output_shape(x.shape)


@pytest.mark.parametrize("case", transpose_cases(), ids=str)
def test_conv_transpose2d_matches_torch(case, any_device):
    check_transpose(case, any_device)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    """<conv(x), y> == <x, conv_transpose(y)> with the same weights: the layer is Conv2D's input gradient."""
    rng = np.random.default_rng(3)
    conv = L.Conv2D(4, 6, 3, stride=2, padding=1, dilation=2, groups=2, bias=False, dtype=np.float64)
    tconv = L.ConvTranspose2D(6, 4, 3, stride=2, padding=1, output_padding=(0, 1), groups=2, bias=False, dilation=2,
                              dtype=np.float64)
    tconv.params["W"][...] = conv.params["W"]
    x = rng.standard_normal((2, 4, 9, 10))
    y = rng.standard_normal(conv.output_shape(x.shape))
    assert tconv.output_shape(y.shape) == x.shape
    np.testing.assert_allclose(np.sum(conv.forward(x) * y), np.sum(x * tconv.forward(y)), rtol=1e-12)


@pytest.mark.parametrize("kwargs, words", [
    (dict(padding="same", stride=2), ["Conv2D", "'same'", "strided"]),
    (dict(padding="full"), ["Conv2D", "padding", "'same' or 'valid'", "'full'"]),
    (dict(padding=(1, 2, 3)), ["Conv2D", "4-tuple", "(1, 2, 3)"]),
    (dict(padding=(1, -1, 0, 0)), ["Conv2D", ">= 0", "(1, -1, 0, 0)"]),
    (dict(groups=3), ["Conv2D", "groups must divide", "groups=3", "in_channels=4", "out_channels=6"]),
    (dict(groups=0), ["Conv2D", "groups", ">= 1", "got 0"]),
    (dict(dilation=0), ["Conv2D", "dilation", ">= 1"]),
])
def test_conv2d_refuses_bad_options(kwargs, words):
    with pytest.raises(ValueError) as e:
        L.Conv2D(4, 6, 3, **kwargs)
    for word in words:
        assert word in str(e.value), str(e.value)


def test_conv_transpose2d_refuses_bad_options():
    with pytest.raises(ValueError, match=r"ConvTranspose2D: output_padding must be smaller than either stride or "
                                         r"dilation.*\(2, 2\)"):
        L.ConvTranspose2D(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="ConvTranspose2D: groups must divide"):
        L.ConvTranspose2D(2, 3, 3, groups=2)
    with pytest.raises(ValueError, match=r"ConvTranspose2D.*output of an input of shape \(1, 2, 1, 1\) would be -1x-1"):
        L.ConvTranspose2D(2, 2, 1, padding=1).forward(np.zeros((1, 2, 1, 1), np.float32))


def test_conv2d_winograd_only_where_it_serves():
    """Winograd keeps 3x3 stride-1 layers with many channels; groups, dilation or uneven padding use im2col."""
    shape = (64, 256, 12, 12)
    assert L.Conv2D(256, 256, 3, padding=1).uses_winograd(shape)
    assert L.Conv2D(256, 256, 3, padding="same").uses_winograd(shape)
    for kwargs in (dict(groups=2), dict(dilation=2, padding=2), dict(padding=(1, 0, 1, 1))):
        assert not L.Conv2D(256, 256, 3, **kwargs).uses_winograd(shape), kwargs


def test_existing_conv_checkpoint_names_and_shapes_are_unchanged():
    layer = L.Conv2D(3, 8, 5, 2, 1)       # stride and padding stay the 4th and 5th positional arguments
    assert (layer.stride, layer.pads, layer.dilation, layer.groups) == ((2, 2), (1, 1, 1, 1), (1, 1), 1)
    assert {k: v.shape for k, v in layer.params.items()} == {"W": (8, 3, 5, 5), "b": (8,)}
    assert repr(layer) == "Conv2D(3, 8, kernel_size=(5, 5), stride=(2, 2), padding=(1, 1))"
    assert "groups=2" in repr(L.Conv2D(4, 4, 3, groups=2)) and "padding='same'" in repr(L.Conv2D(4, 4, 3, padding="same"))
    torch_layer = torch.nn.Conv2d(4, 6, 3, groups=2, dilation=2)
    assert L.Conv2D(4, 6, 3, dilation=2, groups=2).num_params() == sum(p.numel() for p in torch_layer.parameters())


@pytest.mark.parametrize("make", [lambda: L.Conv2D(4, 6, 3, stride=2, padding=(1, 0, 2, 1), dilation=2, groups=2),
                                  lambda: L.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)],
                         ids=["Conv2D", "ConvTranspose2D"])
def test_workspace_chunks_give_the_same_results(make, any_device):
    """A workspace limit of about two samples' columns convolves 5 samples in 3 chunks, with the same results."""
    rng = np.random.default_rng(0)
    layer = make().to(any_device)
    x = backend.to_device(randn(rng, 5, 4, 9, 8), any_device)
    dout = backend.to_device(randn(rng, *layer.output_shape(x.shape)), any_device)
    run = lambda: [backend.to_cpu(a) for a in (layer.forward(x), layer.backward(dout), layer.grads["W"])]
    whole = run()
    old = L.get_workspace_limit()
    try:
        L.set_workspace_limit(2 * layer.sample_bytes(x.shape) + 1)
        assert layer.chunk_size(x.shape) == 2
        chunked = run()
    finally:
        L.set_workspace_limit(old)
    for a, b in zip(whole, chunked):   # float32 sums in another grouping: equal to rounding
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


# (n, cin, cout, (h, w), kernel, stride, padding, dilation, groups, bias): stride 1, one group, cout <= cin,
# padding <= k - 1 per side: the CPU computes dx by correlating dout with the flipped filters
CORRELATION_CASES = [
    (3, 16, 16, (9, 7), 3, 1, 1, 1, 1, False),         # a ResNet stage's 3x3
    (1, 5, 3, (6, 8), (2, 4), 1, "same", 1, 1, True),  # even kernel: 'same' pads (0, 1) and (1, 2)
    (2, 4, 4, (5, 5), 3, 1, (0, 2, 1, 0), 1, 1, True),  # asymmetric padding, one side k - 1
    (2, 6, 2, (4, 3), 1, 1, 0, 1, 1, False),           # 1x1
    (2, 3, 3, (7, 6), (3, 2), 1, "valid", 1, 1, True),  # no padding: dout padded by k - 1 all round
]


@pytest.mark.parametrize("case", CORRELATION_CASES, ids=str)
def test_cpu_input_gradient_by_correlation_matches_torch(case, any_device):
    n, cin, cout, (h, w), k, s, p, d, g, bias = case
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    x = np.zeros((n, cin, h, w), np.float32)
    assert layer._dx_by_correlation(np, x, layer._weight_rows(np))   # on the CPU (a GPU keeps its kernels)
    check_conv(case, any_device)


def _col2im_backward(layer, x, dout, monkeypatch):
    """dx through the column gradient and col2im, the CPU's other two dx paths turned off."""
    with monkeypatch.context() as m:
        m.setattr(L.Conv2D, "_dx_by_correlation", lambda self, xp, x, wk: False)
        m.setattr(L.Conv2D, "_dx_by_tap", lambda self, xp, x, wk: False)
        layer.forward(x, True)
        return layer.backward(dout)


def _chunked_backward(layer, x, dout):
    """dx with the workspace limit set so that the layer convolves 2 samples at a time."""
    limit = L.get_workspace_limit()
    try:
        L.set_workspace_limit(2 * layer.sample_bytes(x.shape, x.dtype) + 1)
        assert layer.chunk_size(x.shape, x.dtype) == 2
        layer.forward(x, True)
        return layer.backward(dout)
    finally:
        L.set_workspace_limit(limit)


def test_input_gradient_by_correlation_is_col2ims_to_rounding_also_in_chunks(monkeypatch):
    """The correlation's dx equals the column-gradient-and-col2im dx (float64, to rounding), whole and in
    workspace chunks; with more filters than channels, or stride 2, the layer keeps col2im."""
    rng = np.random.default_rng(5)
    layer = L.Conv2D(6, 6, 3, padding=(1, 2, 0, 1), dtype=np.float64)
    x = rng.standard_normal((5, 6, 8, 7))
    dout = rng.standard_normal(layer.output_shape(x.shape))
    layer.forward(x, True)
    by_correlation = layer.backward(dout)
    by_col2im = _col2im_backward(layer, x, dout, monkeypatch)
    np.testing.assert_allclose(by_correlation, by_col2im, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_chunked_backward(layer, x, dout), by_col2im, rtol=1e-12, atol=1e-12)
    wk = lambda m: m._weight_rows(np)
    wider, strided = L.Conv2D(4, 8, 3, padding=1), L.Conv2D(4, 4, 3, stride=2, padding=1)
    assert not wider._dx_by_correlation(np, np.zeros((1, 4, 5, 5), np.float32), wk(wider))
    assert not strided._dx_by_correlation(np, np.zeros((1, 4, 5, 5), np.float32), wk(strided))


# (n, cin, cout, (h, w), kernel, stride, padding, dilation, groups, bias): stride 1, one group, more filters
# than channels (or padding past k - 1), at most 32 channels: the CPU sums the column gradient tap by tap
BY_TAP_CASES = [
    (3, 4, 8, (9, 7), 3, 1, 1, 1, 1, False),             # small_vgg's shape of layer, small
    (1, 3, 5, (6, 8), (2, 4), 1, "same", 1, 1, True),    # even kernel: 'same' pads (0, 1) and (1, 2)
    (2, 5, 7, (8, 9), (3, 2), 1, (1, 0), (2, 1), 1, False),  # dilation, non-square everything
    (2, 3, 3, (5, 6), 3, 1, (3, 0, 1, 3), 1, 1, True),   # padding past k - 1 (no correlation there)
    (2, 32, 40, (3, 2), 2, 1, 0, 1, 1, True),            # 32 channels, the most that take this path
]


@pytest.mark.parametrize("case", BY_TAP_CASES, ids=str)
def test_cpu_input_gradient_tap_by_tap_matches_torch(case, any_device):
    n, cin, cout, (h, w), k, s, p, d, g, bias = case
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    x, wk = np.zeros((n, cin, h, w), np.float32), layer._weight_rows(np)
    assert layer._dx_by_tap(np, x, wk) and not layer._dx_by_correlation(np, x, wk)
    col = L.Conv2D._cols(layer, x, np.float32)[1]
    assert col.flags.c_contiguous, "row-major columns (tap-major ones keep col2im)"
    check_conv(case, any_device)


@pytest.mark.parametrize("shape", [(5, 6, 8, 7), (3, 2, 5, 20)], ids=["row-major columns", "tap-major columns"])
def test_input_gradient_tap_by_tap_is_col2ims_also_in_chunks(shape, monkeypatch):
    """The tap-by-tap dx equals the column-gradient-and-col2im dx (float64, to rounding), whole and in workspace
    chunks, and is taken only where it should be (tap-major columns, 33 channels and stride 2 keep col2im)."""
    rng = np.random.default_rng(6)
    layer = L.Conv2D(shape[1], 9, (3, 2), padding=(1, 2, 0, 1), dilation=(1, 2), dtype=np.float64)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(layer.output_shape(x.shape))
    calls = []
    real = L.conv.twins.col2im_by_tap
    monkeypatch.setattr(L.conv.twins, "col2im_by_tap", lambda *a: calls.append(1) or real(*a))
    layer.forward(x, True)
    by_tap = layer.backward(dout)
    assert len(calls) == (shape[3] == 7), "row-major columns only"
    by_col2im = _col2im_backward(layer, x, dout, monkeypatch)
    np.testing.assert_allclose(by_tap, by_col2im, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_chunked_backward(layer, x, dout), by_col2im, rtol=1e-12, atol=1e-12)
    assert len(calls) == (1 + 3 if shape[3] == 7 else 0), "in chunks of 2 + 2 + 1 samples too"
    wk = lambda m: m._weight_rows(np)
    wide, strided = L.Conv2D(33, 40, 3, padding=1), L.Conv2D(4, 8, 3, stride=(1, 2), padding=1)
    assert not wide._dx_by_tap(np, np.zeros((1, 33, 5, 5), np.float32), wk(wide))
    assert not strided._dx_by_tap(np, np.zeros((1, 4, 5, 5), np.float32), wk(strided))
