"""``alpasim-policy eval``: closed-loop rollouts of one or more policies over a suite of scenes.

For each (policy, scene) the env is driven to the end of the log and the rollout is written to
``OUT/rollouts/<policy>/<scene_id>.npz`` (:class:`~alpasim_policy.sim.rollout.Rollout`, atomic).
A finished file whose seed, env config, scene hash and policy options match is skipped, so an
interrupted run resumes where it stopped. At the end the scorer ranks the run
(:func:`alpasim_policy.scoring.report.score_run`) and ``OUT/run.json`` records the arguments and
versions.

Scenes come from ``--suite`` (a name, a YAML of scene ids or paths, or a folder) and/or
``--scenes PATH...`` (files or folders). Every scene file and its metric cache are checked
before the first rollout (:func:`check_scenes`): a bad one (unreadable, invalid, a scene id
another file already has, a stale strict cache) is reported on stderr naming the file and the
reason, skipped, recorded in ``run.json`` (``skipped_scenes``), and the command exits 1 after
running and scoring the rest. ``run.json``'s ``scene_files`` tells the scorer where each scene
is, so scenes outside the scenarios root are scored too.

Policy failures never stop a suite: when ``act`` raises or returns an invalid plan (NaN, empty,
too short, wrong shape) the tick is recorded as a failure (with its message) and the car keeps
executing its last valid plan shifted in time (continued at constant velocity when it runs out;
before any valid plan, it coasts straight at its current speed; the rule is
:func:`alpasim_policy.policies.deadline.shifted_plan`, shared with ``--deadline-ms``). A failure
is not free: the scorer gives 0 to every closed-loop window that starts at a failed tick
(:mod:`alpasim_policy.scoring.closedloop`), and the leaderboard reports ``policy_failure_rate``
next to ``deadline_miss_rate`` (a late plan replaced by the previous one is a miss, not a
failure).

``--backend ray --workers N`` runs Ray tasks (one per scene, or one per (policy, scene) for small
suites; longest first) on a local Ray with N CPUs, ``--ray-address auto|HOST:PORT`` on an existing
cluster (:mod:`alpasim_policy.ray_backend`: scenes and rollouts travel through Ray, only the driver
writes the run folder); the env is
deterministic, so the rollouts are identical to the serial ones (only wall-time latencies differ).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.sim.contract import MIN_PLAN_STEPS

if TYPE_CHECKING:
    from alpasim_policy.scenes.format import Scene
    from alpasim_policy.sim.config import EnvConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one rollout


def effective_env_config(env_config: Any, policy: Any) -> EnvConfig:
    """The env config for a policy: cameras switched on with its preset when it asks for them.

    A policy that states the ``camera_size`` (width, height) it feeds its model gets images rendered
    at that size unless the env config fixes one: rendering 1080p frames only to shrink them is
    wasted time on the 10 Hz tick.
    """
    from alpasim_policy.sim.config import load_env_config

    cfg = load_env_config(env_config)
    preset = getattr(policy, "camera_preset", None)
    if preset and str(preset).lower() != "none":
        cams: dict[str, Any] = {"enabled": True, "preset": str(preset)}
        size = getattr(policy, "camera_size", None)
        if size is not None and cfg.cameras.width is None and cfg.cameras.height is None:
            cams["width"], cams["height"] = int(size[0]), int(size[1])
        cfg = cfg.replace(cameras=cams)
    return cfg


def run_rollout(
    policy_spec: str,
    scene_path: str | Path | Scene,
    *,
    seed: int = 0,
    env_config: str | dict | None = None,
    policy_options: dict[str, Any] | None = None,
    policy: Any = None,
    progress: Any = None,
    deadline: dict[str, Any] | None = None,
):
    """Drive one scene with one policy; returns the :class:`Rollout` (not saved).

    ``scene_path`` may also be a loaded :class:`~alpasim_policy.scenes.format.Scene`: a Ray task
    that drives one scene with several policies loads it (and builds its map index) once.

    ``deadline`` (``{"deadline_ms": ..., "latency_mode": ...}``) wraps the policy in
    :class:`~alpasim_policy.policies.deadline.DeadlinePolicy`; a given ``policy`` instance is reused
    (reset for this scene) instead of being built from ``policy_spec``.
    """
    from alpasim_policy.policies.base import validate_plan
    from alpasim_policy.policies.deadline import shifted_plan
    from alpasim_policy.policies.registry import make_policy
    from alpasim_policy.scenes.format import Scene, load_scene
    from alpasim_policy.scenes.geometry import rig_to_scene_poses
    from alpasim_policy.sim.env import LogReplayEnv
    from alpasim_policy.sim.rollout import Rollout

    policy_options = dict(policy_options or {})
    if policy is None:
        policy = make_policy(policy_spec, **policy_options)
    if deadline and deadline.get("deadline_ms") is not None:
        from alpasim_policy.policies.deadline import with_deadline

        policy = with_deadline(policy, deadline["deadline_ms"], deadline.get("latency_mode", "ignore"))
    scene = scene_path if isinstance(scene_path, Scene) else load_scene(scene_path)
    cfg = effective_env_config(env_config, policy)
    env = LogReplayEnv(scene=scene, config=cfg)
    obs, info = env.reset(seed=seed)
    policy.reset(seed=seed, scene=scene, camera_rig=env.camera_rig)
    n = scene.num_steps
    latency = np.full(n, np.nan)
    failure = np.zeros(n, dtype=bool)
    deadline_miss = np.zeros(n, dtype=bool)
    reasoning = [""] * n
    messages: list[str] = []
    samples: dict[int, np.ndarray] = {}
    contacts: list[dict[str, Any]] = []
    last_valid: tuple[np.ndarray, int] | None = None
    truncated = False
    t_start = time.perf_counter()
    while True:
        k = int(obs["step"])
        pose = np.asarray(obs["pose"], np.float64)
        t0 = time.perf_counter()
        out = None
        try:
            out = policy.act(obs)
            plan = validate_plan(out.trajectory, where=f"{policy_spec} at {scene.scene_id} step {k}")
        except Exception as e:  # any policy fault is recorded, the suite goes on
            latency[k] = time.perf_counter() - t0
            failure[k] = True
            msg = f"step {k}: {type(e).__name__}: {e}"
            messages.append(msg)
            # the car keeps executing its last valid plan, shifted in time (or coasts before one)
            last_plan, first_step = last_valid if last_valid is not None else (None, 0)
            rows = len(last_plan) if last_plan is not None else MIN_PLAN_STEPS
            plan = shifted_plan(
                last_plan, first_step, k, pose, float(obs["speed"]), max(rows, MIN_PLAN_STEPS)
            )
        else:
            latency[k] = time.perf_counter() - t0
            last_valid = (rig_to_scene_poses(plan, pose), k + 1)
        if out is not None:
            if getattr(out, "reasoning", None):
                reasoning[k] = str(out.reasoning)
            extra = getattr(out, "extra", None) or {}
            if extra.get("latency_s") is not None and np.isfinite(extra["latency_s"]):
                latency[k] = float(extra["latency_s"])  # the wrapper's own measurement (e.g. DeadlinePolicy)
            deadline_miss[k] = bool(extra.get("deadline_miss", False))
            if getattr(out, "samples", None) is not None and not failure[k]:
                smp = np.asarray(out.samples, np.float64)
                if smp.ndim == 3 and smp.shape[-1] == 3 and np.all(np.isfinite(smp)):
                    samples[k] = rig_to_scene_poses(smp, pose)
        obs, _, term, trunc, info = env.step(plan)
        for c in info["collisions"]:
            contacts.append({**c, "step": int(info["step"])})
        if progress is not None:
            progress()
        if term or trunc:
            truncated = bool(trunc)
            break
    wall = time.perf_counter() - t_start
    traj = env.trajectory()
    m = len(traj["steps"])
    smp_arr = None
    if samples:
        kmax = max(s.shape[0] for s in samples.values())
        tmax = max(s.shape[1] for s in samples.values())
        smp_arr = np.full((m, kmax, tmax, 3), np.nan)
        for k, s in samples.items():
            smp_arr[k, : s.shape[0], : s.shape[1]] = s
    name = getattr(policy, "name", policy_spec)
    return Rollout(
        scene_id=scene.scene_id,
        policy=policy_spec,
        seed=int(seed),
        scene_hash=scene.content_hash,
        env_config=cfg.to_dict(),
        samples=smp_arr,
        reasoning=reasoning[:m],
        latency_s=latency[:m],
        deadline_miss=deadline_miss[:m],
        policy_failure=failure[:m],
        failure_messages=messages,
        extra={
            "policy_name": name,
            "policy_options": _jsonable(policy_options),
            "deadline": _jsonable(deadline or {}),
            "collisions": contacts,
            "truncated": truncated,
            "wall_s": wall,
            "ticks": int(np.sum(np.isfinite(latency))),
            "start_step": int(env.start_step),
        },
        **traj,
    )


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


# --------------------------------------------------------------------------- resume


def rollout_path(out: Path, policy_spec: str, scene_id: str) -> Path:
    safe = policy_spec.replace("://", "_").replace("/", "_").replace(":", "_")
    return out / "rollouts" / safe / f"{scene_id}.npz"


def is_done(
    path: Path, seed: int, cfg: dict, scene_hash: str | None, options: dict, deadline: dict | None = None
) -> bool:
    """A finished rollout for these settings already exists (corrupt or stale files do not count)."""
    if not path.is_file():
        return False
    from alpasim_policy.io import unpack_archive

    try:
        _, meta = unpack_archive(path)
    except Exception:
        return False
    if not meta:
        return False
    return (
        meta.get("seed") == seed
        and meta.get("env_config") == _jsonable(cfg)
        and meta.get("scene_hash") == scene_hash
        and (meta.get("extra") or {}).get("policy_options") == _jsonable(options)
        and (meta.get("extra") or {}).get("deadline", {}) == _jsonable(deadline or {})
    )


def _task(
    policy_spec: str,
    scene_path: str,
    seed: int,
    env_config: Any,
    options: dict,
    out: str,
    progress: Any = None,
    deadline: dict | None = None,
    policy: Any = None,
) -> dict:
    """Run and save one rollout; the unit of work for both backends."""
    r = run_rollout(policy_spec, scene_path, seed=seed, env_config=env_config, policy_options=options,
                    progress=progress, deadline=deadline, policy=policy)  # fmt: skip
    path = rollout_path(Path(out), policy_spec, r.scene_id)
    r.save(path)
    return _summary(r, path)


def _summary(r, path: Path | None) -> dict:
    """What ``run.json`` records of one rollout (``path`` left out when not known yet: Ray workers)."""
    out = {
        "policy": r.policy,
        "scene_id": r.scene_id,
        "path": str(path),
        "failures": int(np.sum(r.policy_failure)) if r.policy_failure is not None else 0,
        "collisions": len(r.extra.get("collisions", [])),
        "at_fault": sum(bool(c["at_fault"]) for c in r.extra.get("collisions", [])),
    }
    if path is None:
        del out["path"]
    return out


# --------------------------------------------------------------------------- command


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("alpasim-policy", "numpy", "gymnasium", "shapely", "torch", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class EvalResults(list):
    """The per-rollout summaries :func:`evaluate` returns, plus the scenes it checked.

    ``scenes``: ``{"path", "scene_id"}`` per scene that ran; ``skipped_scenes``: ``{"path",
    "reason"}`` per scene that was rejected before the first rollout; ``cache_notes``: metric
    cache problems the scorer works around (``"auto"`` caches that are stale or corrupt).
    """

    scenes: list[dict]
    skipped_scenes: list[dict]
    cache_notes: list[str]


def check_scenes(
    paths: list[Path], cache_dir: str | Path | None = "auto"
) -> tuple[list[tuple[Path, Any]], list[dict], list[str]]:
    """Load and validate every scene file and its metric cache, before any rollout.

    Returns ``(good, skipped, notes)``: ``(path, info)`` per usable scene, in order (``info``
    has the ``scene_id``, ``content_hash`` and ``num_steps``);
    ``{"path", "reason"}`` per rejected file (the reason names what is wrong); notes on caches the
    scorer will work around. Two files with the same scene id are a problem for the second one
    (their rollouts would overwrite each other).
    """
    from alpasim_policy.caching import IDM_REFERENCE
    from alpasim_policy.errors import AlpasimError
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scoring.report import cache_check

    good: list[tuple[Path, Any]] = []
    skipped: list[dict] = []
    notes: list[str] = []
    ids: dict[str, Path] = {}
    for path in paths:
        try:
            scene = load_scene(path)
            if scene.scene_id in ids:
                raise ConfigError(
                    f"scene id {scene.scene_id!r} is also the id of {ids[scene.scene_id]} (rollouts are "
                    "stored by scene id, so one would overwrite the other)"
                )
            usable, note = cache_check(scene, cache_dir, reference=IDM_REFERENCE)
        except AlpasimError as e:
            msg = str(e)
            skipped.append({"path": str(path), "reason": msg if str(path) in msg else f"{path}: {msg}"})
            continue
        except Exception as e:  # an unreadable file of any kind: report it, go on
            skipped.append({"path": str(path), "reason": f"{path}: {type(e).__name__}: {e}"})
            continue
        if not usable:
            skipped.append({"path": str(path), "reason": f"{path}: unusable metric cache: {note}"})
            continue
        if note:
            notes.append(note)
        ids[scene.scene_id] = path
        # keep only what eval needs: a suite's maps need not all sit in memory at once
        good.append(
            (
                path,
                SimpleNamespace(
                    scene_id=scene.scene_id, content_hash=scene.content_hash, num_steps=scene.num_steps
                ),
            )
        )
    return good, skipped, notes


def evaluate(
    suite: str | None,
    policies: list[str],
    out: str | Path,
    *,
    scenes: list[str | Path] | tuple = (),
    cache_dir: str | Path | None = "auto",
    seed: int = 0,
    env_config: str | dict | None = None,
    workers: int = 1,
    backend: str = "serial",
    policy_options: dict[str, Any] | None = None,
    show_progress: bool = True,
    deadline: dict[str, Any] | None = None,
    ray_address: str | None = None,
    on_rollout: Callable[[str, str], None] | None = None,
) -> EvalResults:
    """Run (or resume) every (policy, scene) rollout; returns one summary per rollout.

    Scenes: ``suite`` (name, YAML or folder) and/or ``scenes`` (files or folders), checked with
    :func:`check_scenes` before anything runs; rejected ones are reported on stderr and listed
    in the result's ``skipped_scenes``. The serial backend builds each policy once and resets it
    per scene (a real checkpoint is loaded once, not once per scene); Ray tasks build their own.
    ``on_rollout(rollout_file, scene_file)`` is called in this process as each new rollout file
    is written (``eval --videos`` starts its video then).
    """
    from alpasim_policy.policies.registry import make_policy, split_options
    from alpasim_policy.scenes.suite import collect_scene_files
    from alpasim_policy.sim.config import load_env_config

    out = Path(out)
    options = dict(policy_options or {})
    if not policies:
        raise ConfigError("--policy: give at least one policy name")
    if suite is None and not scenes:
        raise ConfigError("give --suite NAME|YAML|FOLDER and/or --scenes PATH...")
    # Resolve the config once (a relative path means the same on Ray workers), then pass the dict.
    env_config = load_env_config(env_config)
    warmup = int(round(env_config.warmup_s / env_config.dt))
    files, missing = collect_scene_files(suite, list(scenes))
    good, skipped, notes = check_scenes(files, cache_dir)
    skipped = [{"path": e, "reason": r} for e, r in missing] + skipped
    for p, sc in list(good):  # the env needs at least one tick to drive after its warm-up
        if warmup > sc.num_steps - 2:
            good.remove((p, sc))
            skipped.append({"path": str(p), "reason": f"{p}: {sc.num_steps} steps, too short for the env's "
                            f"warm-up of {env_config.warmup_s} s plus one tick to drive"})  # fmt: skip
    for sk in skipped:
        print(f"error: skipping scene {sk['reason']}", file=sys.stderr)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    scenes = [p for p, _ in good]
    # Build each policy once up front: bad names / options fail before any work starts.
    cfgs, built = {}, {}
    per_policy = split_options(policies, options)
    for p in policies:
        built[p] = make_policy(p, **per_policy[p])
        cfgs[p] = effective_env_config(env_config, built[p])
    hashes, ids, ticks = {}, {}, {}
    for s, sc in good:
        hashes[str(s)], ids[str(s)] = sc.content_hash, sc.scene_id
        ticks[str(s)] = max(sc.num_steps - 1 - warmup, 1)
    todo, done = [], []
    for p in policies:
        for s in scenes:
            path = rollout_path(out, p, ids[str(s)])
            if is_done(path, seed, cfgs[p], hashes[str(s)], per_policy[p], deadline):
                done.append({"policy": p, "scene_id": ids[str(s)], "path": str(path), "skipped": True})
            else:
                todo.append((p, str(s)))
    if done:
        log.info("resuming: %d rollouts already on disk, %d to run", len(done), len(todo))
    results: list[dict] = []
    # Progress in ticks, one bar per policy with its own rate (alpasim_policy/progress.py)
    from alpasim_policy.progress import EvalProgress

    per_policy_ticks = {p: sum(ticks[s] for q, s in todo if q == p) for p in policies}
    bar = EvalProgress(per_policy_ticks, disable=not show_progress or not todo)
    if backend == "ray" and todo:
        # scenes go out through Ray's object store, rollouts come back; only this process writes `out`
        from alpasim_policy.ray_backend import run_eval_tasks

        def _done(p: str, s: str, result: dict) -> None:
            bar.start(p, Path(s).stem)
            bar.update(ticks[s])
            if on_rollout is not None and "path" in result:
                on_rollout(result["path"], s)

        results += run_eval_tasks(todo, out=out, seed=seed, env_config=env_config, per_policy=per_policy,
                                  deadline=deadline, workers=workers, address=ray_address, on_done=_done,
                                  ticks=ticks)  # fmt: skip
    else:
        if backend == "serial" and workers > 1:
            log.warning("--workers applies to --backend ray; running serially")
        for p, s in todo:
            bar.start(p, Path(s).stem)
            before = bar.n
            try:
                results.append(
                    _task(
                        p,
                        s,
                        seed,
                        env_config,
                        per_policy[p],
                        str(out),
                        progress=lambda: bar.update(1),
                        deadline=deadline,
                        policy=built[p],
                    )  # fmt: skip
                )
            except Exception as e:  # env / scene fault outside the policy: report, go on
                traceback.print_exc()
                results.append({"policy": p, "scene_id": Path(s).stem, "error": f"{type(e).__name__}: {e}"})
            else:
                if on_rollout is not None:
                    on_rollout(results[-1]["path"], s)
            bar.update(max(0, before + ticks[s] - bar.n))  # truncated episodes: count the rest
    bar.close()
    res = EvalResults(done + results)
    res.scenes = [{"path": str(p), "scene_id": sc.scene_id} for p, sc in good]
    res.skipped_scenes = skipped
    res.cache_notes = notes
    return res


__all__ = ["EvalResults", "check_scenes", "evaluate", "run_rollout"]
