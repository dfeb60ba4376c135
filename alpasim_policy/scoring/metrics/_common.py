"""Shared, batched geometry for the metrics: ego boxes, ego "areas", agent windows, collisions.

Shapes: ``B`` proposals, ``S`` scored states (41 for a 4 s NAVSIM horizon: t0 plus 40 steps of
0.1 s), ``M`` agents, ``L`` lanes. All loops run over time steps or lanes, never over
proposals, so cost grows with B only through numpy / shapely C loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely

from alpasim_policy.scenes.geometry import box_corners
from alpasim_policy.scoring.profiles import ScoringProfile, get_profile
from alpasim_policy.scoring.world import ScoringWorld
from alpasim_policy.sim.collision import boxes_overlap

#: nuPlan's threshold for "stopped" in collision classification (m/s)
COLLISION_STOPPED_SPEED = 5e-2
#: NAVSIM's threshold below which the ego is not checked for TTC (m/s)
TTC_STOPPED_SPEED = 5e-3
#: nuPlan's cones: an agent is "ahead" within 30 deg of the ego heading, "behind" beyond 150 deg
AHEAD_ANGLE = np.deg2rad(30.0)
BEHIND_ANGLE = np.deg2rad(150.0)


def relative_angle(ego_xy: np.ndarray, ego_heading: np.ndarray, agent_xy: np.ndarray) -> np.ndarray:
    """Angle (rad, in [0, pi]) between the ego heading and the ego -> agent vector (nuPlan's rule).

    An agent exactly on the ego reference point counts as straight ahead (angle 0).
    """
    d = np.asarray(agent_xy, float) - np.asarray(ego_xy, float)
    n = np.linalg.norm(d, axis=-1)
    cos = (d[..., 0] * np.cos(ego_heading) + d[..., 1] * np.sin(ego_heading)) / np.maximum(n, 1e-12)
    ang = np.arccos(np.clip(cos, -1.0, 1.0))
    return np.where(n < 1e-12, 0.0, ang)


def points_in_polygons(
    xy: np.ndarray, polygons: np.ndarray, strict: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All (point, polygon) pairs where a point lies in (or, unless ``strict``, on) a polygon.

    Why not an STRtree of points: building 10^6 shapely points costs more than the test.
    Points are sorted by x once; each polygon only tests the x-slice of its bounding box,
    then ``shapely.intersects_xy`` on a prepared polygon.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not len(polygons) or not len(xy):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(xy[:, 0], kind="stable")
    xs = xy[order, 0]
    bounds = shapely.bounds(polygons)
    pi, gi = [], []
    for k, poly in enumerate(polygons):
        x0, y0, x1, y1 = bounds[k]
        if not np.isfinite(x0):
            continue
        lo, hi = np.searchsorted(xs, x0, "left"), np.searchsorted(xs, x1, "right")
        if hi <= lo:
            continue
        cand = order[lo:hi]
        y = xy[cand, 1]
        cand = cand[(y >= y0) & (y <= y1)]
        if not len(cand):
            continue
        shapely.prepare(poly)
        test = shapely.contains_xy if strict else shapely.intersects_xy
        inside = test(poly, xy[cand, 0], xy[cand, 1])
        hit = cand[inside]
        pi.append(hit)
        gi.append(np.full(len(hit), k, dtype=np.int64))
    if not pi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pi), np.concatenate(gi)


class EgoGeometry:
    """The ego box over time for B proposals: rear-axle states -> centres, corners, polygons."""

    def __init__(self, states: np.ndarray, world: ScoringWorld, profile: ScoringProfile | str | None = None):
        st = np.asarray(states, dtype=np.float64)
        if st.ndim == 2:
            st = st[None]
        if st.ndim != 3 or st.shape[-1] not in (7, 9):
            raise ValueError(
                f"ego states must be (B, S, 7) EGO_COLUMNS (+ yaw_rate, yaw_accel -> 9), got {st.shape}"
            )
        self.states = st
        self.world = world
        self.profile = get_profile(profile)
        self.strict = self.profile.strict_areas
        h = st[..., 2]
        self.heading = h
        self.rear_xy = st[..., :2]
        self.center = self.rear_xy + world.rear_axle_to_center * np.stack([np.cos(h), np.sin(h)], -1)
        self.speed = np.hypot(st[..., 3], st[..., 4])
        self.corners = box_corners(
            self.center[..., 0], self.center[..., 1], h, world.ego_length, world.ego_width
        )  # (B, S, 4, 2): front-left, rear-left, rear-right, front-right
        self.half_diag = 0.5 * float(np.hypot(world.ego_length, world.ego_width))

    @property
    def shape(self) -> tuple[int, int]:
        return self.states.shape[0], self.states.shape[1]

    @cached_property
    def polygons(self) -> np.ndarray:
        return shapely.polygons(self.corners)

    @cached_property
    def areas(self) -> dict[str, np.ndarray]:
        """NAVSIM's ego areas, each (B, S) bool.

        * ``multiple_lanes``: more than one lane polygon holds a corner and none holds all four;
        * ``non_drivable``: some corner lies outside the drivable area;
        * ``oncoming``: the box centre is in no on-route lane;
        * ``intersection``: the box centre is in an intersection lane.
        """
        w = self.world
        B, S = self.shape
        n = B * S
        corners = self.corners.reshape(n * 4, 2)
        centers = self.center.reshape(n, 2)
        on_road = w.on_drivable(corners, strict=self.strict).reshape(n, 4)
        non_drivable = ~on_road.all(axis=1)

        L = len(w.lane_polygons)
        multiple = np.zeros(n, dtype=bool)
        on_route = np.zeros(n, dtype=bool)
        if L:
            pts = np.concatenate([corners, centers])
            p_idx, l_idx = w.lane_membership(pts, strict=self.strict)
            is_corner = p_idx < n * 4
            # corners: count corners per (box, lane)
            box = p_idx[is_corner] // 4
            key = box * L + l_idx[is_corner]
            ukey, counts = np.unique(key, return_counts=True)
            ubox = ukey // L
            lanes_touched = np.bincount(ubox, minlength=n)
            some_lane_has_all = np.zeros(n, dtype=bool)
            some_lane_has_all[ubox[counts >= 4]] = True
            multiple = (lanes_touched > 1) & ~some_lane_has_all
            # centres
            cbox = p_idx[~is_corner] - n * 4
            clane = l_idx[~is_corner]
            on_route[cbox[w.lane_on_route[clane]]] = True
        in_inter = w.in_intersection(centers, strict=self.strict)
        return {
            "multiple_lanes": multiple.reshape(B, S),
            "non_drivable": non_drivable.reshape(B, S),
            "oncoming": (~on_route).reshape(B, S),
            "intersection": in_inter.reshape(B, S),
        }


@dataclass
class AgentWindow:
    """The other road users over the S scored steps (what NAVSIM calls the observation)."""

    state: np.ndarray  # (S, M, 5) box centres
    valid: np.ndarray  # (S, M) bool
    size: np.ndarray  # (M, 2)
    dynamic: np.ndarray  # (M,) bool: vehicle / pedestrian / cyclist -> NC 0; else static -> 1/2
    red_polygons: np.ndarray  # (K,) shapely
    red: np.ndarray  # (S, K) bool

    @cached_property
    def corners(self) -> np.ndarray:
        s = self.state
        return box_corners(s[..., 0], s[..., 1], s[..., 2], self.size[None, :, 0], self.size[None, :, 1])

    @cached_property
    def polygons(self) -> np.ndarray:
        return shapely.polygons(self.corners)

    @cached_property
    def speed(self) -> np.ndarray:
        return np.hypot(self.state[..., 3], self.state[..., 4])

    @cached_property
    def first_seen_speed(self) -> np.ndarray:
        """(M,) each agent's speed at the first step it is valid in the window (NAVSIM's
        ``unique_objects`` keep that first sighting); 0 for an agent never seen."""
        if not self.valid.size:
            return np.zeros(self.size.shape[0])
        first = np.argmax(self.valid, axis=0)
        return np.where(self.valid.any(axis=0), self.speed[first, np.arange(self.valid.shape[1])], 0.0)

    @cached_property
    def half_diag(self) -> np.ndarray:
        return 0.5 * np.hypot(self.size[:, 0], self.size[:, 1])

    @property
    def num_agents(self) -> int:
        return int(self.size.shape[0])


def agent_window(
    world: ScoringWorld,
    start_step: int,
    num_states: int,
    agents: str = "log",
    agent_state: np.ndarray | None = None,
    agent_valid: np.ndarray | None = None,
) -> AgentWindow:
    """Agents for scene steps ``start_step .. start_step + num_states - 1``.

    ``agents="log"``: the logged future (NAVSIM's non-reactive open-loop rule).
    ``agents="constant_velocity"``: only what is known at ``start_step`` -- agents valid then are
    rolled forward at their current velocity, lights keep their current state; nothing from
    the log's future is read. ``agent_state`` / ``agent_valid`` ((M, T) over scene steps) replace
    the log, e.g. with the agents an env simulated in closed loop.
    """
    T = world.num_steps
    st_all = world.agent_state if agent_state is None else np.asarray(agent_state, np.float64)
    va_all = world.agent_valid if agent_valid is None else np.asarray(agent_valid, bool)
    M = st_all.shape[0]
    S = int(num_states)
    steps = start_step + np.arange(S)
    inside = (steps >= 0) & (steps < T)
    idx = np.clip(steps, 0, T - 1)
    if agents == "log":
        state = np.transpose(st_all[:, idx], (1, 0, 2)).copy()  # (S, M, 5)
        valid = (va_all[:, idx] & inside[None]).T.copy()
        red = world.red_light_red[:, idx].T & inside[:, None]
    elif agents == "constant_velocity":
        if not 0 <= start_step < T:
            raise ValueError(f"start step {start_step} outside the scene's {T} steps")
        now = st_all[:, start_step]  # (M, 5)
        k = (np.arange(S) * world.dt)[:, None]
        state = np.repeat(now[None], S, axis=0)
        state[..., 0] = now[None, :, 0] + now[None, :, 3] * k
        state[..., 1] = now[None, :, 1] + now[None, :, 4] * k
        valid = np.repeat(va_all[:, start_step][None], S, axis=0)
        red = np.repeat(world.red_light_red[:, start_step][None], S, axis=0)
    else:
        raise ValueError(f"agents must be 'log' or 'constant_velocity', got {agents!r}")
    dyn = world.agent_is_dynamic() if M else np.zeros(0, bool)
    return AgentWindow(
        state=state.reshape(S, M, 5),
        valid=valid.reshape(S, M),
        size=world.agent_size.reshape(M, 2),
        dynamic=dyn,
        red_polygons=world.red_light_polygons,
        red=red.reshape(S, -1),
    )


def overlapping_pairs(
    ego_corners: np.ndarray,
    ego_center: np.ndarray,
    ego_half_diag: float,
    win: AgentWindow,
    agent_step: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, s, m) triples where the ego box at (b, s) intersects agent m at step ``agent_step[s]``.

    Broad phase by centre distance vs. the sum of half-diagonals, then axis-aligned bounding
    boxes (numpy), then the exact separating-axis test on the survivors.
    """
    B, S = ego_center.shape[:2]
    if win.num_agents == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    a_step = np.arange(S) if agent_step is None else np.asarray(agent_step)
    a_xy = win.state[a_step, :, :2]  # (S, M, 2)
    a_valid = win.valid[a_step]  # (S, M)
    reach = ego_half_diag + win.half_diag  # (M,)
    # agents outside the box spanned by all proposals' centres (plus reach) at a step are skipped
    lo = ego_center.min(axis=0)  # (S, 2)
    hi = ego_center.max(axis=0)
    near = np.all(
        (a_xy >= lo[:, None] - reach[None, :, None]) & (a_xy <= hi[:, None] + reach[None, :, None]), -1
    )
    near &= a_valid
    # every near (step, agent) pair at once, in chunks that keep B x pairs small
    s_all, m_all = np.nonzero(near)
    reach2 = reach**2
    bb, ss, mm = [], [], []
    step = max(1, 1_000_000 // max(B, 1))
    for k0 in range(0, len(s_all), step):
        s_k, m_k = s_all[k0 : k0 + step], m_all[k0 : k0 + step]
        diff = ego_center[:, s_k, :] - a_xy[s_k, m_k][None]  # (B, k, 2)
        d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2
        b_i, k_i = np.nonzero(d2 <= reach2[m_k][None])
        if len(b_i):
            bb.append(b_i)
            ss.append(s_k[k_i])
            mm.append(m_k[k_i])
    if not bb:
        e = np.zeros(0, np.int64)
        return e, e, e
    b = np.concatenate(bb)
    s = np.concatenate(ss)
    m = np.concatenate(mm)
    # axis-aligned bounding boxes next (cheap), then the exact test on what is left
    ec = ego_corners[b, s]  # (K, 4, 2)
    ac = win.corners[a_step[s], m]
    aabb = np.all((_corner_min(ec) <= _corner_max(ac)) & (_corner_min(ac) <= _corner_max(ec)), axis=-1)
    b, s, m = b[aabb], s[aabb], m[aabb]
    # exact test: separating axes on the rectangles (the sim's rule, so env and scorer agree)
    hit = boxes_overlap(ego_corners[b, s], win.corners[a_step[s], m])
    return b[hit], s[hit], m[hit]


def _corner_min(c: np.ndarray) -> np.ndarray:
    """(K, 4, 2) -> (K, 2): element-wise minima (faster than a reduce over the short axis)."""
    return np.minimum(np.minimum(c[:, 0], c[:, 1]), np.minimum(c[:, 2], c[:, 3]))


def _corner_max(c: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(c[:, 0], c[:, 1]), np.maximum(c[:, 2], c[:, 3]))


def first_per_pair(b: np.ndarray, m: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Indices of the earliest (by ``order_key``) entry of each distinct (b, m) pair."""
    if not len(b):
        return np.zeros(0, np.int64)
    o = np.lexsort((order_key, m, b))
    bo, mo = b[o], m[o]
    first = np.ones(len(o), dtype=bool)
    first[1:] = (bo[1:] != bo[:-1]) | (mo[1:] != mo[:-1])
    return o[first]
