"""Imitation-training samples from the env: inputs, recovery targets, held-out scenes (real scenes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import alpasim_policy.sim  # noqa: F401  (registers the env)
from alpasim_policy.scenes.format import Agents, load_scene
from alpasim_policy.scenes.geometry import scene_to_rig_poses
from alpasim_policy.scenes.suite import load_suite, scenarios_root
from alpasim_policy.scoring.reasoning import parse_coc
from alpasim_policy.training.data import (
    TARGET_STEPS,
    Perturbation,
    drive_samples,
    held_out_filter,
    log_future,
    overlaps,
    plan_is_sane,
    recovery_target,
    save_samples,
)


def _bundled(key: str):
    return load_scene(next(p for p in load_suite("bundled") if key in str(p)))


@pytest.fixture(scope="module")
def av2():
    return _bundled("av2s-7fab2350-w00")


def test_recovery_target_fades_the_lateral_error(av2):
    k = 30
    ref = av2.ego.state[k, :3]
    left = np.array([-np.sin(ref[2]), np.cos(ref[2])])
    on_log, valid = recovery_target(av2, k, ref)
    fut, _ = log_future(av2, k)
    np.testing.assert_allclose(on_log[:, :2], fut[:, :2], atol=1e-9)
    off = ref.copy()
    off[:2] += 1.0 * left
    target, _ = recovery_target(av2, k, off, recovery_s=2.0)
    lateral = np.einsum(
        "td,td->t", target[:, :2] - fut[:, :2], np.stack([-np.sin(fut[:, 2]), np.cos(fut[:, 2])], -1)
    )
    assert lateral[0] == pytest.approx(1.0, abs=2e-3)  # starts where the car is
    assert np.all(np.diff(lateral[:20]) <= 1e-12)  # only ever closes in
    np.testing.assert_allclose(lateral[19:], 0.0, atol=1e-9)  # back on the log after 2 s
    # The log ends 50 steps after k: later rows continue it and are masked.
    assert valid.sum() == av2.num_steps - 1 - k and not valid[-1]
    assert len(target) == TARGET_STEPS


def test_samples_are_the_env_observations_with_log_targets(av2):
    samples = list(drive_samples(av2, camera_size=(64, 36), frames=2))
    t0 = av2.metadata.t0_index
    assert [s.step for s in samples] == list(range(t0, av2.num_steps - 40))
    first = samples[0]
    assert first.images.shape == (4, 2, 3, 36, 64) and first.images.dtype == np.uint8
    assert first.images.std() > 5  # a rendered road, not a blank frame
    np.testing.assert_array_equal(first.images[:, 0], first.images[:, 1])  # first tick: frame repeated
    # At the first controlled step the car is on the log, so the target is the logged future.
    fut = scene_to_rig_poses(av2.ego.state[t0 + 1 : t0 + 41, :3], av2.ego.state[t0, :3])
    np.testing.assert_allclose(first.target[:40, :2], fut[:, :2], atol=1e-6)
    assert first.history.shape == (16, 4)
    np.testing.assert_allclose(first.history[-1, :3], 0.0, atol=1e-6)  # "now" is the rig origin
    # Following the expert target, the car stays on the log (the tracker's own lag only).
    assert max(s.offset_m for s in samples) < 0.5
    assert all(parse_coc(s.coc).action is not None for s in samples)


def test_perturbation_drifts_and_the_target_recovers(av2):
    pert = Perturbation(lateral_m=1.0, start_step=16, ramp_steps=15)
    drive = drive_samples(av2, camera_size=(64, 36), frames=2, perturbation=pert, steps=range(16, 80))
    samples = {s.step: s for s in drive}
    offsets = np.array([samples[k].offset_m for k in sorted(samples)])
    assert offsets.max() > 0.6  # the car really left the log ...
    assert offsets[-1] < 0.3  # ... and the expert targets brought it back
    worst = samples[int(sorted(samples)[int(np.argmax(offsets))])]
    # Its target starts near the car (rig origin) and ends on the logged future.
    assert abs(worst.target[0, 1]) < 0.3


def test_idm_expert_labels_the_states_it_drives(av2):
    """``expert="idm"``: every target is the planner's full 6.4 s plan from the car's own state."""
    from alpasim_policy.policies.baselines import IDMPolicy

    samples = list(drive_samples(av2, camera_size=(32, 18), frames=1, expert="idm", steps=range(16, 40)))
    assert [s.step for s in samples] == list(range(16, 40))
    assert all(s.target_valid.all() and s.target.shape == (TARGET_STEPS, 3) for s in samples)
    # Replaying the same drive and asking a fresh planner gives the same targets (the car drove them).
    import gymnasium as gym

    env = gym.make("alpasim_policy/LogReplay-v0", scene=av2).unwrapped
    obs, _ = env.reset(seed=0)
    teacher = IDMPolicy()
    teacher.reset(scene=av2)
    by_step = {s.step: s for s in samples}
    while int(obs["step"]) < 40:
        plan = teacher.act(obs).trajectory
        if int(obs["step"]) in by_step:
            np.testing.assert_allclose(by_step[int(obs["step"])].target, plan, atol=1e-9)
        obs, *_ = env.step(plan)
    assert all(parse_coc(s.coc).action is not None for s in samples)


def test_dagger_driver_reaches_states_the_expert_never_visits(av2):
    """With a driver (here constant velocity, which ignores the curving road), the car leaves the
    expert's path, and the samples there still carry the expert's plan back; a driver share of 0
    is the expert's own drive, sample for sample."""
    from alpasim_policy.policies.baselines import ConstantVelocityPolicy

    kw = dict(camera_size=(32, 18), frames=1, expert="idm", steps=range(16, 60))
    expert = list(drive_samples(av2, **kw))
    none = list(drive_samples(av2, driver=ConstantVelocityPolicy(), driver_share=0.0, **kw))
    for a, b in zip(expert, none, strict=True):
        np.testing.assert_array_equal(a.target, b.target)
        assert a.coc == b.coc
    driven = list(drive_samples(av2, driver=ConstantVelocityPolicy(), driver_share=1.0, **kw))
    gap = [d.offset_m - e.offset_m for d, e in zip(driven, expert, strict=False)]
    assert max(gap) > 1.0  # the learner's own mistakes ...
    worst = driven[int(np.argmax(gap))]
    assert worst.target_valid.all() and abs(worst.target[0, 1]) < 0.5  # ... labelled from where it is
    assert all(plan_is_sane(s.target) for s in driven)
    # ... until the car is MAX_OFF_LOG_M from the logged path: the drive ends there
    assert len(driven) < len(expert)
    with pytest.raises(ValueError, match="expert"):
        next(drive_samples(av2, expert="human"))


