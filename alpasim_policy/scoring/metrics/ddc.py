"""DDC: driving-direction compliance (NAVSIM multiplier, {0, 1/2, 1}).

The distance the ego centre moves while it is in no on-route lane ("oncoming traffic") and not
in an intersection is summed over a sliding 1 s window (the current step and the 10 before it).
The worst window decides: < 2 m -> 1, < 6 m -> 1/2, else 0.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.metrics._common import EgoGeometry

HORIZON_S = 1.0
COMPLIANCE_M = 2.0
VIOLATION_M = 6.0


def driving_direction_compliance(ego: EgoGeometry, dt: float = 0.1) -> np.ndarray:
    """(B,) DDC."""
    c = ego.center
    step = np.zeros(c.shape[:2])
    step[:, 1:] = np.linalg.norm(np.diff(c, axis=1), axis=-1)
    a = ego.areas
    step[~a["oncoming"] | a["intersection"]] = 0.0
    h = int(HORIZON_S / dt)
    cs = np.concatenate([np.zeros((step.shape[0], 1)), np.cumsum(step, axis=1)], axis=1)
    idx = np.arange(step.shape[1])
    lo = np.maximum(0, idx - h)
    window = cs[:, idx + 1] - cs[:, lo]  # sum over steps lo .. idx
    worst = window.max(axis=1)
    return np.where(worst < COMPLIANCE_M, 1.0, np.where(worst < VIOLATION_M, 0.5, 0.0))
