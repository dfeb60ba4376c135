"""Score every rollout of a run directory and write the leaderboard.

``score_run(run_dir)`` reads ``run_dir/rollouts/<policy>/<scene_id>.npz`` (the
:class:`~alpasim_policy.sim.rollout.Rollout` records ``eval`` writes), scores each closed-loop
(:mod:`alpasim_policy.scoring.closedloop`) plus the AlpaSim-style metrics
(:mod:`alpasim_policy.scoring.alpasim_metrics`), and writes, atomically:

* ``run_dir/scenes.csv``: one row per policy x scene with every sub-metric;
* ``run_dir/leaderboard.csv`` and ``run_dir/leaderboard.md``: one row per policy with
  ``policy, scenes, NC, DAC, DDC, TLC, EP, TTC, C, HC, LK, EC, PDMS, EPDMS, collisions_per_km,
  latency_p50_ms, latency_p95_ms, latency_max_ms, deadline_miss_rate`` and then AlpaSim's
  ``alpasim_score``, ``progress_ratio``, ``offroad_rate``, ``policy_failure_rate`` and
  ``reasoning_consistency``.

Aggregation: scene scores first, then the equal-weight mean over the policy's scenes.
``collisions_per_km`` = at-fault collisions (distinct agents, NAVSIM's rules) summed over the
policy's scenes / kilometres it drove there. Latency percentiles pool every tick at which the
policy was asked for a plan (the ``latency_s`` array of each rollout); ``deadline_miss_rate`` is
the fraction of those ticks whose ``deadline_miss`` is set (a late plan replaced by the previous one, not a
failure); ``policy_failure_rate`` the fraction whose policy gave no valid plan (exception, NaN,
wrong shape, too few rows). ``reasoning_consistency`` pools the ticks whose chain of causation
states a meta-action in the CoC vocabulary (:mod:`alpasim_policy.scoring.reasoning`) and gives the
fraction whose plan performs it (NaN for a policy that never states one). Closed-loop windows that start at a failed tick score 0
(:mod:`alpasim_policy.scoring.closedloop`); ``scenes.csv`` counts them in ``failed_windows``.

Metric caches: ``cache_dir="auto"`` uses the package's ``metric_cache/`` when it holds a fresh
cache of a scene (scene hash, reference name and version match) and otherwise builds the
scene's scoring world in memory (with a log note when the scene changed); an explicit ``cache_dir`` is strict (stale or corrupt ->
:class:`~alpasim_policy.errors.CacheError`, unless ``rebuild=True``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alpasim_policy.errors import AlpasimError, CacheError
from alpasim_policy.io import atomic_write_text
from alpasim_policy.resources import data_dir
from alpasim_policy.scoring import columns as _columns
from alpasim_policy.scoring.profiles import DEFAULT_PROFILE

LEADERBOARD_COLUMNS = (
    "policy", "scenes", "NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS",
    "collisions_per_km", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate",
    "alpasim_score", "progress_ratio", "offroad_rate", "policy_failure_rate", "reasoning_consistency",
)  # fmt: skip
SCENE_COLUMNS = (
    "policy", "scene_id", "NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS",
    "windows", "failed_windows", "collision_front", "collision_rear", "collision_lateral", "collision_at_fault",
    "collisions_at_fault_count", "offroad", "distance_km", "progress_ratio", "dist_to_log_max_m",
    "dist_to_log_mean_m", "lateral_dist_to_log_max_m", "left_corridor", "plan_deviation_m", "min_ade_m",
    "scene_score", "valid_plan_share", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate",
    "policy_failures", "ticks", "reasoning_consistency",
)  # fmt: skip
# every output names the scoring profile it was computed with (scoring/profiles.py)
LEADERBOARD_COLUMNS = LEADERBOARD_COLUMNS + ("profile",)
SCENE_COLUMNS = SCENE_COLUMNS + ("profile",)
_MEAN_KEYS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS")
log = logging.getLogger(__name__)
#: the metric caches of the bundled scenes, shipped with the package
DEFAULT_CACHE_DIR = data_dir("metric_cache")


@dataclass
class Leaderboard:
    rows: list[dict]  # one per policy, LEADERBOARD_COLUMNS
    scene_rows: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    errors: list[str] = field(default_factory=list)  # rollout files that could not be scored, why

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


def cache_check(scene, cache_dir="auto", rebuild: bool = False, reference=None) -> tuple[bool, str | None]:
    """Whether the scorer can score ``scene`` with ``cache_dir``, before any rollout is made.

    Returns ``(usable, note)``. ``"auto"``: a corrupt, stale or other-reference cache in the
    package's ``metric_cache/`` is only a note (the scorer builds the world in memory). An explicit
    ``cache_dir`` is strict, as in scoring: a stale or corrupt cache, or one made by another
    reference than ``reference``, makes the scene unusable (unless ``rebuild``); a missing one is
    built when scoring. ``None``: always usable.
    """
    from alpasim_policy.scoring.cache import cache_path, read_world

    if cache_dir is None:
        return True, None
    auto = cache_dir == "auto"
    path = cache_path(DEFAULT_CACHE_DIR if auto else cache_dir, scene.scene_id)
    if not path.is_file():
        return True, None
    try:
        read_world(path, scene.content_hash, reference)
    except CacheError as e:
        if auto or rebuild:
            return True, f"{e} -- scoring will build the world from the scene instead"
        return False, str(e)
    return True, None


def _world_for(
    scene_id: str, cache_dir, rebuild: bool, memo: dict, scene_path: str | Path | None = None, reference=None
):
    if scene_id in memo:
        return memo[scene_id]
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene
    from alpasim_policy.scoring.cache import build_world, cache_path, load_world, read_world

    scene = load_scene(scene_path if scene_path is not None else find_scene(scene_id))
    if cache_dir == "auto":
        path = cache_path(DEFAULT_CACHE_DIR, scene.scene_id)
        world = None
        if path.is_file():
            try:
                # a cache made by another reference (or version of it) is not used in its place
                world = read_world(path, scene.content_hash, reference)
            except CacheError as e:
                log.warning("%s -- scoring from the scene instead", e)
        if world is None:
            world = build_world(scene, reference).prepare()
    elif cache_dir is None:
        world = build_world(scene, reference).prepare()
    else:
        world = load_world(scene, cache_dir, rebuild=rebuild, reference=reference)
    memo[scene_id] = (scene, world)
    return memo[scene_id]


def score_rollout_file(
    path: Path,
    cache_dir="auto",
    rebuild: bool = False,
    memo: dict | None = None,
    scene_path: str | Path | None = None,
    reference=None,
    profile: str | None = None,
) -> dict:
    """One scenes.csv row for one rollout file (``scene_path``: the scene file when it is not a
    scene id under the scenarios root, e.g. an imported scene ``eval --scenes`` ran;
    ``reference`` as in :func:`score_run`)."""
    from alpasim_policy.scoring.alpasim_metrics import rollout_metrics
    from alpasim_policy.scoring.closedloop import score_rollout
    from alpasim_policy.scoring.reasoning import rollout_consistency
    from alpasim_policy.sim.rollout import Rollout

    ro = Rollout.load(path)
    scene, world = _world_for(
        ro.scene_id, cache_dir, rebuild, {} if memo is None else memo, scene_path, reference
    )
    if ro.scene_hash and scene.content_hash and ro.scene_hash != scene.content_hash:
        log.warning("%s: rollout was made on another version of scene %s", path, ro.scene_id)
    try:
        res = score_rollout(world, ro, profile=profile)
    except ValueError as e:
        raise AlpasimError(f"{path}: cannot score rollout: {e}") from e
    controlled = np.asarray(ro.controlled, bool)
    first = max(int(np.argmax(controlled)) - 1, 0)
    # the ticks the policy was asked for a plan: the state before each controlled state (the
    # last controlled state is where the log ends, no plan is made there)
    acted = np.zeros(len(controlled), bool)
    acted[:-1] = controlled[1:]
    row: dict = {"policy": ro.policy, "scene_id": ro.scene_id}
    row.update(res.metrics)
    row["profile"] = getattr(res, "profile", DEFAULT_PROFILE)
    row.update(rollout_metrics(world, ro, first, res.contacts))
    row.update(_latency(ro.latency_s, ro.deadline_miss, acted))
    pf = np.asarray(ro.policy_failure, bool) if ro.policy_failure is not None else np.zeros(len(acted), bool)
    row["policy_failures"] = int(pf[acted].sum())
    row["ticks"] = int(acted.sum())
    row["_latency"] = np.asarray(ro.latency_s, float)[acted] if ro.latency_s is not None else np.zeros(0)
    row["_miss"] = (
        np.asarray(ro.deadline_miss, bool)[acted]
        if ro.deadline_miss is not None
        else np.zeros(int(acted.sum()), bool)
    )
    row["_failures"] = pf[acted]
    consistent, rated = rollout_consistency(ro.plans, ro.ego_state, list(ro.reasoning))
    row["reasoning_consistency"] = consistent / rated if rated else float("nan")
    row["_coc"] = (consistent, rated)
    return row


def aggregate(scene_rows: list[dict]) -> list[dict]:
    """Leaderboard rows (one per policy, in first-seen order) from scenes.csv rows."""
    policies: dict[str, list[dict]] = {}
    for r in scene_rows:
        policies.setdefault(r["policy"], []).append(r)
    out = []
    for pol, rows in policies.items():
        lb: dict = {"policy": pol, "scenes": len(rows)}
        lb["profile"] = "/".join(sorted({str(r.get("profile", DEFAULT_PROFILE)) for r in rows}))
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
        coc = np.array([r.get("_coc", (0, 0)) for r in rows]).reshape(-1, 2).sum(axis=0)
        lb["reasoning_consistency"] = float(coc[0] / coc[1]) if coc[1] else float("nan")
        out.append(lb)
    return out


def _run_meta(run_dir: Path) -> dict:
    import json

    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _policy_order(run_dir: Path, files: list[Path]) -> list[str]:
    """The order policies were given to ``eval`` (``run.json``), else alphabetical."""
    names = list(dict.fromkeys(f.parent.name for f in files))
    try:
        listed = _run_meta(run_dir).get("policies", [])
        listed = [p if isinstance(p, str) else p.get("name") for p in listed]
    except AttributeError:
        listed = []
    return [p for p in listed if p in names] + [p for p in names if p not in listed]


def score_run(
    run_dir: str | Path,
    cache_dir: str | Path | None = "auto",
    rebuild: bool = False,
    reference=None,
    profile: str | None = None,
) -> Leaderboard:
    """Score ``run_dir/rollouts/*/*.npz``, write scenes.csv and the leaderboard; return it (printable).

    Scene files come from ``run.json``'s ``scene_files`` (scene id -> path, written by ``eval``),
    else from the scene id under the scenarios root. A rollout that cannot be scored (its scene
    file gone, a strict cache stale, ...) is reported in ``Leaderboard.errors`` and left out; the
    leaderboard is written for the rest (an error only when nothing could be scored).

    ``reference``: the EP progress reference (a
    :class:`~alpasim_policy.scoring.cache.ReferencePlanner`, handed in by the runner, usually
    :data:`alpasim_policy.caching.IDM_REFERENCE`); caches made by another one are not used, and
    scenes without a usable cache are scored with it. None: the human log. ``profile``: the
    scoring profile (default ``project``; ``navsim`` reproduces NAVSIM's scorer), named in every
    output's ``profile`` column.
    """
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scoring.profiles import get_profile

    try:
        get_profile(profile)  # an unknown profile is the caller's error, before any rollout is read
    except ValueError as e:
        raise ConfigError(f"scoring 'profile': {e}") from e
    run_dir = Path(run_dir)
    root = run_dir / "rollouts"
    files = sorted(root.glob("*/*.npz")) if root.is_dir() else []
    if not files:
        raise AlpasimError(f"{root}: no rollouts to score (expected rollouts/<policy>/<scene_id>.npz)")
    scene_files = _run_meta(run_dir).get("scene_files") or {}
    if not isinstance(scene_files, dict):
        scene_files = {}
    # one scene at a time, so only one scene's scoring world (map rasters, caches) is in memory
    scene_rows, errors = [], []
    memo: dict = {}
    for f in sorted(files, key=lambda p: (p.stem, p.parent.name)):
        if f.stem not in memo:
            memo.clear()
        try:
            scene_rows.append(
                score_rollout_file(f, cache_dir, rebuild, memo, scene_files.get(f.stem), reference, profile)
            )
        except AlpasimError as e:
            errors.append(f"{f}: {e}")
            log.error("cannot score %s: %s", f, e)
    if not scene_rows:
        raise AlpasimError(f"{root}: no rollout could be scored:\n" + "\n".join(errors))
    order = {pol: i for i, pol in enumerate(_policy_order(run_dir, files))}
    scene_rows.sort(key=lambda r: (order.get(r["policy"], len(order)), r["scene_id"]))
    board = Leaderboard(rows=aggregate(scene_rows), scene_rows=scene_rows, run_dir=run_dir, errors=errors)
    atomic_write_text(run_dir / "scenes.csv", _csv(scene_rows, SCENE_COLUMNS))
    ranked = _columns.sort_rows(board.rows, _columns.main_score(LEADERBOARD_COLUMNS))
    atomic_write_text(run_dir / "leaderboard.csv", _csv(ranked, LEADERBOARD_COLUMNS, _columns.fmt))
    note = (
        f"\n**{len(errors)} rollout(s) could not be scored** and are left out:\n\n"
        + "".join(f"* {e}\n" for e in errors)
        if errors
        else ""
    )
    atomic_write_text(
        run_dir / "leaderboard.md",
        f"# Leaderboard: {run_dir.name}\n\nClosed-loop NAVSIM-style scores (see "
        "alpasim_policy/scoring/README.md); scene scores averaged with equal weight.\n\n"
        + board.to_markdown()
        + note,
    )
    return board
