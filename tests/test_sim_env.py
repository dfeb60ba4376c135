"""The closed-loop env on the real bundled scenes: log following, collisions, agents, config, spaces."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest

import alpasim_policy  # noqa: F401  (registers the env)
from alpasim_policy.errors import ConfigError, PolicyOutputError
from alpasim_policy.policies.baselines import ConstantVelocityPolicy, IDMPolicy, LogReplayPolicy
from alpasim_policy.scenes.format import AgentType, load_scene
from alpasim_policy.scenes.geometry import Polyline
from alpasim_policy.scenes.suite import find_scene, load_suite
from alpasim_policy.sim.collision import boxes_overlap, ego_corners_from_rear_axle
from alpasim_policy.sim.command import navigation_command
from alpasim_policy.sim.contract import COMMAND_LEFT, COMMAND_RIGHT, COMMAND_STRAIGHT
from alpasim_policy.sim.env import LogReplayEnv

BUNDLED = [p.stem for p in load_suite("bundled")]
ENV_ID = "alpasim_policy/LogReplay-v0"


def run(env, policy, seed=0):
    obs, info = env.reset(seed=seed)
    policy.reset(seed=seed, scene=env.unwrapped.scene)
    infos = []
    while True:
        obs, _, term, trunc, info = env.step(policy.act(obs).trajectory)
        infos.append(info)
        if term or trunc:
            return infos


def _log_is_drivable(scene) -> bool:
    """Whether a car could follow the log at all: the acceleration implied by the logged positions
    (95th percentile) stays within 10 m/s^2 and the yaw rate within 0.9 rad/s. Tracked-from-video
    logs (NGSIM-derived CommonRoad scenes) jitter well beyond that."""
    st = scene.ego.state[scene.metadata.t0_index - 1 :]
    v = np.hypot(*np.diff(st[:, :2], axis=0).T) / 0.1
    yaw_rate = np.diff(np.unwrap(st[1:, 2])) / 0.1
    return np.percentile(np.abs(np.diff(v) / 0.1), 95) <= 10.0 and np.abs(yaw_rate).max() <= 0.9


@pytest.mark.parametrize("scene_id", BUNDLED)
def test_log_replay_follows_the_log_without_at_fault_collision(scene_id):
    env = gym.make(ENV_ID, scene=scene_id)
    infos = run(env, LogReplayPolicy())
    dev = np.array([i["distance_to_log"] for i in infos])
    drivable = _log_is_drivable(env.unwrapped.scene)
    print(f"{scene_id}: log_replay deviation max {dev.max():.3f} m, median {np.median(dev):.3f} m"
          f"{'' if drivable else ' (jittery log)'}")  # fmt: skip
    assert dev.max() <= (0.5 if drivable else 1.0)
    assert np.median(dev) <= (0.35 if drivable else 0.5)
    assert not any(c["at_fault"] for i in infos for c in i["collisions"])
    # The episode runs to the end of the log.
    assert infos[-1]["step"] == env.unwrapped.scene.num_steps - 1


def test_make_accepts_path_id_scene_and_config_forms(tmp_path):
    sid = BUNDLED[0]
    scene = load_scene(find_scene(sid))
    cfg = tmp_path / "env.yaml"
    cfg.write_text("agents: idm\nwarmup_s: 1.6\n")
    for s, c in (
        (sid, None),
        (str(find_scene(sid)), str(cfg)),
        (scene, {"agents": "log"}),
        (scene, "reactive"),
    ):
        env = gym.make(ENV_ID, scene=s, config=c)
        obs, info = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        assert obs["step"] == 16 and not info["controlled"]
    assert env.unwrapped.config.agents == "idm"  # the shipped reactive config


@pytest.mark.parametrize(
    "cfg,key",
    [
        ({"agentz": "log"}, "agentz"),
        ({"agents": "smart"}, "agents"),
        ({"truncate": {"off_road": "yes"}}, "truncate.off_road"),
        ({"tracker": {"q_lon": -1.0}}, "tracker.q_lon"),
        ({"tracker": {"horizon_x": 3}}, "tracker.horizon_x"),
        ({"idm": {"headway": "long"}}, "headway"),
        ({"cameras": {"width": 3}}, "cameras.width"),
        ({"warmup_s": 100.0}, "warmup_s"),
    ],
)
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LogReplayEnv(scene=BUNDLED[0], config=cfg)


@pytest.mark.parametrize(
    "plan",
    [
        np.full((20, 3), np.nan),
        np.zeros((0, 3)),
        np.zeros((5, 3)),
        np.zeros((20, 2)),
        np.zeros((2, 20, 3)),
        None,
    ],
    ids=["nan", "empty", "too_short", "wrong_columns", "wrong_rank", "none"],
)
def test_step_rejects_invalid_plans(plan):
    env = LogReplayEnv(scene=BUNDLED[0])
    env.reset(seed=0)
    with pytest.raises(PolicyOutputError):
        env.step(plan)
    # The env is untouched and still accepts a valid plan (any T >= 10).
    _, _, _, _, info = env.step(np.zeros((10, 3)))
    assert info["step"] == 17


def test_seeding_gives_bit_identical_rollouts():
    def rollout():
        env = gym.make(ENV_ID, scene=BUNDLED[-1], config="reactive")
        obs, _ = env.reset(seed=7)
        pol = IDMPolicy()
        pol.reset(seed=7, scene=env.unwrapped.scene)
        obs_list = []
        while True:
            obs, _, term, trunc, _ = env.step(pol.act(obs).trajectory)
            obs_list.append(obs["agents"].copy())
            if term or trunc:
                break
        return env.unwrapped.trajectory(), np.stack(obs_list)

    (a, oa), (b, ob) = rollout(), rollout()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(oa, ob)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_vector_env_steps_two_scenes(kind):
    fns = [lambda s=s: gym.make(ENV_ID, scene=s) for s in BUNDLED[:2]]
    venv = gym.vector.SyncVectorEnv(fns) if kind == "sync" else gym.vector.AsyncVectorEnv(fns)
    obs, _ = venv.reset(seed=[0, 1])
    assert obs["ego_history"].shape == (2, 16, 4) and obs["route"].shape == (2, 64, 2)
    plans = np.zeros((2, 64, 3), np.float32)
    plans[:, :, 0] = 0.5 * np.arange(1, 65)  # 5 m/s straight ahead
    for _ in range(5):
        obs, _, term, trunc, info = venv.step(plans)
    assert np.all(obs["step"] == 21) and not term.any()
    assert info["distance_to_log"].shape == (2,)
    venv.close()
    # The same as stepping each env on its own.
    env = gym.make(ENV_ID, scene=BUNDLED[1])
    env.reset(seed=1)
    for _ in range(5):
        single, *_ = env.step(plans[1])
    np.testing.assert_array_equal(single["ego_history"], obs["ego_history"][1])


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded observation Boxes are reported as warnings only
        check_env(gym.make(ENV_ID, scene=BUNDLED[0]).unwrapped)


def test_observation_frames_and_command():
    env = LogReplayEnv(scene=BUNDLED[0])
    obs, info = env.reset(seed=0)
    sc = env.scene
    k = int(obs["step"])
    np.testing.assert_allclose(obs["pose"], sc.ego.state[k, :3])
    # The last history row is "now": the rig origin with zero heading.
    np.testing.assert_allclose(obs["ego_history"][-1, :3], 0.0, atol=1e-5)
    np.testing.assert_allclose(obs["ego_history"][-1, 3], sc.ego.speed[k], rtol=1e-5)
    # One step back along the log is behind the car (negative x).
    assert obs["ego_history"][-2, 0] < 0
    # The route starts near the car and runs forward at 2 m spacing.
    route = obs["route"]
    assert np.hypot(*route[0]) < 2.0 and route[10, 0] > 10.0
    np.testing.assert_allclose(np.hypot(*np.diff(route[:20], axis=0).T), 2.0, atol=0.05)
    # Agents are the nearest first, in the rig frame.
    m = obs["agents_mask"]
    assert m.dtype == bool and m.any()
    d = np.hypot(obs["agents"][m, 0], obs["agents"][m, 1])
    assert np.all(np.diff(d) >= -1e-4)
    assert obs["command"] in (COMMAND_LEFT, COMMAND_STRAIGHT, COMMAND_RIGHT)


def test_navigation_command_rule():
    straight = np.stack([np.arange(0, 64) * 2.0, np.zeros(64)], axis=1)
    assert navigation_command(straight) == COMMAND_STRAIGHT
    left = straight.copy()
    left[3:, 1] = 3.0  # the first point >= 5 m ahead is 2.5 m... then 3 m left
    assert navigation_command(left) == COMMAND_LEFT
    assert navigation_command(left * [1, -1]) == COMMAND_RIGHT
    assert navigation_command(np.zeros((64, 2))) == COMMAND_STRAIGHT  # nothing 5 m away


def test_truncation_rules_off_by_default_and_on_when_asked():
    env = gym.make(ENV_ID, scene=BUNDLED[0])
    infos = run(env, ConstantVelocityPolicy())
    assert max(i["distance_to_log"] for i in infos) > 4.0  # it does drift away ...
    assert infos[-1]["step"] == env.unwrapped.scene.num_steps - 1  # ... but is not cut off
    env = gym.make(ENV_ID, scene=BUNDLED[0], config={"truncate": {"max_distance_to_log_m": 4.0}})
    obs, _ = env.reset(seed=0)
    pol = ConstantVelocityPolicy()
    while True:
        obs, _, term, trunc, info = env.step(pol.act(obs).trajectory)
        if term or trunc:
            break
    assert trunc and not term and info["distance_to_log"] > 4.0


def test_standing_ego_rear_ended_by_log_agent_but_not_by_reactive_agents():
    """A log-replay car drives into an ego that stopped (not at fault); IDM agents queue behind."""
    stand = np.zeros((10, 3))
    scene = BUNDLED[0]
    env = LogReplayEnv(scene=scene)
    env.reset(seed=0)
    hits = []
    for _ in range(env.scene.num_steps - 1 - env.start_step):
        hits += env.step(stand)[4]["collisions"]
    assert hits and all(c["type"] == "stopped_ego" and not c["at_fault"] for c in hits)

    env = LogReplayEnv(scene=scene, config="reactive")
    env.reset(seed=0)
    assert len(env.agents.ids) > 0
    hit_id = hits[0]["agent_index"]
    assert env.agents.is_idm[hit_id]  # the car that hit us is reactive now
    v = env.scene.ego.length, env.scene.ego.width, env.scene.ego.rear_axle_to_center
    for _ in range(env.scene.num_steps - 1 - env.start_step):
        info = env.step(stand)[4]
        assert not info["collisions"]
        k = info["step"]
        ego = ego_corners_from_rear_axle(env.ego_traj[k], *v)
        a = env.agent_traj[hit_id, k]
        from alpasim_policy.scenes.geometry import box_corners

        c = box_corners(a[0], a[1], a[2], *env.scene.agents.size[hit_id])
        assert not boxes_overlap(ego, c)
    # Where the logged car was inside the ego's box, the reactive one is somewhere else.
    k_hit = int(np.flatnonzero(env.agent_valid_traj[hit_id])[0])
    assert k_hit <= k
    assert np.any(np.abs(env.agent_traj[hit_id, env.start_step + 1 :, :2]
                         - env.scene.agents.state[hit_id, env.start_step + 1 :, :2]) > 0.5)  # fmt: skip


def _with_stopped_car(scene, ahead_m):
    """The scene plus a parked car on the route ``ahead_m`` metres in front of the ego at t0."""
    route = Polyline(scene.route.polyline)
    t0 = scene.metadata.t0_index
    s0 = route.project(scene.ego.state[t0 : t0 + 1, :2])[0][0]
    xy, h = route.interpolate(s0 + ahead_m)
    a = scene.agents
    T = scene.num_steps
    st = np.zeros((1, T, 5))
    st[0, :, 0], st[0, :, 1], st[0, :, 2] = xy[0, 0], xy[0, 1], h[0]
    agents = dataclasses.replace(
        a,
        ids=[*a.ids, "stopped_lead"],
        types=np.append(a.types, np.int8(AgentType.VEHICLE)).astype(np.int8),
        size=np.concatenate([a.size, [[4.5, 1.9]]]),
        state=np.concatenate([a.state, st]),
        valid=np.concatenate([a.valid, np.ones((1, T), bool)]),
    )
    return dataclasses.replace(scene, agents=agents), s0 + ahead_m


def test_idm_policy_stops_behind_a_stopped_lead():
    scene = load_scene(find_scene("av2s-7fab2350-w01"))
    scene, s_lead = _with_stopped_car(scene, 25.0)
    env = LogReplayEnv(scene=scene)
    infos = run(env, IDMPolicy())
    assert not any(i["collisions"] for i in infos)
    route = Polyline(scene.route.polyline)
    s_ego = route.project(env.ego_traj[-1:, :2])[0][0]
    front = s_ego + scene.ego.rear_axle_to_center + scene.ego.length / 2
    gap = s_lead - 4.5 / 2 - front
    assert np.hypot(*env.ego_traj[-1, 3:5]) < 0.1  # standing
    assert 0.5 < gap < 5.0, gap  # close behind the lead (IDM gap 2 m, plus the conflict margin)


def test_render_and_bev_and_cameras():
    env = gym.make(ENV_ID, scene=BUNDLED[0], render_mode="rgb_array",
                   config={"bev": {"enabled": True, "width": 128, "height": 96},
                           "cameras": {"enabled": True, "width": 160, "height": 90}})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(np.zeros((10, 3)))
    assert obs["bev"].shape == (96, 128, 3) and obs["bev"].dtype == np.uint8
    assert len(obs["cameras"]) >= 1 and all(im.shape[:2] == (90, 160) for im in obs["cameras"].values())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.std() > 0


def test_reactive_agent_stops_behind_a_parked_car_in_its_lane():
    """An IDM agent at > 7 m/s with a free road meets a parked car placed 30 m ahead on its path."""
    scene = load_scene(find_scene("av2s-7fab2350-w01"))
    env = LogReplayEnv(scene=scene, config="reactive")
    env.reset(seed=0)
    ag = env.agents
    free, _ = ag._leads(env.start_step, np.full((4, 2), 1e6), 0.0)  # nobody ahead of it yet
    j = int(np.flatnonzero((ag.v > 7.0) & (ag.path_len > 80.0) & np.isinf(free))[0])
    who = int(ag.ids[j])
    k = int(30.0 / 1.0)  # path points are 1 m apart
    xy, h = ag.path_xy[j, k], ag.path_h[j, k]
    a = scene.agents
    T = scene.num_steps
    st = np.zeros((1, T, 5))
    st[0, :, 0], st[0, :, 1], st[0, :, 2] = xy[0], xy[1], h
    agents = dataclasses.replace(
        a, ids=[*a.ids, "parked"], types=np.append(a.types, np.int8(AgentType.VEHICLE)).astype(np.int8),
        size=np.concatenate([a.size, [[4.5, 1.9]]]), state=np.concatenate([a.state, st]),
        valid=np.concatenate([a.valid, np.ones((1, T), bool)]),
    )  # fmt: skip
    env = LogReplayEnv(scene=dataclasses.replace(scene, agents=agents), config="reactive")
    obs, _ = env.reset(seed=0)
    assert env.agents.ids[j] == who and not env.agents.is_idm[-1]  # parked car: log replay
    pol = LogReplayPolicy()
    pol.reset(scene=env.scene)
    size = env.scene.agents.size
    from alpasim_policy.scenes.geometry import box_corners

    parked = box_corners(xy[0], xy[1], h, 4.5, 1.9)
    while True:
        obs, _, term, trunc, _ = env.step(pol.act(obs).trajectory)
        s = env.agent_traj[who, int(obs["step"])]
        assert not boxes_overlap(box_corners(s[0], s[1], s[2], *size[who]), parked)
        if term or trunc:
            break
    gap = np.hypot(*(s[:2] - xy)) - 0.5 * (size[who, 0] + 4.5)
    assert np.hypot(s[3], s[4]) < 0.5  # stopped ...
    assert 0.5 < gap < 4.0, gap  # ... about the IDM minimum gap (2 m) behind it


def test_config_is_frozen_typed_and_errors_name_the_file_and_field(tmp_path):
    from alpasim_policy.sim.config import DEFAULTS, EnvConfig, load_env_config, tracker_params
    from alpasim_policy.sim.tracker import ENV_TRACKER

    cfg = load_env_config("reactive")
    assert isinstance(cfg, EnvConfig) and cfg.agents == "idm" and cfg.idm.headway == 1.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agents = "log"  # type: ignore[misc]
    # the shipped default file states the defaults; the plain mapping round-trips
    assert load_env_config("default") == DEFAULTS
    assert load_env_config(cfg.to_dict()) == cfg
    assert tracker_params(DEFAULTS) == ENV_TRACKER
    # ints are coerced to floats, a tuple field takes a YAML list
    c = load_env_config({"tracker": {"q_lon": 3, "q_lat": [1, 2, 3]}})
    assert c.tracker.q_lon == 3.0 and isinstance(c.tracker.q_lon, float) and c.tracker.q_lat == (1.0, 2.0, 3.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracker:\n  q_lat: [1.0, 2.0]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'tracker\.q_lat' must be a list of 3 values"):
        load_env_config(bad)
    bad.write_text("bev:\n  enabled: true\n  widht: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'bev'.*unknown field.*widht"):
        load_env_config(bad)


def test_camera_observation_shows_a_stopped_leads_brake_lamps():
    """US-101 crawl: 5.2 s in, the logged lead stands 2-3 m ahead; its lamps light in the tele
    camera the policy sees; 2.7 s in, it rolls at 1.6 m/s and no lamp in that view is lit."""
    from alpasim_policy.render.cameras import CameraStyle

    on = np.array(CameraStyle().colors["brake_lamp_on"], dtype=np.uint8)
    lit_pixels = []
    for warmup in (5.2, 2.7):  # lead standing / lead rolling at 1.6 m/s
        env = gym.make(ENV_ID, scene="cr-USA_US101-4_1_T-1-ego442-w01",
                       config={"warmup_s": warmup, "cameras": {"enabled": True, "width": 64, "height": 64}})  # fmt: skip
        obs, _ = env.reset(seed=0)
        lit_pixels.append(int((obs["cameras"]["camera_front_tele_30fov"] == on).all(-1).sum()))
    assert lit_pixels[0] > 5 and lit_pixels[1] == 0, lit_pixels
    # cameras.brake_lamps: false draws none (and is part of the recorded env config)
    env = gym.make(ENV_ID, scene="cr-USA_US101-4_1_T-1-ego442-w01",
                   config={"warmup_s": 5.2, "cameras": {"enabled": True, "width": 64, "height": 64, "brake_lamps": False}})  # fmt: skip
    obs, _ = env.reset(seed=0)
    assert not (obs["cameras"]["camera_front_tele_30fov"] == on).all(-1).any()
    assert env.unwrapped.config.to_dict()["cameras"]["brake_lamps"] is False
