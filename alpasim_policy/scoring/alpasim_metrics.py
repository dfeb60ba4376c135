"""AlpaSim-style rollout metrics and AlpaSim's scene score (learnt from NVlabs/alpasim's eval).

Per rollout (controlled part only, ego box from the rear-axle states):

* ``collision_front`` / ``collision_rear`` / ``collision_lateral``: the ego box touched another
  box with its front bumper (front-left to front-right corner), else with its rear bumper, else
  elsewhere -- AlpaSim's geometric split, judged at each agent's first contact.
* ``collision_at_fault``: a contact NAVSIM's rules put on the ego (:mod:`.metrics.nc`).
* ``offroad``: a box corner left the drivable area at some step.
* ``progress_ratio``: how far along the logged path the ego got, as a fraction of the logged
  path from the first controlled state to the end (AlpaSim's ``progress_rel_to_total``; may
  exceed 1).
* ``dist_to_log_max_m`` / ``dist_to_log_mean_m``: rear axle vs the logged rear axle at the same
  step; ``lateral_dist_to_log_max_m``: distance to the logged path (ignoring overshoot past its
  end); ``left_corridor``: that distance reached 4 m (AlpaSim's corridor).
* ``plan_deviation_m``: mean over consecutive ticks of the mean distance between the new plan
  and the previous one over the times both cover (how much the policy changes its mind).
* ``min_ade_m``: with sampled trajectories, per tick the smallest ADE of the K samples against
  the logged future over the horizon both cover, averaged over ticks (NaN without samples).
* ``valid_plan_share``: the fraction of the ticks the policy was asked for a plan on which it
  gave a valid one (no exception, NaN, wrong shape or too few rows); 1 without failures.
* ``scene_score``: 0 after an at-fault collision, off-road, or leaving the corridor; else the
  progress ratio clipped to [0, 1] and divided by 0.8, capped at 1 (1 when the log moves less
  than 5 m); times ``valid_plan_share`` (the project's rule, as for the closed-loop windows: the
  progress eval's fallback makes while the policy fails is not the policy's, so a policy that
  fails on every tick scores 0 rather than what coasting would).
* ``distance_km``: what the ego drove (for collisions per km).
"""

from __future__ import annotations

import numpy as np
import shapely

from alpasim_policy.scoring.metrics._common import EgoGeometry, agent_window
from alpasim_policy.scoring.metrics.nc import Contacts
from alpasim_policy.scoring.world import ScoringWorld
from alpasim_policy.sim.collision import segment_touches_box

CORRIDOR_M = 4.0
PROGRESS_SATURATION = 0.8
MIN_LOG_DISTANCE_M = 5.0


def _lateral_to_path(path: shapely.LineString, end_dir: np.ndarray | None, pts: np.ndarray) -> np.ndarray:
    g = shapely.points(pts)
    d = shapely.distance(path, g)
    if end_dir is None:
        return d
    s = shapely.line_locate_point(path, g)
    past = s >= path.length - 1e-9
    end = np.asarray(path.coords)[-1]
    off = pts - end
    lat = np.abs(off[:, 0] * end_dir[1] - off[:, 1] * end_dir[0])
    return np.where(past, lat, d)


