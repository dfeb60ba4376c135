"""Rule-based baseline drivers: the human log, constant velocity, and a PDM-Closed-style IDM planner.

* ``LogReplayPolicy`` returns the logged future of the ego, expressed in the current rig frame of
  the *simulated* car. It reads the log, so it is privileged: the upper bound of a leaderboard.
* ``ConstantVelocityPolicy`` keeps the current speed and heading (straight ahead in the rig frame).
  The classic floor: it ignores the road, the route and everyone on it.
* ``IDMPolicy`` follows the route centreline at a speed given by the Intelligent Driver Model:
  desired speed from the lane speed limit (or ``target_speed``), a time gap to the nearest agent
  box that overlaps a corridor around the route ahead (vehicles, cyclists, pedestrians, static
  objects), and a standing obstacle at the stop line of a red light on the route. Like PDM-Closed
  it plans longitudinally along a fixed path (no lane changes), with agents extrapolated at
  constant velocity over the plan horizon: if the planned boxes meet a forecast agent within 3 s
  (crossing or turning traffic), it plans to stop short of that point. It uses only what a
  planner may know at "now" (the observation, the static map, the current light states).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.scenes.format import DT, LightState
from alpasim_policy.scenes.geometry import (
    Polyline,
    box_corners,
    constant_velocity_tail,
    rear_axle_to_center,
    scene_to_rig_poses,
    wrap_angle,
)
from alpasim_policy.sim.agents import IDMParams, idm_acceleration
from alpasim_policy.sim.collision import boxes_overlap
from alpasim_policy.sim.contract import MIN_PLAN_STEPS

PLAN_STEPS = 64  # 6.4 s, what Alpamayo emits


class LogReplayPolicy:
    """The human driver's logged future (privileged; needs the scene passed to ``reset``)."""

    name = "log_replay"
    camera_preset: str | None = None

    def __init__(self, steps: int = PLAN_STEPS):
        self.steps = int(steps)
        self.scene = None

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        if scene is None:
            raise ValueError("log_replay needs the scene at reset (it replays the logged ego)")
        self.scene = scene
        self._poses = _kinematic_log_poses(scene.ego.state)

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        k = int(observation["step"])
        pose = np.asarray(observation["pose"], np.float64)
        fut = self._poses[k + 1 : k + 1 + self.steps]
        if len(fut) < MIN_PLAN_STEPS:
            # Past the end of the log: continue the last logged motion at constant velocity.
            fut = np.concatenate([fut, constant_velocity_tail(self._poses, MIN_PLAN_STEPS - len(fut))])
        return PolicyOutput(trajectory=scene_to_rig_poses(fut, pose))


def _kinematic_log_poses(state: np.ndarray, min_speed: float = 8.0, half_window: int = 3) -> np.ndarray:
    """Logged poses with the heading replaced by the direction of motion where the car moves.

    A kinematic car moves where it points. Some logs (tracked highway data) carry a box yaw that
    differs from the direction the positions move in by ~0.01 rad; at 27 m/s that is a 0.3 m/s
    sideways drift no bicycle can follow, so the replayed plan uses the motion direction (position
    differences over +-``half_window`` steps) above ``min_speed`` and the logged yaw below it,
    where position noise would make the motion direction worse than the yaw.
    """
    poses = np.array(state[:, :3], dtype=np.float64, copy=True)
    n = len(poses)
    if n < 3:
        return poses
    idx = np.arange(n)
    hi, lo = np.minimum(idx + half_window, n - 1), np.maximum(idx - half_window, 0)
    d = (poses[hi, :2] - poses[lo, :2]) / np.maximum(hi - lo, 1)[:, None]
    moving = np.hypot(d[:, 0], d[:, 1]) / DT > min_speed
    motion = np.arctan2(d[:, 1], d[:, 0])
    # Keep the logged yaw's branch (no 2 pi jumps) and only swap in the motion direction.
    poses[:, 2] = np.where(moving, poses[:, 2] + wrap_angle(motion - poses[:, 2]), poses[:, 2])
    return poses


