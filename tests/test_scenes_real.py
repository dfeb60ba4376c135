"""The bundled suite: reproducible from scenarios/raw, and geometrically sane on the real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely

from alpasim_policy.cli import main
from alpasim_policy.scenes import load_scene, load_suite
from alpasim_policy.scenes.geometry import MapIndex, Polyline, box_polygons, rear_axle_to_center, wrap_angle

ROOT = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.fixture(scope="module")
def scenes():
    return [load_scene(p) for p in load_suite(ROOT / "suites" / "bundled.yaml")]


def test_rebuild_is_byte_identical(tmp_path):
    from alpasim_policy.scenes.bundled import rebuild_bundled

    paths = rebuild_bundled(ROOT / "raw", tmp_path)
    committed = sorted(p.name for p in (ROOT / "scenes").glob("*.npz"))
    assert sorted(p.name for p in paths) == committed
    for p in paths:
        assert p.read_bytes() == (ROOT / "scenes" / p.name).read_bytes(), (
            f"{p.name} differs from the committed file"
        )
    assert (tmp_path / "suites" / "bundled.yaml").read_text() == (
        ROOT / "suites" / "bundled.yaml"
    ).read_text()


def test_cli_import_matches_bundled(tmp_path):
    src = sorted((ROOT / "raw" / "av2" / "sensor").iterdir())
    assert main(["import", "av2-sensor", *map(str, src), "--out", str(tmp_path)]) == 0
    out = sorted(tmp_path.glob("*.npz"))
    bundled = [p for p in out if (ROOT / "scenes" / p.name).is_file()]
    assert len(bundled) == 2 and all(
        p.read_bytes() == (ROOT / "scenes" / p.name).read_bytes() for p in bundled
    )
    # The CLI also writes the window that ends at the log's end, which the bundle leaves out.
    assert [p.name for p in out if p not in bundled] == ["av2s-7fab2350-w02.npz"]


def test_suite_has_20_real_scenes_from_three_sources(scenes):
    assert len(scenes) >= 20
    assert {s.metadata.source_dataset for s in scenes} == {"av2-sensor", "av2-forecasting", "commonroad"}
    assert len({s.scene_id for s in scenes}) == len(scenes)
    for s in scenes:
        assert s.metadata.t0_index == 16 and s.num_steps > 16
        # Scene frame: the ego rear axle at t0 is the origin.
        np.testing.assert_allclose(s.ego.xy[s.metadata.t0_index], 0.0, atol=1e-9)


def _ego_boxes(s):
    c = rear_axle_to_center(s.ego.state, s.ego.rear_axle_to_center)
    return box_polygons(c[:, 0], c[:, 1], c[:, 2], s.ego.length, s.ego.width)


def test_ego_stays_on_drivable_area(scenes):
    for s in scenes:
        idx = MapIndex(s)
        v = s.ego.valid
        frac = idx.on_drivable(_ego_boxes(s)[v]).mean()
        assert frac >= 0.95, f"{s.scene_id}: ego box on the drivable area at only {frac:.0%} of steps"


def test_no_agent_overlaps_ego_at_t0(scenes):
    for s in scenes:
        t0 = s.metadata.t0_index
        a = s.agents
        vis = a.valid[:, t0]
        st = a.state[vis, t0]
        boxes = box_polygons(st[:, 0], st[:, 1], st[:, 2], a.size[vis, 0], a.size[vis, 1])
        hit = shapely.intersects(_ego_boxes(s)[t0], boxes)
        assert not hit.any(), f"{s.scene_id}: agents {np.array(a.ids)[vis][hit]} overlap the ego at t0"


def test_route_lanes_connect_and_follow_the_log(scenes):
    for s in scenes:
        ids = s.route.lane_ids
        for a, b in zip(ids[:-1], ids[1:], strict=True):
            la = s.map.lane(a)
            assert b in la.successors or b in (la.left_neighbor, la.right_neighbor), (
                f"{s.scene_id}: {a} -> {b}"
            )
        pl = Polyline(s.route.polyline)
        sv, lat, hd = pl.project(s.ego.xy[s.ego.valid])
        assert np.abs(lat).max() < 2.0, f"{s.scene_id}: ego leaves the route by {np.abs(lat).max():.1f} m"
        assert np.all(np.diff(sv) > -0.5), f"{s.scene_id}: progress along the route goes backwards"
        # Route direction agrees with the ego heading.
        err = np.abs(wrap_angle(hd - s.ego.heading[s.ego.valid]))
        assert np.median(err) < np.deg2rad(10)


def test_headings_agree_with_motion(scenes):
    for s in scenes:
        e = s.ego
        moving = e.valid & (e.speed > 3.0)
        err = np.abs(wrap_angle(np.arctan2(e.state[:, 4], e.state[:, 3]) - e.heading))[moving]
        # (an ego queued at a red light may never reach 3 m/s)
        assert err.size == 0 or (err < np.deg2rad(20)).mean() >= 0.95, s.scene_id
        a = s.agents
        sp = np.hypot(a.state[..., 3], a.state[..., 4])
        moving = a.valid & (sp > 3.0)
        err = np.abs(wrap_angle(np.arctan2(a.state[..., 4], a.state[..., 3]) - a.state[..., 2]))[moving]
        assert err.size == 0 or (err < np.deg2rad(20)).mean() >= 0.95, s.scene_id


def test_av2_sensor_agents_are_in_the_city_frame(scenes):
    """Parked cars do not move between sweeps once composed with the ego pose (a frame bug would smear them)."""
    s = next(s for s in scenes if s.metadata.source_dataset == "av2-sensor")
    a = s.agents
    veh = (a.types == 0) & a.valid.all(axis=1)
    spread = np.ptp(a.state[veh, :, :2], axis=1).max(axis=1)
    # The ego drives ~50 m in the window; static vehicles must stay within a few decimetres.
    assert (spread < 0.5).sum() >= 5


def test_cli_list_and_plot(tmp_path, capsys, scenes):
    assert main(["scenarios", "list", "--suite", str(ROOT / "suites" / "bundled.yaml")]) == 0
    out = capsys.readouterr().out
    for s in scenes:
        assert s.scene_id in out
    png = tmp_path / "scene.png"
    assert (
        main(["scenarios", "plot", str(ROOT / "scenes" / f"{scenes[0].scene_id}.npz"), "--out", str(png)])
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_commonroad_egos_are_eligible_and_spread():
    from alpasim_policy.scenes.importers.commonroad import ego_candidates, import_commonroad

    xml = ROOT / "raw" / "commonroad" / "USA_Lanker-1_1_T-1.xml"
    cands = ego_candidates(xml)
    assert len(cands) >= 8
    # 4.0 s: shorter than warm-up + one scoring window, so only kept when asked (min_steps=0).
    rejected: list[str] = []
    assert import_commonroad(xml, max_egos=3, rejected=rejected) == []
    assert any("shorter than the 5.6 s" in r for r in rejected)
    scenes = import_commonroad(xml, max_egos=3, min_steps=0)
    egos = [s.metadata.extra["ego_obstacle_id"] for s in scenes]
    assert len(egos) == 3 and egos[0] == cands[0] and egos[-1] == cands[-1]
    assert egos[1] in cands[1:-1]
    for s in scenes:
        # The chosen vehicle is the ego, not also an agent.
        assert s.metadata.extra["ego_obstacle_id"] not in s.agents.ids
        assert np.linalg.norm(s.ego.xy[-1] - s.ego.xy[0]) >= 10.0


def test_commonroad_partial_presence_egos_for_training():
    """``partial_min_steps``: cars that enter or leave during the recording become egos for the
    windows of their own presence; every whole-recording ego and its scenes stay exactly as they
    were (the evaluation suite is built without the option)."""
    from alpasim_policy.scenes.importers.commonroad import _load, import_commonroad

    xml = ROOT / "raw" / "commonroad" / "USA_US101-4_1_T-1.xml"
    whole = import_commonroad(xml, min_steps=0)
    rejected: list[str] = []
    more = import_commonroad(xml, min_steps=0, partial_min_steps=50, rejected=rejected)
    by_id = {s.scene_id: s for s in more}
    for sc in whole:
        np.testing.assert_array_equal(by_id[sc.scene_id].ego.state, sc.ego.state)
    extra = [s for s in more if s.scene_id not in {w.scene_id for w in whole}]
    assert len(extra) >= 5
    tracks = _load(xml).tracks
    for sc in extra:
        present = np.flatnonzero(tracks[sc.metadata.extra["ego_obstacle_id"]].valid)
        a = sc.metadata.extra["window_start_step"]
        assert present[0] <= a and a + sc.num_steps <= present[-1] + 1  # inside its presence
        assert sc.num_steps >= 50 and sc.ego.valid.all()
        assert sc.metadata.extra["ego_obstacle_id"] not in sc.agents.ids
    assert any("not 5.0 s in one stretch" in r for r in rejected)


def test_commonroad_0p2s_scenario_resampled(scenes):
    s = next(s for s in scenes if s.scene_id.startswith("cr-DEU_A9"))
    assert s.metadata.extra["source_dt"] == pytest.approx(0.2)
    np.testing.assert_allclose(np.diff(s.timestamps), 0.1)
    assert any(ln.speed_limit is not None for ln in s.map.lanes)


def test_raw_licence_files_kept():
    assert (ROOT / "raw" / "av2" / "NOTICE").is_file()
    assert (ROOT / "raw" / "commonroad" / "LICENSE.txt").is_file()
    text = (ROOT / "LICENSE-DATA.md").read_text()
    assert "CC BY-NC-SA 4.0" in text and "BSD" in text


def test_importer_handles_copied_log_folder(tmp_path):
    """Importers work on any log folder, not only the paths we ship (renamed copy, same content)."""
    from alpasim_policy.scenes.importers.av2 import import_av2_forecasting

    src = next((ROOT / "raw" / "av2" / "forecasting").iterdir())
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    (s,) = import_av2_forecasting(dst)
    assert s.scene_id == f"av2f-{src.name[:8]}"
