"""Batch normalisation and local response normalisation."""
from __future__ import annotations

import numpy as np

from ..devices import ops
from .base import Layer, _dtype_arg, _float_arg, _int_arg


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channel axis 1, with PyTorch's running statistics:
    biased variance normalises the batch, the unbiased one goes into running_var; eval uses running stats.

    :meth:`synchronise` (called by :class:`gpucnn.distributed.DataParallel` while it trains) makes training mode
    normalise over the batch of every process of a data-parallel run together, as torch.nn.SyncBatchNorm does,
    so the statistics are those of the whole batch."""

    _layout = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = _int_arg(num_features, "num_features", name, 1)
        self.eps = _float_arg(eps, "eps", name, 0.0, float("inf"))
        if self.eps <= 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        self.momentum = _float_arg(momentum, "momentum", name, 0.0, 1.0)
        dtype = _dtype_arg(dtype, name)
        self._add_param("gamma", np.ones(self.num_features, dtype))
        self._add_param("beta", np.zeros(self.num_features, dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype)
        self._sync = None

    def synchronise(self, sync=None):
        """Normalise over every process's share of each batch while training: `sync` is an object with
        ``counts`` (the number of examples of every process's share of the current batch), ``rank`` (this
        process's index into counts; a process counted 0 runs padding, whose input gradient is 0) and
        ``allgather(a)`` (a's of every process stacked, ``(world, *a.shape)``); None ends it (the default)."""
        self._sync = sync

    def __repr__(self):
        return f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum})"

    def output_shape(self, shape):
        ndim = len(self._layout.split(","))
        self._expect_ndim(shape, ndim, self._layout.replace("C", str(self.num_features)))
        if shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input {self._layout.replace('C', str(self.num_features))}, "
                             f"got shape {tuple(shape)}")
        return tuple(shape)

    def _axes_and_bshape(self, x):
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, self.num_features) + (1,) * (x.ndim - 2)
        return axes, bshape

    def forward(self, x, train=None):
        xp = self._begin(x)
        train = self._mode(train)
        axes, bshape = self._axes_and_bshape(x)
        m = x.size // self.num_features
        sync = self._sync if train else None
        if train:
            if m < 2 and sync is None:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input shape {tuple(x.shape)}")
            # Statistics of x minus one of its own values per channel: a large common offset then cancels
            # exactly, before the float32 sums, instead of rounding the deviations away.
            shift = x[(0, slice(None)) + (0,) * (x.ndim - 2)].reshape(bshape)
            xc = x - shift
            shifted_mean = xc.mean(axis=axes, keepdims=True)
            xc -= shifted_mean
            mean = shift + shifted_mean
            if sync is None:
                var = (xc * xc).mean(axis=axes, keepdims=True)
            else:
                mean, var, xc, m = self._synced_stats(xp, x, mean, xc, axes, bshape, sync)
            mom = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - mom
            rm += mom * mean.reshape(-1)
            rv *= 1 - mom
            rv += (mom * m / (m - 1)) * var.reshape(-1)
        else:
            xc = x - self.buffers["running_mean"].reshape(bshape)
            var = self.buffers["running_var"].reshape(bshape)
        invstd = 1 / xp.sqrt(var + self.eps)
        xhat = xc * invstd
        y = xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)
        return self._save((xhat, invstd, train, m, sync), y)

    def _synced_stats(self, xp, x, mean, xc, axes, bshape, sync):
        """(mean, biased variance, x - mean, values per channel) over the batches of every process, from each
        one's count, mean and sum of squared deviations (`mean`, `xc` = x minus it), combined in process order by
        Chan, Golub and LeVeque's rule (Algorithms for computing the sample variance, 1983): the mean is the
        count-weighted mean of the means, and M2 = sum of (M2_p + n_p (mean_p - mean)^2). Every process gets the
        same numbers. A process counted as 0 (its batch is padding) adds nothing."""
        c = self.num_features
        per_example = x.size // (x.shape[0] * c)
        counts = [int(n) * per_example for n in sync.counts]
        total = sum(counts)
        if total < 2:
            raise ValueError(f"{self!r}: expected more than 1 value per channel when training, got "
                             f"{total} over the batches of all {len(counts)} processes")
        every = sync.allgather(xp.concatenate([mean.reshape(-1), (xc * xc).sum(axis=axes)]))
        shares = [(every[p, :c], every[p, c:], n) for p, n in enumerate(counts) if n]
        mean = sum(m_p * (n / total) for m_p, _, n in shares)
        m2 = sum(m2_p + n * (m_p - mean) ** 2 for m_p, m2_p, n in shares)
        return mean.reshape(bshape), (m2 / total).reshape(bshape), x - mean.reshape(bshape), total

    def backward(self, dout):
        xhat, invstd, train, m, sync = self._saved(dout)
        padding = sync is not None and not sync.counts[sync.rank]
        xp = self._xp(dout, xhat, *self.params.values())
        axes, bshape = self._axes_and_bshape(xhat)
        dbeta = dout.sum(axis=axes)
        dgamma = (dout * xhat).sum(axis=axes)
        self._set_grad("beta", dbeta)
        self._set_grad("gamma", dgamma)
        if not self.need_input_grad:
            return None
        scale = self.params["gamma"].reshape(bshape) * invstd
        if not train:
            return dout * scale
        if sync is not None:   # the sums over every process's batch (the gradients keep this process's own)
            total = sync.allgather(xp.concatenate([dbeta, dgamma])).sum(axis=0)
            dbeta, dgamma = total[:self.num_features], total[self.num_features:]
            if padding:   # its rows are no example of the batch: nothing flows back from them
                return xp.zeros_like(dout)
        return scale * (dout - dbeta.reshape(bshape) / m - xhat * (dgamma.reshape(bshape) / m))


class BatchNorm1D(_BatchNorm):
    """Batch norm of (N, C) features."""
    _layout = "(N, C)"


class BatchNorm2D(_BatchNorm):
    """Batch norm of (N, C, H, W) maps, per channel."""
    _layout = "(N, C, H, W)"


class LRN(Layer):
    """Local response normalisation across channels, exactly PyTorch's LocalResponseNorm:
    y_c = x_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} x_c'^2) ** beta.
    One kernel forward and one backward on a GPU (kernels/lrn.cu)."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.size = _int_arg(size, "size", "LRN", 1)
        self.alpha = _float_arg(alpha, "alpha", "LRN", 0.0, float("inf"))
        self.beta = _float_arg(beta, "beta", "LRN", 0.0, float("inf"))
        self.k = _float_arg(k, "k", "LRN", 0.0, float("inf"))
        if self.k <= 0:
            raise ValueError(f"LRN: k must be > 0, got {k!r}")

    def __repr__(self):
        return f"LRN(size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k})"

    def output_shape(self, shape):
        self._expect_ndim(shape, 4, "(N, C, H, W)")
        return tuple(shape)

    def forward(self, x, train=None):
        self._begin(x)
        y, d, scale = ops.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return self._save((x, y, d, scale), y)

    def backward(self, dout):
        x, y, d, scale = self._saved(dout)
        self._xp(dout, x)
        if not self.need_input_grad:
            return None
        return ops.lrn_backward(x, y, d, scale, dout, self.size, self.alpha, self.beta)
