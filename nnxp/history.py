"""Per-epoch training record returned by ``fit``."""

from __future__ import annotations

from typing import Any


class History:
    """Metrics per epoch, Keras-style: ``history["loss"]`` is a list with one
    float per epoch; validation metrics are prefixed ``val_``; ``lr`` is the
    learning rate of the epoch's last update and ``time`` its seconds.

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "lr": [...], ...}``.
        epochs: the epoch numbers (1-based, continuing across ``fit`` calls).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the metrics of one finished epoch."""
        self.epochs.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self)}, last={last})"

    def plot(self, path: str | None = None, title: str | None = None) -> Any:
        """Plot loss and accuracy curves (train and validation) per epoch.

        Args:
            path: save the figure as this PNG (and close it); ``None`` returns it open.
            title: figure title.

        Returns:
            The matplotlib ``Figure``.

        Raises:
            ImportError: matplotlib is missing (``pip install 'nnxp[examples]'``).
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
            from matplotlib.ticker import MaxNLocator
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib: pip install 'nnxp[examples]'") from exc
        groups = [m for m in ("loss", "accuracy") if m in self.history or f"val_{m}" in self.history]
        fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5 * max(len(groups), 1), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], groups, strict=False):
            for key, label, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
                if key in self.history:
                    ax.plot(self.epochs, self.history[key], style, label=label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig
