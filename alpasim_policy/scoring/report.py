"""Score every rollout of a run directory and write the leaderboard.

``score_run(run_dir)`` reads ``run_dir/rollouts/<policy>/<scene_id>.npz`` (the
:class:`~alpasim_policy.sim.rollout.Rollout` records ``eval`` writes), scores each closed-loop
(:mod:`alpasim_policy.scoring.closedloop`) plus the AlpaSim-style metrics
(:mod:`alpasim_policy.scoring.alpasim_metrics`), and writes, atomically:

* ``run_dir/scenes.csv``: one row per policy x scene with every sub-metric;
* ``run_dir/leaderboard.csv`` and ``run_dir/leaderboard.md``: one row per policy with
  ``policy, scenes, NC, DAC, DDC, TLC, EP, TTC, C, HC, LK, EC, PDMS, EPDMS, collisions_per_km,
  latency_p50_ms, latency_p95_ms, latency_max_ms, deadline_miss_rate`` and then AlpaSim's
  ``alpasim_score``, ``progress_ratio``, ``offroad_rate``, ``policy_failure_rate``.

Aggregation: scene scores first, then the equal-weight mean over the policy's scenes.
``collisions_per_km`` = at-fault collisions (distinct agents, NAVSIM's rules) summed over the
policy's scenes / kilometres it drove there. Latency percentiles pool every controlled tick of
the policy (the ``latency_s`` array of each rollout); ``deadline_miss_rate`` is the fraction of
those ticks whose ``deadline_miss`` is set.

Metric caches: ``cache_dir="auto"`` uses the package's ``metric_cache/`` when it holds a fresh
cache of a scene (scene hash and idm-reference code fingerprint match) and otherwise builds the
scene's scoring world in memory (with a note on stderr when the scene changed); an explicit ``cache_dir`` is strict (stale or corrupt ->
:class:`~alpasim_policy.errors.CacheError`, unless ``rebuild=True``).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alpasim_policy.errors import AlpasimError, CacheError
from alpasim_policy.io import atomic_write_text
from alpasim_policy.scoring import columns as _columns

LEADERBOARD_COLUMNS = (
    "policy", "scenes", "NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS",
    "collisions_per_km", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate",
    "alpasim_score", "progress_ratio", "offroad_rate", "policy_failure_rate",
)  # fmt: skip
SCENE_COLUMNS = (
    "policy", "scene_id", "NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS",
    "windows", "collision_front", "collision_rear", "collision_lateral", "collision_at_fault",
    "collisions_at_fault_count", "offroad", "distance_km", "progress_ratio", "dist_to_log_max_m",
    "dist_to_log_mean_m", "lateral_dist_to_log_max_m", "left_corridor", "plan_deviation_m", "min_ade_m",
    "scene_score", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate",
    "policy_failures", "ticks",
)  # fmt: skip
_MEAN_KEYS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS")
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / "metric_cache"


@dataclass
class Leaderboard:
    rows: list[dict]  # one per policy, LEADERBOARD_COLUMNS
    scene_rows: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    def to_markdown(self) -> str:
        """The table ranked by the main score (scores to 3 decimals, ms to 1), then a legend line."""
        cols = LEADERBOARD_COLUMNS
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in _columns.sort_rows(self.rows, _columns.main_score(cols)):
            lines.append("| " + " | ".join(_columns.fmt(c, r.get(c)) for c in cols) + " |")
        lines += ["", f"Ranked by {_columns.main_score(cols)}. Legend: {_columns.legend_line(cols)}."]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def by_policy(self) -> dict[str, dict]:
        return {r["policy"]: r for r in self.rows}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _csv(rows: list[dict], cols: tuple[str, ...], fmt=None) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: fmt(c, r.get(c)) if fmt else _fmt(r.get(c)) for c in cols})
    return buf.getvalue()


def _latency(lat: np.ndarray | None, miss: np.ndarray | None, controlled: np.ndarray) -> dict[str, float]:
    n = int(controlled.sum())
    out = {"latency_p50_ms": np.nan, "latency_p95_ms": np.nan, "latency_max_ms": np.nan}
    if lat is not None:
        v = np.asarray(lat, float)[controlled]
        v = v[np.isfinite(v)]
        if len(v):
            out = {
                "latency_p50_ms": float(np.percentile(v, 50) * 1e3),
                "latency_p95_ms": float(np.percentile(v, 95) * 1e3),
                "latency_max_ms": float(v.max() * 1e3),
            }
    out["deadline_miss_rate"] = (
        float(np.asarray(miss, bool)[controlled].mean()) if miss is not None and n else 0.0
    )
    return out


def _world_for(scene_id: str, cache_dir, rebuild: bool, memo: dict):
    if scene_id in memo:
        return memo[scene_id]
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene
    from alpasim_policy.scoring.cache import (
        build_world,
        cache_path,
        load_world,
        read_world,
        reference_fingerprint,
    )

    scene = load_scene(find_scene(scene_id))
    if cache_dir == "auto":
        path = cache_path(DEFAULT_CACHE_DIR, scene.scene_id)
        world = None
        if path.is_file():
            try:
                world = read_world(path, scene.content_hash)
            except CacheError as e:
                print(f"note: {e} -- scoring from the scene instead", file=sys.stderr)
            if world is not None and world.reference_name == "idm":
                if world.extra.get("reference_fingerprint") != reference_fingerprint():
                    # the env or idm changed since the cache was built: its idm rollout is outdated
                    world = None
        if world is None:
            world = build_world(scene).prepare()
    elif cache_dir is None:
        world = build_world(scene).prepare()
    else:
        world = load_world(scene, cache_dir, rebuild=rebuild)
    memo[scene_id] = (scene, world)
    return memo[scene_id]


def score_rollout_file(path: Path, cache_dir="auto", rebuild: bool = False, memo: dict | None = None) -> dict:
    """One scenes.csv row for one rollout file."""
    from alpasim_policy.scoring.alpasim_metrics import rollout_metrics
    from alpasim_policy.scoring.closedloop import score_rollout
    from alpasim_policy.sim.rollout import Rollout

    ro = Rollout.load(path)
    scene, world = _world_for(ro.scene_id, cache_dir, rebuild, {} if memo is None else memo)
    if ro.scene_hash and scene.content_hash and ro.scene_hash != scene.content_hash:
        print(f"note: {path}: rollout was made on another version of scene {ro.scene_id}", file=sys.stderr)
    try:
        res = score_rollout(world, ro)
    except ValueError as e:
        raise AlpasimError(f"{path}: cannot score rollout: {e}") from e
    controlled = np.asarray(ro.controlled, bool)
    first = max(int(np.argmax(controlled)) - 1, 0)
    row: dict = {"policy": ro.policy, "scene_id": ro.scene_id}
    row.update(res.metrics)
    row.update(rollout_metrics(world, ro, first, res.contacts))
    row.update(_latency(ro.latency_s, ro.deadline_miss, controlled))
    pf = (
        np.asarray(ro.policy_failure, bool)
        if ro.policy_failure is not None
        else np.zeros(len(controlled), bool)
    )
    row["policy_failures"] = int(pf[controlled].sum())
    row["ticks"] = int(controlled.sum())
    row["_latency"] = np.asarray(ro.latency_s, float)[controlled] if ro.latency_s is not None else np.zeros(0)
    row["_miss"] = (
        np.asarray(ro.deadline_miss, bool)[controlled]
        if ro.deadline_miss is not None
        else np.zeros(int(controlled.sum()), bool)
    )
    row["_failures"] = pf[controlled]
    return row


def aggregate(scene_rows: list[dict]) -> list[dict]:
    """Leaderboard rows (one per policy, in first-seen order) from scenes.csv rows."""
    policies: dict[str, list[dict]] = {}
    for r in scene_rows:
        policies.setdefault(r["policy"], []).append(r)
    out = []
    for pol, rows in policies.items():
        lb: dict = {"policy": pol, "scenes": len(rows)}
        for k in _MEAN_KEYS:
            lb[k] = float(np.nanmean([r[k] for r in rows]))
        km = sum(r["distance_km"] for r in rows)
        coll = sum(r["collisions_at_fault_count"] for r in rows)
        lb["collisions_per_km"] = float(coll / km) if km > 0 else (0.0 if coll == 0 else float("inf"))
        lat = np.concatenate([r.get("_latency", np.zeros(0)) for r in rows])
        lat = lat[np.isfinite(lat)]
        miss = np.concatenate([r.get("_miss", np.zeros(0, bool)) for r in rows])
        fails = np.concatenate([r.get("_failures", np.zeros(0, bool)) for r in rows])
        lb["latency_p50_ms"] = float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan")
        lb["latency_p95_ms"] = float(np.percentile(lat, 95) * 1e3) if len(lat) else float("nan")
        lb["latency_max_ms"] = float(lat.max() * 1e3) if len(lat) else float("nan")
        lb["deadline_miss_rate"] = float(miss.mean()) if len(miss) else 0.0
        lb["policy_failure_rate"] = float(fails.mean()) if len(fails) else 0.0
        lb["alpasim_score"] = float(np.mean([r["scene_score"] for r in rows]))
        lb["progress_ratio"] = float(np.mean([r["progress_ratio"] for r in rows]))
        lb["offroad_rate"] = float(np.mean([r["offroad"] for r in rows]))
        out.append(lb)
    return out


def _policy_order(run_dir: Path, files: list[Path]) -> list[str]:
    """The order policies were given to ``eval`` (``run.json``), else alphabetical."""
    import json

    names = list(dict.fromkeys(f.parent.name for f in files))
    try:
        listed = json.loads((run_dir / "run.json").read_text()).get("policies", [])
        listed = [p if isinstance(p, str) else p.get("name") for p in listed]
    except (OSError, ValueError, AttributeError):
        listed = []
    return [p for p in listed if p in names] + [p for p in names if p not in listed]


def score_run(
    run_dir: str | Path, cache_dir: str | Path | None = "auto", rebuild: bool = False
) -> Leaderboard:
    """Score ``run_dir/rollouts/*/*.npz``, write scenes.csv and the leaderboard; return it (printable)."""
    run_dir = Path(run_dir)
    root = run_dir / "rollouts"
    files = sorted(root.glob("*/*.npz")) if root.is_dir() else []
    if not files:
        raise AlpasimError(f"{root}: no rollouts to score (expected rollouts/<policy>/<scene_id>.npz)")
    # one scene at a time, so only one scene's scoring world (map rasters, caches) is in memory
    scene_rows = []
    memo: dict = {}
    for f in sorted(files, key=lambda p: (p.stem, p.parent.name)):
        if f.stem not in memo:
            memo.clear()
        scene_rows.append(score_rollout_file(f, cache_dir, rebuild, memo))
    order = {pol: i for i, pol in enumerate(_policy_order(run_dir, files))}
    scene_rows.sort(key=lambda r: (order.get(r["policy"], len(order)), r["scene_id"]))
    board = Leaderboard(rows=aggregate(scene_rows), scene_rows=scene_rows, run_dir=run_dir)
    atomic_write_text(run_dir / "scenes.csv", _csv(scene_rows, SCENE_COLUMNS))
    ranked = _columns.sort_rows(board.rows, _columns.main_score(LEADERBOARD_COLUMNS))
    atomic_write_text(run_dir / "leaderboard.csv", _csv(ranked, LEADERBOARD_COLUMNS, _columns.fmt))
    atomic_write_text(
        run_dir / "leaderboard.md",
        f"# Leaderboard: {run_dir.name}\n\nClosed-loop NAVSIM-style scores (see "
        "alpasim_policy/scoring/README.md); scene scores averaged with equal weight.\n\n"
        + board.to_markdown(),
    )
    return board
