"""Argoverse 2 importers: sensor logs and motion-forecasting scenarios -> scenes.

Read with pyarrow (feather / parquet) and the standard json module; the official av2
devkit is not needed. Facts used (see scenarios/README.md):

* The AV2 ``egovehicle`` frame has its origin at the **rear axle** centre, x forward,
  z up, so ``city_SE3_egovehicle`` poses are rear-axle poses, as the scene format wants.
* Sensor-log cuboids are in the ego frame *of their own sweep*; we compose each with the
  ego pose interpolated at that sweep's timestamp to get city-frame boxes.
* Forecasting scenarios store per-track positions in the city frame at 10 Hz for 11 s,
  with no box sizes. The ``AV`` track is the ego; we assume its position is the ego pose
  (rear axle), like the sensor logs' ``city_SE3_egovehicle``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from alpasim_policy.errors import ImportSourceError
from alpasim_policy.scenes.format import DT, AgentType, Lane, RoadMap, Scene
from alpasim_policy.scenes.geometry import centerline_from_boundaries
from alpasim_policy.scenes.importers.common import (
    EgoSpec,
    Track,
    assemble_scene,
    clean_lane_graph,
    min_scene_steps,
    too_short,
    windows,
)

AV2_LICENSE = (
    "CC BY-NC-SA 4.0; Argoverse 2 (Argo AI, LLC), https://www.argoverse.org; non-commercial use only"
)

#: Ford Fusion Hybrid (AV2's vehicle), 2nd generation: 4.87 m long, 1.85 m wide (no mirrors),
#: 2.85 m wheelbase; rear overhang ~1.05 m puts the box centre 1.39 m ahead of the rear axle.
AV2_EGO = EgoSpec(length=4.87, width=1.85, wheelbase=2.85, rear_axle_to_center=1.39)

#: AV2 city codes (in map file names) -> the city names the forecasting data uses.
AV2_CITIES = {
    "PIT": "pittsburgh",
    "ATX": "austin",
    "MIA": "miami",
    "DTW": "detroit",
    "WDC": "washington-dc",
    "PAO": "palo-alto",
}

#: AV2 sensor (cuboid) categories -> AgentType. Unlisted categories become UNKNOWN.
SENSOR_CATEGORIES: dict[str, AgentType] = {
    "REGULAR_VEHICLE": AgentType.VEHICLE,
    "LARGE_VEHICLE": AgentType.VEHICLE,
    "RAILED_VEHICLE": AgentType.VEHICLE,
    "BUS": AgentType.BUS,
    "SCHOOL_BUS": AgentType.BUS,
    "ARTICULATED_BUS": AgentType.BUS,
    "BOX_TRUCK": AgentType.TRUCK,
    "TRUCK": AgentType.TRUCK,
    "TRUCK_CAB": AgentType.TRUCK,
    "VEHICULAR_TRAILER": AgentType.TRUCK,
    "PEDESTRIAN": AgentType.PEDESTRIAN,
    "STROLLER": AgentType.PEDESTRIAN,
    "WHEELCHAIR": AgentType.PEDESTRIAN,
    "OFFICIAL_SIGNALER": AgentType.PEDESTRIAN,
    "DOG": AgentType.PEDESTRIAN,
    "ANIMAL": AgentType.PEDESTRIAN,
    "BICYCLE": AgentType.BICYCLE,
    "BICYCLIST": AgentType.BICYCLE,
    "WHEELED_RIDER": AgentType.BICYCLE,
    "WHEELED_DEVICE": AgentType.BICYCLE,
    "MOTORCYCLE": AgentType.MOTORCYCLE,
    "MOTORCYCLIST": AgentType.MOTORCYCLE,
    "BOLLARD": AgentType.STATIC,
    "CONSTRUCTION_CONE": AgentType.STATIC,
    "CONSTRUCTION_BARREL": AgentType.STATIC,
    "SIGN": AgentType.STATIC,
    "STOP_SIGN": AgentType.STATIC,
    "MESSAGE_BOARD_TRAILER": AgentType.STATIC,
    "MOBILE_PEDESTRIAN_CROSSING_SIGN": AgentType.STATIC,
    "MOBILE_PEDESTRIAN_SIGN": AgentType.STATIC,
    "TRAFFIC_LIGHT_TRAILER": AgentType.STATIC,
}

#: Forecasting object types -> (AgentType, default length, default width) in metres.
#: The forecasting data has no sizes; these are typical dimensions of each class.
FORECAST_TYPES: dict[str, tuple[AgentType, float, float]] = {
    "vehicle": (AgentType.VEHICLE, 4.6, 1.9),
    "bus": (AgentType.BUS, 12.0, 2.6),
    "pedestrian": (AgentType.PEDESTRIAN, 0.7, 0.7),
    "cyclist": (AgentType.BICYCLE, 1.8, 0.7),
    "riderless_bicycle": (AgentType.BICYCLE, 1.8, 0.6),
    "motorcyclist": (AgentType.MOTORCYCLE, 2.2, 0.9),
    "static": (AgentType.STATIC, 1.0, 1.0),
    "construction": (AgentType.STATIC, 0.5, 0.5),
    "background": (AgentType.UNKNOWN, 1.0, 1.0),
    "unknown": (AgentType.UNKNOWN, 1.0, 1.0),
}


# ----------------------------------------------------------------------------- readers


def _read_table(path: Path, kind: str) -> dict[str, np.ndarray]:
    """Read a feather / parquet file into numpy columns; any failure names the file."""
    if not path.is_file():
        raise ImportSourceError(path, None, "file not found")
    try:
        if kind == "feather":
            import pyarrow.feather as feather

            table = feather.read_table(path)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on truncation
        raise ImportSourceError(path, None, f"cannot read {kind} file (truncated or corrupt): {e}") from e
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _need_cols(cols: dict[str, np.ndarray], names: tuple[str, ...], path: Path) -> None:
    for n in names:
        if n not in cols:
            raise ImportSourceError(path, n, "column missing")
        arr = cols[n]
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ImportSourceError(path, n, "contains NaN/inf")


def _xy(points: list[dict], path: Path, what: str) -> np.ndarray:
    try:
        arr = np.array([[float(p["x"]), float(p["y"])] for p in points], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ImportSourceError(path, what, f"bad point list: {e}") from e
    if arr.ndim != 2 or len(arr) < 2 or not np.all(np.isfinite(arr)):
        raise ImportSourceError(path, what, "needs >= 2 finite points")
    return arr


def read_av2_map(path: Path) -> tuple[RoadMap, str]:
    """Parse an AV2 ``log_map_archive_*.json`` -> (RoadMap in city coordinates, city name)."""
    if not path.is_file():
        raise ImportSourceError(path, None, "map json not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImportSourceError(path, None, f"not valid JSON (truncated?): {e}") from e
    for key in ("lane_segments", "drivable_areas", "pedestrian_crossings"):
        if not isinstance(doc.get(key), dict):
            raise ImportSourceError(path, key, "missing or not an object")
    lanes = []
    for key in sorted(doc["lane_segments"], key=int):
        ls = doc["lane_segments"][key]
        lid = str(ls["id"])
        left = _xy(ls["left_lane_boundary"], path, f"lane_segments/{lid}/left_lane_boundary")
        right = _xy(ls["right_lane_boundary"], path, f"lane_segments/{lid}/right_lane_boundary")
        lanes.append(
            Lane(
                id=lid,
                centerline=centerline_from_boundaries(left, right),
                left_boundary=left,
                right_boundary=right,
                predecessors=[str(x) for x in ls.get("predecessors") or []],
                successors=[str(x) for x in ls.get("successors") or []],
                left_neighbor=None if ls.get("left_neighbor_id") is None else str(ls["left_neighbor_id"]),
                right_neighbor=None if ls.get("right_neighbor_id") is None else str(ls["right_neighbor_id"]),
                is_intersection=bool(ls.get("is_intersection", False)),
                speed_limit=None,
                lane_type={"BIKE": "bike", "BUS": "bus"}.get(str(ls.get("lane_type", "VEHICLE")), "vehicle"),
            )
        )
    areas = [
        _xy(doc["drivable_areas"][k]["area_boundary"], path, f"drivable_areas/{k}")
        for k in sorted(doc["drivable_areas"], key=int)
    ]
    crossings = []
    for k in sorted(doc["pedestrian_crossings"], key=int):
        pc = doc["pedestrian_crossings"][k]
        e1 = _xy(pc["edge1"], path, f"pedestrian_crossings/{k}/edge1")
        e2 = _xy(pc["edge2"], path, f"pedestrian_crossings/{k}/edge2")
        crossings.append(np.concatenate([e1, e2[::-1]]))
    m = re.search(r"____([A-Z]+)_city", path.name)
    road = RoadMap(
        lanes=clean_lane_graph(lanes),
        drivable_areas=areas,
        crosswalks=crossings,
        traffic_lights=[],
        light_states=np.zeros((0, 0), dtype=np.int8),
    )
    code = m.group(1) if m else ""
    return road, AV2_CITIES.get(code, code.lower())


def _with_light_steps(road: RoadMap, T: int) -> RoadMap:
    road.light_states = np.zeros((len(road.traffic_lights), T), dtype=np.int8)
    return road


# ----------------------------------------------------------------------------- sensor logs


def _find_map(log_dir: Path) -> Path:
    cands = sorted((log_dir / "map").glob("log_map_archive_*.json"))
    if not cands:
        raise ImportSourceError(log_dir / "map", None, "no log_map_archive_*.json in the log's map folder")
    return cands[0]


def import_av2_sensor(
    log_dir: str | Path, t0_index: int = 16, min_steps: int | None = None, rejected: list[str] | None = None
) -> list[Scene]:
    """One AV2 sensor log folder -> scenes of 8 s every 4 s, the last one ending at the log's end.

    A log shorter than ``min_steps`` (default :func:`min_scene_steps`; 0 keeps everything)
    gives no scene; the reason is appended to ``rejected``.
    """
    from scipy.spatial.transform import Rotation, Slerp

    log_dir = Path(log_dir)
    log_id = log_dir.name
    ann_path = log_dir / "annotations.feather"
    pose_path = log_dir / "city_SE3_egovehicle.feather"
    road_full, city = read_av2_map(_find_map(log_dir))
    ann = _read_table(ann_path, "feather")
    _need_cols(ann, ("timestamp_ns", "track_uuid", "category", "length_m", "width_m", "qw", "qx", "qy", "qz",
                     "tx_m", "ty_m"), ann_path)  # fmt: skip
    pose = _read_table(pose_path, "feather")
    _need_cols(pose, ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"), pose_path)
    if len(ann["timestamp_ns"]) == 0:
        raise ImportSourceError(ann_path, None, "no annotations")

    # The 10 Hz grid: one step per annotated lidar sweep.
    sweeps = np.unique(ann["timestamp_ns"].astype(np.int64))
    gaps = np.diff(sweeps) / 1e9
    if np.any(gaps > 1.5 * DT):
        # Missing sweeps: place each on the nearest 0.1 s slot so steps stay 0.1 s apart.
        slot = np.round((sweeps - sweeps[0]) / 1e9 / DT).astype(int)
    else:
        slot = np.arange(len(sweeps))
    T_all = int(slot[-1]) + 1
    grid_ns = sweeps[0] + np.round(np.arange(T_all) * DT * 1e9).astype(np.int64)
    grid_ns[slot] = sweeps

    # Ego poses (~200 Hz) -> sweep times: linear position, slerp rotation.
    pt = pose["timestamp_ns"].astype(np.int64)
    order = np.argsort(pt, kind="stable")
    pt = pt[order]
    keep = np.concatenate([[True], np.diff(pt) > 0])
    pt = pt[keep]
    sel = order[keep]
    quats = np.stack([pose["qx"][sel], pose["qy"][sel], pose["qz"][sel], pose["qw"][sel]], axis=1)
    trans = np.stack([pose["tx_m"][sel], pose["ty_m"][sel], pose["tz_m"][sel]], axis=1)
    if len(pt) < 2:
        raise ImportSourceError(pose_path, "timestamp_ns", "need >= 2 ego poses")
    ego_valid = (grid_ns >= pt[0]) & (grid_ns <= pt[-1])
    tq = np.clip(grid_ns, pt[0], pt[-1]).astype(np.float64)
    rel = (tq - pt[0]) / 1e9
    prel = (pt - pt[0]) / 1e9
    rots = Slerp(prel, Rotation.from_quat(quats))(rel)
    ego_R = rots.as_matrix()  # (T, 3, 3) city <- ego
    ego_t = np.stack([np.interp(rel, prel, trans[:, j]) for j in range(3)], axis=1)
    ego_xy = ego_t[:, :2]
    ego_yaw = np.arctan2(ego_R[:, 1, 0], ego_R[:, 0, 0])

    # Cuboids: ego frame of their sweep -> city frame.
    step_of = dict(zip(sweeps.tolist(), slot.tolist(), strict=True))
    k = np.array([step_of[int(t)] for t in ann["timestamp_ns"]], dtype=np.int64)
    box_R = Rotation.from_quat(np.stack([ann["qx"], ann["qy"], ann["qz"], ann["qw"]], axis=1)).as_matrix()
    box_t = np.stack([ann["tx_m"], ann["ty_m"], ann.get("tz_m", np.zeros_like(ann["tx_m"]))], axis=1)
    city_t = np.einsum("nij,nj->ni", ego_R[k], box_t) + ego_t[k]
    city_R = ego_R[k] @ box_R
    city_yaw = np.arctan2(city_R[:, 1, 0], city_R[:, 0, 0])

    rows_by_track: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(ann["track_uuid"]):
        rows_by_track[str(u)].append(i)
    all_tracks: list[tuple[str, np.ndarray, AgentType, float, float]] = []
    for uuid in sorted(rows_by_track):
        rows = np.array(rows_by_track[uuid])
        cats = [str(ann["category"][r]) for r in rows]
        cat = max(sorted(set(cats)), key=cats.count)
        all_tracks.append(
            (
                uuid,
                rows,
                SENSOR_CATEGORIES.get(cat, AgentType.UNKNOWN),
                float(np.median(ann["length_m"][rows])),
                float(np.median(ann["width_m"][rows])),
            )
        )

    scenes = []
    need = min_scene_steps(t0_index) if min_steps is None else min_steps
    why = too_short(T_all, need)
    if why is not None:
        if rejected is not None:
            rejected.append(f"{log_dir}: log {why}")
        return []
    for w, (a, b) in enumerate(windows(T_all)):
        T = b - a
        tracks = []
        for uuid, rows, atype, ln, wd in all_tracks:
            steps = k[rows] - a
            inside = (steps >= 0) & (steps < T)
            if not np.any(inside):
                continue
            xy = np.zeros((T, 2))
            hd = np.zeros(T)
            valid = np.zeros(T, dtype=bool)
            xy[steps[inside]] = city_t[rows[inside], :2]
            hd[steps[inside]] = city_yaw[rows[inside]]
            valid[steps[inside]] = True
            tracks.append(Track(id=uuid, type=atype, length=ln, width=wd, xy=xy,
                                heading=_unwrap_valid(hd, valid), valid=valid))  # fmt: skip
        scenes.append(
            assemble_scene(
                scene_id=f"av2s-{log_id[:8]}-w{w:02d}",
                source_dataset="av2-sensor",
                source_id=log_id,
                license=AV2_LICENSE,
                location=city,
                road=_with_light_steps(_copy_map(road_full), T),
                ego_xy=ego_xy[a:b],
                ego_heading=ego_yaw[a:b],
                ego_valid=ego_valid[a:b],
                ego_spec=AV2_EGO,
                tracks=tracks,
                t0_index=t0_index,
                extra={"window": w, "window_start_step": int(a), "source_start_ns": int(grid_ns[a])},
            )
        )
    return scenes


def _unwrap_valid(h: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = h.copy()
    if valid.any():
        out[valid] = np.unwrap(h[valid])
    return out


def _copy_map(road: RoadMap) -> RoadMap:
    from alpasim_policy.scenes.importers.common import translate_map

    return translate_map(road, np.zeros(2))


# ----------------------------------------------------------------------------- forecasting


def import_av2_forecasting(
    scenario_dir: str | Path,
    t0_index: int = 16,
    min_steps: int | None = None,
    rejected: list[str] | None = None,
) -> list[Scene]:
    """One AV2 motion-forecasting scenario folder (parquet + map json) -> one scene."""
    scenario_dir = Path(scenario_dir)
    parquets = sorted(scenario_dir.glob("scenario_*.parquet"))
    if not parquets:
        raise ImportSourceError(scenario_dir, None, "no scenario_*.parquet in the folder")
    pq_path = parquets[0]
    maps = sorted(scenario_dir.glob("log_map_archive_*.json"))
    if not maps:
        raise ImportSourceError(scenario_dir, None, "no log_map_archive_*.json (map) in the folder")
    road, _ = read_av2_map(maps[0])
    cols = _read_table(pq_path, "parquet")
    _need_cols(cols, ("track_id", "object_type", "timestep", "position_x", "position_y", "heading",
                      "velocity_x", "velocity_y"), pq_path)  # fmt: skip
    sid = (
        str(cols["scenario_id"][0])
        if "scenario_id" in cols and len(cols["scenario_id"])
        else scenario_dir.name
    )
    city = str(cols["city"][0]) if "city" in cols and len(cols["city"]) else ""
    ts = cols["timestep"].astype(np.int64)
    T = int(ts.max()) + 1
    why = too_short(T, min_scene_steps(t0_index) if min_steps is None else min_steps)
    if why is not None:
        if rejected is not None:
            rejected.append(f"{scenario_dir}: scenario {why}")
        return []
    tid = np.array([str(x) for x in cols["track_id"]])
    if "AV" not in set(tid.tolist()):
        raise ImportSourceError(pq_path, "track_id", "no 'AV' track (the ego)")
    rows_by: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tid):
        rows_by[t].append(i)
    av = np.array(rows_by["AV"])
    ego_xy = np.zeros((T, 2))
    ego_h = np.zeros(T)
    ego_valid = np.zeros(T, dtype=bool)
    ego_xy[ts[av]] = np.stack([cols["position_x"][av], cols["position_y"][av]], axis=1)
    ego_h[ts[av]] = cols["heading"][av]
    ego_valid[ts[av]] = True
    tracks = []
    for t in sorted(rows_by):
        if t == "AV":
            continue
        rows = np.array(rows_by[t])
        otype = str(cols["object_type"][rows[0]])
        atype, ln, wd = FORECAST_TYPES.get(otype, FORECAST_TYPES["unknown"])
        xy = np.zeros((T, 2))
        hd = np.zeros(T)
        vel = np.zeros((T, 2))
        valid = np.zeros(T, dtype=bool)
        s = ts[rows]
        xy[s] = np.stack([cols["position_x"][rows], cols["position_y"][rows]], axis=1)
        hd[s] = cols["heading"][rows]
        vel[s] = np.stack([cols["velocity_x"][rows], cols["velocity_y"][rows]], axis=1)
        valid[s] = True
        tracks.append(
            Track(id=t, type=atype, length=ln, width=wd, xy=xy, heading=hd, valid=valid, velocity=vel)
        )
    extra = {"focal_track_id": str(cols["focal_track_id"][0])} if "focal_track_id" in cols else {}
    return [
        assemble_scene(
            scene_id=f"av2f-{sid[:8]}",
            source_dataset="av2-forecasting",
            source_id=sid,
            license=AV2_LICENSE,
            location=city,
            road=_with_light_steps(road, T),
            ego_xy=ego_xy,
            ego_heading=_unwrap_valid(ego_h, ego_valid),
            ego_valid=ego_valid,
            ego_spec=AV2_EGO,
            tracks=tracks,
            t0_index=t0_index,
            extra=extra,
        )
    ]
