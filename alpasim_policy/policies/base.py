"""The Policy protocol: what every driver (baseline, Alpamayo, remote gRPC) implements.

A policy maps the env's observation (the Dict declared in :mod:`alpasim_policy.sim.contract`,
the env's contract, re-exported here for convenience) to a :class:`PolicyOutput`.
``trajectory[i]`` is the planned rig-frame pose (x, y, heading) at ``now + (i + 1) * 0.1 s``;
at least ``MIN_PLAN_STEPS`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# The env's contract, re-exported so that policy code can keep importing it from here.
from alpasim_policy.sim.contract import (  # noqa: F401
    COMMAND_LEFT,
    COMMAND_NAMES,
    COMMAND_RIGHT,
    COMMAND_STRAIGHT,
    HISTORY_STEPS,
    MAX_AGENTS,
    MIN_PLAN_STEPS,
    ROUTE_POINTS,
    ROUTE_SPACING_M,
    validate_plan,
)


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
