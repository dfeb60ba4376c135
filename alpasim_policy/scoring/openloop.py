"""Open-loop scoring (NAVSIM's protocol), batched over N proposals.

One plan per proposal, made at scene step ``t0``, is simulated 4 s (40 steps of 0.1 s) with the
sim's LQR tracker driving its kinematic bicycle (:func:`alpasim_policy.sim.tracker.simulate_plans`),
starting from the ego state at t0. The 41 resulting states are scored against the scene:

* ``agents="log"``: other agents follow their logged future (NAVSIM's non-reactive rule) --
  for evaluation;
* ``agents="constant_velocity"``: only what is known at t0: agents seen at t0 are rolled
  forward at their current velocity and lights hold their current state. Nothing from the
  log's future is read, so a policy may use this to rank its own samples.

The reference planner (the idm baseline's rollout, from the metric cache; the human log when
there is none) is scored alongside for EP normalisation, and the human log for the human
filter, exactly as NAVSIM does with PDM-Closed and the human trajectory. With
``agents="constant_velocity"`` and ``human_filter=False`` no logged future enters at all (the
reference is replaced by the best safe proposal of the batch; see :func:`score_states`).

Speed: every metric is a numpy / shapely array operation over all proposals; ``alpasim-policy bench
scorer`` times 4096 proposals x 41 states, side by side with NAVSIM's own code with ``--navsim-cmd``
(numbers in BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alpasim_policy.errors import PolicyOutputError
from alpasim_policy.scoring import pdms as P
from alpasim_policy.scoring.metrics import comfort as C
from alpasim_policy.scoring.metrics import registry as R
from alpasim_policy.scoring.metrics._common import AgentWindow, EgoGeometry, agent_window
from alpasim_policy.scoring.metrics.ep import ego_progress
from alpasim_policy.scoring.profiles import DEFAULT_PROFILE, ScoringProfile, get_profile
from alpasim_policy.scoring.world import ScoringWorld

HORIZON_STEPS = 40


@dataclass
class ScoreResult:
    """Per-proposal sub-metrics (filtered when the human filter ran) and scores, each (B,).

    ``profile`` names the scoring profile (:mod:`alpasim_policy.scoring.profiles`); ``valid`` says
    per sub-metric where it could be evaluated (EC without a previous plan: False, value 1).
    """

    metrics: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]  # before the human filter
    human: dict[str, float] | None
    progress_m: np.ndarray
    states: np.ndarray  # (B, S, 7|9) what was scored
    profile: str = DEFAULT_PROFILE
    valid: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def pdms(self) -> np.ndarray:
        return self.metrics["PDMS"]

    @property
    def epdms(self) -> np.ndarray:
        return self.metrics["EPDMS"]


_NOT_EP = tuple(k for k in R.SUB_METRICS if k != "EP")


def _context(
    world: ScoringWorld,
    states: np.ndarray,
    win: AgentWindow,
    history: np.ndarray | None,
    previous: np.ndarray | None,
    profile: ScoringProfile | str | None,
    previous_offset: int,
) -> R.MetricContext:
    ego = EgoGeometry(states, world, profile)
    ctx = R.MetricContext(ego, win, world.dt, history, previous, previous_offset)
    R.compute_all(ctx, _NOT_EP)
    return ctx


def raw_metrics(
    world: ScoringWorld,
    states: np.ndarray,
    win: AgentWindow,
    history: np.ndarray | None = None,
    previous: np.ndarray | None = None,
    *,
    profile: ScoringProfile | str | None = None,
    previous_offset: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All sub-metrics except EP (which needs the reference), plus raw progress (B,)."""
    ctx = _context(world, states, win, history, previous, profile, previous_offset)
    return {k: r.value for k, r in ctx.results.items()}, ctx.progress


def _multiplier(m: dict[str, np.ndarray]) -> np.ndarray:
    return R.multiplier(m, "EPDMS")


def history_before(world: ScoringWorld, step: int, n: int = C.HISTORY_STEPS) -> np.ndarray:
    """The logged ego's ``n`` states before ``step`` (fewer near the scene start)."""
    lo = max(0, step - n)
    return world.human_state[lo:step]


