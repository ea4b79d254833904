"""SoftmaxCrossEntropy's options (ignore_index, label_smoothing, weight, reduction) against
torch.nn.functional.cross_entropy, loss and gradient, on seeded random cases, on the CPU and the emulated GPU."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _oracle import assert_close, case_rng, randn
from gpucnn import devices as backend
from gpucnn import layers as L


def loss_case(rng):
    """(n, classes, ignore_index, label_smoothing, weighted, reduction)."""
    k = int(rng.integers(1, 8))
    return (int(rng.integers(1, 12)), k, int(rng.choice([-100, 0, k - 1, 3])), float(rng.choice([0.0, 0.05, 0.3, 1.0])),
            bool(rng.integers(0, 2)), str(rng.choice(["mean", "sum", "none"])))


CASES = [(5, 4, -100, 0.0, False, "mean"), (3, 1, -100, 0.1, True, "sum"), (6, 3, 1, 0.2, True, "mean"),
         (1, 5, 2, 0.0, False, "none")] + [loss_case(np.random.default_rng(s)) for s in range(28)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cross_entropy_options_match_torch(case, any_device):
    n, k, ignore, eps, weighted, reduction = case
    rng = case_rng(case)
    logits = randn(rng, n, k) * float(rng.choice([1, 10, 200]))
    labels = rng.integers(0, k, size=n)
    labels[rng.random(n) < 0.3] = ignore            # some samples ignored (all of them, now and then)
    if ignore in range(k):
        labels[0] = ignore
    weight = rng.uniform(0, 2, k).astype(np.float32) if weighted else None
    lt = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(lt, torch.tensor(labels), weight=None if weight is None else torch.tensor(weight),
                           ignore_index=ignore, reduction=reduction, label_smoothing=eps)
    dout = randn(rng, *want.shape) if reduction == "none" else np.float32(rng.choice([1.0, 2.5]))
    want.backward(torch.tensor(dout))
    ce = L.SoftmaxCrossEntropy(ignore_index=ignore, label_smoothing=eps, weight=weight, reduction=reduction)
    d = lambda a: backend.to_device(np.asarray(a), any_device)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = ce.forward(d(logits), d(labels))
        grad = ce.backward(d(dout) if reduction == "none" else float(dout))
    assert backend.device_of(loss) == backend.get_device(any_device) and loss.dtype == np.float32
    assert_close(loss, want, "loss", any_device)
    assert_close(grad, lt.grad, "dlogits", any_device)


def test_defaults_are_pytorchs():
    ce = L.SoftmaxCrossEntropy()
    assert (ce.ignore_index, ce.label_smoothing, ce.weight, ce.reduction) == (-100, 0.0, None, "mean")
    assert repr(ce) == "SoftmaxCrossEntropy()"
    assert repr(L.SoftmaxCrossEntropy(ignore_index=0, reduction="sum")) == \
        "SoftmaxCrossEntropy(ignore_index=0, reduction='sum')"


def test_out_of_range_label_other_than_ignore_index_poisons_only_on_a_device():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"labels in \[0, 4\) for 4 classes \(or -1, ignored\), got values in \[0, 7\]"):
        L.SoftmaxCrossEntropy(ignore_index=-1).forward(logits, np.array([0, -1, 7]))
    ce = L.SoftmaxCrossEntropy(ignore_index=-1, reduction="none")
    losses = backend.to_cpu(ce.forward(backend.to_device(logits, "emulated"),
                                       backend.to_device(np.array([0, -1, 7]), "emulated")))
    np.testing.assert_allclose(losses[:2], [np.log(4), 0])
    assert np.isnan(losses[2])
    grad = backend.to_cpu(ce.backward(backend.to_device(np.ones(3, np.float32), "emulated")))
    assert np.isnan(grad[2]).all() and np.isfinite(grad[:2]).all()


@pytest.mark.parametrize("kwargs, words", [
    (dict(reduction="avg"), ["SoftmaxCrossEntropy", "reduction", "'mean', 'sum', 'none'", "'avg'"]),
    (dict(label_smoothing=1.5), ["SoftmaxCrossEntropy", "label_smoothing", "[0.0, 1.0]", "1.5"]),
    (dict(ignore_index=1.0), ["SoftmaxCrossEntropy", "ignore_index", "int", "1.0"]),
    (dict(weight=[1.0, -1.0]), ["SoftmaxCrossEntropy", "weight", "non-negative"]),
    (dict(weight=[[1.0]]), ["SoftmaxCrossEntropy", "weight", "1-D"]),
])
def test_bad_options_are_refused(kwargs, words):
    with pytest.raises(ValueError) as e:
        L.SoftmaxCrossEntropy(**kwargs)
    for word in words:
        assert word in str(e.value), str(e.value)


def test_weight_count_and_dout_shape_are_checked():
    with pytest.raises(ValueError, match=r"expected 3 class weights for 3 classes, got 2"):
        L.SoftmaxCrossEntropy(weight=[1.0, 2.0]).forward(np.zeros((2, 3), np.float32), np.array([0, 1]))
    ce = L.SoftmaxCrossEntropy(reduction="none")
    ce.forward(np.zeros((2, 3), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"expected dout of shape \(2,\)"):
        ce.backward(np.ones(3, np.float32))
