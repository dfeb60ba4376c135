"""Vectorised geometry shared by the importers, the simulator and the scorer.

Why one module: the env's collision checks, the scorer's drivable-area / lane metrics and
the importers' route building must agree on what a box, a lane polygon and "on the road"
mean. Everything here is numpy + shapely 2 and works on whole arrays at once (no Python
loop per box or per point), so it is cheap enough to call every 0.1 s step.

Conventions: scene frame (see :mod:`alpasim_policy.scenes.format`), metres, radians,
heading counter-clockwise from +x. Boxes are given by their **centre**; the ego log is
stored at its **rear axle**, so use :func:`rear_axle_to_center` first.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

if TYPE_CHECKING:
    from alpasim_policy.scenes.format import RoadMap, Scene

# ----------------------------------------------------------------------------- boxes

# Corner signs in the box frame (x forward, y left): front-left, rear-left, rear-right, front-right.
_CORNER_SIGNS = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])


def box_corners(
    x: np.ndarray | float,
    y: np.ndarray | float,
    heading: np.ndarray | float,
    length: np.ndarray | float,
    width: np.ndarray | float,
) -> np.ndarray:
    """Corners of oriented boxes, shape ``(..., 4, 2)`` (broadcast over the inputs).

    Order is front-left, rear-left, rear-right, front-right (counter-clockwise), so the
    result is directly a valid polygon ring.
    """
    x, y, h, ln, w = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x, y, heading, length, width))
    )
    c, s = np.cos(h), np.sin(h)
    dx = _CORNER_SIGNS[:, 0] * ln[..., None]  # (..., 4) along the heading
    dy = _CORNER_SIGNS[:, 1] * w[..., None]  # (..., 4) to the left
    cx = x[..., None] + dx * c[..., None] - dy * s[..., None]
    cy = y[..., None] + dx * s[..., None] + dy * c[..., None]
    return np.stack([cx, cy], axis=-1)


def box_polygons(
    x: np.ndarray | float,
    y: np.ndarray | float,
    heading: np.ndarray | float,
    length: np.ndarray | float,
    width: np.ndarray | float,
) -> np.ndarray:
    """Shapely polygons of oriented boxes, an object array of the broadcast input shape."""
    return shapely.polygons(box_corners(x, y, heading, length, width))


def _shift_along_heading(state: np.ndarray, offset: float) -> np.ndarray:
    out = np.array(state, dtype=np.float64, copy=True)
    out[..., 0] += offset * np.cos(out[..., 2])
    out[..., 1] += offset * np.sin(out[..., 2])
    return out


def rear_axle_to_center(state: np.ndarray, rear_axle_to_center: float) -> np.ndarray:
    """``(..., >=3)`` states (x, y, heading, ...) at the rear axle -> the same at the box centre.

    Columns beyond the third are copied unchanged (velocities of a rigid body differ between
    the two points only by the yaw-rate term, which the format does not model).
    """
    return _shift_along_heading(state, rear_axle_to_center)


def center_to_rear_axle(state: np.ndarray, rear_axle_to_center: float) -> np.ndarray:
    """Inverse of :func:`rear_axle_to_center`."""
    return _shift_along_heading(state, -rear_axle_to_center)


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# ----------------------------------------------------------------------------- frames
#
# The rig frame of a pose (x, y, heading) in the scene frame: origin at (x, y) (the rear axle),
# x forward along the heading, y left. The env builds observations with these, the renderers
# draw with them, policies and the server convert plans with them; one definition keeps every
# stage on the same convention.


def scene_to_rig_xy(xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Scene-frame points ``(..., 2)`` -> the rig frame of ``pose`` = (x, y, heading)."""
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[2]), np.sin(pose[2])
    d = np.asarray(xy, dtype=np.float64) - pose[:2]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def rig_to_scene_xy(xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Inverse of :func:`scene_to_rig_xy`: rig-frame points ``(..., 2)`` -> scene frame."""
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[2]), np.sin(pose[2])
    p = np.asarray(xy, dtype=np.float64)
    return np.stack(
        [pose[0] + c * p[..., 0] - s * p[..., 1], pose[1] + s * p[..., 0] + c * p[..., 1]], axis=-1
    )


def scene_to_rig_poses(poses: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Scene-frame poses ``(..., 3)`` (x, y, heading) -> rig frame of ``pose``; headings wrapped."""
    poses = np.asarray(poses, dtype=np.float64)
    out = np.empty(poses.shape, dtype=np.float64)
    out[..., :2] = scene_to_rig_xy(poses[..., :2], pose)
    out[..., 2] = wrap_angle(poses[..., 2] - pose[2])
    return out


def rig_to_scene_poses(poses: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Rig-frame poses ``(..., 3)`` -> scene frame of a rig at ``pose``.

    Headings are *not* wrapped: ``heading + pose[2]`` keeps a plan's heading sequence on one
    branch (no 2 pi jumps along the plan).
    """
    poses = np.asarray(poses, dtype=np.float64)
    out = np.empty(poses.shape, dtype=np.float64)
    out[..., :2] = rig_to_scene_xy(poses[..., :2], pose)
    out[..., 2] = poses[..., 2] + pose[2]
    return out


def constant_velocity_tail(poses: np.ndarray, count: int) -> np.ndarray:
    """``count`` poses continuing ``(n >= 1, 3)`` poses at 0.1 s steps: the last step's (x, y)
    displacement repeated, heading held (no displacement when only one pose is given).

    Used wherever a plan or a log runs out before the rows a consumer needs (the log-replay
    baseline past the end of the log, eval's fallback when a policy fails).
    """
    poses = np.asarray(poses, dtype=np.float64)
    step = poses[-1, :2] - poses[-2, :2] if len(poses) >= 2 else np.zeros(2)
    k = np.arange(1, count + 1)[:, None]
    tail = np.empty((count, 3))
    tail[:, :2] = poses[-1, :2] + k * step
    tail[:, 2] = poses[-1, 2]
    return tail


# ----------------------------------------------------------------------------- polylines


class Polyline:
    """A 2D polyline with arc length, projection and interpolation (all vectorised).

    Consecutive duplicate points are dropped so every segment has a direction.
    """

    def __init__(self, points: np.ndarray):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) > 1:
            keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-9])
            pts = pts[keep]
        if len(pts) < 2:
            raise ValueError(f"a polyline needs >= 2 distinct points, got {len(pts)}")
        self.points = pts
        seg = np.diff(pts, axis=0)
        self.seg_len = np.linalg.norm(seg, axis=1)
        self.seg_dir = seg / self.seg_len[:, None]
        self.seg_heading = np.arctan2(seg[:, 1], seg[:, 0])
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project ``(N, 2)`` points: (arc length s, signed lateral offset (+ left), segment heading).

        Points before the start / past the end project onto the end segments' extension, so
        s can be negative or exceed :attr:`length` (useful to measure overshoot).
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        rel = p[:, None, :] - self.points[None, :-1, :]  # (N, K, 2)
        along = np.einsum("nkd,kd->nk", rel, self.seg_dir)
        t = np.clip(along, 0.0, self.seg_len[None, :])
        # Let the first / last segment extend beyond the ends.
        t[:, 0] = np.minimum(along[:, 0], self.seg_len[0])
        t[:, -1] = np.maximum(along[:, -1], 0.0) if len(self.seg_len) > 1 else along[:, -1]
        foot = self.points[None, :-1, :] + t[..., None] * self.seg_dir[None]
        d2 = np.sum((p[:, None, :] - foot) ** 2, axis=-1)
        k = np.argmin(d2, axis=1)
        rows = np.arange(len(p))
        s = self.s[k] + t[rows, k]
        r = rel[rows, k]
        d = self.seg_dir[k]
        lateral = d[:, 0] * r[:, 1] - d[:, 1] * r[:, 0]
        return s, lateral, self.seg_heading[k]

    def interpolate(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, 2)`` and headings ``(N,)`` at arc lengths s (clamped to the line)."""
        s = np.clip(np.atleast_1d(np.asarray(s, dtype=np.float64)), 0.0, self.s[-1])
        x = np.interp(s, self.s, self.points[:, 0])
        y = np.interp(s, self.s, self.points[:, 1])
        k = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.seg_len) - 1)
        return np.stack([x, y], axis=-1), self.seg_heading[k]

    def resample(self, n: int) -> np.ndarray:
        """``n`` points evenly spaced by arc length."""
        return self.interpolate(np.linspace(0.0, self.length, n))[0]


def resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    """Resample a polyline to ``n`` points evenly spaced by arc length."""
    return Polyline(points).resample(n)


def centerline_from_boundaries(left: np.ndarray, right: np.ndarray, n: int | None = None) -> np.ndarray:
    """Mid-line of two lane boundaries: both resampled by arc length to ``n`` points, then averaged."""
    if n is None:
        n = max(len(left), len(right), 2)
    return 0.5 * (resample_polyline(left, n) + resample_polyline(right, n))


# ----------------------------------------------------------------------------- map index

#: Half-width (m) of the gaps closed in the drivable-area union (see MapIndex).
DRIVABLE_CLOSING_M = 0.1


def _as_polygon(ring: np.ndarray) -> shapely.Geometry:
    poly = shapely.polygons(np.asarray(ring, dtype=np.float64))
    if not shapely.is_valid(poly):
        poly = shapely.make_valid(poly)
    return poly


def lane_polygon(left: np.ndarray, right: np.ndarray) -> shapely.Geometry:
    """The area between a lane's left and right boundary (both in driving direction)."""
    ring = np.concatenate([np.asarray(left, float), np.asarray(right, float)[::-1]])
    return _as_polygon(ring)


class MapIndex:
    """Spatial index over one scene's map: lane polygons, drivable area, crosswalks.

    Built once per scene (tens of ms) and reused every step by the env and the scorer.
    The drivable area is the union of the source's drivable-area polygons and all lane
    polygons, because some sources (CommonRoad) only give lanes, closed by
    :data:`DRIVABLE_CLOSING_M` to remove slivers between adjacent lanes.
    """

    def __init__(self, scene: Scene | RoadMap):
        road = getattr(scene, "map", scene)  # a Scene or directly its RoadMap (importers)
        lanes = road.lanes
        self.lane_ids: list[str] = [ln.id for ln in lanes]
        self.lane_index: dict[str, int] = {lid: i for i, lid in enumerate(self.lane_ids)}
        self._lanes = lanes
        self.lane_polygons = np.array(
            [lane_polygon(ln.left_boundary, ln.right_boundary) for ln in lanes], dtype=object
        )
        self.lane_tree = shapely.STRtree(self.lane_polygons)
        areas = [_as_polygon(p) for p in road.drivable_areas]
        parts = [g for g in [*areas, *self.lane_polygons] if not g.is_empty]
        drivable = shapely.union_all(parts) if parts else shapely.Polygon()
        # Morphological closing: neighbouring lanes whose shared boundary differs by noise leave
        # cm-wide slivers and holes in the union, which would flag a car straddling a lane line as
        # off-road. Gaps narrower than 2 * DRIVABLE_CLOSING_M are filled; real medians remain.
        if not drivable.is_empty:
            drivable = shapely.buffer(
                shapely.buffer(drivable, DRIVABLE_CLOSING_M, join_style="mitre"),
                -DRIVABLE_CLOSING_M,
                join_style="mitre",
            )
        self.drivable = drivable
        shapely.prepare(self.drivable)
        self.crosswalk_polygons = np.array([_as_polygon(p) for p in road.crosswalks], dtype=object)
        for g in self.lane_polygons:
            shapely.prepare(g)

    @cached_property
    def centerlines(self) -> list[Polyline]:
        return [Polyline(ln.centerline) for ln in self._lanes]

    # -- points -------------------------------------------------------------

    def lane_membership(self, points: np.ndarray) -> np.ndarray:
        """Boolean ``(N, L)``: point n lies in (or on the edge of) lane polygon l."""
        pts = shapely.points(np.asarray(points, dtype=np.float64).reshape(-1, 2))
        out = np.zeros((len(pts), len(self.lane_ids)), dtype=bool)
        if len(self.lane_ids):
            ip, il = self.lane_tree.query(pts, predicate="intersects")
            out[ip, il] = True
        return out

    def lanes_containing(self, points: np.ndarray) -> list[np.ndarray]:
        """Per point, the (ascending) indices of the lanes whose polygon holds it."""
        m = self.lane_membership(points)
        return [np.flatnonzero(row) for row in m]

    def on_drivable(self, geoms: np.ndarray) -> np.ndarray:
        """Points ``(N, 2)`` -> bool (N,) inside the drivable area; polygons -> bool, fully covered."""
        arr = np.asarray(geoms)
        if arr.dtype == object:
            return shapely.covers(self.drivable, arr)
        pts = arr.astype(np.float64).reshape(-1, 2)
        return shapely.intersects_xy(self.drivable, pts[:, 0], pts[:, 1])

    @cached_property
    def crosswalk_area(self) -> shapely.Geometry:
        """Union of all crosswalks (prepared), for fast point tests."""
        cw = shapely.union_all(self.crosswalk_polygons) if len(self.crosswalk_polygons) else shapely.Polygon()
        shapely.prepare(cw)
        return cw

    def in_crosswalk(self, points: np.ndarray) -> np.ndarray:
        """Points ``(N, 2)`` -> bool (N,) inside some crosswalk."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if not len(self.crosswalk_polygons):
            return np.zeros(len(pts), dtype=bool)
        return shapely.intersects_xy(self.crosswalk_area, pts[:, 0], pts[:, 1])

    def count_lanes(self, polygons: np.ndarray | Sequence) -> np.ndarray:
        """How many lane polygons each given polygon intersects (int array)."""
        polys = np.asarray(polygons, dtype=object).reshape(-1)
        out = np.zeros(len(polys), dtype=np.int64)
        if len(self.lane_ids) and len(polys):
            ip, _ = self.lane_tree.query(polys, predicate="intersects")
            np.add.at(out, ip, 1)
        return out

    def nearest_lane(
        self, point: np.ndarray, heading: float | None = None, heading_weight: float = 4.0
    ) -> int | None:
        """Index of the lane best matching a pose; None for an empty map.

        Candidates are the lanes containing the point, else those within 5 m, else the
        nearest. With a heading, a lane whose direction disagrees costs ``heading_weight``
        metres per radian, so a car on a two-way road is matched to its own direction.
        """
        if not self.lane_ids:
            return None
        p = np.asarray(point, dtype=np.float64).reshape(2)
        g = shapely.Point(p)
        cand = self.lane_tree.query(g, predicate="intersects")
        if not len(cand):
            cand = self.lane_tree.query(g, predicate="dwithin", distance=5.0)
        if not len(cand):
            cand = self.lane_tree.query_nearest(g)
        best, best_cost = None, np.inf
        for i in sorted(int(c) for c in cand):
            _, lat, hd = self.centerlines[i].project(p[None])
            cost = abs(float(lat[0]))
            if heading is not None:
                cost += heading_weight * abs(float(wrap_angle(hd[0] - heading)))
            if cost < best_cost:
                best, best_cost = i, cost
        return best


# ----------------------------------------------------------------------------- per-scene cache

# Keyed by id(scene): scenes are unhashable dataclasses. A finalizer drops a scene's entries when
# it is garbage-collected, so a cached value must not refer to the scene object itself (keep the
# parts it needs), or the scene would never be collected.
_SCENE_CACHE: dict[int, dict[Any, Any]] = {}


def scene_cache(scene: Scene, key: Any, build: Callable[[], Any]) -> Any:
    """Return ``build()`` cached for (this scene object, key).

    One cache for every stage (the env's map index, the renderers' flattened geometry and
    renderers), so per-scene constants are built once per process, not once per consumer.
    """
    sid = id(scene)
    per_scene = _SCENE_CACHE.get(sid)
    if per_scene is None:
        per_scene = _SCENE_CACHE[sid] = {}
        weakref.finalize(scene, _SCENE_CACHE.pop, sid, None)
    if key not in per_scene:
        per_scene[key] = build()
    return per_scene[key]


def map_index(scene: Scene) -> MapIndex:
    """The scene's :class:`MapIndex`, built once per scene object (shared by the env and renderers)."""
    return scene_cache(scene, "map_index", lambda: MapIndex(scene))
