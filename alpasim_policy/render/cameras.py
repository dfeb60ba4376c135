"""Pinhole cameras on the ego rig and a flat-world perspective renderer for vision policies.

Frames.
- *rig*: x forward, y left, z up; origin at the rear-axle centre **on the ground** (z = 0
  is the road). This is also Argoverse 2's ``egovehicle`` frame, so AV2 extrinsics apply
  unchanged.
- *camera*: OpenCV convention, x right, y down, z forward along the optical axis.
- ``Camera.rig_T_cam`` (4x4) maps camera-frame points into the rig frame (the camera's
  pose on the rig); ``cam_T_rig`` is its inverse.
- Pixels: OpenCV convention, (u, v) = (column, row), integer values at pixel centres,
  ``u = fx * x / z + cx``, ``v = fy * y / z + cy``. Lens distortion is not modelled: the
  renderer draws ideal pinhole images (AV2's distortion coefficients are kept in the rig
  JSON for reference only).

Rendering (:class:`CameraRenderer`) draws, per camera: a sky / off-road ground background
(constant per camera on a flat world, so computed once), the drivable area, crosswalks
(zebra bars), lane boundaries (width scaled with depth), stop lines coloured by the light
state, and agents as filled 3D boxes with a per-type height, farthest first (painter's
order) with back faces culled. Vehicles carry brake lamps on their rear face (two tail lamps and a
high-mounted stop lamp), lit while the vehicle brakes or stands (:func:`brake_lamps_lit`): the one
cue a real camera gives, in a single frame, that a car ahead is stopping. Every ground polygon and
box face is clipped against the plane ``z_cam >= near`` *in camera space* before projection, so
geometry that crosses behind the camera is cut correctly instead of folding through infinity.

Not photoreal, but geometrically right: what a real camera with these intrinsics and
extrinsics would see of a flat world with these boxes on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.render._geometry import AGENT_HEIGHTS, SceneGeometry
from alpasim_policy.scenes.format import DT, Agents, AgentType, LightState, Scene
from alpasim_policy.scenes.geometry import box_corners, scene_cache

RIGS_DIR = Path(str(files("alpasim_policy.render.rigs")))  # package data (the bundled rig JSONs)
PRESETS = ("av2_ring", "alpamayo4")

_SHIFT = 4
_SCALE = float(1 << _SHIFT)
_LIMIT = float(2**26)  # keep sub-pixel int32 coordinates far from overflow


# ----------------------------------------------------------------------------- cameras


@dataclass
class Camera:
    """One pinhole camera: intrinsics in pixels, pose on the rig (see module docstring)."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    rig_T_cam: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: The projection the camera's owner declared (``pinhole``, ``ftheta``, ``fisheye``: AlpaSim's
    #: sensorsim cameras); images are always rendered pinhole with ``fx`` / ``fy`` (for the other
    #: models: pixels per radian at the centre).
    model: str = "pinhole"

    def __post_init__(self) -> None:
        self.rig_T_cam = np.asarray(self.rig_T_cam, dtype=np.float64)
        if self.rig_T_cam.shape != (4, 4):
            raise ConfigError(f"camera {self.name!r}: rig_T_cam must be 4x4, got {self.rig_T_cam.shape}")
        R = self.rig_T_cam[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            raise ConfigError(f"camera {self.name!r}: rig_T_cam rotation is not a proper rotation")
        if self.width <= 0 or self.height <= 0 or self.fx <= 0 or self.fy <= 0:
            raise ConfigError(f"camera {self.name!r}: size and focal lengths must be positive")
        self.width, self.height = int(self.width), int(self.height)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def cam_T_rig(self) -> np.ndarray:
        R, t = self.rig_T_cam[:3, :3], self.rig_T_cam[:3, 3]
        out = np.eye(4)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    @property
    def position(self) -> np.ndarray:
        """Camera centre in the rig frame (m)."""
        return self.rig_T_cam[:3, 3].copy()

    @property
    def hfov_deg(self) -> float:
        return float(np.degrees(2 * np.arctan(self.width / (2 * self.fx))))

    @property
    def vfov_deg(self) -> float:
        return float(np.degrees(2 * np.arctan(self.height / (2 * self.fy))))

    def scaled(self, width: int | None = None, height: int | None = None) -> Camera:
        """The same camera at another resolution (an image resize, not a crop).

        With one of ``width`` / ``height`` given, the other keeps the aspect ratio. Focal
        lengths scale by the size ratio; principal points follow the pixel-centre
        convention, ``c' = (c + 0.5) * s - 0.5``, so a point keeps its place in the image.
        """
        if width is None and height is None:
            return replace(self, rig_T_cam=self.rig_T_cam.copy())
        if width is None:
            width = max(1, round(self.width * height / self.height))
        if height is None:
            height = max(1, round(self.height * width / self.width))
        sx, sy = width / self.width, height / self.height
        return Camera(
            name=self.name,
            width=int(width),
            height=int(height),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            rig_T_cam=self.rig_T_cam.copy(),
            model=self.model,
        )

    def rig_to_cam(self, points_rig: np.ndarray) -> np.ndarray:
        """(..., 3) rig-frame points -> (..., 3) camera-frame points."""
        T = self.cam_T_rig
        return points_rig @ T[:3, :3].T + T[:3, 3]

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points (z > 0) -> (..., 2) pixel (u, v); no clipping."""
        z = points_cam[..., 2]
        u = self.fx * points_cam[..., 0] / z + self.cx
        v = self.fy * points_cam[..., 1] / z + self.cy
        return np.stack([u, v], axis=-1)

    def project_rig(self, points_rig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rig points -> (pixels (..., 2), visible (...,) bool: in front and inside the image)."""
        pc = self.rig_to_cam(np.asarray(points_rig, dtype=np.float64))
        front = pc[..., 2] > 1e-6
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = self.project(pc)
        inside = (
            front
            & (uv[..., 0] >= -0.5)
            & (uv[..., 0] < self.width - 0.5)
            & (uv[..., 1] >= -0.5)
            & (uv[..., 1] < self.height - 0.5)
        )
        return uv, inside

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "rig_T_cam": self.rig_T_cam.tolist(),
        }
        if self.model != "pinhole":
            d["model"] = self.model
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "camera") -> Camera:
        need = ("name", "width", "height", "fx", "fy", "cx", "cy", "rig_T_cam")
        missing = [k for k in need if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing}")
        return cls(**{k: d[k] for k in need}, model=str(d.get("model", "pinhole")))


