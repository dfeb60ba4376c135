"""Traffic lights and routes on real scenes: lights that logged drivers obey, routes a car can follow."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from alpasim_policy.scenes import load_scene, load_suite
from alpasim_policy.scenes.format import Lane, LightState, RoadMap, save_scene
from alpasim_policy.scenes.geometry import MapIndex, Polyline, box_polygons, rear_axle_to_center

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
CR = ROOT / "raw" / "commonroad"
PEACH = CR / "USA_Peach-4_1_T-1.xml"


@pytest.fixture(scope="module")
def bundled():
    return [load_scene(p) for p in load_suite(ROOT / "suites" / "bundled.yaml")]


@pytest.fixture(scope="module")
def importable():
    """Every scene the raw CommonRoad files give (all eligible egos, any length)."""
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    return [s for f in sorted(CR.glob("*.xml")) for s in import_commonroad(f, min_steps=0)]


def _front_crossings(scene) -> list[tuple[str, int, LightState]]:
    """(light id, step, state) each time the logged ego's front bumper crosses a stop line forwards."""
    e = scene.ego
    c = rear_axle_to_center(e.state, e.rear_axle_to_center)
    front = c[:, :2] + 0.5 * e.length * np.column_stack([np.cos(c[:, 2]), np.sin(c[:, 2])])
    out = []
    for k, tl in enumerate(scene.map.traffic_lights):
        a, b = np.asarray(tl.stop_line)
        seg = b - a
        n = np.array([seg[1], -seg[0]]) / np.linalg.norm(seg)
        lane = scene.map.lane(tl.lane_id).centerline
        if np.dot(n, lane[-1] - lane[-2]) < 0:
            n = -n
        side = (front - a) @ n
        along = ((front - a) @ seg) / np.dot(seg, seg)
        for t in range(1, scene.num_steps):
            if e.valid[t - 1] and e.valid[t] and side[t - 1] < 0 <= side[t] and -0.1 <= along[t] <= 1.1:
                out.append((tl.id, t, LightState(int(scene.map.light_states[k, t]))))
    return out


# ----------------------------------------------------------------------------- lights


def test_bundle_has_light_controlled_scenes_whose_drivers_obey(bundled):
    lit = [s for s in bundled if s.map.traffic_lights]
    assert len(lit) >= 3
    crossings = [x for s in lit for x in _front_crossings(s)]
    assert len(crossings) >= 3  # the logged egos do drive through the signalised intersection
    # ... and never on red: the imported states / stop lines agree with what drivers did.
    assert [x for x in crossings if x[2] == LightState.RED] == []
    for s in lit:
        assert s.map.light_states.shape == (len(s.map.traffic_lights), s.num_steps)
        assert set(np.unique(s.map.light_states)) <= {int(v) for v in LightState}


def test_light_governs_only_the_movements_of_its_direction(tmp_path):
    """A lane that goes straight ignores a left-turn arrow it references; the straight light rules it."""
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    tree = ET.parse(PEACH)
    root = tree.getroot()
    # Lanelet 43208 (northern approach) continues straight; its own light is 43920 (direction all).
    lane = next(ln for ln in root.findall("lanelet") if ln.get("id") == "43208")
    ET.SubElement(lane, "trafficLightRef", ref="990")
    tl = ET.SubElement(root, "trafficLight", id="990")
    cyc = ET.SubElement(tl, "cycle")
    ce = ET.SubElement(cyc, "cycleElement")
    ET.SubElement(ce, "duration").text = "1000"
    ET.SubElement(ce, "color").text = "red"
    ET.SubElement(tl, "direction").text = "left"
    ET.SubElement(tl, "active").text = "true"
    p = tmp_path / "arrow.xml"
    tree.write(p)
    s = import_commonroad(p, egos=["160"])[0]
    ids = {t.lane_id: t.id for t in s.map.traffic_lights}
    assert ids["43208"] == "43920@43208"  # the left arrow does not govern a straight lane
    k = [t.lane_id for t in s.map.traffic_lights].index("43208")
    assert (s.map.light_states[k] == LightState.GREEN).all()
    # Made a straight arrow instead, it does govern the lane: red arrow + green main light -> the
    # most permissive active state per step (green), and both lights are named.
    tl.find("direction").text = "straight"
    tree.write(p)
    s = import_commonroad(p, egos=["160"])[0]
    ids = {t.lane_id: t.id for t in s.map.traffic_lights}
    assert ids["43208"] == "43920+990@43208"


