"""DeadlinePolicy: miss counting, previous-plan fallback shifted in time, the delay splice."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from alpasim_policy.errors import ConfigError, PolicyOutputError
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.policies.deadline import DeadlinePolicy
from alpasim_policy.scenes.geometry import rig_to_scene_poses as rig_to_scene
from alpasim_policy.scenes.geometry import scene_to_rig_poses as scene_to_rig


class FakeClock:
    """A clock the slow policy advances, so latencies are exact and the test never races the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedPolicy:
    """Plans a straight line at 10 m/s with a lateral offset that changes every call (to tell plans apart).

    ``latencies[i]`` seconds are spent on call ``i``: added to the fake clock, or slept for real.
    """

    name = "scripted"
    camera_preset = None

    def __init__(self, latencies, clock: FakeClock | None = None, length: int = 20):
        self.latencies = list(latencies)
        self.clock = clock
        self.length = length
        self.calls = 0
        self.resets = 0

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        self.calls = 0
        self.resets += 1

    def plan(self, call: int) -> np.ndarray:
        t = 0.1 * np.arange(1, self.length + 1)
        return np.stack([10.0 * t, np.full(self.length, 0.1 * (call + 1)), np.zeros(self.length)], axis=1)

    def act(self, observation):
        lat = self.latencies[self.calls]
        if self.clock is not None:
            self.clock.now += lat
        else:
            time.sleep(lat)
        plan = self.plan(self.calls)
        self.calls += 1
        return PolicyOutput(
            trajectory=plan, reasoning=f"call {self.calls}", samples=plan[None], extra={"k": 1}
        )


def obs(step: int, pose=(0.0, 0.0, 0.0), speed: float = 10.0) -> dict:
    return {"step": np.int64(step), "pose": np.asarray(pose, dtype=np.float64), "speed": np.float32(speed)}


def manual_to_rig(p_scene: np.ndarray, pose) -> np.ndarray:
    """Independent (per-row, scalar trig) scene -> rig conversion for checking the vectorised one."""
    x0, y0, h0 = pose
    out = []
    for x, y, h in p_scene:
        dx, dy = x - x0, y - y0
        out.append(
            [
                dx * math.cos(h0) + dy * math.sin(h0),
                -dx * math.sin(h0) + dy * math.cos(h0),
                math.atan2(math.sin(h - h0), math.cos(h - h0)),
            ]
        )
    return np.array(out)


def test_frame_round_trip():
    rng = np.random.default_rng(0)
    poses = rng.normal(size=(30, 3)) * [20, 20, 2]
    pose = np.array([3.0, -7.0, 2.5])
    back = scene_to_rig(rig_to_scene(poses, pose), pose)
    np.testing.assert_allclose(back[:, :2], poses[:, :2], atol=1e-9)
    np.testing.assert_allclose(np.cos(back[:, 2] - poses[:, 2]), 1.0, atol=1e-12)
    np.testing.assert_allclose(scene_to_rig(rig_to_scene(poses, pose), pose)[:, :2],
                               manual_to_rig(rig_to_scene(poses, pose), pose)[:, :2], atol=1e-9)  # fmt: skip


def test_fast_ticks_pass_through_unchanged():
    clock = FakeClock()
    inner = ScriptedPolicy([0.05, 0.05], clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, clock=clock)
    out = pol.act(obs(10))
    np.testing.assert_array_equal(out.trajectory, inner.plan(0))
    assert out.extra["deadline_miss"] is False and out.extra["plan_source"] == "new"
    assert out.extra["latency_s"] == pytest.approx(0.05)
    assert out.extra["k"] == 1 and out.reasoning == "call 1" and out.samples.shape == (1, 20, 3)
    assert pol.misses == 0 and pol.ticks == 1


def test_miss_keeps_previous_plan_shifted_by_elapsed_ticks():
    clock = FakeClock()
    inner = ScriptedPolicy([0.05, 0.3, 0.3, 0.05], clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, latency_mode="ignore", clock=clock)
    pose0 = (5.0, 2.0, 0.3)
    plan0_scene = rig_to_scene(pol.act(obs(10, pose0)).trajectory, np.array(pose0))

    # the car moved (not exactly along the plan): the fallback is the old plan re-expressed in the new rig
    for k, pose in ((1, (5.9, 2.35, 0.32)), (2, (6.8, 2.7, 0.33))):
        out = pol.act(obs(10 + k, pose))
        assert out.extra["deadline_miss"] is True and out.extra["plan_source"] == "previous"
        expected = manual_to_rig(plan0_scene[k:], pose)  # rows for steps 10+k+1 ...
        np.testing.assert_allclose(out.trajectory[: 20 - k], expected, atol=1e-9)
        # the rows past the end of the old plan continue it at its last velocity (1 m per step here)
        tail = rig_to_scene(out.trajectory[20 - k :], np.array(pose))
        step_vec = plan0_scene[-1, :2] - plan0_scene[-2, :2]
        np.testing.assert_allclose(tail[:, :2], plan0_scene[-1, :2] + np.outer(np.arange(1, k + 1), step_vec),
                                   atol=1e-9)  # fmt: skip
        assert out.trajectory.shape == (20, 3)
        assert out.reasoning == f"call {k + 1}"  # the late model's reasoning is still recorded
    assert pol.misses == 2 and pol.ticks == 3 and pol.miss_rate == pytest.approx(2 / 3)

    out = pol.act(obs(13, (7.7, 3.0, 0.33)))  # on time again: the new plan is used
    np.testing.assert_array_equal(out.trajectory, inner.plan(3))
    assert out.extra["deadline_miss"] is False


