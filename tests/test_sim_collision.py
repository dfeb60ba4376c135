"""Collision geometry and NAVSIM's at-fault rules on constructed contacts."""

from __future__ import annotations

import numpy as np
import shapely

from alpasim_policy.scenes.format import AgentType
from alpasim_policy.scenes.geometry import box_corners
from alpasim_policy.sim.collision import (
    CollisionType,
    boxes_overlap,
    classify_contacts,
    collision_penalty,
    ego_corners_from_rear_axle,
    is_at_fault,
    is_static_type,
    overlapping_pairs,
)

L, W, R2C = 4.8, 2.0, 1.4


def _ego(x=0.0, y=0.0, h=0.0):
    pose = np.array([x, y, h])
    return pose, ego_corners_from_rear_axle(pose, L, W, R2C)


def test_overlap_matches_shapely_on_random_boxes():
    rng = np.random.default_rng(0)
    a = box_corners(*rng.uniform(-4, 4, (2, 500)), rng.uniform(-3, 3, 500), rng.uniform(1, 5, 500), 2.0)
    b = box_corners(*rng.uniform(-4, 4, (2, 500)), rng.uniform(-3, 3, 500), 4.0, rng.uniform(1, 3, 500))
    expect = shapely.intersects(shapely.polygons(a), shapely.polygons(b))
    np.testing.assert_array_equal(boxes_overlap(a, b), expect)
    assert 50 < expect.sum() < 450  # both outcomes are exercised


def test_front_bumper_hit_on_moving_car_is_at_fault():
    pose, ego = _ego()
    agent = box_corners(R2C + L / 2 + 2.0, 0.0, 0.0, 4.5, 2.0)  # overlapping the ego's front by 0.25 m
    assert boxes_overlap(ego, agent)
    t = classify_contacts(pose, 10.0, ego, [R2C + L / 2 + 2.0, 0.0], 5.0, agent)
    assert t == CollisionType.ACTIVE_FRONT and is_at_fault(t)
    assert collision_penalty(is_at_fault(t)) == 0.0


def test_rear_end_by_faster_agent_is_not_at_fault():
    pose, ego = _ego()
    cx = R2C - L / 2 - 2.0  # agent behind, overlapping the ego's rear
    agent = box_corners(cx, 0.0, 0.0, 4.5, 2.0)
    t = classify_contacts(pose, 5.0, ego, [cx, 0.0], 10.0, agent)
    assert t == CollisionType.ACTIVE_REAR and not is_at_fault(t)


def test_stopped_track_and_static_objects():
    pose, ego = _ego()
    cx = R2C + L / 2 + 0.3
    cone = box_corners(cx, 0.5, 0.0, 0.5, 0.5)
    t = classify_contacts(pose, 8.0, ego, [cx, 0.5], 0.0, cone, agent_static=True)
    assert t == CollisionType.STOPPED_TRACK and is_at_fault(t)
    static = is_static_type(np.array([AgentType.STATIC, AgentType.VEHICLE]))
    assert list(static) == [True, False]
    assert collision_penalty(is_at_fault(t), agent_static=True) == 0.5


def test_stopped_ego_is_never_at_fault():
    pose, ego = _ego()
    cx = R2C + L / 2 + 2.0
    agent = box_corners(cx, 0.0, np.pi, 4.5, 2.0)
    t = classify_contacts(pose, 0.01, ego, [cx, 0.0], 6.0, agent)
    assert t == CollisionType.STOPPED_EGO and not is_at_fault(t)


def test_lateral_only_at_fault_in_several_lanes_or_offroad():
    pose, ego = _ego()
    agent = box_corners(R2C, 1.9, 0.0, 4.5, 2.0)  # side by side, overlapping by 0.1 m
    t = classify_contacts(pose, 8.0, ego, [R2C, 1.9], 8.0, agent)
    assert t == CollisionType.ACTIVE_LATERAL
    assert not is_at_fault(t, False) and is_at_fault(t, True)


def test_vectorised_pairs_and_types():
    pose, ego = _ego()
    centers = np.array([[R2C + L / 2 + 2.0, 0.0], [R2C - L / 2 - 2.0, 0.0], [50.0, 0.0], [R2C, 1.9]])
    agents = box_corners(centers[:, 0], centers[:, 1], 0.0, 4.5, 2.0)
    bi, ni = overlapping_pairs(ego[None], agents)
    assert list(ni) == [0, 1, 3] and list(bi) == [0, 0, 0]
    types = classify_contacts(pose, 8.0, ego, centers[ni], np.array([5.0, 12.0, 8.0]), agents[ni])
    assert list(types) == [
        CollisionType.ACTIVE_FRONT,
        CollisionType.ACTIVE_REAR,
        CollisionType.ACTIVE_LATERAL,
    ]
    _, none = overlapping_pairs(ego[None], agents, agent_mask=np.array([False, False, True, False]))
    assert len(none) == 0
