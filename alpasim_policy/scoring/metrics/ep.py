"""EP: ego progress (NAVSIM weighted metric, [0, 1], weight 5).

Raw progress is how far the ego box centre advances along the route centerline between the
first and the last scored state (shapely's projection, clamped to the line; negative -> 0). It
is normalised by the best progress among the proposal itself and the reference planner, where
a trajectory that violates a multiplier (product NC·DAC·DDC·TLC = 0) counts as 0. If that best
progress is at most 5 m (the car has no room to move), every proposal gets EP = 1.

Deviation from NAVSIM (documented): NAVSIM normalises over the scored batch, which is only
[reference, agent]; here every proposal is normalised against the reference and itself alone,
so a proposal's score never depends on which other proposals share its batch.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.world import ScoringWorld

PROGRESS_THRESHOLD_M = 5.0


def raw_progress(world: ScoringWorld, center: np.ndarray) -> np.ndarray:
    """(B,) metres advanced along the route by box centres (B, S, 2), clipped at 0."""
    s = world.route_locate(np.concatenate([center[:, 0], center[:, -1]]))
    n = center.shape[0]
    return np.clip(s[n:] - s[:n], 0.0, None)


def ego_progress(
    progress: np.ndarray, multipliers: np.ndarray, ref_progress: float, ref_multiplier: float
) -> np.ndarray:
    """(B,) EP from raw progress (B,), multiplier products (B,) and the reference's two numbers."""
    progress = np.asarray(progress, float)
    best = np.maximum(progress * np.asarray(multipliers, float), float(ref_progress) * float(ref_multiplier))
    with np.errstate(divide="ignore", invalid="ignore"):
        ep = np.clip(progress / best, 0.0, 1.0)
    return np.where(best > PROGRESS_THRESHOLD_M, ep, 1.0)
