"""The ``data`` stage of training: raw recordings -> held-out-filtered scenes -> drives on and off the log -> shards.

Deterministic for a seed; a re-run skips the shards already written (resume). The command line is
``alpasim-policy train --stage data`` (:mod:`alpasim_policy.cli.train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def raw_scenes(raw: Path, partial_egos_s: float | None = None) -> list[Any]:
    """Every scene the importers make of the recordings under ``raw`` (sorted, deterministic).

    CommonRoad recordings give one scene per eligible ego (every candidate, not the bundle's
    thinned choice) and per 8 s window, and short recordings (Lankershim's 4 s) are kept too
    (``min_steps=0``): for training every (ego, window) is a drive, and :func:`build_data`
    decides from the logged future how many of its steps make samples. ``partial_egos_s``: a car
    present for at least that many seconds of a recording (not all of it) is an ego too.
    """
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scenes.importers.av2 import import_av2_forecasting, import_av2_sensor
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    if not raw.is_dir():
        raise ConfigError(f"--raw {raw}: not a folder of raw recordings")
    scenes: list[Any] = []
    partial = None if partial_egos_s is None else int(round(partial_egos_s * 10))
    for xml in sorted(raw.glob("commonroad/*.xml")):
        scenes += import_commonroad(xml, min_steps=0, partial_min_steps=partial)
    for log in sorted(p for p in raw.glob("av2/sensor/*") if p.is_dir()):
        scenes += import_av2_sensor(log)
    for sc in sorted(p for p in raw.glob("av2/forecasting/*") if p.is_dir()):
        scenes += import_av2_forecasting(sc)
    if not scenes:
        raise ConfigError(f"--raw {raw}: no CommonRoad XML or AV2 log found (commonroad/*.xml, av2/...)")
    return scenes


def held_out_scenes(
    raw: Path, exclude_suite: str | None, partial_egos_s: float | None = None,
    time_scales: tuple[float, ...] = (),
) -> tuple[list[Any], int, int]:
    """The training drives' scenes: every importable recording under ``raw`` minus what overlaps
    ``exclude_suite`` (:func:`~alpasim_policy.training.data.held_out_filter`), plus each kept scene
    replayed at every speed factor of ``time_scales``; and how many candidates there were and were
    dropped. Shared
    by the data and rl stages so their flags select the same scenes."""
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite
    from alpasim_policy.training.data import held_out_filter

    candidates = raw_scenes(raw, partial_egos_s)
    suite = [load_scene(p) for p in load_suite(exclude_suite)] if exclude_suite else []
    scenes = held_out_filter(candidates, suite)
    dropped = len(candidates) - len(scenes)
    if time_scales:
        from alpasim_policy.scenes.augment import time_scaled

        scenes = scenes + [time_scaled(sc, f) for f in time_scales for sc in scenes]
    return scenes, len(candidates), dropped


def _perturbations(
    scene: Any, count: int, max_lateral: float, seed: int, closing: int = 0, max_accel: float = 2.5
) -> list[Any]:
    """``count`` lateral perturbations, then ``closing`` longitudinal ones (extra acceleration
    1 to ``max_accel`` m/s² for 2 s), drawn from generators seeded by (seed, scene id): reproducible
    (the lateral draws are the same with or without the longitudinal ones)."""
    import zlib

    import numpy as np

    from alpasim_policy.training.data import Perturbation

    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode())])
    t0 = scene.metadata.t0_index
    out = []
    for _ in range(count):
        lateral = float(rng.uniform(0.5, max_lateral) * rng.choice([-1.0, 1.0]))
        start = int(rng.integers(t0, max(t0 + 1, min(t0 + 20, scene.num_steps - 45))))
        out.append(Perturbation(lateral_m=round(lateral, 3), start_step=start))
    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode()), 1])
    for _ in range(closing):
        accel = float(rng.uniform(1.0, max_accel))
        start = int(rng.integers(t0, max(t0 + 1, min(t0 + 30, scene.num_steps - 45))))
        out.append(Perturbation(0.0, start_step=start, ramp_steps=20, accel_mps2=round(accel, 2)))
    return out


CLOSE_UP_GAP_M = (2.0, 5.0)
"""Bumper gap range (m) a close-up drive starts at, plus :data:`CLOSE_UP_HEADWAY_S` x speed."""
CLOSE_UP_HEADWAY_S = 0.3
"""Time gap added to a close-up start: 0.3 s is a fifth of what the IDM expert keeps."""
CLOSE_UP_MIN_MOVE_M = 1.0
"""A close-up drive needs the ego moved at least this far; a closer start is already in the data."""


def _lead_gap(scene: Any, step: int) -> float:
    """Bumper gap (m) to the labeler's lead vehicle at ``step``; inf without one."""
    from alpasim_policy.training.labeler import lead_vehicle

    lead = lead_vehicle(scene, step)
    return float("inf") if lead is None else lead[1]


def close_up_scenes(scene: Any, count: int, seed: int) -> list[Any]:
    """Up to ``count`` copies of ``scene`` whose ego starts close behind its lead (seeded draws).

    Each draws a gap in :data:`CLOSE_UP_GAP_M` plus :data:`CLOSE_UP_HEADWAY_S` x the logged speed
    at t0 and moves the ego's log forward along its path
    (:func:`~alpasim_policy.scenes.augment.moved_along_path`) so the closest the lead ever was
    over the history (steps 0..t0) becomes that gap: the history the model sees stays collision
    free and at t0 the lead is at least that close. A scene with no lead over the history, or
    whose draw would move the ego less than :data:`CLOSE_UP_MIN_MOVE_M`, gives none; so does a
    move that puts another car (a cut-in) nearer than 1 m in the history, or repeats a move.
    """
    import zlib

    import numpy as np

    from alpasim_policy.scenes.augment import moved_along_path

    if count <= 0:
        return []
    t0 = scene.metadata.t0_index
    closest = min(_lead_gap(scene, k) for k in range(t0 + 1))
    if not np.isfinite(closest):
        return []
    speed = float(np.hypot(*scene.ego.state[t0, 3:5]))
    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode()), 2])
    out = []
    shifts: set[float] = set()
    for _ in range(count):
        gap = float(rng.uniform(*CLOSE_UP_GAP_M)) + CLOSE_UP_HEADWAY_S * speed
        shift = round(closest - gap, 1)
        if shift < CLOSE_UP_MIN_MOVE_M or shift in shifts:  # the same move twice is the same drive
            continue
        shifts.add(shift)
        moved = moved_along_path(scene, shift)
        if min(_lead_gap(moved, k) for k in range(t0 + 1)) < 1.0:
            continue
        out.append(moved)
    return out


