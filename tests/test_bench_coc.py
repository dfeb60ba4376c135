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
    assert len(unlit) == len(samples) and all((u.images != s.images).any() for u, s in zip(unlit, samples, strict=True))
    d0 = np.array([(s.images[:, -1].mean() - s.images[:, 0].mean()) / 10.0 for s in unlit])
    np.testing.assert_allclose(r["no_lamps_dx_m"], np.mean(2 * np.abs(d - d0)), rtol=1e-9)
    assert r["no_lamps_coc_changed"] == np.mean((d > 0) != (d0 > 0))
    assert "reversed_dx_m" not in coc_agreement(_Fixed(), [scene], (64, 36))
