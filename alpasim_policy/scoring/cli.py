"""CLI of the scoring stage: ``cache build``, ``score`` and ``bench scorer``.

Heavy imports happen inside the handlers so ``alpasim-policy --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cache", help="metric caches for the scorer")
    cs = c.add_subparsers(dest="cache_command", required=True)
    b = cs.add_parser(
        "build",
        help="build one metric cache per scene of a suite (map polygons, agent boxes, idm reference)",
        description="Build <out>/<scene_id>.npz for every scene of the suite, in parallel over scenes.",
    )
    b.add_argument("--suite", required=True, help="suite name or YAML path")
    b.add_argument("--out", type=Path, required=True, help="cache folder (e.g. metric_cache/)")
    b.add_argument("--workers", type=int, default=1, help="processes (one scene each)")
    b.add_argument(
        "--reference", choices=("idm", "human"), default="idm", help="progress reference for EP (default idm)"
    )
    b.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="build on a Ray cluster (scene bytes out, cache bytes back; this machine writes --out)")  # fmt: skip
    b.set_defaults(func=_cmd_cache_build)
    s = sub.add_parser(
        "score",
        help="score the rollouts of a run folder (writes scenes.csv, leaderboard.csv/.md)",
        description="Score DIR/rollouts/<policy>/*.npz closed-loop and write the leaderboard into DIR.",
    )
    s.add_argument("run_dir", type=Path)
    s.add_argument("--cache", default="auto", help="metric cache folder, 'auto' (default) or 'none'")
    s.add_argument("--rebuild", action="store_true", help="rebuild stale or corrupt caches in --cache")
    s.set_defaults(func=_cmd_score)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "scorer", help="4096 proposals x 41 states on one bundled scene (goal <= 2 s); cache build per scene"
    )
    p.add_argument("--suite", default="bundled")
    p.add_argument("--scene", default=None, help="scene for the proposal benchmark (default: most agents)")
    p.add_argument("--proposals", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"), help="file the rows go to")
    p.set_defaults(func=_cmd_bench)


# ----------------------------------------------------------------------------- handlers


def _build_one(args: tuple[str, str, str]) -> tuple[str, str, float]:
    import time

    from alpasim_policy.scoring.cache import build_cache

    scene_path, out, reference = args
    t = time.perf_counter()
    path = build_cache(scene_path, out, reference)
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


def _cmd_cache_build(args: argparse.Namespace) -> int:
    if getattr(args, "ray_address", None):  # fan out on Ray (alpasim_policy/ray_backend.py)
        from alpasim_policy.ray_backend import build_caches
        from alpasim_policy.scenes.suite import load_suite

        results = build_caches(
            load_suite(args.suite), args.out, reference=args.reference, address=args.ray_address
        )
    else:
        results = build_suite_caches(args.suite, args.out, args.workers, args.reference)
    for scene, path, secs in results:
        print(f"{path}  ({secs:.2f} s)  <- {scene}")
    print(f"{len(results)} caches in {args.out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from alpasim_policy.scoring.report import score_run

    cache = None if args.cache == "none" else args.cache
    board = score_run(args.run_dir, cache_dir=cache, rebuild=args.rebuild)
    print(board)
    return 0


def _proposals(world, n: int, seed: int = 0):
    """n plans around the logged future: speed scaled 0.3-1.4x, lateral drift up to +-2 m, curvature."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t0 = world.t0_index
    fut = world.human_state[t0 : t0 + 41]
    if len(fut) < 41:  # short logs: continue at the last velocity
        extra = np.arange(1, 41 - len(fut) + 1)[:, None] * 0.1
        last = fut[-1]
        tail = np.repeat(last[None], len(extra), 0)
        tail[:, :2] = last[:2] + extra * last[3:5]
        fut = np.concatenate([fut, tail])
    h0 = fut[0, 2]
    d = fut[1:, :2] - fut[0, :2]
    scale = rng.uniform(0.3, 1.4, n)
    drift = rng.uniform(-2.0, 2.0, n)
    ramp = np.linspace(0.0, 1.0, 40) ** 2
    normal = np.array([-np.sin(h0), np.cos(h0)])
    xy = fut[0, :2] + d[None] * scale[:, None, None] + (drift[:, None, None] * ramp[None, :, None]) * normal
    heading = np.repeat(fut[1:, 2][None], n, 0)
    step = np.diff(np.concatenate([np.repeat(fut[0, :2][None, None], n, 0), xy], axis=1), axis=1)
    moving = np.linalg.norm(step, axis=-1) > 1e-3
    heading = np.where(moving, np.arctan2(step[..., 1], step[..., 0]), heading)
    return np.concatenate([xy, heading[..., None]], axis=-1)


def _cmd_bench(args: argparse.Namespace) -> int:
    import os
    import statistics
    import time

    import numpy as np

    from alpasim_policy.bench import append_rows, print_summary
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene, load_suite
    from alpasim_policy.scoring.cache import build_world, world_to_bytes
    from alpasim_policy.scoring.openloop import score_states, simulate

    paths = load_suite(args.suite)
    scenes = [load_scene(p) for p in paths]
    # cache build per scene (idm reference rollout + serialisation)
    build = []
    for sc in scenes:
        t = time.perf_counter()
        world_to_bytes(build_world(sc, "idm"))
        build.append(time.perf_counter() - t)
    if args.scene:
        scene = load_scene(find_scene(args.scene))
    else:
        scene = max(scenes, key=lambda s: (len(s.agents), len(s.map.lanes)))
    world = build_world(scene, "idm").prepare()
    plans = _proposals(world, args.proposals)
    start = world.human_state[world.t0_index]
    sim_t, score_t = [], []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        states = simulate(world, start, plans, 40)
        sim_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = score_states(world, states, world.t0_index)
        score_t.append(time.perf_counter() - t)
    s_score, s_sim = statistics.median(score_t), statistics.median(sim_t)
    load = os.getloadavg()[0]
    n = args.proposals
    summary = {
        "benchmark": "scorer",
        "scene": scene.scene_id,
        "agents": len(scene.agents),
        "lanes": len(scene.map.lanes),
        "proposals": n,
        "states": 41,
        "score_s": round(s_score, 3),
        "simulate_s": round(s_sim, 3),
        "total_s": round(s_score + s_sim, 3),
        "goal_s": 2.0,
        "mean_epdms": round(float(np.mean(res.epdms)), 4),
        "cache_build_median_s": round(statistics.median(build), 3),
        "cache_build_max_s": round(max(build), 3),
        "cache_build_goal_s": 1.0,
        "scenes": len(scenes),
        "load_avg": round(load, 2),
    }
    append_rows(
        [
            {
                "benchmark": f"scorer: {n} proposals x 41 states, open loop ({scene.scene_id}, "
                f"{len(scene.agents)} agents, {len(scene.map.lanes)} lanes)",
                "result": f"score {s_score:.2f} s + LQR/bicycle simulate {s_sim:.2f} s = {s_score + s_sim:.2f} s "
                f"(median of {max(1, args.repeats)}; load avg {load:.1f} on the machine)",
                "ratio": f"score {s_score / 2.0:.2f}x of the 2 s goal; with simulation {(s_score + s_sim) / 2.0:.2f}x",
            },
            {
                "benchmark": f"scorer: metric cache build per scene ({args.suite}, {len(scenes)} scenes, idm reference)",
                "result": f"median {statistics.median(build):.2f} s, max {max(build):.2f} s",
                "ratio": f"max {max(build) / 1.0:.2f}x of the 1 s goal",
            },
        ],
        args.benchmarks,
    )
    print_summary(summary)
    return 0
