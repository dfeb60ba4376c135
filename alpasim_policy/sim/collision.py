"""Ego/agent collision detection and NAVSIM's at-fault rules, as vectorised numpy functions.

Used by the env (``info["collisions"]``, optional truncation) and by the scorer (NC multiplier),
so both judge a collision the same way. Rules (learnt from NAVSIM's PDM scorer, re-implemented):

* **Type** of an ego/agent contact, checked in this order:
  ``STOPPED_EGO`` (ego speed <= 0.05 m/s), ``STOPPED_TRACK`` (agent speed <= 0.05 m/s, and static
  objects always), ``ACTIVE_REAR`` (the agent centre lies more than 150 deg off the ego heading,
  seen from the ego rear axle), ``ACTIVE_FRONT`` (the ego front bumper segment, front-left to
  front-right corner, touches the agent box), otherwise ``ACTIVE_LATERAL``.
* **At fault**: front-bumper hits and hits on stopped tracks; lateral hits only when the ego is
  in several lanes or off the drivable area; rear hits and anything while the ego is stopped are
  not the ego's fault.
* **Penalty** (NC multiplier): 0 for an at-fault hit on a road user, 0.5 for an at-fault hit on a
  static object (``AgentType.STATIC`` / ``UNKNOWN``), 1 otherwise. Each agent counts once per
  rollout / proposal (the caller keeps the set of agents already hit).

Box overlap uses the separating-axis test on the (convex) rectangles, so touching counts as a
contact, like shapely's ``intersects``. A radius prefilter keeps it cheap for many agents.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from alpasim_policy.scenes.format import AgentType
from alpasim_policy.scenes.geometry import box_corners
from alpasim_policy.scenes.geometry import rear_axle_to_center as _to_center  # the parameter takes the name

STOPPED_SPEED_THRESHOLD = 5e-2  # m/s
REAR_ANGLE_TOLERANCE_DEG = 150.0
STATIC_TYPES = (int(AgentType.STATIC), int(AgentType.UNKNOWN))


class CollisionType(IntEnum):
    STOPPED_EGO = 0
    STOPPED_TRACK = 1
    ACTIVE_FRONT = 2
    ACTIVE_REAR = 3
    ACTIVE_LATERAL = 4


# Coarse names used in info / reports (the front / rear / lateral wording).
COLLISION_NAMES = {
    CollisionType.STOPPED_EGO: "stopped_ego",
    CollisionType.STOPPED_TRACK: "stopped_track",
    CollisionType.ACTIVE_FRONT: "front",
    CollisionType.ACTIVE_REAR: "rear",
    CollisionType.ACTIVE_LATERAL: "lateral",
}


def is_static_type(types: np.ndarray) -> np.ndarray:
    """Agent type codes -> bool: a static object (weighted 1/2 in NC, always 'stopped')."""
    return np.isin(np.asarray(types), STATIC_TYPES)


def _project(corners: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """corners (..., P, 2), axes (..., K, 2) -> min, max (..., K) of the projections."""
    proj = np.einsum("...pd,...kd->...kp", corners, axes)
    return proj.min(axis=-1), proj.max(axis=-1)


def _box_axes(corners: np.ndarray) -> np.ndarray:
    """The two edge directions of rectangles (..., 4, 2) -> (..., 2, 2)."""
    return np.stack(
        [corners[..., 0, :] - corners[..., 1, :], corners[..., 0, :] - corners[..., 3, :]], axis=-2
    )


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rectangles a, b (..., 4, 2) (broadcast) -> bool (...): interiors or edges touch."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    axes = np.concatenate([_box_axes(a), _box_axes(b)], axis=-2)  # (..., 4, 2)
    amin, amax = _project(a, axes)
    bmin, bmax = _project(b, axes)
    return np.all((amin <= bmax) & (bmin <= amax), axis=-1)


def segment_touches_box(p0: np.ndarray, p1: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Segments p0-p1 (..., 2) against rectangles (..., 4, 2) -> bool (...)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    box = np.asarray(box, np.float64)
    d = p1 - p0
    normal = np.stack([-d[..., 1], d[..., 0]], axis=-1)
    lead = np.broadcast_shapes(p0.shape[:-1], p1.shape[:-1], box.shape[:-2])
    seg = np.broadcast_to(np.stack([p0, p1], axis=-2), lead + (2, 2))
    box = np.broadcast_to(box, lead + (4, 2))
    normal = np.broadcast_to(normal, lead + (2,))
    axes = np.concatenate([_box_axes(box), normal[..., None, :]], axis=-2)
    smin, smax = _project(seg, axes)
    bmin, bmax = _project(box, axes)
    return np.all((smin <= bmax) & (bmin <= smax), axis=-1)


def is_behind(
    ego_pose: np.ndarray, points: np.ndarray, tolerance_deg: float = REAR_ANGLE_TOLERANCE_DEG
) -> np.ndarray:
    """Whether points (..., 2) lie behind the ego pose (..., 3): angle to its heading > tolerance."""
    ego_pose = np.asarray(ego_pose, np.float64)
    rel = np.asarray(points, np.float64) - ego_pose[..., :2]
    norm = np.hypot(rel[..., 0], rel[..., 1])
    cos = (rel[..., 0] * np.cos(ego_pose[..., 2]) + rel[..., 1] * np.sin(ego_pose[..., 2])) / np.where(
        norm > 0, norm, 1.0
    )
    cos = np.where(norm > 0, cos, 1.0)  # coincident: angle 0, "ahead"
    return cos < np.cos(np.deg2rad(tolerance_deg))


def classify_contacts(
    ego_pose: np.ndarray,
    ego_speed: np.ndarray,
    ego_corners: np.ndarray,
    agent_center: np.ndarray,
    agent_speed: np.ndarray,
    agent_corners: np.ndarray,
    agent_static: np.ndarray | bool = False,
    stopped_speed: float = STOPPED_SPEED_THRESHOLD,
) -> np.ndarray:
    """Collision type (int array of :class:`CollisionType`) of contacts, vectorised.

    Shapes broadcast: ``ego_pose`` (..., 3) rear axle, ``ego_speed`` (...), ``ego_corners``
    (..., 4, 2) in :func:`~alpasim_policy.scenes.geometry.box_corners` order, ``agent_center``
    (..., 2), ``agent_speed`` (...), ``agent_corners`` (..., 4, 2), ``agent_static`` (...).
    The pair is assumed to be in contact (see :func:`boxes_overlap`).
    """
    ego_corners = np.asarray(ego_corners, np.float64)
    stopped_ego = np.asarray(ego_speed) <= stopped_speed
    stopped_track = (np.asarray(agent_speed) <= stopped_speed) | np.asarray(agent_static, bool)
    rear = is_behind(ego_pose, agent_center)
    front = segment_touches_box(ego_corners[..., 0, :], ego_corners[..., 3, :], agent_corners)
    out = np.full(np.broadcast_shapes(stopped_ego.shape, stopped_track.shape, rear.shape, front.shape),
                  int(CollisionType.ACTIVE_LATERAL), dtype=np.int8)  # fmt: skip
    out = np.where(front, int(CollisionType.ACTIVE_FRONT), out)
    out = np.where(rear, int(CollisionType.ACTIVE_REAR), out)
    out = np.where(stopped_track, int(CollisionType.STOPPED_TRACK), out)
    out = np.where(stopped_ego, int(CollisionType.STOPPED_EGO), out)
    return out.astype(np.int8)


def is_at_fault(ctype: np.ndarray, ego_multi_lane_or_offroad: np.ndarray | bool = False) -> np.ndarray:
    """NAVSIM's at-fault decision for contacts of the given types."""
    ctype = np.asarray(ctype)
    hard = (ctype == CollisionType.ACTIVE_FRONT) | (ctype == CollisionType.STOPPED_TRACK)
    lateral = (ctype == CollisionType.ACTIVE_LATERAL) & np.asarray(ego_multi_lane_or_offroad, bool)
    return hard | lateral