def rollout_metrics(
    world: ScoringWorld,
    rollout,
    first_index: int,
    contacts: Contacts | None,
) -> dict[str, float]:
    steps = np.asarray(rollout.steps, dtype=np.int64)
    ego = np.asarray(rollout.ego_state, dtype=np.float64)[first_index:]
    st = steps[first_index:]
    geo = EgoGeometry(ego[None], world)
    out: dict[str, float] = {}
    # collisions by bumper
    front = rear = lateral = 0
    at_fault = 0
    if contacts is not None and len(contacts.b):
        c = geo.corners[0, contacts.s]
        win = agent_window(world, int(st[0]), len(st), "log", *_scene_agents(world, rollout))
        ab = win.corners[contacts.s, contacts.m]
        f = segment_touches_box(c[:, 0], c[:, 3], ab)
        r = segment_touches_box(c[:, 1], c[:, 2], ab) & ~f
        front, rear = int(f.sum()), int(r.sum())
        lateral = int(len(f) - front - rear)
        at_fault = int(contacts.at_fault.sum())
    out["collision_front"] = float(front > 0)
    out["collision_rear"] = float(rear > 0)
    out["collision_lateral"] = float(lateral > 0)
    out["collision_at_fault"] = float(at_fault > 0)
    out["collisions_at_fault_count"] = float(at_fault)
    out["offroad"] = float(geo.areas["non_drivable"].any())
    # distance driven
    d = np.linalg.norm(np.diff(ego[:, :2], axis=0), axis=1).sum() if len(ego) > 1 else 0.0
    out["distance_km"] = float(d) / 1000.0
    # log comparison
    idx = np.clip(st, 0, world.num_steps - 1)
    log = world.human_state[idx]
    dist = np.linalg.norm(ego[:, :2] - log[:, :2], axis=1)
    out["dist_to_log_max_m"] = float(dist.max())
    out["dist_to_log_mean_m"] = float(dist.mean())
    log_path = world.human_state[int(st[0]) :, :2]
    keep = np.concatenate([[True], np.linalg.norm(np.diff(log_path, axis=0), axis=1) > 1e-6])
    log_path = log_path[keep]
    if len(log_path) >= 2:
        line = shapely.linestrings(log_path)
        seg = log_path[-1] - log_path[-2]
        end_dir = seg / np.linalg.norm(seg)
        log_len = float(line.length)
        lat = _lateral_to_path(line, end_dir, ego[:, :2])
        s0 = shapely.line_locate_point(line, shapely.points(log_path[0]))
        s1 = shapely.line_locate_point(line, shapely.points(ego[-1, :2]))
        progress = float((s1 - s0) / log_len) if log_len > 0 else 1.0
    else:
        log_len, lat, progress = 0.0, dist, 1.0
    out["progress_ratio"] = progress
    out["log_distance_m"] = log_len
    out["lateral_dist_to_log_max_m"] = float(np.max(lat))
    out["left_corridor"] = float(np.max(lat) >= CORRIDOR_M)
    out["plan_deviation_m"] = plan_deviation(np.asarray(rollout.plans, np.float64)[first_index:])
    samples = getattr(rollout, "samples", None)
    out["min_ade_m"] = (
        min_ade(np.asarray(samples, np.float64)[first_index:], world, st)
        if samples is not None
        else float("nan")
    )
    out["valid_plan_share"] = valid_plan_share(rollout)
    out["scene_score"] = scene_score(out)
    return out


def valid_plan_share(rollout) -> float:
    """Fraction of the ticks a plan was asked for (each state before a controlled one) without a
    policy failure; 1.0 when the rollout records no failures."""
    controlled = np.asarray(rollout.controlled, bool)
    asked = np.zeros(len(controlled), bool)
    asked[:-1] = controlled[1:]
    pf = getattr(rollout, "policy_failure", None)
    if pf is None or not asked.any():
        return 1.0
    return float(1.0 - np.asarray(pf, bool)[asked].mean())


def _scene_agents(world: ScoringWorld, rollout):
    from alpasim_policy.scoring.closedloop import scene_arrays

    return scene_arrays(
        world, rollout.steps, np.asarray(rollout.agent_state), np.asarray(rollout.agent_valid)
    )


def plan_deviation(plans: np.ndarray) -> float:
    """Mean distance (m) between each plan and the previous tick's plan over their common times."""
    vals = []
    for i in range(1, len(plans)):
        a, b = plans[i], plans[i - 1]
        # plan i row j is at time i + j + 1; plan i - 1 row j + 1 is at the same time
        n = min(len(a), len(b) - 1)
        if n <= 0:
            continue
        pa, pb = a[:n, :2], b[1 : n + 1, :2]
        ok = np.all(np.isfinite(pa), axis=1) & np.all(np.isfinite(pb), axis=1)
        if ok.any():
            vals.append(float(np.linalg.norm(pa[ok] - pb[ok], axis=1).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def min_ade(samples: np.ndarray, world: ScoringWorld, steps: np.ndarray) -> float:
    """Mean over ticks of min over K samples of the ADE against the logged future (rear axle)."""
    vals = []
    T = world.num_steps
    for i, k in enumerate(np.asarray(steps, np.int64)):
        if i >= len(samples):
            break
        smp = samples[i]  # (K, Tp, 3)
        n = min(smp.shape[1], T - 1 - int(k))
        if n <= 0:
            continue
        fut = world.human_state[int(k) + 1 : int(k) + 1 + n, :2]
        xy = smp[:, :n, :2]
        ok = np.all(np.isfinite(xy), axis=(1, 2))
        if not ok.any():
            continue
        ade = np.linalg.norm(xy[ok] - fut[None], axis=-1).mean(axis=1)
        vals.append(float(ade.min()))
    return float(np.mean(vals)) if vals else float("nan")


def scene_score(m: dict[str, float]) -> float:
    """AlpaSim's scene score from the rollout metrics above."""
    if m["collision_at_fault"] or m["offroad"] or m["left_corridor"]:
        return 0.0
    share = float(m.get("valid_plan_share", 1.0))
    if m["log_distance_m"] < MIN_LOG_DISTANCE_M:
        return share
    return share * float(min(min(max(m["progress_ratio"], 0.0), 1.0) / PROGRESS_SATURATION, 1.0))
