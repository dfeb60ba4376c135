"""CoC auto-labeler and the shared reasoning vocabulary: hand-built scenes with known answers.

Scenes are :func:`straight_road_scene` (ego lane along +x, rear axle at x = 0 at t0, ego box
4.8 m long with its centre 1.4 m ahead of the axle, so the front bumper is at x = 3.8 m at t0).
"""

from __future__ import annotations

import numpy as np
import pytest
from scoring_synthetic import AgentSpec, straight_road_scene

from alpasim_policy.scenes.format import DT, AgentType, load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.reasoning import (
    CausalFactor,
    Factor,
    Lateral,
    Longitudinal,
    MetaAction,
    classify_trajectory,
    coc_text,
    parse_coc,
    reasoning_action_consistency,
)
from alpasim_policy.training.labeler import future_rig_trajectory, label_scene, label_step

T0, T = 20, 90
FRONT = 1.4 + 4.8 / 2


def _ego_from_speed(v: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """(T, 7) ego states from a speed profile (rear axle at x = 0 at T0), optional lateral path."""
    x = np.concatenate([[0.0], np.cumsum(v[:-1] * DT)])
    x -= x[T0]
    st = np.zeros((len(v), 7))
    st[:, 0] = x
    st[:, 3] = v
    if y is not None:
        st[:, 1] = y
        st[:, 2] = np.arctan2(np.gradient(y), np.gradient(x))
    return st


def _braking(v0: float, a: float, start: int) -> np.ndarray:
    t = np.arange(T) * DT
    return np.where(np.arange(T) < start, v0, np.maximum(v0 + a * (t - start * DT), 0.0))


def test_free_road_keeps_speed_and_lane():
    lab = label_step(straight_road_scene(ego_speed=10.0, num_steps=T, t0_index=T0), T0)
    assert lab.action == MetaAction(Longitudinal.KEEP_SPEED, Lateral.KEEP_LANE)
    assert lab.factor.kind is Factor.FREE_ROAD
    assert lab.text == "Keep speed and keep lane because the road ahead is clear."


def test_lead_vehicle_braking_is_the_reason_to_decelerate():
    # Lead box centre 20 m ahead of the ego axle at t0, 4.5 m long: gap = 20 - 2.25 - 3.8 = 13.95 m.
    lead_v = _braking(10.0, -3.0, T0 - 10)  # braking for a second already at t0: knowable
    lead = np.zeros((T, 5))
    lead[:, 0] = 20.0 + np.concatenate([[0.0], np.cumsum(lead_v[:-1] * DT)]) - np.sum(lead_v[:T0] * DT)
    lead[:, 3] = lead_v
    ego = _ego_from_speed(_braking(10.0, -2.0, T0 + 2))
    scene = straight_road_scene(
        ego_states=ego, agents=[AgentSpec(0, 0, states=lead)], num_steps=T, t0_index=T0
    )
    lab = label_step(scene, T0)
    assert lab.action.longitudinal is Longitudinal.DECELERATE
    assert lab.factor.kind is Factor.LEAD_VEHICLE and lab.factor.detail == "is slowing"
    assert lab.factor.distance == pytest.approx(20.0 - 2.25 - FRONT, abs=0.05)
    assert lab.text == "Decelerate and keep lane because the lead vehicle 14 m ahead is slowing."


def test_cause_is_measured_from_a_simulated_car_off_the_log():
    """Closed-loop training states (DAgger) are not where the log was: the lead's gap must be
    measured from the car that is actually there, at its speed."""
    from alpasim_policy.training.labeler import causal_factors

    lead = np.zeros((T, 5))
    lead[:, 0] = 20.0 + 8.0 * DT * np.arange(T)
    lead[:, 3] = 8.0
    ego = _ego_from_speed(np.full(T, 8.0))
    scene = straight_road_scene(
        ego_states=ego, agents=[AgentSpec(0, 0, states=lead)], num_steps=T, t0_index=T0
    )
    logged = causal_factors(scene, T0)[Factor.LEAD_VEHICLE]
    same = causal_factors(scene, T0, (ego[T0, :3], 8.0))[Factor.LEAD_VEHICLE]
    assert same == logged and logged.detail == "is keeping its speed"
    moved = ego[T0, :3] + np.array([6.0, 0.0, 0.0])  # the simulated car is 6 m further on, faster
    closer = causal_factors(scene, T0, (moved, 11.0))[Factor.LEAD_VEHICLE]
    assert closer.distance == pytest.approx(logged.distance - 6.0, abs=1e-6)
    assert closer.detail == "is slower"  # 3 m/s slower than this car, though as fast as the log


def test_red_light_is_the_reason_to_stop():
    # Stop line at x = 30: the ego brakes from 8 m/s at 2.5 m/s^2 and stops 12.8 m later, in 3.2 s.
    ego = _ego_from_speed(_braking(8.0, -2.5, T0))
    scene = straight_road_scene(ego_states=ego, red_light=(30.0, 0, T - 1), num_steps=T, t0_index=T0)
    lab = label_step(scene, T0)
    assert lab.action.longitudinal is Longitudinal.STOP
    assert lab.factor.kind is Factor.RED_LIGHT
    assert lab.factor.distance == pytest.approx(30.0 - FRONT)
    assert "the light ahead is red with the stop line 26 m away" in lab.text
    # A light that is green now is no reason, even if it turns red later (future facts don't count).
    green_now = straight_road_scene(ego_states=ego, red_light=(30.0, T0 + 1, T - 1), num_steps=T, t0_index=T0)
    assert label_step(green_now, T0).factor.kind is not Factor.RED_LIGHT


def test_lane_change_left_is_a_lateral_transition():
    t = np.arange(T) * DT
    s = np.clip((t - T0 * DT) / 3.0, 0.0, 1.0)  # 3 s smooth shift into the left lane (y = 3.5)
    y = 3.5 * (10 * s**3 - 15 * s**4 + 6 * s**5)
    ego = _ego_from_speed(np.full(T, 12.0), y)
    lab = label_step(straight_road_scene(ego_states=ego, num_steps=T, t0_index=T0), T0)
    assert lab.action == MetaAction(Longitudinal.KEEP_SPEED, Lateral.LANE_CHANGE_LEFT)
    mirrored = ego.copy()
    mirrored[:, 1] *= -1
    mirrored[:, 2] *= -1
    lab_r = label_step(straight_road_scene(ego_states=mirrored, num_steps=T, t0_index=T0), T0)
    assert lab_r.action.lateral is Lateral.LANE_CHANGE_RIGHT


def test_crossing_pedestrian_is_the_reason_to_stop():
    ped = AgentSpec(x=25.0, y=-4.0, vx=0.0, vy=1.4, length=0.6, width=0.6, type=AgentType.PEDESTRIAN)
    ped.y -= 1.4 * T0 * DT  # at y = -4 m at t0, walking left towards the ego lane
    ego = _ego_from_speed(_braking(8.0, -2.5, T0))
    lab = label_step(straight_road_scene(ego_states=ego, agents=[ped], num_steps=T, t0_index=T0), T0)
    assert lab.action.longitudinal is Longitudinal.STOP
    assert lab.factor.kind is Factor.CROSSING_PEDESTRIAN and lab.factor.detail == "pedestrian"
    assert lab.factor.distance == pytest.approx(25.0 - FRONT, abs=0.05)


def test_reason_never_reads_the_future():
    """Scrambling every agent and light value after the labelled step leaves the cause unchanged."""
    lead_v = _braking(10.0, -3.0, T0 - 10)
    lead = np.zeros((T, 5))
    lead[:, 0] = 20.0 + np.concatenate([[0.0], np.cumsum(lead_v[:-1] * DT)]) - np.sum(lead_v[:T0] * DT)
    lead[:, 3] = lead_v
    ego = _ego_from_speed(_braking(10.0, -2.0, T0 + 2))
    scene = straight_road_scene(
        ego_states=ego,
        agents=[AgentSpec(0, 0, states=lead)],
        red_light=(80.0, 0, T - 1),
        num_steps=T,
        t0_index=T0,
    )
    before = label_step(scene, T0)
    rng = np.random.default_rng(0)
    scene.agents.state[:, T0 + 1 :] = rng.normal(0, 50, scene.agents.state[:, T0 + 1 :].shape)
    scene.map.light_states[:, T0 + 1 :] = rng.integers(0, 4, scene.map.light_states[:, T0 + 1 :].shape)
    after = label_step(scene, T0)
    assert after.factor == before.factor
    assert after.text == before.text


def test_classifier_on_closed_forms():
    v = 10.0
    t = (np.arange(40) + 1) * DT
    straight = np.stack([v * t, 0 * t, 0 * t], -1)
    assert classify_trajectory(straight, v) == MetaAction(Longitudinal.KEEP_SPEED, Lateral.KEEP_LANE)
    # A 90 deg left turn of radius 20 m at 10 m/s (heading change 2 rad in 4 s).
    R = 20.0
    psi = v * t / R
    turn = np.stack([R * np.sin(psi), R * (1 - np.cos(psi)), psi], -1)
    assert classify_trajectory(turn, v).lateral is Lateral.TURN_LEFT
    # Following a gentle curve (R = 300 m: 0.13 rad, 2.7 m off the chord) is keep lane, not a lane change.
    R = 300.0
    psi = v * t / R
    curve = np.stack([R * np.sin(psi), -R * (1 - np.cos(psi)), -psi], -1)
    assert classify_trajectory(curve, v) == MetaAction(Longitudinal.KEEP_SPEED, Lateral.KEEP_LANE)
    # 1.5 m sideways: a nudge. Accelerating 10 -> 14 m/s: accelerate.
    nudge = straight.copy()
    nudge[:, 1] = np.clip(t - 1.0, 0, 1.5)
    assert classify_trajectory(nudge, v).lateral is Lateral.NUDGE_LEFT
    acc = np.stack([v * t + 0.5 * t**2, 0 * t, 0 * t], -1)
    assert classify_trajectory(acc, v).longitudinal is Longitudinal.ACCELERATE
    with pytest.raises(ValueError, match="non-finite"):
        classify_trajectory(np.full((40, 3), np.nan), v)


def test_every_template_parses_back():
    factors = [
        CausalFactor(Factor.LEAD_VEHICLE, 12.3, "is slowing"),
        CausalFactor(Factor.RED_LIGHT, 26.2),
        CausalFactor(Factor.YELLOW_LIGHT, 8.0),
        CausalFactor(Factor.CROSSING_PEDESTRIAN, 15.0, "cyclist"),
        CausalFactor(Factor.CURVE, None, "left"),
        CausalFactor(Factor.ROUTE_TURN, None, "right"),
        CausalFactor(Factor.FREE_ROAD),
    ]
    for lon in Longitudinal:
        for lat in Lateral:
            for f in factors:
                text = coc_text(MetaAction(lon, lat), f)
                parsed = parse_coc(text + " More words after the sentence.")
                assert parsed.action == MetaAction(lon, lat), text
                assert parsed.factor is f.kind, text
    assert parse_coc("the quick brown fox").action is None
    assert parse_coc(None).factor is None


def test_consistency_metric():
    v = 10.0
    t = (np.arange(40) + 1) * DT
    straight = np.stack([v * t, 0 * t, 0 * t], -1)
    assert reasoning_action_consistency(
        "Keep speed and keep lane because the road ahead is clear.", straight, v
    )
    assert not reasoning_action_consistency(
        "Stop and keep lane because the road ahead is clear.", straight, v
    )
    assert reasoning_action_consistency("gibberish", straight, v) is None


def test_meta_action_agreement_gives_half_credit_per_part():
    """The RL consistency reward: 1 when the plan does both parts of the CoC's meta-action, 0.5 for
    one, 0 for none, NaN for a text without one; 1 exactly where the leaderboard says consistent."""
    from alpasim_policy.scoring.reasoning import meta_action_agreement

    v = 10.0
    t = (np.arange(40) + 1) * DT
    straight = np.stack([v * t, 0 * t, 0 * t], -1)
    stop = straight.copy()  # brakes at 3 m/s^2: standing from 3.3 s
    tb = np.minimum(t, v / 3.0)
    stop[:, 0] = v * tb - 0.5 * 3.0 * tb**2
    change = straight.copy()  # 3 m to the left: a lane change at speed
    change[:, 1] = np.clip(1.5 * (t - 1.0), 0, 3.0)
    plans = np.stack([stop, straight, change])
    text = "Stop and keep lane because the lead vehicle 6 m ahead is stopped."
    got = meta_action_agreement(text, plans, v)
    np.testing.assert_array_equal(got, [1.0, 0.5, 0.0])
    assert [reasoning_action_consistency(text, p, v) for p in plans] == [True, False, False]
    assert np.isnan(meta_action_agreement("gibberish", plans, v)).all()


def test_bundled_scenes_label_consistently():
    """On every real bundled scene, labels exist at every step and agree with the log they came from."""
    kinds: set[Factor] = set()
    actions: set[MetaAction] = set()
    labelled = 0
    for path in load_suite("bundled"):
        scene = load_scene(path)
        labels = label_scene(scene)
        if scene.num_steps - scene.metadata.t0_index <= 41:  # 4 s windows leave no 4 s future
            assert labels == []
            continue
        assert labels, scene.scene_id
        labelled += 1
        for lab in labels[::5]:
            rig = future_rig_trajectory(scene, lab.step)
            v0 = float(np.hypot(*scene.ego.state[lab.step, 3:5]))
            assert reasoning_action_consistency(lab.text, rig, v0), lab
            kinds.add(lab.factor.kind)
            actions.add(lab.action)
    assert labelled >= 10
    # Real traffic is not all free road at constant speed.
    assert len(kinds) >= 3, kinds
    assert len(actions) >= 3, actions


class TalkingPolicy:
    """Constant velocity, saying "Keep speed" on even steps and "Stop" on odd ones (a known 50 % mix)."""

    name = "talking"
    camera_preset = None

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        pass

    def act(self, obs):
        from alpasim_policy.policies.base import PolicyOutput

        plan = np.zeros((40, 3))
        plan[:, 0] = float(obs["speed"]) * 0.1 * np.arange(1, 41)
        lon = "Keep speed" if int(obs["step"]) % 2 == 0 else "Stop"
        return PolicyOutput(
            trajectory=plan, reasoning=f"{lon} and keep lane because the road ahead is clear."
        )


def test_leaderboard_reports_reasoning_action_consistency(tmp_path):
    """Through a real eval + scoring run: the column is the share of ticks whose plan does what the CoC says."""
    from alpasim_policy.evaluate import evaluate
    from alpasim_policy.scoring.report import score_run

    scene = "av2f-0a1e6f0a"  # ~10 m/s, steady speed over the first seconds
    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{scene}]\n")
    evaluate(str(suite), ["test_training_labeler:TalkingPolicy", "constant_velocity"], tmp_path,
             show_progress=False)  # fmt: skip
    rows = score_run(tmp_path).by_policy()
    assert rows["test_training_labeler:TalkingPolicy"]["reasoning_consistency"] == pytest.approx(
        0.5, abs=0.02
    )
    assert np.isnan(rows["constant_velocity"]["reasoning_consistency"])  # no CoC, no rating
    assert "reasoning_consistency" in (tmp_path / "leaderboard.csv").read_text().splitlines()[0]
