"""Camera geometry and perspective rendering, checked on the real AV2 calibration and scenes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyarrow.feather as feather
import pytest
import shapely
from scipy.spatial.transform import Rotation

from alpasim_policy.errors import ConfigError
from alpasim_policy.render.cameras import (
    PRESETS,
    Camera,
    CameraRenderer,
    CameraRig,
    CameraStyle,
    brake_lamps_lit,
    clip_polygon_near,
    parked_agents,
    render_cameras,
)
from alpasim_policy.scenes.format import AgentType, load_scene
from alpasim_policy.scenes.geometry import MapIndex

ROOT = Path(__file__).resolve().parents[1]
CALIB = sorted((ROOT / "scenarios/raw/av2/sensor").glob("*/calibration"))
MAGENTA = (255, 0, 255)
ROAD = (72, 72, 76)


@pytest.fixture(scope="module")
def scene():
    paths = sorted((ROOT / "scenarios/scenes").glob("av2s-*.npz"))
    assert paths, "no bundled AV2 sensor scene under scenarios/scenes/"
    return load_scene(paths[0])


@pytest.fixture(scope="module", params=["av2s-*.npz", "av2f-*.npz", "cr-*.npz"])
def any_scene(request):
    """One bundled scene per source (AV2 sensor, AV2 forecasting, CommonRoad lanes-only)."""
    paths = sorted((ROOT / "scenarios/scenes").glob(request.param))
    assert paths, f"no bundled scene matching {request.param}"
    return load_scene(paths[0])


def _magenta_style(**kw) -> CameraStyle:
    """Every agent type drawn flat magenta (unlit colours are scaled by shading, so check hue)."""
    colors = {f"agent_{t.name.lower()}": MAGENTA for t in AgentType}
    return CameraStyle(colors=colors, **kw)


def _agent_mask(img: np.ndarray) -> np.ndarray:
    """Pixels painted by a (shaded) magenta box: red == blue, both well above green."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return (np.abs(r - b) <= 2) & (r > g + 60)


def _place_one(scene, t: int, rig_xy: tuple[float, float], rig_heading: float = 0.0):
    """Agent states with only agent 0 valid, put at a rig-frame position of the ego at ``t``."""
    pose = scene.ego.state[t, :3]
    c, s = np.cos(pose[2]), np.sin(pose[2])
    st = scene.agents.state[:, t].copy()
    st[0, 0] = pose[0] + c * rig_xy[0] - s * rig_xy[1]
    st[0, 1] = pose[1] + s * rig_xy[0] + c * rig_xy[1]
    st[0, 2] = pose[2] + rig_heading
    valid = np.zeros(len(st), dtype=bool)
    valid[0] = True
    return st, valid


# ----------------------------------------------------------------------------- camera model


@pytest.mark.parametrize("preset", PRESETS)
def test_optical_axis_projects_to_principal_point(preset):
    rig = CameraRig.from_preset(preset)
    for cam in rig.cameras:
        # 12 m down the optical axis, expressed in the rig frame
        p_rig = cam.rig_T_cam @ np.array([0.0, 0.0, 12.0, 1.0])
        uv, vis = cam.project_rig(p_rig[:3])
        assert vis, cam.name
        np.testing.assert_allclose(uv, [cam.cx, cam.cy], atol=1e-6)
        # and a point behind the camera is reported invisible
        _, vis_back = cam.project_rig((cam.rig_T_cam @ np.array([0.0, 0.0, -5.0, 1.0]))[:3])
        assert not vis_back


def test_av2_preset_matches_feather_calibration():
    assert CALIB, "no AV2 calibration under scenarios/raw/av2/sensor/"
    intr = {r["sensor_name"]: r for r in feather.read_table(CALIB[0] / "intrinsics.feather").to_pylist()}
    extr = {
        r["sensor_name"]: r
        for r in feather.read_table(CALIB[0] / "egovehicle_SE3_sensor.feather").to_pylist()
    }
    rig = CameraRig.from_preset("av2_ring")
    ring = sorted(n for n in intr if n.startswith("ring_"))
    assert sorted(rig.names) == ring and len(ring) == 7
    for name in ring:
        cam, i, e = rig[name], intr[name], extr[name]
        assert (cam.width, cam.height) == (i["width_px"], i["height_px"])
        np.testing.assert_allclose(
            [cam.fx, cam.fy, cam.cx, cam.cy], [i["fx_px"], i["fy_px"], i["cx_px"], i["cy_px"]]
        )
        R = Rotation.from_quat([e["qx"], e["qy"], e["qz"], e["qw"]]).as_matrix()
        np.testing.assert_allclose(cam.rig_T_cam[:3, :3], R, atol=1e-9)
        np.testing.assert_allclose(cam.rig_T_cam[:3, 3], [e["tx_m"], e["ty_m"], e["tz_m"]], atol=1e-9)
    # the front-centre camera looks forward: its optical axis is ~ rig +x, image right ~ rig -y
    fc = rig["ring_front_center"]
    assert fc.rig_T_cam[:3, 2] @ [1, 0, 0] > 0.99
    assert fc.rig_T_cam[:3, 0] @ [0, -1, 0] > 0.99
    # the same values when read straight from the calibration directory
    direct = CameraRig.from_av2_calibration(CALIB[0])
    for name in ring:
        np.testing.assert_allclose(direct[name].rig_T_cam, rig[name].rig_T_cam)


