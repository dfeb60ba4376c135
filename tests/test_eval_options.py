"""``eval`` wiring: per-tick deadline for any policy, camera size from the policy, shorthand flags."""

from __future__ import annotations

import time

import numpy as np
import pytest

from alpasim_policy.cli import build_parser
from alpasim_policy.cli import main as cli_main
from alpasim_policy.evaluate import effective_env_config, evaluate, rollout_path
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.policies.registry import shorthand_options, split_options
from alpasim_policy.sim.rollout import Rollout

SCENE = "av2s-7fab2350-w00"


class SlowStraightPolicy:
    """Plans straight ahead at 8 m/s, each plan offset so it differs from the last, after a sleep."""

    name = "slow"
    camera_preset = None

    def __init__(self, sleep_ms: float = 30.0):
        self.sleep_s = float(sleep_ms) / 1000.0

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        pass

    def act(self, obs):
        time.sleep(self.sleep_s)
        plan = np.zeros((30, 3))
        plan[:, 0] = 8.0 * 0.1 * np.arange(1, 31)
        return PolicyOutput(trajectory=plan)


class CameraPolicy:
    name = "cam"
    camera_preset = "alpamayo4"
    camera_size = (96, 54)

    def reset(self, **_):
        pass


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(f"name: one\nscenes: [{SCENE}]\n")
    return path


def test_deadline_flag_counts_misses_and_keys_resume(tmp_path, suite):
    spec = "test_eval_options:SlowStraightPolicy"
    args = ["eval", "--suite", str(suite), "--policy", spec, "--out", str(tmp_path), "--no-score"]
    assert cli_main([*args, "--deadline-ms", "5"]) == 0
    r = Rollout.load(rollout_path(tmp_path, spec, SCENE))
    acted = np.isfinite(r.latency_s)  # the ticks the policy was called on
    assert acted.sum() >= 40
    # every call sleeps 30 ms > 5 ms: each one is a counted miss
    assert r.deadline_miss[acted].all()
    assert r.extra["deadline"] == {"deadline_ms": 5.0, "latency_mode": "ignore"}
    first = r.ego_state.copy()
    # without the deadline the plans are used: the run is not skipped as "done", and it differs
    assert cli_main(args) == 0
    r2 = Rollout.load(rollout_path(tmp_path, spec, SCENE))
    assert not r2.deadline_miss.any()
    assert r2.extra["deadline"] == {}
    assert not np.allclose(first[-1, :2], r2.ego_state[-1, :2])


def test_policy_camera_size_sets_render_size_unless_config_fixes_it():
    cfg = effective_env_config(None, CameraPolicy())
    assert cfg.cameras.enabled and (cfg.cameras.width, cfg.cameras.height) == (96, 54)
    fixed = effective_env_config({"cameras": {"width": 320, "height": 180}}, CameraPolicy())
    assert (fixed.cameras.width, fixed.cameras.height) == (320, 180)
    # brake lamps default on; an env config that turns them off (a checkpoint trained without) keeps them off
    assert cfg.cameras.brake_lamps
    assert not effective_env_config({"cameras": {"brake_lamps": False}}, CameraPolicy()).cameras.brake_lamps


def test_shorthand_flags_go_to_the_policy_that_takes_them():
    args = build_parser().parse_args(
        [
            "eval",
            "--suite",
            "bundled",
            "--policy",
            "idm,alpamayo",
            "--out",
            "x",
            "--preset",
            "tiny",
            "--samples",
            "3",
            "--speculative",
            "4",
        ]
    )
    opts = shorthand_options(args)
    assert opts == {"preset": "tiny", "samples": 3, "speculative": 4}
    per = split_options(["idm", "alpamayo"], opts)
    assert per == {"idm": {}, "alpamayo": {"preset": "tiny", "samples": 3, "speculative": 4}}


def test_shorthand_no_policy_takes_it_is_a_clear_error(tmp_path, suite, capsys):
    code = cli_main(
        ["eval", "--suite", str(suite), "--policy", "idm", "--out", str(tmp_path), "--samples", "3"]
    )
    assert code == 2
    assert "'samples'" in capsys.readouterr().err


def test_serial_eval_builds_each_policy_once(tmp_path, monkeypatch):
    import alpasim_policy.policies.registry as registry

    calls = []
    real = registry.make_policy
    monkeypatch.setattr(registry, "make_policy", lambda spec, **kw: calls.append(spec) or real(spec, **kw))
    suite = tmp_path / "two.yaml"
    suite.write_text(f"name: two\nscenes: [{SCENE}, av2s-7fab2350-w01]\n")
    evaluate(str(suite), ["constant_velocity"], tmp_path / "run", show_progress=False)
    assert calls == ["constant_velocity"]
