"""Test helper: small constructed scenes (straight roads, hand-placed agents) for the scorer's tests.

Why: the metric tests derive expected values by hand on geometry simple enough to reason about.
Only tests use it, so it lives beside them, not in the package.

Layout of :func:`straight_road_scene` (scene frame, metres): three 3.5 m lanes along x from
-100 to 300. ``ego`` lane: y in [-1.75, 1.75] driving +x (the route); ``left`` lane: y in
[1.75, 5.25] driving +x; ``oncoming`` lane: y in [5.25, 8.75] driving -x. The ego lane is split
into three pieces; the middle one (x in ``intersection``) is flagged ``is_intersection``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpasim_policy.scenes.format import (
    DT,
    Agents,
    AgentType,
    EgoLog,
    Lane,
    LightState,
    RoadMap,
    Route,
    Scene,
    SceneMetadata,
    TrafficLight,
)

EGO_LENGTH, EGO_WIDTH, EGO_R2C, EGO_WHEELBASE = 4.8, 2.0, 1.4, 2.9
X0, X1 = -100.0, 300.0


@dataclass
class AgentSpec:
    """An agent moving in a straight line: box centre ``(x, y)`` at step 0, velocity ``(vx, vy)``."""

    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    heading: float | None = None  # default: direction of travel (0 when still)
    length: float = 4.5
    width: float = 1.9
    type: AgentType = AgentType.VEHICLE
    states: np.ndarray | None = None  # (T, 5) explicit states override the straight line


def _lane(lid: str, x0: float, x1: float, yc: float, forward: bool = True, inter: bool = False, **kw) -> Lane:
    xs = np.linspace(x0, x1, max(2, int((x1 - x0) / 5) + 1))
    if not forward:
        xs = xs[::-1]
    sgn = 1.0 if forward else -1.0
    c = np.stack([xs, np.full_like(xs, yc)], -1)
    left = c + np.array([0.0, 1.75 * sgn])
    right = c - np.array([0.0, 1.75 * sgn])
    return Lane(lid, c, left, right, is_intersection=inter, **kw)


def straight_road_scene(
    ego_speed: float = 10.0,
    agents: list[AgentSpec] | tuple = (),
    num_steps: int = 90,
    t0_index: int = 20,
    intersection: tuple[float, float] = (150.0, 170.0),
    ego_states: np.ndarray | None = None,
    red_light: tuple[float, int, int] | None = None,
    scene_id: str = "synthetic_straight",
) -> Scene:
    """A three-lane straight road; the logged ego drives the ego lane at ``ego_speed``.

    ``red_light=(x, first_red_step, last_red_step)`` puts a stop line across the ego lane at x.
    The ego's rear axle is at x = 0 at ``t0_index``.
    """
    T = num_steps
    t = np.arange(T) * DT
    if ego_states is None:
        ego = np.zeros((T, 7))
        ego[:, 0] = ego_speed * (t - t0_index * DT)
        ego[:, 3] = ego_speed
    else:
        ego = np.asarray(ego_states, float)
    i0, i1 = intersection
    lanes = [
        _lane("ego_a", X0, i0, 0.0, successors=["ego_i"], left_neighbor="left"),
        _lane("ego_i", i0, i1, 0.0, inter=True, predecessors=["ego_a"], successors=["ego_b"]),
        _lane("ego_b", i1, X1, 0.0, predecessors=["ego_i"]),
        _lane("left", X0, X1, 3.5, right_neighbor="ego_a", left_neighbor="oncoming"),
        _lane("oncoming", X0, X1, 7.0, forward=False, left_neighbor="left"),
    ]
    route_ids = ["ego_a", "ego_i", "ego_b"]
    route_poly = np.concatenate([lanes[0].centerline, lanes[1].centerline[1:], lanes[2].centerline[1:]])
    n = len(agents)
    a_state = np.zeros((n, T, 5))
    for i, a in enumerate(agents):
        if a.states is not None:
            a_state[i] = a.states
            continue
        a_state[i, :, 0] = a.x + a.vx * t
        a_state[i, :, 1] = a.y + a.vy * t
        a_state[i, :, 2] = a.heading if a.heading is not None else (
            np.arctan2(a.vy, a.vx) if (a.vx or a.vy) else 0.0)  # fmt: skip
        a_state[i, :, 3] = a.vx
        a_state[i, :, 4] = a.vy
    lights: list[TrafficLight] = []
    light_states = np.zeros((0, T), dtype=np.int8)
    if red_light is not None:
        x, r0, r1 = red_light
        lights = [TrafficLight("tl0", "ego_i", np.array([[x, -1.75], [x, 1.75]]))]
        light_states = np.full((1, T), int(LightState.GREEN), dtype=np.int8)
        light_states[0, r0 : r1 + 1] = int(LightState.RED)
    scene = Scene(
        metadata=SceneMetadata(
            scene_id=scene_id,
            source_dataset="synthetic",
            source_id=scene_id,
            license="CC0-1.0",
            location="nowhere",
            frame_origin=(0.0, 0.0),
            t0_index=t0_index,
        ),
        timestamps=t,
        ego=EgoLog(ego, np.ones(T, bool), EGO_LENGTH, EGO_WIDTH, EGO_R2C, EGO_WHEELBASE),
        agents=Agents(
            ids=[f"a{i}" for i in range(n)],
            types=np.array([int(a.type) for a in agents], dtype=np.int8),
            size=np.array([[a.length, a.width] for a in agents], dtype=np.float64).reshape(n, 2),
            state=a_state,
            valid=np.ones((n, T), dtype=bool),
        ),
        map=RoadMap(
            lanes=lanes,
            drivable_areas=[],
            crosswalks=[],
            traffic_lights=lights,
            light_states=light_states,
        ),
        route=Route(route_ids, route_poly),
    )
    scene.validate()
    return scene


def straight_states(
    B: int, S: int, speed: float | np.ndarray = 10.0, y: float | np.ndarray = 0.0, x0: float = 0.0
) -> np.ndarray:
    """(B, S, 7) ego states driving +x at constant speed along y (rear axle)."""
    speed = np.broadcast_to(np.asarray(speed, float), (B,))
    yy = np.broadcast_to(np.asarray(y, float), (B,))
    t = np.arange(S) * DT
    st = np.zeros((B, S, 7))
    st[..., 0] = x0 + speed[:, None] * t[None]
    st[..., 1] = yy[:, None]
    st[..., 3] = speed[:, None]
    return st
