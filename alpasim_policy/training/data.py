"""Imitation-training samples: what the policy sees in closed loop, paired with an expert target.

Why samples come from the env itself: a model trained on inputs built by other code (another
history convention, another renderer call, another camera size) is evaluated on inputs it never
saw. Here the Gymnasium env produces every observation (cameras at the policy's input size, the
16-step history, speed, navigation command) and :class:`~alpasim_policy.policies.alpamayo.FrameBuffer`
stacks frames exactly as the ``alpamayo`` policy does.

Recovery. Behaviour cloning on the log alone never shows the model a car that is off the log, so
closed loop drifts. A :class:`Perturbation` makes the env's ego drift off the log for a second
(it is steered towards the log shifted sideways); the *target* at every step is the expert's
recovery: the logged future with the current lateral / heading error faded out over
``recovery_s`` seconds (a quintic smoothstep), so the labels show how to get back.

Held-out data. The scenes of an evaluation suite are never trained on: a training scene that
shares the source recording, the ego and any logged step with a suite scene is dropped
(:func:`overlaps`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from alpasim_policy.policies.alpamayo import FrameBuffer
from alpasim_policy.scenes.format import DT, Scene
from alpasim_policy.scenes.geometry import constant_velocity_tail, scene_to_rig_poses, wrap_angle
from alpasim_policy.scoring.reasoning import classify_trajectory, coc_text
from alpasim_policy.training.labeler import causal_factors, choose_factor

#: Alpamayo-R1 plans 64 steps (6.4 s); the targets have that many rows, masked past the log's end.
TARGET_STEPS = 64
#: The meta-action of a label describes the first 4 s (``scoring.reasoning.HORIZON_S``), as the
#: leaderboard's consistency classifies a plan.
LABEL_STEPS = 40


@dataclass(frozen=True)
class Perturbation:
    """Drift off the log: from ``start_step`` for ``ramp_steps`` the env is steered towards the log
    shifted by ``lateral_m`` (+ left); afterwards it follows the expert target (the recovery).

    ``accel_mps2`` > 0 makes it a *longitudinal* drift instead: for ``ramp_steps`` the car drives
    the expert's path ``accel_mps2`` harder than its speed now (``retime_plan``), so it closes in
    on whatever is ahead, the way a learner that misjudges a slowing lead does; the expert then
    has to brake from there. A log drive hardly ever shows a car too close to its lead, so
    without this the braking labels all come at comfortable gaps."""

    lateral_m: float
    start_step: int
    ramp_steps: int = 15
    accel_mps2: float = 0.0

    @property
    def tag(self) -> str:
        """Shard-name part: ``p+0.800@23`` (lateral) or ``a+1.50@23`` (longitudinal)."""
        if self.accel_mps2:
            return f"a{self.accel_mps2:+.2f}@{self.start_step}"
        return f"p{self.lateral_m:+.3f}@{self.start_step}"


def retime_plan(plan_rig: np.ndarray, v0: float, accel: float) -> np.ndarray:
    """The rig-frame ``plan``'s path driven from ``v0`` at constant ``accel`` (m/s², speed floored
    at 0): rows at +0.1 s, +0.2 s, ... placed by arc length along the path (straight on past its
    end), headings from the path."""
    p = np.asarray(plan_rig, np.float64)
    pts = np.concatenate([np.zeros((1, 2)), p[:, :2]])
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(1, len(p) + 1) * DT
    if accel < 0:  # braking: the car stops where its speed reaches 0 and stays there
        t = np.minimum(t, v0 / -accel)
    s = np.maximum(v0 * t + 0.5 * accel * t**2, 0.0)
    # past the path's end: straight on along its last heading
    end_dir = np.array([np.cos(p[-1, 2]), np.sin(p[-1, 2])])
    x = np.interp(s, arc, pts[:, 0]) + np.maximum(s - arc[-1], 0.0) * end_dir[0]
    y = np.interp(s, arc, pts[:, 1]) + np.maximum(s - arc[-1], 0.0) * end_dir[1]
    head = np.interp(s, arc, np.concatenate([[0.0], np.unwrap(p[:, 2])]))
    return np.stack([x, y, head], axis=1)


@dataclass
class TrainingSample:
    """One step of one drive. Frames: rig (x forward, y left, origin rear axle) at this step."""

    scene_id: str
    step: int
    images: np.ndarray  # (C, F, 3, H, W) uint8, cameras in rig order, frames oldest first
    history: np.ndarray  # (16, 4) float32 x, y, heading, speed
    speed: float  # m/s
    command: int  # 0 left, 1 straight, 2 right
    target: np.ndarray  # (TARGET_STEPS, 3) float64 expert poses at +0.1 s, +0.2 s, ...
    target_valid: np.ndarray  # (TARGET_STEPS,) bool: False past the log's end
    coc: str  # the CoC label (meta-action from the target, cause from t0-knowable facts)
    offset_m: float  # distance of the ego's rear axle from the log at this step


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10 - 15 * u + 6 * u**2)


def log_future(scene: Scene, step: int, steps: int = TARGET_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """The logged poses ``(steps, 3)`` after ``step`` (scene frame), continued at constant velocity
    past the end of the log; the mask says which rows are logged."""
    log = scene.ego.state[:, :3]
    n_valid = max(0, min(steps, scene.num_steps - 1 - step))
    fut = log[step + 1 : step + 1 + n_valid]
    if n_valid < steps:
        fut = np.concatenate([fut, constant_velocity_tail(log[: step + 1 + n_valid], steps - n_valid)])
    return fut, np.arange(steps) < n_valid


def _offset_log(
    scene: Scene, step: int, origin: np.ndarray, lateral: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The logged future with row ``i`` moved ``lateral[i]`` m to the left of the logged heading.

    Headings follow the shifted path's direction (from ``origin``, the car's position now, for the
    first row) where the rows move, since a kinematic car points where it goes; the logged heading
    where they barely move.
    """
    fut, valid = log_future(scene, step, steps)
    out = fut.copy()
    n_i = np.stack([-np.sin(fut[:, 2]), np.cos(fut[:, 2])], -1)
    out[:, :2] += lateral[:, None] * n_i
    prev = np.concatenate([np.asarray(origin, dtype=np.float64)[None, :2], out[:-1, :2]])
    d = out[:, :2] - prev
    moving = np.linalg.norm(d, axis=1) > 0.05
    course = np.arctan2(d[:, 1], d[:, 0])
    out[:, 2] = np.where(moving, fut[:, 2] + wrap_angle(course - fut[:, 2]), fut[:, 2])
    return out, valid


