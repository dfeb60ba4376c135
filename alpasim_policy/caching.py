"""Runner: build metric caches, driving a reference planner through the env for the EP reference.

The scorer (:mod:`alpasim_policy.scoring.cache`) only reads caches and knows the reference as a
:class:`~alpasim_policy.scoring.cache.ReferencePlanner`; this module, like ``evaluate``, sits above
the env and the policies and hands one in. The default, :data:`IDM_REFERENCE`, is the ``idm``
baseline driven closed loop through ``LogReplay-v0`` with the default env config (NAVSIM's PDM
reference plays the same role).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpasim_policy.scenes.format import Scene, load_scene
from alpasim_policy.scoring.cache import ReferencePlanner, build_world, cache_path, save_world


@dataclass(frozen=True)
class PolicyReference:
    """A registered policy driven closed loop through the env (default config, seed 0).

    ``version`` names the behaviour of the rollout (the policy *and* the env, tracker and agents it
    runs in). Bump it whenever a change moves the rollout; the committed ``metric_cache/`` is then
    rebuilt, and ``tests/test_scoring_cache.py`` fails until it is (it re-drives the reference on
    every bundled scene and compares with the cache).
    """

    name: str = "idm"
    version: str = "1"

    def rollout(self, scene: Scene) -> np.ndarray:
        from alpasim_policy.policies.registry import make_policy
        from alpasim_policy.sim.env import LogReplayEnv

        env = LogReplayEnv(scene=scene)
        policy = make_policy(self.name)
        obs, _ = env.reset(seed=0)
        policy.reset(seed=0, scene=scene)
        while True:
            out = policy.act(obs)
            obs, _, terminated, truncated, _ = env.step(out.trajectory)
            if terminated or truncated:
                break
        traj = env.trajectory()["ego_state"]
        ref = np.array(scene.ego.state, dtype=np.float64, copy=True)
        ref[: len(traj)] = traj
        return ref


#: The progress reference of the committed metric caches and of scoring without a cache.
IDM_REFERENCE = PolicyReference("idm", "1")
#: ``--reference`` choices: a reference planner, or None for the human log.
REFERENCES: dict[str, ReferencePlanner | None] = {"idm": IDM_REFERENCE, "human": None}


def build_cache(
    scene_path: str | Path, out_dir: str | Path, reference: ReferencePlanner | None = IDM_REFERENCE
) -> Path:
    """Build and write the cache of one scene file; returns the cache path."""
    scene = load_scene(scene_path)
    return save_world(build_world(scene, reference), cache_path(out_dir, scene.scene_id))


def _build_one(args: tuple[str, str, str]) -> tuple[str, str, float]:
    scene_path, out, reference = args
    t = time.perf_counter()
    path = build_cache(scene_path, out, REFERENCES[reference])
    return str(scene_path), str(path), time.perf_counter() - t


def build_suite_caches(suite: str, out: Path, workers: int = 1, reference: str = "idm") -> list[tuple]:
    """Build the caches of every scene of a suite; returns (scene path, cache path, seconds) per scene."""
    from alpasim_policy.scenes.suite import load_suite

    jobs = [(str(p), str(out), reference) for p in load_suite(suite)]
    if workers <= 1 or len(jobs) <= 1:
        return [_build_one(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_build_one, jobs))
