"""The egodriver server builds the observation's ``route`` / ``command`` exactly as the env does.

A policy must see the same route and command in simulation and behind AlpaSim; before they shared
one rule the server took the command from raw waypoints (some behind the car) and extrapolated past
the route's end, while the env used only the route ahead and clamped.
"""

from __future__ import annotations

import grpc
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


@pytest.mark.parametrize("scene_id", BUNDLED[:3])
def test_the_grpc_server_shows_the_policy_the_envs_route_and_command(scene_id):
    """End to end: AlpaSim's messages (the logged ego history, the whole route as rig-frame
    waypoints) go through the real server; the policy behind it sees the env's route / command."""
    from alpasim_policy.policies.base import HISTORY_STEPS
    from alpasim_policy.serve.proto import common_pb2, egodriver_pb2, egodriver_pb2_grpc
    from alpasim_policy.serve.service import EgodriverService, build_server
    from alpasim_policy.serve.testing import RouteCruisePolicy

    env = gym.make("alpasim_policy/LogReplay-v0", scene=scene_id)
    obs, _ = env.reset(seed=0)
    scene = env.unwrapped.scene
    k = int(obs["step"])
    seen: list[dict] = []

    class Recording(RouteCruisePolicy):
        def act(self, observation):
            seen.append({"route": np.array(observation["route"]), "command": int(observation["command"])})
            return super().act(observation)

    server, port = build_server(EgodriverService(Recording, name="route_cruise"), host="127.0.0.1", port=0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = egodriver_pb2_grpc.EgodriverServiceStub(channel)
        sid = "route-" + scene_id
        stub.start_session(egodriver_pb2.DriveSessionRequest(session_uuid=sid), timeout=30)
        # the log up to now in AlpaSim's local frame (here: the scene frame)
        rows = np.arange(k - HISTORY_STEPS + 1, k + 1)
        msg = egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid)
        for j, r in enumerate(rows):
            x, y, yaw = (float(v) for v in scene.ego.state[r, :3])
            msg.trajectory.poses.add(pose=convert.pose_proto(x, y, yaw), timestamp_us=j * 100_000)
            msg.dynamic_states.add().linear_velocity.x = float(scene.ego.speed[r])
        stub.submit_egomotion_observation(msg, timeout=30)
        now = (HISTORY_STEPS - 1) * 100_000
        pose = tuple(float(v) for v in scene.ego.state[k, :3])
        np.testing.assert_allclose(pose, obs["pose"], atol=1e-9)  # the env starts on the log
        wps = convert.to_rig(np.asarray(scene.route.polyline, dtype=np.float64), pose)
        stub.submit_route(
            egodriver_pb2.RouteRequest(
                session_uuid=sid,
                route=egodriver_pb2.Route(
                    timestamp_us=now, waypoints=[common_pb2.Vec3(x=float(x), y=float(y)) for x, y in wps]
                ),
            ),
            timeout=30,
        )
        stub.drive(
            egodriver_pb2.DriveRequest(session_uuid=sid, time_now_us=now, time_query_us=now + 100_000),
            timeout=60,
        )
    finally:
        channel.close()
        server.stop(grace=0).wait()
    assert len(seen) == 1
    got = seen[0]
    np.testing.assert_allclose(got["route"], obs["route"], atol=1e-3)
    assert int(got["command"]) == int(obs["command"])
