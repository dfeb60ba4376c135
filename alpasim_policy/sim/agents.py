"""The other road users: log replay, or reactive IDM agents that follow the lane graph.

``LogReplayAgents`` plays each agent's logged boxes back unchanged (non-reactive: a car ahead
of the ego brakes whatever the ego does, a car behind may drive into a slow ego).

``IDMAgents`` (the ``reactive`` config) hands every *moving vehicle* that is in the scene when the
policy takes over to the Intelligent Driver Model: it drives along a path made of its current
lane's centreline and the successors that best match where its log went, at a desired speed
taken from its own log, keeping a time gap to the nearest box ahead in its path (other agents,
the ego, and the stop line of a red light). Pedestrians, cyclists, static objects, parked cars
(less than 3 m of movement in the whole log), agents outside any lane (more than 1.75 m from its
centreline, e.g. on the shoulder) and agents that appear later keep replaying their log.

Reactive agents must never drive *through* the ego: besides treating the ego as a lead, a step
that would make an IDM agent's box overlap the ego's box is refused (the agent holds its place
and its speed drops to zero). If the ego drives into a reactive agent, that is the ego's doing.

Everything per step is vectorised over the IDM agents (paths are pre-sampled at 1 m at reset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.scenes.format import AgentType, LightState, Scene
from alpasim_policy.scenes.geometry import MapIndex, Polyline, box_corners, wrap_angle
from alpasim_policy.sim.collision import boxes_overlap
from alpasim_policy.typed_config import setting

PATH_SPACING_M = 1.0
LOOKAHEAD_M = 60.0
DRIVING_TYPES = (AgentType.VEHICLE, AgentType.BUS, AgentType.TRUCK, AgentType.MOTORCYCLE)


@dataclass(frozen=True)
class IDMParams:
    """Intelligent Driver Model constants (Treiber et al.); defaults as nuPlan's IDM agents."""

    min_gap: float = setting(2.0, ge=0)  # s0, m bumper to bumper at standstill
    headway: float = setting(1.5, ge=0)  # T, s
    accel_max: float = setting(1.0, ge=0)  # a, m/s^2
    decel_comfort: float = setting(2.0, ge=0)  # b, m/s^2
    decel_max: float = setting(8.0, ge=0)  # physical braking limit, m/s^2
    exponent: float = setting(4.0, ge=0)  # delta
    min_desired_speed: float = setting(2.0, ge=0)  # m/s, floor of the speed taken from the log


def idm_acceleration(
    v: Any, v_desired: Any, gap: Any, v_lead: Any, p: IDMParams, v_desired_floor: float = 1e-3
) -> Any:
    """The IDM law (Treiber et al.), written once for the env's agents and the ``idm`` baseline.

    ``gap`` is bumper to bumper, inf where there is no lead (the interaction term is then 0);
    the result is clipped to [-decel_max, accel_max]. Arrays (the env, vectorised over agents) or
    plain floats (the baseline's per-row loop, where numpy's scalar calls would cost more than the
    arithmetic) give the same numbers.
    """
    if isinstance(v, np.ndarray) or isinstance(gap, np.ndarray):
        maximum, clip = np.maximum, np.clip
        sqrt = np.sqrt
    else:
        maximum, sqrt = max, math.sqrt

        def clip(a: float, lo: float, hi: float) -> float:
            return min(max(a, lo), hi)

    v = maximum(v, 0.0)
    free = 1.0 - (v / maximum(v_desired, v_desired_floor)) ** p.exponent
    s_star = p.min_gap + maximum(
        0.0, v * p.headway + v * (v - v_lead) / (2.0 * sqrt(p.accel_max * p.decel_comfort))
    )
    inter = (s_star / maximum(gap, 1e-2)) ** 2  # 0 where gap is inf
    return clip(p.accel_max * (free - inter), -p.decel_max, p.accel_max)


