"""Everything the scorer needs about one scene, in array form, with its spatial indices.

Why a separate object: the metrics must not re-derive lane polygons, the route line or
agent boxes from a :class:`~alpasim_policy.scenes.format.Scene` for every call (that is
what makes naive NAVSIM-style scoring take minutes). A :class:`ScoringWorld` is built once
per scene, either from the scene itself or from the on-disk metric cache
(:mod:`alpasim_policy.scoring.cache`), and every metric reads from it.

Frames and units: scene frame, metres, seconds, radians (see ``scenes/format.py``).
Ego states are at the rear axle (``EGO_COLUMNS``); agent states are box centres
(``AGENT_COLUMNS``). Velocities and accelerations are in the scene frame.

Map semantics, mapped from NAVSIM / nuPlan onto scene format 1.0:

* drivable area = union of the scene's drivable-area polygons and all lane polygons
  (:class:`~alpasim_policy.scenes.geometry.MapIndex`);
* "lanes" for the multiple-lanes test = the vehicle lane polygons;
* "intersection" = the union of lanes flagged ``is_intersection`` (nuPlan's intersection layer);
* "on-route" lanes for driving-direction compliance = the route lanes plus their left / right
  neighbours that run the same way (NAVSIM counts every lane of an on-route roadblock; our
  format has no roadblocks, so same-direction neighbours stand in for them);
* a red light's polygon = its stop line extruded ``RED_LIGHT_DEPTH_M`` downstream along the
  controlled lane; NAVSIM uses the whole lane-connector polygon, which also flags a car that
  was already inside the intersection when the light turned red.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import shapely

from alpasim_policy.scenes.format import AgentType, LightState

if TYPE_CHECKING:
    from alpasim_policy.scenes.format import Scene

#: point queries at least this large use the grid accelerator (scoring/raster.py)
RASTER_MIN_POINTS = 50_000

#: how far past the stop line a red light's polygon reaches (m)
RED_LIGHT_DEPTH_M = 1.0

#: nuPlan's AGENT_TYPES analogue: collisions with these cost NC = 0, anything else NC = 1/2
DYNAMIC_AGENT_TYPES = (
    AgentType.VEHICLE,
    AgentType.PEDESTRIAN,
    AgentType.BICYCLE,
    AgentType.MOTORCYCLE,
    AgentType.BUS,
    AgentType.TRUCK,
)


@dataclass
class ScoringWorld:
    """Array view of one scene for the scorer (see the module docstring)."""

    scene_id: str
    content_hash: str | None
    dt: float
    t0_index: int
    timestamps: np.ndarray  # (T,)
    # ego vehicle
    ego_length: float
    ego_width: float
    rear_axle_to_center: float
    wheelbase: float
    human_state: np.ndarray  # (T, 7) the logged ego, rear axle
    human_valid: np.ndarray  # (T,) bool
    # agents
    agent_ids: list[str]
    agent_types: np.ndarray  # (M,) int8
    agent_size: np.ndarray  # (M, 2) length, width
    agent_state: np.ndarray  # (M, T, 5) box centre
    agent_valid: np.ndarray  # (M, T) bool
    # map
    lane_ids: list[str]
    lane_polygons: np.ndarray  # (L,) shapely polygons
    lane_is_intersection: np.ndarray  # (L,) bool
    lane_on_route: np.ndarray  # (L,) bool: route lane or same-direction neighbour of one
    drivable: shapely.Geometry
    route_polyline: np.ndarray  # (P, 2)
    # traffic lights
    red_light_polygons: np.ndarray  # (K,) shapely polygons
    red_light_red: np.ndarray  # (K, T) bool: the light is red at step t
    # reference planner (idm) for progress normalisation; None -> the human log is used
    reference_state: np.ndarray | None = None  # (T, 7)
    reference_name: str = "human"
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived indices

    @cached_property
    def lane_tree(self) -> shapely.STRtree:
        for g in self.lane_polygons:
            shapely.prepare(g)
        return shapely.STRtree(self.lane_polygons)

    @cached_property
    def intersection_area(self) -> shapely.Geometry:
        polys = self.intersection_parts
        g = shapely.union_all(polys) if len(polys) else shapely.Polygon()
        shapely.prepare(g)
        return g

    def _raster(self, name: str, polygons_fn):
        """A grid accelerator (see :mod:`alpasim_policy.scoring.raster`), shared with other worlds
        of the same static map when there is one (t0 views scored every tick)."""
        from alpasim_policy.scoring.raster import PolygonRaster

        store = self.extra.setdefault("static", {})
        if name not in store:
            store[name] = PolygonRaster(polygons_fn())
        return store[name]

    @property
    def lane_raster(self):
        return self._raster("lane_raster", lambda: self.lane_polygons)

    @property
    def drivable_raster(self):
        return self._raster("drivable_raster", lambda: np.array([self.drivable], dtype=object))

    @property
    def intersection_raster(self):
        inter = self.intersection_area
        return self._raster(
            "intersection_raster", lambda: np.array([] if inter.is_empty else [inter], dtype=object)
        )

    def _use_raster(self, name: str, n_points: int) -> bool:
        # below ~50k points shapely alone is faster than building a grid
        return n_points >= RASTER_MIN_POINTS or name in self.extra.get("static", {})

    def lane_membership(self, xy: np.ndarray, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(point index, lane index) pairs: the point lies in (or, unless ``strict``, on) the lane polygon."""
        from alpasim_policy.scoring.metrics._common import points_in_polygons

        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if strict:
            return points_in_polygons(xy, self.lane_polygons, strict=True)
        if self._use_raster("lane_raster", len(xy)):
            return self.lane_raster.query(xy)
        return points_in_polygons(xy, self.lane_polygons)

    def _strictly_in_any(self, parts: np.ndarray, xy: np.ndarray) -> np.ndarray:
        out = np.zeros(len(xy), dtype=bool)
        for g in parts:
            shapely.prepare(g)
            out |= shapely.contains_xy(g, xy[:, 0], xy[:, 1])
        return out

    @property
    def drivable_parts(self) -> np.ndarray:
        """The drivable area as its separate polygons (NAVSIM tests each on its own); the union if unknown."""
        parts = self.extra.get("drivable_parts")
        return (
            np.asarray(parts, dtype=object) if parts is not None else np.array([self.drivable], dtype=object)
        )

    @property
    def intersection_parts(self) -> np.ndarray:
        """The intersection layer as separate polygons (default: the lanes flagged ``is_intersection``)."""
        parts = self.extra.get("intersection_parts")
        if parts is not None:
            return np.asarray(parts, dtype=object)
        return np.asarray(self.lane_polygons, dtype=object)[self.lane_is_intersection]

    def on_drivable(self, xy: np.ndarray, strict: bool = False) -> np.ndarray:
        """Points inside (or, unless ``strict``, on) the drivable area; ``strict`` tests each part alone."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if strict:
            return self._strictly_in_any(self.drivable_parts, xy)
        if self._use_raster("drivable_raster", len(xy)):
            return self.drivable_raster.contains(xy)
        shapely.prepare(self.drivable)
        return shapely.intersects_xy(self.drivable, xy[:, 0], xy[:, 1])

    def in_intersection(self, xy: np.ndarray, strict: bool = False) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if strict:
            return self._strictly_in_any(self.intersection_parts, xy)
        inter = self.intersection_area
        if inter.is_empty:
            return np.zeros(len(xy), dtype=bool)
        if self._use_raster("intersection_raster", len(xy)):
            return self.intersection_raster.contains(xy)
        return shapely.intersects_xy(inter, xy[:, 0], xy[:, 1])

    @cached_property
    def route_line(self) -> shapely.LineString:
        line = shapely.linestrings(self.route_polyline)
        shapely.prepare(line)
        return line

    @cached_property
    def route_length(self) -> float:
        return float(self.route_line.length)

    @cached_property
    def _route_dense(self) -> tuple[np.ndarray, object]:
        """The route resampled at <= 0.5 m and a KD-tree over its vertices (for fast distances)."""
        from scipy.spatial import cKDTree

        pts = np.asarray(self.route_polyline, np.float64)
        seg = np.diff(pts, axis=0)
        n = np.maximum(np.ceil(np.linalg.norm(seg, axis=1) / 0.5).astype(int), 1)
        idx = np.repeat(np.arange(len(seg)), n)
        start = np.concatenate([[0], np.cumsum(n)[:-1]])
        frac = (np.arange(int(n.sum())) - start[idx]) / n[idx]
        dense = np.concatenate([pts[idx] + seg[idx] * frac[:, None], pts[-1:]])
        return dense, cKDTree(dense)

    def route_distance(self, points: np.ndarray) -> np.ndarray:
        """Distance (m) of points (N, 2) to the route centerline.

        Equals shapely's point-to-line distance: the nearest point of a polyline sampled every
        0.5 m lies on a segment next to the nearest vertex, so only those two segments are
        checked (a KD-tree query instead of building 10^5 shapely points).
        """
        p = np.asarray(points, np.float64).reshape(-1, 2)
        dense, tree = self._route_dense
        _, k = tree.query(p)
        best = np.full(len(p), np.inf)
        px, py = p[:, 0], p[:, 1]
        for a_i in (k - 1, k):  # component-wise: reductions over a length-2 axis are slow in numpy
            a_i = np.clip(a_i, 0, len(dense) - 2)
            ax, ay = dense[a_i, 0], dense[a_i, 1]
            abx, aby = dense[a_i + 1, 0] - ax, dense[a_i + 1, 1] - ay
            denom = np.maximum(abx * abx + aby * aby, 1e-18)
            t = np.clip(((px - ax) * abx + (py - ay) * aby) / denom, 0.0, 1.0)
            dx, dy = px - (ax + t * abx), py - (ay + t * aby)
            best = np.minimum(best, np.sqrt(dx * dx + dy * dy))
        return best

    @cached_property
    def _route_segments(self) -> dict[str, np.ndarray | object]:
        from scipy.spatial import cKDTree

        pts = np.asarray(self.route_polyline, np.float64)
        a, ab = pts[:-1], np.diff(pts, axis=0)
        seg_len = np.hypot(ab[:, 0], ab[:, 1])
        return {
            "a": a,
            "ab": ab,
            "len": seg_len,
            "start": np.concatenate([[0.0], np.cumsum(seg_len)[:-1]]),
            "lo": np.minimum(pts[:-1], pts[1:]),
            "hi": np.maximum(pts[:-1], pts[1:]),
            "tree": cKDTree(pts),
        }

    def route_locate(self, points: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Arc length (m) along the route of the closest route point to each point (N, 2).

        Same rule as shapely's ``line_locate_point`` (the first segment at minimal distance, then
        the clamped projection onto it), about 10x faster for thousands of points: points are
        de-duplicated and sorted, and each chunk of them is tested only against the segments whose
        bounding box lies within the chunk's largest nearest-vertex distance (no segment farther
        than that can be the closest, so the result is exact).
        """
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        seg = self._route_segments
        if not len(seg["a"]) or not len(pts):
            return shapely.line_locate_point(self.route_line, shapely.points(pts))
        small = len(pts) * len(seg["a"]) <= 100_000  # few points: test every segment, no pruning
        uniq, inverse = (pts, np.arange(len(pts))) if small else np.unique(pts, axis=0, return_inverse=True)
        bound = None if small else seg["tree"].query(uniq)[0] + 1e-9
        out = np.empty(len(uniq))
        a, ab, seg_len, start = seg["a"], seg["ab"], seg["len"], seg["start"]
        denom = np.maximum(seg_len**2, 1e-300)
        every = np.arange(len(a))
        for lo in range(0, len(uniq), chunk):  # np.unique sorts by x, then y: chunks are compact
            p = uniq[lo : lo + chunk]
            if bound is None:
                cand = every
            else:
                u = float(bound[lo : lo + chunk].max())
                cmin, cmax = p.min(axis=0) - u, p.max(axis=0) + u
                cand = np.flatnonzero(np.all((seg["lo"] <= cmax) & (seg["hi"] >= cmin), axis=1))
            ap = p[:, None, :] - a[cand][None]
            abc = ab[cand]
            t = np.clip((ap[..., 0] * abc[:, 0] + ap[..., 1] * abc[:, 1]) / denom[cand], 0.0, 1.0)
            dx = ap[..., 0] - t * abc[:, 0]
            dy = ap[..., 1] - t * abc[:, 1]
            best = np.argmin(dx * dx + dy * dy, axis=1)
            rows = np.arange(len(best))
            k = cand[best]
            out[lo : lo + chunk] = start[k] + t[rows, best] * seg_len[k]
        return out[inverse.reshape(-1)]

    def prepare(self) -> ScoringWorld:
        """Build the spatial indices now (so a benchmark or a worker pays it once, up front)."""
        shapely.prepare(self.drivable)
        _ = self.lane_tree, self.intersection_area, self.route_line, self._route_dense
        return self

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def reference(self) -> np.ndarray:
        """The progress reference: the idm rollout when cached, else the human log."""
        return self.reference_state if self.reference_state is not None else self.human_state

    def agent_is_dynamic(self) -> np.ndarray:
        return np.isin(self.agent_types, np.array([int(t) for t in DYNAMIC_AGENT_TYPES]))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_scene(
        cls, scene: Scene, reference_state: np.ndarray | None = None, reference_name: str = "human"
    ) -> ScoringWorld:
        from alpasim_policy.scenes.geometry import Polyline

        static = _static_map(scene)
        red_polys, red_mask = _red_light_polygons(scene, Polyline)
        return cls(
            scene_id=scene.scene_id,
            content_hash=scene.content_hash,
            dt=float(scene.metadata.dt),
            t0_index=int(scene.metadata.t0_index),
            timestamps=np.asarray(scene.timestamps, dtype=np.float64),
            ego_length=float(scene.ego.length),
            ego_width=float(scene.ego.width),
            rear_axle_to_center=float(scene.ego.rear_axle_to_center),
            wheelbase=float(scene.ego.wheelbase),
            human_state=np.asarray(scene.ego.state, dtype=np.float64),
            human_valid=np.asarray(scene.ego.valid, dtype=bool),
            agent_ids=list(scene.agents.ids),
            agent_types=np.asarray(scene.agents.types, dtype=np.int8),
            agent_size=np.asarray(scene.agents.size, dtype=np.float64).reshape(-1, 2),
            agent_state=np.asarray(scene.agents.state, dtype=np.float64).reshape(
                len(scene.agents.ids), scene.num_steps, 5
            ),
            agent_valid=np.asarray(scene.agents.valid, dtype=bool).reshape(
                len(scene.agents.ids), scene.num_steps
            ),
            lane_ids=static["lane_ids"],
            lane_polygons=static["lane_polygons"],
            lane_is_intersection=static["lane_is_intersection"],
            lane_on_route=static["lane_on_route"],
            drivable=static["drivable"],
            route_polyline=static["route_polyline"],
            red_light_polygons=red_polys,
            red_light_red=red_mask,
            reference_state=None if reference_state is None else np.asarray(reference_state, np.float64),
            reference_name=reference_name if reference_state is not None else "human",
            extra={"static": static["_accel"]},
        )


