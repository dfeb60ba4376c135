"""Pieces every importer shares: smoothed derivatives, windowing, route building, scene assembly.

Why shared: the three sources differ only in how they are read; the way a log becomes a
scene (frame translation, velocities, the route through the lane graph, the ids) must be
the same everywhere so scenes from different datasets are scored alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.signal import savgol_filter

from alpasim_policy.scenes.format import (
    DT,
    Agents,
    AgentType,
    EgoLog,
    Lane,
    RoadMap,
    Route,
    Scene,
    SceneMetadata,
)
from alpasim_policy.scenes.geometry import MapIndex, Polyline, wrap_angle

#: History kept before the first policy-controlled step (1.6 s at 10 Hz).
T0_INDEX = 16
#: Window length and stride (steps) for cutting long logs into scenes: 8 s every 4 s.
WINDOW_STEPS = 81  # 8.0 s inclusive of both ends
WINDOW_STRIDE = 40
#: How far (m) the route polyline must reach past the last logged ego position.
ROUTE_LOOKAHEAD_M = 50.0
#: Savitzky-Golay windows (samples at 10 Hz): 0.7 s for velocities, 1.1 s for accelerations
#: (a second derivative amplifies position noise, e.g. NGSIM's, far more than a first).
SAVGOL_WINDOW = 7
SAVGOL_WINDOW_ACC = 11


@dataclass
class Track:
    """One agent over the scene's time grid (source coordinates), before the frame shift."""

    id: str
    type: AgentType
    length: float
    width: float
    xy: np.ndarray  # (T, 2) box centre
    heading: np.ndarray  # (T,)
    valid: np.ndarray  # (T,) bool
    velocity: np.ndarray | None = None  # (T, 2) when the source gives it, else derived


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of True."""
    v = np.concatenate([[False], np.asarray(valid, bool), [False]])
    d = np.diff(v.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def smooth_derivative(values: np.ndarray, valid: np.ndarray, dt: float = DT, deriv: int = 1) -> np.ndarray:
    """Savitzky-Golay derivative of ``(T, ...)`` values along time, per contiguous valid run.

    Why Savitzky-Golay: finite differences of annotated boxes are noisy (cm-level jitter
    becomes m/s at 10 Hz); a local quadratic fit keeps the shape of real manoeuvres. Runs
    shorter than the window fall back to ``np.gradient``; single samples get 0.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    window = SAVGOL_WINDOW if deriv == 1 else SAVGOL_WINDOW_ACC
    for a, b in _runs(valid):
        n = b - a
        seg = values[a:b]
        if n >= window:
            out[a:b] = savgol_filter(seg, window, 2, deriv=deriv, delta=dt, axis=0, mode="interp")
        elif n >= SAVGOL_WINDOW:
            out[a:b] = savgol_filter(seg, SAVGOL_WINDOW, 2, deriv=deriv, delta=dt, axis=0, mode="interp")
        elif n >= 3 and deriv == 1:
            w = n if n % 2 else n - 1
            out[a:b] = savgol_filter(seg, w, min(2, w - 1), deriv=1, delta=dt, axis=0, mode="interp")
        elif n >= 2:
            g = np.gradient(seg, dt, axis=0)
            out[a:b] = g if deriv == 1 else np.gradient(g, dt, axis=0)
    return out


