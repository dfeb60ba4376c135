"""Sample selection: first / medoid / scored, and the proof that scored never reads the log's future."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.selection import (
    HISTORY,
    SCORING_HORIZON_STEPS,
    SampleSelector,
    medoid_index,
    pairwise_ade,
    parse_select,
    t0_scene,
)
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.geometry import rig_to_scene_poses as rig_to_scene
from alpasim_policy.scenes.geometry import scene_to_rig_poses as scene_to_rig
from alpasim_policy.scenes.suite import find_scene


def fan(k: int = 5, t: int = 64, offsets=(0.0, 0.3, -0.2, 0.1, 4.0)) -> np.ndarray:
    """K straight 10 m/s plans drifting sideways by ``offsets[k]`` metres per 6.4 s."""
    tt = 0.1 * np.arange(1, t + 1)
    return np.stack([np.stack([10 * tt, offsets[i] * tt / tt[-1], np.zeros(t)], axis=1) for i in range(k)])


def test_pairwise_ade_matches_brute_force():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(6, 12, 3))
    d = pairwise_ade(s)
    for i in range(6):
        for j in range(6):
            want = np.mean([np.hypot(*(s[i, t, :2] - s[j, t, :2])) for t in range(12)])
            assert d[i, j] == pytest.approx(want)


def test_medoid_is_the_consensus_not_the_outlier():
    s = fan()
    # summed lateral spread: 0.1 is closest to {0, 0.3, -0.2} and the 4.0 outlier pulls nothing far
    want = int(
        np.argmin([sum(abs(a - b) for b in (0.0, 0.3, -0.2, 0.1, 4.0)) for a in (0.0, 0.3, -0.2, 0.1, 4.0)])
    )
    assert medoid_index(s) == want == 3
    sel = SampleSelector("medoid").select(s)
    assert sel.index == 3 and sel.scores.shape == (5,) and np.argmax(sel.scores) == 3
    assert SampleSelector("first").select(s).index == 0


def test_single_sample_and_bad_shapes():
    assert SampleSelector("medoid").select(fan(1)).index == 0
    with pytest.raises(ConfigError, match="samples"):
        SampleSelector("medoid").select(np.zeros((3, 10)))


@pytest.mark.parametrize("bad", ["best", "", "scored2"])
def test_unknown_method_names_the_option(bad):
    with pytest.raises(ConfigError, match="'select'"):
        parse_select(bad)
    with pytest.raises(ConfigError, match="'select'"):
        SampleSelector(bad)


def test_scored_needs_a_scene():
    with pytest.raises(ConfigError, match="scene"):
        SampleSelector("scored").reset(None)


# ----------------------------------------------------------------------------- scored, on real scenes


def obs_from_log(scene, step: int) -> dict:
    """The observation the env gives when the ego is exactly on its log at ``step`` (past and present only)."""
    st = scene.ego.state
    pose = st[step, :3].copy()
    hist_idx = np.clip(np.arange(step - 15, step + 1), 0, None)
    h = scene_to_rig(st[hist_idx, :3], pose)
    spd = np.hypot(st[hist_idx, 3], st[hist_idx, 4])
    a = scene.agents
    idx = np.flatnonzero(a.valid[:, step])
    idx = idx[np.argsort(np.hypot(*(a.state[idx, step, :2] - pose[:2]).T))][:64]
    agents = np.zeros((64, 8), np.float32)
    mask = np.zeros(64, bool)
    s = a.state[idx, step]
    c, sn = np.cos(pose[2]), np.sin(pose[2])
    agents[: len(idx), :3] = scene_to_rig(s[:, :3], pose)
    agents[: len(idx), 3] = c * s[:, 3] + sn * s[:, 4]
    agents[: len(idx), 4] = -sn * s[:, 3] + c * s[:, 4]
    agents[: len(idx), 5:7] = a.size[idx]
    agents[: len(idx), 7] = a.types[idx]
    mask[: len(idx)] = True
    return {
        "ego_history": np.concatenate([h, spd[:, None]], axis=1).astype(np.float32),
        "speed": np.float32(spd[-1]),
        "acceleration": np.float32(0.0),
        "pose": pose,
        "step": np.int64(step),
        "agents": agents,
        "agents_mask": mask,
        "command": np.int64(1),
    }


def candidate_plans(scene, step: int, T: int = 64) -> np.ndarray:
    """Four rig-frame plans: a hard left arc, constant velocity, the logged future, a 3 m/s^2 stop."""
    st = scene.ego.state
    log = scene_to_rig(st[np.clip(np.arange(step + 1, step + T + 1), 0, len(st) - 1), :3], st[step, :3])
    v = float(np.hypot(*st[step, 3:5]))
    t = 0.1 * np.arange(1, T + 1)
    s, kappa = v * t, 0.08
    left = np.stack([np.sin(kappa * s) / kappa, (1 - np.cos(kappa * s)) / kappa, kappa * s], 1)
    cv = np.stack([s, 0 * t, 0 * t], 1)
    stop = np.stack([np.minimum(v * t - 1.5 * t**2, v**2 / 6.0), 0 * t, 0 * t], 1)
    return np.stack([left, cv, log, stop])


class FutureGuard:
    """Wraps a time-indexed array; any read that could reach a step after ``now`` raises.

    Only basic indexing whose time component is an int <= now or a slice ending at <= now + 1
    is allowed; ``np.asarray(guard)`` (a whole-array read) raises too.
    """

    def __init__(self, arr: np.ndarray, now: int, axis: int, name: str):
        self.arr, self.now, self.axis, self.name = arr, now, axis, name
        self.shape, self.ndim, self.dtype = arr.shape, arr.ndim, arr.dtype
        self.reads = 0

    def __array__(self, *args, **kwargs):
        raise AssertionError(f"{self.name}: whole-array read (would include the future)")

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        k = key[self.axis] if self.axis < len(key) else slice(None)
        ok = (isinstance(k, int | np.integer) and 0 <= k <= self.now) or (
            isinstance(k, slice) and k.stop is not None and 0 <= k.stop <= self.now + 1 and (k.step or 1) > 0
        )
        if not ok:
            raise AssertionError(f"{self.name}: read of {key!r} reaches past step {self.now}")
        self.reads += 1
        return self.arr[key]


REAL_SCENES = ["av2s-7fab2350-w00", "cr-USA_US101-4_1_T-1-ego427"]


@pytest.fixture(scope="module", params=REAL_SCENES)
def real(request):
    scene = load_scene(find_scene(request.param))
    step = scene.metadata.t0_index + 5
    return scene, step


def test_t0_view_is_a_valid_scene_with_only_present_knowledge(real):
    scene, step = real
    ob = obs_from_log(scene, step)
    view = t0_scene(scene, ob)
    view.validate()
    assert view.metadata.t0_index == HISTORY and view.num_steps == HISTORY + SCORING_HORIZON_STEPS + 1
    # the ego at "now" is where the observation says; its past is the observed history
    np.testing.assert_allclose(view.ego.state[HISTORY, :2], ob["pose"][:2], atol=1e-6)
    np.testing.assert_allclose(view.ego.state[0, :2], rig_to_scene(ob["ego_history"][:1, :3], ob["pose"])[0, :2],
                               atol=1e-5)  # fmt: skip
    # agents: the observed ones, at their logged positions now, then exactly constant velocity
    n = int(ob["agents_mask"].sum())
    assert len(view.agents) == n and not view.agents.valid[:, :HISTORY].any()
    idx = np.flatnonzero(scene.agents.valid[:, step])
    now_xy = np.sort(scene.agents.state[idx, step, 0])[:n] if n == len(idx) else None
    if now_xy is not None:
        np.testing.assert_allclose(np.sort(view.agents.state[:, HISTORY, 0]), now_xy, atol=1e-4)
    later = view.agents.state[:, HISTORY + 10]
    now = view.agents.state[:, HISTORY]
    np.testing.assert_allclose(later[:, :2], now[:, :2] + 1.0 * now[:, 3:5], atol=1e-6)
    # lights: held at their state now
    if len(scene.map.traffic_lights):
        assert (view.map.light_states[:, HISTORY:] == scene.map.light_states[:, step : step + 1]).all()


def test_scored_picks_the_best_epdms_and_rejects_leaving_the_road(real):
    scene, step = real
    sel = SampleSelector("scored")
    sel.reset(scene)
    plans = candidate_plans(scene, step)
    res = sel.select(plans, obs_from_log(scene, step))
    assert res.scores.shape == (4,) and np.all((res.scores >= 0) & (res.scores <= 1))
    assert res.scores[res.index] == res.scores.max() and res.scores.max() > 0.5
    assert res.scores[0] == 0.0 and res.index != 0  # the hard left arc leaves the drivable area


def _alter_future(scene, step: int):
    """A copy whose future (after ``step``) is rewritten: agents teleported onto the ego's logged path,
    every light red, the ego log's future scrambled. Nothing up to ``step`` changes."""
    alt = copy.deepcopy(scene)
    fut = slice(step + 1, None)
    n_fut = scene.num_steps - step - 1
    ego_future = scene.ego.state[fut]
    rng = np.random.default_rng(7)
    for i in range(len(alt.agents)):
        alt.agents.state[i, fut, :2] = ego_future[:, :2] + rng.normal(scale=0.2, size=(n_fut, 2))
        alt.agents.state[i, fut, 2] = ego_future[:, 2]
        alt.agents.valid[i, fut] = True
    alt.map.light_states[:, fut] = 1  # LightState.RED
    alt.ego.state[fut, :2] += rng.normal(scale=30.0, size=(n_fut, 2))
    return alt


