"""The public scoring API, the metric registry and the exact fast route projection."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring import pdms as P
from alpasim_policy.scoring.api import Agents, ScoringMap, score_trajectories, world_from_arrays
from alpasim_policy.scoring.metrics import registry as R

LANE = [[-50.0, -1.75], [300.0, -1.75], [300.0, 1.75], [-50.0, 1.75]]
ROAD = ScoringMap(lanes=[LANE], centerline=[[-50.0, 0.0], [300.0, 0.0]])


def straight(v: float, n: int = 41, y: float = 0.0) -> np.ndarray:
    t = np.arange(n) * 0.1
    st = np.zeros((n, 7))
    st[:, 0], st[:, 1], st[:, 3] = v * t, y, v
    return st


def test_route_locate_equals_shapely_on_a_curvy_route():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 3 * np.pi, 300)
    world = world_from_arrays(ScoringMap(lanes=[LANE], centerline=np.stack([20 * t, 15 * np.sin(t)], -1)), 41)
    pts = np.concatenate([rng.uniform([-20, -40], [220, 40], (3000, 2)), np.repeat([[3.0, 4.0]], 50, 0)])
    want = shapely.line_locate_point(world.route_line, shapely.points(pts))
    np.testing.assert_allclose(world.route_locate(pts), want, rtol=0, atol=1e-9)


def test_registry_derives_pdms_and_epdms():
    assert P.MULTIPLIERS_PDMS == ("NC", "DAC") and P.MULTIPLIERS_EPDMS == ("NC", "DAC", "DDC", "TLC")
    assert P.WEIGHTS_PDMS == {"EP": 5.0, "TTC": 5.0, "C": 2.0}
    assert P.WEIGHTS_EPDMS == {"EP": 5.0, "TTC": 5.0, "LK": 2.0, "HC": 2.0, "EC": 2.0}
    rng = np.random.default_rng(1)
    m = {k: rng.choice([0.0, 0.5, 1.0], 8) for k in R.SUB_METRICS}
    m["EP"] = rng.uniform(0, 1, 8)
    pd = m["NC"] * m["DAC"] * (5 * m["TTC"] + 5 * m["EP"] + 2 * m["C"]) / 12
    ep = m["NC"] * m["DAC"] * m["DDC"] * m["TLC"]
    ep = ep * (5 * m["EP"] + 5 * m["TTC"] + 2 * m["LK"] + 2 * m["HC"] + 2 * m["EC"]) / 16
    np.testing.assert_allclose(P.pdms(m), pd)
    np.testing.assert_allclose(P.epdms(m), ep)


def test_api_scores_arrays_and_names_the_profile():
    lead = np.zeros((1, 41, 5))
    lead[0, :, 0] = 25.0 + 3.0 * np.arange(41) * 0.1
    lead[0, :, 3] = 3.0
    res = score_trajectories(np.stack([straight(12.0), straight(2.0)]), ROAD, Agents(lead, [[4.5, 2.0]]))
    assert res.profile == "project"
    assert set(res.metrics) == set(R.SUB_METRICS)
    assert res.metrics["NC"].value.tolist() == [0.0, 1.0]  # the fast one runs into the lead car
    assert not res.metrics["EC"].valid.any() and res.metrics["NC"].valid.all()
    assert res.rows()[1]["profile"] == "project" and res.epdms[0] == 0.0
    nav = score_trajectories(straight(10.0), ROAD, profile="navsim")
    assert nav.profile == "navsim" and nav.epdms[0] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ego_states": np.zeros((41, 5))}, "ego_states"),
        ({"road": ScoringMap(lanes=[[[0, 0], [1, 1]]], centerline=[[0, 0], [1, 0]])}, "lanes[0]"),
        ({"road": ScoringMap(lanes=[LANE], centerline=[[0, 0]])}, "centerline"),
        ({"agents": Agents(np.zeros((2, 40, 5)), np.ones((2, 2)))}, "agents.state"),
        ({"profile": "nuplan"}, "profile"),
    ],
)
def test_api_rejects_bad_input_naming_the_field(kwargs, field):
    args = {"ego_states": straight(5.0), "road": ROAD, **kwargs}
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        score_trajectories(**args)


def test_api_scores_on_a_scene():
    scene = load_scene(load_suite("bundled")[0])
    t0 = int(scene.metadata.t0_index)
    n = min(41, scene.num_steps - t0)
    log = np.asarray(scene.ego.state[t0 : t0 + n], float)
    res = score_trajectories(log[None], scene, human=log)
    # the logged human, scored against itself: nothing it did is penalised
    for k in ("NC", "DAC", "DDC", "TLC"):
        assert res.metrics[k].value[0] == 1.0
    with pytest.raises(ValueError, match="agents"):
        score_trajectories(log[None], scene, Agents(np.zeros((0, n, 5)), np.zeros((0, 2))))


def test_simulated_states_carry_the_bicycles_yaw_rate():
    """score_plans' states get yaw rate / yaw acceleration as NAVSIM's kinematic bicycle sets them."""
    from alpasim_policy.scoring.openloop import simulate

    world = world_from_arrays(ROAD, 41)
    t = (np.arange(40) + 1) * 0.1
    r = 40.0  # a left turn on a 40 m circle at 8 m/s: yaw rate 0.2 rad/s once the tracker settles
    ang = 8.0 * t / r
    plan = np.stack([r * np.sin(ang), r * (1 - np.cos(ang)), ang], -1)
    start = np.array([0.0, 0.0, 0.0, 8.0, 0.0, 0.0, 8.0 * 8.0 / r])
    st = simulate(world, start, plan[None], 40, with_yaw=True)[0]
    assert st.shape == (41, 9)
    np.testing.assert_allclose(st[:, :7], simulate(world, start, plan[None], 40)[0])
    # the yaw rate is the heading's rate of change (forward Euler: h[k+1] = h[k] + w[k] dt)
    np.testing.assert_allclose(np.diff(np.unwrap(st[:, 2])) / 0.1, st[:-1, 7], atol=0.02)
    assert abs(np.median(st[10:, 7]) - 0.2) < 0.02
    np.testing.assert_allclose(st[1:, 8], np.diff(st[:, 7]) / 0.1)


def test_navsim_bench_plumbing(tmp_path):
    """The side-by-side bench: the case file round-trips and the external command's JSON is read back
    (the real NAVSIM run lives in a scratch env; a stand-in command echoes what it was given)."""
    import sys

    from alpasim_policy.bench.scorer import three_lane_case, time_navsim, time_project

    case = three_lane_case(proposals=8, vehicles=20)
    assert case["plans"].shape == (8, 40, 3) and case["agent_state"].shape == (20, 41, 5)
    ours = time_project(case, repeats=1, single_repeats=2)
    assert ours["score_s"] > 0 and 0.0 <= ours["mean_epdms"] <= 1.0
    script = tmp_path / "fake_navsim.py"
    script.write_text(
        "import json, sys, numpy as np\n"
        "c = np.load(sys.argv[1])\n"
        "print('log line')\n"
        "print(json.dumps({'simulate_s': 1.0, 'score_s': 2.0, 'proposals': int(len(c['plans']))}))\n"
    )
    got = time_navsim(case, f"{sys.executable} {script}", tmp_path)
    assert got == {"simulate_s": 1.0, "score_s": 2.0, "proposals": 8}
    with pytest.raises(RuntimeError, match="navsim-cmd"):
        time_navsim(case, f"{sys.executable} -c 'import sys; sys.exit(3)'", tmp_path)
