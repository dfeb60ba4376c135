"""The grid accelerator must give exactly shapely's answers (on real bundled maps)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.metrics._common import points_in_polygons
from alpasim_policy.scoring.raster import PolygonRaster
from alpasim_policy.scoring.world import ScoringWorld


@pytest.mark.parametrize("which", [0, -1])
def test_raster_matches_shapely_on_bundled_maps(which):
    scene = load_scene(load_suite("bundled")[which])
    w = ScoringWorld.from_scene(scene)
    rng = np.random.default_rng(1)
    b = shapely.bounds(w.drivable)
    pts = np.concatenate(
        [
            np.column_stack([rng.uniform(b[0] - 5, b[2] + 5, 40000), rng.uniform(b[1] - 5, b[3] + 5, 40000)]),
            w.route_polyline[rng.integers(0, len(w.route_polyline), 40000)] + rng.normal(0, 2.0, (40000, 2)),
        ]
    )
    got = PolygonRaster(w.lane_polygons).query(pts)
    want = points_in_polygons(pts, w.lane_polygons)
    assert set(zip(*got, strict=True)) == set(zip(*want, strict=True))
    assert len(want[0]) > 10000  # the test does exercise lane interiors
    inside = PolygonRaster(np.array([w.drivable], dtype=object)).contains(pts)
    np.testing.assert_array_equal(inside, shapely.intersects_xy(w.drivable, pts[:, 0], pts[:, 1]))
