"""``alpasim_policy/LogReplay-v0``: a closed-loop 10 Hz Gymnasium env on one logged scene.

``gymnasium.make("alpasim_policy/LogReplay-v0", scene=..., config=...)``: ``scene`` is a scene
file, a scene id of the bundled scenarios, or a loaded :class:`~alpasim_policy.scenes.format.Scene`;
``config`` a YAML path, shipped name, mapping or :class:`~alpasim_policy.sim.config.EnvConfig`
(see :mod:`alpasim_policy.sim.config` and ``envs/*.yaml``).

Episode. The log is replayed for ``warmup_s`` (1.6 s), so the first observation already has a full
16-step history; from then on, every ``step(plan)`` tracks the plan with the LQR tracker for one
0.1 s step of the kinematic bicycle, moves the agents (log replay, or IDM when ``agents: idm``),
and checks collisions, the drivable area and the distance to the log. The episode *terminates*
at the end of the log; *truncation* (after an at-fault collision, leaving the drivable area, or
more than ``max_distance_to_log_m`` from the log, AlpaSim uses 4 m) is off by default.

Action: a planned trajectory in the current rig frame (x forward, y left, origin rear axle),
``(T, 3)`` x, y, heading, row ``i`` at ``+(i + 1) * 0.1 s``. The declared Box has 64 rows (what
Alpamayo emits, and what ``gymnasium.vector`` stacks), but any ``T >= 10`` is accepted. A NaN /
empty / too short / wrong-shaped plan raises :class:`~alpasim_policy.errors.PolicyOutputError`.

Observation: the Dict declared in :mod:`alpasim_policy.sim.contract` (``cameras`` / ``bev``
only when enabled in the config). ``info``: ``ego_state`` (EGO_COLUMNS, scene frame), ``step``,
``time``, ``controlled``, ``collisions`` (contacts that started this step: agent id / index,
type, at_fault, penalty), ``at_fault_collision`` (this step), ``any_collision``, ``off_drivable``,
``distance_to_log`` (m, rear axle vs the logged rear axle at the same step).

The env is deterministic: ``reset(seed=s)`` with the same scene and config gives a bit-identical
rollout (the seed is kept for the policy and for ``np_random``; no simulation step draws from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.scenes.format import Scene, load_scene
from alpasim_policy.scenes.geometry import (
    Polyline,
    box_corners,
    map_index,
    rig_to_scene_poses,
    scene_to_rig_xy,
    wrap_angle,
)
from alpasim_policy.sim import collision as col
from alpasim_policy.sim.agents import make_agents
from alpasim_policy.sim.command import route_observation
from alpasim_policy.sim.config import EnvConfig, load_env_config, tracker_params
from alpasim_policy.sim.contract import (
    AGENT_FEATURES,
    HISTORY_STEPS,
    MAX_AGENTS,
    MIN_PLAN_STEPS,
    action_space,
    observation_space,
    validate_plan,
)
from alpasim_policy.sim.dynamics import VehicleParams, from_ego_columns, to_ego_columns
from alpasim_policy.sim.tracker import simulate_internal


def resolve_scene(scene: str | Path | Scene) -> Scene:
    if isinstance(scene, Scene):
        return scene
    if scene is None:
        raise ConfigError("LogReplay-v0: pass scene=<path | scene id | Scene>")
    from alpasim_policy.scenes.suite import find_scene

    return load_scene(find_scene(scene))


def initial_steer(log: np.ndarray, k: int, vehicle: VehicleParams, window: int = 10) -> float:
    """Steering angle at hand-over: the curvature the log drove over the last second.

    Logged accelerations (and so ``a_lat``-based estimates) are noisy, at low speed a 1 m/s^2
    error is a large steering angle; heading change over distance travelled is robust. Zero
    when the car moved less than 2 m in that second.
    """
    lo = max(k - window, 0)
    seg = log[lo : k + 1]
    dist = float(np.sum(np.hypot(*np.diff(seg[:, :2], axis=0).T))) if len(seg) > 1 else 0.0
    if dist < 2.0:
        return 0.0
    dh = float(wrap_angle(seg[-1, 2] - seg[0, 2]))
    steer = float(np.arctan(vehicle.wheelbase * dh / dist))
    return float(np.clip(steer, -vehicle.max_steering_angle, vehicle.max_steering_angle))


class LogReplayEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        scene: str | Path | Scene | None = None,
        config: str | Path | Mapping[str, Any] | EnvConfig | None = None,
        render_mode: str | None = None,
    ):
        self.config = load_env_config(config)
        self.scene = resolve_scene(scene)
        sc = self.scene
        if abs(self.config.dt - sc.metadata.dt) > 1e-9:
            raise ConfigError(
                f"env config: 'dt' is {self.config.dt} but scene {sc.scene_id} has dt {sc.metadata.dt}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.dt = float(self.config.dt)
        self.start_step = int(round(self.config.warmup_s / self.dt))
        if self.start_step > sc.num_steps - 2:
            raise ConfigError(f"env config: 'warmup_s' {self.config.warmup_s} leaves no step to drive in "
                              f"scene {sc.scene_id} ({sc.duration:.1f} s)")  # fmt: skip
        self.vehicle = VehicleParams.from_scene(sc)
        self.tracker = tracker_params(self.config)
        self.anchor = self.config.tracker.anchor
        self.fit_steps = self.config.tracker.fit_steps
        self.index = map_index(sc)
        self.route = Polyline(sc.route.polyline)
        self.agent_static = col.is_static_type(sc.agents.types)
        self.agent_size = sc.agents.size
        self.agent_types = sc.agents.types.astype(np.float32)
        self._idm_params = self.config.idm
        self.bev_enabled = self.config.bev_enabled
        self.bev_config = self.config.bev_config()
        self._bev_renderer = None
        cam = self.config.cameras
        self.camera_rig = None
        if cam.enabled:
            from alpasim_policy.render.cameras import CameraRig, CameraStyle, parked_agents

            self.camera_rig = CameraRig.from_preset(cam.preset, cam.width, cam.height)
            self._brake_lamps = bool(cam.brake_lamps)
            # which agents never move in their log (their lamps stay dark); only needed to light lamps
            self._parked = parked_agents(sc.agents) if self._brake_lamps else None
            self._camera_style = None if self._brake_lamps else CameraStyle(draw_brake_lamps=False)
        self.action_space = action_space()
        self.observation_space = observation_space(
            cameras=None
            if self.camera_rig is None
            else {n: (self.camera_rig[n].height, self.camera_rig[n].width) for n in self.camera_rig.names},
            bev=(self.bev_config.height, self.bev_config.width) if self.bev_enabled else None,
        )
        self._step = self.start_step
        self._seed: int | None = None

    # ------------------------------------------------------------------ episode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed = int(seed)
        sc = self.scene
        n_steps = sc.num_steps
        self._step = k = self.start_step
        # Recorded trajectory; steps up to the start are the log (the warm-up).
        self.ego_traj = np.zeros((n_steps, 7))
        self.ego_traj[: k + 1] = sc.ego.state[: k + 1]
        self.agent_traj = np.zeros((len(sc.agents), n_steps, 5))
        self.agent_valid_traj = np.zeros((len(sc.agents), n_steps), dtype=bool)
        self.agent_traj[:, : k + 1] = sc.agents.state[:, : k + 1]
        self.agent_valid_traj[:, : k + 1] = sc.agents.valid[:, : k + 1]
        self.plans: dict[int, np.ndarray] = {}
        self._state = from_ego_columns(
            sc.ego.state[k : k + 1], self.vehicle, steer=initial_steer(sc.ego.state, k, self.vehicle)
        )
        self.agents = make_agents(self.config.agents, sc, self.index, self._idm_params)
        self.agents.reset(k)
        self._collided: set[int] = set()
        self._last_plan_world: np.ndarray | None = None
        obs = self._observation()
        info = self._info(contacts=[], at_fault=False)
        return obs, info

    def step(self, action: Any):
        k = self._step
        if k >= self.scene.num_steps - 1:
            raise RuntimeError("step() called after the episode ended; call reset()")
        plan = validate_plan(action, min_steps=MIN_PLAN_STEPS, where=f"{self.scene.scene_id} step {k}: plan")
        pose = self._state[0, :3]
        plan_world = rig_to_scene_poses(plan, pose)
        self.plans[k] = plan_world
        self._last_plan_world = plan_world
        self._state = simulate_internal(
            self._state, plan_world[None], 1, self.vehicle, self.tracker, self.fit_steps, self.anchor
        )[:, -1]
        k += 1
        self._step = k
        ego = to_ego_columns(self._state[0], self.vehicle)
        self.ego_traj[k] = ego
        ego_corners = col.ego_corners_from_rear_axle(ego, self.vehicle.length, self.vehicle.width,
                                                     self.vehicle.rear_axle_to_center)  # fmt: skip
        speed = float(self._state[0, 3])
        a_state, a_valid = self.agents.advance(k, ego_corners, speed)
        self.agent_traj[:, k] = a_state
        self.agent_valid_traj[:, k] = a_valid
        contacts, at_fault, off = self._check(ego, ego_corners, speed, a_state, a_valid)
        obs = self._observation()
        info = self._info(contacts=contacts, at_fault=at_fault, off=off)
        terminated = k >= self.scene.num_steps - 1
        t = self.config.truncate
        truncated = bool(
            (t.at_fault_collision and at_fault)
            or (t.off_road and info["off_drivable"])
            or (t.max_distance_to_log_m is not None and info["distance_to_log"] > t.max_distance_to_log_m)
        )
        return obs, 0.0, bool(terminated), truncated and not terminated, info

    # ------------------------------------------------------------------ checks

    def _check(self, ego, ego_corners, speed, a_state, a_valid):
        contacts: list[dict[str, Any]] = []
        at_fault_any = False
        off = not bool(np.all(self.index.on_drivable(ego_corners)))
        if not len(a_state):
            return contacts, False, off
        # agents not already hit whose box touches the ego's (circle prefilter + exact test)
        cand = a_valid.copy()
        if self._collided:
            cand[[i for i in self._collided if i < len(cand)]] = False
        a_corners = np.zeros((len(a_state), 4, 2))
        idx = np.flatnonzero(cand)
        a_corners[idx] = box_corners(a_state[idx, 0], a_state[idx, 1], a_state[idx, 2],
                                     self.agent_size[idx, 0], self.agent_size[idx, 1])  # fmt: skip
        _, hit_idx = col.overlapping_pairs(ego_corners[None], a_corners, agent_mask=cand)
        hit = sorted(hit_idx.tolist())
        if not hit:
            return contacts, False, off
        hit_arr = np.array(hit)
        a_speed = np.hypot(a_state[hit_arr, 3], a_state[hit_arr, 4])
        types = col.classify_contacts(ego[:3], speed, ego_corners, a_state[hit_arr, :2], a_speed,
                                      a_corners[hit_arr], self.agent_static[hit_arr])  # fmt: skip
        multi = None
        for j, i in enumerate(hit):
            ctype = col.CollisionType(int(types[j]))
            if ctype == col.CollisionType.ACTIVE_LATERAL and multi is None:
                import shapely

                poly = shapely.polygons(ego_corners)
                multi = bool(off or self.index.count_lanes(np.array([poly], dtype=object))[0] > 1)
            fault = bool(col.is_at_fault(ctype, bool(multi)))
            pen = float(col.collision_penalty(fault, self.agent_static[i]))
            self._collided.add(i)
            at_fault_any |= fault
            contacts.append({"agent_id": self.scene.agents.ids[i], "agent_index": i, "type": col.COLLISION_NAMES[ctype],
                             "at_fault": fault, "penalty": pen})  # fmt: skip
        return contacts, at_fault_any, off

    def _info(self, contacts, at_fault, off: bool | None = None) -> dict[str, Any]:
        k = self._step
        ego = self.ego_traj[k]
        if off is None:
            corners = col.ego_corners_from_rear_axle(ego, self.vehicle.length, self.vehicle.width,
                                                     self.vehicle.rear_axle_to_center)  # fmt: skip
            off = not bool(np.all(self.index.on_drivable(corners)))
        log = self.scene.ego
        dist = float(np.hypot(*(ego[:2] - log.state[k, :2]))) if log.valid[k] else float("nan")
        return {
            "ego_state": ego.copy(),
            "step": k,
            "time": float(self.scene.timestamps[k]),
            "controlled": k > self.start_step,
            "collisions": contacts,
            "at_fault_collision": bool(at_fault),
            "any_collision": bool(contacts),
            "off_drivable": bool(off),
            "distance_to_log": dist,
        }

    # ------------------------------------------------------------------ observation

    def _observation(self) -> dict[str, Any]:
        k = self._step
        ego = self.ego_traj[k]
        pose = ego[:3].copy()
        lo = k - HISTORY_STEPS + 1
        idx = np.clip(np.arange(lo, k + 1), 0, None)
        hist = self.ego_traj[idx]
        h = np.empty((HISTORY_STEPS, 4), np.float32)
        h[:, :2] = scene_to_rig_xy(hist[:, :2], pose)
        h[:, 2] = wrap_angle(hist[:, 2] - pose[2])
        h[:, 3] = np.hypot(hist[:, 3], hist[:, 4])
        c = self.config.command
        route, cmd = route_observation(self.route, pose, c.lookahead_m, c.lateral_threshold_m)
        a_state, a_valid = self.agent_traj[:, k], self.agent_valid_traj[:, k]
        agents = np.zeros((MAX_AGENTS, AGENT_FEATURES), np.float32)
        mask = np.zeros(MAX_AGENTS, dtype=bool)
        valid = np.flatnonzero(a_valid)
        if len(valid):
            d = np.hypot(a_state[valid, 0] - pose[0], a_state[valid, 1] - pose[1])
            sel = valid[np.argsort(d, kind="stable")[:MAX_AGENTS]]
            m = len(sel)
            cth, sth = np.cos(pose[2]), np.sin(pose[2])
            agents[:m, :2] = scene_to_rig_xy(a_state[sel, :2], pose)
            agents[:m, 2] = wrap_angle(a_state[sel, 2] - pose[2])
            agents[:m, 3] = cth * a_state[sel, 3] + sth * a_state[sel, 4]
            agents[:m, 4] = -sth * a_state[sel, 3] + cth * a_state[sel, 4]
            agents[:m, 5:7] = self.agent_size[sel]
            agents[:m, 7] = self.agent_types[sel]
            mask[:m] = True
        obs: dict[str, Any] = {
            "ego_history": h,
            "speed": np.array(self._state[0, 3], dtype=np.float32),
            "acceleration": np.array(self._state[0, 5], dtype=np.float32),
            "route": route,
            "command": np.int64(cmd),
            "pose": pose,
            "step": np.array(k, dtype=np.int64),
            "agents": agents,
            "agents_mask": mask,
        }
        if self.camera_rig is not None:
            from alpasim_policy.render.cameras import brake_lamps_lit, render_cameras

            lamps = (brake_lamps_lit(self.agent_traj, self.agent_valid_traj, k, self._parked)
                     if self._brake_lamps else None)  # fmt: skip
            obs["cameras"] = render_cameras(self.scene, self.camera_rig, ego_state=ego, agent_states=a_state,
                                            agent_valid=a_valid, step=k, brake_lamps=lamps,
                                            style=self._camera_style)  # fmt: skip
        if self.bev_enabled:
            obs["bev"] = self._bev(ego, a_state, a_valid, k)
        return obs

    def _bev(self, ego, a_state, a_valid, k) -> np.ndarray:
        # The renderer is looked up once per env: the per-call lookup (render_bev) hashes the
        # whole BevConfig, which cost about as much as drawing the raster.
        if self._bev_renderer is None:
            from alpasim_policy.render.bev import get_bev_renderer

            self._bev_renderer = get_bev_renderer(self.scene, self.bev_config)
        return self._bev_renderer.render(ego_state=ego, agent_states=a_state, agent_valid=a_valid, step=k,
                                         plan_world=self._last_plan_world)  # fmt: skip

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        k = self._step
        return self._bev(self.ego_traj[k], self.agent_traj[:, k], self.agent_valid_traj[:, k], k)

    # ------------------------------------------------------------------ records

    @property
    def current_step(self) -> int:
        return self._step

    @property
    def seed_value(self) -> int | None:
        return self._seed

    def trajectory(self) -> dict[str, np.ndarray]:
        """What happened so far (steps 0..now), the arrays a :class:`Rollout` records."""
        k = self._step
        n = k + 1
        rows = max([len(p) for p in self.plans.values()], default=MIN_PLAN_STEPS)
        plans = np.full((n, rows, 3), np.nan)
        for s, p in self.plans.items():
            plans[s, : len(p)] = p
        steps = np.arange(n)
        return {
            "times": self.scene.timestamps[:n].copy(),
            "steps": steps,
            "ego_state": self.ego_traj[:n].copy(),
            "controlled": steps > self.start_step,
            "plans": plans,
            "agent_state": self.agent_traj[:, :n].copy(),
            "agent_valid": self.agent_valid_traj[:, :n].copy(),
        }
