"""C and HC: nuPlan's six comfort bounds (NAVSIM weighted metric, {0, 1}, weight 2).

Bounds (strict, every state must be inside): longitudinal acceleration in (-4.05, 2.40) m/s^2,
|lateral acceleration| < 4.89 m/s^2, |jerk magnitude| < 8.37 m/s^3, |longitudinal jerk| < 4.13
m/s^3, |yaw rate| < 0.95 rad/s, |yaw acceleration| < 1.93 rad/s^2.

Signals are derived as NAVSIM's ``pdm_comfort_metrics.py`` derives them (Savitzky-Golay, scipy,
each result rounded to 8 decimals):

* longitudinal / lateral acceleration: the body-frame acceleration moved from the rear axle to the
  box centre with the state's yaw rate and yaw acceleration, smoothed over 8 states (order 2);
* jerk magnitude: the rear-axle |acceleration| (not moved) smoothed over 8 states, then its first
  derivative over 15 states (order 2); longitudinal jerk: the same from the centre's longitudinal
  acceleration;
* yaw rate / yaw acceleration: first / second derivative of the unwrapped heading over 5 states
  (order 2 / 3).

Ego rows are ``EGO_COLUMNS`` (7) or those plus ``yaw_rate, yaw_accel`` (9). Without the two extra
columns they are derived from the heading (``np.gradient`` of the unwrapped heading, then of the
yaw rate); NAVSIM reads them from its simulator's kinematic bicycle.

How the acceleration is moved to the centre is the one profile switch here: NAVSIM's
``get_acceleration_shifted`` adds ``d * (w^2 + dw/dt)`` to the longitudinal axis and leaves the
lateral one unchanged (profile ``navsim``); a rigid body gives ``a_x - d w^2`` and ``a_y + d dw/dt``
(profile ``project``).

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
#: Savitzky-Golay windows (states) of NAVSIM's pdm_comfort_metrics.py
ACCEL_WINDOW = 8
JERK_WINDOW = 15
YAW_WINDOW = 5

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


def yaw_rate_and_accel(states: np.ndarray, dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(B, S) yaw rate and yaw acceleration: the state's own columns 7, 8 when present, else derived."""
    st = np.asarray(states, dtype=np.float64)
    if st.shape[-1] >= 9:
        return st[..., 7], st[..., 8]
    if st.shape[-2] < 2:
        z = np.zeros(st.shape[:-1])
        return z, z
    w = np.gradient(unwrap_heading(st[..., 2]), dt, axis=-1)
    return w, np.gradient(w, dt, axis=-1)


def centre_acceleration(
    states: np.ndarray, rear_axle_to_center: float, centre_shift: str = "rigid_body", dt: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame (longitudinal, lateral) acceleration at the box centre, (B, S) each.

    ``centre_shift="navsim"`` reproduces NAVSIM's ``get_acceleration_shifted`` (both terms on the
    longitudinal axis); ``"rigid_body"`` is the rigid-body transform.
    """
    lon, lat = body_acceleration(states)
    d = float(rear_axle_to_center)
    if d == 0.0:
        return lon, lat
    w, a = yaw_rate_and_accel(states, dt)
    if centre_shift == "navsim":
        return lon + d * w**2 + d * a, lat
    if centre_shift == "rigid_body":
        return lon - d * w**2, lat + d * a
    raise ValueError(f"centre_shift must be 'navsim' or 'rigid_body', got {centre_shift!r}")


def comfort_signals(
    states: np.ndarray, dt: float = 0.1, rear_axle_to_center: float = 0.0, centre_shift: str = "rigid_body"
) -> dict[str, np.ndarray]:
    """The six signals (each (B, S)) that the bounds are checked on."""
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    lon_r, lat_r = body_acceleration(st)
    lon, lat = centre_acceleration(st, rear_axle_to_center, centre_shift, dt)
    yaw = unwrap_heading(st[..., 2])
    return {
        "lon_accel": _smooth(lon, ACCEL_WINDOW),
        "lat_accel": _smooth(lat, ACCEL_WINDOW),
        "jerk": _derivative(_smooth(np.hypot(lon_r, lat_r), ACCEL_WINDOW), dt, JERK_WINDOW),
        "lon_jerk": _derivative(_smooth(lon, ACCEL_WINDOW), dt, JERK_WINDOW),
        "yaw_accel": _derivative(yaw, dt, YAW_WINDOW, order=3, deriv=2),
        "yaw_rate": _derivative(yaw, dt, YAW_WINDOW, order=2, deriv=1),
    }


def comfort_bounds(
    states: np.ndarray, dt: float = 0.1, rear_axle_to_center: float = 0.0, centre_shift: str = "rigid_body"
) -> dict[str, np.ndarray]:
    """Per bound, (B,) bool: every state of the trajectory is inside it."""
    sig = comfort_signals(states, dt, rear_axle_to_center, centre_shift)

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


def comfort(
    states: np.ndarray, dt: float = 0.1, rear_axle_to_center: float = 0.0, centre_shift: str = "rigid_body"
) -> np.ndarray:
    """(B,) C: 1 when all six bounds hold."""
    b = comfort_bounds(states, dt, rear_axle_to_center, centre_shift)
    return np.all(np.stack([b[k] for k in BOUND_NAMES]), axis=0).astype(np.float64)


def history_comfort(
    states: np.ndarray,
    history: np.ndarray | None,
    dt: float = 0.1,
    rear_axle_to_center: float = 0.0,
    centre_shift: str = "rigid_body",
) -> np.ndarray:
    """(B,) HC: C of ``history`` (H, 7 or 9) logged past followed by each proposal (B, S, 7 or 9).

    A 7-column history before 9-column states gets its yaw rate / acceleration derived from its
    own heading (a log has no yaw-rate column); the states keep theirs.
    """
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    if history is None or len(history) == 0:
        return comfort(st, dt, rear_axle_to_center, centre_shift)
    hist = np.asarray(history, np.float64)
    if hist.shape[-1] == 7 and st.shape[-1] == 9:
        w, a = yaw_rate_and_accel(hist, dt)
        hist = np.concatenate([hist, w[..., None], a[..., None]], axis=-1)
    elif hist.shape[-1] != st.shape[-1]:
        hist, st = hist[..., :7], st[..., :7]
    hist = np.broadcast_to(hist[None], (st.shape[0],) + hist.shape)
    return comfort(np.concatenate([hist, st], axis=1), dt, rear_axle_to_center, centre_shift)