def test_retime_plan_drives_the_same_path_at_another_speed():
    from alpasim_policy.training.data import retime_plan

    t = np.arange(1, TARGET_STEPS + 1) * 0.1
    r = 20.0  # a left arc of 20 m radius driven at 5 m/s
    s = 5.0 * t
    arc = np.stack([r * np.sin(s / r), r * (1 - np.cos(s / r)), s / r], axis=1)
    same = retime_plan(arc, 5.0, 0.0)
    np.testing.assert_allclose(same, arc, atol=0.02)  # chords vs arc: a few mm
    fast = retime_plan(arc, 5.0, 2.0)
    s_fast = 5.0 * t + t**2
    along = s_fast <= s[-1]
    np.testing.assert_allclose(fast[along, 2], s_fast[along] / r, atol=0.01)  # further round the arc
    beyond = ~along  # past the path's end: straight on along its last heading
    d = np.diff(fast[beyond, :2], axis=0)
    np.testing.assert_allclose(np.arctan2(d[:, 1], d[:, 0]), arc[-1, 2], atol=1e-6)
    brake = retime_plan(arc, 5.0, -2.0)  # stops after 2.5 s, 6.25 m round the arc, and stays
    np.testing.assert_allclose(brake[24:, 2], 6.25 / r, atol=0.01)
    assert brake[9, 2] == pytest.approx((5.0 * 1.0 - 1.0) / r, abs=0.01)  # 4 m after 1 s


def test_closing_perturbation_speeds_up_then_the_expert_brakes():
    """On US-101 (training-only recording) the car gains speed towards its lead for 2 s, and the
    planner's labels there slow it down again."""
    from alpasim_policy.training.build import raw_scenes

    sc = next(s for s in raw_scenes(scenarios_root() / "raw") if s.scene_id == "cr-USA_US101-5_1_T-1-ego464")
    p = Perturbation(0.0, start_step=20, ramp_steps=20, accel_mps2=2.0)
    kw = dict(camera_size=(32, 18), frames=1, expert="idm", steps=range(16, 60))
    base = {s.step: s for s in drive_samples(sc, **kw)}
    closing = {s.step: s for s in drive_samples(sc, perturbation=p, **kw)}
    assert closing[40].speed > base[40].speed + 2.0  # the perturbation sped the car up
    v_2s = np.linalg.norm(closing[40].target[24, :2] - closing[40].target[14, :2])
    assert v_2s < closing[40].speed - 1.0  # the expert's label slows it down
    assert Perturbation(0.0, 20, accel_mps2=1.5).tag == "a+1.50@20"


