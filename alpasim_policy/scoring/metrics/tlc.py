"""TLC: traffic-light compliance (NAVSIM v2 multiplier, {0, 1}).

0 when the ego box touches the polygon of a light that is red at that step (see
:mod:`alpasim_policy.scoring.world` for how a red light's polygon is built from its stop line).
"""

from __future__ import annotations

import numpy as np
import shapely

from alpasim_policy.scoring.metrics._common import AgentWindow, EgoGeometry


def traffic_light_compliance(ego: EgoGeometry, win: AgentWindow) -> np.ndarray:
    """(B,) TLC."""
    B, S = ego.shape
    out = np.ones(B)
    if not len(win.red_polygons) or not win.red.any():
        return out
    cxy = shapely.get_coordinates(shapely.centroid(win.red_polygons))  # (K, 2)
    # broad phase: centre distance within the ego's half-diagonal + the polygon's circumradius
    reach = ego.half_diag + np.array(
        [
            np.linalg.norm(shapely.get_coordinates(p) - cxy[k], axis=1).max()
            for k, p in enumerate(win.red_polygons)
        ]
    )
    for k, poly in enumerate(win.red_polygons):
        steps = np.flatnonzero(win.red[:, k])
        if not len(steps):
            continue
        d = np.linalg.norm(ego.center[:, steps] - cxy[k], axis=-1)  # (B, n)
        bi, si = np.nonzero(d <= reach[k])
        if not len(bi):
            continue
        hit = shapely.intersects(shapely.polygons(ego.corners[bi, steps[si]]), poly)
        out[bi[hit]] = 0.0
    return out