def lane_path(
    scene: Scene,
    index: MapIndex,
    xy: np.ndarray,
    heading: float,
    length: float,
    follow: np.ndarray | None = None,
    max_offset: float = 1.75,
) -> tuple[np.ndarray, list[str]] | None:
    """A path from ``xy`` along the lane graph, at least ``length`` m long where the graph allows.

    Starts at the lane best matching the pose; at each junction takes the successor whose
    centreline passes closest to any of the ``follow`` points (e.g. the agent's logged future),
    else the first successor. Returns (points (P, 2), lane ids) or None when no lane fits the
    pose (more than ``max_offset`` m off its centreline, i.e. outside the lane, or more than
    60 deg off the lane direction): a car on the shoulder is parked, not in the lane.
    """
    li = index.nearest_lane(xy, heading)
    if li is None:
        return None
    lanes = scene.map.lanes
    cl = index.centerlines[li]
    s, lat, hd = cl.project(np.asarray(xy, float)[None])
    if abs(lat[0]) > max_offset or abs(wrap_angle(hd[0] - heading)) > np.pi / 3:
        return None
    pts = [np.asarray(xy, float)[None]]
    # Join the centreline a few metres ahead, so the start offset is absorbed smoothly.
    ahead = cl.points[cl.s > s[0] + 4.0]
    pts.append(ahead)
    ids = [lanes[li].id]
    total = max(0.0, cl.length - s[0])
    cur = lanes[li]
    while total < length:
        succ = [x for x in cur.successors if x in index.lane_index]
        if not succ:
            break
        if len(succ) > 1 and follow is not None and len(follow):
            cost = [np.min(np.linalg.norm(follow[:, None, :] - lanes[index.lane_index[x]].centerline[None], axis=-1))
                    for x in succ]  # fmt: skip
            nxt = succ[int(np.argmin(cost))]
        else:
            nxt = succ[0]
        if nxt in ids:  # a loop in the graph
            break
        cur = lanes[index.lane_index[nxt]]
        ids.append(cur.id)
        pts.append(cur.centerline)
        total += index.centerlines[index.lane_index[nxt]].length
    path = np.concatenate(pts)
    if len(path) < 2:
        return None
    return path, ids


class LogReplayAgents:
    """Agents exactly as logged."""

    reactive = False

    def __init__(self, scene: Scene):
        self.scene = scene
        self.state = scene.agents.state
        self.valid = scene.agents.valid

    def reset(self, step: int) -> None:
        pass

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.state[:, step], self.valid[:, step]

    def advance(self, step: int, ego_corners: np.ndarray, ego_speed: float) -> tuple[np.ndarray, np.ndarray]:
        """States and validity at ``step`` (the step being entered)."""
        return self.state[:, step], self.valid[:, step]


