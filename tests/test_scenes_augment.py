"""Slow-motion replays of real scenes (``scenes.augment.time_scaled``), the crawl-traffic augmentation."""

from __future__ import annotations

import numpy as np
import pytest

import alpasim_policy.sim  # noqa: F401  (registers the env)
from alpasim_policy.scenes.augment import time_scaled
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.training.data import drive_samples


def _bundled(key: str):
    return load_scene(next(p for p in load_suite("bundled") if key in str(p)))


@pytest.fixture(scope="module")
def peach():
    return _bundled("Peach-4_1_T-1-ego134")  # urban: traffic lights that change, moving agents


def test_slow_motion_keeps_paths_and_scales_speeds(peach):
    f = 0.25
    slow = time_scaled(peach, f)
    slow.validate()
    assert slow.num_steps == peach.num_steps and slow.metadata.t0_index == peach.metadata.t0_index
    assert slow.scene_id == peach.scene_id + "-x0.25" and slow.metadata.extra["time_scale"] == f
    assert slow.metadata.source_id == peach.metadata.source_id  # held-out filtering still sees it
    # every 4th new step is a logged step: the same pose, the velocity times f, acceleration times f^2
    for k in (0, 8, 40, 64):
        o = k // 4
        np.testing.assert_allclose(slow.ego.state[k, :3], peach.ego.state[o, :3], atol=1e-12)
        np.testing.assert_allclose(slow.ego.state[k, 3:5], f * peach.ego.state[o, 3:5], atol=1e-12)
        np.testing.assert_allclose(slow.ego.state[k, 5:7], f**2 * peach.ego.state[o, 5:7], atol=1e-12)
        both = peach.agents.valid[:, o]
        np.testing.assert_array_equal(slow.agents.valid[:, k], both)
        np.testing.assert_allclose(slow.agents.state[both, k, :3], peach.agents.state[both, o, :3], atol=1e-12)
        np.testing.assert_array_equal(slow.map.light_states[:, k : k + 4], np.repeat(peach.map.light_states[:, o : o + 1], 4, 1))
    # in between, the ego is on the segment between the two logged positions, a quarter of the way
    mid = slow.ego.state[5, :2]
    np.testing.assert_allclose(mid, 0.75 * peach.ego.state[1, :2] + 0.25 * peach.ego.state[2, :2], atol=1e-12)
    # in its 70 steps the slowed ego drives the path the log drove in its first 17.5
    seg = lambda s, n: np.linalg.norm(np.diff(s.ego.state[:n, :2], axis=0), axis=1).sum()  # noqa: E731
    assert seg(peach, 18) - 1e-9 <= seg(slow, slow.num_steps) <= seg(peach, 19) + 1e-9


def test_time_scale_one_is_the_identity_and_bad_factors_are_refused(peach):
    same = time_scaled(peach, 1.0)
    np.testing.assert_allclose(same.ego.state, peach.ego.state, rtol=0, atol=1e-12)
    np.testing.assert_allclose(same.agents.state, peach.agents.state, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(same.map.light_states, peach.map.light_states)
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="time scale"):
            time_scaled(peach, bad)
    fast = time_scaled(peach, 2.0)  # faster replay: the recording ends sooner
    assert fast.num_steps == (peach.num_steps - 1) // 2 + 1
    with pytest.raises(ValueError, match="none after t0"):
        time_scaled(peach, 40.0)


def test_expert_drive_in_slow_motion_crawls_behind_the_traffic():
    """Urban traffic at ~8 m/s, replayed at 0.2: the planner's drive starts as a crawl among cars
    that crawl too (what the suite's stop-and-go scenes need and the raw recordings lack); on a
    clear road the planner then speeds up, as it should."""
    scene = _bundled("av2s-7fab2350-w00")
    slow = time_scaled(scene, 0.2)
    kw = dict(camera_size=(64, 36), frames=1, min_future_steps=20, expert="idm", steps=[20])
    (fast,) = drive_samples(scene, **kw)
    (crawl,) = drive_samples(slow, **kw)
    assert fast.speed > 5.0
    assert crawl.speed < 0.5 * fast.speed
    # the history the model reads is the slowed one (every 0.1 s step moves a fifth as far)
    assert np.abs(np.diff(crawl.history[:, 0])).sum() < 0.5 * np.abs(np.diff(fast.history[:, 0])).sum()


