"""Rule-based chain-of-causation auto-labels for a logged scene at a chosen step.

Why rules: Alpamayo's CoC data pairs a meta-action (what the driver does next) with the causal
factor (why). Without a labelling team, the same structure can be derived from the log itself:
the *meta-action* from the logged future (it is the training target, so the future is allowed),
the *cause* strictly from what is knowable at that step (agents' past and present states, the
light state now, the map and the route). A reason that peeks at the future would teach the model
to explain with facts it cannot see; ``tests/test_training_labeler.py`` scrambles every
future value and checks the reason does not change.

The vocabulary and sentence template are :mod:`alpasim_policy.scoring.reasoning`'s, shared with the
reasoning-action consistency metric. Distances are measured along the route from the ego's front
bumper, in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpasim_policy.scenes.format import AgentType, LightState, Scene
from alpasim_policy.scenes.geometry import Polyline, scene_to_rig_poses, wrap_angle
from alpasim_policy.scoring.reasoning import (
    DT,
    HORIZON_S,
    CausalFactor,
    Factor,
    Lateral,
    Longitudinal,
    MetaAction,
    classify_trajectory,
    coc_text,
)
from alpasim_policy.sim.command import route_observation

#: How far ahead (m along the route, from the front bumper) each kind of cause is looked for.
LIGHT_RANGE_M = 60.0
LEAD_RANGE_M = 60.0
PEDESTRIAN_RANGE_M = 35.0
CURVE_RANGE_M = 40.0
#: Route heading change (rad) within CURVE_RANGE_M that makes a curve worth naming.
CURVE_HEADING = 0.3
#: Half-width (m) of the corridor along the route in which an agent counts as "in the lane".
LANE_HALF_WIDTH = 1.8
#: A lead vehicle matters for a slow-down when closer than this (m) or closing / slowing.
LEAD_RELEVANT_GAP_M = 30.0
#: Look-back (s) for the lead vehicle's acceleration (past states only).
LEAD_ACCEL_WINDOW_S = 0.5
#: Lead statuses' thresholds: stopped (m/s), slowing (m/s^2), slower than the ego (m/s).
LEAD_STOPPED_SPEED = 0.5
LEAD_SLOWING_ACCEL = -0.5
LEAD_SLOWER_BY = 1.0

_VEHICLES = {AgentType.VEHICLE, AgentType.BUS, AgentType.TRUCK, AgentType.MOTORCYCLE}
_VULNERABLE = {AgentType.PEDESTRIAN: "pedestrian", AgentType.BICYCLE: "cyclist"}


@dataclass(frozen=True)
class CocLabel:
    """One auto-label: the meta-action (from the future), the cause (from the past), the sentence."""

    scene_id: str
    step: int
    action: MetaAction
    factor: CausalFactor
    text: str


# ----------------------------------------------------------------------------- t0-knowable causes


@dataclass(frozen=True)
class _Frame:
    """The route seen from the ego at one step: arc length of the front bumper, the route line."""

    route: Polyline
    s_front: float
    pose: np.ndarray  # rear-axle (x, y, heading), scene frame
    speed: float


def _frame(scene: Scene, step: int, ego: tuple[np.ndarray, float] | None = None) -> _Frame:
    route = Polyline(scene.route.polyline)
    if ego is None:
        st = scene.ego.state[step]
        pose, speed = st[:3].copy(), float(np.hypot(st[3], st[4]))
    else:
        pose, speed = np.asarray(ego[0], np.float64)[:3].copy(), float(ego[1])
    s, _, _ = route.project(pose[None, :2])
    front = scene.ego.rear_axle_to_center + scene.ego.length / 2.0
    return _Frame(route, float(s[0]) + front, pose, speed)


def _light_factor(scene: Scene, step: int, fr: _Frame) -> CausalFactor | None:
    """The nearest red / yellow light whose stop line crosses the route ahead (state *now*)."""
    best: CausalFactor | None = None
    for k, tl in enumerate(scene.map.traffic_lights):
        state = int(scene.map.light_states[k, step])
        if state not in (LightState.RED, LightState.YELLOW):
            continue
        mid = np.mean(np.asarray(tl.stop_line, float), axis=0)
        s, lat, _ = fr.route.project(mid[None])
        if abs(float(lat[0])) > 3.0:  # not across our route
            continue
        d = float(s[0]) - fr.s_front
        if not (-1.0 < d <= LIGHT_RANGE_M):
            continue
        kind = Factor.RED_LIGHT if state == LightState.RED else Factor.YELLOW_LIGHT
        if best is None or d < (best.distance or np.inf):
            best = CausalFactor(kind, d)
    return best


def _agents_now(scene: Scene, step: int, kinds: set[AgentType]) -> np.ndarray:
    types = np.asarray(scene.agents.types)
    mask = scene.agents.valid[:, step] & np.isin(types, [int(k) for k in kinds])
    return np.flatnonzero(mask)


def _lead(scene: Scene, step: int, fr: _Frame) -> tuple[int, float, float] | None:
    """(agent index, bumper gap m, route heading there) of the nearest same-direction vehicle in
    the route corridor ahead, or None."""
    idx = _agents_now(scene, step, _VEHICLES)
    if not len(idx):
        return None
    st = scene.agents.state[idx, step]
    s, lat, seg_heading = fr.route.project(st[:, :2])
    half_len = scene.agents.size[idx, 0] / 2.0
    gap = s - half_len - fr.s_front
    aligned = np.abs(wrap_angle(st[:, 2] - seg_heading)) < 0.8
    ok = (gap > -0.5) & (gap <= LEAD_RANGE_M) & (np.abs(lat) < LANE_HALF_WIDTH) & aligned
    if not ok.any():
        return None
    j = int(np.flatnonzero(ok)[np.argmin(gap[ok])])
    return int(idx[j]), float(gap[j]), float(seg_heading[j])


def lead_vehicle(scene: Scene, step: int, ego: tuple[np.ndarray, float] | None = None) -> tuple[int, float] | None:
    """(index into ``scene.agents``, bumper gap in m) of the vehicle the labeler calls the lead at
    ``step`` (the logged ego, or ``ego`` = (pose, speed)); None without one. Training
    augmentations use it to pick the car to move up to or to stop."""
    found = _lead(scene, step, _frame(scene, step, ego))
    return None if found is None else found[:2]


def _lead_factor(scene: Scene, step: int, fr: _Frame) -> CausalFactor | None:
    """The nearest same-direction vehicle in the route corridor ahead, with its status now."""
    found = _lead(scene, step, fr)
    if found is None:
        return None
    i, gap_m, heading = found
    st_i = scene.agents.state[i, step]
    v_along = float(st_i[3] * np.cos(heading) + st_i[4] * np.sin(heading))
    back = int(round(LEAD_ACCEL_WINDOW_S / DT))
    accel = 0.0
    if step - back >= 0 and scene.agents.valid[i, step - back]:
        past = scene.agents.state[i, step - back]
        v_past = float(np.hypot(past[3], past[4]))
        accel = (float(np.hypot(st_i[3], st_i[4])) - v_past) / LEAD_ACCEL_WINDOW_S
    if abs(v_along) < LEAD_STOPPED_SPEED:
        status = "is stopped"
    elif accel < LEAD_SLOWING_ACCEL:
        status = "is slowing"
    elif fr.speed - v_along > LEAD_SLOWER_BY:
        status = "is slower"
    else:
        status = "is keeping its speed"
    return CausalFactor(Factor.LEAD_VEHICLE, gap_m, status)


def _pedestrian_factor(scene: Scene, step: int, fr: _Frame) -> CausalFactor | None:
    """The nearest pedestrian / cyclist ahead on the route or walking towards it."""
    idx = _agents_now(scene, step, set(_VULNERABLE))
    if not len(idx):
        return None
    st = scene.agents.state[idx, step]
    s, lat, seg_heading = fr.route.project(st[:, :2])
    d = s - fr.s_front
    # Lateral velocity (+ left of the route); "towards" means it reduces |lat|.
    v_lat = -st[:, 3] * np.sin(seg_heading) + st[:, 4] * np.cos(seg_heading)
    towards = (np.sign(lat) * v_lat < -0.3) & (np.abs(lat) < 6.0)
    on_path = np.abs(lat) < LANE_HALF_WIDTH
    ok = (d > 0.0) & (d <= PEDESTRIAN_RANGE_M) & (towards | on_path)
    if not ok.any():
        return None
    j = int(np.flatnonzero(ok)[np.argmin(d[ok])])
    name = _VULNERABLE[AgentType(int(scene.agents.types[idx[j]]))]
    return CausalFactor(Factor.CROSSING_PEDESTRIAN, float(d[j]), name)


def _curve_factor(fr: _Frame) -> CausalFactor | None:
    """A bend of the route within CURVE_RANGE_M ahead (its total heading change and side)."""
    s0 = fr.s_front
    if s0 >= fr.route.length:
        return None
    ss = np.linspace(s0, min(s0 + CURVE_RANGE_M, fr.route.length), 21)
    _, headings = fr.route.interpolate(ss)
    turn = float(np.sum(wrap_angle(np.diff(headings))))
    if abs(turn) < CURVE_HEADING:
        return None
    return CausalFactor(Factor.CURVE, None, "left" if turn > 0 else "right")


def _route_turn_factor(fr: _Frame) -> CausalFactor | None:
    """The navigation command now (the env's rule): left / right is a route turn."""
    _, command = route_observation(fr.route, fr.pose)
    if command == 0:
        return CausalFactor(Factor.ROUTE_TURN, None, "left")
    if command == 2:
        return CausalFactor(Factor.ROUTE_TURN, None, "right")
    return None


def causal_factors(
    scene: Scene, step: int, ego: tuple[np.ndarray, float] | None = None
) -> dict[Factor, CausalFactor]:
    """Every cause present at ``step``, from data at or before ``step`` only.

    ``ego`` = (rear-axle pose (x, y, heading) in the scene frame, speed m/s) measures the causes
    from a simulated car that is not where the log was (closed-loop training states); default:
    the logged ego at ``step``.
    """
    fr = _frame(scene, step, ego)
    found = {
        Factor.RED_LIGHT: None,
        Factor.CROSSING_PEDESTRIAN: _pedestrian_factor(scene, step, fr),
        Factor.LEAD_VEHICLE: _lead_factor(scene, step, fr),
        Factor.CURVE: _curve_factor(fr),
        Factor.ROUTE_TURN: _route_turn_factor(fr),
    }
    light = _light_factor(scene, step, fr)
    if light is not None:
        found[light.kind] = light
    return {k: v for k, v in found.items() if v is not None}


def choose_factor(action: MetaAction, factors: dict[Factor, CausalFactor]) -> CausalFactor:
    """The cause that best explains the action, by a fixed priority per kind of action.

    Slowing down or stopping: a red / yellow light, then a crossing pedestrian, then a relevant lead
    vehicle (close, stopped, slowing or slower), then a curve or turn. Turning: the route turn or
    the curve. Otherwise a lead vehicle being followed, or the free road.
    """
    lead = factors.get(Factor.LEAD_VEHICLE)
    lead_relevant = lead is not None and (
        (lead.distance or 0.0) < LEAD_RELEVANT_GAP_M or lead.detail != "is keeping its speed"
    )
    if action.longitudinal in (Longitudinal.STOP, Longitudinal.DECELERATE):
        order = [Factor.RED_LIGHT, Factor.YELLOW_LIGHT, Factor.CROSSING_PEDESTRIAN]
        order += [Factor.LEAD_VEHICLE] if lead_relevant else []
        order += [Factor.ROUTE_TURN, Factor.CURVE]
    elif action.lateral in (Lateral.TURN_LEFT, Lateral.TURN_RIGHT):
        order = [Factor.ROUTE_TURN, Factor.CURVE]
    else:
        order = [Factor.LEAD_VEHICLE] if lead_relevant else []
        order += [Factor.CURVE] if action.longitudinal is Longitudinal.KEEP_SPEED else []
    for kind in order:
        if kind in factors:
            return factors[kind]
    return CausalFactor(Factor.FREE_ROAD)


# ----------------------------------------------------------------------------- labels


def future_rig_trajectory(scene: Scene, step: int, horizon_s: float = HORIZON_S) -> np.ndarray:
    """The logged future ``(T, 3)`` in the rig frame at ``step`` (first row 0.1 s ahead)."""
    n = int(round(horizon_s / DT))
    if step + n >= scene.num_steps:
        raise ValueError(
            f"scene {scene.scene_id}: step {step} has only {scene.num_steps - 1 - step} future steps, "
            f"a label needs {n} ({horizon_s} s)"
        )
    poses = scene.ego.state[step + 1 : step + 1 + n, :3]
    return scene_to_rig_poses(poses, scene.ego.state[step, :3])


def label_step(scene: Scene, step: int, horizon_s: float = HORIZON_S) -> CocLabel:
    """The CoC label of ``scene`` at ``step``: meta-action from the log's next ``horizon_s``."""
    if not (0 <= step < scene.num_steps):
        raise ValueError(f"scene {scene.scene_id}: step {step} outside 0..{scene.num_steps - 1}")
    if not bool(scene.ego.valid[step]):
        raise ValueError(f"scene {scene.scene_id}: ego invalid at step {step}")
    fut = future_rig_trajectory(scene, step, horizon_s)
    v0 = float(np.hypot(*scene.ego.state[step, 3:5]))
    action = classify_trajectory(fut, v0, DT, horizon_s)
    factor = choose_factor(action, causal_factors(scene, step))
    return CocLabel(scene.scene_id, step, action, factor, coc_text(action, factor))


def label_scene(scene: Scene, steps: list[int] | None = None, horizon_s: float = HORIZON_S) -> list[CocLabel]:
    """Labels at ``steps`` (default: every step from t0 with a full future)."""
    if steps is None:
        last = scene.num_steps - 1 - int(round(horizon_s / DT))
        steps = list(range(scene.metadata.t0_index, last))
    return [label_step(scene, s, horizon_s) for s in steps]
