"""The loss curve as a PNG (train and validation loss against step), drawn from the metrics file.

Uses matplotlib's Agg canvas directly (no pyplot, no display needed, no global backend switch), and
writes through a temporary file so a half-drawn image never replaces a good one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from fromzero.train.metrics_log import read_metrics


def plot_losses(metrics: str | Path | Iterable[dict[str, Any]], out_png: str | Path, title: str = "loss") -> Path:
    """Draw train `loss` and eval `val_loss` (from a metrics JSONL path or its records) to `out_png`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train" and r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval" and r.get("val_loss") is not None]

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), label="val loss", color="tab:orange", marker="o", markersize=3.5, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out_png)
    return out_png
