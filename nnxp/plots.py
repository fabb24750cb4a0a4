"""Figures for examples and notebooks (matplotlib, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import to_numpy


def _pyplot(path: str | None) -> Any:
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("Plotting needs matplotlib: pip install 'nnxp[examples]'") from exc
    return plt


def plot_misclassified(images: Any, y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None,
                       path: str | None = None, max_images: int = 40, columns: int = 8) -> Any:
    """A grid of misclassified images titled with predicted and true labels.

    Args:
        images: ``(N, H, W)`` or ``(N, H*W)`` square images (any backend).
        y_true: true integer labels ``(N,)``.
        y_pred: predicted integer labels ``(N,)``.
        class_names: names for the labels (default: the numbers).
        path: save the figure as PNG there (and close it); ``None`` returns it open.
        max_images: at most this many images, the first ones in order.
        columns: images per row.

    Returns:
        The matplotlib ``Figure``.
    """
    images, y_true, y_pred = to_numpy(images), to_numpy(y_true), to_numpy(y_pred)
    wrong = np.flatnonzero(y_true != y_pred)[:max_images]
    if images.ndim == 2:
        side = round(float(np.sqrt(images.shape[1])))
        images = images.reshape(-1, side, side)
    elif images.ndim == 4:  # NCHW with one channel
        images = images[:, 0]
    plt = _pyplot(path)
    rows = max(1, -(-len(wrong) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    name = (lambda k: class_names[k]) if class_names is not None else str
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"pred {name(int(y_pred[i]))}\ntrue {name(int(y_true[i]))}", fontsize=7, color="firebrick")
    total = int(np.sum(y_true != y_pred))
    fig.suptitle(f"{total} of {len(y_true)} test images misclassified (first {len(wrong)} shown)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