@pytest.mark.parametrize("use_observed_agents", [True, False])
def test_scored_selection_is_blind_to_the_future(real, use_observed_agents):
    scene, step = real
    plans = candidate_plans(scene, step)
    ob = obs_from_log(scene, step)

    def run(sc):
        sel = SampleSelector("scored", use_observed_agents=use_observed_agents)
        sel.reset(sc)
        return sel.select(plans, ob)

    base = run(scene)
    alt_scene = _alter_future(scene, step)
    altered = run(alt_scene)
    assert altered.index == base.index
    np.testing.assert_array_equal(altered.scores, base.scores)

    # control: the alteration is drastic -- a scorer that reads the log's future sees collisions
    from alpasim_policy.scoring.openloop import score_plans
    from alpasim_policy.scoring.world import ScoringWorld

    pose = ob["pose"]
    log_plan = rig_to_scene(plans[2], pose)[None]
    start = scene.ego.state[step]
    honest = score_plans(
        ScoringWorld.from_scene(scene), log_plan, step, start_state=start, human_filter=False
    )
    cheat = score_plans(
        ScoringWorld.from_scene(alt_scene), log_plan, step, start_state=start, human_filter=False
    )
    assert cheat.metrics["NC"][0] < honest.metrics["NC"][0] or cheat.epdms[0] < honest.epdms[0]

    # and a guard: every time-indexed array of the scene raises on any read past ``step``
    guarded = copy.deepcopy(scene)
    guards = [
        FutureGuard(scene.agents.state, step, 1, "agents/state"),
        FutureGuard(scene.agents.valid, step, 1, "agents/valid"),
        FutureGuard(scene.map.light_states, step, 1, "traffic_lights/states"),
        FutureGuard(scene.ego.state, step, 0, "ego/state"),
        FutureGuard(scene.ego.valid, step, 0, "ego/valid"),
        FutureGuard(scene.timestamps, step, 0, "timestamps"),
    ]
    guarded.agents.state, guarded.agents.valid, guarded.map.light_states = guards[:3]
    guarded.ego.state, guarded.ego.valid, guarded.timestamps = guards[3:]
    res = run(guarded)
    assert res.index == base.index
    np.testing.assert_array_equal(res.scores, base.scores)
    if not use_observed_agents:
        assert guards[0].reads >= 1  # the scene path really went through the guard


