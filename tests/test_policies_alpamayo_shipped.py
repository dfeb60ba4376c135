"""The checkpoint shipped as the ``alpamayo`` policy's default weights (tiny preset).

It was trained by ``alpasim-policy train`` (``weights/README.md``); these tests check that it is
what the policy loads by default, that ``weights=random`` still gives the seeded random model, and
that it drives a bundled scene it was never trained on closed loop without leaving the road.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from alpasim_policy.caching import IDM_REFERENCE
from alpasim_policy.evaluate import evaluate
from alpasim_policy.policies.alpamayo import AlpamayoPolicy, resolve_weights, shipped_weights
from alpasim_policy.resources import data_dir
from alpasim_policy.scoring.report import score_run

#: A bundled scene (Lankershim, 2.5 s of control: the fastest closed-loop rollout) no training
#: drive overlaps: ``train --stage data`` drops every suite (recording, ego, window).
SCENE = "cr-USA_Lanker-1_1_T-1-ego1239"


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_the_tiny_preset_ships_a_small_trained_checkpoint():
    folder = shipped_weights("tiny")
    assert folder is not None and folder == data_dir("weights") / "alpamayo-tiny"
    st = sorted(folder.glob("*.safetensors"))
    assert st and sum(p.stat().st_size for p in st) < 10 * 2**20  # a few MB
    assert not (folder / "optimizer.pt").exists()  # inference weights only
    cfg = json.loads((folder / "config.json").read_text())
    # normalised by the training actions' spread (imitation --action-stats data), not the preset's 0.02
    assert 0.001 < cfg["curvature_std"] < 0.02
    assert shipped_weights("small") is None  # no shipped weights: random, as before


def test_default_weights_are_the_shipped_ones_and_random_stays_available():
    assert resolve_weights("tiny", None) == shipped_weights("tiny")
    for spelling in ("random", "none", "RANDOM"):
        assert resolve_weights("tiny", spelling) is None
    trained = AlpamayoPolicy(samples=1, threads=1)
    random_a = AlpamayoPolicy(weights="random", samples=1, threads=1)
    random_b = AlpamayoPolicy(weights="random", samples=1, threads=1)
    ta = dict(trained.model.named_parameters())
    ra, rb = dict(random_a.model.named_parameters()), dict(random_b.model.named_parameters())
    name = next(iter(ta))
    assert np.array_equal(ra[name].detach().numpy(), rb[name].detach().numpy())  # seeded
    assert not np.array_equal(ta[name].detach().numpy(), ra[name].detach().numpy())


def test_shipped_checkpoint_drives_a_never_trained_scene_on_the_road(tmp_path):
    from alpasim_policy.scenes.suite import load_suite

    path = next(p for p in load_suite("bundled") if p.stem == SCENE)
    opts = {"samples": 2, "threads": 1}
    results = evaluate(None, ["alpamayo"], tmp_path, scenes=[path], policy_options=opts, show_progress=False)
    assert not [r for r in results if "error" in r]
    row = score_run(tmp_path, reference=IDM_REFERENCE).by_policy()["alpamayo"]
    assert row["DAC"] == 1.0 and row["NC"] == 1.0 and row["offroad_rate"] == 0.0
    assert row["EP"] > 0.5  # it makes progress, not a standstill
