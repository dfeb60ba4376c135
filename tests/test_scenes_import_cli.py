"""Importers explain themselves, and freshly imported recordings are fit to score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alpasim_policy.cli import main
from alpasim_policy.errors import ImportSourceError
from alpasim_policy.scenes import load_scene
from alpasim_policy.scenes.importers.common import WINDOW_STEPS, min_scene_steps, windows

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
CR = ROOT / "raw" / "commonroad"


def test_nothing_eligible_exits_nonzero_with_a_reason_per_candidate(tmp_path, capsys):
    text = (CR / "USA_US101-4_1_T-1.xml").read_text()
    p = tmp_path / "trucks.xml"
    p.write_text(text.replace("<type>car</type>", "<type>truck</type>"))
    out = tmp_path / "out"
    assert main(["import", "commonroad", str(p), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "wrote no scene" in err
    assert "obstacle 427: type 'truck' is not car-like" in err
    assert "no obstacle is eligible as ego" in err
    assert not list(out.glob("*.npz")) if out.exists() else True


def test_short_recording_is_rejected_with_the_scoring_horizon(tmp_path, capsys):
    """Lankershim-1_1 lasts 4.0 s: less than the env's warm-up plus one 4 s scoring window."""
    from alpasim_policy.scoring.openloop import HORIZON_STEPS
    from alpasim_policy.sim.config import DEFAULTS

    need = min_scene_steps()
    assert need == round(DEFAULTS.warmup_s / DEFAULTS.dt) + HORIZON_STEPS + 1  # the constants track both
    xml = CR / "USA_Lanker-1_1_T-1.xml"
    assert main(["import", "commonroad", str(xml), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"4.0 s (41 steps) is shorter than the {(need - 1) * 0.1:.1f} s" in err
    # Asked for explicitly, short scenes are still available.
    assert main(["import", "commonroad", str(xml), "--out", str(tmp_path), "--max-egos", "1",
                 "--min-seconds", "3"]) == 0  # fmt: skip
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_egos_error_names_the_candidates_and_why_not(tmp_path):
    from alpasim_policy.scenes.importers.commonroad import ego_candidates, import_commonroad

    xml = CR / "USA_Peach-4_1_T-1.xml"
    cands = ego_candidates(xml)
    with pytest.raises(ImportSourceError) as ei:
        import_commonroad(xml, egos=["154", "424242"])
    msg = str(ei.value)
    assert "154: its box comes within 0.25 m of obstacle" in msg  # a real queued car at the stop line
    assert "424242: no dynamic obstacle with this id" in msg
    assert f"Eligible candidates: {cands}" in msg


def test_windows_reach_the_end_of_the_log():
    for n in (57, 81, 82, 101, 121, 155, 400):
        w = windows(n)
        assert w[0][0] == 0 and w[-1][1] == n
        assert all(b - a == min(n, WINDOW_STEPS) for a, b in w)
        covered = np.zeros(n, bool)
        for a, b in w:
            covered[a:b] = True
        assert covered.all()
    # The real AV2 sensor log (15.5 s, 156 sweeps): its last window ends at its last sweep.
    import pyarrow.feather as feather

    from alpasim_policy.scenes.importers.av2 import import_av2_sensor

    log = next((ROOT / "raw" / "av2" / "sensor").iterdir())
    sweeps = np.unique(feather.read_table(log / "annotations.feather")["timestamp_ns"].to_numpy())
    scenes = import_av2_sensor(log)
    last = scenes[-1]
    assert len(scenes) == 3 and last.metadata.extra["window_start_step"] + last.num_steps == len(sweeps)
    assert last.metadata.extra["source_start_ns"] + round(8.0 * 1e9) == pytest.approx(sweeps[-1], abs=2e6)


def test_fresh_imports_replay_cleanly(tmp_path):
    """Done-when: recordings imported with the CLI run end to end under log_replay with no
    at-fault collision and no off-road (strict: no human filter)."""
    from alpasim_policy.evaluate import run_rollout
    from alpasim_policy.scoring.closedloop import score_rollout
    from alpasim_policy.scoring.world import ScoringWorld

    assert main(["import", "commonroad", str(CR / "USA_Peach-4_1_T-1.xml"), "--out", str(tmp_path)]) == 0
    assert main(["import", "commonroad", str(CR / "USA_US101-4_1_T-1.xml"), "--max-egos", "2",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    paths = sorted(tmp_path.glob("*.npz"))
    assert len(paths) == 9
    bad = {}
    for p in paths:
        sc = load_scene(p)
        m = score_rollout(
            ScoringWorld.from_scene(sc), run_rollout("log_replay", p), human_filter=False
        ).metrics
        if m["NC"] < 1.0 or m["DAC"] < 1.0:
            bad[sc.scene_id] = (m["NC"], m["DAC"])
    assert bad == {}
