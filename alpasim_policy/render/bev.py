"""Bird's-eye-view raster of a scene around the ego, drawn with OpenCV.

The image is ego-centred and ego-heading-up: the rig origin (rear axle) sits at
``BevConfig.ego_pixel()``, the rig +x axis (forward) points up the image and +y (left)
points left. ``meters_per_pixel`` sets the scale. It is used for ``render_mode="rgb_array"``
and as the ``bev`` observation.

Speed: :class:`BevRenderer` flattens the scene's map once (``_geometry.SceneGeometry``);
each render transforms the cached points with one vectorised rotation, culls items by a
bounding-circle test and fills them with ``cv2.fillPoly`` / ``cv2.polylines`` using
sub-pixel (``shift``) coordinates. :func:`render_bev` is a thin wrapper that caches one
renderer per (scene, config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import cv2
import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.render._geometry import SceneGeometry
from alpasim_policy.scenes.format import AgentType, LightState, Scene
from alpasim_policy.scenes.geometry import box_corners, scene_cache, scene_to_rig_xy

_SHIFT = 4  # sub-pixel bits for cv2 drawing calls
_SCALE = float(1 << _SHIFT)

RGB = tuple[int, int, int]


def _default_colors() -> dict[str, RGB]:
    return {
        "background": (0, 0, 0),
        "drivable": (64, 64, 64),
        "crosswalk": (110, 110, 130),
        "lane_boundary": (200, 200, 200),
        "centerline": (100, 100, 60),
        "route": (30, 90, 160),
        "ego": (230, 60, 60),
        "plan": (255, 200, 0),
        "light_unknown": (150, 150, 150),
        "light_red": (255, 0, 0),
        "light_yellow": (255, 220, 0),
        "light_green": (0, 220, 0),
    }


def _default_agent_colors() -> dict[str, RGB]:
    return {
        "VEHICLE": (60, 140, 255),
        "PEDESTRIAN": (255, 120, 220),
        "BICYCLE": (120, 255, 200),
        "MOTORCYCLE": (80, 230, 230),
        "BUS": (140, 110, 255),
        "TRUCK": (90, 90, 230),
        "STATIC": (160, 120, 80),
        "UNKNOWN": (180, 180, 180),
    }


@dataclass
class BevConfig:
    """What the raster shows and at which scale.

    ``ego_position`` is where the rig origin (rear axle) lands, as fractions of (width,
    height) from the top-left corner; the default puts it at the horizontal centre, 70 %
    down, so the view shows more road ahead than behind. Colours are RGB.
    """

    width: int = 256
    height: int = 256
    meters_per_pixel: float = 0.25
    ego_position: tuple[float, float] = (0.5, 0.7)
    antialias: bool = True
    draw_drivable: bool = True
    draw_crosswalks: bool = True
    draw_lane_boundaries: bool = True
    draw_centerlines: bool = True
    draw_route: bool = True
    draw_lights: bool = True
    draw_agents: bool = True
    draw_ego: bool = True
    draw_plan: bool = True
    colors: dict[str, RGB] = field(default_factory=_default_colors)
    agent_colors: dict[str, RGB] = field(default_factory=_default_agent_colors)

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ConfigError(f"bev: width/height must be positive, got {self.width}x{self.height}")
        if not (self.meters_per_pixel > 0 and np.isfinite(self.meters_per_pixel)):
            raise ConfigError(f"bev: meters_per_pixel must be positive, got {self.meters_per_pixel}")
        self.width, self.height = int(self.width), int(self.height)
        self.ego_position = (float(self.ego_position[0]), float(self.ego_position[1]))
        colors = _default_colors()
        colors.update({k: tuple(int(c) for c in v) for k, v in self.colors.items()})
        self.colors = colors
        agent_colors = _default_agent_colors()
        for k, v in self.agent_colors.items():
            if k not in AgentType.__members__:
                raise ConfigError(f"bev: agent_colors key {k!r} is not an AgentType name")
            agent_colors[k] = tuple(int(c) for c in v)
        self.agent_colors = agent_colors

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BevConfig:
        """Build from a YAML mapping; an unknown key or a wrong type is a :class:`ConfigError` naming it."""
        from alpasim_policy.typed_config import from_mapping

        return from_mapping(cls, d, "bev")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ego_pixel(self) -> tuple[float, float]:
        """(column, row) of the rig origin, in OpenCV pixel coordinates (pixel centres are integers)."""
        return self.ego_position[0] * self.width, self.ego_position[1] * self.height

    def view_radius(self) -> float:
        """Radius (m) around the rig origin that covers the whole image; culling uses it."""
        cx, cy = self.ego_pixel()
        dx = max(cx, self.width - cx)
        dy = max(cy, self.height - cy)
        return float(np.hypot(dx, dy) * self.meters_per_pixel)

    def _key(self) -> tuple:
        # Field by field rather than via asdict (which deep-copies the colour tables): same key,
        # about 8x cheaper, and render_bev computes it on every call.
        return tuple(sorted((f.name, repr(getattr(self, f.name))) for f in fields(self)))


class BevRenderer:
    """Renders one scene from any ego pose; construct once per scene (map flattened here)."""

    def __init__(self, scene: Scene, config: BevConfig | None = None):
        # Keep the parts we need, not the scene itself: the module cache holds renderers and
        # must not keep a scene alive (it is dropped when the scene is collected).
        self._agents = scene.agents
        self._light_states = scene.map.light_states
        self.config = config or BevConfig()
        self.geometry = SceneGeometry.for_scene(scene)
        c = self.config
        self._line = cv2.LINE_AA if c.antialias else cv2.LINE_8
        self._bg = np.empty((c.height, c.width, 3), dtype=np.uint8)
        self._bg[:] = c.colors["background"]
        self._agent_rgb = np.array(
            [c.agent_colors[AgentType(t).name] for t in sorted(int(t) for t in AgentType)], dtype=np.int64
        )
        self._light_rgb = {
            LightState.UNKNOWN: c.colors["light_unknown"],
            LightState.RED: c.colors["light_red"],
            LightState.YELLOW: c.colors["light_yellow"],
            LightState.GREEN: c.colors["light_green"],
        }
        L, W, r2c = scene.ego.length, scene.ego.width, scene.ego.rear_axle_to_center
        # The ego box is fixed in the rig frame (and so in the image): computed once.
        self._ego_corners = box_corners(
            np.array([r2c]), np.zeros(1), np.zeros(1), np.array([L]), np.array([W])
        )
        self._radius = c.view_radius()

    # ------------------------------------------------------------------ helpers

    def rig_to_pixel(self, xy_rig: np.ndarray) -> np.ndarray:
        """Rig-frame (..., 2) metres -> (..., 2) float pixel (column, row)."""
        c = self.config
        cx, cy = c.ego_pixel()
        out = np.empty_like(xy_rig, dtype=np.float64)
        out[..., 0] = cx - xy_rig[..., 1] / c.meters_per_pixel
        out[..., 1] = cy - xy_rig[..., 0] / c.meters_per_pixel
        return out

    def _fixed(self, xy_rig: np.ndarray) -> np.ndarray:
        """Rig metres -> int32 sub-pixel coordinates for cv2 (``shift`` bits)."""
        px = self.rig_to_pixel(xy_rig) * _SCALE
        # keep far-away points inside int32 while preserving direction well enough
        np.clip(px, -(2**28), 2**28, out=px)
        return np.rint(px).astype(np.int32)

    def _layer(self, img: np.ndarray, flat, pose: np.ndarray, color: RGB, *, fill: bool, closed: bool = False,
               thickness: int = 1) -> None:  # fmt: skip
        idx = flat.near(pose[:2], self._radius)
        if len(idx) == 0:
            return
        # Transforming every point of the layer is one vectorised op (cheaper than gathering
        # the selected items' points first); culling then only decides what cv2 fills.
        fx = self._fixed(scene_to_rig_xy(flat.points, pose))
        o = flat.offsets
        polys = [fx[o[i] : o[i + 1]] for i in idx]
        if fill:
            # one call per polygon: a multi-polygon fillPoly is even-odd, so overlapping
            # drivable areas would cancel each other out
            for p in polys:
                cv2.fillPoly(img, [p], color, self._line, _SHIFT)
        else:
            cv2.polylines(img, polys, closed, color, thickness, self._line, _SHIFT)

    def _road(self, img: np.ndarray, pose: np.ndarray, color: RGB) -> None:
        road = self.geometry.road
        idx = road.near(pose[:2], self._radius)
        if len(idx) == 0:
            return
        fx = self._fixed(scene_to_rig_xy(road.rings.points, pose))
        o = road.rings.offsets
        for k in idx:  # one call per polygon: exterior + holes, even-odd
            cv2.fillPoly(img, [fx[o[i] : o[i + 1]] for i in road.groups[k]], color, self._line, _SHIFT)

    # ------------------------------------------------------------------ render

    def render(
        self,
        *,
        ego_state: np.ndarray,
        agent_states: np.ndarray | None = None,
        agent_valid: np.ndarray | None = None,
        step: int = 0,
        plan_world: np.ndarray | None = None,
        plan_rig: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw the scene around ``ego_state`` (an EGO_COLUMNS row: rear axle, scene frame).

        ``agent_states`` (N, >=3) are box centres (x, y, heading) in the scene frame for the
        scene's N agents; rows where ``agent_valid`` is False are skipped. ``step`` picks the
        traffic-light states. The plan may be given in the scene frame (``plan_world``) or the
        rig frame (``plan_rig``), (T, >=2) either way. Returns (H, W, 3) uint8 RGB.

        ``out``: draw over this (H, W, 3) uint8 image (a view is fine) instead of a fresh
        background, and return it. With the map layers switched off in the config this draws
        only what moves over a map drawn beforehand (the rollout videos pre-draw the map once
        per rollout and rotate it into place each frame).
        """
        c = self.config
        g = self.geometry
        pose = np.asarray(ego_state, dtype=np.float64)[:3]
        if out is not None:
            if out.shape != self._bg.shape or out.dtype != np.uint8:
                raise ValueError(
                    f"render_bev: out is {out.shape} {out.dtype}, expected {self._bg.shape} uint8"
                )
            img = out
        else:
            img = self._bg.copy()
        if c.draw_drivable:
            self._road(img, pose, c.colors["drivable"])
        if c.draw_crosswalks:
            self._layer(img, g.crosswalks, pose, c.colors["crosswalk"], fill=True)
        if c.draw_centerlines:
            self._layer(img, g.centerlines, pose, c.colors["centerline"], fill=False)
        if c.draw_lane_boundaries:
            self._layer(img, g.boundaries, pose, c.colors["lane_boundary"], fill=False)
        if c.draw_route:
            thick = max(1, int(round(1.0 / c.meters_per_pixel)))
            self._layer(img, g.route, pose, c.colors["route"], fill=False, thickness=thick)
        if c.draw_lights and len(g.stop_lines):
            self._draw_lights(img, pose, step)
        if c.draw_agents and agent_states is not None and len(agent_states):
            self._draw_agents(img, pose, np.asarray(agent_states), agent_valid)
        if c.draw_plan and (plan_world is not None or plan_rig is not None):
            if plan_rig is None:
                plan_rig = scene_to_rig_xy(np.asarray(plan_world, dtype=np.float64)[:, :2], pose)
            self._draw_plan(img, np.asarray(plan_rig, dtype=np.float64)[:, :2])
        if c.draw_ego:
            cv2.fillPoly(img, list(self._fixed(self._ego_corners)), c.colors["ego"], self._line, _SHIFT)
            self._heading_ticks(img, self._ego_corners, (255, 255, 255))
        return img

    def _draw_lights(self, img: np.ndarray, pose: np.ndarray, step: int) -> None:
        states = self._light_states
        T = states.shape[1]
        col = states[:, min(max(int(step), 0), T - 1)] if T else np.zeros(len(states), dtype=np.int8)
        fx = self._fixed(scene_to_rig_xy(self.geometry.stop_lines, pose))
        thick = max(2, int(round(0.5 / self.config.meters_per_pixel)))
        for k in range(len(fx)):
            color = self._light_rgb.get(int(col[k]), self._light_rgb[LightState.UNKNOWN])
            cv2.polylines(img, [fx[k]], False, color, thick, self._line, _SHIFT)

    def _draw_agents(
        self, img: np.ndarray, pose: np.ndarray, states: np.ndarray, valid: np.ndarray | None
    ) -> None:
        a = self._agents
        n = len(states)
        if n != len(a.ids):
            raise ValueError(f"render_bev: agent_states has {n} rows, the scene has {len(a.ids)} agents")
        mask = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).copy()
        d = np.hypot(states[:, 0] - pose[0], states[:, 1] - pose[1])
        mask &= d <= self._radius + np.hypot(a.size[:, 0], a.size[:, 1])
        idx = np.nonzero(mask)[0]
        if len(idx) == 0:
            return
        xy = scene_to_rig_xy(states[idx, :2], pose)
        h = states[idx, 2] - pose[2]
        corners = box_corners(xy[:, 0], xy[:, 1], h, a.size[idx, 0], a.size[idx, 1])
        fx = self._fixed(corners)
        types = np.asarray(a.types)[idx].astype(np.int64)
        for t in np.unique(types):
            sel = np.nonzero(types == t)[0]
            color = tuple(int(v) for v in self._agent_rgb[t])
            for box in fx[sel]:  # one by one: overlapping boxes must not XOR each other
                cv2.fillConvexPoly(img, box, color, self._line, _SHIFT)
        self._heading_ticks(img, corners, (20, 20, 20))

    def _heading_ticks(self, img: np.ndarray, corners: np.ndarray, color: RGB) -> None:
        """A line from each box centre to its front edge, so headings read at a glance."""
        centre = corners.mean(axis=1)
        front = (corners[:, 0] + corners[:, 3]) / 2
        segs = self._fixed(np.stack([centre, front], axis=1))
        cv2.polylines(img, list(segs), False, color, 1, self._line, _SHIFT)

    def _draw_plan(self, img: np.ndarray, plan_rig: np.ndarray) -> None:
        if len(plan_rig) == 0:
            return
        color = self.config.colors["plan"]
        pts = self._fixed(np.vstack([[0.0, 0.0], plan_rig]))
        thick = max(1, int(round(0.4 / self.config.meters_per_pixel)))
        cv2.polylines(img, [pts], False, color, thick, self._line, _SHIFT)
        radius = max(1, thick) << _SHIFT
        for p in pts[1::10]:
            cv2.circle(img, (int(p[0]), int(p[1])), radius, color, -1, self._line, _SHIFT)


def get_bev_renderer(scene: Scene, config: BevConfig | None = None) -> BevRenderer:
    """The cached :class:`BevRenderer` for this scene object and config (built on first use)."""
    config = config or BevConfig()
    return scene_cache(scene, ("bev", config._key()), lambda: BevRenderer(scene, config))


def render_bev(
    scene: Scene,
    *,
    ego_state: np.ndarray,
    agent_states: np.ndarray | None,
    agent_valid: np.ndarray | None,
    step: int,
    plan_world: np.ndarray | None = None,
    plan_rig: np.ndarray | None = None,
    config: BevConfig | None = None,
) -> np.ndarray:
    """Ego-centred, heading-up BEV raster (H, W, 3) uint8 RGB; see :meth:`BevRenderer.render`."""
    return get_bev_renderer(scene, config).render(
        ego_state=ego_state,
        agent_states=agent_states,
        agent_valid=agent_valid,
        step=step,
        plan_world=plan_world,
        plan_rig=plan_rig,
    )
