"""The Policy protocol: what every driver (baseline, Alpamayo, remote gRPC) implements.

Observation (a dict, declared as a ``gymnasium.spaces.Dict`` by the env). All poses in
the *current rig frame* (x forward, y left, origin rear axle, SI units) unless noted:

==================  =================  ==================================================
key                 shape / dtype      meaning
==================  =================  ==================================================
``ego_history``     (16, 4) float32    x, y, heading, speed of the last 16 steps (0.1 s
                                       apart), oldest first; the last row is "now"
``speed``           () float32         current speed, m/s
``acceleration``    () float32         current longitudinal acceleration, m/s^2
``route``           (64, 2) float32    route polyline ahead, resampled every 2 m
``command``         () int64           navigation command: 0 left, 1 straight, 2 right
``pose``            (3,) float64       rig pose in the scene frame (x, y, heading)
``step``            () int64           scene step index of "now"
``agents``          (64, 8) float32    nearest agents: x, y, heading, vx, vy, length,
                                       width, type (AgentType); zeros where masked
``agents_mask``     (64,) bool         which rows of ``agents`` are real
``cameras``         {name: (H, W, 3)}  uint8 RGB images, only when cameras are enabled
``bev``             (H, W, 3) uint8    bird's-eye raster, only when enabled
==================  =================  ==================================================

Output: a :class:`PolicyOutput`. ``trajectory[i]`` is the planned rig-frame pose
(x, y, heading) at ``now + (i + 1) * 0.1 s``; at least 10 rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from alpasim_policy.errors import PolicyOutputError

HISTORY_STEPS = 16
ROUTE_POINTS = 64
ROUTE_SPACING_M = 2.0
MAX_AGENTS = 64
MIN_PLAN_STEPS = 10
COMMAND_LEFT, COMMAND_STRAIGHT, COMMAND_RIGHT = 0, 1, 2
COMMAND_NAMES = ("left", "straight", "right")


@dataclass
class PolicyOutput:
    trajectory: np.ndarray  # (T, 3) rig frame x, y, heading at 0.1 s steps, first row 0.1 s ahead
    reasoning: str | None = None  # chain-of-causation text, when the policy has one
    samples: np.ndarray | None = None  # (K, T, 3) all sampled trajectories, rig frame
    extra: dict[str, Any] = field(default_factory=dict)  # timings, debug values


@runtime_checkable
class Policy(Protocol):
    """A driver.

    ``reset`` is called once per rollout with the seed, the scene (its static map; the log is
    there for privileged baselines such as ``log_replay`` and must not be read by learned
    policies) and the env's camera rig (``None`` unless cameras are enabled).

    A policy that needs camera images sets the class attribute ``camera_preset`` to a rig
    preset name (e.g. ``"alpamayo4"``); ``eval`` then enables those cameras in the env.
    """

    name: str
    camera_preset: str | None = None

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None: ...

    def act(self, observation: dict[str, Any]) -> PolicyOutput: ...


def validate_plan(plan: Any, *, min_steps: int = MIN_PLAN_STEPS, where: str = "plan") -> np.ndarray:
    """Return ``plan`` as a float64 (T, 3) array or raise PolicyOutputError saying what is wrong."""
    if plan is None:
        raise PolicyOutputError(f"{where}: policy returned no trajectory")
    arr = np.asarray(plan, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise PolicyOutputError(f"{where}: expected shape (T, 3) of x, y, heading, got {arr.shape}")
    if arr.shape[0] < min_steps:
        raise PolicyOutputError(f"{where}: {arr.shape[0]} steps, need at least {min_steps} (0.1 s apart)")
    if not np.all(np.isfinite(arr)):
        raise PolicyOutputError(
            f"{where}: contains NaN/inf at rows {np.unique(np.argwhere(~np.isfinite(arr))[:, 0])[:5].tolist()}"
        )
    return arr
