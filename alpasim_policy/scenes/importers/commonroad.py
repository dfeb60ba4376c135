"""CommonRoad XML (2018b and 2020a) -> scenes, with the standard library's XML parser.

CommonRoad has no ego log, so every car-like dynamic obstacle that is present for the
whole scenario and travels >= 10 m can be the ego; each choice makes one scene and the
chosen vehicle is removed from the agents. Facts used (scenarios/README.md documents them):

* Obstacle states are **box centres**; the ego is stored at its rear axle, so we shift
  back along the heading by ``rear_axle_to_center``. CommonRoad gives only length and
  width, so the axle geometry is scaled from the AV2 Ford Fusion's proportions.
* States may be exact values or intervals (``intervalStart``/``intervalEnd``, e.g. the
  BMW A9 recordings); intervals become their midpoint, uncertain position shapes their centre.
* Scenarios at other step sizes (e.g. 0.2 s) are linearly resampled onto 0.1 s.
* Lanelets -> lanes (centerline = mid-line of the bounds); ``adjacentLeft/Right`` with
  ``drivingDir="same"`` -> neighbours (opposite-direction adjacency is not a lane to change
  into). 2018b ``speedLimit`` (m/s) is kept; in 2020a speed-limit traffic signs are read.
  2020a ``crosswalk`` lanelets become crosswalks, ``sidewalk`` lanelets are dropped.
* 2020a traffic lights: each light's ``cycle`` (durations in source steps, ``timeOffset``)
  becomes per-step states for every lanelet that references it; the stop line is the
  lanelet's ``stopLine`` when given, else its end.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from alpasim_policy.errors import ImportSourceError
from alpasim_policy.scenes.format import DT, AgentType, Lane, LightState, RoadMap, Scene, TrafficLight
from alpasim_policy.scenes.geometry import (
    MapIndex,
    box_polygons,
    center_to_rear_axle,
    centerline_from_boundaries,
)
from alpasim_policy.scenes.importers.common import (
    WINDOW_STRIDE,
    EgoSpec,
    Track,
    assemble_scene,
    clean_lane_graph,
    min_scene_steps,
    too_short,
    windows,
)

CR_LICENSE = "BSD-3-Clause; CommonRoad benchmark scenarios (TU Munich), https://commonroad.in.tum.de"

#: CommonRoad obstacle types -> AgentType.
CR_TYPES: dict[str, AgentType] = {
    "car": AgentType.VEHICLE,
    "taxi": AgentType.VEHICLE,
    "priorityVehicle": AgentType.VEHICLE,
    "truck": AgentType.TRUCK,
    "bus": AgentType.BUS,
    "bicycle": AgentType.BICYCLE,
    "motorcycle": AgentType.MOTORCYCLE,
    "pedestrian": AgentType.PEDESTRIAN,
    "parkedVehicle": AgentType.VEHICLE,
    "train": AgentType.VEHICLE,
    "constructionZone": AgentType.STATIC,
    "roadBoundary": AgentType.STATIC,
    "building": AgentType.STATIC,
    "pillar": AgentType.STATIC,
    "median_strip": AgentType.STATIC,
    "unknown": AgentType.UNKNOWN,
}
#: Obstacle types that may be chosen as the ego (car-like: the policies drive a car).
EGO_TYPES = ("car", "taxi", "priorityVehicle")
#: Minimum travel (m, start to end) for a vehicle to be an ego candidate.
MIN_EGO_TRAVEL_M = 10.0
#: Closest (m) an ego candidate's logged box may come to another road user. Why not 0: the env
#: replays the log through its tracker, which deviates by a few decimetres, so a log that passes
#: within centimetres of a queued car (NGSIM stop-and-go) would collide under ``log_replay``.
MIN_EGO_CLEARANCE_M = 0.25
#: Longest vehicle taken as ego: NGSIM labels some buses "car"; the policies drive a car.
MAX_EGO_LENGTH_M = 6.0
#: AV2 Ford Fusion proportions: wheelbase / length and (rear axle -> centre) / length.
WHEELBASE_RATIO = 2.85 / 4.87
REAR_AXLE_TO_CENTER_RATIO = 1.39 / 4.87

_LIGHT_COLORS = {
    "red": LightState.RED,
    "redYellow": LightState.RED,  # still a stop: red-yellow precedes green
    "yellow": LightState.YELLOW,
    "green": LightState.GREEN,
    "inactive": LightState.UNKNOWN,
}
#: Speed-limit sign ids (Germany 274, USA R2-1, ...); their additional value is in m/s.
_SPEED_SIGNS = {"274", "R2-1", "DE:274", "US:R2-1", "MAX_SPEED"}


class _Src:
    """Parsing helpers that name the file and element path on every error."""

    def __init__(self, path: Path):
        self.path = path

    def err(self, field: str, msg: str) -> ImportSourceError:
        return ImportSourceError(self.path, field, msg)

    def num(self, el: ET.Element | None, field: str) -> float:
        """An exact value, or the midpoint of an interval."""
        if el is None:
            raise self.err(field, "missing")
        try:
            ex = el.find("exact")
            if ex is not None:
                v = float(ex.text or "")
            elif el.find("intervalStart") is not None:
                v = 0.5 * (float(el.findtext("intervalStart", "")) + float(el.findtext("intervalEnd", "")))
            else:
                v = float(el.text or "")
        except ValueError as e:
            raise self.err(field, f"not a number: {e}") from e
        if not np.isfinite(v):
            raise self.err(field, "NaN/inf")
        return v

    def point(self, el: ET.Element, field: str) -> np.ndarray:
        try:
            p = np.array([float(el.findtext("x", "")), float(el.findtext("y", ""))])
        except ValueError as e:
            raise self.err(field, f"bad point: {e}") from e
        if not np.all(np.isfinite(p)):
            raise self.err(field, "NaN/inf")
        return p

    def points(self, el: ET.Element | None, field: str) -> np.ndarray:
        if el is None:
            raise self.err(field, "missing")
        pts = [self.point(p, field) for p in el.findall("point")]
        if len(pts) < 2:
            raise self.err(field, "needs >= 2 points")
        return np.array(pts)

    def position(self, el: ET.Element | None, field: str) -> np.ndarray:
        """Centre of a position: a point, or the centre of an uncertain shape."""
        if el is None:
            raise self.err(field, "missing")
        p = el.find("point")
        if p is not None:
            return self.point(p, field)
        centres = []
        for shape in list(el):
            c = shape.find("center")
            if c is not None:
                centres.append(self.point(c, field))
            elif shape.tag == "polygon":
                centres.append(self.points(shape, field).mean(axis=0))
        if not centres:
            raise self.err(field, "no point or shape centre")
        return np.mean(centres, axis=0)

    def size(self, shape: ET.Element | None, field: str) -> tuple[float, float]:
        if shape is None:
            raise self.err(field, "missing")
        r = shape.find("rectangle")
        if r is not None:
            return self.num(r.find("length"), field + "/length"), self.num(r.find("width"), field + "/width")
        c = shape.find("circle")
        if c is not None:
            d = 2 * self.num(c.find("radius"), field + "/radius")
            return d, d
        p = shape.find("polygon")
        if p is not None:
            pts = self.points(p, field)
            ext = pts.max(axis=0) - pts.min(axis=0)
            return float(max(ext)), float(max(min(ext), 0.1))
        raise self.err(field, "unsupported shape")


def _parse(path: Path) -> ET.Element:
    if not path.is_file():
        raise ImportSourceError(path, None, "file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ImportSourceError(path, None, f"not valid XML (truncated?): {e}") from e
    if root.tag != "commonRoad":
        raise ImportSourceError(path, None, f"root element is <{root.tag}>, not <commonRoad>")
    return root


def _read_map(src: _Src, root: ET.Element) -> tuple[RoadMap, dict[str, list[str]], dict[str, np.ndarray]]:
    """Lanes and crosswalks; also lanelet -> light refs and lanelet -> stop line (source frame)."""
    speed_signs: dict[str, float] = {}
    for ts in root.findall("trafficSign"):
        for el in ts.findall("trafficSignElement"):
            sid = (el.findtext("trafficSignID") or "").strip()
            val = el.findtext("additionalValue")
            if sid in _SPEED_SIGNS and val is not None:
                try:
                    speed_signs[ts.get("id", "")] = float(val)
                except ValueError:
                    pass
    lanes, crosswalks = [], []
    light_refs: dict[str, list[str]] = {}
    stop_lines: dict[str, np.ndarray] = {}
    intersection_lanes: set[str] = set()
    for inter in root.findall("intersection"):
        for inc in inter.findall("incoming"):
            for tag in ("successorsRight", "successorsStraight", "successorsLeft"):
                intersection_lanes.update(e.get("ref", "") for e in inc.findall(tag))
        for cr in inter.findall("crossing"):
            intersection_lanes.update(e.get("ref", "") for e in cr.findall("crossingLanelet"))
    for ll in root.findall("lanelet"):
        lid = ll.get("id")
        if lid is None:
            raise src.err("lanelet/id", "lanelet without id")
        left = src.points(ll.find("leftBound"), f"lanelet {lid}/leftBound")
        right = src.points(ll.find("rightBound"), f"lanelet {lid}/rightBound")
        types = {(t.text or "").strip() for t in ll.findall("laneletType")}
        if "crosswalk" in types:
            crosswalks.append(np.concatenate([left, right[::-1]]))
            continue
        if "sidewalk" in types:
            continue
        speed = None
        if ll.find("speedLimit") is not None:
            speed = src.num(ll.find("speedLimit"), f"lanelet {lid}/speedLimit")
        for ref in ll.findall("trafficSignRef"):
            if ref.get("ref") in speed_signs:
                speed = speed_signs[ref.get("ref", "")]

        def nbr(tag: str, ll: ET.Element = ll) -> str | None:
            e = ll.find(tag)
            return e.get("ref") if e is not None and e.get("drivingDir", "same") == "same" else None

        lanes.append(
            Lane(
                id=lid,
                centerline=centerline_from_boundaries(left, right),
                left_boundary=left,
                right_boundary=right,
                predecessors=[e.get("ref", "") for e in ll.findall("predecessor")],
                successors=[e.get("ref", "") for e in ll.findall("successor")],
                left_neighbor=nbr("adjacentLeft"),
                right_neighbor=nbr("adjacentRight"),
                is_intersection=lid in intersection_lanes,
                speed_limit=speed,
                lane_type="bike" if "bicycleLane" in types else ("bus" if "busLane" in types else "vehicle"),
            )
        )
        refs = [e.get("ref", "") for e in ll.findall("trafficLightRef")]
        sl = ll.find("stopLine")
        if sl is not None:
            refs += [e.get("ref", "") for e in sl.findall("trafficLightRef")]
            pts = sl.findall("point")
            if len(pts) >= 2:
                stop_lines[lid] = np.array([src.point(pts[0], "stopLine"), src.point(pts[1], "stopLine")])
        if refs:
            light_refs[lid] = sorted(set(refs))
            # 2020a: a stop line without points lies at the lanelet's end.
            stop_lines.setdefault(lid, np.array([left[-1], right[-1]]))
    if not lanes:
        raise src.err("lanelet", "the scenario has no lanelets")
    road = RoadMap(
        lanes=clean_lane_graph(lanes),
        drivable_areas=[],
        crosswalks=crosswalks,
        traffic_lights=[],
        light_states=np.zeros((0, 0), dtype=np.int8),
    )
    return road, light_refs, stop_lines


#: CommonRoad 2020a traffic-light ``direction`` -> the movements (turns) it governs.
_LIGHT_DIRECTIONS: dict[str, frozenset[str]] = {
    "right": frozenset({"right"}),
    "straight": frozenset({"straight"}),
    "left": frozenset({"left"}),
    "leftStraight": frozenset({"left", "straight"}),
    "straightRight": frozenset({"straight", "right"}),
    "leftRight": frozenset({"left", "right"}),
    "all": frozenset({"left", "straight", "right"}),
}
#: Heading change (rad) over a successor beyond which it counts as a turn (when no
#: ``intersection`` element says which way it goes).
_TURN_RAD = np.deg2rad(35.0)


def _light_directions(root: ET.Element) -> dict[str, frozenset[str]]:
    """Per traffic-light id, the movements it governs (``all`` when not given)."""
    out = {}
    for tl in root.findall("trafficLight"):
        d = (tl.findtext("direction") or "all").strip()
        out[tl.get("id", "")] = _LIGHT_DIRECTIONS.get(d, _LIGHT_DIRECTIONS["all"])
    return out


def _movements(root: ET.Element, road: RoadMap, lane_id: str) -> set[str]:
    """Which way traffic leaving ``lane_id`` goes: left / straight / right, one per successor.

    From the ``intersection`` element when it lists the successor under this incoming's
    ``successorsLeft/Straight/Right``; else from the heading change along the successor.
    """
    by_id = {ln.id: ln for ln in road.lanes}
    lane = by_id.get(lane_id)
    if lane is None:
        return {"left", "straight", "right"}
    listed: dict[str, str] = {}
    for inc in root.iter("incoming"):
        if lane_id not in {e.get("ref") for e in inc.findall("incomingLanelet")}:
            continue
        for tag, mv in (
            ("successorsLeft", "left"),
            ("successorsStraight", "straight"),
            ("successorsRight", "right"),
        ):
            for e in inc.findall(tag):
                listed[e.get("ref", "")] = mv
    out = set()
    for s in lane.successors:
        if s in listed:
            out.add(listed[s])
            continue
        c = by_id[s].centerline
        h0 = np.arctan2(*(lane.centerline[-1] - lane.centerline[-2])[::-1])
        h1 = np.arctan2(*(c[-1] - c[-2])[::-1])
        turn = float(np.angle(np.exp(1j * (h1 - h0))))
        out.add("left" if turn > _TURN_RAD else ("right" if turn < -_TURN_RAD else "straight"))
    return out or {"left", "straight", "right"}


def _combine_light_states(states: list[np.ndarray]) -> np.ndarray:
    """Per step, the most permissive *active* state: GREEN > YELLOW > RED; UNKNOWN if none is active.

    Why most permissive: several lights may govern one lane (a red main light and a green
    right-turn arrow, or a lane with a straight and a turning successor); a logged driver
    who takes the movement that is allowed has not run a red.
    """
    # LightState's codes are in this order already: UNKNOWN 0 < RED 1 < YELLOW 2 < GREEN 3.
    return np.max(np.stack(states).astype(np.int8), axis=0)


@dataclass
class _Programme:
    """One light's fixed-time programme: colours for ``durations`` source steps, from ``offset``."""

    durations: np.ndarray  # (E,) int source steps
    colours: np.ndarray  # (E,) int8 LightState
    offset: int

    @property
    def total(self) -> int:
        return int(self.durations.sum())

    def states(self, steps: np.ndarray) -> np.ndarray:
        """LightState at source ``steps`` (CommonRoad 2020a: element i lasts ``durations[i]``
        steps; the cycle starts at ``timeOffset`` and repeats)."""
        tc = (np.asarray(steps, np.int64) - self.offset) % self.total
        return self.colours[np.searchsorted(np.cumsum(self.durations), tc, side="right")]


