"""What every leaderboard / scenes.csv column means, and how results are sorted and formatted.

Why a module of its own: the Markdown/CSV leaderboard (``scoring/report.py``) and the HTML report
(``alpasim_policy.report``) print the same legend and the same ranking, and a column added by the
scorer later must not break either. Unknown columns get a generic description instead of an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# The leaderboard is ranked by the first of these columns a run has (higher is better).
MAIN_SCORE_CANDIDATES = ("EPDMS", "PDMS", "alpasim_score")

COLUMN_HELP: dict[str, str] = {
    "policy": "policy name as given to eval",
    "scene_id": "scene identifier",
    "scenes": "number of scenes scored",
    "profile": "scoring profile the numbers were computed with",
    "scoring_profile": "scoring profile the numbers were computed with",
    "NC": "no at-fault collision (0, 0.5 static object, 1); multiplier",
    "DAC": "drivable-area compliance: box stays on the road (0/1); multiplier",
    "DDC": "driving-direction compliance: no driving against traffic (0, 0.5, 1); multiplier",
    "TLC": "traffic-light compliance: no red-light crossing (0/1); multiplier",
    "EP": "ego progress along the route relative to the reference (0..1)",
    "TTC": "time-to-collision stays above 0.9 s (0/1, window mean)",
    "C": "comfort: acceleration, jerk and yaw within nuPlan bounds (0/1)",
    "HC": "history comfort: C including the logged 1.5 s before the first plan (0/1)",
    "LK": "lane keeping: never > 0.5 m off the centerline for 2 s (0/1)",
    "EC": "extended comfort: consecutive plans agree (0/1)",
    "PDMS": "NAVSIM v1 score = NC*DAC*(5 TTC + 5 EP + 2 C)/12",
    "EPDMS": "NAVSIM v2 score = NC*DAC*DDC*TLC*(5 EP + 5 TTC + 2 LK + 2 HC + 2 EC)/16",
    "collisions_per_km": "at-fault collisions per kilometre driven",
    "latency_p50_ms": "median wall time of one policy call (ms)",
    "latency_p95_ms": "95th percentile policy-call wall time (ms)",
    "latency_max_ms": "slowest policy call (ms)",
    "deadline_miss_rate": "fraction of ticks whose plan came after the deadline (previous plan kept)",
    "alpasim_score": "AlpaSim scene score: 0 after at-fault collision / off-road / leaving the 4 m corridor, "
    "else progress/0.8 capped at 1",
    "progress_ratio": "distance driven along the logged path / its length",
    "offroad_rate": "fraction of scenes where the ego left the drivable area",
    "policy_failure_rate": "fraction of ticks where the policy raised or returned an invalid plan",
    "reasoning_consistency": "fraction of ticks whose plan does the meta-action its chain of causation states "
    "(nan: the policy never states one in the CoC vocabulary)",
    "failure_rate": "fraction of ticks where the policy raised or returned an invalid plan",
    "windows": "4 s scoring windows in the rollout",
    "collision_front": "front-bumper collisions (AlpaSim split)",
    "collision_rear": "rear collisions",
    "collision_lateral": "side collisions",
    "collision_at_fault": "an at-fault collision happened (NAVSIM rules)",
    "collisions_at_fault_count": "distinct agents hit at fault",
    "offroad": "the ego left the drivable area (0/1)",
    "distance_km": "distance driven (km)",
    "dist_to_log_max_m": "largest distance from the logged ego position (m)",
    "dist_to_log_mean_m": "mean distance from the logged ego position (m)",
    "lateral_dist_to_log_max_m": "largest lateral distance from the logged path (m)",
    "left_corridor": "the ego left the 4 m corridor around the logged path (0/1)",
    "plan_deviation_m": "mean distance between consecutive plans (m)",
    "min_ade_m": "best-of-K sample ADE against the logged future (m)",
    "scene_score": "AlpaSim scene score (see alpasim_score)",
    "policy_failures": "ticks with a policy failure",
    "ticks": "controlled ticks (policy calls)",
    "deadline_misses": "ticks whose plan missed the deadline",
}


def describe(column: str) -> str:
    """The legend text of a column (a generic one for columns this module does not know yet)."""
    if column in COLUMN_HELP:
        return COLUMN_HELP[column]
    if column.endswith("_ms"):
        return f"{column[:-3].replace('_', ' ')} (ms)"
    if column.endswith("_rate"):
        return f"{column[:-5].replace('_', ' ')}: fraction of ticks or scenes"
    return column.replace("_", " ")


def main_score(columns: Iterable[str]) -> str | None:
    """The column the leaderboard is ranked by: the first of :data:`MAIN_SCORE_CANDIDATES` present."""
    cols = set(columns)
    return next((c for c in MAIN_SCORE_CANDIDATES if c in cols), None)


def _as_float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def sort_rows(rows: list[dict], column: str | None) -> list[dict]:
    """Rows ranked by ``column`` (descending; NaN / missing last; ties keep their given order)."""
    if column is None:
        return list(rows)

    def key(ir: tuple[int, dict]) -> tuple[int, float, int]:
        f = _as_float(ir[1].get(column))
        return (1, 0.0, ir[0]) if math.isnan(f) else (0, -f, ir[0])

    return [r for _, r in sorted(enumerate(rows), key=key)]


def fmt(column: str, v) -> str:
    """A cell as people read it: scores and rates to 3 decimals, milliseconds to 1, counts as integers."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if column.endswith("_ms") or column.endswith("_s") or column.endswith("_km") or abs(v) >= 1000:
            return f"{v:.1f}" if not column.endswith("_km") else f"{v:.3f}"
        return f"{v:.3f}"
    return str(v)


def legend_line(columns: Iterable[str]) -> str:
    """One line naming every column: ``col: meaning; col: meaning; ...``."""
    return "; ".join(f"{c}: {describe(c)}" for c in columns)
