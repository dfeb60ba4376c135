"""Scorer benchmark against NAVSIM: one synthetic 3-lane road with 20 vehicles, 4096 plans, simulated and scored here and (optionally) by NAVSIM's own code.

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