YAW_SWING_RAD = (0.05, 0.2)
"""Size range (rad) of a hand-over's heading swing (:func:`yaw_swing_scenes`)."""


def yaw_swing_scenes(scene: Any, count: int, seed: int) -> list[Any]:
    """``count`` copies of ``scene`` handed over mid-swerve
    (:func:`~alpasim_policy.scenes.augment.yaw_swung`): each draws a swing of
    :data:`YAW_SWING_RAD` to either side (seeded by the scene id), ramped in over the last 0.4 s
    before t0; a repeated draw is dropped."""
    import zlib

    import numpy as np

    from alpasim_policy.scenes.augment import yaw_swung

    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode()), 4])
    out, seen = [], set()
    for _ in range(max(0, count)):
        delta = round(float(rng.uniform(*YAW_SWING_RAD) * rng.choice([-1.0, 1.0])), 2)
        if delta not in seen:
            seen.add(delta)
            out.append(yaw_swung(scene, delta))
    return out


LEAD_STOP_DECEL = (1.5, 4.0)
"""Deceleration range (m/s^2) of a lead that brakes to a stop (:func:`lead_stop_scenes`)."""
LEAD_STOP_WITHIN = 20
"""A lead starts braking within this many steps (2 s) after t0."""


def lead_stop_scenes(scene: Any, count: int, seed: int, creep: bool = False) -> list[Any]:
    """Up to ``count`` copies of ``scene`` in which the lead at t0 brakes to a stop and stays.

    Each draws a start step in t0 .. t0 + :data:`LEAD_STOP_WITHIN`, a deceleration in
    :data:`LEAD_STOP_DECEL` and, for every other draw, a close-up start (:func:`close_up_scenes`,
    the same lead) where one is possible: the stop then happens a few metres ahead of a crawling
    ego. The lead's braking uses :func:`~alpasim_policy.scenes.augment.agent_stopping`. A scene
    with no lead at t0, or whose lead is already stopped or parked, gives none. ``creep``: once
    stopped, the lead goes on stop-and-go (:func:`creep_speeds`), the way the suite's crawling
    US-101 leads do; seeded apart from the plain stops.
    """
    import zlib

    import numpy as np

    from alpasim_policy.scenes.augment import agent_speed_profile, agent_stopping
    from alpasim_policy.training.labeler import lead_vehicle

    if count <= 0:
        return []
    t0 = scene.metadata.t0_index
    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode()), 4 if creep else 3])
    close = close_up_scenes(scene, 1, seed)
    out, seen = [], set()
    for j in range(count):
        start = int(rng.integers(t0, min(t0 + LEAD_STOP_WITHIN, scene.num_steps - 1) + 1))
        decel = round(float(rng.uniform(*LEAD_STOP_DECEL)), 1)
        base = close[0] if (j % 2 == 0 and close) else scene
        lead = lead_vehicle(base, t0)
        if lead is None:
            continue
        i = lead[0]
        if not base.agents.valid[i, start] or np.hypot(*base.agents.state[i, start, 3:5]) < 0.5:
            continue
        try:
            if creep:
                v0 = float(np.hypot(*base.agents.state[i, start, 3:5]))
                speeds = creep_speeds(v0, decel, base.num_steps - start, rng)
                stopped = agent_speed_profile(base, i, start, speeds, f"creep{i}a{decel:.1f}@{start}")
            else:
                stopped = agent_stopping(base, i, start, decel)
        except ValueError:  # a parked lead: no path to brake along
            continue
        if stopped.scene_id not in seen:
            seen.add(stopped.scene_id)
            out.append(stopped)
    return out