def test_moved_along_path_keeps_the_drive_and_moves_where_it_is(peach):
    from alpasim_policy.scenes.augment import moved_along_path
    from alpasim_policy.scenes.geometry import Polyline

    moved = moved_along_path(peach, 4.0)
    moved.validate()
    assert moved.scene_id == peach.scene_id + "-m4.0" and moved.metadata.extra["moved_m"] == 4.0
    assert moved.metadata.source_id == peach.metadata.source_id
    v = peach.ego.valid
    np.testing.assert_array_equal(moved.ego.valid, v)
    path = Polyline(peach.ego.state[v, :2])
    s0, _, _ = path.project(peach.ego.state[v, :2])
    s1, lat, _ = path.project(moved.ego.state[v, :2])
    inside = s0 + 4.0 < path.length - 1e-6  # past the end the log goes straight on
    np.testing.assert_allclose(s1[inside], s0[inside] + 4.0, atol=1e-6)  # 4 m further on its own path
    np.testing.assert_allclose(lat, 0.0, atol=1e-6)
    # the same speed profile and timing; everything else untouched
    np.testing.assert_allclose(moved.ego.speed, peach.ego.speed, atol=1e-9)
    np.testing.assert_array_equal(moved.agents.state, peach.agents.state)
    np.testing.assert_array_equal(moved.map.light_states, peach.map.light_states)
    # the heading is the log's heading where the log was at that arc length, not the old one
    k = int(np.flatnonzero(v)[0])
    j = int(np.argmin(np.abs(s0 - (s0[0] + 4.0))))
    assert abs(moved.ego.state[k, 2] - peach.ego.state[np.flatnonzero(v)[j], 2]) < 0.05
    np.testing.assert_allclose(moved_along_path(peach, 0.0).ego.state, peach.ego.state, atol=1e-9)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="shift"):
            moved_along_path(peach, bad)


def test_agent_stopping_brakes_along_its_own_path_and_stays(peach):
    from alpasim_policy.scenes.augment import agent_stopping
    from alpasim_policy.scenes.geometry import Polyline

    speeds = np.hypot(peach.agents.state[..., 3], peach.agents.state[..., 4])
    i, k = (int(x[0]) for x in np.nonzero((speeds > 5.0) & peach.agents.valid))  # a car moving > 5 m/s
    v0 = float(speeds[i, k])
    stopped = agent_stopping(peach, i, k, 2.0)
    stopped.validate()
    assert stopped.scene_id == f"{peach.scene_id}-stop{i}a2.0@{k}"
    np.testing.assert_array_equal(stopped.agents.state[:, :k], peach.agents.state[:, :k])  # the log before
    others = np.arange(len(peach.agents)) != i
    np.testing.assert_array_equal(stopped.agents.state[others], peach.agents.state[others])
    np.testing.assert_array_equal(stopped.ego.state, peach.ego.state)
    v = np.hypot(stopped.agents.state[i, k:, 3], stopped.agents.state[i, k:, 4])
    t = np.arange(len(v)) * 0.1
    np.testing.assert_allclose(v, np.maximum(v0 - 2.0 * t, 0.0), atol=1e-9)  # brakes at 2 m/s^2 ...
    assert stopped.agents.valid[i, k:].all()  # ... and stays, even past where the log ends
    path = Polyline(peach.agents.state[i, peach.agents.valid[i], :2])
    s, lat, _ = path.project(stopped.agents.state[i, k:, :2])
    inside = s < path.length - 1e-6
    np.testing.assert_allclose(lat[inside], 0.0, atol=1e-6)  # on its own logged path
    stop_dist = v0**2 / (2 * 2.0)
    assert s[-1] - s[0] == pytest.approx(stop_dist, rel=1e-6)  # v0^2 / 2a further on, where it stays
    with pytest.raises(ValueError, match="not logged at step"):
        agent_stopping(peach, i, peach.num_steps, 2.0)
    with pytest.raises(ValueError, match="deceleration"):
        agent_stopping(peach, i, k, 0.0)


