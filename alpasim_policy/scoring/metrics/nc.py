"""NC: no at-fault collisions (NAVSIM multiplier, {0, 1/2, 1}).

Each (proposal, agent) pair is judged once, at its first contact, with the sim's NAVSIM rules
(:mod:`alpasim_policy.sim.collision`): a stopped ego, a rear hit, or a lateral hit while the ego
is within one lane and on the road are not the ego's fault -- and that agent is then ignored
for the rest of the horizon, as NAVSIM does. A front-bumper hit or a hit on a stopped track is
at fault, and so is a lateral hit while the ego straddles lanes or is off the drivable area.
An at-fault hit costs 0 on a road user and 1/2 on a static object. Agents already touching the
ego at the first state (a log artefact, identical for every proposal) are ignored, like
NAVSIM's ``collided_track_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpasim_policy.scoring.metrics._common import AgentWindow, EgoGeometry, first_per_pair, overlapping_pairs
from alpasim_policy.sim.collision import classify_contacts, collision_penalty, is_at_fault


@dataclass
class Contacts:
    """First contact of each (proposal, agent) pair: indices, collision type and fault."""

    b: np.ndarray
    s: np.ndarray
    m: np.ndarray
    ctype: np.ndarray  # sim.collision.CollisionType
    at_fault: np.ndarray
    penalty: np.ndarray


def first_contacts(ego: EgoGeometry, win: AgentWindow, ignore_initial: bool | None = None) -> Contacts:
    """First contact per (proposal, agent) pair, classified.

    ``ignore_initial`` defaults to the ego's profile (``project``: contacts at the first state are
    a log artefact and ignored; ``navsim``: counted, as NAVSIM's metric-cache observation has no
    ``collided_track_ids``). A track's stopped state is its speed at the contact (``project``) or
    when first seen in the window (``navsim``).
    """
    if ignore_initial is None:
        ignore_initial = ego.profile.ignore_initial_contacts
    b, s, m = overlapping_pairs(ego.corners, ego.center, ego.half_diag, win)
    first = first_per_pair(b, m, s)
    b, s, m = b[first], s[first], m[first]
    if ignore_initial:
        keep = s > 0
        b, s, m = b[keep], s[keep], m[keep]
    pose = ego.states[b, s, :3]
    static = ~win.dynamic[m]
    ctype = classify_contacts(
        pose,
        ego.speed[b, s],
        ego.corners[b, s],
        win.state[s, m, :2],
        win.first_seen_speed[m] if ego.profile.stopped_agents == "first_seen" else win.speed[s, m],
        win.corners[s, m],
        static,
    )
    areas = ego.areas
    multi_or_off = areas["multiple_lanes"][b, s] | areas["non_drivable"][b, s]
    fault = is_at_fault(ctype, multi_or_off)
    return Contacts(b, s, m, ctype, fault, collision_penalty(fault, static))


def no_at_fault_collisions(
    ego: EgoGeometry, win: AgentWindow, ignore_initial: bool | None = None, contacts: Contacts | None = None
) -> np.ndarray:
    """(B,) NC multiplier."""
    c = contacts if contacts is not None else first_contacts(ego, win, ignore_initial)
    out = np.ones(ego.shape[0])
    np.minimum.at(out, c.b, c.penalty)
    return out