def _quat_to_matrix(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat([qx, qy, qz, qw]).as_matrix()


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


@dataclass
class CameraRig:
    """A named set of cameras on the ego rig, in a fixed order."""

    name: str
    cameras: list[Camera]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"rig {self.name!r}: camera names are not unique: {names}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def cache_key(self) -> tuple:
        """A value key (what is rendered depends on it): equal for equal rigs, never reused for another."""
        return tuple(
            (c.name, c.width, c.height, c.fx, c.fy, c.cx, c.cy, c.rig_T_cam.tobytes(), c.model)
            for c in self.cameras
        )

    def __getitem__(self, name: str) -> Camera:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"rig {self.name!r} has no camera {name!r}; it has {self.names}")

    def __len__(self) -> int:
        return len(self.cameras)

    def scaled(self, width: int | None = None, height: int | None = None) -> CameraRig:
        return CameraRig(self.name, [c.scaled(width, height) for c in self.cameras], dict(self.metadata))

    def select(self, names: list[str]) -> CameraRig:
        return CameraRig(self.name, [self[n] for n in names], dict(self.metadata))

    @classmethod
    def from_json(cls, path: str | Path) -> CameraRig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a readable rig JSON: {e}") from e
        if "cameras" not in d or not d["cameras"]:
            raise ConfigError(f"{path}: field 'cameras' missing or empty")
        cams = [Camera.from_dict(c, f"{path}: cameras[{i}]") for i, c in enumerate(d["cameras"])]
        meta = {k: v for k, v in d.items() if k not in ("name", "cameras")}
        return cls(str(d.get("name", path.stem)), cams, meta)

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.metadata, "cameras": [c.to_dict() for c in self.cameras]}

    @classmethod
    def from_preset(cls, name: str, width: int | None = None, height: int | None = None) -> CameraRig:
        """A bundled rig (``av2_ring`` or ``alpamayo4``), optionally at another resolution.

        ``width``/``height`` apply to every camera (one given: aspect kept per camera).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown camera rig preset {name!r}; known: {list(PRESETS)}")
        rig = cls.from_json(RIGS_DIR / f"{name}.json")
        return rig.scaled(width, height) if (width or height) else rig

    @classmethod
    def from_av2_calibration(cls, calib_dir: str | Path, cameras: list[str] | None = None) -> CameraRig:
        """Read an AV2 log's ``calibration/{intrinsics,egovehicle_SE3_sensor}.feather``.

        AV2's ``egovehicle_SE3_sensor`` rows are the sensor pose in the egovehicle frame,
        which is our rig frame, and AV2 camera frames are OpenCV-style, so the quaternion and
        translation give ``rig_T_cam`` directly. Defaults to the 7 ring cameras.
        """
        import pyarrow.feather as feather

        calib_dir = Path(calib_dir)
        files = {n: calib_dir / f"{n}.feather" for n in ("intrinsics", "egovehicle_SE3_sensor")}
        tables = {}
        for n, p in files.items():
            try:
                tables[n] = {r["sensor_name"]: r for r in feather.read_table(p).to_pylist()}
            except (OSError, KeyError) as e:
                raise ConfigError(f"{p}: not a readable AV2 calibration table: {e}") from e
        intr, extr = tables["intrinsics"], tables["egovehicle_SE3_sensor"]
        names = cameras or sorted(n for n in intr if n.startswith("ring_"))
        cams = []
        for n in names:
            if n not in intr or n not in extr:
                raise ConfigError(f"{calib_dir}: camera {n!r} missing from the calibration tables")
            i, e = intr[n], extr[n]
            R = _quat_to_matrix(e["qw"], e["qx"], e["qy"], e["qz"])
            cams.append(
                Camera(
                    name=n,
                    width=int(i["width_px"]),
                    height=int(i["height_px"]),
                    fx=float(i["fx_px"]),
                    fy=float(i["fy_px"]),
                    cx=float(i["cx_px"]),
                    cy=float(i["cy_px"]),
                    rig_T_cam=_pose(R, np.array([e["tx_m"], e["ty_m"], e["tz_m"]])),
                )
            )
        return cls("av2_ring", cams)


# ----------------------------------------------------------------------------- clipping


def clip_polygon_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of one camera-frame polygon (P, 3) to ``z >= near``.

    Vectorised over the polygon's edges: edge i (v_i -> v_i+1) emits v_i when v_i is in
    front, then the crossing point when the edge crosses the plane. Returns (Q, 3), Q may
    be 0.
    """
    z = poly[:, 2]
    inside = z >= near
    if inside.all():
        return poly
    if not inside.any():
        return poly[:0]
    nxt = np.roll(poly, -1, axis=0)
    zn = nxt[:, 2]
    cross = inside != (zn >= near)
    dz = zn - z
    t = (near - z) / np.where(cross, dz, 1.0)  # only crossing edges use t
    hit = poly + t[:, None] * (nxt - poly)
    hit[:, 2] = near
    cand = np.stack([poly, hit], axis=1).reshape(-1, 3)
    keep = np.stack([inside, cross], axis=1).reshape(-1)
    return cand[keep]


