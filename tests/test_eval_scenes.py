"""``eval --scenes PATH...`` / ``--suite FOLDER|YAML-of-paths``: scenes outside the scenarios root
run and score; bad scenes and caches are reported before the first rollout, skipped, recorded,
and make the command fail at the end; ``scenarios list`` skips bad files too."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from alpasim_policy.cli import main as cli_main
from alpasim_policy.evaluate import evaluate, rollout_path
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.scenes.format import load_scene, save_scene
from alpasim_policy.scenes.suite import find_scene
from alpasim_policy.sim.rollout import Rollout

SCENE = "av2s-7fab2350-w00"


class LoudPolicy:
    """Constant velocity that says on stderr when it first acts (to order events against errors)."""

    name = "loud"
    camera_preset = None

    def reset(self, *, seed=None, scene=None, camera_rig=None):
        self.spoke = False

    def act(self, obs):
        if not self.spoke:
            print("FIRST-ACT", file=sys.stderr, flush=True)
            self.spoke = True
        plan = np.zeros((40, 3))
        plan[:, 0] = float(obs["speed"]) * 0.1 * np.arange(1, 41)
        return PolicyOutput(trajectory=plan)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A folder as an import would leave it: one scene whose id is nowhere under the scenarios root,
    a file that is not a scene, and a truncated scene file."""
    d = tmp_path_factory.mktemp("imported")
    sc = load_scene(find_scene(SCENE))
    sc.metadata.scene_id = "imported-test-0001"
    save_scene(sc, d / "imported-test-0001.npz")
    (d / "notes.npz").write_bytes(b"this is not a scene")
    data = find_scene("av2s-7fab2350-w01").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    return d


def _skipped(out) -> dict[str, str]:
    run = json.loads((out / "run.json").read_text())
    return {s["path"]: s["reason"] for s in run["skipped_scenes"]}


def test_eval_scenes_folder_runs_good_scenes_skips_bad_ones_and_fails_at_the_end(tmp_path, imported, capsys):
    out = tmp_path / "run"
    spec = "test_eval_scenes:LoudPolicy"
    rc = cli_main(["eval", "--scenes", str(imported), "--policy", spec, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    # both bad files reported by name with the reason, before the first rollout started
    for name in ("notes.npz", "truncated.npz"):
        assert f"{imported / name}" in err
        assert err.index(str(imported / name)) < err.index("FIRST-ACT")
    skipped = _skipped(out)
    assert set(skipped) == {str(imported / "notes.npz"), str(imported / "truncated.npz")}
    assert all(reason for reason in skipped.values())
    # the imported scene (unknown to the scenarios root) was driven and scored
    assert Rollout.load(rollout_path(out, spec, "imported-test-0001")).controlled.any()
    rows = list((out / "scenes.csv").read_text().splitlines())
    assert len(rows) == 2 and "imported-test-0001" in rows[1]
    assert "EPDMS" in (out / "leaderboard.md").read_text()


def test_suite_as_folder_and_as_yaml_of_relative_paths(tmp_path, imported):
    good = tmp_path / "scenes"
    good.mkdir()
    shutil.copy(imported / "imported-test-0001.npz", good)
    res = evaluate(str(good), ["constant_velocity"], tmp_path / "a", show_progress=False)
    assert [s["scene_id"] for s in res.scenes] == ["imported-test-0001"] and not res.skipped_scenes
    # a suite YAML mixing a relative path (from the YAML's folder) and a scene id
    (tmp_path / "mine.yaml").write_text(
        f"name: mine\nscenes: [scenes/imported-test-0001.npz, {SCENE}, no-such-id]\n"
    )
    res = evaluate(str(tmp_path / "mine.yaml"), ["constant_velocity"], tmp_path / "b", show_progress=False)
    assert [s["scene_id"] for s in res.scenes] == ["imported-test-0001", SCENE]
    assert len(res) == 2 and not any("error" in r for r in res)
    (bad,) = res.skipped_scenes
    assert "scenes[2]" in bad["path"] and "no-such-id" in bad["reason"]


def test_a_duplicate_scene_id_and_a_stale_strict_cache_are_rejected_up_front(tmp_path, imported):
    d = tmp_path / "dups"
    d.mkdir()
    shutil.copy(imported / "imported-test-0001.npz", d / "a.npz")
    sc = load_scene(d / "a.npz")
    sc.metadata.license = "changed"  # same id, another file
    save_scene(sc, d / "b.npz")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{SCENE}.npz").write_bytes(b"corrupt")
    res = evaluate(None, ["constant_velocity"], tmp_path / "run", scenes=[d, SCENE], cache_dir=cache,
                   show_progress=False)  # fmt: skip
    assert [s["path"] for s in res.scenes] == [str(d / "a.npz")]
    reasons = {s["path"]: s["reason"] for s in res.skipped_scenes}
    assert "imported-test-0001" in reasons[str(d / "b.npz")] and str(d / "a.npz") in reasons[str(d / "b.npz")]
    (stale,) = [r for p, r in reasons.items() if p != str(d / "b.npz")]
    assert str(cache / f"{SCENE}.npz") in stale and "corrupt" in stale
    assert len(res) == 1  # only the good scene was driven


def test_scenarios_list_skips_a_bad_file_and_fails_at_the_end(imported, capsys):
    rc = cli_main(["scenarios", "list", "--suite", str(imported)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "imported-test-0001" in out
    assert str(imported / "notes.npz") in err and str(imported / "truncated.npz") in err


def test_a_scene_too_short_for_the_env_warm_up_is_skipped_before_any_rollout(tmp_path):
    res = evaluate(None, ["constant_velocity"], tmp_path, scenes=[SCENE], env_config={"warmup_s": 60.0},
                   show_progress=False)  # fmt: skip
    assert len(res) == 0 and not res.scenes
    (sk,) = res.skipped_scenes
    assert SCENE in sk["path"] and "too short" in sk["reason"] and "60" in sk["reason"]
