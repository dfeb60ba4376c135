"""Chain-of-causation vocabulary: meta-actions from trajectories, CoC text <-> labels, consistency.

Why in the scorer: the leaderboard's reasoning-action consistency column asks whether the
meta-action a policy *says* (its CoC text) is the one its trajectory *does*. Both halves of that
question live here, in one closed vocabulary, so the auto-labeler that writes training targets
(``training.labeler``) and the metric that reads a model's output can never drift apart.

A CoC sentence has one fixed shape::

    "<Longitudinal> and <lateral> because <reason>."
    "Decelerate and keep lane because the lead vehicle 12 m ahead is slowing."

Meta-actions are classified from a rig-frame trajectory (x forward, y left, origin rear axle,
poses 0.1 s apart, first row 0.1 s ahead) over the first :data:`HORIZON_S` seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from alpasim_policy.scenes.geometry import scene_to_rig_poses

DT = 0.1
#: Seconds of plan a meta-action describes: the scorer's 4 s horizon (``openloop.HORIZON_STEPS``).
HORIZON_S = 4.0

# Thresholds of the classifier (SI). Chosen so that logged drives' noise (NGSIM positions jitter by
# up to ~0.5 m) does not flip a label, and documented in the labeler's README section.
STOP_SPEED = 0.5  # m/s: slower than this at the horizon's end is a stop
SPEED_CHANGE = 1.0  # m/s over the horizon: beyond it accelerate / decelerate
TURN_HEADING = 0.5  # rad (~29 deg) of heading change: a turn
LANE_CHANGE_OFFSET = 2.0  # m of lateral displacement beyond the matching arc: a lane change
NUDGE_OFFSET = 1.0  # m: a nudge (lane-keeping drift on the A9 logs reaches ~0.8 m in 4 s)


class Longitudinal(StrEnum):
    ACCELERATE = "Accelerate"
    KEEP_SPEED = "Keep speed"
    DECELERATE = "Decelerate"
    STOP = "Stop"


class Lateral(StrEnum):
    KEEP_LANE = "keep lane"
    TURN_LEFT = "turn left"
    TURN_RIGHT = "turn right"
    LANE_CHANGE_LEFT = "change lanes to the left"
    LANE_CHANGE_RIGHT = "change lanes to the right"
    NUDGE_LEFT = "nudge to the left"
    NUDGE_RIGHT = "nudge to the right"


class Factor(StrEnum):
    """The causal factor's kind; the reason's wording is fixed per kind (see :func:`reason_text`)."""

    LEAD_VEHICLE = "lead_vehicle"
    RED_LIGHT = "red_light"
    YELLOW_LIGHT = "yellow_light"
    CROSSING_PEDESTRIAN = "crossing_pedestrian"
    CURVE = "curve"
    ROUTE_TURN = "route_turn"
    FREE_ROAD = "free_road"


LEAD_STATUS = ("is stopped", "is slowing", "is slower", "is keeping its speed")
SIDES = ("left", "right")


@dataclass(frozen=True)
class MetaAction:
    longitudinal: Longitudinal
    lateral: Lateral

    def phrase(self) -> str:
        return f"{self.longitudinal.value} and {self.lateral.value}"


@dataclass(frozen=True)
class CausalFactor:
    """What caused the action, from t0-knowable facts only.

    ``distance`` (m, rounded to whole metres in text): bumper gap to the lead vehicle, distance from
    the front bumper to a stop line or pedestrian. ``detail``: the lead vehicle's status (one of
    :data:`LEAD_STATUS`), ``"pedestrian"`` / ``"cyclist"``, or the side of a curve / turn.
    """

    kind: Factor
    distance: float | None = None
    detail: str | None = None


def reason_text(factor: CausalFactor) -> str:
    """The reason clause for a factor, in the closed template set."""
    d = None if factor.distance is None else int(round(max(factor.distance, 0.0)))
    k = factor.kind
    if k is Factor.LEAD_VEHICLE:
        return f"the lead vehicle {d} m ahead {factor.detail}"
    if k in (Factor.RED_LIGHT, Factor.YELLOW_LIGHT):
        colour = "red" if k is Factor.RED_LIGHT else "yellow"
        return f"the light ahead is {colour} with the stop line {d} m away"
    if k is Factor.CROSSING_PEDESTRIAN:
        return f"a {factor.detail} {d} m ahead is crossing"
    if k is Factor.CURVE:
        return f"the road curves {factor.detail} ahead"
    if k is Factor.ROUTE_TURN:
        return f"the route turns {factor.detail}"
    return "the road ahead is clear"


def coc_text(action: MetaAction, factor: CausalFactor) -> str:
    """One CoC sentence: ``"<Longitudinal> and <lateral> because <reason>."``."""
    return f"{action.phrase()} because {reason_text(factor)}."


_LON = "|".join(re.escape(v.value) for v in Longitudinal)
_LAT = "|".join(re.escape(v.value) for v in Lateral)
_SENTENCE = re.compile(rf"^\s*(?P<lon>{_LON}) and (?P<lat>{_LAT}) because (?P<reason>.+?)\.?\s*$")
_REASONS: tuple[tuple[Factor, re.Pattern[str]], ...] = (
    (Factor.LEAD_VEHICLE, re.compile(r"^the lead vehicle (\d+) m ahead (" + "|".join(LEAD_STATUS) + r")$")),
    (Factor.RED_LIGHT, re.compile(r"^the light ahead is red with the stop line (\d+) m away$")),
    (Factor.YELLOW_LIGHT, re.compile(r"^the light ahead is yellow with the stop line (\d+) m away$")),
    (Factor.CROSSING_PEDESTRIAN, re.compile(r"^a (pedestrian|cyclist) (\d+) m ahead is crossing$")),
    (Factor.CURVE, re.compile(r"^the road curves (left|right) ahead$")),
    (Factor.ROUTE_TURN, re.compile(r"^the route turns (left|right)$")),
    (Factor.FREE_ROAD, re.compile(r"^the road ahead is clear$")),
)


@dataclass(frozen=True)
class ParsedCoc:
    """What :func:`parse_coc` recovered; a field is None where the text does not say it."""

    action: MetaAction | None
    factor: Factor | None


def parse_coc(text: str | None) -> ParsedCoc:
    """Read a CoC sentence back into its meta-action and factor kind (None parts if off-template).

    Generated text may carry special tokens or trailing words; only the first sentence that fits
    the template counts.
    """
    if not text:
        return ParsedCoc(None, None)
    for sentence in re.split(r"(?<=\.)\s+", text.strip()):
        m = _SENTENCE.match(sentence)
        if m is None:
            continue
        action = MetaAction(Longitudinal(m["lon"]), Lateral(m["lat"]))
        reason = m["reason"].strip()
        factor = next((k for k, pat in _REASONS if pat.match(reason)), None)
        return ParsedCoc(action, factor)
    return ParsedCoc(None, None)


# ----------------------------------------------------------------------------- trajectories


def _speeds(poses: np.ndarray, v0: float, dt: float) -> np.ndarray:
    """Speeds at each pose from finite differences (the first from the origin at speed ``v0``)."""
    xy = np.concatenate([np.zeros((1, 2)), poses[:, :2]], axis=0)
    return np.linalg.norm(np.diff(xy, axis=0), axis=1) / dt


def classify_trajectory(
    poses: np.ndarray, v0: float, dt: float = DT, horizon_s: float = HORIZON_S
) -> MetaAction:
    """The meta-action a rig-frame trajectory ``(T, >=3)`` performs over ``horizon_s`` seconds.

    Longitudinal: the end speed (mean of the last 0.5 s of finite-difference speeds, robust to
    position jitter) below :data:`STOP_SPEED` is a stop, otherwise a change of more than
    :data:`SPEED_CHANGE` from ``v0`` is accelerate / decelerate. Lateral: a heading change over
    :data:`TURN_HEADING` is a turn; otherwise the end point's lateral offset from the constant-
    curvature arc with the same heading change (so following a curved road is *keep lane*) decides
    lane change / nudge.
    """
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 3 or not len(p):
        raise ValueError(f"trajectory must be (T, >=3) rig-frame poses, got shape {p.shape}")
    if not np.all(np.isfinite(p[:, :3])):
        raise ValueError("trajectory has non-finite values")
    n = max(1, min(len(p), int(round(horizon_s / dt))))
    p = p[:n]
    v = _speeds(p, v0, dt)
    tail = max(1, min(n, int(round(0.5 / dt))))
    v_end = float(np.mean(v[-tail:]))
    if v_end < STOP_SPEED:
        lon = Longitudinal.STOP
    elif v_end - v0 > SPEED_CHANGE:
        lon = Longitudinal.ACCELERATE
    elif v_end - v0 < -SPEED_CHANGE:
        lon = Longitudinal.DECELERATE
    else:
        lon = Longitudinal.KEEP_SPEED
    # Heading from the path itself where it moves (a plan's heading column may lag); averaged over
    # the last few poses like the speed.
    end = np.mean(p[-min(3, n) :, :2], axis=0)
    dpsi = float(np.arctan2(np.sin(p[-1, 2]), np.cos(p[-1, 2])))
    lat = Lateral.KEEP_LANE
    length = float(
        np.sum(np.linalg.norm(np.diff(np.concatenate([np.zeros((1, 2)), p[:, :2]]), axis=0), axis=1))
    )
    if length < 2.0:
        return MetaAction(lon, Lateral.KEEP_LANE)  # (almost) standing: no lateral manoeuvre
    if abs(dpsi) > TURN_HEADING:
        lat = Lateral.TURN_LEFT if dpsi > 0 else Lateral.TURN_RIGHT
    else:
        # The arc with heading change dpsi over this path length ends at
        # (L sin(dpsi)/dpsi, L (1 - cos dpsi)/dpsi); compare the end point's offset across the
        # chord direction with the arc's.
        if abs(dpsi) < 1e-6:
            arc = np.array([length, 0.0])
        else:
            arc = np.array([length * np.sin(dpsi) / dpsi, length * (1.0 - np.cos(dpsi)) / dpsi])
        chord_dir = arc / max(np.linalg.norm(arc), 1e-9)
        normal = np.array([-chord_dir[1], chord_dir[0]])
        offset = float((end - arc) @ normal)
        if abs(offset) > LANE_CHANGE_OFFSET:
            lat = Lateral.LANE_CHANGE_LEFT if offset > 0 else Lateral.LANE_CHANGE_RIGHT
        elif abs(offset) > NUDGE_OFFSET:
            lat = Lateral.NUDGE_LEFT if offset > 0 else Lateral.NUDGE_RIGHT
    return MetaAction(lon, lat)


def reasoning_action_consistency(
    text: str | None, trajectory: np.ndarray, v0: float, dt: float = DT
) -> bool | None:
    """Does the CoC's meta-action match what the trajectory does? None when the text has none."""
    said = parse_coc(text).action
    if said is None:
        return None
    return said == classify_trajectory(trajectory, v0, dt)


