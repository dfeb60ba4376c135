"""BEV raster: placement, orientation, layers and caching, on a bundled real scene."""

from __future__ import annotations

import copy
import gc
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from alpasim_policy.errors import ConfigError
from alpasim_policy.render.bev import BevConfig, BevRenderer, render_bev
from alpasim_policy.scenes.format import AgentType, LightState, TrafficLight, load_scene

ROOT = Path(__file__).resolve().parents[1]
EGO = (250, 0, 0)
AGENT = (0, 250, 0)
PLAN = (0, 0, 250)


@pytest.fixture(scope="module")
def scene():
    paths = sorted((ROOT / "scenarios/scenes").glob("av2s-*.npz"))
    assert paths, "no bundled AV2 sensor scene under scenarios/scenes/"
    return load_scene(paths[0])


def _only(**draw) -> BevConfig:
    """A config that draws only the named layers, in pure, easy-to-find colours, no AA."""
    flags = {
        f: False
        for f in (
            "draw_drivable", "draw_crosswalks", "draw_lane_boundaries", "draw_centerlines", "draw_route",
            "draw_lights", "draw_agents", "draw_ego", "draw_plan",
        )
    }  # fmt: skip
    flags.update(draw)
    return BevConfig(
        antialias=False,
        colors={"ego": EGO, "plan": PLAN},
        agent_colors={t.name: AGENT for t in AgentType},
        **flags,
    )


def _centroid(img: np.ndarray, color) -> np.ndarray:
    rows, cols = np.nonzero(np.all(img == color, axis=-1))
    assert len(rows), f"colour {color} not drawn"
    return np.array([cols.mean(), rows.mean()])


