"""The navigation command a policy sees, derived from the route ahead (AlpaSim's rule).

Its own light module (numpy only) because two stages apply the same rule: the env builds the
``command`` observation from the scene route, and the egodriver server / client (``serve``) from
the route waypoints AlpaSim sends; both must say "left" at the same point of a turn.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.policies.base import COMMAND_LEFT, COMMAND_RIGHT, COMMAND_STRAIGHT

#: AlpaSim's defaults (its driver's RouteConfig): the first route point at least 5 m from the rig
#: decides; more than 2 m to its left / right means turn.
LOOKAHEAD_M = 5.0
LATERAL_THRESHOLD_M = 2.0


def navigation_command(
    route_rig: np.ndarray, lookahead_m: float = LOOKAHEAD_M, threshold_m: float = LATERAL_THRESHOLD_M
) -> int:
    """Command for a route polyline ``(N, 2)`` in the rig frame (x forward, y left).

    The first route point at least ``lookahead_m`` from the rig decides: its lateral offset
    > ``threshold_m`` -> left, < -``threshold_m`` -> right, else straight (also when no route point
    is that far, or there is no route).
    """
    route_rig = np.asarray(route_rig).reshape(-1, 2)
    d = np.hypot(route_rig[:, 0], route_rig[:, 1])
    far = np.flatnonzero(d >= lookahead_m)
    if not len(far):
        return COMMAND_STRAIGHT
    y = route_rig[far[0], 1]
    return COMMAND_LEFT if y > threshold_m else COMMAND_RIGHT if y < -threshold_m else COMMAND_STRAIGHT
