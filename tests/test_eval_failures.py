"""Policy failures cost score: failed ticks zero their closed-loop windows; deadline misses do not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alpasim_policy.evaluate import evaluate, rollout_path, run_rollout
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import find_scene
from alpasim_policy.scoring.cache import build_world
from alpasim_policy.scoring.closedloop import WEIGHTED, WINDOW_STRIDE, score_rollout
from alpasim_policy.scoring.report import score_run
from alpasim_policy.sim.rollout import Rollout

SCENE = "av2s-7fab2350-w00"


class BrokenPolicy:
    """Plans straight ahead at the current speed (like constant_velocity), but breaks at chosen steps.

    ``every`` breaks every tick; otherwise the steps in ``bad_steps`` break.
    """

    name = "broken"
    camera_preset = None

    def __init__(self, mode: str = "nan", every: bool = True, bad_steps: tuple[int, ...] = ()):
        self.mode, self.every, self.bad_steps = mode, every, set(bad_steps)

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        pass

    def act(self, obs):
        k = int(obs["step"])
        plan = np.zeros((40, 3))
        plan[:, 0] = float(obs["speed"]) * 0.1 * np.arange(1, 41)
        if self.every or k in self.bad_steps:
            if self.mode == "nan":
                plan[:, 1] = np.nan
            elif self.mode == "empty":
                plan = np.zeros((0, 3))
            elif self.mode == "short":
                plan = plan[:3]
            elif self.mode == "shape":
                plan = plan[:, :2]
            elif self.mode == "raise":
                raise RuntimeError("model crashed")
        return PolicyOutput(trajectory=plan)


@pytest.fixture(scope="module")
def world():
    return build_world(load_scene(find_scene(SCENE))).prepare()


@pytest.fixture(scope="module")
def cv_epdms(world):
    ro = run_rollout("constant_velocity", find_scene(SCENE))
    return score_rollout(world, ro).metrics["EPDMS"]


@pytest.mark.parametrize("mode", ["nan", "empty", "short", "shape", "raise"])
def test_a_policy_failing_every_tick_scores_zero(tmp_path, world, cv_epdms, mode):
    spec = "test_eval_failures:BrokenPolicy"
    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    evaluate(str(suite), [spec], tmp_path, policy_options={"mode": mode}, show_progress=False)
    ro = Rollout.load(rollout_path(tmp_path, spec, SCENE))
    assert ro.policy_failure[np.isfinite(ro.latency_s)].all()  # every tick the policy was asked
    # the fallback coasts at the current speed: without the failure rule this scores like constant velocity
    free = score_rollout(world, dataclasses.replace(ro, policy_failure=np.zeros_like(ro.policy_failure)))
    assert free.metrics["EPDMS"] > 0.3 and abs(free.metrics["EPDMS"] - cv_epdms) < 0.05
    res = score_rollout(world, ro)
    assert res.metrics["EPDMS"] == 0.0 and res.metrics["PDMS"] == 0.0
    assert res.metrics["failed_windows"] == res.metrics["windows"] > 0
    board = score_run(tmp_path, cache_dir=None)
    row = board.by_policy()[spec]
    assert row["EPDMS"] == 0.0 and row["policy_failure_rate"] == 1.0 and row["deadline_miss_rate"] == 0.0
    assert row["alpasim_score"] == 0.0  # AlpaSim's scene score does not credit the fallback either


def test_failing_on_some_ticks_loses_exactly_those_windows(world):
    ro0 = run_rollout("constant_velocity", find_scene(SCENE))
    start = int(np.argmax(ro0.controlled)) - 1  # the tick of the first plan = the first window's start
    # two window starts fail, plus two ticks that start no window
    bad = (start + 2 * WINDOW_STRIDE, start + 4 * WINDOW_STRIDE, start + 3, start + 7)
    pol = BrokenPolicy(mode="raise", every=False, bad_steps=bad)
    ro = run_rollout("broken", find_scene(SCENE), policy=pol)
    assert sorted(np.flatnonzero(ro.policy_failure)) == sorted(bad)
    res = score_rollout(world, ro)
    free = score_rollout(world, dataclasses.replace(ro, policy_failure=np.zeros_like(ro.policy_failure)))
    assert len(res.windows) == len(free.windows)
    lost = [int(w["step"]) for w in res.windows if w["failed"]]
    assert lost == [bad[0], bad[1]]
    for w, f in zip(res.windows, free.windows, strict=True):
        for key in WEIGHTED:
            assert w[key] == (0.0 if int(w["step"]) in lost else f[key]), (w["step"], key)
    n = len(res.windows)
    # the scene score is the free one with exactly those windows' EPDMS terms removed
    mult = np.prod([res.metrics[k] for k in ("NC", "DAC", "DDC", "TLC")])

    def weighted(win):
        return (5 * win["EP"] + 5 * win["TTC"] + 2 * win["LK"] + 2 * win["HC"] + 2 * win["EC"]) / 16

    lost_terms = sum(mult * weighted(f) for f in free.windows if int(f["step"]) in lost) / n
    assert res.metrics["EPDMS"] == pytest.approx(free.metrics["EPDMS"] - lost_terms)
    assert res.metrics["EPDMS"] < free.metrics["EPDMS"] and res.metrics["failed_windows"] == 2
    from alpasim_policy.scoring.alpasim_metrics import valid_plan_share

    asked = int(np.isfinite(ro.latency_s).sum())
    assert valid_plan_share(ro) == pytest.approx(1.0 - len(bad) / asked)


def test_deadline_misses_are_not_failures(tmp_path, world, cv_epdms):
    """Every plan is 150 ms late under a 50 ms budget ('delay': it takes effect a tick late): each
    tick is a miss, none a failure, and the score is the physical one (close to constant velocity)."""
    from alpasim_policy.policies.deadline import with_deadline
    from alpasim_policy.policies.registry import make_policy

    pol = with_deadline(make_policy("constant_velocity"), 50, "delay", assumed_latency_ms=150)
    ro = run_rollout("constant_velocity", find_scene(SCENE), policy=pol)
    acted = np.isfinite(ro.latency_s)
    assert ro.deadline_miss[acted].all() and not ro.policy_failure.any()
    ro.save(rollout_path(tmp_path, "constant_velocity", SCENE))
    board = score_run(tmp_path, cache_dir=None)
    row = board.by_policy()["constant_velocity"]
    assert row["deadline_miss_rate"] == 1.0 and row["policy_failure_rate"] == 0.0
    assert board.scene_rows[0]["failed_windows"] == 0
    assert row["EPDMS"] == pytest.approx(cv_epdms, abs=0.05) and row["EPDMS"] > 0.3
