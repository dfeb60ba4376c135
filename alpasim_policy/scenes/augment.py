"""Scene-to-scene transforms that make new driving situations out of real recordings.

Why: the bundled evaluation suite has stop-and-go highway traffic (egos crawling at 1-3 m/s
behind a close lead) that no training recording shows, while the recordings have plenty of the
same road users at 9-12 m/s. :func:`time_scaled` replays a recording in slow motion, so every
road user (ego included) moves ``factor`` times as fast along its own logged path: the
geometry, the lanes, the gaps and who is where stay real, only the clock is stretched. It is a
training augmentation (``train --stage data --time-scale F``); evaluation scenes are never
transformed.

:func:`moved_along_path` moves the ego's whole log forward along its own path, so it starts
closer to the car ahead than its driver ever was: real traffic keeps comfortable gaps, while a
learner that misjudges a gap ends up bumper to bumper, a state the logs never show
(``train --stage data --close-up N``).

:func:`yaw_swung` hands the ego over mid-swerve: its logged heading swings off over the last
steps before t0, as a noisy or twitchy log can (``train --stage data --yaw-swings N``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alpasim_policy.scenes.format import DT, Agents, RoadMap, Scene
from alpasim_policy.scenes.geometry import Polyline, wrap_angle


def _steps_at(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The logged step at or before each fractional step ``u`` and the fraction past it (0 on a
    logged step, also where ``k * factor`` lands a rounding error below it)."""
    i0 = np.minimum(np.floor(u + 1e-9).astype(np.int64), n - 1)
    return i0, np.maximum(u - i0, 0.0)