def _lateral_error(scene: Scene, step: int, pose: np.ndarray) -> float:
    """Signed distance (m, + left) of ``pose`` from the logged pose at ``step``, across its heading."""
    ref = scene.ego.state[step, :3]
    normal = np.array([-np.sin(ref[2]), np.cos(ref[2])])
    return float((np.asarray(pose[:2], dtype=np.float64) - ref[:2]) @ normal)


def recovery_target(
    scene: Scene, step: int, pose: np.ndarray, steps: int = TARGET_STEPS, recovery_s: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Expert poses (scene frame) from ``pose`` at ``step`` back onto the logged future.

    The lateral error (across the logged heading at ``step``) fades out over ``recovery_s`` seconds
    with a quintic smoothstep; the longitudinal position follows the log (time-indexed). Rows past
    the end of the log continue the last logged motion and are marked invalid.
    """
    w = 1.0 - _smoothstep((np.arange(1, steps + 1) * DT) / recovery_s)
    return _offset_log(scene, step, pose, w * _lateral_error(scene, step, pose), steps)


def _drift_plan(scene: Scene, step: int, pose: np.ndarray, p: Perturbation) -> np.ndarray:
    """Scene-frame plan during the drift: from the current lateral error to ``p.lateral_m`` by the
    end of the ramp, then held. (The tracker anchors a plan at the car, so a plan merely shifted
    sideways would not move it: the drift has to be in the plan's shape.)"""
    remaining = max(1, p.start_step + p.ramp_steps - step)
    e0 = _lateral_error(scene, step, pose)
    u = _smoothstep(np.arange(1, TARGET_STEPS + 1) / remaining)
    plan, _ = _offset_log(scene, step, pose, e0 + (p.lateral_m - e0) * u, TARGET_STEPS)
    return plan


def label_target(
    scene: Scene, step: int, target_rig: np.ndarray, v0: float, ego: tuple[np.ndarray, float] | None = None
) -> str:
    """The CoC sentence for a target: meta-action from the target, cause known at ``step``
    (measured from ``ego`` = (scene-frame pose, speed) when given, else from the logged ego)."""
    action = classify_trajectory(target_rig, v0, DT)
    return coc_text(action, choose_factor(action, causal_factors(scene, step, ego)))


#: Where a sample's target comes from: the human log (with the recovery blend) or the PDM-style
#: ``idm`` planner (:class:`~alpasim_policy.policies.baselines.IDMPolicy`), a privileged teacher
#: that plans from the car's actual state, so its label stays right wherever the car has drifted.
EXPERTS = ("log", "idm")
#: An off-log drive (expert or driver) ends once the car is this far (m) from the logged path: the
#: other road users replay their log, so far from it the scene no longer means anything (AlpaSim
#: ends a rollout at 4 m).
MAX_OFF_LOG_M = 5.0


def idm_expert(scene: Scene, seed: int, expert_gap: float | None = None) -> Any:
    """The ``idm`` expert, reset on ``scene`` (``expert_gap``: its standstill gap; ``None``: the
    baseline's own). One place for the data stage and the rl stage's ticks."""
    from alpasim_policy.policies.baselines import IDMPolicy

    gap = {} if expert_gap is None else {"min_gap": expert_gap}
    teacher = IDMPolicy(steps=TARGET_STEPS, **gap)
    teacher.reset(seed=seed, scene=scene)
    return teacher


def off_logged_path(path: shapely.LineString, pose: np.ndarray) -> bool:
    """Is the car at ``pose`` more than :data:`MAX_OFF_LOG_M` from the logged *path* (not the
    time-indexed pose: a planner may drive slower)?"""
    return path.distance(shapely.Point(pose[:2])) > MAX_OFF_LOG_M


def logged_path(scene: Scene) -> shapely.LineString:
    """The ego's logged positions as a line (built once per drive for :func:`off_logged_path`)."""
    return shapely.LineString(scene.ego.state[np.asarray(scene.ego.valid, bool), :2])


def dagger_driver(checkpoint: str | Path, preset: str | None = None) -> Any:
    """The ``alpamayo`` policy of ``checkpoint`` as it drives in closed loop (K = 6,
    ``select=first``, one thread): the ``--driver`` of the data and rl stages. ``preset``: the
    checkpoint's own (``config.json``) when not given."""
    import json

    from alpasim_policy.policies.registry import make_policy

    if preset is None:
        preset = json.loads((Path(checkpoint) / "config.json").read_text()).get("preset", "tiny")
    return make_policy("alpamayo", preset=preset, weights=str(checkpoint), threads=1, select="first")


def executed_plan(
    scene: Scene,
    step: int,
    pose: np.ndarray,
    speed: float,
    target: np.ndarray,
    perturbation: Perturbation | None = None,
    driven: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    driver_share: float = 1.0,
) -> np.ndarray:
    """The rig-frame plan the env executes at ``step`` of a training drive: the perturbation's
    while its ramp lasts, else the driver's on a seeded ``driver_share`` of the steps (DAgger),
    else the expert's ``target``. One rule for the data stage's drives and the rl stage's ticks."""
    p = perturbation
    if p is not None and p.start_step <= step < p.start_step + p.ramp_steps:
        if p.accel_mps2:
            return retime_plan(target, speed, p.accel_mps2)
        return scene_to_rig_poses(_drift_plan(scene, step, pose, p), pose)
    if driven is not None and rng is not None and rng.random() < driver_share:
        return np.asarray(driven, np.float64)
    return target


def plan_is_sane(plan_rig: np.ndarray, max_turn: float = 0.5) -> bool:
    """True when a rig-frame plan starts ahead of the car, pointing within ``max_turn`` rad of its
    heading, and never turns more than ``max_turn`` rad in one 0.1 s step: what a kinematic car can
    drive. The rule planner's plan breaks this where its route projection jumps (a car pushed
    across lanes); such a label would teach a swerve, so it is not emitted."""
    p = np.asarray(plan_rig, np.float64)
    turn = np.abs(wrap_angle(np.diff(p[:, 2])))
    return bool(p[0, 0] > -0.05 and abs(wrap_angle(p[0, 2])) < max_turn and (turn < max_turn).all())


def drive_samples(
    scene: Scene,
    *,
    camera_preset: str = "alpamayo4",
    camera_size: tuple[int, int] = (128, 72),
    frames: int = 4,
    perturbation: Perturbation | None = None,
    steps: Sequence[int] | None = None,
    recovery_s: float = 2.0,
    min_future_steps: int = 40,
    expert: str = "log",
    driver: Any = None,
    driver_share: float = 1.0,
    seed: int = 0,
    expert_gap: float | None = None,
    frame_stride: int = 1,
    brake_lamps: bool = True,
) -> Iterator[TrainingSample]:
    """Drive ``scene`` in the env along the expert target (drifting where perturbed); yield samples.

    A sample is yielded at each step in ``steps`` (default: every controlled step with at least
    ``min_future_steps`` logged future steps, the scorer's 4 s).

    ``expert`` (:data:`EXPERTS`) gives the targets. With a ``driver`` (a policy, e.g. the model being
    trained) the car executes the driver's plan on a ``driver_share`` of the steps (seeded draw)
    and the expert's on the rest, while every sample keeps the expert's target: DAgger (Ross et
    al., 2011), whose point is to label the states the learner itself reaches, which a drive along
    the expert never visits. The CoC cause is then measured from the simulated car.

    ``expert_gap``: the ``idm`` expert's standstill gap to its lead (m; ``None``: the ``idm``
    baseline's own). The idea: a student that cannot see what the privileged expert sees (the lead's
    speed, from four frames 0.3 s apart) might be better taught by a more cautious expert, whose
    larger gap leaves time to notice the lead stopping. Measured with 4 m (training README, run
    11), the tiny model drove worse, so the default stays the baseline's.

    ``frame_stride``: ticks between the frames of a sample, as the model config's ``frame_stride``.
    ``brake_lamps``: the env config's ``cameras.brake_lamps``.
    """
    import gymnasium as gym

    if expert not in EXPERTS:
        raise ValueError(f"expert {expert!r}: choose from {EXPERTS}")
    if not 0.0 <= driver_share <= 1.0:
        raise ValueError(f"driver_share must be in [0, 1], got {driver_share}")

    w, h = camera_size
    config = {"cameras": {"enabled": True, "preset": camera_preset, "width": int(w), "height": int(h),
                          "brake_lamps": bool(brake_lamps)}}  # fmt: skip
    env = gym.make("alpasim_policy/LogReplay-v0", scene=scene, config=config).unwrapped
    obs, _ = env.reset(seed=0)
    order = list(env.camera_rig.names)
    buffer = FrameBuffer(frames, frame_stride)
    wanted = None if steps is None else set(int(s) for s in steps)
    last = scene.num_steps - 1
    teacher = None
    if expert == "idm":
        teacher = idm_expert(scene, seed, expert_gap)
    if driver is not None:
        driver.reset(seed=seed, scene=scene, camera_rig=env.camera_rig)
    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode())])
    off_log = teacher is not None or driver is not None
    log_path = logged_path(scene)
    while True:
        k = int(obs["step"])
        pose = np.asarray(obs["pose"], dtype=np.float64)
        images = buffer.push(obs["cameras"], k, order)
        if teacher is None:
            target_w, valid = recovery_target(scene, k, pose, TARGET_STEPS, recovery_s)
            target = scene_to_rig_poses(target_w, pose)
        else:
            target = np.asarray(teacher.act(obs).trajectory, np.float64)[:TARGET_STEPS]
            valid = np.ones(TARGET_STEPS, bool)
        driven = driver.act(obs).trajectory if driver is not None else None
        emit = (last - k >= min_future_steps) if wanted is None else k in wanted
        offset = float(np.hypot(*(pose[:2] - scene.ego.state[k, :2])))
        if off_log and off_logged_path(log_path, pose):
            break
        if emit and (teacher is None or plan_is_sane(target)):
            v0 = float(obs["speed"])
            ego = (pose, v0) if off_log else None
            yield TrainingSample(
                scene_id=scene.scene_id,
                step=k,
                images=images,
                history=np.asarray(obs["ego_history"], np.float32).copy(),
                speed=v0,
                command=int(obs["command"]),
                target=target,
                target_valid=valid,
                # labelled over the scorer's 4 s where logged, else over what is logged
                coc=label_target(
                    scene, k, target[: max(min_future_steps, min(LABEL_STEPS, int(valid.sum())))], v0, ego
                ),
                offset_m=offset,
            )
        if k >= last:
            break
        plan = executed_plan(scene, k, pose, float(obs["speed"]), target, perturbation, driven, rng, driver_share)
        obs, _, terminated, truncated, _ = env.step(plan)
        if terminated or truncated:
            break
    env.close()


