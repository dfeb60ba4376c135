"""``alpasim-policy bench env``: how fast the closed-loop env ticks (no rendering, BEV, cameras).

Each measurement drives full episodes of the bundled scenes with a fixed straight-ahead plan, so
only the env is timed (tracker + bicycle, agents, collisions, drivable area, observation), on one
core (the env is single-threaded numpy). Rows go to BENCHMARKS.md; the last line is JSON.
"""

from __future__ import annotations

import argparse

TARGET_TICKS_PER_S = 2000.0


def _drive(envs: list, max_ticks: int | None = None) -> tuple[int, float]:
    """Episodes with a 5 m/s straight plan: each env once, or round robin until ``max_ticks``.

    Returns (ticks, seconds); resets (per-episode setup) are not timed.
    """
    import itertools
    import time

    import numpy as np

    plan = np.zeros((64, 3))
    plan[:, 0] = 0.5 * np.arange(1, 65)
    ticks, elapsed = 0, 0.0
    for env in itertools.cycle(envs) if max_ticks else envs:
        env.reset(seed=0)
        t0 = time.perf_counter()
        while True:
            _, _, term, trunc, _ = env.step(plan)
            ticks += 1
            if term or trunc or (max_ticks and ticks >= max_ticks):
                break
        elapsed += time.perf_counter() - t0
        if max_ticks and ticks >= max_ticks:
            break
    return ticks, elapsed


def run(args: argparse.Namespace) -> int:
    import time
    import warnings

    import numpy as np

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite
    from alpasim_policy.sim.env import LogReplayEnv
    from alpasim_policy.sim.tracker import simulate_plans

    warnings.filterwarnings("ignore")
    scenes = [load_scene(p) for p in load_suite(args.suite)]
    rows, summary = [], {}

    # 1. No rendering, log-replay agents (the default config), every bundled scene once.
    envs = [LogReplayEnv(scene=s) for s in scenes]
    _drive(envs[:1], 50)  # warm caches
    ticks, sec = _drive(envs)
    tps = ticks / sec
    summary["ticks_per_s"] = tps
    rows.append({"benchmark": f"env ticks/s, no rendering ({args.suite}, {len(scenes)} scenes, {ticks} ticks)",
                 "result": f"{tps:.0f} ticks/s ({1e6 / tps:.0f} us/tick)",
                 "ratio": f"{tps / TARGET_TICKS_PER_S:.2f}x the 2,000 ticks/s goal"})  # fmt: skip

    # 2. Reactive (IDM) agents.
    envs = [LogReplayEnv(scene=s, config="reactive") for s in scenes]
    ticks, sec = _drive(envs)
    summary["ticks_per_s_reactive"] = ticks / sec
    rows.append({"benchmark": f"env ticks/s, reactive IDM agents, no rendering ({ticks} ticks)",
                 "result": f"{ticks / sec:.0f} ticks/s", "ratio": ""})  # fmt: skip

    # 3. BEV in the observation (default 256x256 raster).
    envs = [LogReplayEnv(scene=s, config={"bev": {"enabled": True}}) for s in scenes[:3]]
    _drive(envs[:1], 5)
    ticks, sec = _drive(envs, args.render_ticks)
    bev_tps = ticks / sec
    summary["ticks_per_s_bev"] = bev_tps
    bev_ms = max(1e3 / bev_tps - 1e3 / tps, 0.0)
    rows.append({"benchmark": f"env ticks/s with BEV 256x256 in the observation ({ticks} ticks)",
                 "result": f"{bev_tps:.0f} ticks/s (BEV ~{bev_ms:.2f} ms/frame)", "ratio": ""})  # fmt: skip

    # 4. Cameras (the preset a vision policy asks for).
    cam = {
        "enabled": True,
        "preset": args.camera_preset,
        "width": args.camera_width,
        "height": args.camera_height,
    }
    envs = [LogReplayEnv(scene=s, config={"cameras": cam}) for s in scenes[:3]]
    rig = envs[0].camera_rig
    n_cam = len(rig.names)
    res = f"{rig[rig.names[0]].width}x{rig[rig.names[0]].height}"
    _drive(envs[:1], 3)
    ticks, sec = _drive(envs, max(10, args.render_ticks // 2))
    cam_tps = ticks / sec
    per_cam_ms = max(1e3 / cam_tps - 1e3 / tps, 0.0) / n_cam
    summary.update({"ticks_per_s_cameras": cam_tps, "ms_per_camera": per_cam_ms, "cameras": n_cam,
                    "camera_resolution": res})  # fmt: skip
    rows.append({"benchmark": f"env ticks/s with {n_cam} cameras {args.camera_preset} {res} ({ticks} ticks)",
                 "result": f"{cam_tps:.1f} ticks/s, {per_cam_ms:.1f} ms per camera image", "ratio": ""})  # fmt: skip

    # 5. The scorer-facing batched simulation: 4096 plans x 40 steps.
    rng = np.random.default_rng(0)
    t = 0.1 * np.arange(1, 41)
    plans = np.stack([10 * t, 0.1 * t**2, 0.02 * t], axis=-1)[None] + rng.normal(0, 0.05, (4096, 40, 3))
    start = np.tile([0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0], (4096, 1))
    simulate_plans(start[:8], plans[:8])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        simulate_plans(start, plans, 40)
        times.append(time.perf_counter() - t0)
    best = min(times)
    summary["simulate_plans_4096x40_s"] = best
    rows.append({"benchmark": "simulate_plans: LQR + bicycle, 4096 plans x 40 steps",
                 "result": f"{best * 1e3:.0f} ms (best of 3)", "ratio": f"{best:.2f} of the 1 s budget"})  # fmt: skip

    for r in rows:
        print(f"{r['benchmark']}: {r['result']}  {r['ratio']}")
    write_rows(rows, args)
    print_summary(summary)
    return 0
