"""Per-scene static geometry, flattened once so every 0.1 s render is a transform + fill.

Why: a scene's map holds hundreds of ragged polylines. Converting them to numpy each tick
would dominate render time, so both the BEV and the camera renderer build one
:class:`FlatPolylines` per layer (all points stacked, plus offsets and a bounding circle
per item for distance culling) when a renderer is created, and reuse it every tick.

Frames: points here are in the *scene frame* (see ``scenes/format.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpasim_policy.scenes.format import AgentType, Scene
from alpasim_policy.scenes.geometry import map_index, scene_cache

#: Box heights (m) per agent type, used by the camera renderer (the scene stores only a
#: footprint). Typical values for each class: cars ~1.6 m, buses/trucks ~3.3 m.
AGENT_HEIGHTS: dict[int, float] = {
    AgentType.VEHICLE: 1.6,
    AgentType.PEDESTRIAN: 1.75,
    AgentType.BICYCLE: 1.7,
    AgentType.MOTORCYCLE: 1.5,
    AgentType.BUS: 3.2,
    AgentType.TRUCK: 3.4,
    AgentType.STATIC: 1.0,
    AgentType.UNKNOWN: 1.5,
}


@dataclass
class FlatPolylines:
    """Ragged polylines (or polygons) stacked into one array.

    ``points[offsets[i]:offsets[i+1]]`` is item ``i``; ``centers``/``radii`` give a bounding
    circle per item so a renderer can drop items out of view with one vectorised test.
    """

    points: np.ndarray  # (P, 2) float64, scene frame
    offsets: np.ndarray  # (n + 1,) int64
    centers: np.ndarray  # (n, 2)
    radii: np.ndarray  # (n,)

    @classmethod
    def from_list(cls, items: list[np.ndarray]) -> FlatPolylines:
        items = [np.asarray(it, dtype=np.float64).reshape(-1, 2) for it in items if len(it) >= 2]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        if not items:
            z = np.zeros((0, 2))
            return cls(z, offsets, z.copy(), np.zeros(0))
        offsets[1:] = np.cumsum([len(it) for it in items])
        lo = np.array([it.min(axis=0) for it in items])
        hi = np.array([it.max(axis=0) for it in items])
        centers = (lo + hi) / 2
        radii = np.linalg.norm(hi - lo, axis=1) / 2
        return cls(np.concatenate(items), offsets, centers, radii)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def near(self, xy: np.ndarray, radius: float) -> np.ndarray:
        """Indices of items whose bounding circle comes within ``radius`` of ``xy``."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        d = np.hypot(self.centers[:, 0] - xy[0], self.centers[:, 1] - xy[1])
        return np.nonzero(d <= radius + self.radii)[0]

    def segments(self) -> np.ndarray:
        """All consecutive point pairs as (S, 2, 2): what line-drawing renderers clip."""
        if len(self.points) == 0:
            return np.zeros((0, 2, 2))
        starts = np.arange(len(self.points) - 1)
        # drop the pairs that straddle two items
        last = self.offsets[1:] - 1
        keep = np.ones(len(starts), dtype=bool)
        keep[last[last < len(starts)]] = False
        starts = starts[keep]
        return np.stack([self.points[starts], self.points[starts + 1]], axis=1)


@dataclass
class RoadSurface:
    """The drivable surface as polygons with holes, ready for even-odd filling.

    Taken from :class:`alpasim_policy.scenes.geometry.MapIndex` (drivable areas united with
    every lane polygon, slivers closed) so the pictures show exactly the area the simulator
    and scorer treat as on-road, also for sources without drivable-area polygons
    (CommonRoad). ``rings`` holds every exterior and interior ring; ``groups[k]`` the ring
    indices of polygon ``k`` (exterior first). One ``cv2.fillPoly`` call per polygon with
    all its rings fills the area and leaves the holes (fillPoly is even-odd).
    """

    rings: FlatPolylines
    groups: list[np.ndarray]
    centers: np.ndarray  # (K, 2) bounding circle per polygon
    radii: np.ndarray

    @classmethod
    def from_scene(cls, scene: Scene, tolerance: float = 0.05) -> RoadSurface:
        import shapely

        area = shapely.simplify(map_index(scene).drivable, tolerance)
        polys = [g for g in getattr(area, "geoms", [area]) if g.geom_type == "Polygon" and not g.is_empty]
        rings: list[np.ndarray] = []
        groups: list[np.ndarray] = []
        for poly in polys:
            start = len(rings)
            for ring in [poly.exterior, *poly.interiors]:
                xy = np.asarray(ring.coords)[:-1, :2]  # drop the closing point
                if len(xy) >= 3:
                    rings.append(xy)
            if len(rings) > start:
                groups.append(np.arange(start, len(rings)))
        flat = FlatPolylines.from_list(rings)
        if groups:
            centers = np.array([flat.centers[g[0]] for g in groups])
            radii = np.array([flat.radii[g[0]] for g in groups])
        else:
            centers, radii = np.zeros((0, 2)), np.zeros(0)
        return cls(flat, groups, centers, radii)

    def near(self, xy: np.ndarray, radius: float) -> np.ndarray:
        if not len(self.groups):
            return np.zeros(0, dtype=np.int64)
        d = np.hypot(self.centers[:, 0] - xy[0], self.centers[:, 1] - xy[1])
        return np.nonzero(d <= radius + self.radii)[0]


@dataclass
class SceneGeometry:
    """The static layers of one scene's map, flattened (see module docstring)."""

    road: RoadSurface
    crosswalks: FlatPolylines
    boundaries: FlatPolylines  # lane left + right boundaries
    painted_boundaries: FlatPolylines  # the same, without lanes inside intersections
    centerlines: FlatPolylines
    route: FlatPolylines  # one item: the route polyline
    stop_lines: np.ndarray  # (K, 2, 2)

    @classmethod
    def for_scene(cls, scene: Scene) -> SceneGeometry:
        """The cached geometry of this scene object (shared by the BEV and camera renderers)."""
        return scene_cache(scene, "geometry", lambda: cls.from_scene(scene))

    @classmethod
    def from_scene(cls, scene: Scene) -> SceneGeometry:
        m = scene.map
        vehicle_lanes = list(m.lanes)
        bounds = [ln.left_boundary for ln in vehicle_lanes] + [ln.right_boundary for ln in vehicle_lanes]
        painted = [ln.left_boundary for ln in vehicle_lanes if not ln.is_intersection] + [
            ln.right_boundary for ln in vehicle_lanes if not ln.is_intersection
        ]
        stop = np.asarray([tl.stop_line for tl in m.traffic_lights], dtype=np.float64).reshape(-1, 2, 2)
        return cls(
            road=RoadSurface.from_scene(scene),
            crosswalks=FlatPolylines.from_list(list(m.crosswalks)),
            boundaries=FlatPolylines.from_list(bounds),
            painted_boundaries=FlatPolylines.from_list(painted),
            centerlines=FlatPolylines.from_list([ln.centerline for ln in vehicle_lanes]),
            route=FlatPolylines.from_list([scene.route.polyline]),
            stop_lines=stop,
        )