# ----------------------------------------------------------------------------- held-out scenes


def ego_key(scene: Scene) -> str:
    """Which road user is the ego: CommonRoad's obstacle id, else the recording's own ego."""
    extra = scene.metadata.extra
    return str(extra.get("ego_obstacle_id", extra.get("focal_track_id", "ego")))


def _span(scene: Scene) -> tuple[int, int]:
    start = int(scene.metadata.extra.get("window_start_step", 0))
    return start, start + scene.num_steps


def overlaps(candidate: Scene, held_out: Scene) -> bool:
    """True when ``candidate`` shares recording, ego and at least one logged step with ``held_out``."""
    if candidate.metadata.source_id != held_out.metadata.source_id:
        return False
    if ego_key(candidate) != ego_key(held_out):
        return False
    a0, a1 = _span(candidate)
    b0, b1 = _span(held_out)
    return a0 < b1 and b0 < a1


def held_out_filter(candidates: Sequence[Scene], suite_scenes: Sequence[Scene]) -> list[Scene]:
    """``candidates`` minus every scene that :func:`overlaps` a scene of the evaluation suite."""
    return [c for c in candidates if not any(overlaps(c, s) for s in suite_scenes)]


def sample_arrays(samples: Sequence[TrainingSample]) -> dict[str, np.ndarray]:
    """The shard arrays of ``samples`` (what :func:`save_samples` writes, what
    :func:`~alpasim_policy.training.imitation.load_shards` returns)."""
    return {
        "images": np.stack([s.images for s in samples]),
        "history": np.stack([s.history for s in samples]),
        "speed": np.array([s.speed for s in samples], np.float32),
        "command": np.array([s.command for s in samples], np.int64),
        "target": np.stack([s.target for s in samples]),
        "target_valid": np.stack([s.target_valid for s in samples]),
        "coc": np.array([s.coc for s in samples]),
        "scene_id": np.array([s.scene_id for s in samples]),
        "step": np.array([s.step for s in samples], np.int64),
        "offset_m": np.array([s.offset_m for s in samples], np.float32),
    }


def save_samples(samples: Sequence[TrainingSample], path: str | Path, frame_stride: int = 1) -> Path:
    """Write a shard of samples as one compressed ``.npz`` (atomically; see ``alpasim_policy.io``).

    ``frame_stride`` (the spacing the frames were stacked with) is stored beside the arrays, so
    training can refuse a model whose spacing differs; a shard without it has the default 1."""
    from alpasim_policy.training.shards import write_shard

    if not samples:
        raise ValueError(f"{path}: no samples to write")
    arrays = sample_arrays(samples)
    if frame_stride != 1:
        arrays["frame_stride"] = np.asarray(frame_stride, np.int64)
    return write_shard(arrays, path)