def test_alpamayo4_preset_cameras_and_fov():
    rig = CameraRig.from_preset("alpamayo4")
    assert rig.names == [
        "camera_cross_left_120fov",
        "camera_front_wide_120fov",
        "camera_cross_right_120fov",
        "camera_front_tele_30fov",
    ]
    assert rig["camera_front_wide_120fov"].hfov_deg == pytest.approx(120.0)
    assert rig["camera_front_tele_30fov"].hfov_deg == pytest.approx(30.0)
    # cross cameras look to their side: optical axis has a +y (left) / -y (right) component
    assert rig["camera_cross_left_120fov"].rig_T_cam[1, 2] > 0.5
    assert rig["camera_cross_right_120fov"].rig_T_cam[1, 2] < -0.5


@pytest.mark.parametrize("preset", PRESETS)
def test_resolution_rescaling_keeps_points_in_place(preset):
    full = CameraRig.from_preset(preset)
    small = CameraRig.from_preset(preset, width=480, height=270)
    rng = np.random.default_rng(0)
    for a, b in zip(full.cameras, small.cameras, strict=True):
        assert (b.width, b.height) == (480, 270)
        np.testing.assert_allclose(b.fx, a.fx * 480 / a.width)
        np.testing.assert_allclose(b.fy, a.fy * 270 / a.height)
        # random points in front of the camera land at the same fraction of the image
        pc = np.c_[rng.uniform(-5, 5, 50), rng.uniform(-3, 3, 50), rng.uniform(2, 60, 50)]
        ua, ub = a.project(pc), b.project(pc)
        np.testing.assert_allclose((ub[:, 0] + 0.5) / b.width, (ua[:, 0] + 0.5) / a.width, atol=1e-9)
        np.testing.assert_allclose((ub[:, 1] + 0.5) / b.height, (ua[:, 1] + 0.5) / a.height, atol=1e-9)
    # one side given: aspect kept per camera (AV2's front-centre camera is portrait)
    one = CameraRig.from_preset(preset, height=270)
    for a, b in zip(full.cameras, one.cameras, strict=True):
        assert b.height == 270
        assert b.width == round(a.width * 270 / a.height)


def test_bad_presets_and_cameras_raise_clear_errors():
    with pytest.raises(ConfigError, match="unknown camera rig preset"):
        CameraRig.from_preset("nope")
    with pytest.raises(ConfigError, match="rotation"):
        Camera("bad", 10, 10, 5, 5, 5, 5, rig_T_cam=np.diag([1.0, 1.0, -1.0, 1.0]))


def test_clip_polygon_near_cuts_at_plane():
    # a ground square from 2 m behind to 8 m in front of the camera plane
    sq = np.array([[-1.0, 1.0, -2.0], [1.0, 1.0, -2.0], [1.0, 1.0, 8.0], [-1.0, 1.0, 8.0]])
    out = clip_polygon_near(sq, 0.5)
    assert out[:, 2].min() == pytest.approx(0.5)
    area = shapely.Polygon(out[:, [0, 2]]).area
    assert area == pytest.approx(2.0 * 7.5)
    assert len(clip_polygon_near(sq - [0, 0, 20], 0.5)) == 0
    assert clip_polygon_near(sq + [0, 0, 20], 0.5) is not None


# ----------------------------------------------------------------------------- rendering