def meta_action_agreement(text: str | None, trajectories: np.ndarray, v0: float, dt: float = DT) -> np.ndarray:
    """Per rig-frame trajectory of ``(K, T, >=3)``, how much of the CoC's meta-action it performs:
    1 when both the longitudinal and the lateral part match (the leaderboard's *consistent*),
    0.5 when one does, 0 when neither; all NaN when the text states no meta-action.

    Why graded: as a training reward (``train --stage rl --consistency-weight``) the half credit
    tells a plan that already brakes as the CoC says but drifts from one that does neither, where a
    0/1 signal would rate both alike.
    """
    said = parse_coc(text).action
    out = np.full(len(trajectories), np.nan)
    if said is None:
        return out
    for k, traj in enumerate(trajectories):
        done = classify_trajectory(np.asarray(traj, dtype=np.float64), v0, dt)
        out[k] = 0.5 * (done.longitudinal == said.longitudinal) + 0.5 * (done.lateral == said.lateral)
    return out


def rollout_consistency(
    plans: np.ndarray, ego_state: np.ndarray, reasoning: list[str], dt: float = DT
) -> tuple[int, int]:
    """(consistent, rated) ticks of one rollout: ticks whose CoC states a meta-action are *rated*;
    *consistent* when the plan made at that tick (scene frame, from ``ego_state`` there: rear axle
    x, y, heading, vx, vy) performs it. Plans shorter than the horizon are classified over what
    they have."""
    consistent = rated = 0
    for t, text in enumerate(reasoning):
        if t >= len(plans):
            break
        said = parse_coc(text).action
        plan = np.asarray(plans[t], dtype=np.float64)
        rows = plan[np.all(np.isfinite(plan), axis=1)]
        if said is None or not len(rows):
            continue
        rig = scene_to_rig_poses(rows, ego_state[t, :3])
        v0 = float(np.hypot(ego_state[t, 3], ego_state[t, 4]))
        rated += 1
        consistent += int(classify_trajectory(rig, v0, dt) == said)
    return consistent, rated