def clip_segments_near(
    a: np.ndarray, b: np.ndarray, near: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip (S, 3) camera-frame segments a->b to ``z >= near``; returns (a', b', kept mask)."""
    ina, inb = a[:, 2] >= near, b[:, 2] >= near
    keep = ina | inb
    a, b = a[keep].copy(), b[keep].copy()
    ina, inb = ina[keep], inb[keep]
    dz = b[:, 2] - a[:, 2]
    t = (near - a[:, 2]) / np.where(ina == inb, 1.0, dz)  # only crossing segments use t
    hit = a + t[:, None] * (b - a)
    hit[:, 2] = near
    a[~ina] = hit[~ina]
    b[~inb] = hit[~inb]
    return a, b, keep


# ----------------------------------------------------------------------------- renderer


def _default_style() -> dict[str, Any]:
    return {
        "sky_top": (110, 150, 205),
        "sky_horizon": (190, 210, 230),
        "ground": (105, 115, 90),
        "road": (72, 72, 76),
        "crosswalk": (215, 215, 210),
        "lane_line": (230, 230, 225),
        "agent_vehicle": (40, 90, 200),
        "agent_pedestrian": (220, 80, 170),
        "agent_bicycle": (60, 190, 140),
        "agent_motorcycle": (50, 170, 190),
        "agent_bus": (230, 170, 40),
        "agent_truck": (200, 120, 40),
        "agent_static": (230, 110, 30),
        "agent_unknown": (150, 150, 150),
        "light_unknown": (160, 160, 160),
        "light_red": (235, 30, 30),
        "light_yellow": (240, 210, 30),
        "light_green": (40, 220, 60),
        "brake_lamp_off": (110, 25, 25),
        "brake_lamp_on": (255, 45, 45),
    }


@dataclass
class CameraStyle:
    """Colours (RGB) and drawing limits shared by every camera of a renderer."""

    near: float = 0.2  # m, camera-space clipping plane
    max_range: float = 120.0  # m around the ego; map items and agents beyond are culled
    lane_line_width: float = 0.15  # m, painted width of lane boundaries
    stop_line_width: float = 0.5  # m
    paint_intersection_lanes: bool = False  # draw boundaries of lanes inside intersections too
    lane_segment_max: float = 2.0  # m; lines are cut this fine so their pixel width can follow depth
    crosswalk_bar: float = 0.5  # m, zebra bar and gap width
    draw_lane_lines: bool = True
    draw_crosswalks: bool = True
    draw_lights: bool = True  # stop lines + a light head above each, coloured by state
    light_head_height: float = 5.0  # m, bottom of the light head above the road
    draw_brake_lamps: bool = True  # rear lamps on vehicles, lit while braking or standing
    antialias: bool = True
    colors: dict[str, tuple[int, int, int]] = field(default_factory=_default_style)

    def __post_init__(self) -> None:
        c = _default_style()
        c.update({k: tuple(int(v) for v in val) for k, val in self.colors.items()})
        self.colors = c
        if not self.near > 0:
            raise ConfigError(f"camera style: near must be > 0, got {self.near}")

    def cache_key(self) -> tuple:
        """A value key of every field (colours included)."""
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CameraStyle:
        """Build from a YAML mapping; an unknown key or a wrong type is a :class:`ConfigError` naming it."""
        from alpasim_policy.typed_config import from_mapping

        return from_mapping(cls, d, "camera style")


# box faces over corners 0-3 (bottom: FL, RL, RR, FR) and 4-7 (top, same order)
_SIDE_FACES = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7]])
_TOP_FACE = np.array([[4, 5, 6, 7]])
_FACES = np.vstack([_SIDE_FACES, _TOP_FACE])  # (5, 4)


def _crosswalk_bars(poly: np.ndarray, bar: float) -> list[np.ndarray]:
    """Zebra bars for a 4-corner crosswalk: quads spanning its short direction, ``bar`` apart.

    The two longer opposite sides are the crossing's edges (they run across the road);
    bars join matching points on them. Other polygons come back whole.
    """
    if len(poly) != 4:
        return [poly]
    p = poly
    l01 = np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[3] - p[2])
    l12 = np.linalg.norm(p[2] - p[1]) + np.linalg.norm(p[0] - p[3])
    if l12 > l01:
        p = np.roll(p, -1, axis=0)
    # edges p0->p1 and p3->p2 are the long sides
    e1a, e1b, e2a, e2b = p[0], p[1], p[3], p[2]
    length = max(np.linalg.norm(e1b - e1a), np.linalg.norm(e2b - e2a))
    n = max(1, int(length / (2 * bar)))
    bars = []
    for k in range(n):
        t0, t1 = (2 * k + 0.5) / (2 * n), (2 * k + 1.5) / (2 * n)
        a0, a1 = e1a + t0 * (e1b - e1a), e1a + t1 * (e1b - e1a)
        b0, b1 = e2a + t0 * (e2b - e2a), e2a + t1 * (e2b - e2a)
        bars.append(np.array([a0, a1, b1, b0]))
    return bars


def _subdivide(segs: np.ndarray, max_len: float) -> np.ndarray:
    """Split (S, 2, 2) segments into pieces no longer than ``max_len`` (vectorised)."""
    if len(segs) == 0:
        return segs
    d = segs[:, 1] - segs[:, 0]
    n = np.maximum(1, np.ceil(np.linalg.norm(d, axis=1) / max_len)).astype(np.int64)
    owner = np.repeat(np.arange(len(segs)), n)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
    t0 = (k / n[owner])[:, None]
    t1 = ((k + 1) / n[owner])[:, None]
    a = segs[owner, 0] + t0 * d[owner]
    b = segs[owner, 0] + t1 * d[owner]
    return np.stack([a, b], axis=1)


#: Brake lamps: a vehicle's lamps are lit while it stands (below this speed, m/s) unless parked ...
BRAKE_STOPPED_SPEED = 0.5
#: ... or while its speed fell by more than this mean deceleration (m/s^2) ...
BRAKE_DECEL = 0.5
#: ... over this many past steps (0.5 s): long enough that logged speed noise does not flicker them.
BRAKE_WINDOW_STEPS = 5
_LAMP_TYPES = (AgentType.VEHICLE, AgentType.BUS, AgentType.TRUCK, AgentType.MOTORCYCLE)
# lamp quads on the rear face: (lateral from the left edge, as a share of the width; height above
# the road in m, or from the roof down for the high-mounted stop lamp)
_TAIL_LAMPS = ((0.04, 0.28), (0.72, 0.96))
_TAIL_Z = (0.80, 1.10)
_HIGH_LAMP = (0.35, 0.65)
_HIGH_DZ = (0.22, 0.10)  # m below the roof: bottom, top


def parked_agents(agents: Agents) -> np.ndarray:
    """(N,) bool: agents that never move in their logged track (faster than
    :data:`BRAKE_STOPPED_SPEED`). A parked car's lamps are dark; a car waiting in a queue keeps
    its brake pressed, so only a car that moves at some point of the log lights them when standing."""
    speed = np.hypot(agents.state[..., 3], agents.state[..., 4])
    return ~((speed > BRAKE_STOPPED_SPEED) & agents.valid).any(axis=1)


def brake_lamps_lit(states: np.ndarray, valid: np.ndarray, step: int, parked: np.ndarray) -> np.ndarray:
    """(N,) bool: whose brake lamps are lit at ``step``.

    ``states`` (N, T, >=5) :data:`~alpasim_policy.scenes.format.AGENT_COLUMNS` rows of steps
    0..``step`` at least (as simulated: log replay or IDM), ``valid`` (N, T), ``parked`` from
    :func:`parked_agents`. Lit when the agent stands (not parked) or when its speed fell at more
    than :data:`BRAKE_DECEL` on average over the last :data:`BRAKE_WINDOW_STEPS` steps; only the
    past is read, as a camera would see it. Which agents carry lamps at all is the renderer's
    business (vehicles only)."""
    states = np.asarray(states, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    now = valid[:, step]
    v = np.hypot(states[:, step, 3], states[:, step, 4])
    lit = (v < BRAKE_STOPPED_SPEED) & ~np.asarray(parked, dtype=bool)
    back = step - BRAKE_WINDOW_STEPS
    if back >= 0:
        v_back = np.hypot(states[:, back, 3], states[:, back, 4])
        lit |= valid[:, back] & ((v - v_back) / (BRAKE_WINDOW_STEPS * DT) < -BRAKE_DECEL)
    return lit & now


def _lamp_quads(box: np.ndarray, lit: bool) -> list[np.ndarray]:
    """The lamp quads (4, 3) on the rear face of one box's 8 corners (any frame): the two tail
    lamps, plus the high-mounted stop lamp when ``lit`` (it has no tail function)."""
    rl, rr = box[1], box[2]  # bottom rear-left, rear-right (see _FACES)
    up = box[5] - box[1]
    height = float(np.linalg.norm(up))
    if height <= 0:
        return []
    up = up / height
    across = rr - rl
    quads = []

    def quad(u0: float, u1: float, z0: float, z1: float) -> np.ndarray:
        a, b = rl + u0 * across, rl + u1 * across
        return np.array([a + z0 * up, b + z0 * up, b + z1 * up, a + z1 * up])

    z0, z1 = min(_TAIL_Z[0], 0.5 * height), min(_TAIL_Z[1], 0.7 * height)
    quads += [quad(u0, u1, z0, z1) for u0, u1 in _TAIL_LAMPS]
    if lit:
        quads.append(quad(*_HIGH_LAMP, height - _HIGH_DZ[0], height - _HIGH_DZ[1]))
    return quads


class CameraRenderer:
    """Draws every camera of a rig for one scene; build once per scene (geometry cached)."""

    def __init__(self, scene: Scene, rig: CameraRig, style: CameraStyle | None = None):
        self.rig = rig
        self.style = style or CameraStyle()
        s = self.style
        geo = SceneGeometry.for_scene(scene)
        self._agents = scene.agents  # not the scene: see bev.BevRenderer
        self._light_states = scene.map.light_states
        self._ego_len = float(scene.ego.length)
        self._line = cv2.LINE_AA if s.antialias else cv2.LINE_8
        # ground layers as lists of (P, 2) polygons with bounding circles
        self._road = geo.road
        cw = geo.crosswalks
        # bars of one crosswalk never overlap, so each crosswalk is one even-odd fillPoly call
        self._crosswalk_bars = [
            np.array(_crosswalk_bars(cw.points[cw.offsets[i] : cw.offsets[i + 1]], s.crosswalk_bar))
            for i in range(len(cw))
        ]
        self._crosswalks = cw
        # Lanes inside intersections are virtual (no paint on a real road), so by default only
        # the boundaries of the other lanes are painted.
        lines = geo.boundaries if s.paint_intersection_lanes else geo.painted_boundaries
        segs = _subdivide(lines.segments(), s.lane_segment_max)
        self._seg = segs  # (S, 2, 2)
        self._seg_mid = segs.mean(axis=1) if len(segs) else np.zeros((0, 2))
        self._stop_lines = geo.stop_lines
        # light heads (see _world_items): centre of each stop line, box turned across it; static
        sl = geo.stop_lines
        self._light_centres = sl.mean(axis=1)
        self._light_yaw = np.arctan2(sl[:, 1, 1] - sl[:, 0, 1], sl[:, 1, 0] - sl[:, 0, 0]) + np.pi / 2
        self._heights = np.array([AGENT_HEIGHTS[AgentType(t)] for t in sorted(int(t) for t in AgentType)])
        self._has_lamps = np.isin(np.asarray(scene.agents.types), [int(t) for t in _LAMP_TYPES])
        names = [AgentType(t).name.lower() for t in sorted(int(t) for t in AgentType)]
        self._agent_rgb = np.array([s.colors[f"agent_{n}"] for n in names], dtype=np.float64)
        self._light_rgb = {
            LightState.UNKNOWN: s.colors["light_unknown"],
            LightState.RED: s.colors["light_red"],
            LightState.YELLOW: s.colors["light_yellow"],
            LightState.GREEN: s.colors["light_green"],
        }
        self._backgrounds = {c.name: self._background(c) for c in rig.cameras}

    # ------------------------------------------------------------------ static parts

    def _background(self, cam: Camera) -> np.ndarray:
        """Sky above the horizon, off-road ground below: fixed per camera on a flat world."""
        s = self.style
        u, v = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
        rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], axis=-1)
        rays_rig = rays @ cam.rig_T_cam[:3, :3].T
        up = rays_rig[..., 2] / np.linalg.norm(rays_rig, axis=-1)  # sine of elevation
        top = np.array(s.colors["sky_top"], dtype=np.float64)
        hor = np.array(s.colors["sky_horizon"], dtype=np.float64)
        w = np.clip(up / 0.5, 0.0, 1.0)[..., None]
        img = hor * (1 - w) + top * w
        ground = up <= 0
        img[ground] = s.colors["ground"]
        return np.ascontiguousarray(img.astype(np.uint8))

    # ------------------------------------------------------------------ per tick

    def render(
        self,
        *,
        ego_state: np.ndarray,
        agent_states: np.ndarray | None,
        agent_valid: np.ndarray | None,
        step: int,
        cameras: list[str] | None = None,
        brake_lamps: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Images {camera name: (H, W, 3) uint8 RGB} for the ego at ``ego_state``.

        ``ego_state`` is an EGO_COLUMNS row (rear axle, scene frame); ``agent_states``
        (N, >=3) box centres (x, y, heading) in the scene frame, ``agent_valid`` (N,);
        ``brake_lamps`` (N,) bool, whose lamps are lit (:func:`brake_lamps_lit`; None: none lit).
        """
        pose = np.asarray(ego_state, dtype=np.float64)[:3]
        names = cameras or self.rig.names
        world = self._world_items(pose, agent_states, agent_valid, step, brake_lamps)
        return {n: self._render_one(self.rig[n], pose, world) for n in names}

    def _world_items(self, pose, agent_states, agent_valid, step, brake_lamps=None) -> dict[str, Any]:
        """Everything in range of the ego, as 3D scene-frame geometry shared by all cameras."""
        s = self.style
        R = s.max_range
        xy = pose[:2]
        out: dict[str, Any] = {}
        road = self._road
        pts, o = road.rings.points, road.rings.offsets
        out["road"] = [[pts[o[i] : o[i + 1]] for i in road.groups[k]] for k in road.near(xy, R)]
        cw = self._crosswalks
        out["crosswalks"] = [self._crosswalk_bars[i] for i in cw.near(xy, R)]
        if len(self._seg):
            m = np.hypot(*(self._seg_mid - xy).T) <= R
            out["lane_segs"] = self._seg[m]
        else:
            out["lane_segs"] = np.zeros((0, 2, 2))
        # lights: stop line ribbons and a small head box above each
        lights_col: list[tuple[int, int, int]] = []
        if s.draw_lights and len(self._stop_lines):
            T = self._light_states.shape[1]
            st = self._light_states[:, min(max(int(step), 0), T - 1)]
            lights_col = [self._light_rgb.get(int(v), self._light_rgb[LightState.UNKNOWN]) for v in st]
        out["lights"] = lights_col
        # boxes: (B, 8, 3) corners + colours
        boxes, colors, lamps = [], [], []  # lamps per box: -1 none, 0 dark, 1 lit
        if agent_states is not None and len(agent_states):
            a = self._agents
            st = np.asarray(agent_states, dtype=np.float64)
            if len(st) != len(a.ids):
                raise ValueError(
                    f"render_cameras: agent_states has {len(st)} rows, the scene has {len(a.ids)}"
                )
            mask = np.ones(len(st), bool) if agent_valid is None else np.asarray(agent_valid, bool).copy()
            mask &= np.hypot(st[:, 0] - xy[0], st[:, 1] - xy[1]) <= R
            idx = np.nonzero(mask)[0]
            if len(idx):
                types = np.asarray(a.types)[idx].astype(np.int64)
                fp = box_corners(st[idx, 0], st[idx, 1], st[idx, 2], a.size[idx, 0], a.size[idx, 1])
                boxes.append(self._extrude(fp, np.zeros(len(idx)), self._heights[types]))
                colors.append(self._agent_rgb[types])
                lamp = np.where(self._has_lamps[idx] & s.draw_brake_lamps, 0, -1)
                if brake_lamps is not None:
                    bl = np.asarray(brake_lamps, dtype=bool)
                    if len(bl) != len(st):
                        raise ValueError(f"render_cameras: brake_lamps has {len(bl)} rows, the scene has {len(st)}")
                    lamp = np.where((lamp == 0) & bl[idx], 1, lamp)
                lamps.append(lamp)
        if lights_col:
            c = self._light_centres
            far = np.hypot(*(c - xy).T) <= R
            if far.any():
                # light head: 0.4 x 0.4 x 1.0 m box above the stop line's centre
                k = np.nonzero(far)[0]
                fp = box_corners(c[k, 0], c[k, 1], self._light_yaw[k], 0.4, 0.4)
                z0 = np.full(len(k), s.light_head_height)
                boxes.append(self._extrude(fp, z0, np.full(len(k), 1.0)))
                colors.append(np.array([lights_col[i] for i in k], dtype=np.float64))
                lamps.append(np.full(len(k), -1))
        out["boxes"] = np.concatenate(boxes) if boxes else np.zeros((0, 8, 3))
        out["box_colors"] = np.concatenate(colors) if colors else np.zeros((0, 3))
        out["box_lamps"] = np.concatenate(lamps) if lamps else np.zeros(0, dtype=np.int64)
        return out

    @staticmethod
    def _extrude(fp: np.ndarray, z0: np.ndarray, h: np.ndarray) -> np.ndarray:
        n = len(fp)
        out = np.empty((n, 8, 3))
        out[:, :4, :2] = fp
        out[:, 4:, :2] = fp
        out[:, :4, 2] = z0[:, None]
        out[:, 4:, 2] = (z0 + h)[:, None]
        return out

    def _render_one(self, cam: Camera, pose: np.ndarray, world: dict[str, Any]) -> np.ndarray:
        s = self.style
        img = self._backgrounds[cam.name].copy()
        # scene frame -> rig -> camera, as one affine map on (x, y, z)
        c, sn = np.cos(pose[2]), np.sin(pose[2])
        rig_T_world = np.eye(4)
        rig_T_world[:2, :2] = [[c, sn], [-sn, c]]
        rig_T_world[:2, 3] = -rig_T_world[:2, :2] @ pose[:2]
        M = cam.cam_T_rig @ rig_T_world
        A, b = M[:3, :3], M[:3, 3]
        A2 = A[:, :2]  # ground points have z = 0
        near = s.near

        road = s.colors["road"]
        for rings in world["road"]:
            # clip each ring on its own, then fill them together: even-odd keeps the holes
            clipped = [clip_polygon_near(r @ A2.T + b, near) for r in rings]
            polys = [self._fixed(cam, pc) for pc in clipped if len(pc) >= 3]
            if polys:
                cv2.fillPoly(img, polys, road, self._line, _SHIFT)
        if s.draw_crosswalks:
            cw = s.colors["crosswalk"]
            for bars in world["crosswalks"]:
                pc = bars @ A2.T + b  # (n, P, 3)
                front = (pc[..., 2] >= near).all(axis=1)
                polys = list(self._fixed(cam, pc[front]))
                for k in np.nonzero(~front)[0]:  # the few bars crossing the near plane
                    q = clip_polygon_near(pc[k], near)
                    if len(q) >= 3:
                        polys.append(self._fixed(cam, q))
                if polys:
                    cv2.fillPoly(img, polys, cw, self._line, _SHIFT)
        if s.draw_lane_lines:
            self._lane_lines(img, cam, world["lane_segs"], A2, b, s.lane_line_width, s.colors["lane_line"])
        if world["lights"]:
            for k, col in enumerate(world["lights"]):
                sl = _subdivide(self._stop_lines[k : k + 1], s.lane_segment_max)
                self._lane_lines(img, cam, sl, A2, b, s.stop_line_width, col)
        self._boxes(img, cam, world["boxes"], world["box_colors"], A, b, world["box_lamps"])
        return img

    @staticmethod
    def _fixed(cam: Camera, pc: np.ndarray) -> np.ndarray:
        """Camera-frame (..., 3) points with z >= near -> int32 sub-pixel (..., 2) for cv2."""
        uv = np.empty(pc.shape[:-1] + (2,))
        uv[..., 0] = cam.fx * pc[..., 0] / pc[..., 2] + cam.cx
        uv[..., 1] = cam.fy * pc[..., 1] / pc[..., 2] + cam.cy
        uv *= _SCALE
        np.clip(uv, -_LIMIT, _LIMIT, out=uv)
        return np.rint(uv).astype(np.int32)

    def _lane_lines(self, img, cam: Camera, segs: np.ndarray, A2, b, width_m: float, color) -> None:
        """Ground lines of ``width_m``: drawn as polylines whose pixel width follows depth."""
        if len(segs) == 0:
            return
        pa = segs[:, 0] @ A2.T + b
        pb = segs[:, 1] @ A2.T + b
        pa, pb, _ = clip_segments_near(pa, pb, self.style.near)
        if len(pa) == 0:
            return
        # drop segments entirely outside the image sideways / vertically (cheap reject)
        ua, ub = self._fixed(cam, pa), self._fixed(cam, pb)
        W, H = cam.width * _SCALE, cam.height * _SCALE
        out = (
            ((ua[:, 0] < 0) & (ub[:, 0] < 0))
            | ((ua[:, 0] > W) & (ub[:, 0] > W))
            | ((ua[:, 1] < 0) & (ub[:, 1] < 0))
            | ((ua[:, 1] > H) & (ub[:, 1] > H))
        )
        keep = ~out
        if not keep.any():
            return
        ua, ub = ua[keep], ub[keep]
        zmid = (pa[keep, 2] + pb[keep, 2]) / 2
        px = np.clip(np.rint(cam.fx * width_m / zmid), 1, 8).astype(np.int64)
        lines = np.stack([ua, ub], axis=1)
        for w in np.unique(px):
            sel = lines[px == w]
            cv2.polylines(img, sel, False, color, int(w), self._line, _SHIFT)

    def _boxes(self, img, cam: Camera, boxes: np.ndarray, colors: np.ndarray, A, b, lamps=None) -> None:
        if len(boxes) == 0:
            return
        pc = boxes @ A.T + b  # (B, 8, 3) camera frame
        near = self.style.near
        front = pc[..., 2] >= near
        vis = front.any(axis=1)
        if not vis.any():
            return
        # cheap frustum reject on boxes fully in front
        with np.errstate(divide="ignore", invalid="ignore"):
            u = cam.fx * pc[..., 0] / pc[..., 2] + cam.cx
            v = cam.fy * pc[..., 1] / pc[..., 2] + cam.cy
        allf = front.all(axis=1)
        off = allf & (
            (u.max(axis=1) < -1) | (u.min(axis=1) > cam.width) | (v.max(axis=1) < -1) | (v.min(axis=1) > cam.height)
        )  # fmt: skip
        vis &= ~off
        idx = np.nonzero(vis)[0]
        if len(idx) == 0:
            return
        # painter's order: farthest box first (distance of the box centre to the camera)
        dist = np.linalg.norm(pc[idx].mean(axis=1), axis=1)
        idx = idx[np.argsort(-dist)]
        # outward face normals in camera frame: sides from the footprint edges, top = up
        fpc = pc[idx]
        faces = fpc[:, _FACES]  # (B, 5, 4, 3)
        centers = faces.mean(axis=2)
        e1 = faces[:, :, 1] - faces[:, :, 0]
        e2 = faces[:, :, 3] - faces[:, :, 0]
        normals = np.cross(e2, e1)  # outward for the corner order above (checked by the top face)
        # orient every normal away from the box centre (robust to corner-order conventions)
        box_c = fpc.mean(axis=1)[:, None, :]
        flip = np.einsum("bfk,bfk->bf", normals, centers - box_c) < 0
        normals[flip] *= -1
        facing = np.einsum("bfk,bfk->bf", normals, -centers) > 0
        # simple shading: top faces brightest, sides by their angle to a fixed light
        nn = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-9)
        light = A @ np.array([0.4, 0.3, 0.85])
        shade = 0.55 + 0.45 * np.clip(nn @ light, 0.0, 1.0)
        outline = (25, 25, 25)
        cols = np.clip(colors[idx][:, None, :] * shade[..., None], 0, 255).astype(np.int64)  # (B, 5, 3)
        infront = allf[idx]
        # project every face of the boxes fully in front at once; clip the rest one by one
        fixed_all = self._fixed(cam, np.where(infront[:, None, None, None], faces, 1.0))
        for j in range(len(idx)):
            for f in np.nonzero(facing[j])[0]:
                if infront[j]:
                    fx = fixed_all[j, f]
                else:
                    poly = clip_polygon_near(faces[j, f], near)
                    if len(poly) < 3:
                        continue
                    fx = self._fixed(cam, poly)
                cv2.fillConvexPoly(img, fx, cols[j, f].tolist(), self._line, _SHIFT)
                cv2.polylines(img, [fx], True, outline, 1, self._line, _SHIFT)
            # lamps on the rear face (face 1), drawn over it: same depth, so before nearer boxes
            if lamps is not None and lamps[idx[j]] >= 0 and facing[j, 1]:
                lit = bool(lamps[idx[j]])
                col = self.style.colors["brake_lamp_on" if lit else "brake_lamp_off"]
                for q in _lamp_quads(fpc[j], lit):
                    q = clip_polygon_near(q, near)
                    if len(q) >= 3:
                        cv2.fillConvexPoly(img, self._fixed(cam, q), col, self._line, _SHIFT)


def get_camera_renderer(scene: Scene, rig: CameraRig, style: CameraStyle | None = None) -> CameraRenderer:
    """The cached :class:`CameraRenderer` for this scene object, rig and style (keyed by value: an
    ``id()`` key could be reused by a new rig once the old one is freed, and return its renderer)."""
    key = ("cameras", rig.cache_key(), None if style is None else style.cache_key())
    return scene_cache(scene, key, lambda: CameraRenderer(scene, rig, style))


def render_cameras(
    scene: Scene,
    rig: CameraRig,
    *,
    ego_state: np.ndarray,
    agent_states: np.ndarray | None,
    agent_valid: np.ndarray | None,
    step: int,
    style: CameraStyle | None = None,
    brake_lamps: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Perspective images {name: (H, W, 3) uint8 RGB} of every camera in ``rig``.

    Thin wrapper over a per-(scene, rig) cached :class:`CameraRenderer`; see its ``render``.
    """
    return get_camera_renderer(scene, rig, style).render(
        ego_state=ego_state, agent_states=agent_states, agent_valid=agent_valid, step=step,
        brake_lamps=brake_lamps,
    )