def collision_penalty(at_fault: np.ndarray, agent_static: np.ndarray | bool = False) -> np.ndarray:
    """NC multiplier per contact: 0 (at fault, road user), 0.5 (at fault, static object), 1 (not at fault)."""
    at_fault = np.asarray(at_fault, bool)
    return np.where(at_fault, np.where(np.asarray(agent_static, bool), 0.5, 0.0), 1.0)


def overlapping_pairs(
    ego_corners: np.ndarray, agent_corners: np.ndarray, agent_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All (ego b, agent n) index pairs whose boxes touch; ego (B, 4, 2), agents (N, 4, 2).

    A circumscribed-circle test discards far pairs before the exact separating-axis test, so the
    cost is O(B * N) cheap distance checks plus exact checks on the few near pairs.
    """
    ego_corners = np.asarray(ego_corners, np.float64).reshape(-1, 4, 2)
    agent_corners = np.asarray(agent_corners, np.float64).reshape(-1, 4, 2)
    if not len(agent_corners) or not len(ego_corners):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ec = ego_corners.mean(axis=1)
    ac = agent_corners.mean(axis=1)
    er = np.linalg.norm(ego_corners[:, 0] - ec, axis=-1)
    ar = np.linalg.norm(agent_corners[:, 0] - ac, axis=-1)
    d2 = ((ec[:, None, :] - ac[None, :, :]) ** 2).sum(-1)
    near = d2 <= (er[:, None] + ar[None, :]) ** 2
    if agent_mask is not None:
        near &= np.asarray(agent_mask, bool)[None, :]
    bi, ni = np.nonzero(near)
    if not len(bi):
        return bi, ni
    hit = boxes_overlap(ego_corners[bi], agent_corners[ni])
    return bi[hit], ni[hit]


def ego_corners_from_rear_axle(
    pose: np.ndarray, length: float, width: float, rear_axle_to_center: float
) -> np.ndarray:
    """Rear-axle poses (..., >=3) -> ego box corners (..., 4, 2)."""
    c = _to_center(np.asarray(pose, np.float64)[..., :3], rear_axle_to_center)
    return box_corners(c[..., 0], c[..., 1], c[..., 2], length, width)
