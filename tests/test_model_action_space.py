"""Unicycle integration (NVlabs' trapezoid and the exact-arc option) against closed forms, the
inverse, and speed estimation on real logs. Parity with NVlabs' own code: test_model_nvlabs_parity.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import SCENES

from alpasim_policy.errors import ModelInputError
from alpasim_policy.model.action_space import (
    UnicycleActionSpace,
    estimate_speed,
    estimate_v0,
    integrate_unicycle,
    trajectory_to_controls,
)
from alpasim_policy.scenes.format import load_scene

DT = 0.1
T = (np.arange(64) + 1) * DT


def test_constant_acceleration_straight_line():
    v0, a = 5.0, 1.5
    traj = integrate_unicycle(
        torch.full((64,), a, dtype=torch.float64), torch.zeros(64), torch.tensor(v0), DT
    ).numpy()
    np.testing.assert_allclose(traj[:, 0], v0 * T + 0.5 * a * T**2, atol=1e-9)
    np.testing.assert_allclose(traj[:, 1:], 0.0, atol=1e-12)


def test_constant_curvature_is_a_circle():
    v0, kappa = 12.0, 0.04  # radius 25 m, left turn
    traj = integrate_unicycle(
        torch.zeros(64), torch.full((64,), kappa, dtype=torch.float64), torch.tensor(v0), DT, "exact"
    ).numpy()
    theta = kappa * v0 * T
    r = 1.0 / kappa
    np.testing.assert_allclose(traj[:, 0], r * np.sin(theta), atol=1e-9)
    np.testing.assert_allclose(traj[:, 1], r * (1.0 - np.cos(theta)), atol=1e-9)
    np.testing.assert_allclose(traj[:, 2], theta, atol=1e-12)
    # every point on the circle centred at (0, r)
    np.testing.assert_allclose(np.hypot(traj[:, 0], traj[:, 1] - r), r, atol=1e-9)


def test_braking_stops_and_never_reverses_exact_method():
    v0, a = 8.0, -4.0  # stops after 2 s, 8 m
    traj = integrate_unicycle(
        torch.full((64,), a, dtype=torch.float64), torch.zeros(64), torch.tensor(v0), DT, "exact"
    ).numpy()
    assert np.all(np.diff(traj[:, 0]) >= -1e-12)
    np.testing.assert_allclose(traj[-1, 0], v0**2 / (2 * -a), atol=1e-9)


def test_nvlabs_circle_heading_exact_and_position_second_order():
    """The trapezoid integrator has the exact heading of a constant-curvature turn and positions
    O(dt^2) off the circle (millimetres), and both methods agree to that order."""
    v0, kappa = 12.0, 0.04
    args = (torch.zeros(64), torch.full((64,), kappa, dtype=torch.float64), torch.tensor(v0), DT)
    nv = integrate_unicycle(*args).numpy()
    ex = integrate_unicycle(*args, "exact").numpy()
    np.testing.assert_allclose(nv[:, 2], kappa * v0 * T, atol=1e-12)
    r = 1.0 / kappa
    radial = np.abs(np.hypot(nv[:, 0], nv[:, 1] - r) - r)
    assert 1e-4 < radial.max() < 0.05  # not exact, but close
    assert np.abs(nv - ex).max() < 0.05


def test_nvlabs_braking_reverses_like_the_reference():
    """NVlabs does not clamp the speed: braking through 0 drives backwards (the exact option stops)."""
    v0, a = 8.0, -4.0
    accel = torch.full((64,), a, dtype=torch.float64)
    nv = integrate_unicycle(accel, torch.zeros(64), torch.tensor(v0), DT).numpy()
    np.testing.assert_allclose(nv[:, 0], v0 * T + 0.5 * a * T**2, atol=1e-9)  # trapezoid exact here
    assert nv[-1, 0] < 0


def test_inverse_recovers_controls_batched():
    g = torch.Generator().manual_seed(0)
    k = 5
    accel = 0.5 * torch.randn(k, 64, generator=g, dtype=torch.float64)
    kappa = 0.02 * torch.randn(k, 64, generator=g, dtype=torch.float64)
    v0 = torch.tensor([6.0, 9.0, 12.0, 15.0, 20.0], dtype=torch.float64)
    traj = integrate_unicycle(accel, kappa, v0, DT, "exact")
    ctrl = trajectory_to_controls(traj, v0, DT)
    np.testing.assert_allclose(ctrl[..., 0].numpy(), accel.numpy(), atol=1e-6)
    np.testing.assert_allclose(ctrl[..., 1].numpy(), kappa.numpy(), atol=1e-8)


def test_action_space_normalisation_round_trip():
    space = UnicycleActionSpace(accel_mean=0.1, accel_std=2.0, curvature_mean=0.0, curvature_std=0.02)
    action = torch.randn(3, 64, 2, generator=torch.Generator().manual_seed(1))
    phys = space.denormalize(action)
    np.testing.assert_allclose(space.normalize(phys).numpy(), action.double().numpy(), atol=1e-12)
    assert phys[..., 1].abs().max() < 0.2  # curvature std 0.02 1/m


@pytest.mark.parametrize("name", ["av2s-7fab2350-w00", "av2f-0a1e6f0a", "cr-USA_US101-4_1_T-1-ego427"])
def test_speed_estimate_matches_logged_speed_on_real_scenes(name):
    scene = load_scene(SCENES / f"{name}.npz")
    errs = []
    for t in range(16, scene.num_steps):
        est = estimate_speed(scene.ego.xy[t - 15 : t + 1], DT)
        errs.append(abs(est - scene.ego.speed[t]))
    assert np.median(errs) < 0.15, f"{name}: median speed error {np.median(errs):.3f} m/s"


@pytest.mark.parametrize("name", ["av2s-7fab2350-w00", "av2f-0a1e6f0a", "cr-USA_US101-4_1_T-1-ego427"])
def test_nvlabs_v0_estimate_matches_logged_speed_on_real_scenes(name):
    scene = load_scene(SCENES / f"{name}.npz")
    errs = []
    for t in range(16, scene.num_steps):
        sl = slice(t - 15, t + 1)
        errs.append(abs(estimate_v0(scene.ego.xy[sl], scene.ego.heading[sl], DT) - scene.ego.speed[t]))
    assert np.median(errs) < 0.15, f"{name}: median speed error {np.median(errs):.3f} m/s"


def test_nvlabs_v0_estimate_on_constant_acceleration_turn():
    """Speed linear in time on a circle: the trapezoid relation is nearly exact, only the ridge biases it."""
    t = (np.arange(16) - 15) * DT
    v_now, a, kappa = 10.0, -2.0, 0.05
    s = v_now * t + 0.5 * a * t**2
    th = kappa * s
    # positions of the arc (exact), headings along it
    xy = np.stack([np.sin(th) / kappa, (1 - np.cos(th)) / kappa], axis=1)
    est = estimate_v0(xy, th, DT)
    assert est == pytest.approx(v_now, abs=0.02)
    with pytest.raises(ModelInputError):
        estimate_v0(xy[:1], th[:1], DT)


def test_speed_estimate_exact_for_constant_acceleration():
    t = (np.arange(16) - 15) * DT
    v_now, a = 10.0, -2.0
    s = v_now * t + 0.5 * a * t**2
    xy = np.stack([s * np.cos(0.3), s * np.sin(0.3)], axis=1)
    assert estimate_speed(xy, DT) == pytest.approx(v_now, abs=1e-9)
    with pytest.raises(ModelInputError):
        estimate_speed(xy[:1], DT)