def _light_programmes(src: _Src, root: ET.Element) -> dict[str, _Programme | None]:
    """Per traffic-light id, its programme (None: inactive or no cycle -> UNKNOWN throughout)."""
    out: dict[str, _Programme | None] = {}
    for tl in root.findall("trafficLight"):
        lid = tl.get("id", "")
        active = (tl.findtext("active") or "true").strip().lower() != "false"
        cyc = tl.find("cycle")
        out[lid] = None
        if cyc is None or not active:
            continue
        durs, cols = [], []
        for ce in cyc.findall("cycleElement"):
            durs.append(int(src.num(ce.find("duration"), f"trafficLight {lid}/duration")))
            cols.append(int(_LIGHT_COLORS.get((ce.findtext("color") or "").strip(), LightState.UNKNOWN)))
        if any(d < 0 for d in durs):
            raise src.err(f"trafficLight {lid}/duration", "negative duration")
        offset = (
            int(src.num(cyc.find("timeOffset"), "timeOffset")) if cyc.find("timeOffset") is not None else 0
        )
        if sum(durs) > 0:
            out[lid] = _Programme(np.array(durs, np.int64), np.array(cols, np.int8), offset)
    return out


def _light_states(
    progs: dict[str, _Programme | None], steps_src: np.ndarray, shift: int = 0
) -> dict[str, np.ndarray]:
    """Per traffic-light id, LightState at each source step (the programme advanced by ``shift`` steps)."""
    unknown = np.full(len(steps_src), int(LightState.UNKNOWN), dtype=np.int8)
    return {lid: (p.states(steps_src + shift) if p is not None else unknown) for lid, p in progs.items()}


