"""The ``navsim`` profile agrees with NAVSIM 2's own PDMScorer on every recorded case.

The cases (maps, agents, lights, ego trajectories as arrays) and NAVSIM's verdicts were recorded
by running NAVSIM's code itself (see tests/fixtures/navsim_parity/README.md); the scorer here sees
them only through the public API (:mod:`alpasim_policy.scoring.api`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alpasim_policy.scenes.format import AgentType
from alpasim_policy.scoring.api import Agents, RedLights, ScoringMap, score_trajectories

FIXTURE = Path(__file__).parent / "fixtures" / "navsim_parity"
KEYS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS")
KIND = {
    "vehicle": AgentType.VEHICLE,
    "pedestrian": AgentType.PEDESTRIAN,
    "bicycle": AgentType.BICYCLE,
    "traffic_cone": AgentType.STATIC,
    "barrier": AgentType.STATIC,
}

VERDICTS = json.loads((FIXTURE / "verdicts.json").read_text())
ARRAYS = np.load(FIXTURE / "cases.npz")


def case_arrays(name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/"
    return {k[len(prefix) :]: ARRAYS[k] for k in ARRAYS.files if k.startswith(prefix)}


def score_case(name: str, profile: str = "navsim"):
    c = case_arrays(name)
    v = VERDICTS[name]
    kinds = v["drivable_kind"]
    drivable = list(c["drivable"])
    road = ScoringMap(
        lanes=list(c["lanes"]),
        centerline=c["centerline"],
        lane_on_route=c["lane_on_route"],
        drivable=drivable,
        intersections=[p for p, k in zip(drivable, kinds, strict=True) if k == "intersection"],
    )
    agents = Agents(
        state=c["agent_state"],
        size=c["agent_size"],
        valid=c["agent_valid"],
        types=np.array([int(KIND[k]) for k in v["agent_kind"]], np.int8),
    )
    lights = RedLights(polygons=list(c["lanes"][c["red_lane"]]), red=c["red"]) if len(c["red_lane"]) else None
    return score_trajectories(
        c["proposals"],
        road,
        agents,
        lights,
        profile=profile,
        history=c.get("history"),
        previous=c.get("previous"),
        previous_offset=5,
        human=c.get("human"),
    )


def test_fixture_has_at_least_30_cases_covering_every_metric():
    assert len(VERDICTS) >= 30
    rows = [r for v in VERDICTS.values() for r in v["rows"]]
    for k in ("NC", "DAC", "DDC", "TLC", "TTC", "C", "HC", "LK", "EC"):
        assert any(r[k] == 0.0 for r in rows), f"no case where NAVSIM scores {k} = 0"
    assert any(r["NC"] == 0.5 for r in rows) and any(r["DDC"] == 0.5 for r in rows)
    assert any(0.0 < r["EP"] < 1.0 for r in rows)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_navsim_profile_agrees_with_navsim(name):
    res = score_case(name)
    assert res.profile == "navsim"
    ours = res.rows()
    for want in VERDICTS[name]["rows"]:
        got = ours[want["proposal"]]
        diff = {k: (got[k], want[k]) for k in KEYS if not np.isclose(got[k], want[k], rtol=0, atol=1e-9)}
        assert not diff, f"{name} proposal {want['proposal']}: (ours, NAVSIM) {diff}"


@pytest.mark.parametrize(
    ("name", "metric", "navsim", "project"),
    [
        # a track standing still when first seen, moving when it hits the ego's side
        ("nc_first_frame_stopped", "NC", 0.0, 1.0),
        # ... and the reverse: moving when first seen, standing still at the contact
        ("nc_first_frame_moving", "NC", 1.0, 0.0),
        # a contact already present at the first state is counted by NAVSIM, ignored by the project
        ("nc_initial_overlap", "NC", 0.0, 1.0),
        # NAVSIM adds d*w^2 to the longitudinal acceleration at the centre, a rigid body subtracts it
        ("comfort_centre_shift", "C", 0.0, 1.0),
    ],
)
def test_project_profile_differs_where_documented(name, metric, navsim, project):
    assert score_case(name, "navsim").metrics[metric].value[0] == navsim
    res = score_case(name, "project")
    assert res.profile == "project"
    assert res.metrics[metric].value[0] == project
