"""EC: extended comfort between consecutive plans (NAVSIM v2 weighted metric, {0, 1}, weight 2).

Two simulated trajectories of the same car made one planning step apart are compared over
the time they overlap: the RMS (over time) of the difference of four signals must stay within
0.7 m/s^2 (acceleration magnitude), 0.5 m/s^3 (jerk magnitude), 0.1 rad/s (yaw rate) and
0.1 rad/s^2 (yaw acceleration). Signals are derived as for comfort (acceleration smoothed over 8
states, jerk its derivative over 15, yaw rate / acceleration derivatives of the unwrapped
heading over 5, all quadratic Savitzky-Golay). Without a previous plan EC is 1.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.metrics.comfort import _derivative, _smooth, body_acceleration, unwrap_heading

ACCEL_RMS = 0.7
JERK_RMS = 0.5
YAW_RATE_RMS = 0.1
YAW_ACCEL_RMS = 0.1


def ec_signals(states: np.ndarray, dt: float = 0.1) -> dict[str, np.ndarray]:
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    lon, lat = body_acceleration(st)
    acc = _smooth(np.hypot(lon, lat), 8)
    yaw = unwrap_heading(st[..., 2])
    return {
        "acceleration": acc,
        "jerk": _derivative(acc, dt, 15),
        "yaw_rate": _derivative(yaw, dt, 5),
        "yaw_accel": _derivative(yaw, dt, 5, order=2, deriv=2),
    }


def extended_comfort(
    current: np.ndarray, previous: np.ndarray | None, dt: float = 0.1, offset: int = 0
) -> np.ndarray:
    """(B,) EC of ``current`` (B, S, 7) against ``previous`` (B or 1, S', 7).

    ``offset`` = 0: both start at the same time stamp. ``offset`` = k > 0: the previous plan started
    k steps earlier, so ``current[:-k]`` is compared with ``previous[k:]`` (NAVSIM's
    ``SceneAggregator._compute_two_frame_comfort``, k = 5 for plans 0.5 s apart).
    """
    cur = np.asarray(current, dtype=np.float64)
    if cur.ndim == 2:
        cur = cur[None]
    if previous is None:
        return np.ones(cur.shape[0])
    prev = np.asarray(previous, dtype=np.float64)
    if prev.ndim == 2:
        prev = prev[None]
    k = int(offset)
    if k > 0:
        cur, prev = cur[:, : cur.shape[1] - k], prev[:, k:]
    n = min(cur.shape[1], prev.shape[1])
    if n < 2:
        return np.ones(cur.shape[0])
    a = ec_signals(cur[:, :n], dt)
    b = ec_signals(np.broadcast_to(prev[:, :n], (cur.shape[0], n, prev.shape[-1])), dt)

    def rms(k: str) -> np.ndarray:
        return np.sqrt(np.mean((a[k] - b[k]) ** 2, axis=-1))

    ok = (
        (rms("acceleration") <= ACCEL_RMS)
        & (rms("jerk") <= JERK_RMS)
        & (rms("yaw_rate") <= YAW_RATE_RMS)
        & (rms("yaw_accel") <= YAW_ACCEL_RMS)
    )
    return ok.astype(np.float64)