def score_states(
    world: ScoringWorld,
    states: np.ndarray,
    start_step: int,
    *,
    agents: str = "log",
    agent_state: np.ndarray | None = None,
    agent_valid: np.ndarray | None = None,
    human_filter: bool = True,
    history: np.ndarray | None = None,
    previous: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    human_states: np.ndarray | None = None,
    profile: ScoringProfile | str | None = None,
    previous_offset: int = 0,
    win: AgentWindow | None = None,
    reference_from_world: bool = True,
) -> ScoreResult:
    """Score already-simulated ego states (B, S, 7|9) whose first row is at scene step ``start_step``.

    ``human_states`` (S, 7) is what the human filter scores (default: the logged ego over the
    same steps; :func:`score_plans` passes the log's future run through the tracker).

    ``reference`` (S, 7) overrides the progress reference (default: the world's reference
    rollout over the same steps). With ``agents="constant_velocity"`` and no explicit reference,
    no logged future is used: EP is normalised by the best safe proposal of the batch (NAVSIM's
    batch rule), so samples that make less progress rank lower.

    ``profile`` (default ``project``): with ``navsim``, EP is normalised over the whole batch plus
    the reference (``score_proposals``) and the human is scored alone without history (``pdm_score``);
    the other switches act inside the metrics (see :mod:`alpasim_policy.scoring.profiles`).
    ``previous_offset``: steps by which ``previous`` started earlier (see EC).
    ``reference_from_world=False``: no reference unless ``reference`` is given (the batch rule).
    """
    prof = get_profile(profile)
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    B, S = st.shape[:2]
    if win is None:
        win = agent_window(world, start_step, S, agents, agent_state, agent_valid)
    if history is None:
        history = history_before(world, start_step)
    ctx = _context(world, st, win, history, previous, prof, previous_offset)
    m = {k: r.value for k, r in ctx.results.items()}
    prog = ctx.progress

    ref_states = reference
    if ref_states is None and agents == "log" and reference_from_world:
        ref_states = _slice_steps(world.reference, start_step, S)
    want_human = human_filter and agents == "log"
    hum = None
    if want_human:
        hum = _slice_steps(world.human_state, start_step, S) if human_states is None else human_states
    ref_prog, ref_mult, human = 0.0, 0.0, None
    if prof.human_scored_alone:
        if ref_states is not None:
            em, eprog = raw_metrics(world, np.asarray(ref_states)[None], win, history, None, profile=prof)
            ref_prog, ref_mult = float(eprog[0]), float(_multiplier(em)[0])
        if hum is not None:
            hm, hprog = raw_metrics(world, np.asarray(hum)[None], win, None, None, profile=prof)
            human = {k: float(v[0]) for k, v in hm.items()}
            human["EP"] = float(
                ego_progress(hprog, _multiplier(hm), float(np.max(hprog * _multiplier(hm))), 1.0)[0]
            )
    else:
        extra = []
        if ref_states is not None:
            extra.append(ref_states)
        if hum is not None:
            extra.append(hum)
        if extra:
            width = min(np.shape(e)[-1] for e in extra)
            em, eprog = raw_metrics(world, np.stack([np.asarray(e)[..., :width] for e in extra]), win, history, None,
                                    profile=prof)  # fmt: skip
            i = 0
            if ref_states is not None:
                ref_prog, ref_mult = float(eprog[0]), float(_multiplier(em)[0])
                i = 1
            if hum is not None:
                human = {k: float(v[i]) for k, v in em.items()}
                hm = {k: em[k][i : i + 1] for k in em}
                human["EP"] = float(ego_progress(eprog[i : i + 1], _multiplier(hm), ref_prog, ref_mult)[0])
    mult = _multiplier(m)
    if ref_states is None:
        # no reference planner: NAVSIM's batch rule -- normalise by the best safe proposal
        ref_prog, ref_mult = float(np.max(prog * mult)) if len(prog) else 0.0, 1.0
    elif prof.ep_normalisation == "batch":
        # NAVSIM's score_proposals([reference] + proposals): the best safe progress of the batch
        ref_prog, ref_mult = max(float(np.max(prog * mult)), ref_prog * ref_mult), 1.0
    m["EP"] = ego_progress(prog, mult, ref_prog, ref_mult)
    raw = P.with_scores(m)
    filtered = P.with_scores(P.apply_human_filter(m, human)) if human is not None else raw
    valid = {k: r.valid for k, r in ctx.results.items()}
    valid["EP"] = np.ones(B, bool)
    return ScoreResult(metrics=filtered, raw=raw, human=human, progress_m=prog, states=st, profile=prof.name,
                       valid=valid)  # fmt: skip


