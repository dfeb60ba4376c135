"""Our egodriver server: driven by carla-driver-interface's FakeLoop (code nobody here wrote),
plus every error path, session isolation, seeding and graceful SIGTERM shutdown."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import uuid

import cv2
import grpc
import numpy as np
import pytest

from alpasim_policy.serve import convert
from alpasim_policy.serve.proto import common_pb2, egodriver_pb2, egodriver_pb2_grpc
from alpasim_policy.serve.service import EgodriverService, build_server
from alpasim_policy.serve.testing import RouteCruisePolicy

TIMEOUT = 20.0


class Harness:
    """A server on loopback with an ephemeral port; keeps every policy it built."""

    def __init__(self, min_history: int = 16, **policy_kwargs):
        self.policies: list[RouteCruisePolicy] = []

        def factory():
            p = RouteCruisePolicy(**policy_kwargs)
            self.policies.append(p)
            return p

        self.service = EgodriverService(factory, name="route_cruise", min_history=min_history)
        self.server, self.port = build_server(self.service, host="127.0.0.1", port=0)
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = egodriver_pb2_grpc.EgodriverServiceStub(self.channel)

    def close(self):
        self.channel.close()
        self.server.stop(grace=0).wait()

    # -- request helpers (a straight road along local x, heading 0.3 rad to make frames matter)
    def start(self, seed=0, cameras=(), sid=None):
        sid = sid or str(uuid.uuid4())
        req = egodriver_pb2.DriveSessionRequest(session_uuid=sid, random_seed=seed)
        for c in cameras:
            req.rollout_spec.vehicle.available_cameras.append(c)
        self.stub.start_session(req, timeout=TIMEOUT)
        return sid

    def ego(self, sid, ts_us, xs, ys, yaws, speeds=None):
        msg = egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid)
        for i, (t, x, y, h) in enumerate(zip(ts_us, xs, ys, yaws, strict=True)):
            msg.trajectory.poses.add(pose=convert.pose_proto(x, y, h), timestamp_us=int(t))
            if speeds is not None:
                msg.dynamic_states.add().linear_velocity.x = float(speeds[i])
        self.stub.submit_egomotion_observation(msg, timeout=TIMEOUT)

    def drive(self, sid, now_us):
        return self.stub.drive(
            egodriver_pb2.DriveRequest(session_uuid=sid, time_now_us=now_us, time_query_us=now_us + 100_000),
            timeout=TIMEOUT,
        )


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def _history(h: Harness, sid: str, n: int = 16, speed: float = 5.0, yaw: float = 0.3):
    ts = np.arange(n) * 100_000
    d = speed * ts * 1e-6
    h.ego(sid, ts, d * math.cos(yaw), d * math.sin(yaw), [yaw] * n, [speed] * n)
    return int(ts[-1]), (d[-1] * math.cos(yaw), d[-1] * math.sin(yaw), yaw)


def _code(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


# ----------------------------------------------------------------------------- carla-driver-interface


def test_fakeloop_drives_our_server_through_a_full_session():
    from carla_driver_interface.testing import FakeCamera, FakeLoop

    h = Harness(min_history=4, cruise_speed=6.0)
    try:
        cam = FakeCamera(width=320, height=180)
        with FakeLoop(f"127.0.0.1:{h.port}", [cam], initial_lateral_offset_m=1.2, timeout_s=TIMEOUT) as loop:
            result = loop.run(50, seed=11)
        assert result.steps == 50 and not result.terminated_by_policy
        assert h.service.session_count == 0  # FakeLoop closed its session
        (policy,) = h.policies
        assert policy.seed == 11
        # The declared pinhole camera reached the policy as one of our Cameras, optical axis forward.
        (c,) = policy.camera_rig.cameras
        assert (c.name, c.width, c.height) == ("camera_front", 320, 180)
        assert c.fx == pytest.approx(cam.focal_px, rel=1e-6)
        np.testing.assert_allclose(c.rig_T_cam[:3, 2], [1.0, 0.0, 0.0], atol=1e-6)  # optical z = rig x
        np.testing.assert_allclose(c.rig_T_cam[:3, 3], [cam.x, cam.y, cam.z], atol=1e-6)
        # Frames were decoded into RGB images of the declared size.
        assert policy.seen[-1]["cameras"] == {"camera_front": (180, 320, 3)}
        # Not ready for the first 3 ticks (min_history=4): FakeLoop holds; then it drives.
        assert len(policy.seen) == 50 - 3
        speeds = np.array(result.speeds_mps)
        assert np.all(speeds[:4] == 0.0) and speeds[-1] == pytest.approx(6.0, abs=0.3) and speeds.max() < 6.5
        # Route following: the start offset of 1.2 m to the left is driven out.
        lat = result.lateral_offsets_m
        assert lat[0] == pytest.approx(1.2) and abs(lat[-1]) < 0.1
        assert 15.0 < result.ego.positions[-1][0] < 26.4  # 46 ticks at <= 6 m/s, from standstill
    finally:
        h.close()


# ----------------------------------------------------------------------------- conventions


def test_drive_returns_current_pose_first_then_10hz_local_plan(harness):
    sid = harness.start(seed=3)
    now, (x0, y0, yaw) = _history(harness, sid, speed=5.0, yaw=0.3)
    rig_route = np.stack([np.arange(0, 100, 2.0), np.zeros(50), np.zeros(50)], axis=1)
    harness.stub.submit_route(
        egodriver_pb2.RouteRequest(
            session_uuid=sid,
            route=egodriver_pb2.Route(
                timestamp_us=now, waypoints=[common_pb2.Vec3(x=x, y=y) for x, y, _ in rig_route]
            ),
        ),
        timeout=TIMEOUT,
    )
    resp = harness.drive(sid, now)
    poses = resp.trajectory.poses
    assert len(poses) == 1 + 40
    assert poses[0].timestamp_us == now
    assert (poses[0].pose.vec.x, poses[0].pose.vec.y) == pytest.approx((x0, y0), abs=1e-4)
    assert [p.timestamp_us - now for p in poses[1:]] == [100_000 * (i + 1) for i in range(40)]
    # The policy's rig-frame plan, expressed in the local frame along heading 0.3 rad.
    policy = harness.policies[0]
    plan_local = np.array([[p.pose.vec.x, p.pose.vec.y] for p in poses[1:]])
    back = convert.to_rig(plan_local, (x0, y0, yaw))
    assert np.all(np.diff(back[:, 0]) > 0) and np.abs(back[:, 1]).max() < 0.5
    yaws = [convert.quat_to_yaw(p.pose.quat.w, p.pose.quat.x, p.pose.quat.y, p.pose.quat.z) for p in poses]
    assert np.allclose(yaws, yaw, atol=0.3)
    # The observation the policy saw: 16 history rows, newest at the origin, speed 5, straight.
    seen = policy.seen[-1]
    np.testing.assert_allclose(seen["ego_history"][-1], [0, 0, 0, 5.0], atol=1e-4)
    np.testing.assert_allclose(seen["ego_history"][0, :2], [-7.5, 0.0], atol=1e-3)
    assert seen["command"] == 1 and seen["speed"] == pytest.approx(5.0)
    # debug_info: the reasoning text and every sampled trajectory, each led by the current pose.
    info = convert.unpack_debug(resp.debug_info.unstructured_debug_info)
    assert info["reasoning_text"].startswith("follow the route") and info["policy_name"] == "route_cruise"
    assert len(resp.debug_info.sampled_trajectories) == 4
    assert all(len(t.poses) == 41 for t in resp.debug_info.sampled_trajectories)


def test_route_command_follows_alpasims_rule(harness):
    sid = harness.start()
    now, _ = _history(harness, sid)
    for dy, expected in ((6.0, 0), (-6.0, 2), (0.5, 1)):
        wps = [common_pb2.Vec3(x=float(x), y=dy * x / 6.0) for x in np.arange(0, 40, 2.0)]
        harness.stub.submit_route(
            egodriver_pb2.RouteRequest(
                session_uuid=sid, route=egodriver_pb2.Route(timestamp_us=now, waypoints=wps)
            ),
            timeout=TIMEOUT,
        )
        harness.drive(sid, now)
        assert harness.policies[0].seen[-1]["command"] == expected


def test_too_little_history_gives_empty_trajectory(harness):
    sid = harness.start()
    assert len(harness.drive(sid, 0).trajectory.poses) == 0  # no egomotion at all
    now, _ = _history(harness, sid, n=15)  # 1.4 s: one step short
    assert len(harness.drive(sid, now).trajectory.poses) == 0
    assert harness.policies[0].seen == []  # the policy was not asked
    harness.ego(sid, [now + 100_000], [7.5 * math.cos(0.3)], [7.5 * math.sin(0.3)], [0.3], [5.0])
    assert len(harness.drive(sid, now + 100_000).trajectory.poses) == 41


# ----------------------------------------------------------------------------- error paths


def test_unknown_session_is_not_found(harness):
    stub, sid = harness.stub, "no-such-session"
    calls = [
        lambda: stub.drive(egodriver_pb2.DriveRequest(session_uuid=sid), timeout=TIMEOUT),
        lambda: stub.close_session(egodriver_pb2.DriveSessionCloseRequest(session_uuid=sid), timeout=TIMEOUT),
        lambda: stub.submit_route(egodriver_pb2.RouteRequest(session_uuid=sid), timeout=TIMEOUT),
        lambda: stub.submit_image_observation(
            egodriver_pb2.RolloutCameraImage(session_uuid=sid), timeout=TIMEOUT
        ),
        lambda: stub.submit_egomotion_observation(
            egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid), timeout=TIMEOUT
        ),
        lambda: stub.submit_recording_ground_truth(
            egodriver_pb2.GroundTruthRequest(session_uuid=sid), timeout=TIMEOUT
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert _code(e) == grpc.StatusCode.NOT_FOUND and sid in e.value.details()


def _camera(name="camera_front", w=64, h=48):
    from alpasim_policy.render.cameras import CameraRig

    cam = CameraRig.from_preset("alpamayo4", w, h).cameras[0]
    out = convert.camera_to_proto(cam)
    out.logical_id = out.intrinsics.logical_id = name
    return out


@pytest.mark.parametrize(
    "case,field",
    [
        ("empty_uuid", "session_uuid"),
        ("nan_pose", "trajectory.poses[1].pose"),
        ("zero_quat", "trajectory.poses[0].pose.quat"),
        ("states_mismatch", "dynamic_states"),
        ("empty_egomotion", "trajectory.poses"),
        ("bad_image", "camera_image.image_bytes"),
        ("unknown_camera", "camera_image.logical_id"),
        ("nan_route", "route.waypoints[2]"),
        ("camera_without_model", "rollout_spec.vehicle.available_cameras[0].intrinsics"),
    ],
)
def test_malformed_request_is_invalid_argument_naming_the_field(harness, case, field):
    stub = harness.stub
    sid = harness.start(cameras=[_camera()])
    _history(harness, sid, n=2)
    if case == "empty_uuid":
        req = lambda: stub.drive(egodriver_pb2.DriveRequest(session_uuid=""), timeout=TIMEOUT)  # noqa: E731
    elif case in ("nan_pose", "zero_quat", "states_mismatch", "empty_egomotion"):
        msg = egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid)
        if case != "empty_egomotion":
            msg.trajectory.poses.add(pose=convert.pose_proto(1, 2, 0), timestamp_us=10**6)
            msg.trajectory.poses.add(pose=convert.pose_proto(float("nan"), 2, 0), timestamp_us=2 * 10**6)
        if case == "zero_quat":
            msg.trajectory.poses[0].pose.quat.w = 0.0
        if case == "states_mismatch":
            msg.trajectory.poses[1].pose.vec.x = 3.0
            msg.dynamic_states.add()
        req = lambda: stub.submit_egomotion_observation(msg, timeout=TIMEOUT)  # noqa: E731
    elif case in ("bad_image", "unknown_camera"):
        ok, jpg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
        msg = egodriver_pb2.RolloutCameraImage(session_uuid=sid)
        msg.camera_image.logical_id = "camera_front" if case == "bad_image" else "camera_rear"
        msg.camera_image.image_bytes = b"not an image" if case == "bad_image" else jpg.tobytes()
        req = lambda: stub.submit_image_observation(msg, timeout=TIMEOUT)  # noqa: E731
    elif case == "nan_route":
        wps = [common_pb2.Vec3(x=0), common_pb2.Vec3(x=2), common_pb2.Vec3(x=float("nan"))]
        msg = egodriver_pb2.RouteRequest(session_uuid=sid, route=egodriver_pb2.Route(waypoints=wps))
        req = lambda: stub.submit_route(msg, timeout=TIMEOUT)  # noqa: E731
    else:
        bad = _camera()
        bad.intrinsics.ClearField("opencv_pinhole_param")
        msg = egodriver_pb2.DriveSessionRequest(session_uuid="fresh")
        msg.rollout_spec.vehicle.available_cameras.append(bad)
        req = lambda: stub.start_session(msg, timeout=TIMEOUT)  # noqa: E731
    with pytest.raises(grpc.RpcError) as e:
        req()
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field), e.value.details()
    # The session is intact: a bad request changes nothing.
    if case != "camera_without_model":
        assert len(harness.service._sessions[sid].ego.ts) == 2


def test_duplicate_session_is_already_exists(harness):
    sid = harness.start()
    with pytest.raises(grpc.RpcError) as e:
        harness.start(sid=sid)
    assert _code(e) == grpc.StatusCode.ALREADY_EXISTS


def test_policy_exception_is_internal_and_session_stays_usable():
    h = Harness(fail_on=(2,), bad_plan_on=(3,))
    try:
        sid = h.start()
        now, _ = _history(h, sid)
        assert len(h.drive(sid, now).trajectory.poses) == 41
        with pytest.raises(grpc.RpcError) as e:
            h.drive(sid, now)
        assert _code(e) == grpc.StatusCode.INTERNAL and "scripted failure on call 2" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            h.drive(sid, now)
        assert _code(e) == grpc.StatusCode.INTERNAL and "5 steps, need at least 10" in e.value.details()
        assert len(h.drive(sid, now).trajectory.poses) == 41  # still usable
    finally:
        h.close()


# ----------------------------------------------------------------------------- isolation, seeding


def test_concurrent_sessions_are_isolated(harness):
    n = 8
    speeds = [2.0 + i for i in range(n)]
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def run(i):
        try:
            sid = harness.start(seed=i)
            now, _ = _history(harness, sid, speed=speeds[i], yaw=0.1 * i)
            out = []
            for k in range(10):
                t = now + k * 100_000
                d = speeds[i] * t * 1e-6
                harness.ego(
                    sid, [t], [d * math.cos(0.1 * i)], [d * math.sin(0.1 * i)], [0.1 * i], [speeds[i]]
                )
                resp = harness.drive(sid, t)
                p0, p1 = resp.trajectory.poses[0], resp.trajectory.poses[1]
                fwd = convert.to_rig(
                    np.array([[p1.pose.vec.x, p1.pose.vec.y]]), (p0.pose.vec.x, p0.pose.vec.y, 0.1 * i)
                )
                out.append(float(fwd[0, 0]) / 0.1)  # first-step forward speed in this session's rig frame
            results[i] = out
            harness.stub.close_session(
                egodriver_pb2.DriveSessionCloseRequest(session_uuid=sid), timeout=TIMEOUT
            )
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(harness.policies) == n and len({id(p) for p in harness.policies}) == n
    for i in range(n):  # each session's first plan step reflects its own speed
        v = speeds[i]  # RouteCruisePolicy: towards 8 m/s at +2 / -3 m/s^2
        expected = min(8.0, v + 0.2) if v <= 8.0 else max(8.0, v - 0.3)
        assert results[i][0] == pytest.approx(expected, abs=0.01)
    assert harness.service.session_count == 0


def test_session_seed_reproduces_plans_exactly(harness):
    def run(seed):
        sid = harness.start(seed=seed)
        now, _ = _history(harness, sid)
        return [harness.drive(sid, now + 0).SerializeToString(deterministic=True) for _ in range(3)]

    def strip(raw):  # inference_seconds in the debug dict is a timing: compare everything else
        r = egodriver_pb2.DriveResponse.FromString(raw)
        info = convert.unpack_debug(r.debug_info.unstructured_debug_info)
        info.pop("inference_seconds")
        r.debug_info.ClearField("unstructured_debug_info")
        return r.SerializeToString(deterministic=True), info

    a, b, c = run(5), run(5), run(6)
    assert [strip(x) for x in a] == [strip(x) for x in b]
    assert [strip(x)[0] for x in a] != [strip(x)[0] for x in c]


# ----------------------------------------------------------------------------- CLI process


def test_serve_command_stops_gracefully_on_sigterm(tmp_path):
    # A module:Class policy spec through the real registry, one option parsed as YAML.
    cmd = [
        sys.executable,
        "-m",
        "alpasim_policy.cli",
        "serve",
        "--policy",
        "alpasim_policy.serve.testing:RouteCruisePolicy",
    ]
    cmd += ["--port", "0", "--policy-option", "cruise_speed=3", "--grace", "1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        line = proc.stdout.readline()
        assert "serving alpasim_policy.serve.testing:RouteCruisePolicy" in line, line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            version = egodriver_pb2_grpc.EgodriverServiceStub(ch).get_version(
                common_pb2.Empty(), timeout=TIMEOUT
            )
        assert "RouteCruisePolicy" in version.version_id
        proc.terminate()  # SIGTERM
        assert proc.wait(timeout=TIMEOUT) == 0
        assert "server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shut_down_rpc_triggers_the_shutdown_callback():
    stopped = threading.Event()
    service = EgodriverService(RouteCruisePolicy, on_shutdown=stopped.set)
    server, port = build_server(service, port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            egodriver_pb2_grpc.EgodriverServiceStub(ch).shut_down(common_pb2.Empty(), timeout=TIMEOUT)
        assert stopped.wait(timeout=5.0)
    finally:
        server.stop(0).wait()


def test_route_may_arrive_before_egomotion_and_is_moved_to_the_current_rig(harness):
    sid = harness.start()
    # Route valid at t = 0.5 s, in the rig frame of that time: a lane 1 m to the left.
    wps = [common_pb2.Vec3(x=float(x), y=1.0) for x in np.arange(-10, 60, 2.0)]
    harness.stub.submit_route(
        egodriver_pb2.RouteRequest(
            session_uuid=sid, route=egodriver_pb2.Route(timestamp_us=500_000, waypoints=wps)
        ),
        timeout=TIMEOUT,
    )
    now, _ = _history(harness, sid, speed=5.0, yaw=0.3)  # straight along 0.3 rad, 1.5 s
    harness.drive(sid, now)
    obs_route = harness.policies[0].seen[-1]
    assert obs_route["command"] == 1
    policy_route = harness.service.observation(harness.service._sessions[sid])["route"]
    np.testing.assert_allclose(policy_route[:, 1], 1.0, atol=1e-4)  # still 1 m left, straight ahead
    np.testing.assert_allclose(policy_route[:5, 0], [0, 2, 4, 6, 8], atol=1e-4)


def test_fakeloop_drives_our_alpamayo_policy_served_over_grpc():
    """The real policy behind the server: AlpamayoPolicy (tiny preset, its default shipped weights) fed by
    FakeLoop's four rendered cameras under the alpamayo4 names."""
    from carla_driver_interface.testing import FakeCamera, FakeLoop

    from alpasim_policy.policies.registry import make_policy

    class Recording:  # the served policy, keeping what it answered
        def __init__(self, inner):
            self.inner, self.name, self.camera_preset, self.outputs = (
                inner,
                inner.name,
                inner.camera_preset,
                [],
            )

        def reset(self, **kw):
            self.inner.reset(**kw)

        def act(self, obs):
            self.outputs.append(self.inner.act(obs))
            return self.outputs[-1]

    names = [
        "camera_cross_left_120fov",
        "camera_front_wide_120fov",
        "camera_cross_right_120fov",
        "camera_front_tele_30fov",
    ]
    yaws = [60.0, 0.0, -60.0, 0.0]
    cams = [
        FakeCamera(n, 128, 72, fov_deg=120.0 if "120" in n else 30.0, yaw_left_deg=y)
        for n, y in zip(names, yaws, strict=True)
    ]
    built: list[Recording] = []

    def factory():
        built.append(Recording(make_policy("alpamayo", preset="tiny", samples=1, cot_tokens=4)))
        return built[-1]

    service = EgodriverService(factory, name="alpamayo", min_history=2)
    server, port = build_server(service, port=0)
    server.start()
    try:
        with FakeLoop(f"127.0.0.1:{port}", cams, initial_speed_mps=5.0, timeout_s=120) as loop:
            result = loop.run(5, seed=2)
    finally:
        server.stop(0).wait()
    assert result.steps == 5 and service.session_count == 0
    (p,) = built
    # Tick 0 is "not ready" (1 pose < min_history 2) and FakeLoop holds; the model drives ticks 1-4.
    assert len(p.outputs) == 4
    assert all(o.trajectory.shape == (64, 3) and o.samples.shape[0] == 1 for o in p.outputs)
    assert all(isinstance(o.reasoning, str) for o in p.outputs)
    # FakeLoop's ego follows each plan exactly: tick 2's pose is the first plan's first row
    # (ego at the origin, heading 0, so rig frame = local frame).
    np.testing.assert_allclose(result.ego.positions[2, :2], p.outputs[0].trajectory[0, :2], atol=1e-4)
