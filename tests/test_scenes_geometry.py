"""Geometry helpers, checked against shapely / closed forms and on the bundled real scenes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from alpasim_policy.scenes import load_scene, load_suite
from alpasim_policy.scenes.geometry import (
    MapIndex,
    Polyline,
    box_corners,
    box_polygons,
    center_to_rear_axle,
    centerline_from_boundaries,
    constant_velocity_tail,
    rear_axle_to_center,
    rig_to_scene_poses,
    rig_to_scene_xy,
    scene_to_rig_poses,
    scene_to_rig_xy,
    wrap_angle,
)


@pytest.fixture(scope="module")
def scenes():
    return [load_scene(p) for p in load_suite("bundled")]


def test_box_corners_order_and_shape():
    rng = np.random.default_rng(0)
    x, y, h = rng.normal(size=(3, 5, 7))
    ln, w = 4.0 + rng.random((5, 7)), 1.5 + rng.random((5, 7))
    c = box_corners(x, y, h, ln, w)
    assert c.shape == (5, 7, 4, 2)
    # Centre is the corner mean; front-left minus rear-left is length along the heading.
    np.testing.assert_allclose(c.mean(axis=-2), np.stack([x, y], -1), atol=1e-12)
    fwd = c[..., 0, :] - c[..., 1, :]
    np.testing.assert_allclose(np.linalg.norm(fwd, axis=-1), ln)
    np.testing.assert_allclose(np.arctan2(fwd[..., 1], fwd[..., 0]), wrap_angle(h), atol=1e-12)
    left = c[..., 0, :] - c[..., 3, :]  # front-left minus front-right points to the left
    np.testing.assert_allclose(np.arctan2(left[..., 1], left[..., 0]), wrap_angle(h + np.pi / 2), atol=1e-12)
    polys = box_polygons(x, y, h, ln, w)
    assert polys.shape == (5, 7)
    np.testing.assert_allclose(shapely.area(polys), ln * w)
    assert shapely.is_valid(polys).all() and shapely.is_ccw(shapely.get_exterior_ring(polys)).all()


def test_rear_axle_center_round_trip(scenes):
    e = scenes[0].ego
    c = rear_axle_to_center(e.state, e.rear_axle_to_center)
    d = np.linalg.norm(c[:, :2] - e.xy, axis=1)
    np.testing.assert_allclose(d, e.rear_axle_to_center)
    np.testing.assert_allclose(center_to_rear_axle(c, e.rear_axle_to_center), e.state, atol=1e-9)


def test_rig_frame_transforms_on_the_logged_drive(scenes):
    """The logged future seen from the car: x forward along its heading, y left; and back again."""
    for sc in scenes[:4]:
        st = sc.ego.state
        k = sc.metadata.t0_index
        pose = st[k, :3]
        fut = scene_to_rig_poses(st[k:, :3], pose)
        np.testing.assert_allclose(fut[0], 0.0, atol=1e-9)  # "now" is the rig origin
        assert np.all(np.abs(fut[:, 2]) <= np.pi)  # headings wrapped
        # Distances and heading changes are frame-independent.
        np.testing.assert_allclose(
            np.linalg.norm(fut[:, :2], axis=1), np.linalg.norm(st[k:, :2] - pose[:2], axis=1)
        )
        np.testing.assert_allclose(fut[:, 2], wrap_angle(st[k:, 2] - pose[2]), atol=1e-12)
        # A point 1 m along the heading is (1, 0); 1 m to the left is (0, 1).
        c, s_ = np.cos(pose[2]), np.sin(pose[2])
        probe = pose[:2] + np.array([[c, s_], [-s_, c]])
        np.testing.assert_allclose(scene_to_rig_xy(probe, pose), [[1.0, 0.0], [0.0, 1.0]], atol=1e-9)
        # The car drives forward in its own frame (the logs never reverse at t0).
        assert fut[5, 0] > 0.0
        back = rig_to_scene_poses(fut, pose)
        np.testing.assert_allclose(back[:, :2], st[k:, :2], atol=1e-9)
        np.testing.assert_allclose(wrap_angle(back[:, 2] - st[k:, 2]), 0.0, atol=1e-9)
        np.testing.assert_allclose(rig_to_scene_xy(fut[:, :2], pose), st[k:, :2], atol=1e-9)


def test_constant_velocity_tail_continues_the_last_step(scenes):
    st = scenes[0].ego.state[:, :3]
    tail = constant_velocity_tail(st, 5)
    step = st[-1, :2] - st[-2, :2]
    np.testing.assert_allclose(tail[:, :2], st[-1, :2] + np.arange(1, 6)[:, None] * step)
    np.testing.assert_array_equal(tail[:, 2], st[-1, 2])
    one = constant_velocity_tail(st[-1:], 3)  # a single pose: no velocity known, held in place
    np.testing.assert_array_equal(one, np.repeat(st[-1:], 3, axis=0))


def test_polyline_project_interpolate_round_trip(scenes):
    for sc in scenes:
        pl = Polyline(sc.route.polyline)
        s = np.linspace(0, pl.length, 57)
        pts, hd = pl.interpolate(s)
        s2, lat, hd2 = pl.project(pts)
        np.testing.assert_allclose(s2, s, atol=1e-6)
        np.testing.assert_allclose(lat, 0, atol=1e-6)
        # A point 1 m to the left of the line projects with lateral +1.
        off = pts + np.stack([-np.sin(hd), np.cos(hd)], -1)
        inner = (s > 1) & (s < pl.length - 1)
        _, lat_l, _ = pl.project(off[inner])
        assert np.median(lat_l) == pytest.approx(1.0, abs=0.05)


def test_centerline_is_midline():
    left = np.array([[0.0, 2.0], [10.0, 2.0], [20.0, 4.0]])
    right = np.array([[0.0, -2.0], [5.0, -2.0], [10.0, -2.0], [20.0, 0.0]])
    c = centerline_from_boundaries(left, right)
    np.testing.assert_allclose(c[0], [0, 0])
    np.testing.assert_allclose(c[-1], [20, 2])
    assert len(c) == 4


def test_map_index_matches_shapely_per_lane(scenes):
    sc = next(s for s in scenes if s.metadata.source_dataset == "av2-sensor")
    idx = MapIndex(sc)
    rng = np.random.default_rng(1)
    pts = np.concatenate([sc.ego.xy, rng.uniform(-60, 60, size=(300, 2))])
    m = idx.lane_membership(pts)
    ref = np.stack([shapely.intersects_xy(p, pts[:, 0], pts[:, 1]) for p in idx.lane_polygons], axis=1)
    np.testing.assert_array_equal(m, ref)
    lists = idx.lanes_containing(pts)
    assert all(np.array_equal(lists[i], np.flatnonzero(ref[i])) for i in range(len(pts)))
    # Every point inside some lane is on the drivable area.
    assert idx.on_drivable(pts[ref.any(axis=1)]).all()
    # The ego's own lane at t0 is the one nearest_lane picks, and it is on the route.
    t0 = sc.metadata.t0_index
    i = idx.nearest_lane(sc.ego.xy[t0], float(sc.ego.heading[t0]))
    assert idx.lane_ids[i] in sc.route.lane_ids
    # count_lanes agrees with a direct shapely count.
    boxes = box_polygons(pts[:20, 0], pts[:20, 1], 0.3, 4.5, 2.0)
    ref_count = np.array([shapely.intersects(b, idx.lane_polygons).sum() for b in boxes])
    np.testing.assert_array_equal(idx.count_lanes(boxes), ref_count)


def test_on_drivable_far_away_is_false(scenes):
    for sc in scenes:
        idx = MapIndex(sc)
        far = np.array([[1e5, 1e5], [-1e5, 3e4]])
        assert not idx.on_drivable(far).any()


def test_in_crosswalk_matches_polygons(scenes):
    sc = next(s for s in scenes if s.map.crosswalks)
    idx = MapIndex(sc)
    rng = np.random.default_rng(2)
    pts = np.concatenate(
        [np.array([c.mean(axis=0) for c in sc.map.crosswalks]), rng.uniform(-80, 80, (500, 2))]
    )
    ref = np.zeros(len(pts), dtype=bool)
    for c in sc.map.crosswalks:
        ref |= shapely.intersects_xy(shapely.Polygon(c), pts[:, 0], pts[:, 1])
    np.testing.assert_array_equal(idx.in_crosswalk(pts), ref)
    assert ref[: len(sc.map.crosswalks)].all()


@pytest.mark.parametrize("scene_id", ["av2s-7fab2350-w00", "cr-USA_Lanker-1_1_T-1-ego1213"])
def test_route_builder_follows_a_lane_change(scene_id):
    """A path along a real lane that changes into its right neighbour gives a route A -> neighbour."""
    from alpasim_policy.scenes import find_scene
    from alpasim_policy.scenes.importers.common import build_route

    sc = load_scene(find_scene(scene_id))
    idx = MapIndex(sc)
    cands = [ln for ln in sc.map.lanes if ln.right_neighbor and not ln.is_intersection]
    lane = max(cands, key=lambda ln: Polyline(ln.centerline).length)
    nb = sc.map.lane(lane.right_neighbor)
    a, b = Polyline(lane.centerline), Polyline(nb.centerline)
    pa, ha = a.interpolate(np.linspace(0.05 * a.length, 0.4 * a.length, 20))
    pb, hb = b.interpolate(np.linspace(0.6 * b.length, b.length, 20))
    route = build_route(sc.map, idx, np.concatenate([pa, pb]), np.concatenate([ha, hb]))
    i = route.lane_ids.index(lane.id)
    assert route.lane_ids[i + 1] == nb.id
    # The route polyline runs along the neighbour's centerline where the path ends (past the
    # lateral transition centred where the path entered the neighbour).
    from alpasim_policy.scenes.importers.common import LANE_CHANGE_LENGTH_M

    past = np.linalg.norm(pb - pb[0], axis=1) > 0.5 * LANE_CHANGE_LENGTH_M + 1e-6
    assert past.sum() >= 5
    _, lat, _ = Polyline(route.polyline).project(pb[past])
    assert np.abs(lat).max() < 1e-6
    # ... and never runs backwards: arc length grows along the path.
    s, _, _ = Polyline(route.polyline).project(np.concatenate([pa, pb]))
    assert np.all(np.diff(s) > 0)
