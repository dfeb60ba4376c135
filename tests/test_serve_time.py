"""The egodriver server refuses bad time (backwards egomotion, a far-off ``time_now_us``) and, at
start-up, policies that cannot drive from what the contract carries -- all through the real server."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from test_serve_server import TIMEOUT, Harness, _code, _history

from alpasim_policy.cli import main as cli_main
from alpasim_policy.serve import convert
from alpasim_policy.serve.proto import egodriver_pb2, egodriver_pb2_grpc
from alpasim_policy.serve.service import EgodriverService, build_server, policy_factory


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def _ego_msg(sid: str, ts_us) -> egodriver_pb2.RolloutEgoTrajectory:
    msg = egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid)
    for t in ts_us:
        x = 5.0 * t * 1e-6
        msg.trajectory.poses.add(pose=convert.pose_proto(x, 0.0, 0.0), timestamp_us=int(t))
    return msg


def _invalid(call, field: str) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(field), e.value.details()
    return e.value.details()


def test_backwards_timestamps_in_one_message_are_rejected(harness):
    sid = harness.start()
    ts = [0, 100_000, 300_000, 200_000, 400_000]
    msg = _ego_msg(sid, ts)
    details = _invalid(lambda: harness.stub.submit_egomotion_observation(msg, timeout=TIMEOUT),
                       "trajectory.poses[3].timestamp_us")  # fmt: skip
    assert "200000" in details and "300000" in details
    assert harness.service._sessions[sid].ego.ts == []  # nothing of the bad message was kept
    dup = _ego_msg(sid, [0, 100_000, 100_000])
    _invalid(lambda: harness.stub.submit_egomotion_observation(dup, timeout=TIMEOUT),
             "trajectory.poses[2].timestamp_us")  # fmt: skip


def test_a_message_going_back_in_time_is_rejected_but_overlapping_resends_are_fine(harness):
    sid = harness.start()
    now, _ = _history(harness, sid, n=16)  # 0 .. 1.5 s
    # an overlapping window (the last 1 s again, plus the next tick) is a normal resend
    harness.stub.submit_egomotion_observation(_ego_msg(sid, np.arange(6, 17) * 100_000), timeout=TIMEOUT)
    assert (
        harness.service._sessions[sid].ego.ts[-1] == 1_600_000
        and len(harness.service._sessions[sid].ego.ts) == 17
    )
    # a pose between received ones (0.75 s) arriving after 1.6 s: time went backwards
    back = _ego_msg(sid, [750_000, 1_700_000])
    _invalid(lambda: harness.stub.submit_egomotion_observation(back, timeout=TIMEOUT),
             "trajectory.poses[0].timestamp_us")  # fmt: skip
    assert len(harness.service._sessions[sid].ego.ts) == 17  # unchanged


@pytest.mark.parametrize(("now_us", "what"), [(99_000 * 10**6, "after"), (8 * 10**6, "before")])
def test_drive_with_time_now_far_from_the_observations_is_rejected(harness, now_us, what):
    sid = harness.start()
    ts = 8_500_000 + np.arange(16) * 100_000  # observations stamped 8.5 .. 10 s
    d = 5.0 * (ts - ts[0]) * 1e-6
    harness.ego(sid, ts, d, np.zeros(16), np.zeros(16), [5.0] * 16)
    details = _invalid(lambda: harness.drive(sid, now_us), "time_now_us")
    assert what in details and "10000000" in details
    assert harness.policies[0].seen == []  # the policy was never asked
    # the right time drives normally; a tick late (the next egomotion not yet in) too
    assert len(harness.drive(sid, int(ts[-1])).trajectory.poses) == 41
    assert len(harness.drive(sid, int(ts[-1]) + 100_000).trajectory.poses) == 41


def test_long_sessions_accept_resent_history_older_than_the_buffer(harness):
    sid = harness.start()
    n = convert.MAX_BUFFERED_POSES + 40
    ts = np.arange(n) * 100_000
    harness.stub.submit_egomotion_observation(_ego_msg(sid, ts), timeout=TIMEOUT)
    ego = harness.service._sessions[sid].ego
    assert len(ego.ts) == convert.MAX_BUFFERED_POSES
    # the simulator resends its whole history plus one new pose: the dropped part is ignored
    harness.stub.submit_egomotion_observation(_ego_msg(sid, np.arange(n + 1) * 100_000), timeout=TIMEOUT)
    assert ego.ts[-1] == n * 100_000 and len(ego.ts) == convert.MAX_BUFFERED_POSES
    assert len(harness.drive(sid, n * 100_000).trajectory.poses) == 41


@pytest.mark.parametrize(("policy", "reason"), [("idm", "idm needs the scene"), ("log_replay", "log_replay")])
def test_serve_refuses_a_policy_that_needs_the_scene_at_start_up(policy, reason, capsys):
    rc = cli_main(["serve", "--policy", policy, "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"policy {policy!r} cannot be served" in err and "egodriver contract" in err and reason in err


def test_a_policy_that_works_from_the_contract_is_served():
    """constant_velocity passes the start-up check and drives through the real server."""
    service = EgodriverService(policy_factory("constant_velocity", {}), name="constant_velocity")
    server, port = build_server(service, host="127.0.0.1", port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = egodriver_pb2_grpc.EgodriverServiceStub(ch)
            stub.start_session(
                egodriver_pb2.DriveSessionRequest(session_uuid="s", random_seed=0), timeout=TIMEOUT
            )
            ts = np.arange(16) * 100_000
            msg = egodriver_pb2.RolloutEgoTrajectory(session_uuid="s")
            for t in ts:
                msg.trajectory.poses.add(
                    pose=convert.pose_proto(5.0 * t * 1e-6, 0.0, 0.0), timestamp_us=int(t)
                )
            stub.submit_egomotion_observation(msg, timeout=TIMEOUT)
            resp = stub.drive(
                egodriver_pb2.DriveRequest(session_uuid="s", time_now_us=int(ts[-1])), timeout=TIMEOUT
            )
        xs = [p.pose.vec.x for p in resp.trajectory.poses]
        assert len(xs) > 10 and xs[0] == pytest.approx(7.5)
        assert np.diff(xs)[1:] == pytest.approx(0.5, abs=1e-3)  # 5 m/s at 0.1 s steps
        assert not math.isnan(xs[-1])
    finally:
        server.stop(grace=0).wait()
