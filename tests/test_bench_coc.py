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

    config = SimpleNamespace(frames=4)

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