# Static map geometry per map object: a policy that scores samples every tick on a "t0 view" of
# the same scene (same lane list, same route) must not rebuild lane polygons and the drivable
# union each time. Keyed by object identity; the entry keeps the objects alive so ids stay valid.
_STATIC: dict[tuple, tuple] = {}
_STATIC_MAX = 16


def _static_map(scene: Scene) -> dict:
    from alpasim_policy.scenes.geometry import Polyline, map_index

    m = scene.map
    key = (id(m.lanes), id(m.drivable_areas), tuple(scene.route.lane_ids), scene.route.polyline.tobytes())
    hit = _STATIC.get(key)
    if hit is not None and hit[0] is m.lanes and hit[1] is m.drivable_areas:
        return hit[2]
    mi = map_index(scene)  # the env's index of this scene object when it already built one
    static = {
        "lane_ids": [ln.id for ln in m.lanes],
        "lane_polygons": np.asarray(mi.lane_polygons, dtype=object).reshape(-1),
        "lane_is_intersection": np.array([bool(ln.is_intersection) for ln in m.lanes], dtype=bool),
        "lane_on_route": _on_route_lanes(scene, mi),
        "drivable": mi.drivable,
        "route_polyline": np.asarray(Polyline(scene.route.polyline).points, dtype=np.float64),
        "_accel": {},  # grid accelerators, built on first large query and shared by every world of this map
    }
    if len(_STATIC) >= _STATIC_MAX:
        _STATIC.pop(next(iter(_STATIC)))
    _STATIC[key] = (m.lanes, m.drivable_areas, static)
    return static