CREEP_WAIT_S = (0.5, 1.5)
"""How long a creeping lead stands between rolls (s)."""
CREEP_ROLL_S = (0.5, 1.2)
"""How long a creeping lead rolls at 1 m/s^2 before braking at 1.5 m/s^2 again (s)."""


def creep_speeds(v0: float, decel: float, steps: int, rng: Any) -> Any:
    """A stop-and-go speed profile (m/s per 0.1 s step): brake from ``v0`` at ``decel`` to a stop,
    then repeatedly stand for a draw in :data:`CREEP_WAIT_S` and roll for a draw in
    :data:`CREEP_ROLL_S` at 1 m/s^2 (0.5-1.2 m/s) before braking at 1.5 m/s^2 to a stop again."""
    import numpy as np

    from alpasim_policy.scenes.format import DT as dt

    v = [v0]
    while v[-1] > 0.0 and len(v) < steps:
        v.append(max(v[-1] - decel * dt, 0.0))
    while len(v) < steps:
        v += [0.0] * int(round(rng.uniform(*CREEP_WAIT_S) / dt))
        for _ in range(int(round(rng.uniform(*CREEP_ROLL_S) / dt))):
            v.append(v[-1] + 1.0 * dt)
        while v[-1] > 0.0:
            v.append(max(v[-1] - 1.5 * dt, 0.0))
    return np.asarray(v[:steps])


