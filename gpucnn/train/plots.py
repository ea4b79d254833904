"""Pictures of a run: learning curves and the first conv layer's filters, as PNG files.

matplotlib (Agg backend, no display needed) is imported only when a picture is drawn; without it
:func:`available` is False and the trainer skips the pictures.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None if matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def available() -> bool:
    """True when matplotlib can be imported."""
    return _pyplot() is not None


def plot_curves(history: list[dict], path, title: str = "", best_epoch: int | None = None) -> str:
    """Loss and accuracy per epoch side by side, for each of train, validation and test that the rows hold;
    `history` holds metrics.jsonl rows (an epoch without a value is left out of that line); `best_epoch`, the
    epoch chosen by validation, is marked by a dashed line."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for split, label, style in (("train", "train", "-o"), ("val", "validation", "-^"), ("test", "test", "-s")):
            points = [(h["epoch"], h[f"{split}_loss"], h[f"{split}_acc"]) for h in history
                      if h.get(f"{split}_loss") is not None and h.get(f"{split}_acc") is not None]
            if points:
                x, loss, acc = zip(*points)
                ax_loss.plot(x, loss, style, label=label, markersize=3)
                ax_acc.plot(x, [100 * a for a in acc], style, label=label, markersize=3)
        ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        for ax in (ax_loss, ax_acc):
            if best_epoch is not None:
                ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=f"chosen (epoch {best_epoch})")
            ax.grid(alpha=0.3)
            ax.legend()
            if epochs:
                ax.set_xticks(_ticks(epochs))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return str(path)


def _ticks(epochs, most=12):
    step = max(1, math.ceil(len(epochs) / most))
    return epochs[::step]


def filter_grid(weights: np.ndarray, pad: int = 1) -> np.ndarray:
    """Conv weights (out, in, kh, kw) -> one image tiling the filters, each scaled to [0, 1] on its own.

    Three input channels become RGB tiles; any other count is shown per filter as the mean over channels.
    Returns (H, W) or (H, W, 3); the padding between tiles is 1 (white).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filter_grid: expected conv weights (out, in, kh, kw), got shape {w.shape}")
    n, c, kh, kw = w.shape
    tiles = w.transpose(0, 2, 3, 1) if c == 3 else w.mean(axis=1)[..., None]
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = (tiles - lo) / np.where(hi > lo, hi - lo, 1.0)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    depth = tiles.shape[-1]
    grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, depth))
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (kh + pad), pad + q * (kw + pad)
        grid[y:y + kh, x:x + kw] = tiles[i]
    return grid if depth == 3 else grid[..., 0]


def plot_filters(weights: np.ndarray, path, title: str = "") -> str:
    """Save the first conv layer's filters (host array (out, in, kh, kw)) as a grid of small images."""
    plt = _pyplot()
    grid = filter_grid(weights)
    side = min(8.0, max(4.0, grid.shape[1] / 8))
    fig, ax = plt.subplots(figsize=(side, side * grid.shape[0] / grid.shape[1] + 0.6))
    try:
        ax.imshow(grid, cmap=None if grid.ndim == 3 else "gray", interpolation="nearest", vmin=0, vmax=1)
        ax.set_axis_off()
        label = f"{weights.shape[0]} filters {weights.shape[2]}x{weights.shape[3]}"
        ax.set_title(textwrap.fill(f"{title}: {label}" if title else label, 45), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return str(path)
