"""Closed-loop scoring of env rollouts, the leaderboard files, and t0-only open-loop scoring."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scoring_synthetic import AgentSpec, straight_road_scene, straight_states

from alpasim_policy.caching import IDM_REFERENCE
from alpasim_policy.policies.baselines import ConstantVelocityPolicy, LogReplayPolicy
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.openloop import epdms_scorer, score_states
from alpasim_policy.scoring.report import LEADERBOARD_COLUMNS, score_run
from alpasim_policy.scoring.world import ScoringWorld
from alpasim_policy.sim.env import LogReplayEnv
from alpasim_policy.sim.rollout import Rollout


def rollout(scene, policy, latency: float = 0.0) -> Rollout:
    env = LogReplayEnv(scene=scene)
    obs, _ = env.reset(seed=0)
    policy.reset(seed=0, scene=scene)
    while True:
        obs, _, term, trunc, _ = env.step(policy.act(obs).trajectory)
        if term or trunc:
            break
    t = env.trajectory()
    n = len(t["times"])
    lat = np.where(t["controlled"], latency + 0.001 * (np.arange(n) % 10), np.nan)
    return Rollout(scene_id=scene.scene_id, policy=policy.name, seed=0, scene_hash=scene.content_hash,
                   env_config={}, latency_s=lat, deadline_miss=t["controlled"] & (np.arange(n) % 10 == 9),
                   **t)  # fmt: skip


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    for p in load_suite("bundled"):
        sc = load_scene(p)
        for pol in (LogReplayPolicy(), ConstantVelocityPolicy()):
            rollout(sc, pol, latency=0.02).save(run / "rollouts" / pol.name / f"{sc.scene_id}.npz")
    return run, score_run(run, cache_dir=None, reference=IDM_REFERENCE)


def test_bundled_suite_human_scores_high_and_constant_velocity_lower(bundled_run):
    run, board = bundled_run
    rows = board.by_policy()
    n = len(load_suite("bundled"))
    assert rows["log_replay"]["scenes"] == n and rows["constant_velocity"]["scenes"] == n
    assert rows["log_replay"]["EPDMS"] >= 0.9
    assert rows["constant_velocity"]["EPDMS"] <= rows["log_replay"]["EPDMS"] - 0.05
    for r in board.scene_rows:  # scene EPDMS is the formula over its own columns
        mult = r["NC"] * r["DAC"] * r["DDC"] * r["TLC"]
        w = (5 * r["EP"] + 5 * r["TTC"] + 2 * r["LK"] + 2 * r["HC"] + 2 * r["EC"]) / 16
        assert r["EPDMS"] == pytest.approx(mult * w)


def test_leaderboard_files(bundled_run):
    run, board = bundled_run
    with open(run / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == LEADERBOARD_COLUMNS
    assert {r["policy"] for r in rows} == {"log_replay", "constant_velocity"}
    with open(run / "scenes.csv") as f:
        scenes = list(csv.DictReader(f))
    assert len(scenes) == 2 * len(load_suite("bundled"))
    # every output names the scoring profile (the leaderboard's default)
    assert {r["profile"] for r in rows} == {"project"} and {r["profile"] for r in scenes} == {"project"}
    md = (run / "leaderboard.md").read_text()
    assert "| policy | scenes | NC |" in md and str(board) in md
    lr = board.by_policy()["log_replay"]
    # latencies were 20..29 ms per controlled tick, every 10th tick a miss
    assert 20.0 <= lr["latency_p50_ms"] <= 29.0 and lr["latency_max_ms"] == pytest.approx(29.0)
    assert 0.05 < lr["deadline_miss_rate"] < 0.15


def test_closed_loop_collision_counts_once_and_per_km(tmp_path):
    # constant velocity at 10 m/s into a car stopped 60 m ahead of the ego at t0 (scene step 16);
    # the logged human brakes at 2.5 m/s^2 from x = 30 and stops at x = 50, so it never touches it
    tt = np.arange(100) * 0.1 - 1.6
    tb = np.clip(tt - 3.0, 0.0, 4.0)  # braking time elapsed
    human = np.zeros((100, 7))
    human[:, 0] = 10 * np.minimum(tt, 3.0) + 10 * tb - 1.25 * tb**2
    human[:, 3] = np.where(tt < 3.0, 10.0, 10.0 - 2.5 * tb)
    human[:, 5] = np.where((tt >= 3.0) & (tb < 4.0), -2.5, 0.0)
    scene = straight_road_scene(agents=[AgentSpec(60.0, 0.0)], t0_index=16, num_steps=100, ego_states=human)
    clean = straight_road_scene(t0_index=16, num_steps=100, scene_id="synthetic_clean")
    rollout(scene, ConstantVelocityPolicy()).save(tmp_path / "rollouts" / "constant_velocity" / "a.npz")
    rollout(clean, LogReplayPolicy()).save(tmp_path / "rollouts" / "log_replay" / "b.npz")
    from alpasim_policy.scoring import report

    memo = {}
    for sc in (scene, clean):  # synthetic scenes are not in the scenarios folder: score them directly
        memo[sc.scene_id] = (sc, ScoringWorld.from_scene(sc))
    rows = [
        report.score_rollout_file(p, None, memo=memo, reference=IDM_REFERENCE) for p in sorted((tmp_path / "rollouts").glob("*/*.npz"))
    ]
    cv = next(r for r in rows if r["policy"] == "constant_velocity")
    lr = next(r for r in rows if r["policy"] == "log_replay")
    assert cv["NC"] == 0.0 and cv["collision_front"] == 1.0 and cv["collisions_at_fault_count"] == 1
    assert cv["EPDMS"] == 0.0 and cv["scene_score"] == 0.0
    assert lr["EPDMS"] == pytest.approx(1.0) and lr["scene_score"] == 1.0
    assert lr["windows"] >= 10
    board = report.aggregate(rows)
    km = cv["distance_km"]
    assert next(b for b in board if b["policy"] == "constant_velocity")["collisions_per_km"] == pytest.approx(
        1 / km
    )


def test_constant_velocity_mode_never_reads_the_future():
    scene = straight_road_scene(agents=[AgentSpec(30.0, -0.2, vx=2.0), AgentSpec(-30.0, 3.5, vx=12.0)])
    world = ScoringWorld.from_scene(scene)
    t0 = world.t0_index
    states = straight_states(8, 41, np.linspace(0, 14, 8), y=np.linspace(-1, 2, 8))
    a = score_states(world, states, t0, agents="constant_velocity", human_filter=False).metrics
    # scramble everything after t0 in the log: agents, lights, the human ego
    world.agent_state[:, t0 + 1 :] = np.random.default_rng(0).normal(
        0, 50, world.agent_state[:, t0 + 1 :].shape
    )
    world.human_state[t0 + 1 :] = 1e3
    b = score_states(world, states, t0, agents="constant_velocity", human_filter=False).metrics
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = score_states(world, states, t0, agents="log", human_filter=False).metrics
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # the log mode does read it


def test_epdms_scorer_ranks_samples():
    scene = straight_road_scene(agents=[AgentSpec(-100.0, 7.0)])
    t = (np.arange(40) + 1) * 0.1
    straight = np.stack([10 * t, 0 * t, 0 * t], -1)
    slow = np.stack([3 * t, 0 * t, 0 * t], -1)
    offroad = np.stack([10 * t, -0.5 * (10 * t) ** 1.2 / 10, 0 * t], -1)
    scores = epdms_scorer(scene, np.stack([straight, slow, offroad]))
    assert scores[0] == pytest.approx(1.0)
    assert scores[2] == 0.0  # leaves the road: DAC = 0
    assert 0.0 < scores[1] < scores[0]  # safe but slow: lower EP


def test_alpasim_metrics_min_ade_plan_deviation_and_short_rollouts():
    from alpasim_policy.scoring.alpasim_metrics import rollout_metrics
    from alpasim_policy.scoring.closedloop import score_rollout

    scene = straight_road_scene(t0_index=16, num_steps=60)
    world = ScoringWorld.from_scene(scene)
    ro = rollout(scene, LogReplayPolicy())
    plans = ro.plans  # (N, T, 3): the logged future at every tick
    shifted = plans + np.array([0.0, 1.0, 0.0])
    ro.samples = np.stack([shifted, plans], axis=1)  # sample 1 is exactly the log: min-ADE ~ 0
    res = score_rollout(world, ro)
    m = rollout_metrics(world, ro, 15, res.contacts)
    assert m["min_ade_m"] < 0.05 and m["plan_deviation_m"] < 0.05
    assert m["progress_ratio"] == pytest.approx(1.0, abs=0.05) and m["scene_score"] == 1.0
    ro.samples = np.stack([shifted, shifted + 1.0], axis=1)
    assert rollout_metrics(world, ro, 15, res.contacts)["min_ade_m"] == pytest.approx(1.0, abs=0.05)
    # a rollout cut 0.5 s after the first plan still gets one (short) window
    cut = 16 + 6
    for name in ("times", "steps", "ego_state", "controlled", "plans"):
        setattr(ro, name, getattr(ro, name)[:cut])
    ro.agent_state, ro.agent_valid = ro.agent_state[:, :cut], ro.agent_valid[:, :cut]
    short = score_rollout(world, ro)
    assert short.metrics["windows"] == 1 and short.metrics["EPDMS"] == pytest.approx(1.0)


def test_score_cli_prints_the_table(bundled_run, capsys):
    from alpasim_policy.cli import main

    run, board = bundled_run
    assert main(["score", str(run), "--cache", "none"]) == 0
    out = capsys.readouterr().out
    assert "| policy | scenes |" in out and "log_replay" in out and "constant_velocity" in out


def test_score_run_profile_is_named_and_changes_only_what_the_profile_changes(tmp_path):
    """`score --profile navsim` scores the same rollouts with NAVSIM's semantics; every output names it."""
    from alpasim_policy.evaluate import evaluate

    suite = tmp_path / "one.yaml"
    suite.write_text("name: one\nscenes: [av2s-7fab2350-w00]\n")
    evaluate(str(suite), ["constant_velocity"], tmp_path, show_progress=False)
    proj = score_run(tmp_path, cache_dir=None, reference=IDM_REFERENCE)
    assert {r["profile"] for r in proj.rows} == {"project"}
    nav = score_run(tmp_path, cache_dir=None, reference=IDM_REFERENCE, profile="navsim")
    assert {r["profile"] for r in nav.rows} == {"navsim"} and {r["profile"] for r in nav.scene_rows} == {"navsim"}
    assert "navsim" in (tmp_path / "leaderboard.csv").read_text()
    # the at-fault collision and drivable-area verdicts of this clean drive do not depend on the profile
    for key in ("NC", "DAC"):
        assert nav.rows[0][key] == proj.rows[0][key]
    from alpasim_policy.errors import ConfigError

    with pytest.raises(ConfigError, match="'profile': unknown scoring profile 'carla'"):
        score_run(tmp_path, cache_dir=None, reference=IDM_REFERENCE, profile="carla")
