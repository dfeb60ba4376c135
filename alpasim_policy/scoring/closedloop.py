"""Closed-loop scoring of one env rollout (``rollouts/<policy>/<scene_id>.npz``).

A rollout is what the car actually did, tick by tick, with the agents as the env simulated them
(log replay or reactive IDM). It is scored two ways and combined:

* **Windows.** From the first controlled tick, every 0.5 s (5 ticks) a window of up to 4 s
  (41 states; shorter near the end, at least 1 s) of the executed ego states is scored like an
  open-loop proposal: agents are the rollout's simulated agents over the same steps, HC sees the
  15 executed states before the window, EC compares the plan made at the window's first tick
  with the plan made one tick earlier (both simulated 4 s with the sim's tracker from the state
  they were made at), EP is normalised by the idm reference's progress over the same steps.
  The weighted metrics (EP, TTC, C, HC, LK, EC) are averaged over windows.
* **Policy failures cost.** A window that starts at a tick where the policy gave no valid new
  plan (the rollout's ``policy_failure``: an exception, NaN/inf, a wrong shape, fewer than 10
  rows) scores 0: every weighted metric of that window is set to 0 (``failed`` = 1 in its row),
  so the window's PDMS / EPDMS term is 0 whatever the fallback plan did. Without this a policy
  that fails on every tick would score what eval's coasting fallback scores (constant velocity's
  EPDMS). A deadline miss with the previous plan kept is not a failure (the car computer had a
  valid plan). NAVSIM 2.0 marks an agent that raises as an invalid token (NaN results, listed
  as failed, left out of the average of valid results; ``run_pdm_score.py``); leaving failures
  out would reward a policy for failing on its hard ticks, so the project scores them 0 and the
  leaderboard shows the failure rate next to the score.
* **Whole-rollout events.** The multipliers (NC, DAC, DDC, TLC) are evaluated once over the
  whole controlled rollout, so a collision counts once, however many windows contain it.

Scene PDMS / EPDMS are then the formulas of :mod:`alpasim_policy.scoring.pdms` applied to these
columns (the weighted part is linear, so this equals averaging per-window weighted sums). The
human filter compares with the logged ego over the same windows / the same span.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alpasim_policy.scoring import pdms as P
from alpasim_policy.scoring.metrics._common import EgoGeometry, agent_window
from alpasim_policy.scoring.metrics.dac import drivable_area_compliance
from alpasim_policy.scoring.metrics.ddc import driving_direction_compliance
from alpasim_policy.scoring.metrics.ec import extended_comfort
from alpasim_policy.scoring.metrics.nc import Contacts, first_contacts, no_at_fault_collisions
from alpasim_policy.scoring.metrics.tlc import traffic_light_compliance
from alpasim_policy.scoring.openloop import HORIZON_STEPS, score_states, simulate
from alpasim_policy.scoring.profiles import DEFAULT_PROFILE, get_profile
from alpasim_policy.scoring.world import ScoringWorld

WINDOW_STRIDE = 5  # 0.5 s
MIN_WINDOW_STATES = 11  # 1 s
WEIGHTED = ("EP", "TTC", "C", "HC", "LK", "EC")
MULTIPLIERS = ("NC", "DAC", "DDC", "TLC")


@dataclass
class ClosedLoopResult:
    metrics: dict[str, float]  # scene-level sub-metrics, PDMS, EPDMS
    windows: list[dict[str, float]] = field(default_factory=list)
    contacts: Contacts | None = None  # first contacts over the whole rollout (B = 1)
    first_step: int = 0  # scene step of the first controlled state
    profile: str = DEFAULT_PROFILE  # the scoring profile (scoring/profiles.py)


def scene_arrays(world: ScoringWorld, steps: np.ndarray, values: np.ndarray, valid: np.ndarray | None = None):
    """Rollout records (M, N, ...) at scene ``steps`` -> scene-indexed (M, T, ...) arrays + validity."""
    T = world.num_steps
    M = values.shape[0]
    out = np.zeros((M, T) + values.shape[2:], dtype=np.float64)
    ok = np.zeros((M, T), dtype=bool)
    steps = np.asarray(steps, dtype=np.int64)
    inside = (steps >= 0) & (steps < T)
    out[:, steps[inside]] = values[:, inside]
    ok[:, steps[inside]] = True if valid is None else np.asarray(valid, bool)[:, inside]
    return out, ok


def score_rollout(world: ScoringWorld, rollout, human_filter: bool = True, profile=None) -> ClosedLoopResult:
    """Score a :class:`~alpasim_policy.sim.rollout.Rollout` (or anything with its fields).

    ``profile``: the scoring profile (``project``, the default, or ``navsim``; see
    :mod:`alpasim_policy.scoring.profiles`), applied to every window and to the whole-rollout events.
    """
    prof = get_profile(profile)
    steps = np.asarray(rollout.steps, dtype=np.int64)
    ego = np.asarray(rollout.ego_state, dtype=np.float64)
    controlled = np.asarray(rollout.controlled, dtype=bool)
    plans = np.asarray(rollout.plans, dtype=np.float64)
    if not controlled.any():
        raise ValueError(f"rollout of {rollout.scene_id} has no controlled step")
    pf = getattr(rollout, "policy_failure", None)
    failed_tick = np.zeros(len(steps), bool) if pf is None else np.asarray(pf, bool)
    # the state at which the first plan was made is the one just before the first controlled state
    i0 = max(int(np.argmax(controlled)) - 1, 0)
    last = len(steps) - 1
    a_state, a_valid = scene_arrays(
        world, steps, np.asarray(rollout.agent_state), np.asarray(rollout.agent_valid)
    )

    def plan_at(i: int) -> np.ndarray | None:
        if i < 0 or i >= len(plans):
            return None
        p = plans[i]
        p = p[np.all(np.isfinite(p), axis=1)]
        return p if len(p) >= 2 else None

    # ---- windows
    windows: list[dict[str, float]] = []
    for i in range(i0, last + 1, WINDOW_STRIDE):
        n = min(HORIZON_STEPS + 1, last - i + 1)
        # windows shorter than 1 s are dropped, except the first (a rollout cut short early,
        # e.g. truncated after a collision, is still scored on what it has)
        if n < MIN_WINDOW_STATES and (windows or n < 2):
            break
        k = int(steps[i])
        states = ego[i : i + n][None]
        hist = ego[max(i - 15, 0) : i]
        cur_plan, prev_plan = plan_at(i), plan_at(i - 1)
        if cur_plan is not None and prev_plan is not None and i - 1 >= i0:
            sims = simulate(world, ego[i], cur_plan[None], n - 1)
            prev = simulate(world, ego[i - 1], prev_plan[None], n)[:, 1:]
            # EC compares the two plans as simulated; the executed states are scored for the rest
            ec = float(extended_comfort(sims, prev, world.dt)[0])
        else:
            ec = 1.0
        r = score_states(
            world, states, k, agent_state=a_state, agent_valid=a_valid, human_filter=human_filter,
            history=hist, profile=prof,
        )  # fmt: skip
        row = {key: float(v[0]) for key, v in r.metrics.items()}
        row["EC"] = ec  # no human plan exists to filter EC with
        failed = bool(i < len(failed_tick) and failed_tick[i])
        if failed:  # no valid plan at the window's first tick: the window scores 0
            row.update({key: 0.0 for key in WEIGHTED})
        row["failed"] = float(failed)
        row["step"] = float(k)
        windows.append(row)
    # ---- whole-rollout events
    whole = ego[i0:][None]
    geo = EgoGeometry(whole, world, prof)
    win = agent_window(world, int(steps[i0]), whole.shape[1], "log", a_state, a_valid)
    contacts = first_contacts(geo, win)
    events = {
        "NC": float(no_at_fault_collisions(geo, win, contacts=contacts)[0]),
        "DAC": float(drivable_area_compliance(geo)[0]),
        "DDC": float(driving_direction_compliance(geo, world.dt)[0]),
        "TLC": float(traffic_light_compliance(geo, win)[0]),
    }
    if human_filter:
        k0 = int(steps[i0])
        n = whole.shape[1]
        idx = np.clip(k0 + np.arange(n), 0, world.num_steps - 1)
        hg = EgoGeometry(world.human_state[idx][None], world, prof)
        hwin = agent_window(world, k0, n, "log")
        human = {
            "NC": float(no_at_fault_collisions(hg, hwin)[0]),
            "DAC": float(drivable_area_compliance(hg)[0]),
            "DDC": float(driving_direction_compliance(hg, world.dt)[0]),
            "TLC": float(traffic_light_compliance(hg, hwin)[0]),
        }
        events = {key: (1.0 if human[key] == 0.0 else v) for key, v in events.items()}
    metrics = dict(events)
    for key in WEIGHTED:
        metrics[key] = float(np.mean([w[key] for w in windows])) if windows else np.nan
    arr = {key: np.array([v]) for key, v in metrics.items()}
    metrics["PDMS"] = float(P.pdms(arr)[0])
    metrics["EPDMS"] = float(P.epdms(arr)[0])
    metrics["windows"] = float(len(windows))
    metrics["failed_windows"] = float(sum(w["failed"] for w in windows))
    return ClosedLoopResult(
        metrics=metrics, windows=windows, contacts=contacts, first_step=int(steps[i0]), profile=prof.name
    )