def test_held_out_filter_drops_only_the_suite_windows():
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    suite = [load_scene(p) for p in load_suite("bundled")]
    us101 = [s for s in suite if s.metadata.source_id == "USA_US101-4_1_T-1"]
    raw = scenarios_root() / "raw" / "commonroad"
    candidates = import_commonroad(raw / "USA_US101-4_1_T-1.xml")
    kept = held_out_filter(candidates, suite)
    bundled_egos = {s.metadata.extra["ego_obstacle_id"] for s in us101}
    for c in candidates:
        same = any(overlaps(c, s) for s in us101)
        assert (c in kept) != same
        if c.metadata.extra["ego_obstacle_id"] not in bundled_egos:
            assert c in kept  # other road users of the same recording stay available
    a = us101[0]
    later = dataclasses.replace(
        a,
        metadata=dataclasses.replace(
            a.metadata, extra={**a.metadata.extra, "window_start_step": a.num_steps}
        ),
    )
    assert overlaps(a, a) and not overlaps(later, a)


def test_save_samples_round_trip(tmp_path, av2):
    samples = list(drive_samples(av2, camera_size=(32, 18), frames=1, steps=[20, 21]))
    path = save_samples(samples, tmp_path / "shard.npz")
    with np.load(path) as z:
        assert z["images"].shape == (2, 4, 1, 3, 18, 32)
        np.testing.assert_array_equal(z["step"], [20, 21])
        assert str(z["coc"][0]) == samples[0].coc
    with pytest.raises(ValueError, match="no samples"):
        save_samples([], tmp_path / "empty.npz")


def test_train_data_stage_excludes_the_suite_and_resumes(tmp_path):
    """``train --stage data`` on one real recording: suite egos left out, shards written, resumable."""
    import json
    import shutil

    from alpasim_policy.cli import main

    raw = tmp_path / "raw"
    (raw / "commonroad").mkdir(parents=True)
    shutil.copy(scenarios_root() / "raw/commonroad/DEU_A9-3_1_T-1.xml", raw / "commonroad")
    args = ["train", "--stage", "data", "--out", str(tmp_path / "run"), "--raw", str(raw)]
    assert main([*args, "--perturbations", "1"]) == 0
    data = tmp_path / "run/data"
    manifest = json.loads((data / "manifest.json").read_text())
    bundled = {load_scene(p).metadata.extra.get("ego_obstacle_id") for p in load_suite("bundled")}
    assert manifest["scenes"] and manifest["held_out_dropped"] >= 5
    assert not any(sid.rsplit("ego", 1)[1] in bundled for sid in manifest["scenes"])
    assert len(manifest["shards"]) == 2  # the one eligible A9 ego: on the log and one perturbation
    with np.load(data / manifest["shards"][0]) as z:
        assert z["images"].shape[1:] == (4, 4, 3, 72, 128)  # tiny preset: 4 cameras x 4 frames
    stamps = {p.name: p.stat().st_mtime_ns for p in data.glob("*.npz")}
    assert main([*args, "--perturbations", "1"]) == 0  # resume: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("*.npz")} == stamps
    assert main([*args, "--raw", str(tmp_path / "nowhere")]) == 2  # a clear error, not a traceback


def test_train_data_stage_draws_every_non_suite_ego_of_a_recording(tmp_path):
    """Lankershim-1_1: 16 eligible egos, 9 of them bundled; the other 7 all become drives (its 4 s
    scenes are shorter than the scorer's horizon, so samples need only ``--min-future`` logged steps)."""
    import json
    import shutil

    from alpasim_policy.cli import main

    raw = tmp_path / "raw"
    (raw / "commonroad").mkdir(parents=True)
    shutil.copy(scenarios_root() / "raw/commonroad/USA_Lanker-1_1_T-1.xml", raw / "commonroad")
    out = tmp_path / "run"
    assert (
        main(["train", "--stage", "data", "--out", str(out), "--raw", str(raw), "--perturbations", "0"]) == 0
    )
    manifest = json.loads((out / "data/manifest.json").read_text())
    bundled = {
        load_scene(p).metadata.extra.get("ego_obstacle_id")
        for p in load_suite("bundled")
        if "Lanker-1_1" in p.name
    }
    egos = manifest["recordings"]["USA_Lanker-1_1_T-1"]
    assert len(egos) == 7 and not set(egos) & bundled
    assert manifest["held_out_dropped"] == len(bundled) == 9
    # 41 steps, warm-up 16, 20 future steps needed: steps 16..20 of each drive
    assert manifest["samples"] == 7 * 5 and manifest["min_future_steps"] == 20


