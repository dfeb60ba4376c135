"""The env's observation/action contract: keys, sizes, Gymnasium spaces and the plan check.

The env owns this contract (as a Gymnasium env declares its spaces); policies, the egodriver
server and the runner import it from here. Everything is in the *current rig frame* (x forward,
y left, origin rear axle, SI units) unless noted.

Observation (a dict, declared by :func:`observation_space`):

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

Action: a planned trajectory ``(T, 3)`` of rig-frame x, y, heading, row ``i`` at
``now + (i + 1) * 0.1 s``, ``T >= MIN_PLAN_STEPS``; :func:`validate_plan` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from alpasim_policy.errors import PolicyOutputError

if TYPE_CHECKING:  # gymnasium is imported where the spaces are built, keeping `--help` fast
    from gymnasium import spaces

HISTORY_STEPS = 16
ROUTE_POINTS = 64
ROUTE_SPACING_M = 2.0
MAX_AGENTS = 64
AGENT_FEATURES = 8  # x, y, heading, vx, vy, length, width, type
MIN_PLAN_STEPS = 10
#: Rows of the declared action Box: what Alpamayo emits and what ``gymnasium.vector`` stacks.
ACTION_ROWS = 64
COMMAND_LEFT, COMMAND_STRAIGHT, COMMAND_RIGHT = 0, 1, 2
COMMAND_NAMES = ("left", "straight", "right")
#: Keys every observation has (``cameras`` / ``bev`` only when enabled).
OBSERVATION_KEYS = (
    "ego_history",
    "speed",
    "acceleration",
    "route",
    "command",
    "pose",
    "step",
    "agents",
    "agents_mask",
)


def action_space() -> spaces.Box:
    """The declared action Box: ``(ACTION_ROWS, 3)`` float32, finite bounds (1 km, 4 pi).

    Finite so that ``sample()`` gives usable plans; the env accepts any ``T >= MIN_PLAN_STEPS`` rows.
    """
    from gymnasium import spaces

    bound = np.tile(np.array([1000.0, 1000.0, 4 * np.pi], np.float32), (ACTION_ROWS, 1))
    return spaces.Box(-bound, bound, dtype=np.float32)


def observation_space(
    cameras: Mapping[str, tuple[int, int]] | None = None, bev: tuple[int, int] | None = None
) -> spaces.Dict:
    """The observation Dict; ``cameras`` maps a camera name to its (height, width), ``bev`` is (height, width)."""
    from gymnasium import spaces

    inf = np.inf
    d: dict[str, spaces.Space] = {
        "ego_history": spaces.Box(-inf, inf, (HISTORY_STEPS, 4), np.float32),
        "speed": spaces.Box(-inf, inf, (), np.float32),
        "acceleration": spaces.Box(-inf, inf, (), np.float32),
        "route": spaces.Box(-inf, inf, (ROUTE_POINTS, 2), np.float32),
        "command": spaces.Discrete(3),
        "pose": spaces.Box(-inf, inf, (3,), np.float64),
        "step": spaces.Box(0, np.iinfo(np.int64).max, (), np.int64),
        "agents": spaces.Box(-inf, inf, (MAX_AGENTS, AGENT_FEATURES), np.float32),
        "agents_mask": spaces.Box(0, 1, (MAX_AGENTS,), np.bool_),
    }
    if cameras is not None:
        d["cameras"] = spaces.Dict(
            {n: spaces.Box(0, 255, (h, w, 3), np.uint8) for n, (h, w) in cameras.items()}
        )
    if bev is not None:
        d["bev"] = spaces.Box(0, 255, (bev[0], bev[1], 3), np.uint8)
    return spaces.Dict(d)


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
