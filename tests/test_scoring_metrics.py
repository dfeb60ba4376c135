"""Each NAVSIM sub-metric on constructed geometry, with the expected value derived by hand.

Road (see tests/scoring_synthetic.py): ego lane y in [-1.75, 1.75] (+x), left lane
y in [1.75, 5.25] (+x), oncoming lane y in [5.25, 8.75] (-x); intersection x in [150, 170].
Ego box 4.8 x 2.0 m, rear axle 1.4 m behind the centre: front bumper at rear axle x + 3.8 m.
Scored windows start at scene step 20 (t = 2.0 s) with the rear axle at x = 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from scoring_synthetic import AgentSpec, straight_road_scene, straight_states

from alpasim_policy.scenes.format import DT, AgentType
from alpasim_policy.scoring import pdms as P
from alpasim_policy.scoring.metrics import comfort as C
from alpasim_policy.scoring.metrics._common import EgoGeometry, agent_window
from alpasim_policy.scoring.metrics.dac import drivable_area_compliance
from alpasim_policy.scoring.metrics.ddc import driving_direction_compliance
from alpasim_policy.scoring.metrics.ec import extended_comfort
from alpasim_policy.scoring.metrics.ep import ego_progress, raw_progress
from alpasim_policy.scoring.metrics.lk import lane_keeping
from alpasim_policy.scoring.metrics.nc import first_contacts, no_at_fault_collisions
from alpasim_policy.scoring.metrics.tlc import traffic_light_compliance
from alpasim_policy.scoring.metrics.ttc import time_to_collision
from alpasim_policy.scoring.openloop import score_states
from alpasim_policy.scoring.world import ScoringWorld
from alpasim_policy.sim.collision import CollisionType

T0 = 20
S = 41


def world_with(*agents: AgentSpec, **kw) -> ScoringWorld:
    return ScoringWorld.from_scene(straight_road_scene(agents=list(agents), t0_index=T0, **kw))


def at_t0(x: float, vx: float) -> float:
    """Scene-step-0 x of an agent that is at ``x`` at step T0 moving at ``vx``."""
    return x - vx * T0 * DT


def nc_ttc(world: ScoringWorld, states: np.ndarray):
    ego = EgoGeometry(states, world)
    win = agent_window(world, T0, states.shape[1])
    return no_at_fault_collisions(ego, win), time_to_collision(ego, win), first_contacts(ego, win)


# ------------------------------------------------------------------ NC


def test_faster_agent_hitting_ego_from_behind_is_not_at_fault():
    # ego 5 m/s; agent centre 8 m behind the rear axle closing at 10 m/s (15 m/s), then it stays
    # bumper to bumper (0.05 m overlap). Contact when the gap 8 - 2.25 - 1.0 = 4.75 m is closed:
    # t = 0.475 s -> first overlapping state at 0.5 s.
    t = np.arange(90) * DT - T0 * DT  # time since t0
    rel = np.minimum(-8.0 + 10.0 * np.maximum(t, 0.0), -3.2)
    states = np.zeros((90, 5))
    states[:, 0] = 5.0 * t + rel
    states[:, 3] = np.where(rel < -3.2, 15.0, 5.0)
    w = world_with(AgentSpec(0.0, 0.0, states=states))
    nc, ttc, c = nc_ttc(w, straight_states(1, S, 5.0))
    assert len(c.b) == 1 and c.ctype[0] == CollisionType.ACTIVE_REAR
    assert c.s[0] == 5
    assert nc[0] == 1.0 and ttc[0] == 1.0  # behind, ego in one lane: TTC ignores it too


def test_ttc_judges_a_future_agent_position_from_the_current_rear_axle():
    # NAVSIM's rule, kept: a log agent that drives *through* the ego from behind is, 0.6 s later,
    # ahead of the ego's current rear axle, so TTC fails although NC (rear hit) passes.
    w = world_with(AgentSpec(at_t0(-8.0, 15.0), 0.0, vx=15.0))
    nc, ttc, _ = nc_ttc(w, straight_states(1, S, 5.0))
    assert nc[0] == 1.0 and ttc[0] == 0.0


def test_ego_front_bumper_hitting_stopped_car_is_at_fault():
    # stopped car centre at x = 30: its rear at 27.75; front bumper 3.8 + 10 t reaches it at t = 2.395 s
    w = world_with(AgentSpec(30.0, 0.0))
    nc, ttc, c = nc_ttc(w, straight_states(1, S, 10.0))
    assert c.ctype[0] == CollisionType.STOPPED_TRACK and c.s[0] == 24
    assert nc[0] == 0.0 and ttc[0] == 0.0


def test_ego_front_bumper_hitting_slower_moving_car_is_at_fault():
    w = world_with(AgentSpec(at_t0(20.0, 3.0), 0.0, vx=3.0))
    nc, _, c = nc_ttc(w, straight_states(1, S, 10.0))
    assert c.ctype[0] == CollisionType.ACTIVE_FRONT and nc[0] == 0.0


def test_static_object_costs_half():
    w = world_with(AgentSpec(30.0, 0.0, length=0.5, width=0.5, type=AgentType.STATIC))
    nc, _, _ = nc_ttc(w, straight_states(1, S, 10.0))
    assert nc[0] == 0.5


def _side_swipe(ego_y: float) -> tuple[float, float, object]:
    # agent in the left lane, level with the ego centre, same speed, drifting right at 1 m/s
    x_c = 1.4
    w = world_with(AgentSpec(at_t0(x_c, 10.0), 3.5 + 1.0 * T0 * DT, vx=10.0, vy=-1.0, heading=0.0))
    return nc_ttc(w, straight_states(1, S, 10.0, y=ego_y))


def test_lateral_hit_in_own_lane_is_not_at_fault():
    nc, ttc, c = _side_swipe(0.0)  # ego y in [-1, 1]: one lane
    assert c.ctype[0] == CollisionType.ACTIVE_LATERAL
    assert nc[0] == 1.0  # lateral, ego in one lane and on the road: not at fault
    # TTC (NAVSIM's rule): the projected ego meets the merging car 0.9 s ahead, where the car's
    # centre is within 30 deg of the ego's current heading -> "ahead" -> TTC fails
    assert ttc[0] == 0.0


def test_lateral_hit_while_straddling_lanes_is_at_fault():
    nc, ttc, c = _side_swipe(1.0)  # ego y in [0, 2]: corners in two lanes
    assert c.ctype[0] == CollisionType.ACTIVE_LATERAL
    assert nc[0] == 0.0 and ttc[0] == 0.0  # several lanes and agent not behind


def test_stopped_ego_is_never_at_fault():
    w = world_with(AgentSpec(at_t0(-8.0, 5.0), 0.0, vx=5.0))
    nc, _, c = nc_ttc(w, straight_states(1, S, 0.0))
    assert c.ctype[0] == CollisionType.STOPPED_EGO and nc[0] == 1.0


def test_nc_is_batched_and_independent_per_proposal():
    w = world_with(AgentSpec(30.0, 0.0))
    nc, _, _ = nc_ttc(w, straight_states(3, S, [10.0, 5.0, 10.0], y=[0.0, 0.0, -20.0]))
    # 5 m/s: front 3.8 + 20 = 23.8 < 27.75, no contact; y = -20: far from the car
    assert nc.tolist() == [0.0, 1.0, 1.0]


# ------------------------------------------------------------------ TTC


@pytest.mark.parametrize("car_rear, expect_ttc", [(21.0, 0.0), (23.0, 1.0)])
def test_ttc_braking_to_a_stop_behind_a_car(car_rear, expect_ttc):
    # 10 m/s, -3 m/s^2 -> stops after 16.67 m: front at 20.47 (no contact either way);
    # front + 0.9 s * v peaks at 12.8 + 7.3 t - 1.5 t^2 = 21.68 m (t = 2.43 s): reaches 21, not 23
    t = np.arange(S) * DT
    v = np.maximum(10.0 - 3.0 * t, 0.0)
    x = np.where(t < 10 / 3, 10 * t - 1.5 * t**2, 100 / 6)
    st = np.zeros((1, S, 7))
    st[0, :, 0], st[0, :, 3], st[0, :, 5] = x, v, np.where(v > 0, -3.0, 0.0)
    w = world_with(AgentSpec(car_rear + 2.25, 0.0))
    nc, ttc, _ = nc_ttc(w, st)
    assert nc[0] == 1.0 and ttc[0] == expect_ttc


# ------------------------------------------------------------------ DAC / DDC


def test_dac_off_road():
    w = world_with()
    ego = EgoGeometry(straight_states(3, S, 10.0, y=[0.0, -0.5, -2.0]), w)
    # y = -0.5: right edge at -1.5, on the road; y = -2: right edge at -3 < -1.75
    assert drivable_area_compliance(ego).tolist() == [1.0, 1.0, 0.0]


def test_ddc_oncoming_progress_over_one_second():
    w = world_with()
    # in the oncoming lane (y = 7) driving +x; a 1 s window sums 11 steps of 0.1 s
    ego = EgoGeometry(straight_states(4, S, [10.0, 3.0, 1.5, 10.0], y=[7.0, 7.0, 7.0, 3.5]), w)
    # 11 m -> 0; 3.3 m -> 1/2; 1.65 m -> 1; the same-direction left lane is on-route -> 1
    assert driving_direction_compliance(ego).tolist() == [0.0, 0.5, 1.0, 1.0]


# ------------------------------------------------------------------ TLC


def test_red_light_crossing_fails_tlc():
    w = world_with(red_light=(30.0, T0, 80))
    win = agent_window(w, T0, S)
    ego = EgoGeometry(straight_states(2, S, [10.0, 5.0]), w)
    # 10 m/s: front bumper passes x = 30 at 2.6 s; 5 m/s: front reaches 23.8 m, stops short
    assert traffic_light_compliance(ego, win).tolist() == [0.0, 1.0]
    green = world_with(red_light=(30.0, 0, 5))
    assert traffic_light_compliance(ego, agent_window(green, T0, S)).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ LK


def _offset_states(n_offset: int, x0: float = 0.0, speed: float = 10.0, dy: float = 0.55) -> np.ndarray:
    st = straight_states(1, S, speed, x0=x0)
    st[0, 5 : 5 + n_offset, 1] = dy
    return st


@pytest.mark.parametrize("n_offset, expect", [(21, 0.0), (19, 1.0)])
def test_lane_keeping_offset_duration(n_offset, expect):
    w = world_with()
    assert lane_keeping(EgoGeometry(_offset_states(n_offset), w))[0] == expect


def test_lane_keeping_is_skipped_in_intersection():
    w = world_with()  # intersection x in [150, 170]; centres 149 + 1.4 + 0.8 k stay inside up to k = 24
    st = _offset_states(21, x0=149.0, speed=8.0)
    ego = EgoGeometry(st, w)
    assert ego.areas["intersection"][0, 1:25].all()
    assert lane_keeping(ego)[0] == 1.0
    assert lane_keeping(EgoGeometry(_offset_states(21, x0=0.0, speed=8.0), w))[0] == 0.0


# ------------------------------------------------------------------ comfort


def _jerk_states(jerk: float, n: int = 7) -> np.ndarray:
    # 0.6 s of braking easing off at a constant jerk: a = -3.5 + jerk * t stays negative and inside
    # (-4.05, 2.40), so only the jerk bounds are at stake (|a| falls at 'jerk' m/s^3 < 8.37)
    t = np.arange(n) * DT
    a = -3.5 + jerk * t
    st = np.zeros((1, n, 7))
    st[0, :, 3] = 10.0 + np.cumsum(a) * DT
    st[0, :, 5] = a
    return st


def test_longitudinal_jerk_of_5_fails_comfort_and_3_passes():
    bad = C.comfort_bounds(_jerk_states(5.0))
    assert not bad["lon_jerk"][0]
    assert all(bad[k][0] for k in C.BOUND_NAMES if k != "lon_jerk")
    assert C.comfort(_jerk_states(5.0))[0] == 0.0
    assert C.comfort(_jerk_states(3.0))[0] == 1.0


def test_comfort_bounds_acceleration_and_yaw_rate():
    st = straight_states(3, S, 10.0)
    st[0, :, 5] = -4.2  # braking harder than -4.05
    h = 1.0 * np.arange(S) * DT  # 1.0 rad/s yaw rate > 0.95
    st[1, :, 2] = h
    st[1, :, 3], st[1, :, 4] = 10 * np.cos(h), 10 * np.sin(h)
    assert C.comfort(st).tolist() == [0.0, 0.0, 1.0]
    assert not C.comfort_bounds(st)["lon_accel"][0] and not C.comfort_bounds(st)["yaw_rate"][1]


def test_history_comfort_sees_the_past():
    st = straight_states(1, S, 10.0)
    hist = straight_states(1, 15, 10.0)[0]
    assert C.history_comfort(st, hist)[0] == 1.0
    hist[:, 5] = -6.0  # the car was braking hard just before t0
    assert C.history_comfort(st, hist)[0] == 0.0 and C.comfort(st)[0] == 1.0


# ------------------------------------------------------------------ EC


def test_extended_comfort_consecutive_plans():
    a = straight_states(1, S, 10.0)
    b = a.copy()
    assert extended_comfort(a, b)[0] == 1.0
    b[0, :, 5] = 1.0  # previous plan accelerated at 1 m/s^2: RMS 1.0 > 0.7
    assert extended_comfort(a, b)[0] == 0.0
    b[0, :, 5] = 0.5
    assert extended_comfort(a, b)[0] == 1.0
    assert extended_comfort(a, None)[0] == 1.0


# ------------------------------------------------------------------ EP


def test_ep_normalisation():
    w = world_with()  # reference = the human log at 10 m/s: 40 m in 4 s
    ego = EgoGeometry(straight_states(4, S, [5.0, 12.0, 1.0, 0.0]), w)
    prog = raw_progress(w, ego.center)
    assert prog == pytest.approx([20.0, 48.0, 4.0, 0.0])
    ep = ego_progress(prog, np.ones(4), 40.0, 1.0)
    assert ep == pytest.approx([0.5, 1.0, 0.1, 0.0])
    # a reference that broke a multiplier does not count; below 5 m everything scores 1
    assert ego_progress(prog, np.ones(4), 40.0, 0.0) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert ego_progress(np.array([4.0, 2.0]), np.ones(2), 3.0, 1.0) == pytest.approx([1.0, 1.0])


def test_score_states_end_to_end_with_human_reference():
    w = world_with()
    r = score_states(w, straight_states(2, S, [10.0, 5.0]), T0)
    assert r.metrics["EP"] == pytest.approx([1.0, 0.5])
    assert r.metrics["EPDMS"] == pytest.approx([1.0, (5 * 0.5 + 11) / 16])
    assert r.metrics["PDMS"] == pytest.approx([1.0, (5 * 0.5 + 7) / 12])


# ------------------------------------------------------------------ aggregation


def test_pdms_epdms_formulas_and_human_filter():
    m = {k: np.array([1.0]) for k in P.SUB_METRICS}
    m.update(NC=np.array([0.5]), EP=np.array([0.6]), TTC=np.array([0.0]), LK=np.array([0.0]))
    assert P.pdms(m)[0] == pytest.approx(0.5 * (5 * 0 + 5 * 0.6 + 2) / 12)
    assert P.epdms(m)[0] == pytest.approx(0.5 * (5 * 0.6 + 0 + 0 + 2 + 2) / 16)
    # NAVSIM's rule: only a sub-metric the human scores 0 on is set to 1 (a human 1/2 filters nothing)
    human = {k: 1.0 for k in P.SUB_METRICS} | {"TTC": 0.0, "NC": 0.5}
    f = P.apply_human_filter(m, human)
    assert f["TTC"][0] == 1.0 and f["NC"][0] == 0.5 and f["LK"][0] == 0.0 and f["EP"][0] == 0.6
    assert P.apply_human_filter(m, human | {"NC": 0.0, "EP": 0.0})["NC"][0] == 1.0


def test_human_filter_in_scoring_when_the_log_itself_collides():
    # the logged ego drives into a parked car at x = 30 (it is at 10 m/s); so would the proposal
    w = world_with(AgentSpec(30.0, 0.0))
    r = score_states(w, straight_states(1, S, 10.0), T0)
    assert r.human["NC"] == 0.0 and r.raw["NC"][0] == 0.0
    assert r.metrics["NC"][0] == 1.0 and r.metrics["TTC"][0] == 1.0
    r2 = score_states(w, straight_states(1, S, 10.0), T0, human_filter=False)
    assert r2.metrics["EPDMS"][0] == 0.0


def test_score_plans_simulates_with_the_sim_tracker_and_ec_uses_the_previous_plan():
    from alpasim_policy.scoring.openloop import score_plans

    w = world_with()
    t = (np.arange(40) + 1) * DT
    keep = np.stack([10 * t, 0 * t, 0 * t], -1)  # the logged ego's own future: 10 m/s straight
    brake = np.stack([10 * t - 2.0 * t**2, 0 * t, 0 * t], -1)  # -4 m/s^2
    r = score_plans(w, np.stack([keep, brake]), T0)
    assert r.states.shape == (2, 41, 9)  # EGO_COLUMNS + the bicycle's yaw rate / yaw acceleration
    assert np.abs(r.states[..., 7:]).max() < 1e-6  # straight plans: no turning
    assert r.metrics["EPDMS"][0] == pytest.approx(1.0, abs=1e-6)
    assert r.progress_m[1] < r.progress_m[0] and r.metrics["EP"][1] < 1.0
    prev_keep = np.stack([10 * (t + 0.1), 0 * t, 0 * t], -1)  # made one step earlier, same intent
    assert score_plans(w, keep[None], T0, previous_plan=prev_keep).metrics["EC"][0] == 1.0
    prev_brake = np.stack([10 * (t + 0.1) - 2.5 * (t + 0.1) ** 2, 0 * t, 0 * t], -1)
    assert score_plans(w, keep[None], T0, previous_plan=prev_brake).metrics["EC"][0] == 0.0


def test_score_plans_rejects_bad_plans():
    from alpasim_policy.errors import PolicyOutputError
    from alpasim_policy.scoring.openloop import score_plans

    w = world_with()
    plans = np.zeros((3, 40, 3))
    plans[1, 5, 0] = np.nan
    with pytest.raises(PolicyOutputError, match=r"proposals \[1\]"):
        score_plans(w, plans, T0)
    with pytest.raises(PolicyOutputError, match="expected"):
        score_plans(w, np.zeros((3, 40, 2)), T0)
