"""The egodriver server builds the observation's ``route`` / ``command`` exactly as the env does.

A policy must see the same route and command in simulation and behind AlpaSim; before they shared
one rule the server took the command from raw waypoints (some behind the car) and extrapolated past
the route's end, while the env used only the route ahead and clamped.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import alpasim_policy  # noqa: F401  (registers the env)
from alpasim_policy.policies.baselines import LogReplayPolicy
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.serve import convert

BUNDLED = [p.stem for p in load_suite("bundled")]


@pytest.mark.parametrize("scene_id", BUNDLED[:2])
def test_server_route_and_command_equal_the_envs_along_a_log_replay(scene_id):
    env = gym.make("alpasim_policy/LogReplay-v0", scene=scene_id)
    scene = env.unwrapped.scene
    policy = LogReplayPolicy()
    obs, _ = env.reset(seed=0)
    policy.reset(seed=0, scene=scene)
    route_scene = np.asarray(scene.route.polyline, dtype=np.float64)
    behind = 0
    while True:
        pose = tuple(float(v) for v in obs["pose"])
        # What AlpaSim sends: the whole route as rig-frame waypoints at this pose; the server
        # takes them back to its local frame (here the scene frame) with the pose it had then.
        waypoints_rig = convert.to_rig(route_scene, pose)
        behind += int((waypoints_rig[:, 0] < 0).any())
        route, command = convert.route_observation(convert.from_rig(waypoints_rig, pose), pose)
        assert route.dtype == obs["route"].dtype and route.shape == obs["route"].shape
        np.testing.assert_allclose(route, obs["route"], atol=1e-4)
        assert command == int(obs["command"])
        obs, _, term, trunc, _ = env.step(policy.act(obs).trajectory)
        if term or trunc:
            break
    assert behind > 0  # the raw waypoints did include points behind the car


def test_server_route_is_clamped_at_the_routes_end_like_the_env():
    pose = (0.0, 0.0, 0.0)
    route, command = convert.route_observation(np.array([[-10.0, 0.0], [0.0, 0.0], [20.0, 0.0]]), pose)
    np.testing.assert_allclose(route[:11, 0], np.arange(0, 22, 2.0))
    np.testing.assert_allclose(route[11:], [[20.0, 0.0]] * (len(route) - 11))
    assert command == 1
    # No route: straight ahead along the rig's x axis.
    route, command = convert.route_observation(None, (5.0, 1.0, np.pi / 2))
    np.testing.assert_allclose(route[:, 1], 0.0, atol=1e-4)
    np.testing.assert_allclose(route[:, 0], 2.0 * np.arange(len(route)), atol=1e-4)
    assert command == 1