def _mean_direction(points: np.ndarray) -> np.ndarray:
    d = np.asarray(points, float)[-1] - np.asarray(points, float)[0]
    n = np.linalg.norm(d)
    return d / n if n > 1e-9 else np.array([1.0, 0.0])


def _on_route_lanes(scene: Scene, mi) -> np.ndarray:
    """Route lanes plus chains of same-direction left / right neighbours (roadblock stand-in)."""
    lanes = scene.map.lanes
    index = {ln.id: i for i, ln in enumerate(lanes)}
    out = np.zeros(len(lanes), dtype=bool)
    stack = [index[lid] for lid in scene.route.lane_ids if lid in index]
    for i in stack:
        out[i] = True
    while stack:
        i = stack.pop()
        ln = lanes[i]
        d0 = _mean_direction(ln.centerline)
        for nb in (ln.left_neighbor, ln.right_neighbor):
            j = index.get(nb) if nb else None
            if j is None or out[j]:
                continue
            if float(np.dot(d0, _mean_direction(lanes[j].centerline))) > 0.0:
                out[j] = True
                stack.append(j)
    return out


def _red_light_polygons(scene: Scene, polyline_cls) -> tuple[np.ndarray, np.ndarray]:
    lights = scene.map.traffic_lights
    T = scene.num_steps
    polys = []
    for tl in lights:
        a, b = np.asarray(tl.stop_line, dtype=np.float64)
        mid = 0.5 * (a + b)
        try:
            lane = scene.map.lane(tl.lane_id)
            _, _, hd = polyline_cls(lane.centerline).project(mid[None])
            fwd = np.array([np.cos(hd[0]), np.sin(hd[0])])
        except (KeyError, ValueError):
            seg = b - a
            fwd = np.array([-seg[1], seg[0]]) / max(np.linalg.norm(seg), 1e-9)
        off = RED_LIGHT_DEPTH_M * fwd
        polys.append(shapely.polygons(np.array([a, b, b + off, a + off])))
    red = (
        np.asarray(scene.map.light_states, dtype=np.int8).reshape(len(lights), T) == int(LightState.RED)
        if lights
        else np.zeros((0, T), dtype=bool)
    )
    return np.array(polys, dtype=object).reshape(-1), red
