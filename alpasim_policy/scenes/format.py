"""The scene format (schema 1.0): typed dataclasses and a validated, versioned file.

A scene is one logged drive resampled to ``dt = 0.1 s``: the ego log, the other
agents' boxes, the lane map, and the route the ego follows. ``scenarios/README.md``
is the human-readable spec of this module; keep the two in step.

Frames and units. Everything is SI (m, s, rad, m/s). Positions are in the *scene
frame*: the source's map frame (AV2 city frame, CommonRoad's frame) translated so that
the ego rear axle at ``t0_index`` sits at the origin; ``metadata.frame_origin`` holds
that translation in source coordinates. Headings are yaw, counter-clockwise from +x.
The ego pose is its **rear-axle centre** (the rig origin: x forward, y left); agent
poses are **box centres**.

On disk a scene is one deterministic zip (``.npz``-compatible) holding ``meta.json``
(metadata and map topology) and one ``.npy`` per numeric field; ragged polylines are
stored as ``<name>/points`` (P, 2) plus ``<name>/offsets`` (n + 1,) index arrays.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import SceneFormatError
from alpasim_policy.io import atomic_write_bytes, pack_archive, unpack_archive

SCHEMA_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
DT = 0.1

# Column layouts, so no code indexes state arrays with bare numbers.
EGO_COLUMNS = ("x", "y", "heading", "vx", "vy", "ax", "ay")
AGENT_COLUMNS = ("x", "y", "heading", "vx", "vy")


class AgentType(IntEnum):
    """Agent categories; importers map their source taxonomies onto these."""

    VEHICLE = 0
    PEDESTRIAN = 1
    BICYCLE = 2
    MOTORCYCLE = 3
    BUS = 4
    TRUCK = 5
    STATIC = 6  # parked / static objects, cones, barriers, ...
    UNKNOWN = 7


class LightState(IntEnum):
    UNKNOWN = 0
    RED = 1
    YELLOW = 2
    GREEN = 3


@dataclass
class EgoLog:
    """The logged ego trajectory; ``state[:, :]`` columns are :data:`EGO_COLUMNS`.

    ``rear_axle_to_center`` is the distance (m) from the rear axle forward to the box
    centre, so ``center = rear_axle + rear_axle_to_center * (cos h, sin h)``.
    """

    state: np.ndarray  # (T, 7) float64
    valid: np.ndarray  # (T,) bool
    length: float
    width: float
    rear_axle_to_center: float
    wheelbase: float

    @property
    def xy(self) -> np.ndarray:
        return self.state[:, :2]

    @property
    def heading(self) -> np.ndarray:
        return self.state[:, 2]

    @property
    def speed(self) -> np.ndarray:
        return np.hypot(self.state[:, 3], self.state[:, 4])


@dataclass
class Agents:
    """Other road users; ``state[i, t]`` columns are :data:`AGENT_COLUMNS` (box centre)."""

    ids: list[str]
    types: np.ndarray  # (N,) int8, AgentType values
    size: np.ndarray  # (N, 2) float64: length, width
    state: np.ndarray  # (N, T, 5) float64; zeros where invalid
    valid: np.ndarray  # (N, T) bool

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Lane:
    id: str
    centerline: np.ndarray  # (P, 2)
    left_boundary: np.ndarray  # (Q, 2)
    right_boundary: np.ndarray  # (R, 2)
    predecessors: list[str] = field(default_factory=list)
    successors: list[str] = field(default_factory=list)
    left_neighbor: str | None = None
    right_neighbor: str | None = None
    is_intersection: bool = False
    speed_limit: float | None = None  # m/s when known
    lane_type: str = "vehicle"  # vehicle | bike | bus


@dataclass
class TrafficLight:
    id: str
    lane_id: str  # the lane it controls
    stop_line: np.ndarray  # (2, 2): the two ends of the stop line


@dataclass
class RoadMap:
    lanes: list[Lane]
    drivable_areas: list[np.ndarray]  # polygons (P, 2), exterior rings, not closed
    crosswalks: list[np.ndarray]  # polygons (P, 2)
    traffic_lights: list[TrafficLight]
    light_states: np.ndarray  # (K, T) int8 LightState per light and step

    def lane(self, lane_id: str) -> Lane:
        if not hasattr(self, "_by_id"):
            self._by_id = {ln.id: ln for ln in self.lanes}
        return self._by_id[lane_id]


@dataclass
class Route:
    lane_ids: list[str]  # ordered lanes the ego log drives through
    polyline: np.ndarray  # (M, 2) the concatenated centerline of those lanes


@dataclass
class SceneMetadata:
    scene_id: str
    source_dataset: str  # "av2-sensor" | "av2-forecasting" | "commonroad" | ...
    source_id: str  # log / scenario id in the source dataset
    license: str
    location: str
    frame_origin: tuple[float, float]  # scene origin in source map coordinates
    t0_index: int  # first step a policy controls; steps before it are history
    schema_version: str = SCHEMA_VERSION
    dt: float = DT
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    metadata: SceneMetadata
    timestamps: np.ndarray  # (T,) seconds since the scene start, step DT
    ego: EgoLog
    agents: Agents
    map: RoadMap
    route: Route
    #: sha256 of the file the scene was loaded from (None when built in memory)
    content_hash: str | None = None

    @property
    def scene_id(self) -> str:
        return self.metadata.scene_id

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0]) if self.num_steps else 0.0

    def validate(self, path: str | Path | None = None) -> None:
        """Raise :class:`SceneFormatError` naming the first bad field; return silently if sound."""
        _validate(self, path)


# --------------------------------------------------------------------------- save


def _pack_ragged(arrays: dict[str, np.ndarray], name: str, items: list[np.ndarray]) -> None:
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    for i, it in enumerate(items):
        offsets[i + 1] = offsets[i] + len(it)
    pts = (
        np.concatenate([np.asarray(it, dtype=np.float64).reshape(-1, 2) for it in items])
        if items
        else (np.zeros((0, 2)))
    )
    arrays[f"{name}/points"] = pts
    arrays[f"{name}/offsets"] = offsets


def scene_to_bytes(scene: Scene) -> bytes:
    """Serialise deterministically (same scene -> same bytes)."""
    md = scene.metadata
    lanes = scene.map.lanes
    meta = {
        "schema_version": md.schema_version,
        "metadata": {
            "scene_id": md.scene_id,
            "source_dataset": md.source_dataset,
            "source_id": md.source_id,
            "license": md.license,
            "location": md.location,
            "frame_origin": [float(md.frame_origin[0]), float(md.frame_origin[1])],
            "t0_index": int(md.t0_index),
            "dt": float(md.dt),
            "extra": md.extra,
        },
        "ego": {
            "length": float(scene.ego.length),
            "width": float(scene.ego.width),
            "rear_axle_to_center": float(scene.ego.rear_axle_to_center),
            "wheelbase": float(scene.ego.wheelbase),
        },
        "agents": {"ids": list(scene.agents.ids), "type_names": [t.name for t in AgentType]},
        "lanes": [
            {
                "id": ln.id,
                "predecessors": list(ln.predecessors),
                "successors": list(ln.successors),
                "left_neighbor": ln.left_neighbor,
                "right_neighbor": ln.right_neighbor,
                "is_intersection": bool(ln.is_intersection),
                "speed_limit": None if ln.speed_limit is None else float(ln.speed_limit),
                "lane_type": ln.lane_type,
            }
            for ln in lanes
        ],
        "traffic_lights": [{"id": tl.id, "lane_id": tl.lane_id} for tl in scene.map.traffic_lights],
        "route": {"lane_ids": list(scene.route.lane_ids)},
    }
    arrays: dict[str, np.ndarray] = {
        "timestamps": np.asarray(scene.timestamps, dtype=np.float64),
        "ego/state": np.asarray(scene.ego.state, dtype=np.float64),
        "ego/valid": np.asarray(scene.ego.valid, dtype=bool),
        "agents/types": np.asarray(scene.agents.types, dtype=np.int8),
        "agents/size": np.asarray(scene.agents.size, dtype=np.float64).reshape(-1, 2),
        "agents/state": np.asarray(scene.agents.state, dtype=np.float64).reshape(
            len(scene.agents.ids), scene.num_steps, len(AGENT_COLUMNS)
        ),
        "agents/valid": np.asarray(scene.agents.valid, dtype=bool).reshape(
            len(scene.agents.ids), scene.num_steps
        ),
        "traffic_lights/stop_lines": np.asarray(
            [tl.stop_line for tl in scene.map.traffic_lights], dtype=np.float64
        ).reshape(-1, 2, 2),
        "traffic_lights/states": np.asarray(scene.map.light_states, dtype=np.int8).reshape(
            len(scene.map.traffic_lights), scene.num_steps
        ),
        "route/polyline": np.asarray(scene.route.polyline, dtype=np.float64).reshape(-1, 2),
    }
    _pack_ragged(arrays, "lanes/centerline", [ln.centerline for ln in lanes])
    _pack_ragged(arrays, "lanes/left_boundary", [ln.left_boundary for ln in lanes])
    _pack_ragged(arrays, "lanes/right_boundary", [ln.right_boundary for ln in lanes])
    _pack_ragged(arrays, "map/drivable_areas", scene.map.drivable_areas)
    _pack_ragged(arrays, "map/crosswalks", scene.map.crosswalks)
    return pack_archive(arrays, meta)


def save_scene(scene: Scene, path: str | Path) -> Path:
    """Validate, then write atomically. Returns the path written."""
    path = Path(path)
    scene.validate(path)
    atomic_write_bytes(path, scene_to_bytes(scene))
    return path


# --------------------------------------------------------------------------- load


def _need(d: dict, key: str, path: Path | str, prefix: str = "") -> Any:
    if key not in d:
        raise SceneFormatError(path, prefix + key, "missing")
    return d[key]


def _unpack_ragged(arrays: dict[str, np.ndarray], name: str, path: Path | str) -> list[np.ndarray]:
    pts = _need(arrays, f"{name}/points", path)
    off = _need(arrays, f"{name}/offsets", path)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise SceneFormatError(path, f"{name}/points", f"expected shape (P, 2), got {pts.shape}")
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(pts) or np.any(np.diff(off) < 0):
        raise SceneFormatError(path, f"{name}/offsets", "offsets must rise from 0 to the number of points")
    return [pts[off[i] : off[i + 1]] for i in range(len(off) - 1)]


def scene_from_bytes(data: bytes, path: str | Path = "<bytes>") -> Scene:
    """Parse and validate a scene; every problem is a :class:`SceneFormatError` naming ``path``."""
    try:
        return _scene_from_bytes(data, path)
    except SceneFormatError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        # meta.json that is valid JSON but of the wrong structure (e.g. a lane without "id").
        raise SceneFormatError(path, None, f"malformed scene content: {type(e).__name__}: {e}") from e


def _scene_from_bytes(data: bytes, path: str | Path) -> Scene:
    try:
        arrays, meta = unpack_archive(data)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise SceneFormatError(path, None, f"not a readable scene archive (truncated or corrupt): {e}") from e
    if meta is None:
        raise SceneFormatError(path, "meta.json", "missing")
    version = meta.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise SceneFormatError(
            path,
            "schema_version",
            f"unknown schema version {version!r}; this build reads {SUPPORTED_VERSIONS}",
        )
    md = _need(meta, "metadata", path)
    for key in ("scene_id", "source_dataset", "source_id", "license", "location", "frame_origin", "t0_index"):
        _need(md, key, path, "metadata/")
    egom = _need(meta, "ego", path)
    for key in ("length", "width", "rear_axle_to_center", "wheelbase"):
        _need(egom, key, path, "ego/")
    for key in (
        "timestamps", "ego/state", "ego/valid", "agents/types", "agents/size", "agents/state", "agents/valid",
        "traffic_lights/stop_lines", "traffic_lights/states", "route/polyline",
    ):  # fmt: skip
        _need(arrays, key, path)

    lanes_meta = _need(meta, "lanes", path)
    centers = _unpack_ragged(arrays, "lanes/centerline", path)
    lefts = _unpack_ragged(arrays, "lanes/left_boundary", path)
    rights = _unpack_ragged(arrays, "lanes/right_boundary", path)
    if not (len(lanes_meta) == len(centers) == len(lefts) == len(rights)):
        raise SceneFormatError(path, "lanes", "lane topology and lane polylines differ in count")
    lanes = [
        Lane(
            id=str(lm["id"]),
            centerline=c,
            left_boundary=lb,
            right_boundary=rb,
            predecessors=[str(x) for x in lm.get("predecessors", [])],
            successors=[str(x) for x in lm.get("successors", [])],
            left_neighbor=lm.get("left_neighbor"),
            right_neighbor=lm.get("right_neighbor"),
            is_intersection=bool(lm.get("is_intersection", False)),
            speed_limit=lm.get("speed_limit"),
            lane_type=lm.get("lane_type", "vehicle"),
        )
        for lm, c, lb, rb in zip(lanes_meta, centers, lefts, rights, strict=True)
    ]
    tl_meta = meta.get("traffic_lights", [])
    stop_lines = arrays["traffic_lights/stop_lines"]
    if len(tl_meta) != len(stop_lines):
        raise SceneFormatError(path, "traffic_lights", "light topology and stop lines differ in count")
    lights = [
        TrafficLight(id=str(t["id"]), lane_id=str(t["lane_id"]), stop_line=sl)
        for t, sl in zip(tl_meta, stop_lines, strict=True)
    ]
    route_meta = _need(meta, "route", path)
    scene = Scene(
        metadata=SceneMetadata(
            scene_id=str(md["scene_id"]),
            source_dataset=str(md["source_dataset"]),
            source_id=str(md["source_id"]),
            license=str(md["license"]),
            location=str(md["location"]),
            frame_origin=(float(md["frame_origin"][0]), float(md["frame_origin"][1])),
            t0_index=int(md["t0_index"]),
            schema_version=str(version),
            dt=float(md.get("dt", DT)),
            extra=dict(md.get("extra", {})),
        ),
        timestamps=arrays["timestamps"],
        ego=EgoLog(
            state=arrays["ego/state"],
            valid=arrays["ego/valid"],
            length=float(egom["length"]),
            width=float(egom["width"]),
            rear_axle_to_center=float(egom["rear_axle_to_center"]),
            wheelbase=float(egom["wheelbase"]),
        ),
        agents=Agents(
            ids=[str(x) for x in _need(meta, "agents", path).get("ids", [])],
            types=arrays["agents/types"],
            size=arrays["agents/size"],
            state=arrays["agents/state"],
            valid=arrays["agents/valid"],
        ),
        map=RoadMap(
            lanes=lanes,
            drivable_areas=_unpack_ragged(arrays, "map/drivable_areas", path),
            crosswalks=_unpack_ragged(arrays, "map/crosswalks", path),
            traffic_lights=lights,
            light_states=arrays["traffic_lights/states"],
        ),
        route=Route(
            lane_ids=[str(x) for x in route_meta.get("lane_ids", [])], polyline=arrays["route/polyline"]
        ),
    )
    scene.validate(path)
    return scene


def load_scene(path: str | Path) -> Scene:
    """Load and validate one scene file; every problem is a :class:`SceneFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise SceneFormatError(path, None, "no such scene file")
    data = path.read_bytes()
    scene = scene_from_bytes(data, path)
    scene.content_hash = hashlib.sha256(data).hexdigest()
    return scene


# --------------------------------------------------------------------------- validation


def _check(cond: bool, path: Path | str | None, fieldname: str, message: str) -> None:
    if not cond:
        raise SceneFormatError(path, fieldname, message)


def _finite(arr: np.ndarray, path: Path | str | None, fieldname: str) -> None:
    if arr.size and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise SceneFormatError(path, fieldname, f"contains NaN/inf (first at index {bad})")


def _validate(scene: Scene, path: Path | str | None) -> None:
    md = scene.metadata
    _check(
        md.schema_version in SUPPORTED_VERSIONS,
        path,
        "schema_version",
        f"unknown version {md.schema_version!r}",
    )
    ts = np.asarray(scene.timestamps)
    _check(ts.ndim == 1 and ts.shape[0] >= 2, path, "timestamps", f"expected (T>=2,), got {ts.shape}")
    _finite(ts, path, "timestamps")
    _check(bool(np.all(np.diff(ts) > 0)), path, "timestamps", "time is not strictly increasing")
    _check(
        bool(np.allclose(np.diff(ts), md.dt, atol=1e-3)), path, "timestamps", f"steps must be {md.dt} s apart"
    )
    T = ts.shape[0]
    _check(0 <= md.t0_index < T, path, "metadata/t0_index", f"{md.t0_index} outside [0, {T})")
    e = scene.ego
    _check(
        e.state.shape == (T, len(EGO_COLUMNS)), path, "ego/state", f"expected ({T}, 7), got {e.state.shape}"
    )
    _check(e.valid.shape == (T,), path, "ego/valid", f"expected ({T},), got {e.valid.shape}")
    _finite(e.state, path, "ego/state")
    for name in ("length", "width", "wheelbase"):
        v = getattr(e, name)
        _check(np.isfinite(v) and v > 0, path, f"ego/{name}", f"must be a positive number, got {v}")
    _check(bool(e.valid[md.t0_index]), path, "ego/valid", "the ego must be valid at t0_index")
    a = scene.agents
    N = len(a.ids)
    _check(len(set(a.ids)) == N, path, "agents/ids", "agent ids are not unique")
    _check(a.types.shape == (N,), path, "agents/types", f"expected ({N},), got {a.types.shape}")
    _check(a.size.shape == (N, 2), path, "agents/size", f"expected ({N}, 2), got {a.size.shape}")
    _check(a.state.shape == (N, T, 5), path, "agents/state", f"expected ({N}, {T}, 5), got {a.state.shape}")
    _check(a.valid.shape == (N, T), path, "agents/valid", f"expected ({N}, {T}), got {a.valid.shape}")
    _finite(a.state, path, "agents/state")
    _finite(a.size, path, "agents/size")
    if N:
        _check(bool(np.all(a.size > 0)), path, "agents/size", "lengths and widths must be positive")
        known = {int(t) for t in AgentType}
        _check({int(t) for t in a.types} <= known, path, "agents/types", "unknown agent type code")
    m = scene.map
    ids = [ln.id for ln in m.lanes]
    _check(len(set(ids)) == len(ids), path, "lanes/id", "lane ids are not unique")
    for i, ln in enumerate(m.lanes):
        for name in ("centerline", "left_boundary", "right_boundary"):
            arr = getattr(ln, name)
            _check(arr.ndim == 2 and arr.shape[1] == 2 and len(arr) >= 2, path, f"lanes/{name}",
                   f"lane {ln.id!r} (#{i}) needs >= 2 points of (x, y), got {arr.shape}")  # fmt: skip
            _finite(arr, path, f"lanes/{name}")
    for name, polys in (("map/drivable_areas", m.drivable_areas), ("map/crosswalks", m.crosswalks)):
        for p in polys:
            _check(len(p) >= 3, path, name, "a polygon needs >= 3 points")
            _finite(p, path, name)
    K = len(m.traffic_lights)
    _check(m.light_states.shape == (K, T), path, "traffic_lights/states", f"expected ({K}, {T}), got "
           f"{m.light_states.shape}")  # fmt: skip
    lane_set = set(ids)
    for tl in m.traffic_lights:
        _check(
            tl.lane_id in lane_set, path, "traffic_lights/lane_id", f"light {tl.id!r} controls unknown lane"
        )
        _finite(tl.stop_line, path, "traffic_lights/stop_lines")
    r = scene.route
    _check(r.polyline.ndim == 2 and r.polyline.shape[1] == 2 and len(r.polyline) >= 2, path, "route/polyline",
           f"expected (M>=2, 2), got {r.polyline.shape}")  # fmt: skip
    _finite(r.polyline, path, "route/polyline")
    _check(len(r.lane_ids) >= 1, path, "route/lane_ids", "the route names no lane")
    missing = [x for x in r.lane_ids if x not in lane_set]
    _check(not missing, path, "route/lane_ids", f"route names lanes not in the map: {missing[:5]}")
