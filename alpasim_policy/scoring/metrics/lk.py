"""LK: lane keeping (NAVSIM v2 weighted metric, {0, 1}, weight 2).

The ego box centre's distance to the route centerline is checked at every scored state; LK is 0
once it exceeds 0.5 m for 2 s in a row (20 consecutive 0.1 s states). States inside an
intersection are skipped: they neither count nor break the run, as in NAVSIM.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.metrics._common import EgoGeometry

DEVIATION_LIMIT_M = 0.5
HORIZON_S = 2.0


def lateral_deviation(ego: EgoGeometry) -> np.ndarray:
    """(B, S) distance (m) of the box centre from the route centerline."""
    return ego.world.route_distance(ego.center.reshape(-1, 2)).reshape(ego.shape)


def lane_keeping(ego: EgoGeometry, dt: float = 0.1, deviation: np.ndarray | None = None) -> np.ndarray:
    """(B,) LK."""
    dev = lateral_deviation(ego) if deviation is None else deviation
    exceed = dev > DEVIATION_LIMIT_M
    skip = ego.areas["intersection"]
    need = int(np.ceil(HORIZON_S / dt - 1e-9))
    # the run at t = exceeding states since the last in-limit state (skipped states change nothing):
    # a cumulative count minus its value at the last reset, vectorised over time
    count = np.cumsum(exceed & ~skip, axis=1)
    t = np.arange(exceed.shape[1])
    last_reset = np.maximum.accumulate(np.where(~exceed & ~skip, t, -1), axis=1)
    base = np.where(last_reset >= 0, np.take_along_axis(count, np.maximum(last_reset, 0), axis=1), 0)
    fail = ((count - base) >= need).any(axis=1)
    return np.where(fail, 0.0, 1.0)
