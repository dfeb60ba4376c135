"""``alpasim-policy bench scorer``: 4096 proposals scored on a bundled scene, cache build per scene, and NAVSIM side by side.

The NAVSIM comparison: one synthetic 3-lane road with 20 vehicles, 4096 plans, simulated and scored here and (optionally) by NAVSIM's own code.

Why synthetic: NAVSIM's scorer needs nuPlan objects, so the comparison uses a scene both sides can
build from the same arrays (:func:`three_lane_case`). The case is written to an ``.npz``; an
external command (``--navsim-cmd``, run in a scratch environment with NAVSIM installed -- never a
project dependency) reads it, runs NAVSIM's ``PDMSimulator.simulate_proposals`` and
``PDMScorer.score_proposals`` on the same plans and prints a JSON line with its timings. The
ratio of the two is what ``BENCHMARKS.md`` records.

Case file (``np.savez``): ``lanes`` (L, 4, 2), ``lane_on_route`` (L,), ``drivable`` (D, 4, 2),
``centerline`` (P, 2), ``agent_state`` (M, 41, 5), ``agent_size`` (M, 2), ``start`` (9,) ego row,
``plans`` (B, 40, 3) x, y, heading in the scene frame at 0.1 s steps. Expected JSON from the
command: ``{"simulate_s": float, "score_s": float, "proposals": int}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from alpasim_policy.scoring.api import Agents, ScoringMap, world_from_arrays

STATES = 41


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def three_lane_case(proposals: int = 4096, vehicles: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The benchmark scene: three 3.5 m lanes along +x, ``vehicles`` cars at constant speed, the ego
    at the origin at 10 m/s in the middle lane, and ``proposals`` plans (speed 0.3-1.4x, lateral
    drift up to +-3 m)."""
    rng = np.random.default_rng(seed)
    ys = (-3.5, 0.0, 3.5)
    lanes = np.array([_rect(-100, 400, y - 1.75, y + 1.75) for y in ys])
    drivable = np.array([_rect(-100, 400, -5.25, 5.25)])
    centerline = np.stack([np.linspace(-100, 400, 501), np.zeros(501)], -1)
    t = np.arange(STATES) * 0.1
    state = np.zeros((vehicles, STATES, 5))
    for m in range(vehicles):
        lane = ys[m % 3]
        x0 = -40.0 + 190.0 * (m // 3) / max(1, (vehicles - 1) // 3) + rng.uniform(-3, 3)
        if abs(lane) < 1e-9 and -15.0 < x0 < 15.0:  # keep the ego's own spot free
            x0 += 30.0
        v = rng.uniform(7.0, 13.0)
        state[m, :, 0] = x0 + v * t
        state[m, :, 1] = lane
        state[m, :, 3] = v
    size = np.tile([[4.6, 1.9]], (vehicles, 1))
    start = np.array([0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    scale = rng.uniform(0.3, 1.4, proposals)
    drift = rng.uniform(-3.0, 3.0, proposals)
    tt = t[1:]
    ramp = (tt / tt[-1]) ** 2
    x = 10.0 * tt[None] * scale[:, None]
    y = drift[:, None] * ramp[None]
    dx = np.diff(np.concatenate([np.zeros((proposals, 1)), x], 1), axis=1)
    dy = np.diff(np.concatenate([np.zeros((proposals, 1)), y], 1), axis=1)
    plans = np.stack([x, y, np.arctan2(dy, dx)], -1)
    return {
        "lanes": lanes,
        "lane_on_route": np.ones(len(lanes), bool),
        "drivable": drivable,
        "centerline": centerline,
        "agent_state": state,
        "agent_size": size,
        "start": start,
        "plans": plans,
    }


def _project_once(world, start: np.ndarray, plans: np.ndarray) -> tuple[float, float, np.ndarray]:
    from alpasim_policy.scoring.openloop import score_states, simulate

    t = time.perf_counter()
    states = simulate(world, start[:7], plans, STATES - 1)
    t_sim = time.perf_counter() - t
    t = time.perf_counter()
    res = score_states(
        world, states, 0, human_filter=False, history=np.zeros((0, 7)), reference_from_world=False
    )
    return t_sim, time.perf_counter() - t, res.epdms


def time_project(case: dict[str, np.ndarray], repeats: int = 3, single_repeats: int = 50) -> dict[str, float]:
    """Median simulate / score times for all plans, and the median latency of one plan alone."""
    road = ScoringMap(lanes=list(case["lanes"]), centerline=case["centerline"], lane_on_route=case["lane_on_route"],
                      drivable=list(case["drivable"]))  # fmt: skip
    agents = Agents(state=case["agent_state"], size=case["agent_size"])
    world = world_from_arrays(road, STATES, agents).prepare()
    sims, scores, epdms = [], [], None
    for _ in range(max(1, repeats)):
        a, b, epdms = _project_once(world, case["start"], case["plans"])
        sims.append(a)
        scores.append(b)
    one = []
    for i in range(max(1, single_repeats)):
        a, b, _ = _project_once(world, case["start"], case["plans"][i : i + 1])
        one.append(a + b)
    return {
        "simulate_s": statistics.median(sims),
        "score_s": statistics.median(scores),
        "one_proposal_s": statistics.median(one),
        "mean_epdms": float(np.mean(epdms)),
    }


def time_navsim(case: dict[str, np.ndarray], command: str, workdir: Path) -> dict[str, float]:
    """Run the external NAVSIM timing command on the case; its last stdout line is the JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "navsim_bench_case.npz"
    np.savez(path, **case)
    out = subprocess.run([*shlex.split(command), str(path)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"--navsim-cmd failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"--navsim-cmd printed no JSON line; stdout: {out.stdout[-500:]!r}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- the command


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


def run(args: argparse.Namespace) -> int:
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