def _sample(
    state: np.ndarray, valid: np.ndarray, i0: np.ndarray, frac: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """``state`` (..., T, C) read between logged steps ``i0`` and ``i0 + 1`` at ``frac``
    (:func:`_steps_at`): positions interpolated linearly, headings along the shorter arc,
    velocities (columns 3-4) times ``factor``, accelerations (columns 5-6, when present) times
    ``factor**2``; valid where both neighbours are (or the sample falls on a logged step)."""
    i1 = np.minimum(i0 + 1, state.shape[-2] - 1)
    w = frac[:, None]
    a = state[..., i0, :]
    b = state[..., i1, :]
    out = a + w * (b - a)
    out[..., 2] = wrap_angle(a[..., 2] + frac * wrap_angle(b[..., 2] - a[..., 2]))
    out[..., 3:5] *= factor
    if state.shape[-1] > 5:
        out[..., 5:7] *= factor**2
    ok = valid[..., i0] & (valid[..., i1] | (frac == 0.0))
    out = np.where(ok[..., None], out, 0.0)
    return out, ok


def time_scaled(scene: Scene, factor: float, num_steps: int | None = None) -> Scene:
    """``scene`` replayed at ``factor`` times its speed (``0 < factor``; < 1 is slow motion).

    Step ``k`` of the new scene shows the recording at its step ``k * factor`` (interpolated), so
    positions stay on the logged paths, speeds scale by ``factor`` and accelerations by
    ``factor**2``; traffic lights keep the state of the logged step at or before that time.
    ``t0_index`` stays the same step number (the history before it is slowed too). The new
    scene has ``num_steps`` steps (default: the original's count), fewer where the recording
    ends sooner. Its id gets ``-x{factor}`` appended and ``metadata.extra["time_scale"]`` says
    what was done; the source recording and ego stay, so held-out filtering still applies.
    """
    if not (factor > 0.0 and np.isfinite(factor)):
        raise ValueError(f"time scale must be a positive number, got {factor}")
    n = scene.num_steps
    most = int(np.floor((n - 1) / factor + 1e-9)) + 1
    m = min(most, scene.num_steps if num_steps is None else int(num_steps))
    t0 = scene.metadata.t0_index
    if m <= t0 + 1:
        raise ValueError(f"{scene.scene_id}: time scale {factor} leaves {m} steps, none after t0 ({t0})")
    i0, frac = _steps_at(np.arange(m) * factor, n)
    ego_state, ego_valid = _sample(scene.ego.state, scene.ego.valid, i0, frac, factor)
    if not ego_valid[t0]:
        raise ValueError(f"{scene.scene_id}: time scale {factor} leaves the ego invalid at t0 ({t0})")
    agents = scene.agents
    if len(agents):
        a_state, a_valid = _sample(agents.state, agents.valid, i0, frac, factor)
    else:
        a_state, a_valid = np.zeros((0, m, 5)), np.zeros((0, m), bool)
    lights = scene.map.light_states[:, i0]
    md = scene.metadata
    meta = dataclasses.replace(
        md,
        scene_id=f"{md.scene_id}-x{factor:g}",
        extra={**md.extra, "time_scale": float(factor)},
    )
    return Scene(
        metadata=meta,
        timestamps=np.arange(m) * DT,
        ego=dataclasses.replace(scene.ego, state=ego_state, valid=ego_valid),
        agents=Agents(list(agents.ids), agents.types.copy(), agents.size.copy(), a_state, a_valid),
        map=RoadMap(
            scene.map.lanes,
            scene.map.drivable_areas,
            scene.map.crosswalks,
            scene.map.traffic_lights,
            lights.astype(scene.map.light_states.dtype),
        ),
        route=scene.route,
    )


class _LoggedPath:
    """The path a road user drove: the polyline of its logged positions, with the logged heading
    as a function of arc length (interpolated over the log, not the noisy direction of the short
    segments a crawling car leaves). Past the last point it goes straight on."""

    def __init__(self, poses: np.ndarray, who: str):
        if len(poses) < 2:
            raise ValueError(f"{who} has {len(poses)} valid step(s), no path to move along")
        try:
            self.line = Polyline(poses[:, :2])
        except ValueError as err:  # a parked car: no distinct points
            raise ValueError(f"{who} never moves, no path to move along") from err
        self.s, _, _ = self.line.project(poses[:, :2])
        order = np.argsort(self.s, kind="stable")
        self._s_sorted = self.s[order]
        self._heading_sorted = np.unwrap(poses[order, 2])

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 2) and headings (N,) at arc lengths ``s``."""
        s = np.asarray(s, dtype=np.float64)
        xy, _ = self.line.interpolate(s)
        beyond = np.maximum(s - self.line.length, 0.0)
        xy = xy + beyond[:, None] * self.line.seg_dir[-1][None, :]
        return xy, np.interp(s, self._s_sorted, self._heading_sorted)


def moved_along_path(scene: Scene, shift_m: float) -> Scene:
    """``scene`` with every logged ego pose ``shift_m`` metres further along the ego's own path.

    Each valid step's rear-axle position is projected onto the polyline of the logged positions
    and moved ``shift_m`` further (past the last point, straight on along the last segment), so
    the speed profile, the lane and the timing stay the driver's and only where along the road
    the ego is changes. Its heading is the logged heading at the new arc length (interpolated
    over the log, not the noisy segment direction of a crawling car), and velocity and
    acceleration turn with it. Other road users, lights and the route are untouched. The id gets
    ``-m{shift}`` appended and ``metadata.extra["moved_m"]`` records the shift. Whether the new
    start collides with anything is the caller's check (it depends on who is ahead).
    """
    if not (np.isfinite(shift_m) and shift_m >= 0.0):
        raise ValueError(f"shift must be a finite distance >= 0 m, got {shift_m}")
    ego = scene.ego
    idx = np.flatnonzero(ego.valid)
    path = _LoggedPath(ego.state[idx, :3], f"{scene.scene_id}: the ego")
    xy, heading = path.at(path.s + shift_m)
    turn = heading - ego.state[idx, 2]
    c, si = np.cos(turn), np.sin(turn)
    state = ego.state.copy()
    state[idx, 0:2] = xy
    state[idx, 2] = wrap_angle(heading)
    for col in (3, 5):  # (vx, vy) and (ax, ay) turn with the heading
        vx, vy = ego.state[idx, col], ego.state[idx, col + 1]
        state[idx, col] = c * vx - si * vy
        state[idx, col + 1] = si * vx + c * vy
    md = scene.metadata
    meta = dataclasses.replace(
        md, scene_id=f"{md.scene_id}-m{shift_m:.1f}", extra={**md.extra, "moved_m": float(shift_m)}
    )
    return dataclasses.replace(scene, metadata=meta, ego=dataclasses.replace(ego, state=state))


def yaw_swung(scene: Scene, delta_rad: float, ramp_steps: int = 4) -> Scene:
    """``scene`` whose ego heading swings ``delta_rad`` (+ left) over the ``ramp_steps`` steps up
    to t0, where control starts; positions, speeds and everything after t0 are the log's.

    Why: a car handed over mid-swerve has to take the swerve out. US-101 ``ego451`` (bundled
    suite) is such a hand-over: its logged heading swings 0.1-0.2 rad left and back within
    0.5 s around t0 (noise or a twitch). The env starts the car steering as the last second's
    curvature says (``sim.env.initial_steer``), so the swing goes on, and a model that plans
    straight ahead of the car leaves the left-most lane over its edge; with that swing smoothed
    out of the log the same model drives it. The logs seldom show one, so this augmentation makes
    them (a quintic ramp, so the history's yaw rate is smooth too; the env's starting steer
    follows from the swung headings). The id gets ``-yaw{delta:+.2f}`` appended and
    ``metadata.extra["yaw_swing_rad"]`` records it.
    """
    if not (np.isfinite(delta_rad) and abs(delta_rad) < 0.5):
        raise ValueError(f"yaw swing must be finite and under 0.5 rad, got {delta_rad}")
    if ramp_steps < 1:
        raise ValueError(f"ramp_steps must be >= 1, got {ramp_steps}")
    t0 = scene.metadata.t0_index
    k = np.arange(t0 - ramp_steps + 1, t0 + 1)
    k = k[k >= 0]
    u = (k - (t0 - ramp_steps)) / ramp_steps
    state = scene.ego.state.copy()
    state[k, 2] = wrap_angle(state[k, 2] + delta_rad * u**3 * (10 - 15 * u + 6 * u**2))
    md = scene.metadata
    meta = dataclasses.replace(
        md, scene_id=f"{md.scene_id}-yaw{delta_rad:+.2f}", extra={**md.extra, "yaw_swing_rad": float(delta_rad)}
    )
    return dataclasses.replace(scene, metadata=meta, ego=dataclasses.replace(scene.ego, state=state))


def agent_stopping(scene: Scene, index: int, start_step: int, decel_mps2: float) -> Scene:
    """``scene`` in which road user ``index`` brakes at ``decel_mps2`` from ``start_step`` to a stop
    along its own logged path, and stays there to the end of the scene.

    Its states before ``start_step`` are the log's; from there its arc length along the logged
    path follows ``v0 t - a t^2 / 2`` until it stops (``v0`` its logged speed at ``start_step``),
    its heading is the logged heading at that arc length and its velocity points along it. A car
    that left the recording later stays in it, stopped. Everything else is untouched. The id gets
    ``-stop{index}a{decel}@{start_step}`` appended and ``metadata.extra["agent_stop"]`` records it.
    Why: logs rarely show the car ahead braking to a standstill right in front of a crawling ego,
    the state in which a learner that cannot tell a stopped lead from a moving one rear-ends it.
    """
    if not (np.isfinite(decel_mps2) and decel_mps2 > 0.0):
        raise ValueError(f"deceleration must be a positive number of m/s^2, got {decel_mps2}")
    path, s0 = _agent_path(scene, index, start_step)
    v0 = float(np.hypot(*scene.agents.state[index, start_step, 3:5]))
    t = (np.arange(start_step, scene.num_steps) - start_step) * DT
    t_stop = v0 / decel_mps2
    moving = t < t_stop
    dist = np.where(moving, v0 * t - 0.5 * decel_mps2 * t**2, 0.5 * v0 * t_stop)
    speed = np.where(moving, v0 - decel_mps2 * t, 0.0)
    info = {"index": int(index), "start_step": int(start_step), "decel_mps2": float(decel_mps2)}
    tag = f"stop{index}a{decel_mps2:.1f}@{start_step}"
    return _agent_moved(scene, index, start_step, path, s0 + dist, speed, tag, "agent_stop", info)


def agent_speed_profile(scene: Scene, index: int, start_step: int, speeds: np.ndarray, tag: str) -> Scene:
    """``scene`` in which road user ``index`` drives its own logged path at ``speeds`` (m/s, one
    per step from ``start_step``; the first is ignored, the log's speed there is kept) and stays
    where it gets to when they run out.

    Arc length grows by the trapezoid rule over the 0.1 s steps; heading and validity as in
    :func:`agent_stopping`. The id gets ``-{tag}`` appended and ``metadata.extra["agent_profile"]``
    records the agent, start and speeds. Training data uses it for stop-and-go leads.
    """
    n = scene.num_steps - start_step
    given = np.asarray(speeds, dtype=np.float64)[:n]
    if not (np.isfinite(given).all() and (given >= 0).all()):
        raise ValueError("speeds must be finite and >= 0 m/s")
    path, s0 = _agent_path(scene, index, start_step)
    v = np.zeros(n)
    v[: len(given)] = given
    v[0] = float(np.hypot(*scene.agents.state[index, start_step, 3:5]))
    dist = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * DT)])
    info = {"index": int(index), "start_step": int(start_step), "speeds": [round(float(x), 3) for x in v]}
    return _agent_moved(scene, index, start_step, path, s0 + dist, v, tag, "agent_profile", info)


def _agent_path(scene: Scene, index: int, start_step: int) -> tuple[_LoggedPath, float]:
    """Road user ``index``'s logged path and its arc length at ``start_step`` (checked)."""
    agents = scene.agents
    if not 0 <= index < len(agents):
        raise ValueError(f"{scene.scene_id}: no road user {index} (it has {len(agents)})")
    valid = agents.valid[index]
    if not 0 <= start_step < scene.num_steps or not valid[start_step]:
        raise ValueError(f"{scene.scene_id}: road user {index} is not logged at step {start_step}")
    idx = np.flatnonzero(valid)
    path = _LoggedPath(agents.state[index, idx, :3], f"{scene.scene_id}: road user {index}")
    return path, float(path.s[int(np.searchsorted(idx, start_step))])


def _agent_moved(
    scene: Scene,
    index: int,
    start_step: int,
    path: _LoggedPath,
    s: np.ndarray,
    speed: np.ndarray,
    tag: str,
    key: str,
    info: dict,
) -> Scene:
    """``scene`` with road user ``index`` at arc lengths ``s`` of ``path`` and ``speed`` along it
    from ``start_step`` to the end (valid throughout); id ``-{tag}``, ``metadata.extra[key] = info``."""
    agents = scene.agents
    xy, heading = path.at(s)
    state = agents.state.copy()
    valid = agents.valid.copy()
    rows = slice(start_step, scene.num_steps)
    state[index, rows, 0:2] = xy
    state[index, rows, 2] = wrap_angle(heading)
    state[index, rows, 3] = speed * np.cos(heading)
    state[index, rows, 4] = speed * np.sin(heading)
    valid[index, rows] = True
    md = scene.metadata
    meta = dataclasses.replace(md, scene_id=f"{md.scene_id}-{tag}", extra={**md.extra, key: info})
    return dataclasses.replace(
        scene, metadata=meta, agents=Agents(list(agents.ids), agents.types.copy(), agents.size.copy(), state, valid)
    )
