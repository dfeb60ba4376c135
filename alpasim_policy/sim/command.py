"""The navigation command a policy sees, derived from the route ahead (AlpaSim's rule).

Its own light module (numpy + scenes.geometry, no gymnasium) because two stages apply the same rule: the env builds the
``command`` observation from the scene route, and the egodriver server / client (``serve``) from
the route waypoints AlpaSim sends; both must say "left" at the same point of a turn.
"""

from __future__ import annotations

import numpy as np

from alpasim_policy.scenes.geometry import Polyline, scene_to_rig_xy
from alpasim_policy.sim.contract import (
    COMMAND_LEFT,
    COMMAND_RIGHT,
    COMMAND_STRAIGHT,
    ROUTE_POINTS,
    ROUTE_SPACING_M,
)

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


def route_ahead(
    route: Polyline, xy: np.ndarray, n: int = ROUTE_POINTS, spacing: float = ROUTE_SPACING_M
) -> np.ndarray:
    """``n`` points (same frame as ``route``) every ``spacing`` m along the route from ``xy``'s projection.

    Only the route ahead of the projection counts, and points past the route's end are clamped to
    its last point (no extrapolation). A lean version of Polyline.project + interpolate: the env
    runs it every tick.
    """
    rel = np.asarray(xy, dtype=np.float64)[:2] - route.points[:-1]
    along = rel[:, 0] * route.seg_dir[:, 0] + rel[:, 1] * route.seg_dir[:, 1]
    t = np.clip(along, 0.0, route.seg_len)
    fx = rel[:, 0] - t * route.seg_dir[:, 0]
    fy = rel[:, 1] - t * route.seg_dir[:, 1]
    k = int(np.argmin(fx * fx + fy * fy))
    sq = route.s[k] + t[k] + spacing * np.arange(n)
    return np.stack(
        [np.interp(sq, route.s, route.points[:, 0]), np.interp(sq, route.s, route.points[:, 1])], -1
    )


def route_observation(
    route: Polyline,
    pose: np.ndarray,
    lookahead_m: float = LOOKAHEAD_M,
    threshold_m: float = LATERAL_THRESHOLD_M,
) -> tuple[np.ndarray, int]:
    """The observation's ``route`` ((ROUTE_POINTS, 2) float32, rig frame) and ``command``.

    ``route`` and ``pose`` = (x, y, yaw) are in the same frame (the scene frame in the env, the
    local frame in the egodriver server): the one rule both use, so a policy sees the same route
    and command in simulation and behind AlpaSim. The command is decided on the float64 route.
    """
    pose = np.asarray(pose, dtype=np.float64)
    rig = scene_to_rig_xy(route_ahead(route, pose[:2]), pose)
    return rig.astype(np.float32), navigation_command(rig, lookahead_m, threshold_m)
