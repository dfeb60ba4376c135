"""Sample selection: first / medoid / scored, and the proof that scored never reads the log's future."""

from __future__ import annotations

import numpy as np
import pytest

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.selection import SampleSelector, medoid_index, pairwise_ade, parse_select


def fan(k: int = 5, t: int = 64, offsets=(0.0, 0.3, -0.2, 0.1, 4.0)) -> np.ndarray:
    """K straight 10 m/s plans drifting sideways by ``offsets[k]`` metres per 6.4 s."""
    tt = 0.1 * np.arange(1, t + 1)
    return np.stack([np.stack([10 * tt, offsets[i] * tt / tt[-1], np.zeros(t)], axis=1) for i in range(k)])


def test_pairwise_ade_matches_brute_force():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(6, 12, 3))
    d = pairwise_ade(s)
    for i in range(6):
        for j in range(6):
            want = np.mean([np.hypot(*(s[i, t, :2] - s[j, t, :2])) for t in range(12)])
            assert d[i, j] == pytest.approx(want)


def test_medoid_is_the_consensus_not_the_outlier():
    s = fan()
    # summed lateral spread: 0.1 is closest to {0, 0.3, -0.2} and the 4.0 outlier pulls nothing far
    want = int(
        np.argmin([sum(abs(a - b) for b in (0.0, 0.3, -0.2, 0.1, 4.0)) for a in (0.0, 0.3, -0.2, 0.1, 4.0)])
    )
    assert medoid_index(s) == want == 3
    sel = SampleSelector("medoid").select(s)
    assert sel.index == 3 and sel.scores.shape == (5,) and np.argmax(sel.scores) == 3
    assert SampleSelector("first").select(s).index == 0


def test_single_sample_and_bad_shapes():
    assert SampleSelector("medoid").select(fan(1)).index == 0
    with pytest.raises(ConfigError, match="samples"):
        SampleSelector("medoid").select(np.zeros((3, 10)))


@pytest.mark.parametrize("bad", ["best", "", "scored2"])
def test_unknown_method_names_the_option(bad):
    with pytest.raises(ConfigError, match="'select'"):
        parse_select(bad)
    with pytest.raises(ConfigError, match="'select'"):
        SampleSelector(bad)


def test_scored_needs_a_scene():
    with pytest.raises(ConfigError, match="scene"):
        SampleSelector("scored").reset(None)