@pytest.mark.parametrize("scene_id", ["av2s-7fab2350-w00", "cr-DEU_A9-3_1_T-1-ego3536"])
def test_scored_selection_sees_the_agents_present_now(scene_id):
    """A car stopped 3 m ahead of the ego's bumper on the logged path, observed now, sinks that plan."""
    scene = load_scene(find_scene(scene_id))
    step = scene.metadata.t0_index + 5
    plans = candidate_plans(scene, step)
    ob = obs_from_log(scene, step)
    sel = SampleSelector("scored")
    sel.reset(scene)
    base = sel.select(plans, ob)
    assert base.scores[2] > 0.5  # the human's own future is a good plan when nothing blocks it
    log = plans[2]
    arc = np.cumsum(np.hypot(*np.diff(log[:, :2], axis=0, prepend=[[0, 0]]).T))
    gap = scene.ego.rear_axle_to_center + scene.ego.length / 2 + 4.5 / 2 + 3.0
    assert arc[39] > gap + 1.0  # the logged plan would reach it within the 4 s scored
    row = int(np.argmax(arc >= gap))
    agents = ob["agents"].copy()
    mask = ob["agents_mask"].copy()
    slot = int(np.flatnonzero(~mask)[0]) if (~mask).any() else 63
    agents[slot] = [log[row, 0], log[row, 1], log[row, 2], 0.0, 0.0, 4.5, 2.0, 0]
    mask[slot] = True
    res = sel.select(plans, {**ob, "agents": agents, "agents_mask": mask})
    assert res.scores[2] == 0.0  # at-fault collision with a stopped car: NC = 0
    assert res.index != 2


