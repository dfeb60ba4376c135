"""Issue 7's 'done when': a closed-loop eval of the tiny Alpamayo preset over the whole bundled suite.

Small sample count, short forced reasoning and small camera images keep it to about a minute of CI
time; the code path is the one the README's main command runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from alpasim_policy.caching import IDM_REFERENCE
from alpasim_policy.evaluate import evaluate, rollout_path
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.report import score_run
from alpasim_policy.sim.rollout import Rollout

OPTIONS = {
    "preset": "tiny",
    "samples": 2,
    "cot_tokens": 6,
    "camera_width": 64,
    "camera_height": 36,
    "threads": 1,
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_tiny_alpamayo_over_the_bundled_suite(tmp_path):
    scenes = load_suite("bundled")
    results = evaluate("bundled", ["alpamayo"], tmp_path, policy_options=OPTIONS, show_progress=False)
    assert len(results) == len(scenes) >= 20
    assert not [r for r in results if "error" in r]
    for r in results:
        ro = Rollout.load(rollout_path(tmp_path, "alpamayo", r["scene_id"]))
        acted = np.isfinite(ro.latency_s)
        assert acted.sum() >= 20  # every scene has >= 2.4 s of controlled driving
        assert not ro.policy_failure.any(), ro.failure_messages[:3]
        # the chain-of-causation text and the K samples of every tick are kept with the rollout
        assert all(ro.reasoning[k] for k in np.flatnonzero(acted))
        assert ro.samples is not None and ro.samples.shape[1] == OPTIONS["samples"]
        assert np.isfinite(ro.samples[acted]).all()
    board = score_run(tmp_path, reference=IDM_REFERENCE).by_policy()["alpamayo"]
    assert board["scenes"] == len(scenes)
    for col in ("PDMS", "EPDMS", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate"):
        assert np.isfinite(board[col]), col
    assert 0.0 <= board["EPDMS"] <= 1.0
    assert board["latency_p50_ms"] <= board["latency_p95_ms"] <= board["latency_max_ms"]