def _set_offsets(root: ET.Element, offsets: dict[str, int]) -> None:
    for tl in root.findall("trafficLight"):
        if tl.get("id") in offsets:
            cyc = tl.find("cycle")
            for old in cyc.findall("timeOffset"):
                cyc.remove(old)
            ET.SubElement(cyc, "timeOffset").text = str(offsets[tl.get("id")])


def test_unsynchronised_light_programme_is_aligned_to_the_recording(tmp_path):
    """Peachtree with its two signal groups' offsets swapped (N/S red, E/W green at step 0) -- an
    authored programme out of phase with the recording, as CommonRoad's NGSIM lights can be.

    As given, every logged car that crosses a stop line would cross on red. The importer keeps the
    programme and the lights' relative offsets and advances the whole programme to the phase the
    traffic shows: no crossing on red, and green starting as the queues start (the true phase is
    500 steps; the first queued car moves off 0.4 s before the line's green in the file).
    """
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    tree = ET.parse(PEACH)
    _set_offsets(tree.getroot(), {"43918": 500, "43920": 500, "43919": 0, "43921": 0})
    p = tmp_path / "desync.xml"
    tree.write(p)
    scenes = import_commonroad(p)
    assert len(scenes) == 5
    crossings = [x for s in scenes for x in _front_crossings(s)]
    assert len(crossings) >= 3 and not [x for x in crossings if x[2] == LightState.RED]
    assert {s.metadata.extra["light_phase_shift_steps"] for s in scenes} == {496}
    # The file as published is in phase already: left as it is.
    assert import_commonroad(PEACH, egos=["160"])[0].metadata.extra["light_phase_shift_steps"] == 0


def test_constant_velocity_runs_the_red_and_idm_stops(tmp_path):
    """Real Peachtree scene (ego 198 queues at the northern stop line), its light red from t0 on.

    The logged driver stops short of the line, so the human filter leaves TLC alone; coasting at
    the t0 speed crosses the line on red (TLC 0), the idm policy stops at it (TLC 1).
    """
    from alpasim_policy.evaluate import run_rollout
    from alpasim_policy.scoring.closedloop import score_rollout
    from alpasim_policy.scoring.world import ScoringWorld

    sc = load_scene(ROOT / "scenes" / "cr-USA_Peach-4_1_T-1-ego198.npz")
    on_route = [k for k, tl in enumerate(sc.map.traffic_lights) if tl.lane_id in sc.route.lane_ids]
    assert len(on_route) == 1
    sc.map.light_states[on_route, sc.metadata.t0_index :] = int(LightState.RED)
    assert not [x for x in _front_crossings(sc) if x[2] == LightState.RED]  # the human obeys it
    path = save_scene(sc, tmp_path / "red.npz")
    world = ScoringWorld.from_scene(sc)
    tlc = {p: score_rollout(world, run_rollout(p, path)).metrics["TLC"] for p in ("constant_velocity", "idm")}
    assert tlc == {"constant_velocity": 0.0, "idm": 1.0}