def build_data(
    out: Path,
    raw: Path,
    exclude_suite: str | None,
    preset: str,
    perturbations: int,
    max_lateral: float,
    seed: int,
    progress: bool = True,
    min_future_steps: int = 20,
    expert: str = "log",
    driver: str | Path | None = None,
    driver_share: float = 1.0,
    closing: int = 0,
    partial_egos_s: float | None = None,
    time_scales: tuple[float, ...] = (),
    close_up: int = 0,
    lead_stops: int = 0,
    lead_creeps: int = 0,
    expert_gap: float | None = None,
    frame_stride: int = 1,
    yaw_swings: int = 0,
) -> dict[str, Any]:
    """The ``data`` stage; returns the manifest (also written to ``out/data/manifest.json``).

    A step makes a sample when at least ``min_future_steps`` of its 64 target steps are logged
    (the rest are masked out of the loss): 20 (2 s) lets the short recordings and the last
    seconds of each window contribute, where the scorer's 4 s would keep 5 steps of a 6 s scene.

    ``expert`` names the target source (``log`` or ``idm``, :data:`~alpasim_policy.training.data.EXPERTS`).
    ``driver`` (a checkpoint folder) makes DAgger data: the ``alpamayo`` policy with those weights
    (K = 6, ``select=first``, 1 thread: the closed-loop setting) drives ``driver_share`` of the
    steps and the expert labels every step it reaches.

    ``time_scales``: every held-out-filtered scene is also driven replayed at each of these speed
    factors (:func:`~alpasim_policy.scenes.augment.time_scaled`; 0.2 turns 10 m/s traffic into
    2 m/s crawl), with the same number of perturbed drives as the original.

    ``close_up``: that many more drives per scene (time-scaled ones included) that start with the
    ego moved up behind its lead (:func:`close_up_scenes`); the expert drives them from there
    (use ``expert="idm"``: the log's future does not fit a car that is not where the driver was).
    ``lead_stops``: that many more drives per scene in which the lead brakes to a stop in front
    of the ego, every other one from a close-up start (:func:`lead_stop_scenes`; ``expert="idm"``).
    ``lead_creeps``: the same, with the stopped lead going on stop-and-go.
    ``expert_gap``: the ``idm`` expert's standstill gap (m; ``None``: the baseline's; see
    :func:`~alpasim_policy.training.data.drive_samples`).
    ``frame_stride``: ticks between a sample's frames (the model config's ``frame_stride``; train
    with ``--model-option frame_stride=N`` to match: training checks each shard's stride).
    ``yaw_swings``: that many more drives per scene handed over mid-swerve (:func:`yaw_swing_scenes`).
    """
    import numpy as np
    from tqdm import tqdm

    import alpasim_policy.sim  # noqa: F401  (registers the env)
    from alpasim_policy.io import atomic_write_json
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.training.data import dagger_driver, drive_samples, ego_key, save_samples

    if frame_stride < 1:
        from alpasim_policy.errors import ConfigError

        raise ConfigError(f"--frame-stride {frame_stride}: ticks between frames, an integer >= 1")
    frames = AlpamayoConfig.from_preset(preset).frames
    camera_size = DEFAULT_CAMERA_SIZE.get(preset)
    if camera_size is None:
        from alpasim_policy.errors import ConfigError

        raise ConfigError(
            f"--preset {preset!r}: no camera size known; choose from {sorted(DEFAULT_CAMERA_SIZE)}"
        )
    scenes, n_candidates, dropped = held_out_scenes(raw, exclude_suite, partial_egos_s, tuple(time_scales))
    jobs = [(sc, None) for sc in scenes]
    jobs += [(sc, p) for sc in scenes for p in _perturbations(sc, perturbations, max_lateral, seed, closing)]
    close = [m for sc in scenes for m in close_up_scenes(sc, close_up, seed)]
    jobs += [(m, None) for m in close]
    stops = [m for sc in scenes for m in lead_stop_scenes(sc, lead_stops, seed)]
    stops += [m for sc in scenes for m in lead_stop_scenes(sc, lead_creeps, seed, creep=True)]
    jobs += [(m, None) for m in stops]
    jobs += [(m, None) for sc in scenes for m in yaw_swing_scenes(sc, yaw_swings, seed)]
    drive_policy = None if driver is None else dagger_driver(driver, preset)
    # a non-default gap is in the name, so a resumed folder never mixes two experts' shards
    gap = f"-gap{expert_gap:g}" if expert == "idm" and expert_gap is not None else ""
    suffix = ("" if expert == "log" else f"-{expert}{gap}") + ("" if driver is None else "-dagger")
    suffix += "" if frame_stride == 1 else f"-fs{frame_stride}"  # nor one of two frame spacings
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    shards = []
    n_samples = 0
    bar = tqdm(jobs, desc="train data", unit="drive", disable=not progress)
    for scene, pert in bar:
        name = f"{scene.scene_id}-{'log' if pert is None else pert.tag}{suffix}.npz"
        path = data / name
        if not path.is_file():  # resume: shards are written atomically, so one that exists is whole
            samples = list(
                drive_samples(
                    scene,
                    camera_size=camera_size,
                    frames=frames,
                    perturbation=pert,
                    min_future_steps=min_future_steps,
                    expert=expert,
                    driver=drive_policy,
                    driver_share=driver_share,
                    seed=seed,
                    expert_gap=expert_gap,
                    frame_stride=frame_stride,
                )
            )
            if not samples:
                continue
            save_samples(samples, path, frame_stride)
        shards.append(name)
        with np.load(path) as z:
            n_samples += len(z["step"])
    recordings: dict[str, list[str]] = {}
    for sc in scenes:
        recordings.setdefault(sc.metadata.source_id, []).append(ego_key(sc))
    manifest = {
        "stage": "data",
        "preset": preset,
        "camera_size": list(camera_size),
        "frames": frames,
        "frame_stride": frame_stride,
        "seed": seed,
        "perturbations_per_scene": perturbations,
        "max_lateral_m": max_lateral,
        "closing_perturbations_per_scene": closing,
        "yaw_swings_per_scene": yaw_swings,
        "partial_egos_s": partial_egos_s,
        "time_scales": list(time_scales),
        "close_up_per_scene": close_up,
        "close_up_scenes": [m.scene_id for m in close],
        "lead_stops_per_scene": lead_stops,
        "lead_creeps_per_scene": lead_creeps,
        "lead_stop_scenes": [m.scene_id for m in stops],
        "excluded_suite": exclude_suite,
        "candidate_scenes": n_candidates,
        "held_out_dropped": dropped,
        "min_future_steps": min_future_steps,
        "expert": expert,
        "expert_gap_m": expert_gap if expert == "idm" else None,  # None: the idm baseline's
        "driver": None if driver is None else str(driver),
        "driver_share": driver_share if driver is not None else None,
        "recordings": {
            rec: sorted(set(egos), key=lambda e: (len(e), e)) for rec, egos in sorted(recordings.items())
        },
        "scenes": [sc.scene_id for sc in scenes],
        "shards": shards,
        "samples": n_samples,
    }
    atomic_write_json(data / "manifest.json", manifest)
    return manifest
