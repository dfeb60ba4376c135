"""Batched kinematic bicycle model (rear-axle reference) with first-order actuator lags.

Why this model: it is the one NAVSIM / nuPlan use to turn a planned trajectory into the motion
that a car would actually make (their ``BatchKinematicBicycleModel``), so scores computed on our
simulated motion are comparable with theirs. The formulation is re-derived here, not copied.

Internal state, one row per trajectory, columns :data:`STATE_COLUMNS`::

    x, y        rear-axle position, scene frame (m)
    heading     yaw, counter-clockwise from +x (rad)
    v           longitudinal speed of the rear axle (m/s)
    steer       front-wheel steering angle (rad), |steer| <= max_steering_angle
    accel       longitudinal acceleration currently applied (m/s^2)

Commands are an *ideal* acceleration and a steering *rate*. The actuators do not follow them
instantly: acceleration and steering angle pass through first-order low-pass filters with time
constants ``accel_time_constant`` (0.2 s) and ``steering_time_constant`` (0.05 s), discretised as
``new = old + dt / (dt + tau) * (ideal - old)``. Position, heading and speed are then advanced with
forward Euler using the speed and steering angle at the *start* of the step (as NAVSIM does).

Conversion to the scene format's :data:`~alpasim_policy.scenes.format.EGO_COLUMNS`
(``x, y, heading, vx, vy, ax, ay``): ``vx, vy`` and ``ax, ay`` are **scene-frame** vectors; the
bicycle has no side slip, so velocity is ``v * (cos h, sin h)`` and acceleration is the
longitudinal part ``accel * (cos h, sin h)`` plus the centripetal part ``v * yaw_rate`` along the
left normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from alpasim_policy.scenes.geometry import wrap_angle

STATE_COLUMNS = ("x", "y", "heading", "v", "steer", "accel")
X, Y, HEADING, V, STEER, ACCEL = range(6)


@dataclass(frozen=True)
class VehicleParams:
    """Ego geometry and actuator limits. Defaults are NAVSIM's (Chrysler Pacifica) values."""

    wheelbase: float = 3.089
    length: float = 5.176
    width: float = 2.297
    rear_axle_to_center: float = 1.461
    max_steering_angle: float = math.pi / 3
    accel_time_constant: float = 0.2
    steering_time_constant: float = 0.05

    @classmethod
    def from_scene(cls, scene: Any, **overrides: float) -> VehicleParams:
        """The logged ego's geometry (so the simulated box matches the logged one)."""
        ego = scene.ego
        base = cls(
            wheelbase=float(ego.wheelbase),
            length=float(ego.length),
            width=float(ego.width),
            rear_axle_to_center=float(ego.rear_axle_to_center),
        )
        return replace(base, **overrides) if overrides else base


def propagate(
    state: np.ndarray,
    accel_cmd: np.ndarray,
    steer_rate_cmd: np.ndarray,
    dt: float,
    params: VehicleParams,
) -> np.ndarray:
    """Advance ``state`` (B, 6) by ``dt`` seconds under the given commands; returns a new array."""
    x, y, h, v, steer, accel = state.T
    # Actuator lags (first-order low-pass on acceleration and on the steering angle).
    new_accel = accel + dt / (dt + params.accel_time_constant) * (accel_cmd - accel)
    ideal_steer = steer + dt * steer_rate_cmd
    new_steer = steer + dt / (dt + params.steering_time_constant) * (ideal_steer - steer)
    out = np.empty_like(state)
    out[:, X] = x + dt * v * np.cos(h)
    out[:, Y] = y + dt * v * np.sin(h)
    out[:, HEADING] = wrap_angle(h + dt * v * np.tan(steer) / params.wheelbase)
    out[:, V] = v + dt * new_accel
    out[:, STEER] = np.clip(new_steer, -params.max_steering_angle, params.max_steering_angle)
    out[:, ACCEL] = new_accel
    return out


def yaw_rate(state: np.ndarray, params: VehicleParams) -> np.ndarray:
    return state[..., V] * np.tan(state[..., STEER]) / params.wheelbase


def from_ego_columns(ego: np.ndarray, params: VehicleParams, steer: np.ndarray | None = None) -> np.ndarray:
    """Scene-format ego rows (B, 7) -> internal state (B, 6).

    The speed is ``hypot(vx, vy)`` (a logged car does not reverse on our scenes); the longitudinal
    acceleration is the projection of ``(ax, ay)`` on the heading. Unless given, the steering
    angle is recovered from the lateral acceleration, ``a_lat = v^2 tan(steer) / L``, which keeps
    a car that is mid-turn turning instead of snapping its wheels straight at t0.
    """
    ego = np.atleast_2d(np.asarray(ego, dtype=np.float64))
    h = ego[:, 2]
    c, s = np.cos(h), np.sin(h)
    v = np.hypot(ego[:, 3], ego[:, 4])
    a_lon = ego[:, 5] * c + ego[:, 6] * s
    if steer is None:
        a_lat = -ego[:, 5] * s + ego[:, 6] * c
        with np.errstate(divide="ignore", invalid="ignore"):
            steer = np.where(v > 1.0, np.arctan(params.wheelbase * a_lat / np.maximum(v, 1.0) ** 2), 0.0)
    steer = np.clip(np.broadcast_to(np.asarray(steer, dtype=np.float64), v.shape), -params.max_steering_angle,
                    params.max_steering_angle)  # fmt: skip
    return np.stack([ego[:, 0], ego[:, 1], h, v, steer, a_lon], axis=-1)


def to_ego_columns(state: np.ndarray, params: VehicleParams) -> np.ndarray:
    """Internal state (..., 6) -> scene-format ego rows (..., 7), scene-frame velocity/acceleration."""
    h, v, a = state[..., HEADING], state[..., V], state[..., ACCEL]
    c, s = np.cos(h), np.sin(h)
    a_lat = v * yaw_rate(state, params)
    out = np.empty(state.shape[:-1] + (7,), dtype=np.float64)
    out[..., 0] = state[..., X]
    out[..., 1] = state[..., Y]
    out[..., 2] = h
    out[..., 3] = v * c
    out[..., 4] = v * s
    out[..., 5] = a * c - a_lat * s
    out[..., 6] = a * s + a_lat * c
    return out
