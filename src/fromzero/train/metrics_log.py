"""Training metrics as JSON Lines: one event per line, readable by `pandas.read_json(lines=True)`.

Each line is a flat object such as {"event": "train", "step": 100, "loss": 3.21, "lr": 6e-4, ...}
or {"event": "eval", "step": 200, "val_loss": 3.4, "val_ppl": 30.0}. The same scalars also go to
TensorBoard when it is installed. On resume the file is continued, after dropping the lines past the
checkpoint's step (they were written after the last save and are about to be redone).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """Plain JSON values; NaN/inf become null (JSON has no NaN)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All events of a metrics file (missing file -> []; a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return records


class MetricsLog:
    """Append-only JSONL writer (+ TensorBoard scalars if `tensorboard` is importable)."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")  # a fresh run starts a fresh log
        else:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step)
            except Exception:  # tensorboard not installed: JSONL only
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in read_metrics(self.path) if not isinstance(r.get("step"), int) or r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, event: str, step: int, **values: Any) -> dict[str, Any]:
        """Write one line; returns the record as written."""
        record = {"event": event, "step": step, **{k: _clean(v) for k, v in values.items()}, "time": time.time()}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("event", "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{event}/{k}", v, step)
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
