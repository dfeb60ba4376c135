"""The report stage: report.html (rendered in headless Chromium), rollout videos, the violations index."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from alpasim_policy.cli import main as cli_main
from alpasim_policy.evaluate import evaluate, rollout_path
from alpasim_policy.report.html import write_report
from alpasim_policy.report.video import EVENTS, RolloutFrames, video_path, write_video, write_violations
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import find_scene
from alpasim_policy.scoring.report import score_run
from alpasim_policy.sim.rollout import Rollout

SCENE = "av2s-7fab2350-w01"
POLICIES = ["log_replay", "constant_velocity"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real scored run: two baselines on one bundled AV2 scene."""
    out = tmp_path_factory.mktemp("run")
    suite = out / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    evaluate(str(suite), POLICIES, out, show_progress=False)
    board = score_run(out)
    return out, board


def _chromium() -> str | None:
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )


def test_report_html_ranks_explains_and_plots(run):
    out, board = run
    path = write_report(out)
    html = path.read_text()
    # ranked by EPDMS: the leaderboard table lists the better policy first
    ranked = sorted(board.rows, key=lambda r: -r["EPDMS"])
    table = html[html.index('id="leaderboard"') : html.index("</table>", html.index('id="leaderboard"'))]
    pos = [table.index(f">{r['policy']}<") for r in ranked]
    assert pos == sorted(pos) and ranked[0]["EPDMS"] > ranked[-1]["EPDMS"]
    # every leaderboard column has a legend entry; the profile is named
    with open(out / "leaderboard.csv") as f:
        cols = next(csv.reader(f))
    legend = html[html.index('id="legend"') :]
    for c in cols:
        assert f"<dt>{c}</dt>" in legend
    assert "Scoring profile:" in html
    # run-wide plots are embedded PNGs, the scene has an inline-SVG speed profile, nothing is fetched
    assert len(re.findall(r"src='data:image/png;base64,", html)) >= 2
    assert f"id='scene-{SCENE}'" in html and f"aria-label='speed profile {SCENE}'" in html
    assert "http://" not in html and "https://" not in html


def test_speed_profile_svg_plots_the_rollout_speeds(run):
    """Each policy's polyline is its rollout's speed over time (an affine map to pixels, speed up
    the page), and the log is drawn dashed beside them."""
    out, _ = run
    html = write_report(out).read_text()
    svg = re.search(rf"<svg class='speed' role='img' aria-label='speed profile {SCENE}'.*?</svg>", html, re.S)
    assert svg is not None
    lines = dict(re.findall(r"<polyline class='series' data-label='([^']+)'[^>]*points='([^']*)'", svg.group(0)))
    assert set(lines) == {"log", *POLICIES}
    assert "stroke-dasharray" in re.search(r"<polyline[^>]*data-label='log'[^>]*>", svg.group(0)).group(0)
    for p in POLICIES:
        ro = Rollout.load(rollout_path(out, p, SCENE))
        t = np.asarray(ro.times, float) - ro.times[0]
        v = np.hypot(ro.ego_state[:, 3], ro.ego_state[:, 4])
        xy = np.array([[float(c) for c in pt.split(",")] for pt in lines[p].split()])
        assert len(xy) == len(t)
        assert np.ptp(v) > 1.0  # the log warm-up varies the speed, so the fit below is determined
        for data, pix, sign in ((t, xy[:, 0], 1), (v, xy[:, 1], -1)):
            A = np.stack([np.ones_like(data), data], axis=1)
            (a, b), *_ = np.linalg.lstsq(A, pix, rcond=None)
            assert sign * b > 0  # time runs right, speed runs up
            assert np.abs(A @ (a, b) - pix).max() < 0.11  # the points are the data, to the 0.1 px written


