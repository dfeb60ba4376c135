"""Choosing one trajectory among the K a sampling policy proposes, using only what is known at t0.

Why: a flow-matching head returns K plausible futures; which one the car executes matters.
AlpaSim executes the first (``first``). ``medoid`` takes the sample closest to all others
(the consensus, robust to one odd sample). ``scored`` simulates every sample for 4 s with
the env's LQR tracker and bicycle model and keeps the best EPDMS, NAVSIM-style.
``consistent`` keeps the first sample that performs the meta-action its chain of causation
states (the same rule as the leaderboard's reasoning-action consistency), else the first: the
model's own words choose among its samples, nothing about the scene is read.

The rule that makes ``scored`` fair: **selection may only use what the car knows at the
moment it plans** (t0 = the current step): the static map, the route, the ego's own past
and the agent boxes it currently sees, rolled forward at constant velocity. Never the
future of the log (other agents' logged futures, future light states, the human ego's
future), which would make a selection "cheat" by looking at the answer.

:func:`t0_scene` builds that knowledge as a self-contained :class:`~alpasim_policy.scenes.format.Scene`
whose timeline starts ``HISTORY`` steps before now and reaches ``horizon`` steps ahead:

* ego: its past and present from ``observation["ego_history"]`` (what the env simulated,
  rig frame converted with ``observation["pose"]``); its future is a constant-velocity
  placeholder (the ego log's future is never read). The scorer is asked to apply no
  human filter, since there is no human future to compare against.
* agents: the boxes in ``observation["agents"]`` (the env's current, possibly reactive,
  state) rolled forward at their current velocity; no past, no future from the log.
  Without observed agents the scene's agents at ``now`` are used (same information).
* traffic lights: logged states up to now; after now each light holds its current state.
* map and route: the scene's, which are static.

The only reads of the original scene's time-indexed arrays are slices ending at ``now``
(``[..., : now + 1]``); a test wraps those arrays so any other read raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.options import parse_choice
from alpasim_policy.scenes.format import (
    DT,
    Agents,
    AgentType,
    EgoLog,
    RoadMap,
    Scene,
    SceneMetadata,
)
from alpasim_policy.scenes.geometry import rig_to_scene_poses, rig_to_scene_xy, wrap_angle
from alpasim_policy.scenes.importers.common import smooth_derivative

SELECT_METHODS = ("first", "medoid", "scored", "consistent")
HISTORY = 15  # steps of ego past kept before now (the observation carries 16 rows incl. now)
SCORING_HORIZON_STEPS = 40  # 4 s, NAVSIM's open-loop horizon


def parse_select(value: Any) -> str:
    return parse_choice("select", value, SELECT_METHODS)


# ------------------------------------------------------------------------------- medoid


def pairwise_ade(samples: np.ndarray) -> np.ndarray:
    """(K, T, >=2) trajectories -> (K, K) mean over time of the xy distance between each pair."""
    xy = np.asarray(samples, dtype=np.float64)[..., :2]
    diff = xy[:, None, :, :] - xy[None, :, :, :]
    return np.linalg.norm(diff, axis=-1).mean(axis=-1)


def medoid_index(samples: np.ndarray) -> int:
    """The sample with the least summed distance (ADE) to all others; ties go to the lowest index."""
    return int(np.argmin(pairwise_ade(samples).sum(axis=1)))


# ------------------------------------------------------------------------------- t0 view


def _to_scene(poses: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Rig-frame poses (..., 3) -> scene frame, headings wrapped like a scene's states."""
    out = rig_to_scene_poses(poses, pose)
    out[..., 2] = wrap_angle(out[..., 2])
    return out


def _cv_rollout(state_now: np.ndarray, n: int) -> np.ndarray:
    """(N, 5) states x, y, heading, vx, vy -> (N, n, 5) at steps 0..n-1 ahead at constant velocity."""
    k = np.arange(n, dtype=np.float64)[None, :] * DT
    out = np.repeat(state_now[:, None, :], n, axis=1)
    out[:, :, 0] += k * state_now[:, None, 3]
    out[:, :, 1] += k * state_now[:, None, 4]
    return out


