"""Small policies for exercising the egodriver server without a model.

Why here and not in tests: the benchmark (``alpasim-policy bench serve``) needs the same cheap,
seeded policy as the tests, and ``alpasim-policy serve --policy`` can load them by
``module:Class`` through the registry when it supports that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alpasim_policy.policies.base import PolicyOutput


class RouteCruisePolicy:
    """Follows the observation's route polyline at a cruise speed (rig frame, 0.1 s steps).

    Seeded: ``samples`` are the plan plus Gaussian lateral noise from ``reset(seed)``'s generator,
    and the returned plan is the sample closest to the route, so the plan itself depends on the
    seed -- what the reproducibility tests need. It records what it saw (``seen``) for tests.
    """

    name = "route_cruise"
    camera_preset: str | None = None

    def __init__(
        self,
        cruise_speed: float = 8.0,
        horizon: int = 40,
        num_samples: int = 4,
        noise_m: float = 0.05,
        fail_on: tuple[int, ...] = (),
        bad_plan_on: tuple[int, ...] = (),
        camera_preset: str | None = None,
    ):
        self.cruise_speed = float(cruise_speed)
        self.horizon = int(horizon)
        self.num_samples = int(num_samples)
        self.noise_m = float(noise_m)
        self.fail_on = set(fail_on)
        self.bad_plan_on = set(bad_plan_on)
        self.camera_preset = camera_preset
        self.seen: list[dict[str, Any]] = []
        self.camera_rig: Any = None
        self.seed: int | None = None

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.seed, self.camera_rig, self.calls = seed, camera_rig, 0
        self.seen = []

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        self.calls += 1
        self.seen.append(
            {
                "speed": float(observation["speed"]),
                "command": int(observation["command"]),
                "ego_history": np.array(observation["ego_history"]),
                "cameras": {k: v.shape for k, v in (observation.get("cameras") or {}).items()},
            }
        )
        if self.calls in self.fail_on:
            raise RuntimeError(f"scripted failure on call {self.calls}")
        if self.calls in self.bad_plan_on:
            return PolicyOutput(np.full((5, 3), np.nan))
        v0 = max(float(observation["speed"]), 0.0)
        # Approach the cruise speed at <= 2 m/s^2, then follow the route by arc length.
        t = np.arange(1, self.horizon + 1) * 0.1
        v = (
            np.minimum(self.cruise_speed, v0 + 2.0 * t)
            if v0 <= self.cruise_speed
            else np.maximum(self.cruise_speed, v0 - 3.0 * t)
        )
        s = np.cumsum(v * 0.1)
        route = np.asarray(observation["route"], dtype=np.float64)
        seg = np.hypot(*np.diff(route, axis=0).T)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        x, y = np.interp(s, arc, route[:, 0]), np.interp(s, arc, route[:, 1])
        # Ease from the rig's own position onto the route (time constant 1 s), no lateral jump.
        ease = np.exp(-t / 1.0)
        x, y = x - route[0, 0] * ease, y - route[0, 1] * ease
        dx, dy = np.gradient(x), np.gradient(y)
        base = np.stack([x, y, np.arctan2(dy, dx)], axis=1)
        noise = self.rng.normal(0.0, self.noise_m, size=(self.num_samples, self.horizon))
        samples = np.repeat(base[None], self.num_samples, axis=0)
        samples[:, :, 1] += noise
        best = int(np.argmin(np.abs(noise).mean(axis=1)))
        self.seen[-1]["plan"] = samples[best].copy()
        return PolicyOutput(
            samples[best],
            reasoning=f"follow the route at {self.cruise_speed:.0f} m/s (sample {best})",
            samples=samples,
            extra={"best_sample": best},
        )
