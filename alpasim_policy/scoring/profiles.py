"""Scoring profiles: ``project`` (the default, corrected semantics) and ``navsim`` (NAVSIM 2's PDMScorer, quirks included).

Why two: NAVSIM's scorer has rules that are arguably wrong (a track's "stopped" state frozen at
its first sighting, a proposal's EP depending on its batch-mates, a rigid-body transform that adds
the angular-acceleration term to the longitudinal axis); users comparing with published NAVSIM
numbers need them reproduced exactly, while this project's leaderboard wants the physically sound
version. Every output names the profile it was scored with. ``scoring/README.md`` lists each
difference with NAVSIM's file and line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringProfile:
    """The switches in which the two profiles differ (everything else is shared)."""

    name: str
    #: "first_seen": a track is stopped if its speed when first seen in the window is <= 0.05 m/s
    #: (NAVSIM's ``unique_objects``); "per_step": its speed at the contact step decides.
    stopped_agents: str
    #: agents already touching the ego at the first scored state are ignored (NC, TTC)
    ignore_initial_contacts: bool
    #: map membership tests: True -> strictly inside one polygon (shapely ``contains``, NAVSIM's
    #: ``points_in_polygons`` / ``is_in_layer``), so a point on a shared edge of two roadblocks is in
    #: neither; False -> inside or on the boundary of the union.
    strict_areas: bool
    #: "batch": EP / the best multiplier-safe progress of the scored batch (``score_proposals``);
    #: "pairwise": each proposal against (reference, itself) only.
    ep_normalisation: str
    #: how comfort moves the rear-axle acceleration to the box centre: "navsim" (a_x + d (w^2 + dw/dt),
    #: a_y unchanged -- NAVSIM's get_acceleration_shifted) or "rigid_body" (a_x - d w^2, a_y + d dw/dt)
    centre_shift: str
    #: the human filter's human is scored alone, without history (NAVSIM's pdm_score) instead of
    #: alongside the reference with the same history as the proposals
    human_scored_alone: bool
    #: HC without a history: True -> 1 (NAVSIM's scorer skips it without ``human_past_trajectory``),
    #: False -> C of the trajectory itself
    hc_needs_history: bool


PROJECT = ScoringProfile(
    name="project",
    stopped_agents="per_step",
    ignore_initial_contacts=True,
    strict_areas=False,
    ep_normalisation="pairwise",
    centre_shift="rigid_body",
    human_scored_alone=False,
    hc_needs_history=False,
)

NAVSIM = ScoringProfile(
    name="navsim",
    stopped_agents="first_seen",
    ignore_initial_contacts=False,
    strict_areas=True,
    ep_normalisation="batch",
    centre_shift="navsim",
    human_scored_alone=True,
    hc_needs_history=True,
)

PROFILES = {p.name: p for p in (PROJECT, NAVSIM)}

#: the leaderboard's profile: scores that do not depend on batch-mates or on a track's first
#: sighting, and physically correct comfort (see scoring/README.md, "Profiles")
DEFAULT_PROFILE = "project"


def get_profile(profile: str | ScoringProfile | None) -> ScoringProfile:
    """A profile by name (``None`` -> the default); a clear error for an unknown name."""
    if profile is None:
        return PROFILES[DEFAULT_PROFILE]
    if isinstance(profile, ScoringProfile):
        return profile
    try:
        return PROFILES[str(profile)]
    except KeyError:
        raise ValueError(f"unknown scoring profile {profile!r}; choose one of {sorted(PROFILES)}") from None
