"""Training shards on disk: finding them in ``--data`` folders and writing one atomically.

Why one place: the data stage and the speedups stage write shards, and the imitation and speedups
stages read ``--data`` folders; all of them must agree on the order (folders as given, each sorted)
and on the error a folder without shards gets.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alpasim_policy.errors import ConfigError


def shard_files(data: Path | str | Sequence[Path | str]) -> list[Path]:
    """Every ``*.npz`` shard of the ``data`` folder(s), folders in the order given, each sorted."""
    folders = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    files: list[Path] = []
    for folder in folders:
        found = sorted(folder.glob("*.npz"))
        if not found:
            raise ConfigError(f"--data {folder}: no .npz shards (run `alpasim-policy train --stage data` first)")
        files += found
    return files


def write_shard(arrays: dict[str, np.ndarray], path: Path | str) -> Path:
    """``arrays`` as one compressed ``.npz`` at ``path``, written atomically (see ``alpasim_policy.io``)."""
    from alpasim_policy.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


__all__ = ["shard_files", "write_shard"]
