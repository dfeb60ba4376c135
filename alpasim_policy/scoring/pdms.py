"""PDMS and EPDMS from sub-metrics, the human filter, and per-scene -> suite averaging.

* PDMS  = NC · DAC · (5·TTC + 5·EP + 2·C) / 12            (NAVSIM v1)
* EPDMS = NC · DAC · DDC · TLC · (5·EP + 5·TTC + 2·LK + 2·HC + 2·EC) / 16   (NAVSIM v2)

Human filter (NAVSIM v2): the logged human trajectory (simulated through the same tracker
when plans are scored) is scored the same way; every sub-metric on which the human scores 0 is
set to 1 for the proposals -- the log shows the situation makes it unavoidable (or the map /
labels are wrong there). As in NAVSIM the test is "human == 0", so a human 1/2 (e.g. NC on a
static object) filters nothing, and EP is filtered too. We apply the filter before computing
both PDMS and EPDMS so the sub-metric columns of a report always multiply out to its scores
(NAVSIM v1 had no filter).

The weights and roles live in :mod:`alpasim_policy.scoring.metrics.registry`; the constants
below are derived from it.

Aggregation: a scene's score is computed first (open loop: one plan; closed loop: the mean over
its windows), then scenes are averaged with equal weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from alpasim_policy.scoring.metrics import registry as R

MULTIPLIERS_PDMS = R.multipliers_of("PDMS")
MULTIPLIERS_EPDMS = R.multipliers_of("EPDMS")
WEIGHTS_PDMS = R.weights_of("PDMS")
WEIGHTS_EPDMS = R.weights_of("EPDMS")
SUB_METRICS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC")
HUMAN_FILTERED = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC")


def pdms(m: Mapping[str, np.ndarray]) -> np.ndarray:
    """PDMS from the registry: NC · DAC · (5·EP + 5·TTC + 2·C) / 12."""
    return R.score(m, "PDMS")


def epdms(m: Mapping[str, np.ndarray]) -> np.ndarray:
    """EPDMS from the registry: NC · DAC · DDC · TLC · (5·EP + 5·TTC + 2·LK + 2·HC + 2·EC) / 16."""
    return R.score(m, "EPDMS")


def apply_human_filter(m: Mapping[str, np.ndarray], human: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Sub-metrics with every metric the human scores 0 on set to 1 (see the module docstring)."""
    out = {k: np.asarray(v, float).copy() for k, v in m.items()}
    for k in HUMAN_FILTERED:
        if k in out and k in human and float(human[k]) == 0.0:
            out[k] = np.ones_like(out[k])
    return out


def with_scores(m: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(m)
    out["PDMS"] = pdms(m)
    out["EPDMS"] = epdms(m)
    return out

