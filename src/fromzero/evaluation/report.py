"""Evaluation artefacts a person reads: a JSON report and a confusion-matrix picture.

The JSON is written atomically (temporary file + rename) so a crash never leaves half a report, and
numpy scalars/arrays are converted so any metrics dict from `fromzero.evaluation.metrics` serialises.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fromzero.errors import FromzeroError

# Fonts that cover Chinese, tried in order when they are installed; DejaVu Sans is matplotlib's own.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan; keep them readable instead of invalid
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dataclass_fields__"):
        from dataclasses import asdict
        return _jsonable(asdict(x))
    return x


def write_report(path: str | os.PathLike, metrics: dict, *, task: str | None = None,
                 split: str | None = None, config: dict | None = None, extra: dict | None = None) -> Path:
    """Write `{"task", "split", "metrics", "config", "created", "fromzero_version", ...}` as pretty JSON."""
    from fromzero import __version__

    path = Path(path)
    report: dict[str, Any] = {"task": task, "split": split, "metrics": metrics}
    if config is not None:
        report["config"] = config
    if extra:
        report.update(extra)
    report["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report["fromzero_version"] = __version__
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_jsonable(report), f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _font_family() -> list[str]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in CJK_FONTS if name in installed] + ["DejaVu Sans"]


def _drawable(labels: list[str], family: list[str]) -> bool:
    """True if every character of every label has a glyph in one of the fonts."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(font_manager.findfont(font_manager.FontProperties(family=name))) for name in family]
    return all(any(f.get_char_index(ord(c)) for f in fonts) for label in labels for c in label if not c.isspace())


def confusion_matrix_png(cm: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str],
                         path: str | os.PathLike, *, title: str | None = None, normalize: bool = False) -> Path:
    """Draw `cm[true, pred]` as an annotated heatmap PNG (rows: reference, columns: prediction).

    Chinese label names use an installed CJK font when there is one (e.g. Debian's fonts-noto-cjk);
    without one, labels are drawn as their ids ("#0", "#1", ...) instead of empty boxes, and the
    title says so (the JSON report keeps the names).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise FromzeroError(f"confusion matrix of shape {cm.shape} does not match {len(labels)} labels; "
                            "pass a square matrix with one row per label")
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(labels)
    size = max(4.0, 0.6 * n + 2.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    family = _font_family()
    names = [str(x) for x in labels]
    if not _drawable(names, family):
        names = [f"#{i}" for i in range(n)]
        title = f"{title or 'confusion matrix'}\n(labels shown as ids: no installed font covers their characters)"
    with warnings.catch_warnings(), matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": family}):
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph .* missing.*")
        fig, ax = plt.subplots(figsize=(size, size * 0.85))
        im = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
        if n <= 30:
            top = values.max() if values.size else 0
            for i in range(n):
                for j in range(n):
                    text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if top and values[i, j] > top / 2 else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return path
