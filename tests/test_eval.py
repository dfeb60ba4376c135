"""``eval``: rollouts on real scenes, policy failures recorded without stopping, resume, Ray = serial."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alpasim_policy.cli import main as cli_main
from alpasim_policy.errors import ConfigError
from alpasim_policy.evaluate import evaluate, rollout_path
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.policies.registry import make_policy, parse_options
from alpasim_policy.sim.rollout import Rollout

SCENES = ["av2s-7fab2350-w01", "av2s-7fab2350-w00"]


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nscenes: [" + ", ".join(SCENES) + "]\n")
    return path


class FaultyPolicy:
    """Drives straight at 5 m/s, but returns a broken plan (or raises) at chosen steps."""

    name = "faulty"
    camera_preset = None

    def __init__(self, mode: str = "nan", bad_steps: tuple[int, ...] = (20, 21, 22)):
        self.mode, self.bad_steps = mode, set(bad_steps)

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        pass

    def act(self, obs):
        k = int(obs["step"])
        plan = np.zeros((30, 3))
        plan[:, 0] = 5.0 * 0.1 * np.arange(1, 31) + 0.2 * k  # each plan differs from the last
        if k in self.bad_steps:
            if self.mode == "nan":
                plan[3, 1] = np.nan
            elif self.mode == "empty":
                plan = np.zeros((0, 3))
            elif self.mode == "short":
                plan = plan[:4]
            elif self.mode == "shape":
                plan = plan[:, :2]
            elif self.mode == "raise":
                raise RuntimeError("model crashed")
        return PolicyOutput(trajectory=plan, reasoning=f"tick {k}")


@pytest.mark.parametrize("mode", ["nan", "empty", "short", "shape", "raise"])
def test_policy_failures_are_recorded_and_the_suite_finishes(tmp_path, suite, mode):
    res = evaluate(str(suite), ["test_eval:FaultyPolicy"], tmp_path, policy_options={"mode": mode},
                   show_progress=False)  # fmt: skip
    assert len(res) == 2 and not any("error" in r for r in res)
    r = Rollout.load(rollout_path(tmp_path, "test_eval:FaultyPolicy", SCENES[0]))
    assert list(np.flatnonzero(r.policy_failure)) == [20, 21, 22]
    assert len(r.failure_messages) == 3 and "step 20" in r.failure_messages[0]
    assert r.steps[-1] == len(r.times) - 1 and r.controlled[-1]  # ran to the end of the log
    # During the failure the car executes the last valid plan (made at 19) shifted in time.
    for k in (20, 21, 22):
        shift = k - 19
        np.testing.assert_allclose(r.plans[k, :10], r.plans[19, shift : shift + 10], atol=1e-9)
    assert r.reasoning[19] == "tick 19" and r.reasoning[30] == "tick 30"
    assert np.all(np.isfinite(r.latency_s[16:-1])) and np.all(np.isnan(r.latency_s[:16]))  # one per tick


def test_resume_skips_finished_rollouts_and_reruns_stale_ones(tmp_path, suite):
    evaluate(str(suite), ["constant_velocity"], tmp_path, seed=1, show_progress=False)
    path = rollout_path(tmp_path, "constant_velocity", SCENES[1])
    mtime = path.stat().st_mtime_ns
    again = evaluate(str(suite), ["constant_velocity"], tmp_path, seed=1, show_progress=False)
    assert all(r.get("skipped") for r in again)
    assert path.stat().st_mtime_ns == mtime
    path.write_bytes(b"truncated")  # an interrupted write is redone
    third = evaluate(str(suite), ["constant_velocity"], tmp_path, seed=1, show_progress=False)
    assert sum(not r.get("skipped") for r in third) == 1
    assert Rollout.load(path).seed == 1
    fourth = evaluate(str(suite), ["constant_velocity"], tmp_path, seed=2, show_progress=False)
    assert not any(r.get("skipped") for r in fourth)  # another seed is another run


def test_ray_backend_matches_serial(tmp_path, suite):
    pytest.importorskip("ray")
    evaluate(str(suite), ["idm"], tmp_path / "serial", show_progress=False)
    res = evaluate(str(suite), ["idm"], tmp_path / "ray", backend="ray", workers=2, show_progress=False)
    assert len(res) == 2 and not any("error" in r for r in res)
    for sid in SCENES:
        a = Rollout.load(rollout_path(tmp_path / "serial", "idm", sid))
        b = Rollout.load(rollout_path(tmp_path / "ray", "idm", sid))
        for field in ("ego_state", "plans", "agent_state", "agent_valid", "controlled"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_ray_task_drives_one_scene_with_every_policy_like_serial(tmp_path, suite):
    """The Ray task body, run here: one scene loaded once for two policies (one of them broken)
    gives the serial rollouts, packed as the file the driver writes, and the broken one an error."""
    from alpasim_policy.io import atomic_write_bytes
    from alpasim_policy.ray_backend import drive_scene
    from alpasim_policy.scenes.suite import find_scene

    evaluate(str(suite), ["idm", "constant_velocity"], tmp_path / "serial", show_progress=False)
    path = find_scene(SCENES[0])
    pols = ["idm", "no_such_policy", "constant_velocity"]
    opts = {p: {} for p in pols}
    done = drive_scene(pols, path.read_bytes(), path.stem, 0, {}, opts, None)
    assert [p for p, _ in done] == pols and "error" in done[1][1] and "no_such_policy" in done[1][1]["error"]
    for p, r in (done[0], done[2]):
        assert r["summary"]["policy"] == p and r["summary"]["scene_id"] == SCENES[0]
        atomic_write_bytes(tmp_path / "t.npz", r["archive"])
        a = Rollout.load(rollout_path(tmp_path / "serial", p, SCENES[0]))
        b = Rollout.load(tmp_path / "t.npz")
        for field in ("steps", "ego_state", "plans", "agent_state", "agent_valid", "controlled"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{p} {field}")
        assert a.env_config == b.env_config and a.extra["collisions"] == b.extra["collisions"]


def test_ray_tasks_group_by_scene_only_when_there_are_enough_and_run_longest_first():
    from alpasim_policy.ray_backend import plan_tasks

    todo = [(p, s) for p in ("a", "b") for s in ("s1", "s2", "s3")]
    ticks = {"s1": 10, "s2": 30, "s3": 20}
    # 3 scenes for 2 CPUs: one task per rollout, longest scene first
    assert plan_tasks(todo, ticks, cpus=2) == [
        (["a"], "s2"), (["b"], "s2"), (["a"], "s3"), (["b"], "s3"), (["a"], "s1"), (["b"], "s1")
    ]  # fmt: skip
    # grouping needs 4 scenes per CPU: 3 scenes on 1 CPU stay one task per rollout
    assert len(plan_tasks(todo, ticks, cpus=1)) == 6
    many = [(p, f"s{k}") for p in ("a", "b") for k in range(8)] + [("a", "s8")]
    t = plan_tasks(many, {f"s{k}": k + 1 for k in range(9)}, cpus=2)
    assert len(t) == 9 and t[0] == (["a", "b"], "s7") and t[-1] == (["a", "b"], "s0")
    assert sorted(p for ps, _ in t for p in ps) == sorted(p for p, _ in many)


def test_cli_eval_writes_rollouts_run_json_and_leaderboard(tmp_path, suite, capsys):
    out = tmp_path / "run"
    rc = cli_main(["eval", "--suite", str(suite), "--policy", "log_replay,constant_velocity", "--out", str(out),
                   "--seed", "3", "--env-config", "default"])  # fmt: skip
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["seed"] == 3 and run["policies"] == ["log_replay", "constant_velocity"]
    assert "numpy" in run["versions"]
    for p in ("log_replay", "constant_velocity"):
        for sid in SCENES:
            r = Rollout.load(rollout_path(out, p, sid))
            assert r.seed == 3 and r.policy == p and r.scene_hash
            assert r.env_config["agents"] == "log"
    assert (out / "leaderboard.csv").is_file()
    assert "log_replay" in capsys.readouterr().out


def test_registry_names_and_errors():
    assert make_policy("idm").name == "idm"
    assert make_policy("constant_velocity", steps=20).steps == 20
    with pytest.raises(ConfigError, match="log_replay"):  # the message lists the known names
        make_policy("human")
    with pytest.raises(ConfigError, match="speed"):
        make_policy("idm", speed=3)
    with pytest.raises(ConfigError, match="grpc"):
        make_policy("grpc://")
    assert parse_options(["steps=20", "target_speed=8.5", "mode=nan"]) == {"steps": 20, "target_speed": 8.5,
                                                                           "mode": "nan"}  # fmt: skip
    with pytest.raises(ConfigError):
        parse_options(["novalue"])


def test_policy_options_go_to_the_policies_that_take_them():
    from alpasim_policy.policies.registry import split_options

    got = split_options(
        ["log_replay", "idm", "constant_velocity"], {"target_speed": 8.0, "constant_velocity.steps": 20}
    )
    assert got == {"log_replay": {}, "idm": {"target_speed": 8.0}, "constant_velocity": {"steps": 20}}
    assert split_options(["log_replay", "idm"], {"steps": 30}) == {
        "log_replay": {"steps": 30},
        "idm": {"steps": 30},
    }
    with pytest.raises(ConfigError, match="preset"):
        split_options(["log_replay", "idm"], {"preset": "tiny"})


class CameraPolicy:
    """Asks for the alpamayo4 rig and checks it gets the images each tick."""

    name = "camera_probe"
    camera_preset = "alpamayo4"

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        assert camera_rig is not None and len(camera_rig.names) == 4
        self.names = list(camera_rig.names)

    def act(self, obs):
        cams = obs["cameras"]
        assert sorted(cams) == sorted(self.names)
        assert all(im.shape == (45, 80, 3) and im.dtype == np.uint8 for im in cams.values())
        return PolicyOutput(trajectory=np.tile([[1.0, 0.0, 0.0]], (10, 1)) * np.arange(1, 11)[:, None])


def test_policies_with_a_camera_preset_get_cameras(tmp_path):
    from alpasim_policy.evaluate import run_rollout
    from alpasim_policy.scenes.suite import find_scene

    cfg = {"cameras": {"width": 80, "height": 45}}
    r = run_rollout("camera_probe", find_scene("cr-USA_Lanker-1_1_T-1-ego1213"), env_config=cfg,
                    policy=CameraPolicy())  # fmt: skip
    assert not r.policy_failure.any(), r.failure_messages  # the asserts inside act held every tick
    assert r.env_config["cameras"]["enabled"] and r.env_config["cameras"]["preset"] == "alpamayo4"