class ConstantVelocityPolicy:
    """Straight ahead at the current speed."""

    name = "constant_velocity"
    camera_preset: str | None = None

    def __init__(self, steps: int = PLAN_STEPS):
        self.steps = int(steps)

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        pass

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        v = max(float(observation["speed"]), 0.0)
        t = DT * np.arange(1, self.steps + 1)
        plan = np.zeros((self.steps, 3))
        plan[:, 0] = v * t
        return PolicyOutput(trajectory=plan)


class IDMPolicy:
    """PDM-Closed-style rule planner: IDM speed along the route centreline (see module docstring)."""

    name = "idm"
    camera_preset: str | None = None

    def __init__(
        self,
        steps: int = PLAN_STEPS,
        target_speed: float | None = None,
        min_gap: float = 2.0,
        headway: float = 1.5,
        accel_max: float = 1.5,
        decel_comfort: float = 3.0,
        decel_max: float = 8.0,
        corridor_margin: float = 0.4,
        lookahead_m: float = 80.0,
        conflict_steps: int = 30,
        safety_margin: float = 0.5,
    ):
        self.steps = int(steps)
        self.target_speed = None if target_speed is None else float(target_speed)
        self.min_gap, self.headway = float(min_gap), float(headway)
        self.accel_max, self.decel_comfort, self.decel_max = (
            float(accel_max),
            float(decel_comfort),
            float(decel_max),
        )
        self._idm_params = IDMParams(
            min_gap=self.min_gap, headway=self.headway, accel_max=self.accel_max,
            decel_comfort=self.decel_comfort, decel_max=self.decel_max, exponent=4.0,
        )  # fmt: skip
        self.corridor_margin = float(corridor_margin)
        self.lookahead_m = float(lookahead_m)
        self.conflict_steps = int(conflict_steps)
        self.safety_margin = float(safety_margin)
        self.scene = None

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        if scene is None:
            raise ValueError("idm needs the scene at reset (route, lane speed limits, traffic lights)")
        self.scene = scene
        self.route = Polyline(scene.route.polyline)
        ego = scene.ego
        self.length, self.width, self.r2c = (
            float(ego.length),
            float(ego.width),
            float(ego.rear_axle_to_center),
        )
        # Desired speed: the route lanes' speed limit where known, else the given / a town default.
        lane_ids = {ln.id for ln in scene.map.lanes}
        limits = [scene.map.lane(x).speed_limit for x in scene.route.lane_ids if x in lane_ids]
        limits = [v for v in limits if v]
        self.v_desired = self.target_speed or (min(limits) if limits else 13.9)  # 50 km/h
        # Red-light stop lines on the route, as arc lengths (static map geometry).
        self.stop_lines: list[tuple[int, float]] = []
        route_lanes = set(scene.route.lane_ids)
        for li, tl in enumerate(scene.map.traffic_lights):
            if tl.lane_id in route_lanes:
                mid = np.asarray(tl.stop_line, float).mean(axis=0)
                s, lat, _ = self.route.project(mid[None])
                if abs(lat[0]) < 4.0:
                    self.stop_lines.append((li, float(s[0])))

    def _idm(self, v: float, gap: float, v_lead: float) -> float:
        # the env's IDM law, on plain floats (once per plan row); desired speed floored at 0.1 m/s
        return idm_acceleration(v, self.v_desired, gap, v_lead, self._idm_params, v_desired_floor=0.1)

    @staticmethod
    def _agents_in_scene(obs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The observed agents (mask applied): their rows (N, 8) and, in the scene frame, box
        centres (N, 2), headings (N,) and velocities (N, 2). Computed once per tick and shared by
        the lead search and the conflict check."""
        pose = np.asarray(obs["pose"], np.float64)
        mask = np.asarray(obs["agents_mask"]).astype(bool)
        a = np.asarray(obs["agents"], np.float64)[mask]
        c, s = np.cos(pose[2]), np.sin(pose[2])
        xy = pose[:2] + np.stack([c * a[:, 0] - s * a[:, 1], s * a[:, 0] + c * a[:, 1]], axis=-1)
        h = a[:, 2] + pose[2]
        vel = np.stack([c * a[:, 3] - s * a[:, 4], s * a[:, 3] + c * a[:, 4]], axis=-1)
        return a, xy, h, vel

    def _leads(
        self, obs: dict[str, Any], s_ego: float, agents: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Obstacles on the route ahead: arc length of their near edge and their speed along it."""
        s_list, v_list = [], []
        a, xy, h, vel = agents
        if len(a):
            vx, vy = vel[:, 0], vel[:, 1]
            sa, lat, hd = self.route.project(xy)
            ahead = (sa > s_ego) & (sa < s_ego + self.lookahead_m)
            # Corridor test with the agent's extent across the route direction.
            across = 0.5 * (np.abs(np.sin(h - hd)) * a[:, 5] + np.abs(np.cos(h - hd)) * a[:, 6])
            in_path = ahead & (np.abs(lat) < 0.5 * self.width + across + self.corridor_margin)
            along_extent = 0.5 * (np.abs(np.cos(h - hd)) * a[:, 5] + np.abs(np.sin(h - hd)) * a[:, 6])
            v_along = vx * np.cos(hd) + vy * np.sin(hd)
            s_list.extend((sa - along_extent)[in_path])
            v_list.extend(np.maximum(v_along[in_path], 0.0))
        front = self.r2c + 0.5 * self.length
        step = int(obs["step"])
        states = self.scene.map.light_states
        for li, s_stop in self.stop_lines:
            if states.shape[1] and states[li, min(step, states.shape[1] - 1)] == LightState.RED:
                # Only stop if the front bumper has not passed the line yet.
                if s_stop > s_ego + front - 0.5:
                    s_list.append(s_stop)
                    v_list.append(0.0)
        return np.asarray(s_list, float), np.asarray(v_list, float)

    def _speed_profile(self, s_ego: float, v: float, lead_s: np.ndarray, lead_v: np.ndarray) -> np.ndarray:
        """Arc lengths (steps,) of the rear axle under IDM behind the given (moving) obstacles."""
        front = self.r2c + 0.5 * self.length  # rear axle -> front bumper
        s = s_ego
        out_s = np.empty(self.steps)
        for i in range(self.steps):
            t = (i + 1) * DT
            if len(lead_s):
                # Leads move on at their current speed (constant-velocity forecast).
                gaps = lead_s + lead_v * t - (s + front)
                j = int(np.argmin(gaps))
                gap, vl = float(gaps[j]), float(lead_v[j])
            else:
                gap, vl = np.inf, 0.0
            a = self._idm(v, gap, vl)
            v_new = max(v + DT * a, 0.0)
            s += DT * 0.5 * (v + v_new)
            v = v_new
            out_s[i] = s
        return out_s

    def _poses(self, pose: np.ndarray, s_ego: float, lat0: float, out_s: np.ndarray) -> np.ndarray:
        """Scene-frame poses (steps, 3) on the route at arc lengths ``out_s``.

        The current lateral offset to the route is blended out over 15 m (or 3 s of travel, if
        longer), so the plan starts at the car rather than jumping onto the centreline.
        """
        pts, hd = self.route.interpolate(out_s)
        normal = np.stack([-np.sin(hd), np.cos(hd)], axis=-1)
        # Blend over distance (at least 15 m, or 3 s of travel), so that merging back at low
        # speed is a gentle drift rather than a sharp swerve.
        fade_len = max(15.0, 3.0 * (out_s[-1] - s_ego) / (DT * len(out_s)))
        fade = np.clip(1.0 - (out_s - s_ego) / fade_len, 0.0, 1.0)
        pts = pts + (lat0 * fade)[:, None] * normal
        past_end = out_s > self.route.length
        if past_end.any():  # beyond the route end: continue straight along its last direction
            extra = out_s[past_end] - self.route.length
            pts[past_end] = self.route.points[-1] + extra[:, None] * self.route.seg_dir[-1]
        # Headings from the path itself (robust where the route polyline is coarse).
        full = np.concatenate([pose[None, :2], pts])
        d = np.diff(full, axis=0)
        moving = np.hypot(d[:, 0], d[:, 1]) > 1e-3
        heading = np.where(moving, np.arctan2(d[:, 1], d[:, 0]), np.nan)
        if np.isnan(heading[0]):
            heading[0] = pose[2]
        for i in range(1, len(heading)):  # carry the last heading while standing
            if np.isnan(heading[i]):
                heading[i] = heading[i - 1]
        return np.concatenate([pts, heading[:, None]], axis=1)

    def _forecast_corners(self, agents: tuple[np.ndarray, ...]) -> np.ndarray | None:
        """Agent boxes (S, N, 4, 2) over the conflict horizon at constant velocity; None if no agents.

        They do not depend on the plan, so they are built once per tick, not per re-plan."""
        a, xy, h, vel = agents
        if not len(a):
            return None
        n_check = min(self.steps, self.conflict_steps)
        t = DT * np.arange(1, n_check + 1)
        fx = xy[None, :, 0] + t[:, None] * vel[None, :, 0]
        fy = xy[None, :, 1] + t[:, None] * vel[None, :, 1]
        return box_corners(fx, fy, h[None], a[None, :, 5], a[None, :, 6])

    def _first_conflict(self, agent_c: np.ndarray | None, poses: np.ndarray) -> int | None:
        """Index of the first planned pose whose box meets an agent forecast (:meth:`_forecast_corners`)."""
        if agent_c is None:
            return None
        c = rear_axle_to_center(poses[: len(agent_c)], self.r2c)
        ego_c = box_corners(
            c[:, 0], c[:, 1], c[:, 2], self.length + 2 * self.safety_margin, self.width + self.safety_margin
        )
        hit = boxes_overlap(ego_c[:, None], agent_c)  # (S, N)
        rows = np.flatnonzero(hit.any(axis=1))
        return int(rows[0]) if len(rows) else None

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        pose = np.asarray(observation["pose"], np.float64)
        v = max(float(observation["speed"]), 0.0)
        s_arr, lat, _ = self.route.project(pose[None, :2])
        s_ego, lat0 = float(s_arr[0]), float(lat[0])
        agents = self._agents_in_scene(observation)
        lead_s, lead_v = self._leads(observation, s_ego, agents)
        agent_c = self._forecast_corners(agents)
        out_s = self._speed_profile(s_ego, v, lead_s, lead_v)
        poses = self._poses(pose, s_ego, lat0, out_s)
        # PDM-style safety check: if the plan would meet an agent forecast at constant velocity
        # (crossing or oncoming traffic the corridor test does not see), put a standing obstacle
        # where the front bumper would be at that moment and re-plan; a few rounds at most.
        conflicts = 0
        for _ in range(3):
            i = self._first_conflict(agent_c, poses)
            if i is None:
                break
            conflicts += 1
            front = self.r2c + 0.5 * self.length
            stop_at = max(out_s[i] + front - 1.0, s_ego + front)
            lead_s = np.append(lead_s, stop_at)
            lead_v = np.append(lead_v, 0.0)
            out_s = self._speed_profile(s_ego, v, lead_s, lead_v)
            poses = self._poses(pose, s_ego, lat0, out_s)
        plan = scene_to_rig_poses(poses, pose)
        return PolicyOutput(trajectory=plan, extra={"lead_count": int(len(lead_s)), "conflicts": conflicts})