def test_render_shapes_and_all_cameras(scene):
    t = scene.metadata.t0_index
    rig = CameraRig.from_preset("alpamayo4", 320, 180)
    imgs = render_cameras(
        scene,
        rig,
        ego_state=scene.ego.state[t],
        agent_states=scene.agents.state[:, t],
        agent_valid=scene.agents.valid[:, t],
        step=t,
    )
    assert list(imgs) == rig.names
    for img in imgs.values():
        assert img.shape == (180, 320, 3) and img.dtype == np.uint8
    # the road is in view below the horizon of the front camera
    front = imgs["camera_front_wide_120fov"]
    assert (front[-30:] == ROAD).all(-1).mean() > 0.3


def test_box_straight_ahead_is_centred_in_front_camera(scene):
    t = scene.metadata.t0_index
    rig = CameraRig.from_preset("alpamayo4", 480, 270)
    cam = rig["camera_front_wide_120fov"]
    r = CameraRenderer(scene, rig, _magenta_style())
    st, valid = _place_one(scene, t, (cam.position[0] + 15.0, cam.position[1]))
    img = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)[cam.name]
    cols = np.nonzero(_agent_mask(img).any(axis=0))[0]
    assert len(cols) > 10
    assert (cols.min() + cols.max()) / 2 == pytest.approx(cam.cx, abs=1.5)
    # the tele camera (0.1 m left of the axis) sees it close to its centre too
    tele = rig["camera_front_tele_30fov"]
    st, valid = _place_one(scene, t, (tele.position[0] + 30.0, tele.position[1]))
    img = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)[tele.name]
    cols = np.nonzero(_agent_mask(img).any(axis=0))[0]
    assert (cols.min() + cols.max()) / 2 == pytest.approx(tele.cx, abs=1.5)


def test_box_behind_is_not_in_front_camera_but_in_rear_camera(scene):
    t = scene.metadata.t0_index
    rig = CameraRig.from_preset("av2_ring", height=270)
    r = CameraRenderer(scene, rig, _magenta_style())
    st, valid = _place_one(scene, t, (-12.0, 0.0))
    imgs = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)
    assert not _agent_mask(imgs["ring_front_center"]).any()
    assert not _agent_mask(imgs["ring_front_left"]).any()
    assert _agent_mask(imgs["ring_rear_left"]).any() or _agent_mask(imgs["ring_rear_right"]).any()


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_left_right_agents_land_on_the_correct_side(scene, side):
    t = scene.metadata.t0_index
    rig = CameraRig.from_preset("alpamayo4", 480, 270)
    r = CameraRenderer(scene, rig, _magenta_style())
    # 12 m ahead, 5 m to the left (side=+1) or right (side=-1)
    st, valid = _place_one(scene, t, (12.0, 5.0 * side))
    imgs = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)
    front = rig["camera_front_wide_120fov"]
    cols = np.nonzero(_agent_mask(imgs[front.name]).any(axis=0))[0]
    assert len(cols)
    if side > 0:
        assert cols.max() < front.cx
    else:
        assert cols.min() > front.cx
    near_cam, far_cam = (
        ("camera_cross_left_120fov", "camera_cross_right_120fov")
        if side > 0
        else ("camera_cross_right_120fov", "camera_cross_left_120fov")
    )
    assert _agent_mask(imgs[near_cam]).any()
    assert not _agent_mask(imgs[far_cam]).any()


def test_box_crossing_behind_camera_is_clipped_not_mirrored(scene):
    """A 14 m truck beside the car reaching behind the camera: it must stay on the left side."""
    t = scene.metadata.t0_index
    rig = CameraRig.from_preset("alpamayo4", 480, 270)
    cam = rig["camera_front_wide_120fov"]
    r = CameraRenderer(scene, rig, _magenta_style())
    st, valid = _place_one(scene, t, (cam.position[0] + 1.0, 3.0))
    size = scene.agents.size.copy()
    scene.agents.size[0] = (14.0, 2.5)
    try:
        img = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)[cam.name]
    finally:
        scene.agents.size[:] = size
    mask = _agent_mask(img)
    cols = np.nonzero(mask.any(axis=0))[0]
    assert len(cols) and cols.min() == 0  # reaches the left image border (it passes beside us)
    assert cols.max() < cam.cx  # nothing folded over to the right half
    # a substantial part of the left half is covered
    assert mask[:, : int(cam.cx)].mean() > 0.2