def test_train_data_stage_time_scale_adds_slow_motion_drives(tmp_path):
    """``--time-scale 0.3``: the A9 ego is driven as logged and replayed at 0.3 of its speed."""
    import json
    import shutil

    from alpasim_policy.cli import main

    raw = tmp_path / "raw"
    (raw / "commonroad").mkdir(parents=True)
    shutil.copy(scenarios_root() / "raw/commonroad/DEU_A9-3_1_T-1.xml", raw / "commonroad")
    args = ["train", "--stage", "data", "--out", str(tmp_path / "run"), "--raw", str(raw), "--perturbations", "0"]
    assert main([*args, "--time-scale", "0.3", "--expert", "idm"]) == 0
    data = tmp_path / "run/data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["time_scales"] == [0.3]
    (orig,) = [s for s in manifest["shards"] if "-x0.3" not in s]
    (slow,) = [s for s in manifest["shards"] if "-x0.3" in s]
    with np.load(data / orig) as a, np.load(data / slow) as b:
        assert a["speed"][0] > 20.0  # the A9 at highway speed ...
        assert b["speed"][0] == pytest.approx(0.3 * a["speed"][0], rel=0.05)  # ... and in slow motion
    assert main([*args, "--time-scale", "0"]) == 2  # a clear error naming the flag
    assert main([*args, "--close-up", "1"]) == 2  # close-up drives need the idm expert's labels
    assert main([*args, "--expert-gap", "4"]) == 2  # the gap is the idm expert's, not the log's
    assert main([*args, "--expert", "idm", "--expert-gap", "0"]) == 2


def test_close_up_starts_behind_the_lead_and_the_expert_backs_off():
    """US-101 in slow motion (training-only recording): the ego is moved up behind its lead. The
    history it shows never overlaps anyone, at t0 the lead is within the drawn 2-5 m (+0.3 s x
    speed) of the bumper where the log kept ~12 m, and the planner's label there holds back."""
    from alpasim_policy.scenes.augment import time_scaled
    from alpasim_policy.training.build import (
        CLOSE_UP_GAP_M,
        CLOSE_UP_HEADWAY_S,
        _lead_gap,
        close_up_scenes,
        raw_scenes,
    )

    sc = next(s for s in raw_scenes(scenarios_root() / "raw") if s.scene_id == "cr-USA_US101-5_1_T-1-ego477-w01")
    slow = time_scaled(sc, 0.2)
    t0 = slow.metadata.t0_index
    speed = float(np.hypot(*slow.ego.state[t0, 3:5]))
    ups = close_up_scenes(slow, 2, seed=7)
    assert len(ups) == 2 and len({u.scene_id for u in ups}) == 2
    assert [u.scene_id for u in close_up_scenes(slow, 2, seed=7)] == [u.scene_id for u in ups]  # seeded
    assert _lead_gap(slow, t0) > 10.0
    for up in ups:
        history = [_lead_gap(up, k) for k in range(t0 + 1)]
        lo, hi = (g + CLOSE_UP_HEADWAY_S * speed for g in CLOSE_UP_GAP_M)
        assert lo - 0.3 <= min(history) <= hi + 0.3  # the closest the lead ever was is the drawn gap
        assert history[-1] < 7.0
    (base,) = drive_samples(slow, camera_size=(32, 18), frames=1, expert="idm", steps=[t0 + 5], min_future_steps=20)
    (close,) = drive_samples(ups[0], camera_size=(32, 18), frames=1, expert="idm", steps=[t0 + 5], min_future_steps=20)
    travel = lambda s: float(np.linalg.norm(s.target[19, :2]))  # noqa: E731  (metres in 2 s)
    assert travel(close) < travel(base) - 0.5  # close behind the lead the expert holds back
    assert close_up_scenes(slow, 0, seed=7) == []
    empty = dataclasses.replace(slow, agents=Agents([], np.zeros(0, np.int8), np.zeros((0, 2)), np.zeros((0, slow.num_steps, 5)), np.zeros((0, slow.num_steps), bool)))
    assert close_up_scenes(empty, 2, seed=7) == []  # no lead, nothing to close up on


