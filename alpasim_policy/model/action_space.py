"""Unicycle action space: (acceleration, curvature) per 0.1 s step <-> waypoints (x, y, heading).

Why this parameterisation (as in Alpamayo-R1): the flow-matching expert predicts controls, not
positions, so every sampled plan is kinematically feasible and smooth once integrated.

Integration (rig frame: x forward, y left, origin at "now", heading 0 at "now"). Controls are
piecewise constant over each step of length ``dt``:

* speed     ``v[k+1] = v[k] + a[k] dt``  (clamped at 0: a plan may stop, not reverse)
* arc       ``s[k]   = v[k] dt + a[k] dt^2 / 2``  (the distance driven in the step)
* heading   ``th[k+1] = th[k] + kappa[k] s[k]``
* position  the step is a circular arc of length ``s`` and turn ``dth = kappa s``; its chord is
  ``s * sinc(dth / 2)`` long and points along ``th[k] + dth / 2``.

The chord form is exact for piecewise-constant (a, kappa) — a straight line under constant
acceleration and a circle under constant curvature are reproduced to float precision — where the
trapezoidal rule of the reference implementation is O(dt^2) off; the two differ by millimetres.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alpasim_policy.errors import ModelInputError


def _sinc_half(dth: torch.Tensor) -> torch.Tensor:
    """sin(dth/2) / (dth/2), stable at 0 (torch.sinc is sin(pi x)/(pi x))."""
    return torch.sinc(dth / (2.0 * torch.pi))


def integrate_unicycle(
    accel: torch.Tensor, curvature: torch.Tensor, v0: torch.Tensor, dt: float = 0.1
) -> torch.Tensor:
    """Integrate controls ``(..., N)`` from speed ``v0`` ``(...)`` into poses ``(..., N, 3)`` (x, y, heading)."""
    accel = accel.to(torch.float64)
    curvature = curvature.to(torch.float64)
    v = v0.to(torch.float64).clamp(min=0.0)
    n = accel.shape[-1]
    out = torch.empty((*accel.shape, 3), dtype=torch.float64, device=accel.device)
    x = torch.zeros_like(v)
    y = torch.zeros_like(v)
    th = torch.zeros_like(v)
    for k in range(n):
        a = accel[..., k]
        v_next = v + a * dt
        stops = v_next < 0
        # arc length in the step; when the speed hits 0 mid-step the car covers v^2 / (2 |a|) and stays
        s = torch.where(stops, v * v / (2.0 * a.abs().clamp(min=1e-9)), v * dt + 0.5 * a * dt * dt)
        v_next = v_next.clamp(min=0.0)
        dth = curvature[..., k] * s
        chord = s * _sinc_half(dth)
        mid = th + 0.5 * dth
        x = x + chord * torch.cos(mid)
        y = y + chord * torch.sin(mid)
        th = th + dth
        v = v_next
        out[..., k, 0] = x
        out[..., k, 1] = y
        out[..., k, 2] = th
    return out


def trajectory_to_controls(traj: torch.Tensor, v0: torch.Tensor, dt: float = 0.1) -> torch.Tensor:
    """Inverse of :func:`integrate_unicycle` for plans that do not stop: ``(..., N, 3)`` -> ``(..., N, 2)``.

    Uses the headings' differences for the turn of each step and the chord length for its arc,
    then recovers the speed profile step by step. Exact on integrated plans; on noisy real logs
    the speed recursion amplifies noise, so smooth the input first.
    """
    traj = traj.to(torch.float64)
    prev = torch.nn.functional.pad(traj, (0, 0, 1, 0))  # origin, heading 0 before the first step
    dxy = traj[..., :2] - prev[..., :-1, :2]
    dth = traj[..., 2] - prev[..., :-1, 2]
    chord = dxy.norm(dim=-1)
    s = chord / _sinc_half(dth)
    v = v0.to(torch.float64)
    accel = torch.empty_like(s)
    for k in range(s.shape[-1]):
        v_next = 2.0 * s[..., k] / dt - v
        accel[..., k] = (v_next - v) / dt
        v = v_next
    curvature = torch.where(s.abs() > 1e-9, dth / s.clamp(min=1e-9), torch.zeros_like(s))
    return torch.stack([accel, curvature], dim=-1)


def estimate_speed(history_xy: np.ndarray, dt: float = 0.1, window: int = 6) -> float:
    """Speed at "now" (the last row) from past positions: least-squares quadratic fit, derivative at t=0.

    Why a fit: finite differences of 0.1 s positions are noisy; a quadratic over the last ~0.5 s is
    exact for constant acceleration and averages noise otherwise.
    """
    xy = np.asarray(history_xy, dtype=np.float64)[-window:]
    if xy.shape[0] < 2:
        raise ModelInputError("ego history: need at least 2 steps to estimate the speed")
    t = (np.arange(xy.shape[0]) - (xy.shape[0] - 1)) * dt
    deg = 2 if xy.shape[0] >= 3 else 1
    vx = np.polyfit(t, xy[:, 0], deg)[-2]
    vy = np.polyfit(t, xy[:, 1], deg)[-2]
    return float(np.hypot(vx, vy))


class UnicycleActionSpace(nn.Module):
    """Normalised (acceleration, curvature) actions <-> rig-frame waypoints.

    The expert works in normalised units; ``accel_mean/std`` and ``curvature_mean/std`` are kept as
    buffers (``action_space.*`` in the weight layout) so a checkpoint carries its own statistics.
    """

    def __init__(
        self,
        n_waypoints: int = 64,
        dt: float = 0.1,
        accel_mean: float = 0.0,
        accel_std: float = 1.0,
        curvature_mean: float = 0.0,
        curvature_std: float = 1.0,
    ):
        super().__init__()
        self.n_waypoints = n_waypoints
        self.dt = dt
        self.register_buffer("accel_mean", torch.tensor(float(accel_mean)))
        self.register_buffer("accel_std", torch.tensor(float(accel_std)))
        self.register_buffer("curvature_mean", torch.tensor(float(curvature_mean)))
        self.register_buffer("curvature_std", torch.tensor(float(curvature_std)))

    @property
    def dims(self) -> tuple[int, int]:
        return (self.n_waypoints, 2)

    def denormalize(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., N, 2)`` -> physical (m/s^2, 1/m), float64."""
        a = action[..., 0].double() * self.accel_std.double() + self.accel_mean.double()
        k = action[..., 1].double() * self.curvature_std.double() + self.curvature_mean.double()
        return torch.stack([a, k], dim=-1)

    def normalize(self, controls: torch.Tensor) -> torch.Tensor:
        a = (controls[..., 0] - self.accel_mean.double()) / self.accel_std.double()
        k = (controls[..., 1] - self.curvature_mean.double()) / self.curvature_std.double()
        return torch.stack([a, k], dim=-1)

    def action_to_traj(self, action: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        controls = self.denormalize(action)
        return integrate_unicycle(controls[..., 0], controls[..., 1], v0, self.dt)

    def traj_to_action(self, traj: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        return self.normalize(trajectory_to_controls(traj, v0, self.dt))