def test_road_surface_matches_ray_cast_of_drivable_area(any_scene):
    """Every pixel's ground point (ray cast to z=0) is on the drivable area iff drawn as road."""
    scene = any_scene
    t = min(scene.metadata.t0_index + 20, scene.num_steps - 1)
    rig = CameraRig.from_preset("alpamayo4", 320, 180)
    style = CameraStyle(max_range=1e4, draw_lights=False, draw_lane_lines=False, draw_crosswalks=False,
                        antialias=False, colors={"road": ROAD})  # fmt: skip
    r = CameraRenderer(scene, rig, style)
    pose = scene.ego.state[t, :3]
    imgs = r.render(ego_state=scene.ego.state[t], agent_states=None, agent_valid=None, step=t)
    area = MapIndex(scene).drivable  # what the simulator and scorer call on-road
    for cam in rig.cameras:
        u, v = np.meshgrid(np.arange(cam.width, dtype=float), np.arange(cam.height, dtype=float))
        rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
        rays = rays @ cam.rig_T_cam[:3, :3].T
        o = cam.rig_T_cam[:3, 3]
        with np.errstate(divide="ignore"):
            s = -o[2] / rays[..., 2]
        hit = s > 0
        g = o[:2] + np.where(hit, s, 0)[..., None] * rays[..., :2]
        c, sn = np.cos(pose[2]), np.sin(pose[2])
        gx = pose[0] + c * g[..., 0] - sn * g[..., 1]
        gy = pose[1] + sn * g[..., 0] + c * g[..., 1]
        truth = hit & shapely.contains_xy(area, gx, gy)
        drawn = np.all(imgs[cam.name] == ROAD, axis=-1)
        assert truth.any(), cam.name
        # only pixels along the road's edges (cv2 fills boundary pixels) may differ
        # near the horizon whole streets shrink below a pixel; judge the ground within 60 m
        close = hit & (np.hypot(gx - pose[0], gy - pose[1]) < 60.0)
        bad = (truth != drawn) & close
        k = np.ones((3, 3), np.uint8)
        t8 = truth.astype(np.uint8)
        edge = cv2.dilate(t8, k) != cv2.erode(t8, k)
        assert (bad & ~edge).mean() < 0.003, cam.name
        assert bad.mean() < 0.03, cam.name


def test_traffic_light_head_and_stop_line_coloured_by_state(scene):
    import copy

    from alpasim_policy.scenes.format import LightState, TrafficLight

    s = copy.deepcopy(scene)
    t = s.metadata.t0_index
    pose = s.ego.state[t, :3]
    c, sn = np.cos(pose[2]), np.sin(pose[2])

    def world(x, y):
        return [pose[0] + c * x - sn * y, pose[1] + sn * x + c * y]

    s.map.traffic_lights = [TrafficLight("tl", s.map.lanes[0].id, np.array([world(20, 2), world(20, -2)]))]
    states = np.full((1, s.num_steps), LightState.RED, dtype=np.int8)
    states[0, t + 1 :] = LightState.GREEN
    s.map.light_states = states
    s.validate()
    rig = CameraRig.from_preset("alpamayo4", 480, 270)
    style = CameraStyle(antialias=False)
    r = CameraRenderer(s, rig, style)
    cam = rig["camera_front_wide_120fov"]
    kw = dict(ego_state=s.ego.state[t], agent_states=None, agent_valid=None)
    red = r.render(step=t, **kw)[cam.name].astype(int)
    green = r.render(step=t + 1, **kw)[cam.name].astype(int)

    def is_red(im):
        return (im[..., 0] > 120) & (im[..., 1] < 40) & (im[..., 2] < 40)

    def is_green(im):
        return (im[..., 1] > 120) & (im[..., 0] < 100) & (im[..., 2] < 100)

    assert is_red(red).sum() > 20 and not is_green(red).any()
    assert is_green(green).sum() > 20 and not is_red(green).any()
    # the head sits above the horizon (5 m up, 20 m ahead), centred on the lane ahead
    rows, cols = np.nonzero(is_red(red))
    assert rows.min() < cam.cy
    assert np.median(cols) == pytest.approx(cam.cx, abs=0.4 * cam.fx / 20 + 3)


def test_renderer_cache_is_keyed_by_rig_and_style_values(scene):
    from alpasim_policy.render.cameras import CameraStyle, get_camera_renderer

    a = get_camera_renderer(scene, CameraRig.from_preset("alpamayo4", 64, 36))
    # an equal rig built anew (maybe at a freed rig's address) shares the renderer ...
    assert get_camera_renderer(scene, CameraRig.from_preset("alpamayo4", 64, 36)) is a
    # ... and a different rig or style never gets another's
    b = get_camera_renderer(scene, CameraRig.from_preset("alpamayo4", 32, 18))
    assert b is not a and b.rig.cameras[0].width == 32
    c = get_camera_renderer(scene, CameraRig.from_preset("alpamayo4", 64, 36), CameraStyle(max_range=30.0))
    assert c is not a and c.style.max_range == 30.0


