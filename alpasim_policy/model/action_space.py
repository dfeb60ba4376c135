"""Unicycle action space: (acceleration, curvature) per 0.1 s step <-> waypoints (x, y, heading).

Why this parameterisation (as in Alpamayo-R1): the flow-matching expert predicts controls, not
positions, so every sampled plan is kinematically feasible and smooth once integrated.

Rig frame: x forward, y left, origin at "now", heading 0 at "now". Two integrators:

* ``method="nvlabs"`` (default; what NVlabs' ``action_to_traj`` computes, so the same actions give
  the same plan as the reference code): speed ``v[k+1] = v[k] + a[k] dt`` (not clamped),
  heading ``th[k+1] = th[k] + kappa[k] v[k] dt + kappa[k] a[k] dt^2 / 2``, and position by the
  trapezoidal rule on the velocity vector:
  ``p[k+1] = p[k] + dt / 2 (v[k] u(th[k]) + v[k+1] u(th[k+1]))`` with ``u(th) = (cos th, sin th)``.
* ``method="exact"`` (option): each step is a circular arc of length ``s = v dt + a dt^2 / 2``
  (speed clamped at 0: a plan may stop, not reverse) and turn ``kappa s``, whose chord is
  ``s sinc(dth / 2)`` long along ``th + dth / 2``. Exact for piecewise-constant controls, where the
  trapezoidal rule is O(dt^2) off; the two differ by millimetres on typical plans but by metres
  for plans that brake through zero speed (the reference then reverses).

The initial speed comes from the history as NVlabs' ``estimate_t0_states`` does it
(:func:`estimate_v0`): the speeds of all history steps are the regularised least-squares solution
of the same trapezoidal relation between consecutive positions and headings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from alpasim_policy.errors import ModelInputError


def _sinc_half(dth: torch.Tensor) -> torch.Tensor:
    """sin(dth/2) / (dth/2), stable at 0 (torch.sinc is sin(pi x)/(pi x))."""
    return torch.sinc(dth / (2.0 * torch.pi))


INTEGRATION_METHODS = ("nvlabs", "exact")


def integrate_unicycle(
    accel: torch.Tensor,
    curvature: torch.Tensor,
    v0: torch.Tensor,
    dt: float = 0.1,
    method: str = "nvlabs",
) -> torch.Tensor:
    """Integrate controls ``(..., N)`` from speed ``v0`` ``(...)`` into poses ``(..., N, 3)`` (x, y, heading), float64."""
    if method == "nvlabs":
        return _integrate_trapezoid(accel, curvature, v0, dt)
    if method == "exact":
        return _integrate_exact(accel, curvature, v0, dt)
    raise ValueError(f"integration method {method!r}: choose one of {', '.join(INTEGRATION_METHODS)}")


def _integrate_trapezoid(
    accel: torch.Tensor, curvature: torch.Tensor, v0: torch.Tensor, dt: float
) -> torch.Tensor:
    a = accel.to(torch.float64)
    kappa = curvature.to(torch.float64)
    v0 = v0.to(torch.float64)[..., None]
    v = torch.cat([v0, v0 + torch.cumsum(a * dt, dim=-1)], dim=-1)  # (..., N+1)
    dth = kappa * v[..., :-1] * dt + kappa * a * (0.5 * dt * dt)
    th = torch.cat([torch.zeros_like(v0), torch.cumsum(dth, dim=-1)], dim=-1)  # (..., N+1)
    vx = v * torch.cos(th)
    vy = v * torch.sin(th)
    x = torch.cumsum(0.5 * dt * (vx[..., :-1] + vx[..., 1:]), dim=-1)
    y = torch.cumsum(0.5 * dt * (vy[..., :-1] + vy[..., 1:]), dim=-1)
    return torch.stack([x, y, th[..., 1:]], dim=-1)


def _integrate_exact(
    accel: torch.Tensor, curvature: torch.Tensor, v0: torch.Tensor, dt: float
) -> torch.Tensor:
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


def trajectory_to_controls(
    traj: torch.Tensor, v0: torch.Tensor, dt: float = 0.1, method: str = "exact"
) -> torch.Tensor:
    """Inverse of :func:`integrate_unicycle` with the same ``method``: poses ``(..., N, 3)`` -> controls ``(..., N, 2)``.

    ``method="nvlabs"``: :func:`trapezoid_to_controls` (exact, stops included). ``method="exact"``
    (the default here, for plans that do not stop):

    Uses the headings' differences for the turn of each step and the chord length for its arc,
    then recovers the speed profile step by step. Exact on integrated plans; on noisy real logs
    the speed recursion amplifies noise, so smooth the input first.
    """
    if method == "nvlabs":
        return trapezoid_to_controls(traj, v0, dt)
    if method != "exact":
        raise ValueError(f"integration method {method!r}: choose one of {', '.join(INTEGRATION_METHODS)}")
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


def trapezoid_to_controls(traj: torch.Tensor, v0: torch.Tensor, dt: float = 0.1) -> torch.Tensor:
    """Exact inverse of the trapezoidal integrator (``method="nvlabs"``, NVlabs' ``action_to_traj``).

    Why this is exact: the headings ``th[k]`` are given, so each step's trapezoid relation
    ``p[k+1] - p[k] = dt / 2 (v[k] u(th[k]) + v[k+1] u(th[k+1]))`` fixes ``v[k+1]`` from the known
    ``v[k]`` (projected on ``u(th[k+1])``; the residual across it is zero on an integrated plan).
    Then ``a[k] = (v[k+1] - v[k]) / dt`` and ``kappa[k] = dth[k] / s[k]`` with the step's arc
    ``s[k] = (v[k] + v[k+1]) dt / 2``; where ``s`` is ~0 (standing still) the curvature does not
    change the plan and is set to 0. Speeds may go negative (the integrator does not clamp either).

    On a logged (not integrated) trajectory a wrong ``v0`` shows as accelerations alternating in
    sign; training uses ``v0`` estimated from the history exactly as the model does at inference,
    so the targets are what the model must output to reproduce the log from that speed.
    """
    traj = traj.to(torch.float64)
    v = v0.to(torch.float64)
    zeros = torch.zeros_like(traj[..., :1, :])
    poses = torch.cat([zeros, traj], dim=-2)  # (..., N+1, 3): "now" is the origin, heading 0
    th = poses[..., 2]
    ux, uy = torch.cos(th), torch.sin(th)
    disp = (2.0 / dt) * (poses[..., 1:, :2] - poses[..., :-1, :2])  # (..., N, 2)
    n = traj.shape[-2]
    speeds = [v]
    for k in range(n):
        wx = disp[..., k, 0] - v * ux[..., k]
        wy = disp[..., k, 1] - v * uy[..., k]
        v = wx * ux[..., k + 1] + wy * uy[..., k + 1]
        speeds.append(v)
    vs = torch.stack(speeds, dim=-1)  # (..., N+1)
    accel = torch.diff(vs, dim=-1) / dt
    s = 0.5 * dt * (vs[..., :-1] + vs[..., 1:])
    dth = torch.diff(th, dim=-1)
    moving = s.abs() > 1e-9
    kappa = torch.where(moving, dth / torch.where(moving, s, torch.ones_like(s)), torch.zeros_like(s))
    return torch.stack([accel, kappa], dim=-1)


def fit_controls(
    traj: torch.Tensor,
    v0: torch.Tensor,
    dt: float = 0.1,
    method: str = "nvlabs",
    valid: torch.Tensor | None = None,
    smooth: float = 1e-3,
    iterations: int = 60,
) -> torch.Tensor:
    """Controls ``(..., N, 2)`` whose integration from ``v0`` best follows a *logged* trajectory.

    Why not the exact inverse: logged poses are not an integrated plan (position noise, headings
    that are not the direction of motion), and :func:`trapezoid_to_controls` turns centimetres of
    noise into accelerations of tens of m/s^2 alternating in sign. Here the controls minimise the
    squared position error (plus the heading error in radians times 1 m) over the ``valid`` rows of
    :func:`integrate_unicycle` with ``method``, plus ``smooth`` times the squared step-to-step
    change of acceleration (per m/s^2) and curvature (per 0.01 1/m); L-BFGS from zero controls,
    batched. On an integrated plan with ``smooth=0`` it converges to the exact inverse.
    """
    traj = traj.to(torch.float64)
    v0 = v0.to(torch.float64).expand(traj.shape[:-2])
    w = torch.ones(traj.shape[:-1], dtype=torch.float64) if valid is None else valid.to(torch.float64)
    ctrl = torch.zeros((*traj.shape[:-1], 2), dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.0, 0.01], dtype=torch.float64)  # m/s^2, 1/m: comparable units
    opt = torch.optim.LBFGS([ctrl], max_iter=iterations, line_search_fn="strong_wolfe", tolerance_change=1e-15)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        c = ctrl * scale
        out = integrate_unicycle(c[..., 0], c[..., 1], v0, dt, method)
        err = ((out[..., :2] - traj[..., :2]) ** 2).sum(-1) + (out[..., 2] - traj[..., 2]) ** 2
        loss = (w * err).sum() + smooth * (torch.diff(ctrl, dim=-2) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (ctrl * scale).detach()


def estimate_v0(
    history_xy: np.ndarray,
    heading: np.ndarray,
    dt: float = 0.1,
    v_lambda: float = 1e-6,
    v_ridge: float = 1e-4,
) -> float:
    """Speed at "now" (the last row) from past positions and headings, as NVlabs estimates it.

    Unknowns: the speeds ``v[0..T-1]`` of the T history steps. Each step gives two equations of
    the trapezoidal motion model, ``v[k] u(th[k]) + v[k+1] u(th[k+1]) = 2 (p[k+1] - p[k]) / dt``;
    they are solved in the least-squares sense with a third-difference smoothness penalty
    (weight ``v_lambda / dt^6``) and a ridge term ``v_ridge``. Headings are unwrapped first.
    The estimate is not clamped (a reversing history gives a negative speed).
    """
    xy = np.asarray(history_xy, dtype=np.float64)
    th = np.unwrap(np.asarray(heading, dtype=np.float64))
    if xy.ndim != 2 or xy.shape[1] != 2 or th.shape != (xy.shape[0],):
        raise ModelInputError(
            f"ego history: expected (T, 2) positions and (T,) headings, got {xy.shape}, {th.shape}"
        )
    t = xy.shape[0]
    if t < 2:
        raise ModelInputError("ego history: need at least 2 steps to estimate the speed")
    n = t - 1
    rhs_vec = (2.0 / dt) * np.diff(xy, axis=0)  # (n, 2)
    design = np.zeros((2 * n, t))
    k = np.arange(n)
    design[2 * k, k] = np.cos(th[:-1])
    design[2 * k, k + 1] = np.cos(th[1:])
    design[2 * k + 1, k] = np.sin(th[:-1])
    design[2 * k + 1, k + 1] = np.sin(th[1:])
    lhs = design.T @ design + v_ridge * np.eye(t)
    if t > 3:
        d3 = np.zeros((t - 3, t))
        r = np.arange(t - 3)
        for j, c in enumerate((-1.0, 3.0, -3.0, 1.0)):
            d3[r, r + j] = c
        lhs += (v_lambda / dt**6) * (d3.T @ d3)
    rhs = design.T @ rhs_vec.reshape(-1)
    v = np.linalg.solve(lhs, rhs)
    return float(v[-1])


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
        method: str = "nvlabs",
    ):
        super().__init__()
        if method not in INTEGRATION_METHODS:
            raise ValueError(f"integration method {method!r}: choose one of {', '.join(INTEGRATION_METHODS)}")
        self.method = method
        self.n_waypoints = n_waypoints
        self.dt = dt
        self.register_buffer("accel_mean", torch.tensor(float(accel_mean)))
        self.register_buffer("accel_std", torch.tensor(float(accel_std)))
        self.register_buffer("curvature_mean", torch.tensor(float(curvature_mean)))
        self.register_buffer("curvature_std", torch.tensor(float(curvature_std)))

    @property
    def dims(self) -> tuple[int, int]:
        return (self.n_waypoints, 2)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four statistics as float64 on ``like``'s device.

        Why: the buffers follow the model (``create(..., "cuda")`` puts them on the GPU) while the
        trajectory maths runs in float64 on the CPU."""
        return tuple(
            t.to(device=like.device, dtype=torch.float64)
            for t in (self.accel_mean, self.accel_std, self.curvature_mean, self.curvature_std)
        )

    def denormalize(self, action: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., N, 2)`` -> physical (m/s^2, 1/m), float64."""
        a_mean, a_std, k_mean, k_std = self._stats(action)
        a = action[..., 0].double() * a_std + a_mean
        k = action[..., 1].double() * k_std + k_mean
        return torch.stack([a, k], dim=-1)

    def normalize(self, controls: torch.Tensor) -> torch.Tensor:
        a_mean, a_std, k_mean, k_std = self._stats(controls)
        a = (controls[..., 0] - a_mean) / a_std
        k = (controls[..., 1] - k_mean) / k_std
        return torch.stack([a, k], dim=-1)

    def action_to_traj(self, action: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        controls = self.denormalize(action)
        return integrate_unicycle(controls[..., 0], controls[..., 1], v0, self.dt, self.method)

    def traj_to_action(self, traj: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """Normalised actions whose :meth:`action_to_traj` from ``v0`` is ``traj`` (the inverse of
        this space's integrator, :func:`trajectory_to_controls`), float64."""
        return self.normalize(trajectory_to_controls(traj, v0, self.dt, self.method))