#: Vehicle types whose stop-line crossings say what the lights showed.
_TRAFFIC = (AgentType.VEHICLE, AgentType.BUS, AgentType.TRUCK, AgentType.MOTORCYCLE)


#: A vehicle whose front is this close behind a stop line (m), standing (< 0.5 m/s) and still
#: standing 2 s later, is waiting at the light: evidence that it is not green.
_WAIT_ZONE_M = 8.0
_WAIT_SPEED = 0.5
_WAIT_STEPS = 20


def _light_evidence(
    governing: dict[str, list[str]],
    stop_lines: dict[str, np.ndarray],
    road: RoadMap,
    tracks: dict[str, Track],
    waits_mean_red: set[str],
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """What logged vehicles did at each light's stop line, as (lane id, grid step) events.

    Crossings: a front bumper crosses the line forwards. Waits: first at the line (front within
    :data:`_WAIT_ZONE_M` behind it), standing, and still standing :data:`_WAIT_STEPS` later --
    only on lanes in ``waits_mean_red`` (a permissive left turn waits on green for a gap).
    """
    by_id = {ln.id: ln for ln in road.lanes}
    trs = [t for t in tracks.values() if t.type in _TRAFFIC]
    crossings, waits = [], []
    for lane_id in governing:
        a, b = stop_lines[lane_id]
        seg = b - a
        n = np.array([seg[1], -seg[0]]) / max(float(np.linalg.norm(seg)), 1e-9)
        c = by_id[lane_id].centerline
        if np.dot(n, c[-1] - c[-2]) < 0:
            n = -n
        for tr in trs:
            fwd = np.column_stack([np.cos(tr.heading), np.sin(tr.heading)])
            front = tr.xy + 0.5 * tr.length * fwd
            side = (front - a) @ n
            along = ((front - a) @ seg) / max(float(seg @ seg), 1e-9)
            ahead = (along >= -0.1) & (along <= 1.1) & (fwd @ n > 0.5) & tr.valid
            hit = ahead[1:] & tr.valid[:-1] & (side[:-1] < 0) & (side[1:] >= 0)
            crossings.extend((lane_id, int(k) + 1) for k in np.flatnonzero(hit))
            if lane_id in waits_mean_red:
                speed = np.zeros(len(side))
                speed[1:] = np.linalg.norm(np.diff(tr.xy, axis=0), axis=1) / DT
                w = ahead & (side < 0) & (side > -_WAIT_ZONE_M) & (speed < _WAIT_SPEED)
                w[:-_WAIT_STEPS] &= w[_WAIT_STEPS:]
                w[-_WAIT_STEPS:] = False
                waits.extend((lane_id, int(k)) for k in np.flatnonzero(w))
    return crossings, waits


def _phase_shift(
    progs: dict[str, _Programme | None],
    governing: dict[str, list[str]],
    stop_lines: dict[str, np.ndarray],
    road: RoadMap,
    tracks: dict[str, Track],
    steps_src: np.ndarray,
    waits_mean_red: set[str],
) -> int:
    """Source steps to advance every light programme by so the logged traffic obeys it (0: as given).

    Why: CommonRoad's signal programmes for recorded data (NGSIM Peachtree, Lankershim) are
    authored fixed-time cycles that each scenario file starts at its own step 0; nothing ties
    them to the phase the recorded drivers saw, so as given a logged car can cross on red. The
    relative timing of the lights (their offsets) is kept; only the whole programme's phase is
    moved, and only when the file's own phase has more logged crossings on red than some other
    phase. Among the phases with the fewest red crossings the one where the fewest cars wait at
    the front of a queue on green wins (the light turned green when the queue started), then the
    smallest shift.
    """
    crossings, waits = _light_evidence(governing, stop_lines, road, tracks, waits_mean_red)
    live = [p for p in progs.values() if p is not None]
    if not crossings or not live:
        return 0
    period = int(np.lcm.reduce([p.total for p in live]))
    if period > 100_000:  # incommensurate cycles: no common period to search
        return 0
    shifts = np.arange(period)

    def lane_states(lane_id: str, k: int) -> np.ndarray:
        t = steps_src[k] + shifts  # the source step each shift would show at grid step k
        none = np.zeros(period, np.int8)
        return np.max(
            np.stack([progs[r].states(t) if progs[r] is not None else none for r in governing[lane_id]]), 0
        )

    red = np.zeros(period, np.int64)
    for lane_id, k in crossings:
        red += lane_states(lane_id, k) == int(LightState.RED)
    if red[0] == red.min():
        return 0
    green_waits = np.zeros(period, np.int64)
    for lane_id, k in waits:
        green_waits += lane_states(lane_id, k) == int(LightState.GREEN)
    cost = red * (len(waits) + 1) + green_waits
    best = np.flatnonzero(cost == cost.min())
    return int(best[np.argmin(np.minimum(best, period - best))])


def _obstacles(src: _Src, root: ET.Element, dt_src: float) -> list[dict]:
    """All obstacles with their source-step trajectories (centre, heading)."""
    obs = []
    elems = [(e, "dynamic") for e in root.findall("dynamicObstacle")]
    elems += [(e, "static") for e in root.findall("staticObstacle")]
    for e in root.findall("obstacle"):  # 2018b
        elems.append((e, (e.findtext("role") or "dynamic").strip()))
    for e, role in elems:
        oid = e.get("id", "")
        f = f"obstacle {oid}"
        otype = (e.findtext("type") or "unknown").strip()
        length, width = src.size(e.find("shape"), f + "/shape")
        states = []
        init = e.find("initialState")
        if init is None:
            raise src.err(f + "/initialState", "missing")
        for st in [init, *e.findall("trajectory/state")]:
            t = int(round(src.num(st.find("time"), f + "/time")))
            p = src.position(st.find("position"), f + "/position")
            h = src.num(st.find("orientation"), f + "/orientation")
            states.append((t, p[0], p[1], h))
        states.sort()
        arr = np.array(states, dtype=np.float64)
        if len(arr) > 1 and np.any(np.diff(arr[:, 0]) <= 0):
            raise src.err(f + "/time", "time steps are not strictly increasing")
        obs.append({"id": oid, "type": otype, "role": role, "length": length, "width": width, "s": arr})
    return obs


def _resample(
    arr: np.ndarray, dt_src: float, grid_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, x, y, h) source rows -> xy (T, 2), heading (T,), valid (T,) on the 0.1 s grid."""
    t = arr[:, 0] * dt_src
    valid = (grid_t >= t[0] - 1e-6) & (grid_t <= t[-1] + 1e-6)
    h = np.unwrap(arr[:, 3])
    xy = np.zeros((len(grid_t), 2))
    hd = np.zeros(len(grid_t))
    g = grid_t[valid]
    xy[valid, 0] = np.interp(g, t, arr[:, 1])
    xy[valid, 1] = np.interp(g, t, arr[:, 2])
    hd[valid] = np.interp(g, t, h)
    return xy, hd, valid


@dataclass
class _Scenario:
    """A parsed CommonRoad file on the 0.1 s grid (source coordinates)."""

    src: _Src
    version: str
    dt_src: float
    bench: str
    road: RoadMap
    #: lane id -> (ids of the lights that govern its movements, combined LightState per grid step)
    lane_lights: dict[str, tuple[list[str], np.ndarray]]
    light_shift: int | None  # source steps the light programmes were advanced by (None: no lights)
    stop_lines: dict[str, np.ndarray]
    obs: list[dict]
    tracks: dict[str, Track]
    n_grid: int


def _load(path: Path) -> _Scenario:
    src = _Src(path)
    root = _parse(path)
    version = root.get("commonRoadVersion", "")
    if version not in ("2018b", "2020a"):
        raise src.err("commonRoadVersion", f"unsupported version {version!r} (reads 2018b, 2020a)")
    try:
        dt_src = float(root.get("timeStepSize", ""))
    except ValueError as e:
        raise src.err("timeStepSize", "missing or not a number") from e
    if not (np.isfinite(dt_src) and dt_src > 0):
        raise src.err("timeStepSize", f"must be a positive number, got {dt_src}")
    road, light_refs, stop_lines = _read_map(src, root)
    obs = _obstacles(src, root, dt_src)
    dyn = [o for o in obs if o["role"] == "dynamic"]
    if not dyn:
        raise src.err("dynamicObstacle", "no dynamic obstacles")
    t_min = min(o["s"][0, 0] for o in dyn)
    t_max = max(o["s"][-1, 0] for o in dyn)
    t_start, t_end = t_min * dt_src, t_max * dt_src
    n_grid = int(np.floor((t_end - t_start) / DT + 1e-6)) + 1
    grid_t = t_start + np.arange(n_grid) * DT
    steps_src = np.floor(grid_t / dt_src + 1e-6).astype(np.int64)
    tracks = {}
    for o in obs:
        if o["role"] == "static":
            s0 = o["s"][0]
            xy = np.tile(s0[1:3], (n_grid, 1))
            hd = np.full(n_grid, s0[3])
            valid = np.ones(n_grid, dtype=bool)
        else:
            xy, hd, valid = _resample(o["s"], dt_src, grid_t)
        atype = (
            AgentType.STATIC
            if o["role"] == "static" and o["type"] != "parkedVehicle"
            else CR_TYPES.get(o["type"], AgentType.UNKNOWN)
        )
        tracks[o["id"]] = Track(id=o["id"], type=atype, length=o["length"], width=o["width"], xy=xy,
                                heading=hd, valid=valid)  # fmt: skip
    progs = _light_programmes(src, root)
    directions = _light_directions(root)
    lane_ids = {ln.id for ln in road.lanes}
    governing: dict[str, list[str]] = {}
    for lane_id in sorted(light_refs, key=lambda x: (len(x), x)):
        if lane_id not in lane_ids:
            continue
        moves = _movements(root, road, lane_id)
        # Only the lights whose direction covers a way out of this lane govern it: a left-turn
        # arrow referenced by a lane that only goes straight says nothing about that lane.
        gov = [r for r in light_refs[lane_id] if r in progs and directions.get(r, frozenset()) & moves]
        if gov:
            governing[lane_id] = gov
    no_left = {lane_id for lane_id in governing if "left" not in _movements(root, road, lane_id)}
    shift = _phase_shift(progs, governing, stop_lines, road, tracks, steps_src, no_left) if governing else 0
    light_by_id = _light_states(progs, steps_src, shift)
    lane_lights = {
        lane_id: (gov, _combine_light_states([light_by_id[r] for r in gov]))
        for lane_id, gov in governing.items()
    }
    return _Scenario(
        src=src,
        version=version,
        dt_src=dt_src,
        bench=root.get("benchmarkID") or path.stem,
        road=road,
        lane_lights=lane_lights,
        light_shift=shift if governing else None,
        stop_lines=stop_lines,
        obs=obs,
        tracks=tracks,
        n_grid=n_grid,
    )


def ego_candidates(path: str | Path) -> list[str]:
    """Obstacle ids eligible as ego, ordered by id (see :func:`_candidates`)."""
    return _candidates(_load(Path(path)))[0]


def ego_rejections(path: str | Path) -> dict[str, str]:
    """Per dynamic obstacle that is *not* eligible as ego, the reason (see :func:`_candidates`)."""
    return _candidates(_load(Path(path)))[1]


def _candidates(sc: _Scenario, partial_min_steps: int | None = None) -> tuple[list[str], dict[str, str]]:
    """Car-like (<= 6 m), present at every step, moving >= 10 m, and a clean log to replay.

    ``partial_min_steps``: also a car present for only part of the scenario, if for at least that
    many consecutive steps (training data: most cars of a recording enter or leave during it).

    Clean: the box stays on the lanes and keeps :data:`MIN_EGO_CLEARANCE_M` from every other
    road user at every step. Why:
    recorded data (NGSIM in particular) has vehicles whose boxes poke off the mapped road
    or into a neighbour; replaying such a log would already fail the drivable-area or
    collision metrics, so it makes a misleading scene. Returns the eligible ids and, for
    every other dynamic obstacle, why it is not eligible.
    """
    dyn = [o for o in sc.obs if o["role"] == "dynamic"]
    t_min = min(o["s"][0, 0] for o in dyn)
    t_max = max(o["s"][-1, 0] for o in dyn)
    index = MapIndex(sc.road)
    others = list(sc.tracks.values())
    o_boxes = box_polygons(
        np.stack([t.xy[:, 0] for t in others]),
        np.stack([t.xy[:, 1] for t in others]),
        np.stack([t.heading for t in others]),
        np.array([t.length for t in others])[:, None],
        np.array([t.width for t in others])[:, None],
    )  # (N, T)
    o_valid = np.stack([t.valid for t in others])
    out, why = [], {}
    dt = sc.dt_src
    for o in dyn:
        s = o["s"]
        oid = o["id"]
        travel = float(np.hypot(*(s[-1, 1:3] - s[0, 1:3])))
        if o["type"] not in EGO_TYPES:
            why[oid] = f"type {o['type']!r} is not car-like {EGO_TYPES}"
            continue
        if o["length"] > MAX_EGO_LENGTH_M:
            why[oid] = f"{o['length']:.1f} m long (> {MAX_EGO_LENGTH_M} m)"
            continue
        contiguous = len(s) == s[-1, 0] - s[0, 0] + 1
        whole = s[0, 0] == t_min and s[-1, 0] == t_max and contiguous
        if partial_min_steps is not None and not whole:
            grid = np.flatnonzero(sc.tracks[oid].valid)  # presence on the 10 Hz grid
            if not (contiguous and len(grid) >= partial_min_steps):
                why[oid] = f"present {len(grid) * DT:.1f} s, not {partial_min_steps * DT:.1f} s in one stretch"
                continue
        elif not whole:
            why[oid] = (
                f"present {s[0, 0] * dt:.1f}-{s[-1, 0] * dt:.1f} s, not the whole scenario "
                f"({t_min * dt:.1f}-{t_max * dt:.1f} s)"
            )
            continue
        if travel < MIN_EGO_TRAVEL_M:
            why[oid] = f"travels {travel:.1f} m start to end (< {MIN_EGO_TRAVEL_M} m)"
            continue
        tr = sc.tracks[oid]
        boxes = box_polygons(tr.xy[:, 0], tr.xy[:, 1], tr.heading, tr.length, tr.width)
        off = ~index.on_drivable(boxes[tr.valid])
        if off.any():
            k = int(np.flatnonzero(tr.valid)[np.argmax(off)])
            why[oid] = f"its box leaves the lanes at {k * DT:.1f} s (the log would fail drivable-area)"
            continue
        me = np.array([t.id == oid for t in others])
        near = shapely.dwithin(boxes[None, :], o_boxes, MIN_EGO_CLEARANCE_M)
        hits = near & o_valid & tr.valid[None, :] & ~me[:, None]
        if hits.any():
            i, k = (int(x[0]) for x in np.nonzero(hits))
            why[oid] = (
                f"its box comes within {MIN_EGO_CLEARANCE_M} m of obstacle {others[i].id} at {k * DT:.1f} s "
                "(replayed through the tracker, the log would collide)"
            )
            continue
        out.append(oid)
    key = lambda x: (len(x), x)  # noqa: E731
    return sorted(out, key=key), dict(sorted(why.items(), key=lambda kv: key(kv[0])))


def spread(items: list[str], n: int | None) -> list[str]:
    """A deterministic, evenly spread subset of ``n`` items (all when n is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in idx]


def import_commonroad(
    path: str | Path,
    egos: list[str] | None = None,
    max_egos: int | None = None,
    t0_index: int = 16,
    min_steps: int | None = None,
    rejected: list[str] | None = None,
    partial_min_steps: int | None = None,
) -> list[Scene]:
    """A CommonRoad XML file -> one scene per chosen ego (and per 8 s window of long scenarios).

    ``partial_min_steps`` (training data, not evaluation suites): a car present for only part of
    the scenario is eligible too when present for that many consecutive steps; its scenes are
    the windows of its own presence.

    ``egos`` names obstacle ids to use; otherwise all candidates, thinned to ``max_egos``
    spread evenly over the candidates ordered by id. A scenario shorter than ``min_steps``
    (default :func:`min_scene_steps`; 0 keeps everything) gives no scene. Why each obstacle
    was not used (not eligible, or the scenario too short) is appended to ``rejected``.
    """
    sc = _load(Path(path))
    cands, why = _candidates(sc, partial_min_steps)
    if egos is None:
        chosen = spread(cands, max_egos)
    else:
        bad = [e for e in egos if e not in cands]
        if bad:
            detail = "; ".join(f"{e}: {why.get(e, 'no dynamic obstacle with this id')}" for e in bad)
            raise sc.src.err(
                "obstacle", f"not eligible as ego: {detail}. Eligible candidates: {cands or 'none'}"
            )
        chosen = list(egos)
    if rejected is not None:
        rejected.extend(f"{path}: obstacle {oid}: {r}" for oid, r in why.items())
        if not cands:
            rejected.append(f"{path}: no obstacle is eligible as ego")
    short = too_short(sc.n_grid, min_scene_steps(t0_index) if min_steps is None else min_steps)
    if short is not None:
        if rejected is not None:
            rejected.append(f"{path}: scenario {short}; none of its {len(chosen)} ego choice(s) used")
        return []
    location = sc.bench.split("-")[0]
    scenes = []
    wins = windows(sc.n_grid)
    n_stride = sum(1 for a, _ in wins if a % WINDOW_STRIDE == 0)
    for ego_id in chosen:
        ego_tr = sc.tracks[ego_id]
        ego_wins, ego_stride = wins, n_stride
        if not ego_tr.valid.all():  # a partial ego: the windows of its own presence
            present = np.flatnonzero(ego_tr.valid)
            s0 = int(present[0])
            ego_wins = [(s0 + a, s0 + b) for a, b in windows(int(present[-1]) + 1 - s0)]
            ego_stride = sum(1 for a, _ in ego_wins if (a - s0) % WINDOW_STRIDE == 0)
        d = REAR_AXLE_TO_CENTER_RATIO * ego_tr.length
        spec = EgoSpec(length=ego_tr.length, width=ego_tr.width,
                       wheelbase=WHEELBASE_RATIO * ego_tr.length, rear_axle_to_center=d)  # fmt: skip
        rear = center_to_rear_axle(np.column_stack([ego_tr.xy, ego_tr.heading]), d)[:, :2]
        for w, (a, b) in enumerate(ego_wins):
            tracks = []
            for oid, tr in sc.tracks.items():
                if oid == ego_id or not tr.valid[a:b].any():
                    continue
                tracks.append(Track(id=oid, type=tr.type, length=tr.length, width=tr.width, xy=tr.xy[a:b],
                                    heading=tr.heading[a:b], valid=tr.valid[a:b]))  # fmt: skip
            road = _with_lights(sc.road, sc.lane_lights, sc.stop_lines, a, b)
            # Ids are stable across the tail-window rule: a scenario the 4 s stride cuts into one
            # window keeps its unsuffixed id, and the extra window that reaches the end is -w01.
            sid = f"cr-{sc.bench}-ego{ego_id}" + (
                f"-w{w:02d}" if len(ego_wins) > 1 and (w or ego_stride > 1) else ""
            )
            scenes.append(
                assemble_scene(
                    scene_id=sid,
                    source_dataset="commonroad",
                    source_id=sc.bench,
                    license=CR_LICENSE,
                    location=location,
                    road=road,
                    ego_xy=rear[a:b],
                    ego_heading=ego_tr.heading[a:b],
                    ego_valid=ego_tr.valid[a:b],
                    ego_spec=spec,
                    tracks=tracks,
                    t0_index=t0_index,
                    extra={
                        "commonroad_version": sc.version,
                        "ego_obstacle_id": ego_id,
                        "source_dt": sc.dt_src,
                        "window": w,
                        "window_start_step": int(a),
                        **({} if sc.light_shift is None else {"light_phase_shift_steps": sc.light_shift}),
                    },
                )
            )
    return scenes


def _with_lights(
    road: RoadMap,
    lane_lights: dict[str, tuple[list[str], np.ndarray]],
    stop_lines: dict[str, np.ndarray],
    a: int,
    b: int,
) -> RoadMap:
    """The map with one light per controlled lane (id ``<light>[+<light>...]@<lane>``), steps a..b-1."""
    lights, states = [], []
    for lane_id, (refs, st) in lane_lights.items():
        lights.append(
            TrafficLight(id="+".join(refs) + f"@{lane_id}", lane_id=lane_id, stop_line=stop_lines[lane_id])
        )
        states.append(st[a:b])
    return RoadMap(
        lanes=road.lanes,
        drivable_areas=road.drivable_areas,
        crosswalks=road.crosswalks,
        traffic_lights=lights,
        light_states=np.array(states, dtype=np.int8).reshape(len(lights), b - a),
    )