def test_lead_stop_drive_labels_a_stop_behind_the_stopped_lead():
    """US-101 in slow motion, the lead brakes to a stop a few metres ahead of the crawling ego:
    the planner brings the car to a stop behind it, and the labels say why ("... stopped")."""
    from alpasim_policy.scenes.augment import time_scaled
    from alpasim_policy.training.build import lead_stop_scenes, raw_scenes
    from alpasim_policy.training.labeler import lead_vehicle

    sc = next(s for s in raw_scenes(scenarios_root() / "raw") if s.scene_id == "cr-USA_US101-5_1_T-1-ego464")
    slow = time_scaled(sc, 0.2)
    t0 = slow.metadata.t0_index
    stops = lead_stop_scenes(slow, 2, seed=8)
    assert [s.scene_id for s in lead_stop_scenes(slow, 2, seed=8)] == [s.scene_id for s in stops]  # seeded
    assert len(stops) == 2 and "-m" in stops[0].scene_id and "-m" not in stops[1].scene_id  # close-up, then not
    for st in stops:
        info = st.metadata.extra["agent_stop"]
        assert info["index"] == lead_vehicle(st, t0)[0] and t0 <= info["start_step"] <= t0 + 20
    samples = list(drive_samples(stops[0], camera_size=(32, 18), frames=1, expert="idm", min_future_steps=20))
    last = samples[-1]
    assert last.speed < 0.3 and "lead vehicle" in last.coc and "is stopped" in last.coc
    assert np.linalg.norm(last.target[-1, :2]) < 0.5  # the label stays put behind it
    assert lead_stop_scenes(slow, 0, seed=8) == []


def test_creeping_lead_stops_and_goes_and_the_planner_follows_it():
    """Stop-and-go: the lead brakes to a stop, then rolls and stops again; the labels say
    "stopped" while it stands, and the planner creeps after it."""
    from alpasim_policy.scenes.augment import time_scaled
    from alpasim_policy.training.build import creep_speeds, lead_stop_scenes, raw_scenes

    v = creep_speeds(2.0, 2.5, 200, np.random.default_rng(0))
    assert len(v) == 200 and v[0] == 2.0 and (v >= 0).all()
    stands = np.flatnonzero(np.diff((v == 0).astype(int)) == 1)
    assert len(stands) >= 3 and v.max() <= 2.0 + 1e-9  # stop, roll, stop, ... never above v0
    rolls = [v[a:b].max() for a, b in zip(stands[:-1], stands[1:], strict=True)]
    assert all(0.4 <= r <= 1.3 for r in rolls[1:])  # 0.5-1.2 s at 1 m/s^2
    sc = next(s for s in raw_scenes(scenarios_root() / "raw") if s.scene_id == "cr-USA_US101-5_1_T-1-ego464")
    (creep, *_) = lead_stop_scenes(time_scaled(sc, 0.2), 2, seed=9, creep=True)
    assert "-creep" in creep.scene_id
    samples = list(drive_samples(creep, camera_size=(32, 18), frames=1, expert="idm", min_future_steps=20))
    assert any("is stopped" in s.coc for s in samples) and any("Stop" in s.coc for s in samples)
    speeds = np.array([s.speed for s in samples])
    assert speeds.min() < 0.5 and speeds[-10:].max() < 1.5  # it creeps behind the lead


def test_expert_gap_stops_the_car_further_behind_the_stopped_lead():
    """``expert_gap``: the same stopping-lead drive labelled by an idm expert with a 4 m standstill
    gap instead of 2 m comes to rest about 2 m further back (the CLI refusals are tested above)."""
    from alpasim_policy.scenes.augment import time_scaled
    from alpasim_policy.training.build import lead_stop_scenes, raw_scenes

    sc = next(s for s in raw_scenes(scenarios_root() / "raw") if s.scene_id == "cr-USA_US101-5_1_T-1-ego464")
    stop = lead_stop_scenes(time_scaled(sc, 0.2), 2, seed=8)[0]

    def drive(gap: float) -> list:
        return list(drive_samples(stop, camera_size=(32, 18), frames=1, expert="idm", min_future_steps=20, expert_gap=gap))

    near, far = drive(2.0), drive(4.0)
    assert [s.step for s in near] == [s.step for s in far]
    assert near[-1].speed < 0.3 and far[-1].speed < 0.3  # both at rest behind the lead
    travelled = lambda samples: 0.1 * sum(s.speed for s in samples)  # noqa: E731  (m, 0.1 s steps)
    assert 1.2 < travelled(near) - travelled(far) < 3.0