def test_plot_draws_lights(tmp_path, bundled):
    from alpasim_policy.scenes.plot import plot_scene

    s = next(s for s in bundled if s.map.traffic_lights)
    png = plot_scene(s, tmp_path / "lights.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- routes


def _route_problems(scene) -> list[str]:
    """What makes the route unfollowable: a jump, a reversal, a kink, or a log that runs backwards on it."""
    p = scene.route.polyline
    d = np.diff(p, axis=0)
    seg = np.linalg.norm(d, axis=1)
    h = np.arctan2(d[:, 1], d[:, 0])
    turn = np.abs(np.angle(np.exp(1j * np.diff(h))))
    probs = []
    if (seg < 1e-9).any():
        probs.append("repeated point")
    if len(turn) and turn.max() > np.deg2rad(60):
        probs.append(f"kink of {np.degrees(turn.max()):.0f} deg")
    s, lat, _ = Polyline(p).project(scene.ego.xy[scene.ego.valid])
    if np.diff(s).min() < -0.5:
        probs.append(f"the log moves {np.diff(s).min():.1f} m backwards along the route")
    if np.abs(lat).max() > 2.5:
        probs.append(f"the log is {np.abs(lat).max():.1f} m off the route")
    return probs


def test_routes_continuous_and_monotone_on_every_bundled_and_importable_scene(bundled, importable):
    scenes = bundled + importable
    assert len(scenes) >= 60
    bad = {s.scene_id: pr for s in scenes if (pr := _route_problems(s))}
    assert bad == {}


def test_lane_change_is_a_lateral_transition_not_a_jump():
    """Two 175 m neighbour lanes (the US-101 case): concatenating them jumped 175 m back."""
    from alpasim_policy.scenes.importers.common import LANE_CHANGE_LENGTH_M, build_route

    def lane(i, y, left=None, right=None):
        x = np.array([0.0, 175.0])
        return Lane(id=i, centerline=np.c_[x, [y, y]], left_boundary=np.c_[x, [y + 1.75] * 2],
                    right_boundary=np.c_[x, [y - 1.75] * 2], predecessors=[], successors=[],
                    left_neighbor=left, right_neighbor=right, is_intersection=False, speed_limit=None,
                    lane_type="vehicle")  # fmt: skip

    road = RoadMap(lanes=[lane("a", 3.5, right="b"), lane("b", 0.0, left="a")], drivable_areas=[],
                   crosswalks=[], traffic_lights=[], light_states=np.zeros((0, 0), np.int8))  # fmt: skip
    x = 60.0 + 1.5 * np.arange(81)
    y = 3.5 - 3.5 / (1.0 + np.exp(-(x - 100.0) / 4.0))  # lane change centred at x = 100 m
    h = np.arctan2(np.gradient(y), np.gradient(x))
    route = build_route(road, MapIndex(road), np.c_[x, y], h)
    p = route.polyline
    assert route.lane_ids == ["a", "b"]
    assert (np.diff(p[:, 0]) > 0).all()  # never backwards
    assert np.linalg.norm(np.diff(p, axis=0), axis=1).max() < 91.0  # no 175 m leap
    # On lane a before, on lane b after, a smooth blend over ~LANE_CHANGE_LENGTH_M around x = 100.
    moving = p[(p[:, 1] < 3.5 - 1e-3) & (p[:, 1] > 1e-3)]
    assert (
        moving[:, 0].min() > 100.0 - LANE_CHANGE_LENGTH_M
        and moving[:, 0].max() < 100.0 + LANE_CHANGE_LENGTH_M
    )
    assert np.abs(np.diff(p[:, 1]) / np.diff(p[:, 0])).max() < 0.5  # a lateral transition, not a step
    _, lat, _ = Polyline(p).project(np.c_[x, y])
    assert np.abs(lat).max() < 1.0  # the route follows the ego's lane change


def test_logged_ego_stays_clear_of_others(bundled):
    """Ego candidates keep a margin to every road user, so log replay through the tracker is clean."""
    import shapely

    from alpasim_policy.scenes.importers.commonroad import MIN_EGO_CLEARANCE_M

    for s in (s for s in bundled if s.metadata.source_dataset == "commonroad"):
        c = rear_axle_to_center(s.ego.state, s.ego.rear_axle_to_center)
        ego = box_polygons(c[:, 0], c[:, 1], c[:, 2], s.ego.length, s.ego.width)
        a = s.agents
        st = a.state
        boxes = box_polygons(st[..., 0], st[..., 1], st[..., 2], a.size[:, None, 0], a.size[:, None, 1])
        d = shapely.distance(ego[None], boxes)
        assert d[a.valid & s.ego.valid[None]].min() >= MIN_EGO_CLEARANCE_M - 1e-3, s.scene_id