# ----------------------------------------------------------------------------- brake lamps


def test_brake_lamps_lit_when_braking_or_standing_but_not_parked():
    t = np.arange(8) * 0.1
    states = np.zeros((6, 8, 5))
    states[0, :, 3] = 10.0  # cruising
    states[1, :, 3] = 10.0 - 1.0 * t  # braking at 1 m/s^2
    states[2, :, 3] = 10.0 - 0.3 * t  # coasting: 0.3 m/s^2, below the 0.5 threshold
    states[3, :, 4] = 10.0 - 1.0 * t  # braking, driving along y: speed is the norm
    # rows 4 and 5 stand still; 5 is parked
    valid = np.ones((6, 8), dtype=bool)
    parked = np.array([False, False, False, False, False, True])
    assert brake_lamps_lit(states, valid, 7, parked).tolist() == [False, True, False, True, True, False]
    # only the past is read: before the window fills, a braking car is dark, a standing one lit
    assert brake_lamps_lit(states, valid, 4, parked).tolist() == [False, False, False, False, True, False]
    # no valid state 0.5 s ago: braking cannot be seen; an agent not valid now is never lit
    valid[1, 2] = False
    valid[4, 7] = False
    assert brake_lamps_lit(states, valid, 7, parked).tolist() == [False, False, False, True, False, False]


def test_parked_agents_are_those_that_never_move():
    sc = load_scene(ROOT / "scenarios/scenes/cr-USA_US101-4_1_T-1-ego442-w01.npz")
    assert not parked_agents(sc.agents).any()  # stop-and-go traffic: everyone moves at some point
    state = sc.agents.state.copy()
    state[3, :, 3:5] = 0.0
    parked = parked_agents(dataclasses.replace(sc.agents, state=state))
    assert parked.tolist() == [i == 3 for i in range(len(state))]


def _lamp_pixels(img: np.ndarray, style: CameraStyle) -> tuple[int, int]:
    """(lit, dark) lamp pixels: exactly the lamp colours (antialiased edges blend, interiors not)."""
    on = (img == style.colors["brake_lamp_on"]).all(-1).sum()
    off = (img == style.colors["brake_lamp_off"]).all(-1).sum()
    return int(on), int(off)


@pytest.mark.parametrize("kind", ["lit", "dark", "facing", "disabled", "pedestrian"])
def test_brake_lamps_drawn_on_the_rear_of_a_vehicle_ahead(scene, kind):
    t = scene.metadata.t0_index
    types = np.asarray(scene.agents.types)
    want = AgentType.PEDESTRIAN if kind == "pedestrian" else AgentType.VEHICLE
    i = int(np.flatnonzero(types == int(want))[0])
    style = CameraStyle(draw_brake_lamps=kind != "disabled")
    rig = CameraRig.from_preset("alpamayo4", 128, 128)
    r = CameraRenderer(scene, rig, style)
    pose = scene.ego.state[t, :3]
    st = scene.agents.state[:, t].copy()
    ahead = 10.0  # m ahead of the rig, on the axis; heading along the ego's, or towards it
    st[i, :3] = [pose[0] + ahead * np.cos(pose[2]), pose[1] + ahead * np.sin(pose[2]),
                 pose[2] + (np.pi if kind == "facing" else 0.0)]  # fmt: skip
    valid = np.zeros(len(st), dtype=bool)
    valid[i] = True
    lit = np.zeros(len(st), dtype=bool)
    lit[i] = kind != "dark"
    img = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t, brake_lamps=lit)
    on, off = _lamp_pixels(img["camera_front_tele_30fov"], style)
    if kind == "lit":
        assert on > 20 and off == 0
        # lamps on both sides of the image centre (the vehicle straddles the optical axis)
        cols = np.nonzero((img["camera_front_tele_30fov"] == style.colors["brake_lamp_on"]).all(-1).any(0))[0]
        cam = rig["camera_front_tele_30fov"]
        assert cols.min() < cam.cx < cols.max()
    elif kind == "dark":
        assert on == 0 and off > 20
    else:  # the front faces the camera, lamps are off in the style, or a pedestrian has none
        assert on == 0 and off == 0
    with pytest.raises(ValueError, match="brake_lamps has 1 rows"):
        r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t, brake_lamps=lit[:1])