def _slice_steps(arr: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows ``start .. start + n - 1`` of a (T, 7) array, the last row repeated past the end."""
    idx = np.clip(start + np.arange(n), 0, len(arr) - 1)
    return np.asarray(arr, np.float64)[idx]


def simulate(
    world: ScoringWorld,
    start: np.ndarray,
    plans: np.ndarray,
    num_steps: int = HORIZON_STEPS,
    with_yaw: bool = False,
) -> np.ndarray:
    """Plans (B, T, 3) scene frame from ``start`` (7,) or (B, 7) -> simulated states (B, num_steps + 1, 7).

    ``with_yaw=True`` appends ``yaw_rate, yaw_accel`` (9 columns) the way NAVSIM's kinematic
    bicycle sets them (``batch_kinematic_bicycle.py``): ``v tan(steer) / wheelbase`` of each state
    and its backward difference over one step (0 for the start row), so comfort reads the same
    signals NAVSIM's scorer reads.
    """
    from alpasim_policy.sim.dynamics import VehicleParams, from_ego_columns, to_ego_columns, yaw_rate
    from alpasim_policy.sim.tracker import simulate_internal, simulate_plans

    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim == 2:
        plans = plans[None]
    start = np.asarray(start, dtype=np.float64)
    if start.ndim == 1:
        start = np.broadcast_to(start, (plans.shape[0], 7))
    params = VehicleParams(
        wheelbase=world.wheelbase,
        length=world.ego_length,
        width=world.ego_width,
        rear_axle_to_center=world.rear_axle_to_center,
    )
    start = np.ascontiguousarray(start)
    if not with_yaw:
        return simulate_plans(start, plans, num_steps=num_steps, params=params)
    # the same steps simulate_plans takes, keeping the internal state for the yaw columns
    traj = simulate_internal(from_ego_columns(start, params), plans, num_steps, params)
    out = np.empty(traj.shape[:-1] + (9,))
    out[..., :7] = to_ego_columns(traj, params)
    out[:, 0, :7] = start
    w = yaw_rate(traj, params)
    out[..., 7] = w
    out[:, 0, 8] = 0.0
    out[:, 1:, 8] = np.diff(w, axis=1) / world.dt
    return out


def score_plans(
    world: ScoringWorld,
    plans: np.ndarray,
    t0: int | None = None,
    *,
    start_state: np.ndarray | None = None,
    agents: str = "log",
    human_filter: bool = True,
    previous_plan: np.ndarray | None = None,
    history: np.ndarray | None = None,
    num_steps: int = HORIZON_STEPS,
    profile: ScoringProfile | str | None = None,
) -> ScoreResult:
    """NAVSIM open-loop scoring of N plans (N, T, 3) (scene frame) made at step ``t0``.

    The simulated states carry the bicycle's yaw rate / yaw acceleration (see :func:`simulate`);
    ``profile`` picks the scoring profile (default ``project``).

    ``start_state`` (7,) defaults to the logged ego at t0 and ``history`` (H, 7), the states
    before it for HC, to the logged past; a closed-loop caller passes the executed ones.
    ``previous_plan`` (T', 3), the plan made one step earlier, enables EC (it is simulated from
    the state one step before: ``history[-1]`` when given, else the log).
    """
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim == 2:
        plans = plans[None]
    if plans.ndim != 3 or plans.shape[-1] != 3 or plans.shape[1] < 1:
        raise PolicyOutputError(
            f"plans: expected (N, T, 3) x, y, heading in the scene frame, got {plans.shape}"
        )
    bad = ~np.isfinite(plans).all(axis=(1, 2))
    if bad.any():
        raise PolicyOutputError(f"plans: proposals {np.flatnonzero(bad)[:5].tolist()} contain NaN/inf")
    t0 = world.t0_index if t0 is None else int(t0)
    if not 0 <= t0 < world.num_steps:
        raise ValueError(f"t0 {t0} outside the scene's {world.num_steps} steps")
    if agents == "log":
        # the log ends: score only the steps it covers (short scenes have < 4 s after t0)
        num_steps = min(num_steps, world.num_steps - 1 - t0)
        if num_steps < 1:
            raise ValueError(f"t0 {t0} is the last step of the scene: nothing to score")
    start = world.human_state[t0] if start_state is None else np.asarray(start_state, np.float64)
    states = simulate(world, start, plans, num_steps, with_yaw=True)
    previous = None
    has_hist = history is not None and len(history) > 0
    if previous_plan is not None and (t0 > 0 or has_hist):
        before = history[-1] if has_hist else world.human_state[t0 - 1]
        prev = simulate(world, before, np.asarray(previous_plan)[None], num_steps + 1)
        previous = prev[:, 1:]  # align: previous plan's states at t0 .. t0 + num_steps
    human_states = None
    if human_filter and agents == "log" and start_state is None:
        # NAVSIM runs the human's logged future through the same tracker before scoring it
        log_plan = _slice_steps(world.human_state, t0 + 1, num_steps)[:, :3]
        human_states = simulate(world, start, log_plan[None], num_steps)[0]
    return score_states(
        world, states, t0, agents=agents, human_filter=human_filter, previous=previous, history=history,
        human_states=human_states, profile=profile,
    )  # fmt: skip


def epdms_scorer(scene, proposals: np.ndarray) -> np.ndarray:
    """``ProposalScorer`` for sample selection: EPDMS (K,) of proposals (K, T, 3) on a t0 view.

    The view (see :func:`alpasim_policy.policies.selection.t0_scene`) already holds only what is
    known at t0 (agents at constant velocity, lights held), so its "log" is safe to read; no
    human filter and no reference beyond the proposals themselves.
    """
    world = ScoringWorld.from_scene(scene)
    t0 = int(scene.metadata.t0_index)
    start = world.human_state[t0]
    states = simulate(world, start, proposals, HORIZON_STEPS)
    res = score_states(world, states, t0, agents="constant_velocity", human_filter=False)
    return res.epdms
