"""Public scoring API: score trajectories you already have on a map you already have (arrays or a Scene in, per-metric results out).

Why: scoring used to require building a :class:`~alpasim_policy.scoring.world.ScoringWorld` (two
dozen internal fields) by hand. Here a user describes the map and the other road users with plain
arrays (:class:`ScoringMap`, :class:`Agents`, :class:`RedLights`) -- or passes a scene -- and gets a
:class:`TrajectoryScores` back: every sub-metric (value and validity), PDMS and EPDMS, and the
profile they were computed with.

Example (a straight two-lane road, one proposal)::

    from alpasim_policy.scoring.api import ScoringMap, score_trajectories
    lane = [[-50, -1.75], [200, -1.75], [200, 1.75], [-50, 1.75]]
    road = ScoringMap(lanes=[lane], centerline=[[-50, 0], [200, 0]])
    scores = score_trajectories(ego_states, road, profile="navsim")   # ego_states (B, 41, 7 or 9)
    scores.epdms, scores.metrics["NC"].value

Conventions (SI, scene frame): ego rows are ``x, y, heading, vx, vy, ax, ay`` at the rear axle
(:data:`~alpasim_policy.scenes.format.EGO_COLUMNS`), optionally followed by ``yaw_rate,
yaw_accel`` (comfort reads them; otherwise they are derived from the heading); states are 0.1 s
apart and the first row is "now". Agent rows are ``x, y, heading, vx, vy`` at the box centre, one per
scored step. The ego box defaults to NAVSIM's (nuPlan Pacifica) dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import shapely

from alpasim_policy.scenes.format import AgentType
from alpasim_policy.scoring.metrics.registry import SUB_METRICS, MetricResult
from alpasim_policy.scoring.profiles import DEFAULT_PROFILE, ScoringProfile, get_profile
from alpasim_policy.scoring.world import ScoringWorld

if TYPE_CHECKING:
    from alpasim_policy.scenes.format import Scene

#: nuPlan's Pacifica, the ego of NAVSIM: length, width, rear axle -> box centre, wheelbase (m)
PACIFICA = {"length": 5.176, "width": 2.297, "rear_axle_to_center": 1.461, "wheelbase": 3.089}


def _polygons(items, field_name: str) -> np.ndarray:
    out = []
    for i, p in enumerate(items if items is not None else []):
        if isinstance(p, shapely.Geometry):
            g = p
        else:
            a = np.asarray(p, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != 2 or len(a) < 3:
                raise ValueError(
                    f"{field_name}[{i}]: expected a polygon as (N >= 3, 2) x, y points, got {a.shape}"
                )
            g = shapely.Polygon(a)
        if not g.is_valid or g.is_empty:
            raise ValueError(f"{field_name}[{i}]: not a valid polygon")
        out.append(g)
    return np.array(out, dtype=object).reshape(-1)


@dataclass
class ScoringMap:
    """The static map, as plain arrays.

    * ``lanes``: lane polygons (each (N, 2) or a shapely polygon) -- the "multiple lanes" test
      and the driving-direction test use them;
    * ``lane_on_route``: (L,) bool, lanes a car may drive in along the route (NAVSIM: every lane
      of the route's roadblocks); default all;
    * ``centerline``: (P, 2) the route's centerline (EP and LK measure along / from it);
    * ``drivable``: drivable-area polygons (DAC); default the lanes and intersections;
    * ``intersections``: intersection polygons (DDC, LK and TTC treat states inside specially);
      default the lanes flagged in ``lane_is_intersection``.
    """

    lanes: Sequence
    centerline: np.ndarray
    lane_on_route: np.ndarray | None = None
    lane_is_intersection: np.ndarray | None = None
    drivable: Sequence | None = None
    intersections: Sequence | None = None


@dataclass
class Agents:
    """Other road users over the scored steps: ``state`` (M, S, 5) box centres, ``size`` (M, 2)
    length / width, ``valid`` (M, S) (default all), ``types`` (M,) :class:`AgentType` values
    (default vehicles; ``AgentType.STATIC`` and ``UNKNOWN`` count as static objects: NC 1/2)."""

    state: np.ndarray
    size: np.ndarray
    valid: np.ndarray | None = None
    types: np.ndarray | None = None


@dataclass
class RedLights:
    """Traffic-light polygons (K,) and whether each is red at each scored step, ``red`` (K, S)."""

    polygons: Sequence
    red: np.ndarray


@dataclass
class TrajectoryScores:
    """Per-proposal results: ``metrics[name]`` is a :class:`MetricResult` ((B,) value and
    validity) for each of NC, DAC, DDC, TLC, EP, TTC, C, HC, LK, EC (after the human filter when
    one ran); ``pdms`` / ``epdms`` (B,); ``raw`` the values before the filter; ``profile`` the
    profile's name."""

    metrics: dict[str, MetricResult]
    pdms: np.ndarray
    epdms: np.ndarray
    raw: dict[str, np.ndarray]
    progress_m: np.ndarray
    profile: str
    human: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[dict[str, float]]:
        """One dict per proposal: every sub-metric, PDMS, EPDMS and the profile name."""
        out = []
        for b in range(len(self.pdms)):
            r: dict = {k: float(v.value[b]) for k, v in self.metrics.items()}
            r.update(PDMS=float(self.pdms[b]), EPDMS=float(self.epdms[b]), profile=self.profile)
            out.append(r)
        return out


def _ego_states(states) -> np.ndarray:
    st = np.asarray(states, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    if st.ndim != 3 or st.shape[-1] not in (7, 9) or st.shape[1] < 2:
        raise ValueError(
            "ego_states: expected (B, S >= 2, 7) rows x, y, heading, vx, vy, ax, ay (rear axle, scene frame), "
            f"optionally + yaw_rate, yaw_accel (9), got {st.shape}"
        )
    if not np.isfinite(st).all():
        raise ValueError("ego_states: contains NaN / inf")
    return st


def world_from_arrays(
    road: ScoringMap,
    num_steps: int,
    agents: Agents | None = None,
    red_lights: RedLights | None = None,
    *,
    dt: float = 0.1,
    vehicle: dict | None = None,
    scene_id: str = "arrays",
) -> ScoringWorld:
    """A :class:`ScoringWorld` for ``num_steps`` scored steps from plain arrays (validated)."""
    veh = dict(PACIFICA, **(vehicle or {}))
    lanes = _polygons(road.lanes, "lanes")
    L = len(lanes)

    def flags(v, name: str, default: bool) -> np.ndarray:
        if v is None:
            return np.full(L, default, dtype=bool)
        a = np.asarray(v, dtype=bool).reshape(-1)
        if a.shape != (L,):
            raise ValueError(f"{name}: expected ({L},) one flag per lane, got {a.shape}")
        return a

    on_route = flags(road.lane_on_route, "lane_on_route", True)
    is_inter = flags(road.lane_is_intersection, "lane_is_intersection", False)
    inter = (
        _polygons(road.intersections, "intersections") if road.intersections is not None else lanes[is_inter]
    )
    drivable_parts = (
        _polygons(road.drivable, "drivable") if road.drivable is not None else np.concatenate([lanes, inter])
    )
    drivable = shapely.union_all(drivable_parts) if len(drivable_parts) else shapely.Polygon()
    cl = np.asarray(road.centerline, dtype=np.float64)
    if cl.ndim != 2 or cl.shape[1] != 2 or len(cl) < 2:
        raise ValueError(f"centerline: expected (P >= 2, 2) points, got {cl.shape}")
    S = int(num_steps)
    if agents is None:
        a_state, a_valid, a_size, a_types = (
            np.zeros((0, S, 5)),
            np.zeros((0, S), bool),
            np.zeros((0, 2)),
            None,
        )
    else:
        a_state = np.asarray(agents.state, dtype=np.float64)
        M = a_state.shape[0] if a_state.ndim == 3 else -1
        if a_state.shape != (M, S, 5):
            raise ValueError(f"agents.state: expected (M, {S}, 5) x, y, heading, vx, vy per scored step, "
                             f"got {a_state.shape}")  # fmt: skip
        a_size = np.asarray(agents.size, dtype=np.float64).reshape(-1, 2)
        if a_size.shape != (M, 2):
            raise ValueError(f"agents.size: expected ({M}, 2) length, width, got {a_size.shape}")
        a_valid = np.ones((M, S), bool) if agents.valid is None else np.asarray(agents.valid, bool)
        if a_valid.shape != (M, S):
            raise ValueError(f"agents.valid: expected ({M}, {S}), got {a_valid.shape}")
        a_types = agents.types
    M = a_state.shape[0]
    types = np.full(M, int(AgentType.VEHICLE), np.int8) if a_types is None else np.asarray(a_types, np.int8)
    if types.shape != (M,):
        raise ValueError(f"agents.types: expected ({M},) AgentType values, got {types.shape}")
    if red_lights is None:
        red_polys, red = np.zeros(0, dtype=object), np.zeros((0, S), bool)
    else:
        red_polys = _polygons(red_lights.polygons, "red_lights.polygons")
        red = np.asarray(red_lights.red, bool)
        if red.shape != (len(red_polys), S):
            raise ValueError(f"red_lights.red: expected ({len(red_polys)}, {S}), got {red.shape}")
    world = ScoringWorld(
        scene_id=scene_id,
        content_hash=None,
        dt=float(dt),
        t0_index=0,
        timestamps=np.arange(S) * float(dt),
        ego_length=float(veh["length"]),
        ego_width=float(veh["width"]),
        rear_axle_to_center=float(veh["rear_axle_to_center"]),
        wheelbase=float(veh["wheelbase"]),
        human_state=np.zeros((S, 7)),
        human_valid=np.zeros(S, bool),
        agent_ids=[f"agent{i}" for i in range(M)],
        agent_types=types,
        agent_size=a_size,
        agent_state=a_state,
        agent_valid=a_valid,
        lane_ids=[f"lane{i}" for i in range(L)],
        lane_polygons=lanes,
        lane_is_intersection=is_inter,
        lane_on_route=on_route,
        drivable=drivable,
        route_polyline=cl,
        red_light_polygons=red_polys,
        red_light_red=red,
        extra={"drivable_parts": drivable_parts, "intersection_parts": inter},
    )
    return world


def score_trajectories(
    ego_states: np.ndarray,
    road: ScoringMap | Scene,
    agents: Agents | None = None,
    red_lights: RedLights | None = None,
    *,
    profile: str | ScoringProfile | None = None,
    start_step: int | None = None,
    history: np.ndarray | None = None,
    previous: np.ndarray | None = None,
    previous_offset: int = 5,
    human: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    dt: float = 0.1,
    vehicle: dict | None = None,
) -> TrajectoryScores:
    """Score B ego trajectories (B, S, 7|9) that are already driven (or simulated).

    ``road`` is a :class:`ScoringMap` (then ``agents`` / ``red_lights`` describe the S scored
    steps) or a scene (then its logged agents and lights from ``start_step``, default its
    ``t0_index``, are used and ``agents`` / ``red_lights`` must be None).

    Optional inputs, each enabling what NAVSIM does with it:

    * ``history`` (H, 7|9): the ego's past before the first row (HC); without it HC equals C;
    * ``previous`` (B or 1, S, 7|9): the previous plan's states, started ``previous_offset`` steps
      earlier (EC; NAVSIM: 5 steps = 0.5 s); without it EC is 1 and marked invalid;
    * ``human`` (S, 7|9): the logged human's states; turns on the human filter (every sub-metric
      the human scores 0 on is set to 1);
    * ``reference`` (S, 7|9): a reference planner's states scored with the batch for EP
      (NAVSIM: PDM-Closed). Without it EP is normalised by the best multiplier-safe proposal.

    ``profile``: ``"project"`` (default) or ``"navsim"`` (NAVSIM 2's PDMScorer exactly); see
    :mod:`alpasim_policy.scoring.profiles`.
    """
    from alpasim_policy.scoring.metrics._common import agent_window
    from alpasim_policy.scoring.openloop import score_states

    prof = get_profile(profile)
    st = _ego_states(ego_states)
    S = st.shape[1]
    if isinstance(road, ScoringMap):
        world = world_from_arrays(road, S, agents, red_lights, dt=dt, vehicle=vehicle)
        step = 0
    else:
        if agents is not None or red_lights is not None:
            raise ValueError("agents / red_lights: pass them only with a ScoringMap; a scene brings its own")
        world = ScoringWorld.from_scene(road)
        step = world.t0_index if start_step is None else int(start_step)
        if not 0 <= step < world.num_steps:
            raise ValueError(f"start_step {step} outside the scene's {world.num_steps} steps")
    win = agent_window(world, step, S, "log")
    hist = np.zeros((0, st.shape[-1])) if history is None else np.asarray(history, np.float64)
    prev = None if previous is None else np.asarray(previous, np.float64)
    if prev is not None and prev.ndim == 2:
        prev = prev[None]
    res = score_states(
        world,
        st,
        step,
        agents="log",
        win=win,
        human_filter=human is not None,
        history=hist,
        previous=prev,
        previous_offset=previous_offset if prev is not None else 0,
        reference=None if reference is None else np.asarray(reference, np.float64),
        reference_from_world=False,
        human_states=None if human is None else np.asarray(human, np.float64),
        profile=prof,
    )
    metrics = {
        k: MetricResult(np.asarray(res.metrics[k], np.float64), np.asarray(res.valid.get(k, True), bool))
        for k in SUB_METRICS
    }
    return TrajectoryScores(
        metrics=metrics,
        pdms=np.asarray(res.metrics["PDMS"]),
        epdms=np.asarray(res.metrics["EPDMS"]),
        raw={k: np.asarray(v) for k, v in res.raw.items()},
        progress_m=res.progress_m,
        profile=prof.name,
        human=res.human,
    )


__all__ = [
    "DEFAULT_PROFILE",
    "PACIFICA",
    "Agents",
    "RedLights",
    "ScoringMap",
    "TrajectoryScores",
    "score_trajectories",
    "world_from_arrays",
]