def test_agent_speed_profile_drives_the_path_at_the_given_speeds(peach):
    from alpasim_policy.scenes.augment import agent_speed_profile

    speeds = np.hypot(peach.agents.state[..., 3], peach.agents.state[..., 4])
    i, k = (int(x[0]) for x in np.nonzero((speeds > 5.0) & peach.agents.valid))
    profile = np.r_[0.0, np.full(9, 2.0), np.zeros(10), np.full(5, 1.0)]  # 2 m/s, stand, 1 m/s, stand
    out = agent_speed_profile(peach, i, k, profile, "test")
    out.validate()
    assert out.scene_id == peach.scene_id + "-test"
    v = np.hypot(out.agents.state[i, k:, 3], out.agents.state[i, k:, 4])
    assert v[0] == pytest.approx(speeds[i, k])  # the log's speed where it starts
    np.testing.assert_allclose(v[1:25], profile[1:25], atol=1e-9)
    assert (v[25:] == 0).all() and out.agents.valid[i, k:].all()  # then it stays
    step = np.linalg.norm(np.diff(out.agents.state[i, k:, :2], axis=0), axis=1)
    np.testing.assert_allclose(step[1:9], 0.2, atol=1e-3)  # 2 m/s = 0.2 m per 0.1 s step
    np.testing.assert_allclose(step[10:19], 0.0, atol=1e-9)  # standing
    np.testing.assert_array_equal(out.agents.state[:, :k], peach.agents.state[:, :k])
    with pytest.raises(ValueError, match="speeds"):
        agent_speed_profile(peach, i, k, np.r_[0.0, -1.0], "bad")


def test_yaw_swung_hands_over_mid_swerve_and_the_planner_takes_it_out():
    """Only the ego's headings over the 4 steps up to t0 change, ramping to the full swing at t0;
    driven from there, the ``idm`` expert's label turns against the swing; the data stage's
    draws are seeded, of the documented size, and never repeat."""
    from alpasim_policy.scenes.augment import yaw_swung
    from alpasim_policy.scenes.geometry import wrap_angle
    from alpasim_policy.training.build import YAW_SWING_RAD, yaw_swing_scenes

    av2 = load_scene(next(p for p in load_suite("bundled") if "av2s-7fab2350-w00" in str(p)))
    t0 = av2.metadata.t0_index
    swung = yaw_swung(av2, 0.15)
    diff = wrap_angle(swung.ego.state[:, 2] - av2.ego.state[:, 2])
    assert np.allclose(diff[: t0 - 3], 0) and np.allclose(diff[t0 + 1 :], 0)
    assert diff[t0] == pytest.approx(0.15) and np.all(np.diff(diff[t0 - 4 : t0 + 1]) > 0)
    other = np.delete(np.arange(swung.ego.state.shape[1]), 2)
    np.testing.assert_array_equal(swung.ego.state[:, other], av2.ego.state[:, other])
    assert swung.scene_id.endswith("-yaw+0.15") and swung.metadata.extra["yaw_swing_rad"] == 0.15
    for delta in (0.15, -0.15):
        first = next(drive_samples(yaw_swung(av2, delta), camera_size=(32, 18), frames=1, expert="idm",
                                   steps=[t0]))  # fmt: skip
        assert first.history[-5, 2] * delta < 0  # rig frame: the car came from the other side ...
        assert first.target[10, 2] * delta < 0 and abs(first.target[10, 2]) > abs(delta) / 2  # ... and turns back
    with pytest.raises(ValueError, match="yaw swing"):
        yaw_swung(av2, 1.0)
    draws = yaw_swing_scenes(av2, 3, 0)
    assert [s.scene_id for s in draws] == [s.scene_id for s in yaw_swing_scenes(av2, 3, 0)]
    sizes = [abs(s.metadata.extra["yaw_swing_rad"]) for s in draws]
    assert len(set(sizes)) == len(sizes) and all(YAW_SWING_RAD[0] <= x <= YAW_SWING_RAD[1] for x in sizes)
    assert yaw_swing_scenes(av2, 0, 0) == []
