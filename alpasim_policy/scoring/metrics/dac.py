"""DAC: drivable-area compliance (NAVSIM multiplier, {0, 1}).

0 when, at any scored state, a corner of the ego box lies outside the drivable area (the union
of the map's drivable-area polygons and all lane polygons); NAVSIM checks corners, not the whole
box outline, and so do we.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.metrics._common import EgoGeometry


def drivable_area_compliance(ego: EgoGeometry) -> np.ndarray:
    """(B,) DAC."""
    return np.where(ego.areas["non_drivable"].any(axis=1), 0.0, 1.0)
