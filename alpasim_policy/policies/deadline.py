"""A real-time budget around any policy: per-tick deadline, previous-plan fallback, latency cost.

Why: AlpaSim waits for the model however long it takes, so a 400 ms model and a 40 ms
model score the same. On a car running at 10 Hz the plan must be ready every 100 ms;
when it is not, the controller keeps tracking the plan it already has. This wrapper
turns the measured wall time of each policy call into that behaviour, so slow models
pay for their latency in the closed-loop score.

Semantics (``DeadlinePolicy(inner, deadline_s=0.1, latency_mode=...)``), at the tick of
scene step ``s`` (time ``s * 0.1 s``) with measured wall time ``L`` of ``inner.act``:

*Active plan.* The wrapper keeps the plan the car is executing, stored in the scene
frame with the absolute step of each row (row ``i`` of a plan made at step ``k`` is the
pose at step ``k + i + 1``). "The previous plan shifted in time" at step ``s`` is the
rows of that plan for steps ``s + 1, s + 2, ...``, converted into the current rig frame
(via ``observation["pose"]``); when fewer rows remain than the output length they are
extended at the constant velocity and heading of the last two rows. Before the first
plan exists, the active plan is "coast": constant current speed straight ahead along
the rig x axis (what a car does while no plan has arrived yet).

``latency_mode="ignore"`` (default; latency itself costs no simulated time):
    ``L <= deadline_s``: the new plan is returned unchanged and becomes the active plan.
    ``L > deadline_s``: a deadline miss. The new plan is dropped (it arrived too late
    for this tick); the returned plan is the active plan shifted to ``s``; the active
    plan is not replaced. At the next tick the inner policy is asked again.

``latency_mode="delay"`` (latency costs simulated time):
    The new plan only takes effect ``L`` seconds after the observation it was made
    from. The returned plan at row ``i`` (time ``t_i = (i + 1) * 0.1 s`` ahead) is the
    active plan shifted to ``s`` for ``t_i <= L`` and the new plan's own row ``i``
    for ``t_i > L``: every row keeps the absolute time it was planned for ("re-timed"
    to the observation's clock), so the first ``floor(L / 0.1 s)`` rows (at most all of
    them) still follow the old plan. The splice becomes the active plan. A miss is
    counted when ``L > deadline_s`` but the late plan is *not* dropped: its delayed
    effect is the cost.

In both modes the inner policy is called on every tick (so its frame buffers see every
frame, as on a pipelined car computer); the wrapper models *when the plan takes effect*,
not a planner that skips ticks. ``assumed_latency_s`` replaces the measured wall time by
a fixed value, which makes ``delay`` rollouts reproducible (measured wall time varies
from run to run, so with it a rollout is not bit-identical across runs).

Every output carries ``extra["latency_s"]`` (``L``), ``extra["deadline_miss"]`` (bool),
``extra["plan_source"]`` (``"new"``, ``"previous"`` or ``"spliced"``) and
``extra["previous_rows"]`` (how many leading rows come from the previous plan). The
inner policy's reasoning and samples are passed through unchanged (they describe what
the model thought, even when its plan was late). Invalid inner plans raise
:class:`~alpasim_policy.errors.PolicyOutputError` as usual and leave the active plan
untouched, so ``eval`` records a policy failure exactly as without the wrapper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.base import Policy, PolicyOutput, validate_plan
from alpasim_policy.policies.options import parse_choice, parse_number
from alpasim_policy.scenes.format import DT
from alpasim_policy.scenes.geometry import constant_velocity_tail, rig_to_scene_poses, scene_to_rig_poses

LATENCY_MODES = ("ignore", "delay")


def _extend(poses: np.ndarray, length: int) -> np.ndarray:
    """Pad (n, 3) scene-frame poses to ``length`` rows at the velocity of the last two rows."""
    if len(poses) >= length:
        return poses[:length]
    return np.concatenate([poses, constant_velocity_tail(poses, length - len(poses))])


def shifted_plan(
    plan_scene: np.ndarray | None,
    first_step: int,
    step: int,
    pose: np.ndarray,
    speed: float,
    length: int,
) -> np.ndarray:
    """The plan a car keeps executing at scene step ``step`` when no new plan is usable.

    The one fallback rule shared by :class:`DeadlinePolicy` (a late plan) and ``eval`` (an invalid
    plan or a policy exception), so both degrade the same way. ``plan_scene`` holds the active
    plan in the scene frame, row ``i`` being the pose at step ``first_step + i`` (a plan made at
    step ``k`` has ``first_step = k + 1``). Returns ``length`` rows for steps ``step + 1 ...`` in
    the rig frame of ``pose``: the active plan's rows, extended at the constant velocity and
    heading of its last two rows when it runs out. Without an active plan (``plan_scene`` None)
    the car coasts straight ahead along the rig x axis at its current ``speed`` (m/s, clamped
    at 0).
    """
    if plan_scene is None:
        t = DT * np.arange(1, length + 1)
        return np.stack([max(float(speed), 0.0) * t, np.zeros(length), np.zeros(length)], axis=1)
    start = step + 1 - first_step
    if start < 0:
        raise ConfigError(
            f"observation 'step' went backwards ({step} < plan step {first_step - 1}); "
            "call reset() between rollouts"
        )
    rows = _extend(np.asarray(plan_scene, np.float64), start + length)[start:]
    return scene_to_rig_poses(rows, np.asarray(pose, np.float64))


def parse_latency_mode(latency_mode: str) -> str:
    return parse_choice("latency_mode", latency_mode, LATENCY_MODES)


def _parse_seconds(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    return parse_number(name, value, allow_none=allow_none, what="number of seconds")


class DeadlinePolicy:
    """Wrap ``inner`` with a per-tick deadline; see the module docstring for the exact rules."""

    def __init__(
        self,
        inner: Policy,
        deadline_s: float | str = 0.1,
        latency_mode: str = "ignore",
        assumed_latency_s: float | str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.inner = inner
        self.deadline_s = _parse_seconds("deadline_s", deadline_s)
        self.latency_mode = parse_latency_mode(latency_mode)
        self.assumed_latency_s = _parse_seconds("assumed_latency_s", assumed_latency_s, allow_none=True)
        self._clock = clock
        self.name = getattr(inner, "name", type(inner).__name__)
        self.camera_preset = getattr(inner, "camera_preset", None)
        self.camera_size = getattr(inner, "camera_size", None)
        self.reset_state()

    # -- state -------------------------------------------------------------------------

    def reset_state(self) -> None:
        self._plan_scene: np.ndarray | None = None  # (T, 3) scene frame
        self._plan_first_step: int = 0  # absolute step of row 0
        self._length: int | None = None
        self.ticks = 0
        self.misses = 0
        self.latencies: list[float] = []

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        self.reset_state()
        self.inner.reset(seed=seed, scene=scene, camera_rig=camera_rig)

    @property
    def miss_rate(self) -> float:
        return self.misses / self.ticks if self.ticks else 0.0

    # -- plans -------------------------------------------------------------------------

    def _active_shifted(self, step: int, pose: np.ndarray, speed: float, length: int) -> np.ndarray:
        """The active plan's rows for steps ``step + 1 ...`` in the current rig frame, ``length`` rows."""
        return shifted_plan(self._plan_scene, self._plan_first_step, step, pose, speed, length)

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        step = int(np.asarray(observation["step"]))
        pose = np.asarray(observation["pose"], dtype=np.float64).reshape(3)
        speed = float(np.asarray(observation.get("speed", 0.0)))
        t0 = self._clock()
        out = self.inner.act(observation)
        measured = self._clock() - t0
        latency = measured if self.assumed_latency_s is None else self.assumed_latency_s
        new = validate_plan(out.trajectory, where=f"policy {self.name!r}")
        if self._length is None:
            self._length = len(new)
        length = self._length
        if len(new) < length:  # keep every output the same length (eval stacks plans)
            new = scene_to_rig_poses(_extend(rig_to_scene_poses(new, pose), length), pose)
        new = new[:length]
        miss = latency > self.deadline_s
        self.ticks += 1
        self.misses += int(miss)
        self.latencies.append(latency)

        if self.latency_mode == "ignore":
            if miss:
                plan, source, n_prev = self._active_shifted(step, pose, speed, length), "previous", length
            else:
                plan, source, n_prev = new, "new", 0
        else:  # delay: rows planned for times <= latency still follow the previous plan
            n_prev = min(length, int(math.floor(latency / DT + 1e-9)))
            if n_prev == 0:
                plan, source = new, "new"
            else:
                old = self._active_shifted(step, pose, speed, length)
                plan = np.concatenate([old[:n_prev], new[n_prev:]])
                source = "spliced" if n_prev < length else "previous"

        if source != "previous" or self._plan_scene is None:
            # the returned plan becomes the active one (also the coast plan on a first-tick miss)
            self._plan_scene = rig_to_scene_poses(plan, pose)
            self._plan_first_step = step + 1
        extra = dict(out.extra)
        extra.update(
            latency_s=float(latency),
            measured_latency_s=float(measured),
            deadline_s=self.deadline_s,
            deadline_miss=bool(miss),
            latency_mode=self.latency_mode,
            plan_source=source,
            previous_rows=int(n_prev),
            deadline_enforced=True,
        )
        return PolicyOutput(trajectory=plan, reasoning=out.reasoning, samples=out.samples, extra=extra)


def with_deadline(
    policy: Policy,
    deadline_ms: float | str | None = None,
    latency_mode: str = "ignore",
    assumed_latency_ms: float | str | None = None,
) -> Policy:
    """``policy`` under a ``deadline_ms`` budget, or unchanged when ``deadline_ms`` is None.

    The one call ``eval`` / ``serve`` need to offer ``--deadline-ms`` / ``--latency-mode`` for any
    policy (baselines included); options are validated with errors naming them.
    """
    mode = parse_latency_mode(latency_mode)
    deadline = _parse_seconds("deadline_ms", deadline_ms, allow_none=True)
    assumed = _parse_seconds("assumed_latency_ms", assumed_latency_ms, allow_none=True)
    if deadline is None:
        if assumed is not None:
            raise ConfigError("option 'assumed_latency_ms': only meaningful with 'deadline_ms'")
        return policy
    return DeadlinePolicy(policy, deadline / 1000.0, mode, None if assumed is None else assumed / 1000.0)
