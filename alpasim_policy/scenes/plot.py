"""Bird's-eye plot of a scene, so a user can check an import by eye.

Shows the drivable area, lanes (boundaries and centerlines, intersections shaded),
crosswalks, traffic lights (each stop line drawn in its light's colour at ``t0``, with a dot at
its middle), the route polyline, the ego log (history dashed, future solid) and every agent's
box at ``t0``. Uses matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpasim_policy.scenes.format import AgentType, LightState, Scene
from alpasim_policy.scenes.geometry import MapIndex, box_corners, rear_axle_to_center

_TYPE_COLORS = {
    AgentType.VEHICLE: "tab:blue",
    AgentType.PEDESTRIAN: "tab:orange",
    AgentType.BICYCLE: "tab:green",
    AgentType.MOTORCYCLE: "tab:olive",
    AgentType.BUS: "tab:purple",
    AgentType.TRUCK: "tab:brown",
    AgentType.STATIC: "tab:gray",
    AgentType.UNKNOWN: "black",
}

_LIGHT_COLORS = {
    LightState.RED: "red",
    LightState.YELLOW: "orange",
    LightState.GREEN: "limegreen",
    LightState.UNKNOWN: "dimgray",
}


def plot_scene(scene: Scene, out: str | Path, radius: float | None = None, dpi: int = 130) -> Path:
    """Render ``scene`` to a PNG at ``out``; ``radius`` (m): least half-size of the view around the ego log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alpasim_policy.io import atomic_write_bytes

    idx = MapIndex(scene)
    fig, ax = plt.subplots(figsize=(10, 10))
    geoms = getattr(idx.drivable, "geoms", [idx.drivable])
    for g in geoms:
        if g.geom_type != "Polygon":
            continue
        x, y = g.exterior.xy
        ax.fill(x, y, color="#e8e8e8", zorder=0)
        for hole in g.interiors:
            hx, hy = hole.xy
            ax.fill(hx, hy, color="white", zorder=0)
    for cw in scene.map.crosswalks:
        ax.fill(cw[:, 0], cw[:, 1], facecolor="none", edgecolor="#d4a017", hatch="///", lw=0.5, zorder=1)
    for ln in scene.map.lanes:
        ax.plot(*ln.left_boundary.T, color="#9a9a9a", lw=0.5, zorder=1)
        ax.plot(*ln.right_boundary.T, color="#9a9a9a", lw=0.5, zorder=1)
        c = ln.centerline
        ax.plot(*c.T, color="#c0c0ff" if not ln.is_intersection else "#ffc0c0", lw=0.6, ls=":", zorder=1)
        if len(c) >= 2:  # a small arrow: lane direction
            m = len(c) // 2
            d = c[min(m + 1, len(c) - 1)] - c[max(m - 1, 0)]
            ax.annotate("", xy=c[m] + 0.3 * d, xytext=c[m], zorder=1,
                        arrowprops={"arrowstyle": "->", "color": "#8080c0", "lw": 0.6})  # fmt: skip
    t0 = scene.metadata.t0_index
    states = scene.map.light_states
    for k, tl in enumerate(scene.map.traffic_lights):
        code = int(states[k, t0]) if states.size else int(LightState.UNKNOWN)
        col = _LIGHT_COLORS.get(LightState(code), "dimgray")
        ax.plot(*np.asarray(tl.stop_line).T, color=col, lw=3, solid_capstyle="butt", zorder=3)
        mid = np.asarray(tl.stop_line).mean(axis=0)
        ax.plot(*mid, marker="o", ms=6, color=col, markeredgecolor="black", mew=0.6, zorder=6)
    for st in LightState:
        if len(scene.map.traffic_lights) and np.any(states[:, t0] == int(st)):
            ax.plot([], [], color=_LIGHT_COLORS[st], lw=3, label=f"stop line, {st.name.lower()} at t0")
    r = scene.route.polyline
    ax.plot(r[:, 0], r[:, 1], color="tab:green", lw=3, alpha=0.35, zorder=2, label="route")
    e = scene.ego
    v = e.valid
    hist = np.arange(scene.num_steps) <= t0
    ax.plot(*e.xy[v & hist].T, color="tab:red", ls="--", lw=1.2, zorder=4, label="ego history")
    ax.plot(*e.xy[v & ~hist].T, color="tab:red", lw=1.5, zorder=4, label="ego future")
    c = rear_axle_to_center(e.state[t0], e.rear_axle_to_center)
    ego_box = box_corners(c[0], c[1], c[2], e.length, e.width)
    ax.fill(*ego_box.T, color="tab:red", alpha=0.8, zorder=5)
    a = scene.agents
    if len(a):
        vis = a.valid[:, t0]
        s = a.state[vis, t0]
        boxes = box_corners(s[:, 0], s[:, 1], s[:, 2], a.size[vis, 0], a.size[vis, 1])
        for bx, ty in zip(boxes, a.types[vis], strict=True):
            ax.fill(*bx.T, facecolor=_TYPE_COLORS.get(AgentType(int(ty)), "black"), alpha=0.6, zorder=3)
        for i in np.flatnonzero(a.valid.any(axis=1)):
            tr = a.state[i, a.valid[i], :2]
            ax.plot(tr[:, 0], tr[:, 1], color=_TYPE_COLORS.get(AgentType(int(a.types[i])), "k"), lw=0.4,
                    alpha=0.5, zorder=2)  # fmt: skip
    for ty, col in _TYPE_COLORS.items():
        if len(a) and np.any(a.types == int(ty)):
            ax.fill([], [], color=col, alpha=0.6, label=ty.name.lower())
    # Frame the ego log (not the whole route or map, which can run for hundreds of metres).
    lo, hi = e.xy[v].min(axis=0), e.xy[v].max(axis=0)
    span = radius if radius is not None else 30.0
    mid = 0.5 * (lo + hi)
    half = np.maximum(0.5 * (hi - lo) + 15.0, span)
    ax.set_xlim(mid[0] - half[0], mid[0] + half[0])
    ax.set_ylim(mid[1] - half[1], mid[1] + half[1])
    ax.set_aspect("equal")
    md = scene.metadata
    ax.set_title(f"{md.scene_id}  ({md.source_dataset}, {md.location}; {scene.duration:.1f} s, "
                 f"{len(a)} agents; t0 = {scene.timestamps[t0]:.1f} s)", fontsize=9)  # fmt: skip
    ax.set_xlabel("x [m] (scene frame)")
    ax.set_ylabel("y [m]")
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(True, lw=0.3, alpha=0.5)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
