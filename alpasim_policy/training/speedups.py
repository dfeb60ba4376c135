"""Copycat counter-samples: the same frames, approached faster (``train --stage speedups``).

Why. A model that sees its own past motion learns to continue it (the *copycat* problem of
imitation learning). The fifth shipped checkpoint shows it plainly (training README, run 22):
on the US-101 crawl `ego427`, given the frames of the logged approach to a stopped lead, it says
"Stop ... the lead vehicle 2 m ahead is stopped" and plans 1 m in 3 s when its history says
0.5 m/s, and "Keep speed ... the lead vehicle 5 m ahead is keeping its speed" and plans 5.7 m
when the history says 1.9 m/s. The frames are the same; the history decided what it "saw". In
closed loop it keeps rolling at 1.9 m/s into the stopped car. The data teach this: in the logs a
car that rolls towards a queue has a queue that rolls too.

What. A copy of every shard sample whose CoC label names a stopped lead at most
``max_gap`` (:data:`MAX_GAP_M`) ahead while the ego moves at most :data:`MAX_SPEED_MPS`, with its frames,
command and CoC cause unchanged, but with a faster past and a target that brakes for the lead:

* a moving ego (``v >= STANDING_MPS``) whose label stands still within 3 s, at arc length ``D``
  along its path: the history is retimed to ``v' = v + U(0.6, 2.0)`` m/s (poses and speeds
  scaled by ``v'/v``: the same path, driven faster) and the target brakes at constant deceleration
  ``v'^2 / 2D`` along the label's own path to the same stop point, then follows the label's own
  motion from its stop (shifted in time). A deceleration above :data:`MAX_DECEL_MPS2` lowers
  ``v'`` to what that can stop; a draw is dropped if that leaves ``v' < v + 0.4``.
* a standing ego (a queue) more than 2.5 m behind the lead: a history arriving straight at
  ``v' = U(1, 3)`` m/s and a target braking straight to 2 m short of the lead (the idm expert's
  standstill gap), then the label's own motion from its start.

The CoC's longitudinal action becomes ``Stop``; its reason (the stopped lead and its gap, which the
frames show) stays. Frames and history now disagree about the ego's speed by design: the sample
says "whatever your past motion, this picture means stop". ``copies`` draws per sample, all from
one ``seed``-ed generator in shard order, so the same command writes the same shards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError

DT = 0.1
MAX_GAP_M = 10.0  # bumper gap in the CoC label (whole metres); --max-gap
MAX_SPEED_MPS = 2.5
STANDING_MPS = 0.4
MAX_DECEL_MPS2 = 4.0
STANDSTILL_GAP_M = 2.0
_STOPPED_LEAD = re.compile(r"lead vehicle (\d+) m ahead is stopped")
_LONGITUDINAL = re.compile(r"^(Keep speed|Accelerate|Decelerate|Stop)")


def stopped_lead_gap(coc: str) -> int | None:
    """The bumper gap (whole metres) to the stopped lead a CoC names, or None if it names none."""
    m = _STOPPED_LEAD.search(coc)
    return None if m is None else int(m.group(1))


def retime_history(history: np.ndarray, speed: float, new_speed: float) -> np.ndarray:
    """A rig-frame history (T, 3) x, y, heading (or (T, 4) with speed; last row = now, its dtype
    kept) driven at ``new_speed`` instead of ``speed``: the same path with positions (and speeds)
    scaled by ``new_speed / speed``; below :data:`STANDING_MPS` (no path to keep) a straight one."""
    h = np.array(history, copy=True)
    if speed < STANDING_MPS:
        h[:, 0] = -new_speed * DT * np.arange(len(h) - 1, -1, -1)
        h[:, 1] = 0
        h[:, 2] = 0
        if h.shape[1] > 3:
            h[:, 3] = new_speed
    else:
        r = new_speed / speed
        h[:, :2] *= r
        if h.shape[1] > 3:
            h[:, 3] *= r
    return h


def _arc_length(xy: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])


def speedup_copies(
    history: np.ndarray,
    target: np.ndarray,
    speed: float,
    coc: str,
    rng: np.random.Generator,
    copies: int = 2,
    max_gap: float = MAX_GAP_M,
) -> list[tuple[np.ndarray, np.ndarray, float, str]]:
    """The counter-samples of one shard sample: ``(history, target, speed, coc)`` per kept draw.

    ``history`` (16, 4) x, y, heading, speed and ``target`` (64, 3) in the rig frame (the shard's
    dtypes are kept); an empty list when the sample is not eligible (see the module doc). Draws
    are taken from ``rng`` only for eligible samples."""
    m = _STOPPED_LEAD.search(coc)
    v = float(speed)
    if m is None or int(m.group(1)) > max_gap or v > MAX_SPEED_MPS:
        return []
    tgt = np.array(target, copy=True)
    standing = v < STANDING_MPS
    if standing:  # a queue: the label waits; arrive at v' and stop short of the lead
        gap = float(m.group(1))
        if gap < STANDSTILL_GAP_M + 0.5:
            return []
        ks, stop_at = 0, gap - STANDSTILL_GAP_M
        tgt[:, 0] = np.maximum(tgt[:, 0], 0.0)
        pts = np.vstack([[0, 0], tgt[:, :2]])
        s = _arc_length(pts)
    else:
        pts = np.vstack([[0, 0], tgt[:, :2]])
        s = _arc_length(pts)  # s[k] at t = k * DT
        still = np.nonzero(np.diff(s)[:30] / DT < 0.1)[0]
        if len(still) == 0:
            return []
        ks = int(still[0])  # the label stands still from step ks
        stop_at = s[ks]
    out = []
    n = len(tgt)
    t = np.arange(1, n + 1) * DT
    for _ in range(copies):
        vn = float(rng.uniform(v + 0.6, v + 2.0)) if not standing else float(rng.uniform(1.0, 3.0))
        a = vn * vn / (2 * max(stop_at, 1e-3))
        if a > MAX_DECEL_MPS2:
            vn = float(np.sqrt(2 * MAX_DECEL_MPS2 * max(stop_at, 1e-3)))
            a = MAX_DECEL_MPS2
            if vn < v + 0.4:
                continue
        ts = vn / a  # the new stop time
        sn = np.where(t < ts, vn * t - 0.5 * a * t * t, stop_at)
        after = t >= ts  # from the stop on: the label's own motion from its stop, shifted in time
        k_orig = np.clip(np.round((t[after] - ts) / DT).astype(int) + ks, 0, n)
        if standing:
            sn[after] = stop_at + s[k_orig]
            x, y, head = sn.copy(), np.zeros_like(sn), np.zeros_like(sn)
        else:
            sn[after] = s[k_orig]
            x, y = np.interp(sn, s, pts[:, 0]), np.interp(sn, s, pts[:, 1])
            head = np.interp(sn, s, np.concatenate([[0.0], tgt[:, 2]]))
        new_target = np.stack([x, y, head], axis=1).astype(target.dtype)
        out.append((retime_history(history, v, vn), new_target, vn, _LONGITUDINAL.sub("Stop", coc)))
    return out


def build_speedups(
    data: Sequence[Path], out: Path, copies: int = 2, seed: int = 0, max_gap: float = MAX_GAP_M
) -> dict[str, Any]:
    """Write ``<out>/<shard>-spd.npz`` for every shard of the ``data`` folders (in order, each sorted)
    that has eligible samples, plus ``manifest.json``; returns the manifest."""
    from alpasim_policy.io import atomic_write_json
    from alpasim_policy.training.shards import shard_files, write_shard

    if copies < 1:
        raise ConfigError(f"--copies must be >= 1, got {copies}")
    folders = [Path(d) for d in data]
    files = shard_files(folders)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    eligible = written = 0
    shards = []
    for f in files:
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        missing = [
            k for k in ("images", "history", "speed", "target", "target_valid", "coc") if k not in arrays
        ]
        if missing:
            raise ConfigError(f"{f}: not a training shard (missing {', '.join(missing)})")
        n = len(arrays["coc"])
        rows: dict[str, list[Any]] = {k: [] for k, v in arrays.items() if v.ndim and len(v) == n}
        for i in range(n):
            if not arrays["target_valid"][i].all():
                continue
            made = speedup_copies(
                arrays["history"][i], arrays["target"][i], float(arrays["speed"][i]), str(arrays["coc"][i]), rng, copies,
                max_gap,
            )  # fmt: skip
            eligible += bool(made)
            for hist, target, vn, coc in made:
                for k in rows:
                    val = arrays[k][i]
                    if k == "target":
                        val = target
                    elif k == "history":
                        val = hist
                    elif k == "speed":
                        val = np.asarray(vn, dtype=arrays[k].dtype)
                    elif k == "coc":
                        val = coc
                    rows[k].append(val)
                written += 1
        if rows["coc"]:
            new = {k: np.array(v) if arrays[k].dtype.kind in "US" else np.stack(v) for k, v in rows.items()}
            new.update({k: v for k, v in arrays.items() if k not in rows})  # per-shard values (frame_stride)
            name, k = f.stem + "-spd.npz", 2
            while name in shards:  # two folders may hold a shard of the same name (DAgger rounds)
                name, k = f"{f.stem}-{k}-spd.npz", k + 1
            write_shard(new, out / name)
            shards.append(name)
    manifest = {
        "stage": "speedups",
        "data": [str(d) for d in folders],
        "copies": copies,
        "seed": seed,
        "max_gap_m": max_gap,
        "samples_with_copies": eligible,
        "samples_written": written,
        "shards": shards,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


__all__ = ["MAX_DECEL_MPS2", "MAX_GAP_M", "MAX_SPEED_MPS", "build_speedups", "retime_history", "speedup_copies", "stopped_lead_gap"]
