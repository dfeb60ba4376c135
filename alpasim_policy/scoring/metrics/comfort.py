"""C and HC: nuPlan's six comfort bounds (NAVSIM weighted metric, {0, 1}, weight 2).

Bounds (strict, every state must be inside): longitudinal acceleration in (-4.05, 2.40) m/s^2,
|lateral acceleration| < 4.89 m/s^2, |jerk magnitude| < 8.37 m/s^3, |longitudinal jerk| < 4.13
m/s^3, |yaw rate| < 0.95 rad/s, |yaw acceleration| < 1.93 rad/s^2.

Signals are derived as NAVSIM derives them, with Savitzky-Golay filters (scipy):

* accelerations are the states' own (rotated from the scene frame into the body frame),
  smoothed with a quadratic filter whose window spans the whole trajectory;
* jerks are the first derivative (quadratic, window = whole trajectory) of the acceleration
  smoothed over 8 states;
* yaw rate / yaw acceleration are the first / second derivative of the unwrapped heading
  (window 5, polynomial order 2 / 3).

The whole-horizon windows smooth heavily: a short jerk spike inside 4 s is averaged out, which
is NAVSIM's behaviour and is kept on purpose so scores stay comparable.

HC ("history comfort", NAVSIM v2) is C on the trajectory with the logged past prepended
(1.5 s = 15 states before the first scored state).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import savgol_filter

MAX_ABS_MAG_JERK = 8.37
MAX_ABS_LAT_ACCEL = 4.89
MAX_LON_ACCEL = 2.40
MIN_LON_ACCEL = -4.05
MAX_ABS_YAW_ACCEL = 1.93
MAX_ABS_LON_JERK = 4.13
MAX_ABS_YAW_RATE = 0.95
HISTORY_STEPS = 15

BOUND_NAMES = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate")


def body_acceleration(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, 7) scene-frame states -> longitudinal and lateral acceleration (B, S) in the body frame."""
    h = states[..., 2]
    c, s = np.cos(h), np.sin(h)
    ax, ay = states[..., 5], states[..., 6]
    return ax * c + ay * s, -ax * s + ay * c


def unwrap_heading(h: np.ndarray) -> np.ndarray:
    return np.unwrap(h, axis=-1)


@lru_cache(maxsize=128)
def _savgol_matrix(n: int, window: int, order: int, deriv: int, delta: float) -> np.ndarray:
    """The (n, n) linear map of scipy's ``savgol_filter`` (mode "interp") on length-n signals.

    The filter is linear, so applying it to the identity once gives a matrix that filters a
    whole batch with one matrix product -- the same numbers as calling scipy per batch, without
    scipy's per-call edge polynomial fits (the slow part for 4096 rows).
    """
    eye = np.eye(n)
    return savgol_filter(eye, window_length=window, polyorder=order, deriv=deriv, delta=delta, axis=0)


def _apply(y: np.ndarray, window: int, order: int, deriv: int, delta: float) -> np.ndarray:
    n = y.shape[-1]
    m = _savgol_matrix(n, window, order, deriv, float(delta))
    return np.round(y @ m.T, 8)


def _smooth(y: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    n = y.shape[-1]
    w = min(window, n)
    if w <= order:
        return y.copy()
    return _apply(y, w, order, 0, 1.0)


def _derivative(y: np.ndarray, dt: float, window: int, order: int = 2, deriv: int = 1) -> np.ndarray:
    n = y.shape[-1]
    w = min(window, n)
    if w <= order:
        return np.gradient(y, dt, axis=-1) if deriv == 1 and n > 1 else np.zeros_like(y)
    return _apply(y, w, order, deriv, dt)


def comfort_signals(states: np.ndarray, dt: float = 0.1) -> dict[str, np.ndarray]:
    """The six signals (each (B, S)) that the bounds are checked on."""
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    n = st.shape[1]
    lon, lat = body_acceleration(st)
    mag = np.hypot(lon, lat)
    yaw = unwrap_heading(st[..., 2])
    return {
        "lon_accel": _smooth(lon, n),
        "lat_accel": _smooth(lat, n),
        "jerk": _derivative(_smooth(mag, 8), dt, n),
        "lon_jerk": _derivative(_smooth(lon, 8), dt, n),
        "yaw_accel": _derivative(yaw, dt, 5, order=3, deriv=2),
        "yaw_rate": _derivative(yaw, dt, 5, order=2, deriv=1),
    }


def comfort_bounds(states: np.ndarray, dt: float = 0.1) -> dict[str, np.ndarray]:
    """Per bound, (B,) bool: every state of the trajectory is inside it."""
    sig = comfort_signals(states, dt)

    def inside(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.all((x > lo) & (x < hi), axis=-1)

    return {
        "lon_accel": inside(sig["lon_accel"], MIN_LON_ACCEL, MAX_LON_ACCEL),
        "lat_accel": inside(sig["lat_accel"], -MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL),
        "jerk": inside(sig["jerk"], -MAX_ABS_MAG_JERK, MAX_ABS_MAG_JERK),
        "lon_jerk": inside(sig["lon_jerk"], -MAX_ABS_LON_JERK, MAX_ABS_LON_JERK),
        "yaw_accel": inside(sig["yaw_accel"], -MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL),
        "yaw_rate": inside(sig["yaw_rate"], -MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),
    }


def comfort(states: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """(B,) C: 1 when all six bounds hold."""
    b = comfort_bounds(states, dt)
    return np.all(np.stack([b[k] for k in BOUND_NAMES]), axis=0).astype(np.float64)


def history_comfort(states: np.ndarray, history: np.ndarray | None, dt: float = 0.1) -> np.ndarray:
    """(B,) HC: C of ``history`` (H, 7) logged past followed by each proposal (B, S, 7)."""
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    if history is None or len(history) == 0:
        return comfort(st, dt)
    hist = np.broadcast_to(np.asarray(history, np.float64)[None], (st.shape[0],) + np.shape(history))
    return comfort(np.concatenate([hist, st], axis=1), dt)
