"""TTC: time to collision within bound (NAVSIM weighted metric, {0, 1}, weight 5).

At every scored state ``s`` (up to the last one that still has 0.9 s of future), the ego box is
projected 0, 0.3, 0.6 and 0.9 s ahead at its current speed along its current heading and
checked against the agents at ``s + k``. Each (proposal, agent) pair is judged at its first
such contact (time first, then projection): it breaks TTC if the agent is ahead (within 30 deg
of the ego heading, seen from the rear axle), or if the ego is in several lanes, off the
drivable area or in an intersection and the agent is not behind (beyond 150 deg); otherwise the
agent is ignored from then on. States where the ego is slower than 5 mm/s are skipped, and
agents touching the ego at the first state are ignored, as in NAVSIM.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scoring.metrics._common import (
    AHEAD_ANGLE,
    BEHIND_ANGLE,
    TTC_STOPPED_SPEED,
    AgentWindow,
    EgoGeometry,
    first_per_pair,
    overlapping_pairs,
    relative_angle,
)

PROJECTION_STEPS = (0, 3, 6, 9)  # 0 .. 0.9 s at 0.1 s


def time_to_collision(ego: EgoGeometry, win: AgentWindow, dt: float = 0.1) -> np.ndarray:
    """(B,) TTC."""
    B, S = ego.shape
    out = np.ones(B)
    n_eval = S - max(PROJECTION_STEPS)
    if n_eval <= 0 or win.num_agents == 0:
        return out
    h = ego.heading[:, :n_eval]
    vel = ego.speed[:, :n_eval, None] * np.stack([np.cos(h), np.sin(h)], -1)  # (B, n, 2)
    # all projections in one pass: stack them along the step axis (index ki * n_eval + s)
    k_arr = np.asarray(PROJECTION_STEPS)
    shift = vel[:, None] * (k_arr * dt)[None, :, None, None]  # (B, K, n, 2)
    corners = (ego.corners[:, None, :n_eval] + shift[..., None, :]).reshape(B, -1, 4, 2)
    center = (ego.center[:, None, :n_eval] + shift).reshape(B, -1, 2)
    agent_step = (np.arange(n_eval)[None] + k_arr[:, None]).reshape(-1)
    b, sk, m = overlapping_pairs(corners, center, ego.half_diag, win, agent_step=agent_step)
    ki, s = np.divmod(sk, n_eval)
    moving = ego.speed[b, s] >= TTC_STOPPED_SPEED
    b, s, m, ki = b[moving], s[moving], m[moving], ki[moving]
    first = first_per_pair(b, m, s * len(PROJECTION_STEPS) + ki)
    b, s, m, ki = b[first], s[first], m[first], ki[first]
    if ego.profile.ignore_initial_contacts:
        initial = (s == 0) & (ki == 0)
        b, s, m, ki = b[~initial], s[~initial], m[~initial], ki[~initial]
    if not len(b):
        return out
    k_steps = np.asarray(PROJECTION_STEPS)[ki]
    agent_xy = win.state[s + k_steps, m, :2]
    ang = relative_angle(ego.rear_xy[b, s], ego.heading[b, s], agent_xy)
    a = ego.areas
    rear_in_inter = ego.world.in_intersection(ego.rear_xy[b, s], strict=ego.strict)
    risky_area = a["multiple_lanes"][b, s] | a["non_drivable"][b, s] | rear_in_inter
    violation = (ang < AHEAD_ANGLE) | (risky_area & ~(ang > BEHIND_ANGLE))
    out[b[violation]] = 0.0
    return out
