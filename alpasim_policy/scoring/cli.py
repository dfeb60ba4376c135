"""CLI of the scoring stage: ``score`` and ``bench scorer`` (``cache build`` lives in :mod:`alpasim_policy.caching`).

Heavy imports happen inside the handlers so ``alpasim-policy --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpasim_policy.bench import add_output_arguments


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "score",
        help="score the rollouts of a run folder (writes scenes.csv, leaderboard.csv/.md)",
        description="Score DIR/rollouts/<policy>/*.npz closed-loop and write the leaderboard into DIR.",
    )
    s.add_argument("run_dir", type=Path)
    s.add_argument("--cache", default="auto", help="metric cache folder, 'auto' (default) or 'none'")
    s.add_argument("--rebuild", action="store_true", help="rebuild stale or corrupt caches in --cache")
    s.add_argument("--profile", choices=("project", "navsim"), default="project",
                   help="scoring profile: project (default) or navsim (NAVSIM's scorer, quirks included)")  # fmt: skip
    s.set_defaults(func=_cmd_score)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "scorer", help="4096 proposals x 41 states on one bundled scene (goal <= 2 s); cache build per scene"
    )
    p.add_argument("--suite", default="bundled")
    p.add_argument("--scene", default=None, help="scene for the proposal benchmark (default: most agents)")
    p.add_argument("--proposals", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    p.add_argument(
        "--navsim-cmd",
        default=None,
        help="command that times NAVSIM's own simulate + score on the 3-lane case file appended as its last "
        "argument and prints a JSON line (run in a scratch env; see scoring/bench.py)",
    )
    p.add_argument("--navsim-only", action="store_true", help="only the side-by-side run against NAVSIM")
    p.set_defaults(func=_cmd_bench)


# ----------------------------------------------------------------------------- handlers


def _cmd_score(args: argparse.Namespace) -> int:
    from alpasim_policy.caching import IDM_REFERENCE
    from alpasim_policy.scoring.report import score_run

    cache = None if args.cache == "none" else args.cache
    board = score_run(
        args.run_dir, cache_dir=cache, rebuild=args.rebuild, reference=IDM_REFERENCE, profile=args.profile
    )
    print(board)
    return 1 if board.errors else 0  # rollouts that could not be scored were reported on stderr


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

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.caching import IDM_REFERENCE
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene, load_suite
    from alpasim_policy.scoring.cache import build_world, world_to_bytes
    from alpasim_policy.scoring.openloop import score_states, simulate

    rows = _navsim_rows(args)
    if args.navsim_only:
        write_rows(rows, args)
        return 0
    paths = load_suite(args.suite)
    scenes = [load_scene(p) for p in paths]
    # cache build per scene (idm reference rollout + serialisation)
    build = []
    for sc in scenes:
        t = time.perf_counter()
        world_to_bytes(build_world(sc, IDM_REFERENCE))
        build.append(time.perf_counter() - t)
    if args.scene:
        scene = load_scene(find_scene(args.scene))
    else:
        scene = max(scenes, key=lambda s: (len(s.agents), len(s.map.lanes)))
    world = build_world(scene, IDM_REFERENCE).prepare()
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
    write_rows(
        rows
        + [
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
        args,
    )
    print_summary(summary)
    return 0


def _navsim_rows(args: argparse.Namespace) -> list[dict]:
    """The side-by-side row: simulate + score of the 3-lane / 20-vehicle case here and in NAVSIM."""
    import os
    import tempfile

    from alpasim_policy.bench import print_summary
    from alpasim_policy.scoring.bench import three_lane_case, time_navsim, time_project

    case = three_lane_case(args.proposals)
    n = len(case["plans"])
    ours = time_project(case, repeats=args.repeats)
    total = ours["simulate_s"] + ours["score_s"]
    summary = {
        "benchmark": "scorer-vs-navsim",
        "proposals": n,
        "states": 41,
        **{k: round(v, 4) for k, v in ours.items()},
    }
    result = (
        f"alpasim-policy {total:.2f} s (simulate {ours['simulate_s']:.2f} + score {ours['score_s']:.2f}, median of "
        f"{max(1, args.repeats)}); one proposal {ours['one_proposal_s'] * 1e3:.1f} ms"
    )
    load = os.getloadavg()[0]
    ratio = f"one proposal {ours['one_proposal_s'] * 1e3 / 5.0:.2f}x of the 5 ms goal"
    if args.navsim_cmd:
        with tempfile.TemporaryDirectory() as tmp:
            nav = time_navsim(case, args.navsim_cmd, Path(tmp))
        nav_total = float(nav["simulate_s"]) + float(nav["score_s"])
        summary.update(
            navsim_simulate_s=nav["simulate_s"], navsim_score_s=nav["score_s"], speedup=nav_total / total
        )
        result += (
            f"; NAVSIM's own PDMSimulator + PDMScorer {nav_total:.1f} s (simulate {nav['simulate_s']:.1f} + score "
            f"{nav['score_s']:.1f}), same case, same run"
        )
        ratio = f"{nav_total / total:.0f}x faster than NAVSIM (goal >= 50x); " + ratio
    result += f" (load avg {load:.1f} on the machine)"
    print_summary(summary)
    return [
        {
            "benchmark": f"scorer vs NAVSIM: simulate + score {n} proposals x 41 states (3-lane road, 20 vehicles)",
            "result": result,
            "ratio": ratio,
        }
    ]
