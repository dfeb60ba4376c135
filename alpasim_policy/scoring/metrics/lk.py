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
    run = np.zeros(exceed.shape[0], dtype=np.int64)
    fail = np.zeros(exceed.shape[0], dtype=bool)
    for t in range(exceed.shape[1]):
        run = np.where(skip[:, t], run, np.where(exceed[:, t], run + 1, 0))
        fail |= run >= need
    return np.where(fail, 0.0, 1.0)