def ego_state_from_poses(xy: np.ndarray, heading: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(T, 7)`` ego state (x, y, heading, vx, vy, ax, ay) from rear-axle poses."""
    vel = smooth_derivative(xy, valid, deriv=1)
    acc = smooth_derivative(xy, valid, deriv=2)
    state = np.zeros((len(xy), 7))
    state[:, :2] = xy
    state[:, 2] = wrap_angle(heading)
    state[:, 3:5] = vel
    state[:, 5:7] = acc
    state[~valid] = 0.0
    return state


def windows(num_steps: int, length: int = WINDOW_STEPS, stride: int = WINDOW_STRIDE) -> list[tuple[int, int]]:
    """[start, end) windows of ``length`` steps every ``stride``; a short log is one window.

    When the stride leaves a tail (the last seconds of the log in no window), one more window
    ends exactly at the log's end, so every logged step is in some scene.
    """
    if num_steps <= length:
        return [(0, num_steps)]
    out = [(s, s + length) for s in range(0, num_steps - length + 1, stride)]
    if out[-1][1] < num_steps:
        out.append((num_steps - length, num_steps))
    return out


#: The default env's log warm-up (``envs/default.yaml`` ``warmup_s`` 1.6 s) and the scorer's
#: horizon (``scoring.openloop.HORIZON_STEPS``), in steps. The scene layer sits below both, so
#: it states them here; ``tests/test_scenes_import_cli.py`` fails if they drift apart.
ENV_WARMUP_STEPS = 16
SCORING_HORIZON_STEPS = 40


def min_scene_steps(t0_index: int = T0_INDEX) -> int:
    """Fewest steps a scene needs: the env's warm-up, then one full scoring window.

    Why: a scene shorter than that is scored over windows shorter than the scorer's 4 s
    horizon, so its scores do not mean what they mean elsewhere.
    """
    return max(ENV_WARMUP_STEPS, int(t0_index)) + SCORING_HORIZON_STEPS + 1


def too_short(num_steps: int, min_steps: int) -> str | None:
    """The reason a scene of ``num_steps`` is rejected, or None when it is long enough."""
    if num_steps >= min_steps:
        return None
    return (
        f"{(num_steps - 1) * DT:.1f} s ({num_steps} steps) is shorter than the {(min_steps - 1) * DT:.1f} s "
        f"({min_steps} steps) a scene needs: the env's warm-up, then one full scoring window"
    )


# ----------------------------------------------------------------------------- map helpers


def clean_lane_graph(lanes: list[Lane]) -> list[Lane]:
    """Drop references to lanes outside the map and sort lanes by id, so output is deterministic."""
    ids = {ln.id for ln in lanes}
    for ln in lanes:
        ln.successors = sorted({x for x in ln.successors if x in ids and x != ln.id})
        ln.predecessors = sorted({x for x in ln.predecessors if x in ids and x != ln.id})
        if ln.left_neighbor not in ids:
            ln.left_neighbor = None
        if ln.right_neighbor not in ids:
            ln.right_neighbor = None
    # Neighbours are lanes one may change into: drop those that run the other way (AV2 lists
    # oncoming lanes as neighbours too; CommonRoad marks them drivingDir="opposite").
    by_id = {ln.id: ln for ln in lanes}
    for ln in lanes:
        if ln.left_neighbor is not None and not _same_direction(ln, by_id[ln.left_neighbor]):
            ln.left_neighbor = None
        if ln.right_neighbor is not None and not _same_direction(ln, by_id[ln.right_neighbor]):
            ln.right_neighbor = None
    # Make successor / predecessor symmetric: sources list them on one side only at times.
    for ln in lanes:
        for s in ln.successors:
            if ln.id not in by_id[s].predecessors:
                by_id[s].predecessors = sorted([*by_id[s].predecessors, ln.id])
        for p in ln.predecessors:
            if ln.id not in by_id[p].successors:
                by_id[p].successors = sorted([*by_id[p].successors, ln.id])
    return sorted(lanes, key=lambda ln: _natural_key(ln.id))


def _same_direction(a: Lane, b: Lane) -> bool:
    da = a.centerline[-1] - a.centerline[0]
    db = b.centerline[-1] - b.centerline[0]
    return float(np.dot(da, db)) > 0.0


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def translate_map(road: RoadMap, origin: np.ndarray) -> RoadMap:
    o = np.asarray(origin, dtype=np.float64)
    lanes = [
        Lane(
            id=ln.id,
            centerline=ln.centerline - o,
            left_boundary=ln.left_boundary - o,
            right_boundary=ln.right_boundary - o,
            predecessors=list(ln.predecessors),
            successors=list(ln.successors),
            left_neighbor=ln.left_neighbor,
            right_neighbor=ln.right_neighbor,
            is_intersection=ln.is_intersection,
            speed_limit=ln.speed_limit,
            lane_type=ln.lane_type,
        )
        for ln in road.lanes
    ]
    tls = [type(t)(id=t.id, lane_id=t.lane_id, stop_line=t.stop_line - o) for t in road.traffic_lights]
    return RoadMap(
        lanes=lanes,
        drivable_areas=[p - o for p in road.drivable_areas],
        crosswalks=[p - o for p in road.crosswalks],
        traffic_lights=tls,
        light_states=road.light_states,
    )


# ----------------------------------------------------------------------------- routes

#: A lane matches a pose only if its direction is within this angle of the ego heading.
_MAX_HEADING_ERR = np.deg2rad(60.0)


def _lane_sequence(index: MapIndex, xy: np.ndarray, heading: np.ndarray) -> tuple[list[int], list[int]]:
    """Lanes visited by the poses, in order, and the pose index at which each was entered.

    A sticky matcher.

    Why sticky: lanes overlap in intersections, so picking the best lane per pose flickers.
    We stay on the current lane while it holds the pose and points the same way; when we
    leave it we prefer a successor, then a neighbour, then the best match overall.
    """
    members = index.lane_membership(xy)
    seq: list[int] = []
    entered: list[int] = []
    cur: int | None = None

    def agrees(i: int, k: int) -> bool:
        _, _, hd = index.centerlines[i].project(xy[k][None])
        return abs(float(wrap_angle(hd[0] - heading[k]))) < _MAX_HEADING_ERR

    for k in range(len(xy)):
        cands = [int(i) for i in np.flatnonzero(members[k]) if agrees(int(i), k)]
        if cur is not None and cur in cands:
            continue
        nxt = None
        if cur is not None and cands:
            lane = index._lanes[cur]
            succ = [index.lane_index[s] for s in lane.successors]
            nbrs = [index.lane_index[n] for n in (lane.left_neighbor, lane.right_neighbor) if n is not None]
            for group in (succ, nbrs):
                hit = [c for c in cands if c in group]
                if hit:
                    nxt = _closest(index, hit, xy[k])
                    break
        if nxt is None:
            nxt = _closest(index, cands, xy[k]) if cands else index.nearest_lane(xy[k], float(heading[k]))
        if nxt is None:
            continue
        if (
            cur is not None
            and nxt != cur
            and cands == []
            and _dist(index, cur, xy[k]) < _dist(index, nxt, xy[k])
        ):
            continue  # off the map but still closest to the current lane: stay
        if nxt != cur:
            seq.append(nxt)
            entered.append(k)
            cur = nxt
    return seq, entered


def _dist(index: MapIndex, i: int, p: np.ndarray) -> float:
    _, lat, _ = index.centerlines[i].project(p[None])
    return abs(float(lat[0]))


def _closest(index: MapIndex, cands: Iterable[int], p: np.ndarray) -> int:
    return min(sorted(cands), key=lambda i: _dist(index, i, p))


def _shortest_path(
    lanes: list[Lane], by_id: dict[str, int], a: int, b: int, max_depth: int = 12
) -> list[int]:
    """Lanes strictly between a and b along successors (BFS, deterministic); [] if none."""
    prev = {a: -1}
    q = deque([(a, 0)])
    while q:
        u, d = q.popleft()
        if u == b:
            path = []
            while prev[u] != a:
                u = prev[u]
                path.append(u)
            return path[::-1]
        if d >= max_depth:
            continue
        for s in lanes[u].successors:
            v = by_id[s]
            if v not in prev:
                prev[v] = u
                q.append((v, d + 1))
    return []


def _connects(lanes: list[Lane], a: int, b: int) -> bool:
    la, lb = lanes[a], lanes[b]
    return lb.id in la.successors or lb.id in (la.left_neighbor, la.right_neighbor)


def build_route(road: RoadMap, index: MapIndex, xy: np.ndarray, heading: np.ndarray) -> Route:
    """Route = lanes the ego log drives through, gap-filled and extended ~50 m past the log end.

    Consecutive route lanes are successors, or left/right neighbours where the ego changed
    lane. The polyline is the concatenation of the route lanes' centerlines.
    """
    lanes = road.lanes
    if not lanes:
        raise ValueError("the map has no lanes, so no route can be built")
    by_id = index.lane_index
    seq, entered = _lane_sequence(index, xy, heading)
    if not seq:
        seq, entered = [index.nearest_lane(xy[-1], float(heading[-1]))], [len(xy) - 1]
    # Where the ego crossed into each lane it changed into (first entry): the lane change's centre.
    entry_xy: dict[int, np.ndarray] = {}
    for i, k in zip(seq, entered, strict=True):
        entry_xy.setdefault(i, np.asarray(xy[k], np.float64))
    # Fill gaps through the lane graph.
    filled = [seq[0]]
    for b in seq[1:]:
        a = filled[-1]
        if b == a:
            continue
        if not _connects(lanes, a, b):
            mid = _shortest_path(lanes, by_id, a, b)
            if not mid:  # maybe a lane change followed by a successor: try via a neighbour
                for n in (lanes[a].left_neighbor, lanes[a].right_neighbor):
                    if n is not None:
                        m2 = _shortest_path(lanes, by_id, by_id[n], b)
                        if m2 or by_id[n] == b or lanes[b].id in lanes[by_id[n]].successors:
                            mid = [by_id[n], *m2]
                            break
            filled.extend(i for i in mid if i != filled[-1])
        filled.append(b)
    # Drop immediate back-and-forth (A, B, A) flicker between neighbours.
    route: list[int] = []
    for i in filled:
        if (
            len(route) >= 2
            and route[-2] == i
            and lanes[i].id
            in (
                lanes[route[-1]].left_neighbor,
                lanes[route[-1]].right_neighbor,
            )
        ):
            route.pop()
            continue
        route.append(i)
    # Extend forward until the polyline reaches ROUTE_LOOKAHEAD_M past the last ego position.
    poly = _route_polyline(lanes, route, entry_xy)
    last = xy[-1]
    for _ in range(50):
        pl = Polyline(poly)
        s_last, _, _ = pl.project(last[None])
        if pl.length - float(s_last[0]) >= ROUTE_LOOKAHEAD_M:
            break
        cur = lanes[route[-1]]
        if not cur.successors:
            break
        nxt = _straightest(lanes, by_id, cur)
        if nxt in route:
            break
        route.append(nxt)
        poly = _concat([poly, lanes[nxt].centerline])
    return Route(lane_ids=[lanes[i].id for i in route], polyline=Polyline(poly).points)


#: Length (m) of the lateral transition that joins two neighbour lanes where the route changes lane.
LANE_CHANGE_LENGTH_M = 20.0


def _route_polyline(lanes: list[Lane], route: list[int], entry_xy: dict[int, np.ndarray]) -> np.ndarray:
    """The route's centerline: successors are concatenated; a lane change is a lateral transition.

    Why not concatenate neighbours too: a neighbour's centerline starts level with the lane the
    ego leaves, so joining them end to start would jump back by a whole lane length (175 m on
    US-101) and a route follower would turn round. Instead the line leaves the old lane and
    blends into the new one over :data:`LANE_CHANGE_LENGTH_M`, centred where the ego crossed
    (or, for a lane change the log does not show, the middle of the new lane).
    """
    poly = np.asarray(lanes[route[0]].centerline, np.float64)
    for prev, cur in zip(route, route[1:], strict=False):
        c = np.asarray(lanes[cur].centerline, np.float64)
        if lanes[cur].id in lanes[prev].successors or lanes[cur].id not in (
            lanes[prev].left_neighbor,
            lanes[prev].right_neighbor,
        ):
            poly = _concat([poly, c])
        else:
            poly = _lane_change(poly, c, entry_xy.get(cur))
    return poly


def _at(pl: Polyline, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths s, continued straight past either end (unlike ``interpolate``)."""
    xy, _ = pl.interpolate(s)
    before, after = np.minimum(s, 0.0), np.maximum(s - pl.length, 0.0)
    return xy + before[:, None] * pl.seg_dir[0] + after[:, None] * pl.seg_dir[-1]


def _lane_change(poly: np.ndarray, target: np.ndarray, at: np.ndarray | None) -> np.ndarray:
    """``poly`` (ending on the old lane) joined to ``target`` (a neighbour) by a smooth lateral blend."""
    P, Q = Polyline(poly), Polyline(target)
    if at is None:
        at = Q.interpolate(0.5 * Q.length)[0][0]
    s_q = float(Q.project(np.asarray(at)[None])[0][0])
    s_p = float(P.project(np.asarray(at)[None])[0][0])
    half = 0.5 * LANE_CHANGE_LENGTH_M
    q0 = min(max(s_q - half, 0.0), Q.length)
    q1 = min(s_q + half, Q.length)
    if q1 - q0 < 1.0:  # the ego crossed at the very end of the new lane: take its end as the join
        q0 = max(q1 - 1.0, 0.0)
    p0 = s_p - (s_q - q0)
    n = max(int(np.ceil((q1 - q0) / 1.0)), 2) + 1
    u = np.linspace(0.0, 1.0, n)
    w = (3.0 - 2.0 * u) * u * u  # smoothstep: the heading is continuous at both ends
    blend = (1.0 - w)[:, None] * _at(P, p0 + u * (q1 - q0)) + w[:, None] * _at(Q, q0 + u * (q1 - q0))
    head = P.points[P.s < p0 - 1e-6]
    tail = Q.points[Q.s > q1 + 1e-6]
    return np.concatenate([head, blend, tail])


def _straightest(lanes: list[Lane], by_id: dict[str, int], cur: Lane) -> int:
    """The successor that continues most straight (ties by id), to extend a route deterministically."""
    end_h = Polyline(cur.centerline).seg_heading[-1]
    best = min(
        cur.successors,
        key=lambda s: (
            abs(float(wrap_angle(Polyline(lanes[by_id[s]].centerline).seg_heading[-1] - end_h))),
            s,
        ),
    )
    return by_id[best]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    out = [np.asarray(parts[0], dtype=np.float64)]
    for p in parts[1:]:
        p = np.asarray(p, dtype=np.float64)
        if np.linalg.norm(p[0] - out[-1][-1]) < 1e-6:
            p = p[1:]
        out.append(p)
    return np.concatenate(out)


# ----------------------------------------------------------------------------- assembly


@dataclass
class EgoSpec:
    length: float
    width: float
    wheelbase: float
    rear_axle_to_center: float


def assemble_scene(
    *,
    scene_id: str,
    source_dataset: str,
    source_id: str,
    license: str,
    location: str,
    road: RoadMap,
    ego_xy: np.ndarray,
    ego_heading: np.ndarray,
    ego_valid: np.ndarray,
    ego_spec: EgoSpec,
    tracks: list[Track],
    t0_index: int = T0_INDEX,
    extra: dict | None = None,
) -> Scene:
    """Build a validated scene from source-frame arrays on a 10 Hz grid (shared by all importers).

    Shifts everything so the ego rear axle at ``t0_index`` is the origin, derives the
    ego's and (where the source has none) agents' velocities, and builds the route.
    """
    T = len(ego_xy)
    t0_index = min(t0_index, T - 2)
    origin = np.asarray(ego_xy[t0_index], dtype=np.float64).copy()
    xy = ego_xy - origin
    ego_state = ego_state_from_poses(xy, np.unwrap(ego_heading), ego_valid)
    road = translate_map(road, origin)
    index = MapIndex(road)
    route = build_route(road, index, xy[ego_valid], ego_heading[ego_valid])

    tracks = sorted(tracks, key=lambda tr: _natural_key(tr.id))
    N = len(tracks)
    st = np.zeros((N, T, 5))
    va = np.zeros((N, T), dtype=bool)
    for i, tr in enumerate(tracks):
        va[i] = tr.valid
        st[i, :, :2] = tr.xy - origin
        st[i, :, 2] = wrap_angle(tr.heading)
        if tr.velocity is not None:
            st[i, :, 3:5] = tr.velocity
        else:
            st[i, :, 3:5] = smooth_derivative(tr.xy, tr.valid)
        st[i, ~tr.valid] = 0.0
    agents = Agents(
        ids=[tr.id for tr in tracks],
        types=np.array([int(tr.type) for tr in tracks], dtype=np.int8),
        size=np.array([[tr.length, tr.width] for tr in tracks], dtype=np.float64).reshape(N, 2),
        state=st,
        valid=va,
    )
    scene = Scene(
        metadata=SceneMetadata(
            scene_id=scene_id,
            source_dataset=source_dataset,
            source_id=source_id,
            license=license,
            location=location,
            frame_origin=(float(origin[0]), float(origin[1])),
            t0_index=int(t0_index),
            extra=dict(extra or {}),
        ),
        timestamps=np.round(np.arange(T) * DT, 6),
        ego=EgoLog(
            state=ego_state,
            valid=np.asarray(ego_valid, bool).copy(),
            length=ego_spec.length,
            width=ego_spec.width,
            rear_axle_to_center=ego_spec.rear_axle_to_center,
            wheelbase=ego_spec.wheelbase,
        ),
        agents=agents,
        map=road,
        route=route,
    )
    _quantize_scene(scene)
    scene.validate(scene_id)
    return scene


#: Stored floats are rounded to this many decimals (1 um, 1 urad, 1 um/s). Why: the bytes must
#: be reproducible on other machines, where numpy / scipy builds may differ in the last ulp.
QUANTUM_DECIMALS = 6


def _q(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64), QUANTUM_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _quantize_scene(scene: Scene) -> None:
    scene.ego.state = _q(scene.ego.state)
    scene.agents.state = _q(scene.agents.state)
    scene.agents.size = _q(scene.agents.size)
    for ln in scene.map.lanes:
        ln.centerline, ln.left_boundary, ln.right_boundary = (
            _q(ln.centerline), _q(ln.left_boundary), _q(ln.right_boundary))  # fmt: skip
        if ln.speed_limit is not None:
            ln.speed_limit = float(_q(ln.speed_limit))
    scene.map.drivable_areas = [_q(p) for p in scene.map.drivable_areas]
    scene.map.crosswalks = [_q(p) for p in scene.map.crosswalks]
    for tl in scene.map.traffic_lights:
        tl.stop_line = _q(tl.stop_line)
    scene.route.polyline = _q(scene.route.polyline)
    md = scene.metadata
    md.frame_origin = (float(_q(md.frame_origin[0])), float(_q(md.frame_origin[1])))
    for name in ("length", "width", "wheelbase", "rear_axle_to_center"):
        setattr(scene.ego, name, float(_q(getattr(scene.ego, name))))