def test_report_reads_columns_defensively(run, tmp_path):
    """A scorer that adds (failure / miss) columns and drops others still gets a report."""
    out, _ = run
    shutil.copytree(out, tmp_path / "r")
    lb = tmp_path / "r" / "leaderboard.csv"
    with open(lb) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("latency_max_ms")
        r["failed_tick_rate"] = "0.250"
        r["profile"] = "navsim"
    with open(lb, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    html = write_report(tmp_path / "r").read_text()
    fail = html[html.index('id="failures"') :]
    assert ">failed_tick_rate<" in fail[: fail.index("</table>")] and "0.250" in fail
    assert "<dt>failed_tick_rate</dt>" in html and "<dt>latency_max_ms</dt>" not in html
    assert "Scoring profile: <b>navsim</b>" in html  # the profile the scorer names is shown


def test_report_renders_in_headless_chromium(run, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    out, board = run
    path = write_report(out)
    base = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'p'}",
    ]
    dom = subprocess.run(
        base + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
    for el in ('id="leaderboard"', 'id="legend"', 'id="failures"', 'id="plot-metrics"', 'id="plot-latency"',
               'id="scenes"', 'id="profile"'):  # fmt: skip
        assert el in dom, el
    assert dom.count("<tr>") >= 1 + len(board.rows)
    png = tmp_path / "shot.png"
    subprocess.run(base + ["--window-size=1200,1600", f"--screenshot={png}", path.as_uri()],
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (1600, 1200)
    # something was drawn: the page has dark text and coloured plot bars on its white background
    assert (img < 80).all(axis=2).mean() > 0.002 and img.std() > 20


def test_video_frames_show_the_plan_and_the_timeline(run):
    out, _ = run
    ro = Rollout.load(rollout_path(out, "constant_velocity", SCENE))
    scene = load_scene(find_scene(SCENE))
    path = write_video(ro, scene, video_path(out, ro.policy, SCENE))
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    fr = RolloutFrames(ro, scene)
    assert n == len(ro.times) == len(frames) and (w, h) == fr.s.size
    assert path.with_suffix(".jpg").is_file()
    k = int(np.flatnonzero(ro.controlled)[5])
    bev = frames[k][: fr.s.bev, : fr.s.bev].astype(int)
    # the executed plan (yellow: B low, G and R high) lies ahead of the ego, above its pixel
    yellow = (bev[..., 0] < 90) & (bev[..., 1] > 170) & (bev[..., 2] > 200)
    rows = np.nonzero(yellow)[0]
    ego_row = int(fr.bev.config.ego_pixel()[1])
    assert len(rows) > 20 and np.median(rows) < ego_row
    # the timeline cursor moves with the frame
    tl0 = frames[k][fr.s.bev :].astype(int)
    tl1 = frames[-1][fr.s.bev :].astype(int)
    assert np.abs(tl0 - tl1).sum() > 0


def test_violations_index_and_events_find_an_off_road_excursion(run, tmp_path):
    """Push a real rollout 40 m sideways from tick 40: off-road is detected from that tick on."""
    out, _ = run
    ro = Rollout.load(rollout_path(out, "log_replay", SCENE))
    ro.ego_state = ro.ego_state.copy()
    normal = np.stack([-np.sin(ro.ego_state[:, 2]), np.cos(ro.ego_state[:, 2])], -1)
    ro.ego_state[40:, :2] += 40.0 * normal[40:]
    run2 = tmp_path / "run"
    ro.save(rollout_path(run2, "log_replay", SCENE))
    clean = Rollout.load(rollout_path(out, "constant_velocity", SCENE))
    clean.save(rollout_path(run2, "constant_velocity", SCENE))
    write_violations(run2)
    with open(run2 / "violations" / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], r["kind"]) for r in rows] == [("log_replay", "off-road")]
    assert (
        int(rows[0]["first_step"]) >= int(ro.steps[40]) and (run2 / "violations" / rows[0]["still"]).is_file()
    )
    fr = RolloutFrames(ro, load_scene(find_scene(SCENE)))
    off = fr.events["offroad"]
    assert not off[:40].any() and off[40:].mean() > 0.5
    # the timeline's off-road row carries a mark at that tick
    row = [k for k, _, _ in EVENTS].index("offroad")
    rh = fr.s.timeline // len(EVENTS)
    x = fr._tx(int(np.flatnonzero(off)[0]))
    color = np.array(EVENTS[row][2])
    strip = fr._timeline[row * rh + 3 : row * rh + rh - 3, x - 1 : x + 2].reshape(-1, 3).astype(int)
    assert (np.abs(strip - color).sum(axis=1) < 10).any()


def test_report_and_video_commands(run, tmp_path):
    out, _ = run
    shutil.copytree(out, tmp_path / "r", ignore=shutil.ignore_patterns("videos", "report.html"))
    r = tmp_path / "r"
    assert cli_main(["video", str(r), "--scene", SCENE, "--policy", "log_replay"]) == 0
    assert sorted(p.relative_to(r).as_posix() for p in (r / "videos").rglob("*.mp4")) == [
        f"videos/log_replay/{SCENE}.mp4"
    ]
    assert cli_main(["report", str(r), "--violations"]) == 0
    html = (r / "report.html").read_text()
    assert f"videos/log_replay/{SCENE}.mp4" in html and (r / "violations" / "index.md").is_file()
    assert cli_main(["video", str(r), "--scene", "no-such-scene"]) == 2


