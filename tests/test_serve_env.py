"""Our Gymnasium env drives external egodriver servers through ``make_policy("grpc://HOST:PORT")``:
carla-driver-interface's ``route_follower`` (code nobody here wrote) over a bundled scene, and our
own server with the env's rendered cameras going over the wire."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import shapely

import alpasim_policy  # noqa: F401  (registers the env)
from alpasim_policy.policies.registry import make_policy

SCENE = "av2s-7fab2350-w00"


def _drive(env, policy, ticks: int, seed: int = 0):
    obs, info = env.reset(seed=seed)
    policy.reset(seed=seed, scene=env.unwrapped.scene, camera_rig=env.unwrapped.camera_rig)
    infos, outs = [info], []
    for _ in range(ticks):
        out = policy.act(obs)
        outs.append(out)
        obs, _, terminated, truncated, info = env.step(out.trajectory)
        infos.append(info)
        if terminated or truncated:
            break
    return infos, outs


def test_env_drives_carla_driver_interface_route_follower():
    from carla_driver_interface.policies import RouteFollowerPolicy
    from carla_driver_interface.server import serving

    env = gymnasium.make("alpasim_policy/LogReplay-v0", scene=SCENE)
    with serving(RouteFollowerPolicy(cruise_speed_mps=8.0), port=0, host="127.0.0.1") as port:
        policy = make_policy(f"grpc://127.0.0.1:{port}", camera_preset="none", timeout_s=20)
        try:
            infos, outs = _drive(env, policy, ticks=60)
        finally:
            policy.close()
    env.close()
    assert len(outs) >= 40 and not any(o.extra["server_not_ready"] for o in outs)
    xy = np.array([i["ego_state"][:2] for i in infos])
    route = shapely.LineString(env.unwrapped.scene.route.polyline)
    dist = shapely.distance(shapely.points(xy), route)
    assert dist.max() < 1.0, dist.max()  # the tracked ego stays on the route the server followed
    assert not any(i["at_fault_collision"] for i in infos) and not any(i["off_drivable"] for i in infos)
    progress = route.project(shapely.Point(xy[-1])) - route.project(shapely.Point(xy[0]))
    assert progress > 0.5 * 8.0 * 0.1 * len(outs), progress


def test_env_cameras_reach_our_server_through_the_client():
    from alpasim_policy.serve.service import EgodriverService, build_server
    from alpasim_policy.serve.testing import RouteCruisePolicy

    built: list[RouteCruisePolicy] = []

    def factory():
        built.append(RouteCruisePolicy(camera_preset="alpamayo4", cruise_speed=6.0))
        return built[-1]

    server, port = build_server(EgodriverService(factory, name="route_cruise"), port=0)
    server.start()
    cfg = {"cameras": {"enabled": True, "preset": "alpamayo4", "width": 160, "height": 90}}
    env = gymnasium.make("alpasim_policy/LogReplay-v0", scene=SCENE, config=cfg)
    try:
        policy = make_policy(f"grpc://127.0.0.1:{port}")
        assert policy.camera_preset == "alpamayo4"
        infos, outs = _drive(env, policy, ticks=8, seed=3)
        policy.close()
    finally:
        env.close()
        server.stop(0).wait()
    (p,) = built
    assert p.seed == 3 and len(p.seen) == 8
    rig = env.unwrapped.camera_rig
    assert p.camera_rig.names == rig.names
    assert p.seen[0]["cameras"] == {n: (90, 160, 3) for n in rig.names}
    for out, seen in zip(outs, p.seen, strict=True):
        np.testing.assert_allclose(out.trajectory, seen["plan"], atol=2e-3)
    assert outs[0].reasoning.startswith("follow the route")


@pytest.mark.parametrize("bad", ["grpc://", "grpc://host-without-port"])
def test_registry_grpc_specs_fail_clearly(bad):
    from alpasim_policy.errors import ConfigError

    with pytest.raises(ConfigError, match="HOST:PORT"):
        make_policy(bad)


def test_a_policy_served_over_grpc_drives_like_the_same_policy_in_process():
    """Env -> client -> wire -> our server -> constant_velocity must reproduce the in-process rollout
    (frames, history, timing and the plan conversions all cancel out; float32 on the wire)."""
    from alpasim_policy.serve.service import EgodriverService, build_server

    env = gymnasium.make("alpasim_policy/LogReplay-v0", scene=SCENE)
    local_infos, _ = _drive(env, make_policy("constant_velocity"), ticks=40)
    server, port = build_server(EgodriverService(lambda: make_policy("constant_velocity")), port=0)
    server.start()
    try:
        policy = make_policy(f"grpc://127.0.0.1:{port}", camera_preset="none")
        remote_infos, outs = _drive(env, policy, ticks=40)
        policy.close()
    finally:
        server.stop(0).wait()
        env.close()
    assert len(remote_infos) == len(local_infos) == 41
    a = np.array([i["ego_state"][:3] for i in local_infos])
    b = np.array([i["ego_state"][:3] for i in remote_infos])
    assert np.abs(a - b).max() < 1e-4, np.abs(a - b).max()  # measured ~2e-6 m
    assert np.linalg.norm(a[-1, :2] - a[0, :2]) > 20.0  # it did drive
