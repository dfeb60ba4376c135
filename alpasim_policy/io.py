"""Small I/O helpers shared by every stage: atomic writes and deterministic archives.

Why: results must never be half-written (an interrupted run resumes from what is on
disk), and re-running an importer must give byte-identical files, which ``np.savez``
does not (it stamps the current time into the zip).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# A fixed timestamp for zip members: makes archives reproducible byte for byte.
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; results are ordinary files, so honour the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def pack_archive(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise named arrays (+ an optional JSON document) into a deterministic zip.

    Members are ``<name>.npy`` (numpy's own format, so ``np.load`` can read them too)
    and ``meta.json``. Names may contain ``/`` to group fields (``agents/state``).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        if meta is not None:
            info = zipfile.ZipInfo("meta.json", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, json.dumps(meta, sort_keys=True, separators=(",", ":")))
        for name in sorted(arrays):
            arr = np.ascontiguousarray(arrays[name])
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def unpack_archive(data: bytes | str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Inverse of :func:`pack_archive`. Raises ``zipfile.BadZipFile`` / ``ValueError`` on corruption."""
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    arrays: dict[str, np.ndarray] = {}
    meta = None
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            raw = zf.read(name)
            if name == "meta.json":
                meta = json.loads(raw.decode("utf-8"))
            elif name.endswith(".npy"):
                arrays[name[:-4]] = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    return arrays, meta