def test_eval_writes_report_violations_and_videos(tmp_path):
    """The main job's end: eval --videos leaves report.html, the violations index and one mp4 per rollout."""
    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    out = tmp_path / "run"
    assert (
        cli_main(
            ["eval", "--suite", str(suite), "--policy", "constant_velocity", "--out", str(out), "--videos"]
        )
        == 0
    )
    assert video_path(out, "constant_velocity", SCENE).is_file()
    assert (out / "violations" / "index.csv").is_file()
    html = (out / "report.html").read_text()
    assert f"videos/constant_velocity/{SCENE}.mp4" in html and 'id="leaderboard"' in html


def test_video_map_is_drawn_once_and_matches_the_direct_render(run):
    """The pre-drawn, rotated map equals the BEV drawn from scratch at that pose (up to the bilinear
    resampling of anti-aliased lines), and pixel_map is the renderer's own scene -> pixel map."""
    from dataclasses import replace

    from alpasim_policy.render.bev import BevRenderer
    from alpasim_policy.report.video import pixel_map
    from alpasim_policy.scenes.geometry import scene_to_rig_xy

    out, _ = run
    ro = Rollout.load(rollout_path(out, "log_replay", SCENE))
    scene = load_scene(find_scene(SCENE))
    fr = RolloutFrames(ro, scene)
    assert fr.map.ok and not fr.bev.config.draw_drivable  # the frames draw only what moves
    full = BevRenderer(scene, replace(fr.bev.config, draw_drivable=True, draw_crosswalks=True,
                                      draw_lane_boundaries=True, draw_centerlines=True, draw_route=True))  # fmt: skip
    for i in (0, fr.n // 2, fr.n - 1):
        pose = fr.ego[i, :3]
        xy = scene.ego.state[::7, :2]
        np.testing.assert_allclose(
            (xy @ pixel_map(pose, fr.bev.config)[:2, :2].T) + pixel_map(pose, fr.bev.config)[:2, 2],
            full.rig_to_pixel(scene_to_rig_xy(xy, pose)),
            atol=1e-6,
        )
        direct = full.render(ego_state=fr.ego[i]).astype(int)
        warped = np.zeros_like(direct, dtype=np.uint8)
        fr.map.draw(warped, pixel_map(pose, fr.bev.config))
        fr.bev.render(ego_state=fr.ego[i], out=warped)
        diff = np.abs(direct - warped.astype(int)).max(axis=2)
        # the same picture: small mean difference, almost no pixel far off, and the map is there
        assert diff.mean() < 2.0 and (diff > 60).mean() < 0.005 and (direct > 0).any(axis=2).mean() > 0.2


def test_background_videos_are_written_by_a_second_process_and_not_again(run, tmp_path):
    """eval --videos: each rollout's video is drawn in a spawned process while eval goes on; the
    report stage then writes only the missing ones."""
    from alpasim_policy.report.video import BackgroundVideos, write_videos
    from alpasim_policy.scenes.suite import find_scene

    out, _ = run
    r = tmp_path / "r"
    shutil.copytree(out / "rollouts", r / "rollouts")
    bg = BackgroundVideos(r)
    for p in POLICIES:
        bg.submit(rollout_path(r, p, SCENE), find_scene(SCENE))
    written = bg.finish()
    assert written == {video_path(r, p, SCENE) for p in POLICIES}
    for v in written:
        cap = cv2.VideoCapture(str(v))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        assert n == len(Rollout.load(rollout_path(r, v.parent.name, SCENE)).times)
    assert write_videos(r, skip=written) == []
    assert [p.parent.name for p in write_videos(r, skip={video_path(r, "log_replay", SCENE)})] == [
        "constant_velocity"
    ]


@pytest.mark.parametrize("lamps", [True, False, None])
def test_video_cameras_draw_brake_lamps_as_the_policy_saw_them(run, lamps):
    """The mosaic re-renders the cameras: with lamps only when the rollout's env config had them (a
    rollout recorded before lamps existed has no such key and had none)."""
    import dataclasses

    out, _ = run
    ro = Rollout.load(rollout_path(out, "constant_velocity", SCENE))
    cams = {"enabled": True, "preset": "alpamayo4"} | ({} if lamps is None else {"brake_lamps": lamps})
    ro = dataclasses.replace(ro, env_config={**(ro.env_config or {}), "cameras": cams})
    scene = load_scene(find_scene(SCENE))
    fr = RolloutFrames(ro, scene)
    assert fr.rig is not None
    style = fr._camera_style
    assert (style is None) == bool(lamps) and (style is None or not style.draw_brake_lamps)
    assert fr.frame(int(np.flatnonzero(ro.controlled)[0])).shape[:2] == fr.s.size[::-1]