def test_first_tick_miss_coasts_at_current_speed():
    clock = FakeClock()
    pol = DeadlinePolicy(ScriptedPolicy([0.5, 0.5], clock), deadline_s=0.1, clock=clock)
    out = pol.act(obs(16, (1.0, 1.0, 1.0), speed=4.0))
    assert out.extra["deadline_miss"] is True
    np.testing.assert_allclose(out.trajectory[:, 0], 0.4 * np.arange(1, 21))
    np.testing.assert_allclose(out.trajectory[:, 1:], 0.0)
    # the coast plan is now the active plan: next miss follows it, shifted one step
    out2 = pol.act(obs(17, (1.0 + 0.4 * math.cos(1.0), 1.0 + 0.4 * math.sin(1.0), 1.0), speed=4.0))
    np.testing.assert_allclose(out2.trajectory[:, 0], 0.4 * np.arange(1, 21), atol=1e-9)


def test_delay_mode_splices_previous_then_new_plan():
    clock = FakeClock()
    inner = ScriptedPolicy([0.0, 0.25, 0.05], clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, latency_mode="delay", clock=clock)
    pose0 = np.array([0.0, 0.0, 0.0])
    out0 = pol.act(obs(20, pose0))
    np.testing.assert_array_equal(out0.trajectory, inner.plan(0))  # zero latency: new plan at once
    plan0_scene = rig_to_scene(out0.trajectory, pose0)

    pose1 = (1.0, 0.1, 0.02)
    out1 = pol.act(obs(21, pose1))
    # 0.25 s latency: rows at 0.1 s and 0.2 s ahead follow the old plan, rows from 0.3 s the new one
    assert out1.extra["previous_rows"] == 2 and out1.extra["plan_source"] == "spliced"
    assert out1.extra["deadline_miss"] is True
    np.testing.assert_allclose(out1.trajectory[:2], manual_to_rig(plan0_scene[1:3], pose1), atol=1e-9)
    np.testing.assert_array_equal(out1.trajectory[2:], inner.plan(1)[2:])

    # the splice is the active plan now: a 0.05 s tick in delay mode takes the new plan whole
    out2 = pol.act(obs(22, (2.0, 0.2, 0.03)))
    assert out2.extra["previous_rows"] == 0 and out2.extra["deadline_miss"] is False
    np.testing.assert_array_equal(out2.trajectory, inner.plan(2))


def test_delay_mode_under_deadline_still_pays_latency():
    """With a generous deadline nothing is missed, but latency still delays the plan in delay mode."""
    clock = FakeClock()
    inner = ScriptedPolicy([0.0, 0.35], clock)
    pol = DeadlinePolicy(inner, deadline_s=1.0, latency_mode="delay", clock=clock)
    pol.act(obs(0))
    out = pol.act(obs(1, (1.0, 0.0, 0.0)))
    assert out.extra["deadline_miss"] is False and out.extra["previous_rows"] == 3
    np.testing.assert_allclose(out.trajectory[:3, 1], 0.1)  # old plan's lateral offset (call 0)
    np.testing.assert_allclose(out.trajectory[3:, 1], 0.2)  # new plan's lateral offset (call 1)


def test_assumed_latency_overrides_wall_time():
    clock = FakeClock()
    inner = ScriptedPolicy([5.0, 5.0], clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, latency_mode="delay", assumed_latency_s="0.15", clock=clock)
    pol.act(obs(0))
    out = pol.act(obs(1, (1.0, 0.0, 0.0)))
    assert out.extra["latency_s"] == pytest.approx(0.15)
    assert out.extra["measured_latency_s"] == pytest.approx(5.0)
    assert out.extra["previous_rows"] == 1 and out.extra["deadline_miss"] is True


