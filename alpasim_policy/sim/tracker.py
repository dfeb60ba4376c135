"""Batched LQR trajectory tracker and ``simulate_plans`` (plan -> simulated motion).

Formulation (learnt from NAVSIM's / nuPlan's LQR tracker, re-derived and vectorised here):

1. *Profiles from poses.* The reference poses ``p_0 .. p_M`` (``p_0`` = where the car is now)
   are turned into a speed profile and a curvature profile by two regularised least-squares fits:
   the displacement of step k projected on the heading is ``dt * v_k`` with
   ``v_k = v_0 + dt * sum_{j<k} a_j`` (penalty ``jerk_penalty`` on differences of ``a``); the
   heading change of step k is ``dt * v_k * kappa_k`` with ``kappa_k = kappa_0 + dt * sum rates``
   (penalty ``curvature_rate_penalty`` on the rates). Because the heading direction is a unit
   vector, the first normal matrix does not depend on the poses and is inverted once per length;
   the second is assembled in O(M^2) from reverse cumulative sums and solved batched.
2. *Longitudinal LQR.* State speed, input acceleration held for the ``horizon`` steps:
   ``v_N = v + N dt a``; the one-step LQR on ``q_lon (v_N - v_ref)^2 + r_lon a^2`` gives ``a``,
   with ``v_ref`` the profile speed ``horizon`` steps ahead. Near standstill (reference and
   current speed <= ``stopping_velocity``) a P controller brings the car to rest instead.
3. *Lateral LQR.* State (lateral error, heading error, steering angle), input steering rate,
   dynamics linearised about the reference curvature and the speed profile implied by step 2,
   composed over ``horizon`` Euler steps into ``x_N = A x_0 + B u + g``; the one-step LQR with
   ``Q = diag(q_lat)``, ``R = r_lat`` gives the steering rate. The composition is done in closed
   form with cumulative sums (the step matrices are unit upper-triangular), so the cost does not
   grow with the horizon.

Default weights are NAVSIM's: q_lon 10, r_lon 1, q_lat (1, 10, 0), r_lat 1, horizon 10 at 0.1 s,
and :func:`simulate_plans` (the scorer's open-loop simulation) uses exactly that.

The closed-loop env adds two things (``ENV_TRACKER`` and ``anchor="extrapolate"``), because
NAVSIM's tracker was built to run one 4 s plan from the current state, not to follow a time-stamped
plan tick after tick: it starts every tick with zero tracking error, so an along-track or lateral
offset from a plan is never corrected, and its speed-only longitudinal loop lags in stop-and-go
(log replay drifted 1-2 m on the bundled scenes). The env therefore anchors the reference at the
plan's own pose for "now" (so offsets are real errors the LQR removes), adds a position term to the
longitudinal LQR (``q_pos``) and forbids reversing. Log replay then stays within about 0.5 m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from alpasim_policy.scenes.geometry import wrap_angle
from alpasim_policy.sim.dynamics import (
    ACCEL,
    HEADING,
    STEER,
    V,
    VehicleParams,
    from_ego_columns,
    propagate,
    to_ego_columns,
)

DT = 0.1


@dataclass(frozen=True)
class TrackerParams:
    q_lon: float = 10.0
    r_lon: float = 1.0
    q_lat: tuple[float, float, float] = (1.0, 10.0, 0.0)
    r_lat: float = 1.0
    horizon: int = 10
    dt: float = DT
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    initial_curvature_penalty: float = 1e-10
    stopping_gain: float = 0.5
    stopping_velocity: float = 0.2
    #: Weight on the position error ``horizon`` steps ahead in the longitudinal LQR. 0 is NAVSIM's
    #: speed-only controller; the env uses a positive value so that a car that fell behind (or
    #: ahead of) a time-stamped plan catches up instead of drifting (see ``lqr_commands``).
    q_pos: float = 0.0
    #: Steps over which the longitudinal LQR holds its acceleration (None: ``horizon``, NAVSIM).
    lon_horizon: int | None = None
    #: NAVSIM lets the speed go negative; the env forbids reversing unless asked (a plan that
    #: stops should leave the car standing, not creeping backwards).
    allow_reverse: bool = True


#: The closed-loop env's tracker (see the module docstring for why it differs from NAVSIM's).
ENV_TRACKER = TrackerParams(q_pos=1000.0, lon_horizon=8, allow_reverse=False)


# --------------------------------------------------------------------------- profile fits


@lru_cache(maxsize=64)
def _speed_fit_matrix(m: int, dt: float, jerk_penalty: float) -> np.ndarray:
    """(m, m) matrix K with ``[v_0, a_0 .. a_{m-2}] = K @ s`` for projected displacements ``s``."""
    c = np.zeros((m, m))
    c[:, 0] = dt
    c[:, 1:] = dt * dt * np.tril(np.ones((m, m - 1)), k=-1)  # column j>=1 acts on rows k >= j
    normal = c.T @ c
    if m > 2:
        d = np.zeros((m - 2, m))
        idx = np.arange(m - 2)
        d[idx, idx + 1] = -1.0
        d[idx, idx + 2] = 1.0
        normal += jerk_penalty * d.T @ d
    return np.linalg.solve(normal, c.T)


@lru_cache(maxsize=64)
def _curvature_fit_structure(m: int, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(m)
    maxij = np.maximum(idx[:, None], idx[None, :])
    powers = 2 + (idx[:, None] > 0) + (idx[None, :] > 0)
    scale = dt ** powers.astype(np.float64)
    rhs_scale = np.where(idx > 0, dt * dt, dt)
    return maxij, scale, rhs_scale


def _reverse_cumsum(a: np.ndarray) -> np.ndarray:
    return np.cumsum(a[:, ::-1], axis=1)[:, ::-1]


def fit_profiles(poses: np.ndarray, p: TrackerParams) -> tuple[np.ndarray, np.ndarray]:
    """Reference poses (B, M+1, 3) -> speed (B, M) and curvature (B, M) profiles (see module doc)."""
    b, n, _ = poses.shape
    m = n - 1
    if m < 2:
        raise ValueError(f"need at least 3 reference poses to fit profiles, got {n}")
    dxy = np.diff(poses[:, :, :2], axis=1)
    h = poses[:, :-1, 2]
    s = dxy[..., 0] * np.cos(h) + dxy[..., 1] * np.sin(h)
    sol = s @ _speed_fit_matrix(m, p.dt, p.jerk_penalty).T  # (B, m): v0, a_0..a_{m-2}
    speed = np.empty((b, m))
    speed[:, 0] = sol[:, 0]
    speed[:, 1:] = sol[:, :1] + p.dt * np.cumsum(sol[:, 1:], axis=1)

    dh = wrap_angle(np.diff(poses[:, :, 2], axis=1))
    maxij, scale, rhs_scale = _curvature_fit_structure(m, p.dt)
    w = _reverse_cumsum(speed * speed)  # S[k] = sum_{j>=k} v_j^2
    normal = scale[None] * w[:, maxij]
    diag = np.arange(m)
    normal[:, diag, diag] += p.curvature_rate_penalty
    normal[:, 0, 0] += p.initial_curvature_penalty - p.curvature_rate_penalty
    rhs = rhs_scale[None] * _reverse_cumsum(speed * dh)
    sol_k = np.linalg.solve(normal, rhs[..., None])[..., 0]
    curvature = np.empty((b, m))
    curvature[:, 0] = sol_k[:, 0]
    curvature[:, 1:] = sol_k[:, :1] + p.dt * np.cumsum(sol_k[:, 1:], axis=1)
    return speed, curvature


# --------------------------------------------------------------------------- controller


def lqr_commands(
    state: np.ndarray,
    ref_pose: np.ndarray,
    ref_speed: np.ndarray,
    curvature: np.ndarray,
    p: TrackerParams,
    params: VehicleParams,
    ref_distance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Acceleration and steering-rate commands (B,), (B,).

    ``state`` (B, 6) internal state; ``ref_pose`` (B, 3) the reference pose for "now";
    ``ref_speed`` (B,) the profile speed ``horizon`` steps ahead; ``curvature`` (B, horizon);
    ``ref_distance`` (B,) the distance the reference covers over the horizon (only read when
    ``p.q_pos > 0``: the LQR then also penalises ``q_pos * (v T + a T^2 / 2 - ref_distance)^2``
    with ``T = horizon * dt``, holding the acceleration over the horizon as the speed term does).
    """
    hzn, dt = p.horizon, p.dt
    v0 = state[:, V]
    dx = state[:, 0] - ref_pose[:, 0]
    dy = state[:, 1] - ref_pose[:, 1]
    hr = ref_pose[:, 2]
    lat_err = -dx * np.sin(hr) + dy * np.cos(hr)
    lon_err = dx * np.cos(hr) + dy * np.sin(hr)
    head_err = wrap_angle(state[:, HEADING] - hr)
    steer = state[:, STEER]

    stop = (ref_speed <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
    bl = (p.lon_horizon or hzn) * dt
    if p.q_pos > 0.0 and ref_distance is not None:
        bs = 0.5 * bl * bl
        es = v0 * bl - (ref_distance - lon_err)
        accel = -(bl * p.q_lon * (v0 - ref_speed) + bs * p.q_pos * es) / (
            bl * p.q_lon * bl + bs * p.q_pos * bs + p.r_lon
        )
    else:
        accel = -(bl * p.q_lon * (v0 - ref_speed)) / (bl * p.q_lon * bl + p.r_lon)
    accel = np.where(stop, -p.stopping_gain * (v0 - ref_speed), accel)
    if not p.allow_reverse:
        # Smallest command for which the lagged acceleration keeps v >= 0 after this step.
        alpha = dt / (dt + params.accel_time_constant)
        a_now = state[:, ACCEL]
        accel = np.maximum(accel, a_now + (-np.maximum(v0, 0.0) / dt - a_now) / alpha)

    # Speed profile over the horizon under the constant acceleration just chosen.
    vk = v0[:, None] + dt * accel[:, None] * np.arange(hzn)[None, :]
    pk = vk * dt  # d lat_err / d head_err per step
    qk = vk * dt / params.wheelbase  # d head_err / d steer per step
    gk = -vk * curvature * dt  # affine heading-error term per step
    # Closed-form composition of x_{k+1} = M_k x_k + (0, 0, dt) u + (0, gk, 0).
    q_before = np.cumsum(qk, axis=1) - qk  # sum_{j<k} q_j
    a01 = pk.sum(axis=1)
    a12 = qk.sum(axis=1)
    a02 = (pk * q_before).sum(axis=1)
    steps = np.arange(hzn) * dt  # b2 before step k
    b1_after = np.cumsum(qk * steps[None, :], axis=1)
    b1_before = b1_after - qk * steps[None, :]
    b0 = (pk * b1_before).sum(axis=1)
    b1 = b1_after[:, -1]
    b2 = hzn * dt
    g1_after = np.cumsum(gk, axis=1)
    g1_before = g1_after - gk
    g0 = (pk * g1_before).sum(axis=1)
    g1 = g1_after[:, -1]

    e0 = lat_err + a01 * head_err + a02 * steer + g0
    e1 = wrap_angle(head_err + a12 * steer + g1)
    e2 = wrap_angle(steer)
    q0, q1, q2 = p.q_lat
    num = b0 * q0 * e0 + b1 * q1 * e1 + b2 * q2 * e2
    den = b0 * q0 * b0 + b1 * q1 * b1 + b2 * q2 * b2 + p.r_lat
    steer_rate = np.where(stop, 0.0, -num / den)
    return accel, steer_rate


def _extend_plan(poses: np.ndarray, n: int) -> np.ndarray:
    """Pad (B, T, 3) to (B, n, 3) by continuing the last step's displacement (constant velocity)."""
    b, t, _ = poses.shape
    if t >= n:
        return poses[:, :n]
    last = poses[:, -1]
    step = poses[:, -1] - poses[:, -2] if t >= 2 else np.zeros_like(last)
    step = step.copy()
    step[:, 2] = 0.0
    k = np.arange(1, n - t + 1, dtype=np.float64)[None, :, None]
    return np.concatenate([poses, last[:, None, :] + k * step[:, None, :]], axis=1)


def simulate_internal(
    state: np.ndarray,
    plans: np.ndarray,
    num_steps: int,
    params: VehicleParams,
    tracker: TrackerParams | None = None,
    fit_steps: int | None = None,
    anchor: str = "current",
) -> np.ndarray:
    """Track ``plans`` (B, T, 3) from internal ``state`` (B, 6); returns (B, num_steps + 1, 6).

    The reference is ``[pose now] + plans`` (``plans[:, i]`` at ``+(i + 1) * dt``), cut or
    extended to ``max(num_steps, horizon, fit_steps)`` poses after now; the profile fit sees
    exactly that window. ``anchor`` picks "pose now":

    * ``"current"`` (NAVSIM): the car's own pose, so the tracking error starts at zero and the
      plan's offset from the car only enters through the fitted speed / curvature;
    * ``"extrapolate"``: the plan's own pose at now, extrapolated linearly from its first two
      rows. A plan that starts off the car (e.g. a time-stamped log replayed in closed loop)
      then yields a real lateral / heading / along-track error that the LQR removes, instead
      of a drift that is never corrected. For plans that start at the car both agree.
    """
    p = tracker or TrackerParams()
    state = np.asarray(state, dtype=np.float64)
    plans = np.asarray(plans, dtype=np.float64)
    b = state.shape[0]
    n_ref = max(num_steps, p.horizon, fit_steps or 0)
    ref = np.empty((b, n_ref + 1, 3))
    ref[:, 1:] = _extend_plan(plans, n_ref)
    if anchor == "extrapolate":
        h01 = ref[:, 1, 2] + wrap_angle(ref[:, 2, 2] - ref[:, 1, 2])
        ref[:, 0, :2] = 2.0 * ref[:, 1, :2] - ref[:, 2, :2]
        ref[:, 0, 2] = 2.0 * ref[:, 1, 2] - h01
    elif anchor == "current":
        ref[:, 0] = state[:, :3]
    else:
        raise ValueError(f"anchor must be 'current' or 'extrapolate', got {anchor!r}")
    # Unwrap reference headings relative to the car so differences never jump by 2 pi.
    rel = wrap_angle(ref[:, :, 2] - state[:, None, HEADING])
    rel[:, 1:] = rel[:, :1] + np.cumsum(wrap_angle(np.diff(rel, axis=1)), axis=1)
    ref[:, :, 2] = state[:, None, HEADING] + rel
    speed, curvature = fit_profiles(ref, p)
    if b == 1:
        return _simulate_one(state[0], ref[0], speed[0], curvature[0], num_steps, p, params)[None]
    m = speed.shape[1]
    # Distance covered by the fitted reference from step i to step i + horizon (for q_pos).
    travelled = np.concatenate([np.zeros((b, 1)), p.dt * np.cumsum(speed, axis=1)], axis=1)
    out = np.empty((b, num_steps + 1, 6))
    out[:, 0] = state
    lon_h = p.lon_horizon or p.horizon
    for i in range(num_steps):
        ref_idx = min(i + p.horizon, m - 1)
        lon_idx = min(i + lon_h, m - 1)
        curv = curvature[:, i : i + p.horizon]
        if curv.shape[1] < p.horizon:
            pad = np.repeat(curvature[:, ref_idx : ref_idx + 1], p.horizon - curv.shape[1], axis=1)
            curv = np.concatenate([curv, pad], axis=1)
        dist = travelled[:, min(i + lon_h, m)] - travelled[:, i] if p.q_pos > 0.0 else None
        accel, steer_rate = lqr_commands(out[:, i], ref[:, i], speed[:, lon_idx], curv, p, params, dist)
        out[:, i + 1] = propagate(out[:, i], accel, steer_rate, p.dt, params)
    return out


def _simulate_one(
    state: np.ndarray,
    ref: np.ndarray,
    speed: np.ndarray,
    curvature: np.ndarray,
    num_steps: int,
    p: TrackerParams,
    params: VehicleParams,
) -> np.ndarray:
    """:func:`lqr_commands` + :func:`~alpasim_policy.sim.dynamics.propagate` for one trajectory in
    plain floats: the same equations, without the per-call overhead of ~100 tiny numpy operations
    (the env's tick simulates exactly one trajectory for one step)."""
    hzn, dt, wb = p.horizon, p.dt, params.wheelbase
    lon_h = p.lon_horizon or hzn
    m = len(speed)
    spd = speed.tolist()
    cur = curvature.tolist()
    travelled = [0.0]
    for v_ in spd:
        travelled.append(travelled[-1] + dt * v_)
    refl = ref.tolist()
    q0, q1, q2 = p.q_lat
    alpha_a = dt / (dt + params.accel_time_constant)
    alpha_s = dt / (dt + params.steering_time_constant)
    max_steer = params.max_steering_angle
    x, y, h, v, steer, acc = (float(t) for t in state)
    out = np.empty((num_steps + 1, 6))
    out[0] = state
    two_pi = 2.0 * math.pi

    def wrap(a: float) -> float:
        return (a + math.pi) % two_pi - math.pi

    for i in range(num_steps):
        ref_idx = min(i + hzn, m - 1)
        lon_idx = min(i + lon_h, m - 1)
        rx, ry, rh = refl[i]
        v_ref = spd[lon_idx]
        dx, dy = x - rx, y - ry
        ch, sh = math.cos(rh), math.sin(rh)
        lat_err = -dx * sh + dy * ch
        lon_err = dx * ch + dy * sh
        head_err = wrap(h - rh)
        stop = v_ref <= p.stopping_velocity and v <= p.stopping_velocity
        bl = lon_h * dt
        if stop:
            a_cmd = -p.stopping_gain * (v - v_ref)
        elif p.q_pos > 0.0:
            bs = 0.5 * bl * bl
            dist = travelled[min(i + lon_h, m)] - travelled[i]
            es = v * bl - (dist - lon_err)
            a_cmd = -(bl * p.q_lon * (v - v_ref) + bs * p.q_pos * es) / (
                bl * p.q_lon * bl + bs * p.q_pos * bs + p.r_lon
            )
        else:
            a_cmd = -(bl * p.q_lon * (v - v_ref)) / (bl * p.q_lon * bl + p.r_lon)
        if not p.allow_reverse:
            a_cmd = max(a_cmd, acc + (-max(v, 0.0) / dt - acc) / alpha_a)
        if stop:
            rate = 0.0
        else:
            # Closed-form composition of the lateral error dynamics over the horizon.
            a01 = a12 = a02 = b0 = b1 = g0 = g1 = 0.0
            for k in range(hzn):
                vk = v + dt * a_cmd * k
                kap = cur[i + k] if i + k < ref_idx else cur[ref_idx]
                pk, qk, gk = vk * dt, vk * dt / wb, -vk * kap * dt
                a02 += pk * a12
                a01 += pk
                a12 += qk
                b0 += pk * b1
                b1 += qk * (k * dt)
                g0 += pk * g1
                g1 += gk
            b2 = hzn * dt
            e0 = lat_err + a01 * head_err + a02 * steer + g0
            e1 = wrap(head_err + a12 * steer + g1)
            e2 = wrap(steer)
            num = b0 * q0 * e0 + b1 * q1 * e1 + b2 * q2 * e2
            den = b0 * q0 * b0 + b1 * q1 * b1 + b2 * q2 * b2 + p.r_lat
            rate = -num / den
        # Bicycle step (see dynamics.propagate).
        new_acc = acc + alpha_a * (a_cmd - acc)
        new_steer = steer + alpha_s * (dt * rate)
        x, y, h = x + dt * v * math.cos(h), y + dt * v * math.sin(h), wrap(h + dt * v * math.tan(steer) / wb)
        v = v + dt * new_acc
        steer = min(max(new_steer, -max_steer), max_steer)
        acc = new_acc
        out[i + 1] = (x, y, h, v, steer, acc)
    return out


def simulate_plans(
    start: np.ndarray,
    plans: np.ndarray,
    num_steps: int = 40,
    params: VehicleParams | None = None,
    tracker: TrackerParams | None = None,
    initial_steer: np.ndarray | None = None,
) -> np.ndarray:
    """Simulate what a car does when an LQR tracker follows each plan (NAVSIM's open-loop sim).

    ``start`` (B, 7) :data:`~alpasim_policy.scenes.format.EGO_COLUMNS` rows in the scene frame;
    ``plans`` (B, T, 3) scene-frame x, y, heading, ``plans[:, i]`` at ``+0.1 * (i + 1)`` s (plans
    shorter than ``num_steps`` are continued at their last velocity). Returns
    (B, num_steps + 1, 7) EGO_COLUMNS rows at 0.1 s spacing, the first row being ``start``'s
    pose and speed. ``initial_steer`` (B,) overrides the steering angle recovered from the
    lateral acceleration.
    """
    params = params or VehicleParams()
    start = np.atleast_2d(np.asarray(start, dtype=np.float64))
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim == 2:
        plans = plans[None]
    if start.shape[1] != 7 or plans.shape[0] != start.shape[0] or plans.shape[2] != 3 or plans.shape[1] < 1:
        raise ValueError(f"expected start (B, 7) and plans (B, T>=1, 3), got {start.shape} and {plans.shape}")
    internal = from_ego_columns(start, params, initial_steer)
    traj = simulate_internal(internal, plans, num_steps, params, tracker)
    out = to_ego_columns(traj, params)
    out[:, 0] = start  # the start row is given, not re-derived
    return out


__all__ = [
    "ENV_TRACKER",
    "TrackerParams",
    "fit_profiles",
    "lqr_commands",
    "simulate_internal",
    "simulate_plans",
]
