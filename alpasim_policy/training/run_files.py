"""The files every training stage keeps in its run folder: the checkpoint, ``log.csv``, a figure.

Why one place: the imitation and RL stages both resume from ``RUN/checkpoint`` and their logs, so
both need the same guarantees (a checkpoint is swapped in whole, never half-written; the log is
rewritten atomically and read back up to the resumed step). Each stage keeps its own fields,
state and plots.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alpasim_policy.io import atomic_write_bytes, atomic_write_json, atomic_write_text

RAW_WEIGHTS = "training_weights.safetensors"


def save_checkpoint(
    model: Any, opt: torch.optim.Optimizer, out: Path, state: dict[str, Any], raw: Any | None = None
) -> Path:
    """``out/checkpoint/`` (``save_pretrained`` + ``optimizer.pt`` + ``training_state.json`` with
    ``state``), written to a temporary folder and then renamed over the previous one.

    ``raw``: the module the optimizer updates, when ``model`` is another set of weights (an
    average of them): its weights go to ``RAW_WEIGHTS`` beside them so a resumed run continues
    from the weights it was training, not from their average."""
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if raw is not None:
        from safetensors.torch import save_model

        save_model(raw, str(tmp / RAW_WEIGHTS))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    atomic_write_bytes(tmp / "optimizer.pt", buf.getvalue())
    atomic_write_json(tmp / "training_state.json", state)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def write_csv_log(rows: Sequence[dict[str, Any]], fields: Sequence[str], path: Path) -> None:
    """``rows`` (only ``fields``, in that order) as a CSV file, atomically; a field a row lacks (a
    log resumed from an older version) is left empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields))
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    atomic_write_text(path, buf.getvalue())


def read_csv_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The rows of a log written by :func:`write_csv_log` with ``step <= upto`` (resume); empty
    fields read as NaN."""
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [
            {k: int(v) if k == "step" else float(v or "nan") for k, v in r.items()} for r in csv.DictReader(f)
        ]
    return [r for r in rows if r["step"] <= upto]


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG, atomically, and closed."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
