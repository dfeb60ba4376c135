"""Baseline policies on real bundled scenes: plans in the rig frame, IDM at red lights, IDM maths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alpasim_policy.policies.base import Policy, validate_plan
from alpasim_policy.policies.baselines import ConstantVelocityPolicy, IDMPolicy, LogReplayPolicy
from alpasim_policy.scenes.format import LightState, TrafficLight, load_scene
from alpasim_policy.scenes.geometry import Polyline
from alpasim_policy.scenes.suite import find_scene
from alpasim_policy.sim.agents import IDMParams, idm_acceleration
from alpasim_policy.sim.env import LogReplayEnv

SCENE = "av2s-7fab2350-w00"


def test_baselines_implement_the_protocol_and_return_valid_plans():
    env = LogReplayEnv(scene=SCENE)
    obs, _ = env.reset(seed=0)
    for pol in (LogReplayPolicy(), ConstantVelocityPolicy(), IDMPolicy()):
        assert isinstance(pol, Policy)
        pol.reset(seed=0, scene=env.scene, camera_rig=None)
        plan = validate_plan(pol.act(obs).trajectory)
        assert plan.shape == (64, 3)
        assert plan[0, 0] > 0  # moving forward in the rig frame (x ahead)


def test_log_replay_plan_is_the_logged_future_in_the_rig_frame():
    env = LogReplayEnv(scene=SCENE)
    obs, _ = env.reset(seed=0)
    pol = LogReplayPolicy()
    pol.reset(scene=env.scene)
    plan = pol.act(obs).trajectory
    k = int(obs["step"])
    pose = env.scene.ego.state[k, :3]
    c, s = np.cos(pose[2]), np.sin(pose[2])
    world = pose[:2] + plan[:, :2] @ np.array([[c, s], [-s, c]])
    np.testing.assert_allclose(world, env.scene.ego.state[k + 1 : k + 65, :2], atol=1e-9)


def test_constant_velocity_keeps_speed_and_heading():
    obs = {"speed": np.float32(7.0)}
    plan = ConstantVelocityPolicy(steps=30).act(obs).trajectory
    np.testing.assert_allclose(np.diff(plan[:, 0]), 0.7, atol=1e-6)
    assert np.all(plan[:, 1:] == 0)


def _red_light_scene(ahead_m: float, state: LightState):
    scene = load_scene(find_scene(SCENE))
    route = Polyline(scene.route.polyline)
    t0 = scene.metadata.t0_index
    s0 = route.project(scene.ego.state[t0 : t0 + 1, :2])[0][0]
    s_stop = s0 + ahead_m
    (xy,), (h,) = route.interpolate(s_stop)
    n = np.array([-np.sin(h), np.cos(h)])
    light = TrafficLight(
        id="test_light", lane_id=scene.route.lane_ids[-1], stop_line=np.stack([xy + 2 * n, xy - 2 * n])
    )
    states = np.full((1, scene.num_steps), int(state), dtype=np.int8)
    road = dataclasses.replace(scene.map, traffic_lights=[light], light_states=states)
    # Agents out of the way, so only the light matters.
    agents = dataclasses.replace(scene.agents, valid=np.zeros_like(scene.agents.valid))
    return dataclasses.replace(scene, map=road, agents=agents), route, s_stop


@pytest.mark.parametrize("state", [LightState.RED, LightState.GREEN])
def test_idm_stops_at_a_red_light_and_passes_a_green_one(state):
    scene, route, s_stop = _red_light_scene(30.0, state)
    env = LogReplayEnv(scene=scene)
    obs, _ = env.reset(seed=0)
    pol = IDMPolicy()
    pol.reset(seed=0, scene=scene)
    front = []
    while True:
        obs, _, term, trunc, info = env.step(pol.act(obs).trajectory)
        s = route.project(np.asarray(obs["pose"])[None, :2])[0][0]
        front.append(s + scene.ego.rear_axle_to_center + scene.ego.length / 2)
        if term or trunc:
            break
    if state == LightState.RED:
        assert max(front) <= s_stop + 0.2  # never past the stop line
        assert float(obs["speed"]) < 0.5 and s_stop - front[-1] < 6.0  # (nearly) waiting close to it
    else:
        assert max(front) > s_stop + 5.0


def test_idm_acceleration_free_road_and_standing_lead():
    p = IDMParams()
    free = idm_acceleration(
        np.array([0.0, 10.0, 20.0]), np.array([10.0] * 3), np.full(3, np.inf), np.zeros(3), p
    )
    assert free[0] == pytest.approx(p.accel_max) and free[1] == pytest.approx(0.0) and free[2] < 0
    # Standing still at the minimum gap behind a standing lead: no push forward, no pull back.
    a = idm_acceleration(np.array([0.0]), np.array([10.0]), np.array([p.min_gap]), np.array([0.0]), p)
    assert a[0] == pytest.approx(0.0, abs=1e-9)
    # Closing fast on a close lead: hard braking, clipped at the physical limit.
    a = idm_acceleration(np.array([15.0]), np.array([15.0]), np.array([5.0]), np.array([0.0]), p)
    assert a[0] == -p.decel_max


@pytest.mark.parametrize(
    "scene_id",
    # a car turning across the ego's path; a start 1 m off the route centreline at low speed; stop-and-go
    ["av2s-7fab2350-w00", "cr-USA_US101-4_1_T-1-ego442", "av2f-0a1e6f0a"],
)
def test_idm_drives_real_scenes_without_collision_or_leaving_the_road(scene_id):
    env = LogReplayEnv(scene=scene_id)
    obs, _ = env.reset(seed=0)
    pol = IDMPolicy()
    pol.reset(seed=0, scene=env.scene)
    start = np.asarray(obs["pose"]).copy()
    while True:
        obs, _, term, trunc, info = env.step(pol.act(obs).trajectory)
        assert not info["collisions"], info["collisions"]
        assert not info["off_drivable"], info["step"]
        if term or trunc:
            break
    assert np.hypot(*(np.asarray(obs["pose"])[:2] - start[:2])) > 5.0  # it did drive