def test_real_sleep_is_a_counted_miss():
    """A policy that sleeps 0.15 s cannot meet a 0.1 s deadline: the miss is counted from the real clock."""
    inner = ScriptedPolicy([0.0, 0.15])
    pol = DeadlinePolicy(inner, deadline_s=0.1)
    first = pol.act(obs(0))
    out = pol.act(obs(1, (1.0, 0.0, 0.0)))
    assert out.extra["deadline_miss"] is True and out.extra["latency_s"] >= 0.15
    assert pol.misses >= 1
    np.testing.assert_allclose(out.trajectory[:19], first.trajectory[1:] - [1.0, 0.0, 0.0], atol=1e-9)


def test_reset_clears_state_and_resets_inner():
    clock = FakeClock()
    inner = ScriptedPolicy([0.5] * 4, clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, clock=clock)
    pol.act(obs(3))
    pol.reset(seed=1)
    assert inner.resets == 1 and pol.ticks == 0 and pol.misses == 0
    out = pol.act(obs(0, speed=0.0))  # a fresh rollout starts coasting again, step index may restart
    np.testing.assert_allclose(out.trajectory, 0.0)


def test_invalid_inner_plan_raises_and_keeps_active_plan():
    clock = FakeClock()

    class Bad(ScriptedPolicy):
        def act(self, observation):
            out = super().act(observation)
            if self.calls == 2:
                out.trajectory = out.trajectory.copy()
                out.trajectory[3, 0] = np.nan
            return out

    inner = Bad([0.0, 0.0, 0.5], clock)
    pol = DeadlinePolicy(inner, deadline_s=0.1, clock=clock)
    first = pol.act(obs(0))
    with pytest.raises(PolicyOutputError, match="NaN"):
        pol.act(obs(1))
    out = pol.act(obs(2, (2.0, 0.0, 0.0)))  # a miss: falls back to the first plan, two steps on
    np.testing.assert_allclose(out.trajectory[:18], first.trajectory[2:] - [2.0, 0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [({"latency_mode": "later"}, "latency_mode"), ({"deadline_s": "fast"}, "deadline_s"),
     ({"deadline_s": -1}, "deadline_s"), ({"assumed_latency_s": "nan"}, "assumed_latency_s")],
)  # fmt: skip
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        DeadlinePolicy(ScriptedPolicy([0.0]), **kwargs)


def test_with_deadline_wraps_any_policy_only_when_asked():
    from alpasim_policy.policies.deadline import with_deadline

    inner = ScriptedPolicy([0.0])
    assert with_deadline(inner) is inner
    wrapped = with_deadline(inner, deadline_ms="100", latency_mode="delay", assumed_latency_ms=250)
    assert isinstance(wrapped, DeadlinePolicy) and wrapped.name == "scripted"
    assert wrapped.deadline_s == pytest.approx(0.1) and wrapped.assumed_latency_s == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="assumed_latency_ms"):
        with_deadline(inner, assumed_latency_ms=5)
    with pytest.raises(ConfigError, match="latency_mode"):
        with_deadline(inner, deadline_ms=100, latency_mode="soon")


def test_wrapped_baseline_drives_a_real_scene_with_counted_misses():
    """constant_velocity from the registry under a 0 ms budget on a bundled scene: every tick is a miss,
    the car coasts on its first plan, and the env accepts every plan to the end of the log."""
    import gymnasium as gym

    import alpasim_policy.sim.env  # noqa: F401
    from alpasim_policy.policies.deadline import with_deadline
    from alpasim_policy.policies.registry import make_policy

    pol = with_deadline(make_policy("constant_velocity"), deadline_ms=0)
    env = gym.make("alpasim_policy/LogReplay-v0", scene="cr-DEU_A9-3_1_T-1-ego3536")
    obs, _ = env.reset(seed=0)
    pol.reset(seed=0, scene=env.unwrapped.scene)
    first_pose = obs["pose"].copy()
    first_step = int(obs["step"])
    coast = None
    for _ in range(30):
        out = pol.act(obs)
        assert out.extra["deadline_miss"] and out.extra["plan_source"] == "previous"
        if coast is None:
            coast = rig_to_scene(out.trajectory, obs["pose"])  # the coast plan made at the first tick
        else:  # later ticks follow that same plan, shifted: the scene-frame rows line up
            k = int(obs["step"]) - first_step
            shifted = rig_to_scene(out.trajectory, obs["pose"])
            np.testing.assert_allclose(shifted[: len(coast) - k, :2], coast[k:, :2], atol=1e-6)
        obs, _r, term, trunc, _info = env.step(out.trajectory)
        assert not (term or trunc)
    assert pol.misses == pol.ticks == 30
    assert np.hypot(*(obs["pose"][:2] - first_pose[:2])) > 5.0  # it kept driving