def _observed_agents(
    observation: dict[str, Any], pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observation's agents in the scene frame: states (N, 5), sizes (N, 2), types (N,)."""
    agents = np.asarray(observation["agents"], dtype=np.float64)
    mask = np.asarray(observation.get("agents_mask", np.any(agents != 0, axis=1)), dtype=bool)
    a = agents[mask]
    state = np.empty((len(a), 5))
    state[:, :3] = _to_scene(a[:, :3], pose)
    state[:, 3:5] = rig_to_scene_xy(a[:, 3:5], (0.0, 0.0, pose[2]))  # velocity: rotation only
    return state, a[:, 5:7], a[:, 7].astype(np.int8)


def _scene_agents_now(scene: Scene, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    past_state = scene.agents.state[:, : now + 1]  # the only read: steps <= now
    past_valid = scene.agents.valid[:, : now + 1]
    valid_now = np.asarray(past_valid[:, now], dtype=bool)
    return (
        np.asarray(past_state[:, now], dtype=np.float64)[valid_now],
        np.asarray(scene.agents.size)[valid_now],
        np.asarray(scene.agents.types)[valid_now],
    )


def t0_scene(
    scene: Scene,
    observation: dict[str, Any],
    horizon: int = SCORING_HORIZON_STEPS,
    *,
    use_observed_agents=True,
) -> Scene:
    """The scene as known at ``observation["step"]``: see the module docstring for exactly what it holds.

    The returned scene has ``t0_index = HISTORY`` (now) and ``HISTORY + horizon + 1`` steps.
    """
    now = int(np.asarray(observation["step"]))
    pose = np.asarray(observation["pose"], dtype=np.float64).reshape(3)
    n_total = HISTORY + horizon + 1

    # ego: the simulated past (observation), then a constant-velocity placeholder
    hist = np.asarray(observation["ego_history"], dtype=np.float64)[-(HISTORY + 1) :]
    past = _to_scene(hist[:, :3], pose)
    spd = hist[:, 3]
    ego_state = np.zeros((n_total, 7))
    n_past = len(past)
    ego_state[HISTORY + 1 - n_past : HISTORY + 1, :3] = past
    ego_state[HISTORY + 1 - n_past : HISTORY + 1, 3] = spd * np.cos(past[:, 2])
    ego_state[HISTORY + 1 - n_past : HISTORY + 1, 4] = spd * np.sin(past[:, 2])
    ego_state[: HISTORY + 1 - n_past] = ego_state[HISTORY + 1 - n_past]  # pad a short history
    if n_past >= 5:
        # accelerations of the observed past (comfort metrics and the tracker's actuator state read
        # them): a Savitzky-Golay derivative of the velocity, which is far less noisy at "now" than a
        # one-sided difference (the importers' smoother: window 7, or the longest odd one that fits)
        rows = slice(HISTORY + 1 - n_past, HISTORY + 1)
        ego_state[rows, 5:7] = smooth_derivative(ego_state[rows, 3:5], np.ones(n_past, bool), DT)
    else:
        acc = float(np.asarray(observation.get("acceleration", 0.0)))
        ego_state[HISTORY, 5:7] = acc * np.cos(pose[2]), acc * np.sin(pose[2])
    ego_state[HISTORY + 1 :, :5] = _cv_rollout(ego_state[HISTORY, :5][None], horizon + 1)[0, 1:]
    ego_valid = np.zeros(n_total, bool)
    ego_valid[HISTORY + 1 - n_past : HISTORY + 1] = True  # only what was observed is "valid"

    # agents: current boxes rolled forward at constant velocity
    if use_observed_agents and "agents" in observation:
        a_now, a_size, a_types = _observed_agents(observation, pose)
    else:
        a_now, a_size, a_types = _scene_agents_now(scene, now)
    n_agents = len(a_now)
    a_state = np.zeros((n_agents, n_total, 5))
    a_valid = np.zeros((n_agents, n_total), bool)
    if n_agents:
        a_state[:, HISTORY:] = _cv_rollout(a_now, horizon + 1)
        a_valid[:, HISTORY:] = True
    known_types = {int(t) for t in AgentType}
    a_types = np.array([t if int(t) in known_types else int(AgentType.UNKNOWN) for t in a_types], np.int8)

    # traffic lights: logged states up to now, then held
    lights_past = scene.map.light_states[:, : now + 1]  # the only read: steps <= now
    n_lights = len(scene.map.traffic_lights)
    lights = np.zeros((n_lights, n_total), np.int8)
    if n_lights:
        lp = np.asarray(lights_past, dtype=np.int8)
        take = min(HISTORY + 1, lp.shape[1])
        lights[:, HISTORY + 1 - take : HISTORY + 1] = lp[:, lp.shape[1] - take :]
        lights[:, HISTORY + 1 :] = lp[:, -1:]

    md = scene.metadata
    return Scene(
        metadata=SceneMetadata(
            scene_id=f"{md.scene_id}@{now}",
            source_dataset=md.source_dataset,
            source_id=md.source_id,
            license=md.license,
            location=md.location,
            frame_origin=md.frame_origin,
            t0_index=HISTORY,
            dt=md.dt,
            extra={"t0_view_of": md.scene_id, "t0_step": now},
        ),
        timestamps=(now - HISTORY + np.arange(n_total)) * DT,
        ego=EgoLog(
            state=ego_state,
            valid=ego_valid,
            length=scene.ego.length,
            width=scene.ego.width,
            rear_axle_to_center=scene.ego.rear_axle_to_center,
            wheelbase=scene.ego.wheelbase,
        ),
        agents=Agents(
            ids=[f"t0_{i}" for i in range(n_agents)],
            types=a_types,
            size=np.asarray(a_size, dtype=np.float64).reshape(-1, 2),
            state=a_state,
            valid=a_valid,
        ),
        map=RoadMap(
            lanes=scene.map.lanes,
            drivable_areas=scene.map.drivable_areas,
            crosswalks=scene.map.crosswalks,
            traffic_lights=scene.map.traffic_lights,
            light_states=lights,
        ),
        route=replace(scene.route),
    )


# ------------------------------------------------------------------------------- selection


#: scores (K,) of proposals (K, T, 3) in the t0 scene's frame; higher is better
ProposalScorer = Callable[[Scene, np.ndarray], np.ndarray]


@dataclass
class Selection:
    index: int
    method: str
    scores: np.ndarray | None = None  # (K,): EPDMS for scored, minus summed ADE for medoid


class SampleSelector:
    """Pick one of K rig-frame samples. ``reset(scene)`` once per rollout; ``select`` every tick."""

    def __init__(
        self, method: str = "first", scorer: ProposalScorer | None = None, *, use_observed_agents: bool = True
    ):
        self.method = parse_select(method)
        self._scorer = scorer
        self.use_observed_agents = use_observed_agents
        self.scene: Scene | None = None

    def reset(self, scene: Scene | None) -> None:
        self.scene = scene
        if self.method == "scored" and scene is None:
            raise ConfigError("option 'select': 'scored' needs the scene (map and route) at reset")

    def select(
        self,
        samples: np.ndarray,
        observation: dict[str, Any] | None = None,
        reasoning: list[str] | None = None,
        v0: float | None = None,
    ) -> Selection:
        """``reasoning``: the CoC text (one, shared by all samples, or one per sample) and ``v0`` the
        speed the samples start from; both only for ``consistent``."""
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 3 or samples.shape[-1] != 3 or len(samples) == 0:
            raise ConfigError(f"selection: samples must be (K>=1, T, 3), got {samples.shape}")
        if self.method == "first" or len(samples) == 1:
            return Selection(0, self.method)
        if self.method == "consistent":
            return consistent_selection(samples, reasoning, v0)
        if self.method == "medoid":
            total = pairwise_ade(samples).sum(axis=1)
            return Selection(int(np.argmin(total)), self.method, -total)
        if observation is None or self.scene is None:
            raise ConfigError("option 'select': 'scored' needs the observation and the scene")
        view = t0_scene(
            self.scene,
            observation,
            horizon=max(SCORING_HORIZON_STEPS, samples.shape[1]),
            use_observed_agents=self.use_observed_agents,
        )
        pose = np.asarray(observation["pose"], dtype=np.float64).reshape(3)
        proposals = _to_scene(samples, pose)
        scorer = self._scorer or default_scorer()
        scores = np.asarray(scorer(view, proposals), dtype=np.float64).reshape(len(samples))
        # best EPDMS; ties (e.g. several perfect samples) go to the lowest index, like ``first``
        return Selection(int(np.argmax(np.nan_to_num(scores, nan=-np.inf))), self.method, scores)


def consistent_selection(samples: np.ndarray, reasoning: list[str] | None, v0: float | None) -> Selection:
    """The first of the rig-frame ``samples`` whose trajectory performs the meta-action of its CoC
    (``reasoning[0]`` for all, or ``reasoning[k]`` for sample k); sample 0 when none does or the
    text states none. Scores: 1 for the samples that agree, 0 for the others."""
    from alpasim_policy.scoring.reasoning import reasoning_action_consistency

    if not reasoning or v0 is None:
        raise ConfigError("option 'select': 'consistent' needs the CoC text and the start speed v0")
    if len(reasoning) not in (1, len(samples)):
        raise ConfigError(
            f"selection: {len(reasoning)} CoC texts for {len(samples)} samples (need 1 or one per sample)"
        )
    scores = np.zeros(len(samples))
    for k, sample in enumerate(samples):
        rows = sample[np.all(np.isfinite(sample), axis=1)]
        text = reasoning[k if len(reasoning) > 1 else 0]
        scores[k] = float(len(rows) > 0 and bool(reasoning_action_consistency(text, rows, float(v0))))
    return Selection(int(np.argmax(scores)), "consistent", scores)


def default_scorer() -> ProposalScorer:
    """The scorer's batched open-loop EPDMS on the t0 view: constant-velocity agents, no human filter.

    EP is normalised by the best safe proposal of the batch (there is no reference planner
    rollout at t0 that would not need the log), so the ranking rewards progress among samples.
    """
    from alpasim_policy.scoring.openloop import epdms_scorer

    return epdms_scorer