def _rig_to_world(pose: np.ndarray, xy: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(pose[2]), np.sin(pose[2])
    return np.array([pose[0] + c * xy[0] - s * xy[1], pose[1] + s * xy[0] + c * xy[1]])


def test_shape_dtype_and_layers(scene):
    t = scene.metadata.t0_index
    cfg = BevConfig(width=200, height=120, antialias=False)
    img = render_bev(
        scene,
        ego_state=scene.ego.state[t],
        agent_states=scene.agents.state[:, t],
        agent_valid=scene.agents.valid[:, t],
        step=t,
        config=cfg,
    )
    assert img.shape == (120, 200, 3) and img.dtype == np.uint8
    # the ego stands on the road: the drivable colour is present and the map is not empty
    assert np.all(img == cfg.colors["drivable"], axis=-1).mean() > 0.05
    assert np.all(img == cfg.colors["lane_boundary"], axis=-1).any()


@pytest.mark.parametrize("ego_position", [(0.5, 0.7), (0.3, 0.5)])
def test_ego_drawn_at_configured_pixel(scene, ego_position):
    t = scene.metadata.t0_index + 5
    cfg = replace(_only(draw_ego=True), ego_position=ego_position, meters_per_pixel=0.1)
    img = render_bev(
        scene, ego_state=scene.ego.state[t], agent_states=None, agent_valid=None, step=t, config=cfg
    )
    col, row = cfg.ego_pixel()
    # the box centre is rear_axle_to_center ahead (= up) of the rig origin
    expect = np.array([col, row - scene.ego.rear_axle_to_center / cfg.meters_per_pixel])
    np.testing.assert_allclose(_centroid(img, EGO), expect, atol=1.0)
    # and the box is longer (vertical) than wide: heading up
    rows, cols = np.nonzero(np.all(img == EGO, axis=-1))
    assert np.ptp(rows) == pytest.approx(scene.ego.length / cfg.meters_per_pixel, abs=2)
    assert np.ptp(cols) == pytest.approx(scene.ego.width / cfg.meters_per_pixel, abs=2)


@pytest.mark.parametrize("t_off", [0, 30, 60])
def test_heading_up_agent_ahead_is_above_and_left_is_left(scene, t_off):
    t = min(scene.metadata.t0_index + t_off, scene.num_steps - 1)
    pose = scene.ego.state[t, :3]
    cfg = _only(draw_agents=True)
    r = BevRenderer(scene, cfg)
    cx, cy = cfg.ego_pixel()
    for rig_xy, check in (
        ((15.0, 0.0), lambda c: c[1] < cy - 15.0 / cfg.meters_per_pixel + 2 and abs(c[0] - cx) < 2),
        ((0.0, 8.0), lambda c: c[0] < cx - 8.0 / cfg.meters_per_pixel + 2 and abs(c[1] - cy) < 2),
        ((-10.0, -5.0), lambda c: c[1] > cy and c[0] > cx),
    ):
        st = scene.agents.state[:, t].copy()
        st[0, :2] = _rig_to_world(pose, rig_xy)
        st[0, 2] = pose[2]
        valid = np.zeros(len(st), dtype=bool)
        valid[0] = True
        img = r.render(ego_state=scene.ego.state[t], agent_states=st, agent_valid=valid, step=t)
        c = _centroid(img, AGENT)
        assert check(c), (rig_xy, c, (cx, cy))


def test_plan_drawn_same_in_world_and_rig_frames(scene):
    t = scene.metadata.t0_index
    pose = scene.ego.state[t, :3]
    cfg = _only(draw_plan=True)
    plan_rig = np.c_[np.linspace(1, 20, 30), np.linspace(0, 6, 30)]  # ahead, drifting left
    plan_world = np.array([_rig_to_world(pose, p) for p in plan_rig])
    kw = dict(ego_state=scene.ego.state[t], agent_states=None, agent_valid=None, step=t, config=cfg)
    a = render_bev(scene, plan_rig=plan_rig, **kw)
    b = render_bev(scene, plan_world=plan_world, **kw)
    assert np.array_equal(a, b)
    rows, cols = np.nonzero(np.all(a == PLAN, axis=-1))
    cx, cy = cfg.ego_pixel()
    # the plan's end: 20 m up and 6 m left of the rig origin
    end = np.array([cx - 6 / cfg.meters_per_pixel, cy - 20 / cfg.meters_per_pixel])
    assert np.min(np.hypot(cols - end[0], rows - end[1])) < 2
    assert rows.max() <= cy + 3 and cols.max() <= cx + 3
    # without a plan, no plan pixels
    c = render_bev(scene, **kw)
    assert not np.all(c == PLAN, axis=-1).any()


def test_stop_line_colour_follows_light_state_at_step(scene):
    s = copy.deepcopy(scene)
    t = s.metadata.t0_index
    pose = s.ego.state[t, :3]
    ends = np.array([_rig_to_world(pose, (10.0, 2.0)), _rig_to_world(pose, (10.0, -2.0))])
    s.map.traffic_lights = [TrafficLight(id="tl", lane_id=s.map.lanes[0].id, stop_line=ends)]
    states = np.full((1, s.num_steps), LightState.RED, dtype=np.int8)
    states[0, t + 1 :] = LightState.GREEN
    s.map.light_states = states
    s.validate()
    cfg = _only(draw_lights=True)
    r = BevRenderer(s, cfg)
    red = r.render(ego_state=s.ego.state[t], step=t)
    green = r.render(ego_state=s.ego.state[t], step=t + 1)
    assert np.all(red == cfg.colors["light_red"], axis=-1).sum() > 10
    assert not np.all(red == cfg.colors["light_green"], axis=-1).any()
    assert np.all(green == cfg.colors["light_green"], axis=-1).sum() > 10
    cx, cy = cfg.ego_pixel()
    assert _centroid(red, cfg.colors["light_red"])[1] == pytest.approx(
        cy - 10 / cfg.meters_per_pixel, abs=1.5
    )


def test_config_errors_and_cache_does_not_keep_scene_alive(scene):
    with pytest.raises(ConfigError, match="unknown field.*widht"):
        BevConfig.from_dict({"widht": 100})
    with pytest.raises(ConfigError, match="meters_per_pixel"):
        BevConfig(meters_per_pixel=0)
    assert BevConfig.from_dict({"width": 64, "height": 32}).width == 64
    s = copy.deepcopy(scene)
    t = s.metadata.t0_index
    a = render_bev(s, ego_state=s.ego.state[t], agent_states=None, agent_valid=None, step=t)
    b = render_bev(s, ego_state=s.ego.state[t], agent_states=None, agent_valid=None, step=t)
    assert np.array_equal(a, b)
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None


def test_agent_count_mismatch_is_an_error(scene):
    t = scene.metadata.t0_index
    with pytest.raises(ValueError, match="agent_states has"):
        render_bev(
            scene, ego_state=scene.ego.state[t], agent_states=np.zeros((3, 5)), agent_valid=None, step=t
        )