class IDMAgents:
    """Reactive agents: IDM along lane-graph paths (see the module docstring)."""

    reactive = True

    def __init__(self, scene: Scene, index: MapIndex, params: IDMParams | None = None):
        self.scene = scene
        self.index = index
        self.p = params or IDMParams()
        self.cur_state = scene.agents.state[:, 0].copy()
        self.cur_valid = scene.agents.valid[:, 0].copy()

    def reset(self, step: int) -> None:
        """Take over the agents present at ``step`` (the first controlled step)."""
        sc = self.scene
        a = sc.agents
        n = len(a)
        self.cur_state = a.state[:, step].copy()
        self.cur_valid = a.valid[:, step].copy()
        speed_log = np.hypot(a.state[..., 3], a.state[..., 4])
        controlled = []
        paths = []
        for i in range(n):
            if not a.valid[i, step] or int(a.types[i]) not in DRIVING_TYPES:
                continue
            pos = a.state[i][a.valid[i], :2]
            if np.hypot(*(pos.max(axis=0) - pos.min(axis=0))) < 3.0:
                continue  # parked (moves < 3 m over the whole log, speed noise aside): keep it there
            fut = a.valid[i, step:]
            follow = a.state[i, step:][fut][:, :2]
            res = lane_path(sc, self.index, a.state[i, step, :2], float(a.state[i, step, 2]), 200.0, follow)
            if res is None:
                continue
            controlled.append(i)
            paths.append(res)
        self.ids = np.array(controlled, dtype=np.int64)
        k = len(self.ids)
        self.lengths = a.size[self.ids, 0] if k else np.zeros(0)
        self.widths = a.size[self.ids, 1] if k else np.zeros(0)
        # Paths resampled every PATH_SPACING_M, padded to a common length with their end point.
        polys = [Polyline(p) for p, _ in paths]
        npts = max([int(pl.length / PATH_SPACING_M) + 2 for pl in polys], default=2)
        self.path_xy = np.zeros((k, npts, 2))
        self.path_h = np.zeros((k, npts))
        self.path_len = np.zeros(k)
        for j, pl in enumerate(polys):
            s = np.minimum(np.arange(npts) * PATH_SPACING_M, pl.length)
            xy, h = pl.interpolate(s)
            self.path_xy[j], self.path_h[j] = xy, h
            self.path_len[j] = pl.length
        self.path_lanes = [ids for _, ids in paths]
        self.s = np.zeros(k)
        self.v = np.hypot(a.state[self.ids, step, 3], a.state[self.ids, step, 4]) if k else np.zeros(0)
        vmax = np.array([speed_log[i][a.valid[i]].max() for i in self.ids]) if k else np.zeros(0)
        self.v_desired = np.maximum(vmax, self.p.min_desired_speed)
        self._stop_s = self._red_light_positions()
        self.is_idm = np.zeros(n, dtype=bool)
        self.is_idm[self.ids] = True

    def _red_light_positions(self) -> list[list[tuple[int, float]]]:
        """Per IDM agent: (light index, arc length of its stop line on the agent's path)."""
        out: list[list[tuple[int, float]]] = []
        lights = self.scene.map.traffic_lights
        for j in range(len(self.ids)):
            entries = []
            lanes = set(self.path_lanes[j])
            for li, tl in enumerate(lights):
                if tl.lane_id in lanes:
                    mid = np.asarray(tl.stop_line, float).mean(axis=0)
                    d = np.linalg.norm(self.path_xy[j] - mid, axis=1)
                    k = int(np.argmin(d))
                    if d[k] < 4.0 and k > 0:
                        entries.append((li, k * PATH_SPACING_M))
            out.append(entries)
        return out

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cur_state, self.cur_valid

    def _pose_at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.ids)
        f = np.clip(s / PATH_SPACING_M, 0, self.path_xy.shape[1] - 1)
        i0 = np.minimum(np.floor(f).astype(np.int64), self.path_xy.shape[1] - 2)
        w = (f - i0)[:, None]
        rows = np.arange(k)
        xy = (1 - w) * self.path_xy[rows, i0] + w * self.path_xy[rows, i0 + 1]
        h = self.path_h[rows, np.minimum(np.round(f).astype(np.int64), self.path_xy.shape[1] - 1)]
        return xy, h

    def advance(self, step: int, ego_corners: np.ndarray, ego_speed: float, dt: float = 0.1):
        """Move to ``step``: log agents from the log, IDM agents by one IDM step."""
        a = self.scene.agents
        new_state = a.state[:, step].copy()
        new_valid = a.valid[:, step].copy()
        k = len(self.ids)
        if k:
            gap, v_lead = self._leads(step, ego_corners, ego_speed)
            acc = idm_acceleration(self.v, self.v_desired, gap, v_lead, self.p)
            v_new = np.maximum(self.v + dt * acc, 0.0)
            s_new = np.minimum(self.s + dt * 0.5 * (self.v + v_new), self.path_len)
            xy, h = self._pose_at(s_new)
            # Never into the ego: refuse a step that would overlap the ego's box.
            corners = box_corners(xy[:, 0], xy[:, 1], h, self.lengths, self.widths)
            bad = boxes_overlap(corners, ego_corners[None])
            if bad.any():
                s_new = np.where(bad, self.s, s_new)
                v_new = np.where(bad, 0.0, v_new)
                xy, h = self._pose_at(s_new)
            self.s, self.v = s_new, v_new
            new_state[self.ids, 0] = xy[:, 0]
            new_state[self.ids, 1] = xy[:, 1]
            new_state[self.ids, 2] = h
            new_state[self.ids, 3] = v_new * np.cos(h)
            new_state[self.ids, 4] = v_new * np.sin(h)
            new_valid[self.ids] = True
        self.cur_state, self.cur_valid = new_state, new_valid
        return new_state, new_valid

    def _leads(self, step: int, ego_corners: np.ndarray, ego_speed: float) -> tuple[np.ndarray, np.ndarray]:
        """Per IDM agent: bumper gap to the nearest box ahead in its path, and that box's speed."""
        k = len(self.ids)
        st, val = self.cur_state, self.cur_valid
        ego_c = ego_corners.mean(axis=0)
        ego_h = float(np.arctan2(*(ego_corners[0] - ego_corners[1])[::-1]))
        ego_len = float(np.linalg.norm(ego_corners[0] - ego_corners[1]))
        ego_w = float(np.linalg.norm(ego_corners[0] - ego_corners[3]))
        others = np.flatnonzero(val)
        obj_xy = np.concatenate([st[others, :2], ego_c[None]])
        obj_h = np.concatenate([st[others, 2], [ego_h]])
        obj_v = np.concatenate([np.hypot(st[others, 3], st[others, 4]), [ego_speed]])
        obj_len = np.concatenate([self.scene.agents.size[others, 0], [ego_len]])
        obj_w = np.concatenate([self.scene.agents.size[others, 1], [ego_w]])
        obj_id = np.concatenate([others, [-1]])
        n_win = int(LOOKAHEAD_M / PATH_SPACING_M)
        best_gap = np.full(k, np.inf)
        best_v = np.zeros(k)
        # Candidate (agent, object) pairs: the object is near and not behind the agent.
        agent_xy = st[self.ids, :2]
        agent_h = st[self.ids, 2]
        rel = obj_xy[None, :, :] - agent_xy[:, None, :]  # (k, M, 2)
        fwd = rel[..., 0] * np.cos(agent_h)[:, None] + rel[..., 1] * np.sin(agent_h)[:, None]
        dist2 = rel[..., 0] ** 2 + rel[..., 1] ** 2
        cand = (dist2 < (LOOKAHEAD_M + 10.0) ** 2) & (fwd > -5.0) & (obj_id[None, :] != self.ids[:, None])
        ai, oj = np.nonzero(cand)
        if len(ai):
            start = np.floor(self.s / PATH_SPACING_M).astype(np.int64)
            idx = np.minimum(start[ai, None] + np.arange(n_win)[None, :], self.path_xy.shape[1] - 1)
            win = self.path_xy[ai[:, None], idx]  # (P, W, 2)
            dx = win[..., 0] - obj_xy[oj, None, 0]
            dy = win[..., 1] - obj_xy[oj, None, 1]
            d2 = dx * dx + dy * dy
            jmin = np.argmin(d2, axis=1)
            pr = np.arange(len(ai))
            lat = np.sqrt(d2[pr, jmin])
            s_obj = (start[ai] + jmin) * PATH_SPACING_M
            # In the path and ahead: its centre beyond our front bumper (a car alongside is not a lead).
            in_path = (lat < 0.5 * (self.widths[ai] + obj_w[oj]) + 0.3) & (
                s_obj > self.s[ai] + 0.5 * self.lengths[ai]
            )
            in_path &= jmin < n_win - 1  # the window's last point collects everything beyond it
            gap = np.where(in_path, s_obj - self.s[ai] - 0.5 * (self.lengths[ai] + obj_len[oj]), np.inf)
            hpath = self.path_h[ai, idx[pr, jmin]]
            v_along = np.maximum(obj_v[oj] * np.cos(obj_h[oj] - hpath), 0.0)
            order = np.lexsort((gap, ai))  # per agent, smallest gap first
            first = np.ones(len(order), dtype=bool)
            first[1:] = ai[order][1:] != ai[order][:-1]
            sel = order[first]
            best_gap[ai[sel]] = gap[sel]
            best_v[ai[sel]] = np.where(np.isfinite(gap[sel]), v_along[sel], 0.0)
        # Red lights: a standing obstacle at the stop line.
        states = self.scene.map.light_states
        for r, entries in enumerate(self._stop_s):
            for li, s_stop in entries:
                if states[li, min(step, states.shape[1] - 1)] == LightState.RED:
                    g = s_stop - self.s[r] - 0.5 * self.lengths[r]
                    if 0.0 < g < best_gap[r]:
                        best_gap[r], best_v[r] = g, 0.0
        return best_gap, best_v


def make_agents(kind: str, scene: Scene, index: MapIndex, idm: IDMParams | None = None):
    if kind == "log":
        return LogReplayAgents(scene)
    if kind == "idm":
        return IDMAgents(scene, index, idm)
    raise ConfigError(f"agents: must be 'log' or 'idm', got {kind!r}")