def _speed_profile(v0: float, v_end: float, t: int = 64) -> np.ndarray:
    """A straight rig-frame plan whose speed goes linearly from v0 to v_end over 3 s, then holds."""
    speeds = np.interp(0.1 * np.arange(1, t + 1), [0.0, 3.0], [v0, v_end])
    return np.stack([np.cumsum(speeds) * 0.1, np.zeros(t), np.zeros(t)], axis=1)


def test_consistent_picks_the_first_sample_that_does_what_the_coc_says():
    from alpasim_policy.scoring.reasoning import classify_trajectory

    # samples 0 and 1 keep 10 m/s, 2 decelerates to 4 m/s, 3 stops, 4 decelerates too
    s = np.stack([_speed_profile(10, 10), _speed_profile(10, 10.2), _speed_profile(10, 4),
                  _speed_profile(10, 0), _speed_profile(10, 5)])  # fmt: skip
    said = [classify_trajectory(x, 10.0).phrase() for x in s]
    assert said[0] == said[1] != said[2] == said[4] != said[3]
    slow = f"{said[2]} because the lead vehicle 12 m ahead is slowing."
    sel = SampleSelector("consistent").select(s, None, [slow], 10.0)
    assert sel.index == 2 and sel.method == "consistent" and list(sel.scores) == [0, 0, 1, 0, 1]
    stop = f"{said[3]} because the light ahead is red with the stop line 20 m away."
    assert SampleSelector("consistent").select(s, None, [stop], 10.0).index == 3
    # no sample agrees, or the text states no meta-action: the first, as with select=first
    turn = "Keep speed and turn left because the route turns left."
    assert SampleSelector("consistent").select(s, None, [turn], 10.0).index == 0
    assert SampleSelector("consistent").select(s, None, ["<garbled>"], 10.0).index == 0
    # multi reasoning: each sample is judged against its own text
    own = [stop, stop, stop, slow, slow]
    assert SampleSelector("consistent").select(s, None, own, 10.0).index == 4
    with pytest.raises(ConfigError, match="needs the CoC text"):
        SampleSelector("consistent").select(s, None, None, 10.0)
    with pytest.raises(ConfigError, match="2 CoC texts for 5 samples"):
        SampleSelector("consistent").select(s, None, [slow, stop], 10.0)
