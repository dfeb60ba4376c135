"""``bench coc``: the CoC-vs-labeler agreement counts on a real never-trained scene."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from alpasim_policy.bench.coc import coc_agreement
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.reasoning import Factor, parse_coc
from alpasim_policy.training.data import drive_samples

TEXT = "Keep speed and keep lane because the road ahead is clear."


class _Fixed:
    """A stand-in model that always says TEXT and drives straight on at 8 m/s."""

    config = SimpleNamespace(frames=4, frame_stride=1)

    def drive(self, images, history, speed, command, num_samples=1, generator=None):  # noqa: ANN001, ANN201
        traj = np.zeros((num_samples, 64, 3))
        traj[:, :, 0] = 0.8 * np.arange(1, 65)
        return SimpleNamespace(reasoning=[TEXT], trajectories=traj)


def test_coc_agreement_counts_against_the_labels():
    scene = load_scene(next(p for p in load_suite("bundled") if p.stem == "cr-USA_Lanker-1_1_T-1-ego1239"))
    labels = [parse_coc(s.coc) for s in drive_samples(scene, camera_size=(64, 36), min_future_steps=20)]
    r = coc_agreement(_Fixed(), [scene], (64, 36))
    assert r["steps"] == r["parsed"] == len(labels) == 5  # 41 steps, warm-up 16, 2 s of future needed
    assert r["factor"] == sum(lab.factor is Factor.FREE_ROAD for lab in labels)
    assert r["action"] == sum(lab.action == parse_coc(TEXT).action for lab in labels)
    speeds = [s.speed for s in drive_samples(scene, camera_size=(64, 36), min_future_steps=20)]
    # "keep speed and keep lane" is what an 8 m/s straight line does when the car is near 8 m/s
    assert r["consistent"] == sum(abs(v - 8.0) <= 1.0 for v in speeds)
    assert r["factor_match"] == r["factor"] / 5 and r["per_scene"][0]["scene"] == scene.scene_id


class _Motion(_Fixed):
    """A stand-in whose speed reads the cameras: 8 m/s plus the newest frame's mean brightness minus
    the oldest's (so reversed frames flip the sign and grey images remove it), and whose CoC says
    whether the newest frame is the brighter."""

    def drive(self, images, history, speed, command, num_samples=1, generator=None):  # noqa: ANN001, ANN201
        d = (float(images[:, -1].mean()) - float(images[:, 0].mean())) / 10.0
        traj = np.zeros((num_samples, 64, 3))
        traj[:, :, 0] = (0.8 + d / 10.0) * np.arange(1, 65)
        return SimpleNamespace(reasoning=[TEXT if d > 0 else TEXT.upper()], trajectories=traj)


def test_ablations_measure_how_much_the_plan_uses_the_cameras_and_their_order():
    scene = load_scene(next(p for p in load_suite("bundled") if p.stem == "cr-USA_Lanker-1_1_T-1-ego1239"))
    samples = list(drive_samples(scene, camera_size=(64, 36), min_future_steps=20))
    d = np.array([(s.images[:, -1].mean() - s.images[:, 0].mean()) / 10.0 for s in samples])
    r = coc_agreement(_Motion(), [scene], (64, 36), ablations=True)
    # x at 2 s = 20 steps x (0.8 + d / 10): reversed frames move it by 2 * 2 |d|, grey by 2 |d|
    np.testing.assert_allclose(r["reversed_dx_m"], np.mean(4 * np.abs(d)), rtol=1e-9)
    np.testing.assert_allclose(r["grey_dx_m"], np.mean(2 * np.abs(d)), rtol=1e-9)
    assert r["grey_dx_m"] > 0  # the car moves between the frames: the stand-in sees it
    assert r["reversed_coc_changed"] == np.mean(d != 0) and r["grey_coc_changed"] == np.mean(d > 0)
    # without brake lamps: the same steps' frames with no lamps drawn
    unlit = list(drive_samples(scene, camera_size=(64, 36), min_future_steps=20, brake_lamps=False))
    assert len(unlit) == len(samples) and all(
        (u.images != s.images).any() for u, s in zip(unlit, samples, strict=True)
    )
    d0 = np.array([(s.images[:, -1].mean() - s.images[:, 0].mean()) / 10.0 for s in unlit])
    np.testing.assert_allclose(r["no_lamps_dx_m"], np.mean(2 * np.abs(d - d0)), rtol=1e-9)
    assert r["no_lamps_coc_changed"] == np.mean((d > 0) != (d0 > 0))
    assert "reversed_dx_m" not in coc_agreement(_Fixed(), [scene], (64, 36))
    # the stand-in reads no history: a faster past moves nothing
    assert r["fast_history_dx_m"] == 0 and r["fast_history_coc_changed"] == 0


class _Copycat(_Fixed):
    """A stand-in that plans its history's last-step speed on (the copycat shortcut) and says so."""

    def drive(self, images, history, speed, command, num_samples=1, generator=None):  # noqa: ANN001, ANN201
        v = float(np.hypot(*(np.asarray(history)[-1, :2] - np.asarray(history)[-2, :2]))) / 0.1
        traj = np.zeros((num_samples, 64, 3))
        traj[:, :, 0] = v * 0.1 * np.arange(1, 65)
        return SimpleNamespace(reasoning=[f"{TEXT} {v:.1f}"], trajectories=traj)


def test_the_fast_history_ablation_measures_the_copycat_shortcut():
    from alpasim_policy.bench.coc import faster_history

    scene = load_scene(next(p for p in load_suite("bundled") if p.stem == "cr-USA_Lanker-1_1_T-1-ego1239"))
    r = coc_agreement(_Copycat(), [scene], (64, 36), ablations=True)
    # 1.5 m/s more for 2 s: the plan's position at 2 s moves 3 m on every step, and its text changes
    np.testing.assert_allclose(r["fast_history_dx_m"], 3.0, rtol=1e-9)
    assert r["fast_history_coc_changed"] == 1.0
    assert r["stop_steps"] == 0 and np.isnan(r["fast_history_stop_dx_m"])  # a free Lankershim drive
    # the retimed history keeps its path: a turn stays the same turn, only driven faster
    t = np.arange(16)[::-1] * 0.1
    curve = np.stack([-5.0 * t, -0.3 * t**2, np.zeros(16)], axis=1)
    fast = faster_history(curve)
    step = np.hypot(*(curve[-1, :2] - curve[-2, :2]))  # the last 0.1 s: 0.5 m
    np.testing.assert_allclose(fast[:, :2], curve[:, :2] * (step + 0.15) / step)
    np.testing.assert_allclose(np.hypot(*(fast[-1, :2] - fast[-2, :2])), step + 0.15)
    standing = faster_history(np.zeros((16, 3)))
    np.testing.assert_allclose(np.diff(standing[:, 0]), 0.15)
    np.testing.assert_allclose(standing[:, 1:], 0)
