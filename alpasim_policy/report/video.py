"""Rollout videos and the violations index, drawn with OpenCV from a saved rollout.

One mp4 per rollout, ``RUN/videos/<policy>/<scene_id>.mp4`` (10 fps = real time), plus a still
``.jpg`` of its most telling frame (the first violation, else the middle) that the HTML report
shows. Each frame (:class:`VideoStyle`, 768 x 432 by default):

* left, the bird's-eye view around the ego (ego-centred, heading up; :mod:`alpasim_policy.render.bev`):
  drivable area, lanes, route, stop lines coloured by their light state, the agents as simulated,
  the logged human path (thin grey), the executed path so far (green), the K samples of the tick
  (thin cyan) and the executed plan (yellow);
* right, the camera mosaic the policy saw (re-rendered from the rollout state with
  :mod:`alpasim_policy.render.cameras` when the rollout's env config had cameras on; rollouts do
  not store images), the tick header (time, speed, events so far) and the chain-of-causation
  text of the tick;
* bottom, a timeline of the whole rollout with one row per event kind -- at-fault collision,
  other contact, off-road (a box corner off the drivable area), red light (box on a red light's
  stop polygon), policy failure, deadline miss -- and a cursor at the current tick.

The events come from the rollout (contacts, failures, misses) and the scorer's geometry
(:class:`~alpasim_policy.scoring.world.ScoringWorld`, the same drivable area and red-light polygons
DAC and TLC use), so what the video marks is what the leaderboard scored.

``violations/``: ``index.csv`` and ``index.md`` list the rollouts with an at-fault collision or an
off-road state (policy, scene, kind, first step, count, video), with a BEV still of the first one
(``<policy>__<scene>.jpg``), as AlpaSim's violations folder does.

Speed: the map layers are drawn once per rollout into a north-up canvas (:class:`StaticMap`) that
each frame rotates into place with one ``cv2.warpAffine``; only lights, agents, ego, paths, plan and
samples are drawn per frame, through one scene -> pixel matrix (:func:`pixel_map`). Encoding is
then the larger part of a frame (about 1.4 ms of MPEG-4 for 672 x 448 on one core; ``mp4v`` was the
cheapest of the encoders in OpenCV's wheel we timed: FLV1, MP42, WMV2, DIVX, MJPG, VP8, FFV1).
``eval --videos`` draws each video in a second process while the run goes on
(:class:`BackgroundVideos`).

Codec: OpenCV's bundled FFmpeg writes MPEG-4 Part 2 (``mp4v``) in an mp4 container; H.264 is not
in the wheel. Desktop players (VLC, mpv, QuickTime, Windows' player) play it; browsers may not,
so the report shows the still and links the file.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alpasim_policy.errors import AlpasimError
from alpasim_policy.io import atomic_write_bytes, atomic_write_text

# event rows of the timeline, top to bottom: (key, label, BGR colour)
EVENTS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("collision_at_fault", "at-fault collision", (40, 40, 230)),
    ("contact", "contact (not at fault)", (60, 160, 255)),
    ("offroad", "off-road", (0, 140, 255)),
    ("red_light", "red light", (200, 60, 220)),
    ("failure", "policy failure", (200, 200, 200)),
    ("deadline_miss", "deadline miss", (160, 160, 60)),
)
_LOG_BGR = (230, 150, 255)
_SAMPLE_BGR = (255, 230, 60)  # cyan  # the human log's path: light pink, distinct from lanes and route


@dataclass
class VideoStyle:
    """Frame geometry (pixels; all multiples of 16 so every codec accepts them) and BEV scale."""

    bev: int = 368  # the square BEV panel
    panel: int = 304  # width of the right-hand panel
    timeline: int = 80  # height of the timeline strip (6 rows)
    meters_per_pixel: float = 0.33
    fps: float = 10.0
    camera_width: int = 160  # per camera in the mosaic

    @property
    def size(self) -> tuple[int, int]:
        return self.bev + self.panel, self.bev + self.timeline


def _safe(policy: str) -> str:
    return policy.replace("://", "_").replace("/", "_").replace(":", "_")


def video_path(run_dir: str | Path, policy: str, scene_id: str) -> Path:
    """Where the video of one rollout lives: ``RUN/videos/<policy>/<scene_id>.mp4``."""
    return Path(run_dir) / "videos" / _safe(policy) / f"{scene_id}.mp4"


def still_path(run_dir: str | Path, policy: str, scene_id: str) -> Path:
    return video_path(run_dir, policy, scene_id).with_suffix(".jpg")


# --------------------------------------------------------------------------- events


def rollout_events(ro, world) -> dict[str, np.ndarray]:
    """Per-record bool arrays, one per :data:`EVENTS` key (False before the policy took over)."""
    from alpasim_policy.scoring.metrics._common import EgoGeometry

    n = len(ro.times)
    controlled = np.asarray(ro.controlled, bool)
    steps = np.asarray(ro.steps, np.int64)
    ev = {k: np.zeros(n, bool) for k, _, _ in EVENTS}
    index = {int(s): i for i, s in enumerate(steps)}
    for c in (ro.extra or {}).get("collisions", []):
        i = index.get(int(c.get("step", -1)))
        if i is not None:
            ev["collision_at_fault" if c.get("at_fault") else "contact"][i] = True
    geo = EgoGeometry(np.asarray(ro.ego_state, np.float64)[None], world)
    ev["offroad"] = geo.areas["non_drivable"][0] & controlled
    red = np.asarray(world.red_light_red, bool)
    if len(world.red_light_polygons) and red.any():
        import shapely

        polys = geo.polygons[0]
        for i in np.flatnonzero(controlled):
            ks = np.flatnonzero(red[:, min(int(steps[i]), red.shape[1] - 1)])
            if len(ks) and shapely.intersects(polys[i], world.red_light_polygons[ks]).any():
                ev["red_light"][i] = True
    if ro.policy_failure is not None:
        ev["failure"] = np.asarray(ro.policy_failure, bool)[:n]
    if ro.deadline_miss is not None:
        ev["deadline_miss"] = np.asarray(ro.deadline_miss, bool)[:n]
    return ev


def _scoring_world(scene):
    """The scorer's geometry of a scene: the committed metric cache when it matches the scene
    (a 40 ms read), else built from the scene (about 1 s: lane polygons, drivable union)."""
    from alpasim_policy.errors import CacheError
    from alpasim_policy.scoring.cache import cache_path, read_world
    from alpasim_policy.scoring.report import DEFAULT_CACHE_DIR
    from alpasim_policy.scoring.world import ScoringWorld

    path = cache_path(DEFAULT_CACHE_DIR, scene.scene_id)
    if path.is_file():
        try:
            return read_world(path, scene.content_hash).prepare()
        except CacheError:
            pass  # stale: build from the scene below
    return ScoringWorld.from_scene(scene).prepare()


# --------------------------------------------------------------------------- drawing


_SHIFT = 4  # sub-pixel bits of the cv2 drawing calls
_MAX_MAP_PIXELS = 16_000_000  # a larger pre-drawn map (a very long drive) falls back to drawing per frame


def pixel_map(pose: np.ndarray, config) -> np.ndarray:
    """The 3 x 3 affine map from scene-frame (x, y, 1) to (column, row, 1) pixels of the
    ego-centred, heading-up BEV of ``config`` (a :class:`~alpasim_policy.render.bev.BevConfig`)
    at ``pose`` = (x, y, heading): the same as ``rig_to_pixel(scene_to_rig_xy(xy, pose))``,
    as one matrix, so that whole polylines (and the pre-drawn map) move with one product."""
    c, s = float(np.cos(pose[2])), float(np.sin(pose[2]))
    m = float(config.meters_per_pixel)
    bx, by = config.ego_pixel()
    ex, ey = float(pose[0]), float(pose[1])
    return np.array(
        [
            [s / m, -c / m, bx - (s * ex - c * ey) / m],
            [-c / m, -s / m, by + (c * ex + s * ey) / m],
            [0.0, 0.0, 1.0],
        ]
    )


def _fixed(P: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Scene-frame points (..., 2) -> int32 sub-pixel coordinates (``_SHIFT`` bits) under ``P``."""
    q = (xy @ P[:2, :2].T + P[:2, 2]) * (1 << _SHIFT)
    np.clip(q, -(2**28), 2**28, out=q)
    return np.rint(q).astype(np.int32)


class StaticMap:
    """The map layers around one rollout (drivable area, crosswalks, lane lines, route), drawn
    once, north-up, into a canvas covering every ego pose of the rollout plus the view radius.

    Why: the map is the costly part of a BEV frame (every layer transformed and filled), and it
    does not change during a rollout; each frame rotates the canvas into the ego-centred,
    heading-up view with one ``cv2.warpAffine`` (bilinear) and draws only what moves over it.
    ``ok`` is False when the canvas would be larger than ``_MAX_MAP_PIXELS`` (then the frames
    draw the map themselves). The canvas has 4 channels: OpenCV's warp is about twice as fast
    on 4-channel images as on 3-channel ones.
    """

    def __init__(self, scene, config, poses: np.ndarray):
        from dataclasses import replace

        from alpasim_policy.render.bev import BevRenderer

        m = config.meters_per_pixel
        xy = np.asarray(poses, np.float64)[:, :2]
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        r = config.view_radius() + 4 * m
        lo, hi = xy.min(axis=0) - r, xy.max(axis=0) + r
        w, h = (int(np.ceil(v / m)) + 2 for v in hi - lo)
        self.ok = len(xy) > 0 and w * h <= _MAX_MAP_PIXELS
        if not self.ok:
            return
        mid = (lo + hi) / 2
        cfg = replace(config, width=w, height=h, ego_position=(0.5, 0.5), draw_lights=False, draw_agents=False,
                      draw_ego=False, draw_plan=False)  # fmt: skip
        # heading +y: the rig's forward axis (image up) is the scene's +y, so the canvas is north-up
        pose = np.array([mid[0], mid[1], np.pi / 2])
        self.canvas = cv2.cvtColor(BevRenderer(scene, cfg).render(ego_state=pose), cv2.COLOR_BGR2BGRA)
        self._from_canvas = np.linalg.inv(pixel_map(pose, cfg))  # canvas pixel -> scene
        self._background = (*(int(v) for v in config.colors["background"]), 255)
        self._tmp = np.empty((config.height, config.width, 4), np.uint8)

    def draw(self, out: np.ndarray, P: np.ndarray) -> None:
        """Rotate the canvas into ``out`` (H, W, 3), the view whose scene -> pixel map is ``P``."""
        M = (P @ self._from_canvas)[:2]
        cv2.warpAffine(self.canvas, M, (out.shape[1], out.shape[0]), dst=self._tmp, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=self._background)  # fmt: skip
        r = cv2.cvtColor(self._tmp, cv2.COLOR_BGRA2BGR, dst=out)
        if r is not out and not np.shares_memory(r, out):  # OpenCV wrote a new array instead of the view
            out[:] = r


class RolloutFrames:
    """Draws the frames of one rollout; construct once (precomputes the map, timeline and events)."""

    def __init__(self, ro, scene, *, style: VideoStyle | None = None, cameras: bool = True, world=None):
        from dataclasses import replace

        from alpasim_policy.render.bev import BevConfig, BevRenderer

        self.ro, self.scene = ro, scene
        self.s = style or VideoStyle()
        s = self.s
        # colours given in BGR order, so the BEV comes out ready for the video writer (no flip copy)
        base = BevConfig()
        cfg = BevConfig(width=s.bev, height=s.bev, meters_per_pixel=s.meters_per_pixel, ego_position=(0.5, 0.62),
                        draw_plan=False, colors={k: v[::-1] for k, v in base.colors.items()},
                        agent_colors={k: v[::-1] for k, v in base.agent_colors.items()})  # fmt: skip
        self.ego = np.asarray(ro.ego_state, np.float64)
        self.map = StaticMap(scene, cfg, self.ego)
        if self.map.ok:  # the map comes pre-drawn: the per-frame renderer draws lights, agents, ego
            cfg = replace(cfg, draw_drivable=False, draw_crosswalks=False, draw_lane_boundaries=False,
                          draw_centerlines=False, draw_route=False)  # fmt: skip
        self.bev = BevRenderer(scene, cfg)
        self.world = world if world is not None else _scoring_world(scene)
        self.events = rollout_events(ro, self.world)
        # events seen up to each tick (the "so far" line of the panel)
        self._so_far = {k: np.logical_or.accumulate(v) if len(v) else v for k, v in self.events.items()}
        self.n = len(ro.times)
        self.log_xy = np.asarray(scene.ego.state, np.float64)[:, :2]
        self._agent_state = np.asarray(ro.agent_state)
        self._agent_valid = np.asarray(ro.agent_valid)
        self._plans = np.asarray(ro.plans, np.float64)
        self._samples = None if ro.samples is None else np.asarray(ro.samples, np.float64)
        self.rig = None
        self._parked: np.ndarray | None = None
        self._brake_lamps = False
        self._camera_style = None
        cam = (ro.env_config or {}).get("cameras") or {}
        if cameras and cam.get("enabled"):
            from alpasim_policy.render.cameras import CameraRig, CameraStyle

            self.rig = CameraRig.from_preset(str(cam.get("preset", "alpamayo4")), width=s.camera_width)
            # as the policy saw them: rollouts recorded before lamps existed have no such key
            self._brake_lamps = bool(cam.get("brake_lamps", False))
            if not self._brake_lamps:
                self._camera_style = CameraStyle(draw_brake_lamps=False)
        self._timeline = self._draw_timeline()
        self._panel_base = self._draw_panel_base()
        self._first_control = int(np.argmax(np.asarray(ro.controlled, bool))) if np.any(ro.controlled) else 0
        self._buf = np.empty((s.size[1], s.size[0], 3), np.uint8)

    # -- static parts

    def _draw_timeline(self) -> np.ndarray:
        s = self.s
        w, h = s.size[0], s.timeline
        img = np.full((h, w, 3), 24, np.uint8)
        rows = len(EVENTS)
        rh = h // rows
        self._x0, self._x1 = 150, w - 8
        for r, (key, label, color) in enumerate(EVENTS):
            y = r * rh
            cv2.putText(img, label, (4, y + rh - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.36, color, 1, cv2.LINE_AA)
            cv2.line(img, (self._x0, y + rh // 2), (self._x1, y + rh // 2), (70, 70, 70), 1)
            for i in np.flatnonzero(self.events[key]):
                x = self._tx(i)
                cv2.rectangle(img, (x - 1, y + 2), (x + 1, y + rh - 2), color, -1)
        return img

    def _tx(self, i: int) -> int:
        return int(round(self._x0 + (self._x1 - self._x0) * i / max(self.n - 1, 1)))

    # -- one frame

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (record index), (H, W, 3) uint8 BGR (a new array)."""
        return self._draw(i).copy()

    def _draw(self, i: int) -> np.ndarray:
        """Frame ``i`` drawn into the reused frame buffer (valid until the next call)."""
        ro, s = self.ro, self.s
        out = self._buf
        img = out[: s.bev, : s.bev]
        pose = self.ego[i, :3]
        P = pixel_map(pose, self.bev.config)
        if self.map.ok:
            self.map.draw(img, P)
        else:
            img[:] = self.bev.config.colors["background"]
        self.bev.render(ego_state=self.ego[i], agent_states=self._agent_state[:, i],
                        agent_valid=self._agent_valid[:, i], step=int(ro.steps[i]), out=img)  # fmt: skip
        aa = cv2.LINE_AA
        cv2.polylines(img, [_fixed(P, self.log_xy)], False, _LOG_BGR, 1, aa, _SHIFT)
        cv2.polylines(img, [_fixed(P, self.ego[: i + 1, :2])], False, (80, 220, 80), 2, aa, _SHIFT)
        plan = self._plans[i] if self._plans.ndim == 3 and i < len(self._plans) else np.zeros((0, 3))
        plan = plan[np.all(np.isfinite(plan[:, :2]), axis=1)]
        if len(plan):
            pts = np.vstack([pose[None, :2], plan[:, :2]])  # from the rear axle
            cv2.polylines(img, [_fixed(P, pts)], False, (0, 220, 255), 3, aa, _SHIFT)
        # the K samples thin, over the thick plan: both stay visible
        if self._samples is not None and i < len(self._samples):
            smp = self._samples[i, :, :, :2]
            fx = _fixed(P, np.where(np.isfinite(smp), smp, 0.0))
            ok = np.all(np.isfinite(smp), axis=-1)
            lines = [fx[k][ok[k]] for k in range(len(smp)) if ok[k].sum() >= 2]
            if lines:
                cv2.polylines(img, lines, False, _SAMPLE_BGR, 1, aa, _SHIFT)
        hits = [(label, color) for key, label, color in EVENTS[:4] if self.events[key][i]]
        if hits:  # ring the ego and name what happens at this tick
            cx, cy = (int(round(v)) for v in self.bev.config.ego_pixel())
            cv2.circle(img, (cx, cy - 6), 24, hits[0][1], 2, cv2.LINE_AA)
            cv2.putText(img, ", ".join(h[0] for h in hits), (cx + 28, cy), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        hits[0][1], 1, cv2.LINE_AA)  # fmt: skip
        kh, kw = self._key.shape[:2]
        img[s.bev - kh :, :kw] = self._key
        self._panel(out[: s.bev, s.bev :], i)
        tl = out[s.bev :]
        tl[:] = self._timeline
        x = self._tx(i)
        cv2.line(tl, (x, 0), (x, tl.shape[0] - 1), (255, 255, 255), 1)
        return out

    def _draw_panel_base(self) -> np.ndarray:
        """What does not change between frames: background, names, the colour key."""
        s, ro = self.s, self.ro
        p = np.full((s.bev, s.panel, 3), 36, np.uint8)
        # the colour key: a small opaque patch pasted into the BEV's bottom-left corner every frame
        key = [("executed path", (80, 220, 80)), ("plan", (0, 220, 255)), ("samples", _SAMPLE_BGR),
               ("human log", _LOG_BGR)]  # fmt: skip
        self._key = np.full((14 * len(key) + 6, 112, 3), 30, np.uint8)
        yk = 14
        for label, color in key:
            cv2.line(self._key, (5, yk - 4), (22, yk - 4), color, 2)
            cv2.putText(
                self._key, label, (27, yk), cv2.FONT_HERSHEY_SIMPLEX, 0.34, (220, 220, 220), 1, cv2.LINE_AA
            )
            yk += 14
        self._text_top = 4
        if self.rig is not None:
            self._text_top = s.bev // 2 + 6  # the camera mosaic takes the top half
        y = self._text_top
        for text, color, scale in (
            (str(ro.policy), (255, 255, 255), 0.5),
            (str(ro.scene_id), (200, 200, 200), 0.4),
        ):
            y += int(22 * scale / 0.42)
            cv2.putText(p, text[:40], (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
        self._text_top = y
        return p

    def _panel(self, p: np.ndarray, i: int) -> None:
        ro = self.ro
        p[:] = self._panel_base
        if self.rig is not None:
            from alpasim_policy.render.cameras import brake_lamps_lit, parked_agents, render_cameras

            lamps = None
            if self._brake_lamps:  # lit as the env lit them
                if self._parked is None:
                    self._parked = parked_agents(self.scene.agents)
                lamps = brake_lamps_lit(self._agent_state, self._agent_valid, i, self._parked)
            ims = render_cameras(self.scene, self.rig, ego_state=self.ego[i], agent_states=self._agent_state[:, i],
                                 agent_valid=self._agent_valid[:, i], step=int(ro.steps[i]), brake_lamps=lamps,
                                 style=self._camera_style)  # fmt: skip
            self._mosaic(p, [im[..., ::-1] for im in ims.values()])
        y = self._text_top
        t = float(ro.times[i] - ro.times[0])
        v = float(np.hypot(self.ego[i, 3], self.ego[i, 4]))
        lines = [(f"t {t:5.1f} s  tick {i}  speed {v:5.1f} m/s", (220, 220, 220), 0.42)]
        if not bool(ro.controlled[i]):
            lines.append(("log warm-up (policy not driving yet)", (160, 160, 160), 0.4))
        lat = ro.latency_s[i] if ro.latency_s is not None and i < len(ro.latency_s) else np.nan
        if np.isfinite(lat):
            lines.append((f"policy call {lat * 1e3:.1f} ms", (220, 220, 220), 0.4))
        now = [label for key, label, _ in EVENTS if len(self._so_far[key]) and self._so_far[key][i]]
        if now:
            lines.append(("so far: " + ", ".join(now), (120, 160, 255), 0.4))
        for text, color, scale in lines:
            for part in textwrap.wrap(text, 40) or [""]:
                y += int(22 * scale / 0.42)
                cv2.putText(p, part, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
        reasoning = ro.reasoning[i] if i < len(ro.reasoning) else ""
        # OpenCV's Hershey fonts draw ASCII only: anything else shows as '?'
        reasoning = " ".join(reasoning.encode("ascii", "replace").decode().split())
        if reasoning:
            y += 22
            cv2.putText(p, "reasoning (CoC):", (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 220, 255), 1,
                        cv2.LINE_AA)  # fmt: skip
            for part in textwrap.wrap(reasoning, 46)[: max(0, (p.shape[0] - y - 8) // 16)]:
                y += 16
                cv2.putText(p, part, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (230, 230, 230), 1, cv2.LINE_AA)

    def _mosaic(self, p: np.ndarray, ims: list[np.ndarray]) -> int:
        """Tile the camera images into the top of the panel; returns the bottom row used."""
        if not ims:
            return 0
        W = p.shape[1]
        cols = 2 if len(ims) > 1 else 1
        cw = W // cols
        y = 0
        for r in range(0, len(ims), cols):
            row = ims[r : r + cols]
            hmax = 0
            for c, im in enumerate(row):
                h = max(1, int(round(im.shape[0] * cw / im.shape[1])))
                if y + h > p.shape[0] // 2:
                    return y
                p[y : y + h, c * cw : c * cw + cw] = cv2.resize(im, (cw, h), interpolation=cv2.INTER_AREA)
                hmax = max(hmax, h)
            y += hmax
        return y

    def key_index(self) -> int:
        """The frame to show as a still: the first violation, else the middle of the controlled part."""
        for key in ("collision_at_fault", "offroad", "red_light", "contact", "failure"):
            idx = np.flatnonzero(self.events[key])
            if len(idx):
                return int(idx[0])
        return (self._first_control + self.n - 1) // 2


# --------------------------------------------------------------------------- writing


def write_video(ro, scene, path: str | Path, *, cameras: bool = True, style: VideoStyle | None = None,
                world=None) -> Path:  # fmt: skip
    """Write the mp4 of one rollout (atomically: a temp file renamed into place) and its still."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fr = RolloutFrames(ro, scene, style=style, cameras=cameras, world=world)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    w, h = fr.s.size
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fr.s.fps, (w, h))
    if not writer.isOpened():
        raise AlpasimError(f"{path}: OpenCV cannot open an mp4v video writer (opencv without FFmpeg?)")
    key = fr.key_index()
    still = None
    try:
        for i in range(fr.n):
            f = fr._draw(i)
            writer.write(f)
            if i == key:
                still = f.copy()
    finally:
        writer.release()
    os.replace(tmp, path)
    if still is not None:
        ok, buf = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            atomic_write_bytes(path.with_suffix(".jpg"), buf.tobytes())
    return path


def _rollout_files(run_dir: Path, scenes: list[str] | None, policies: list[str] | None) -> list[Path]:
    files = sorted((run_dir / "rollouts").glob("*/*.npz"))
    if not files:
        raise AlpasimError(f"{run_dir / 'rollouts'}: no rollouts (expected rollouts/<policy>/<scene_id>.npz)")
    if scenes:
        files = [f for f in files if f.stem in set(scenes)]
    if policies:
        safe = {_safe(p) for p in policies}
        files = [f for f in files if f.parent.name in safe]
    if not files:
        raise AlpasimError(f"{run_dir}: no rollout matches --scene {scenes} --policy {policies}")
    return files


def write_videos(
    run_dir: str | Path,
    *,
    scenes: list[str] | None = None,
    policies: list[str] | None = None,
    cameras: bool = True,
    progress: bool = False,
    skip: set[Path] | None = None,
) -> list[Path]:
    """Write ``RUN/videos/<policy>/<scene>.mp4`` for the chosen rollouts (default: every rollout),
    except the videos in ``skip`` (those :class:`BackgroundVideos` wrote during eval)."""
    from tqdm import tqdm

    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene
    from alpasim_policy.sim.rollout import Rollout

    run_dir = Path(run_dir)
    files = sorted(_rollout_files(run_dir, scenes, policies), key=lambda f: (f.stem, f.parent.name))
    skip = {Path(v) for v in skip or ()}
    files = [f for f in files if run_dir / "videos" / f.parent.name / f"{f.stem}.mp4" not in skip]
    out, memo = [], {}
    # no bar when the background process already wrote them all (a "0video" bar reads as a failure)
    for f in tqdm(files, desc="videos", unit="video", disable=not progress or not files):
        try:
            ro = Rollout.load(f)
            if ro.scene_id not in memo:
                memo.clear()
                sc = load_scene(find_scene(ro.scene_id))
                memo[ro.scene_id] = (sc, _scoring_world(sc))
        except AlpasimError as e:  # one unreadable rollout or missing scene: say so, do the others
            print(f"note: no video for {f}: {e}", file=sys.stderr)
            continue
        sc, world = memo[ro.scene_id]
        out.append(
            write_video(ro, sc, video_path(run_dir, ro.policy, ro.scene_id), cameras=cameras, world=world)
        )
    return out


_JOB_SCENES: dict[str, tuple[Any, Any]] = {}  # the background process's last few (scene, world)


def _warm_job() -> int:
    """The background process's first job: the imports a video needs, while eval checks its scenes."""
    from alpasim_policy.render.bev import BevRenderer  # noqa: F401
    from alpasim_policy.scenes.format import load_scene  # noqa: F401
    from alpasim_policy.scoring.world import ScoringWorld  # noqa: F401
    from alpasim_policy.sim.rollout import Rollout  # noqa: F401

    return os.getpid()


def _video_job(rollout_file: str, scene_file: str, video_file: str) -> str:
    """The background process's work: one rollout's video, from the files eval wrote."""
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.sim.rollout import Rollout

    if scene_file not in _JOB_SCENES:
        if len(_JOB_SCENES) >= 8:  # eval visits scenes once per policy: keep a few, not the suite
            _JOB_SCENES.pop(next(iter(_JOB_SCENES)))
        sc = load_scene(scene_file)
        _JOB_SCENES[scene_file] = (sc, _scoring_world(sc))
    sc, world = _JOB_SCENES[scene_file]
    write_video(Rollout.load(rollout_file), sc, video_file, world=world)
    return video_file


class BackgroundVideos:
    """``eval --videos``: each rollout's video is written by a second process while eval drives
    the next rollouts, instead of all of them after the run.

    Why: drawing and encoding a video costs about as much CPU as a fast baseline's rollout
    (OpenCV's MPEG-4 encoder alone is about 1.4 ms per 672 x 448 frame), so done afterwards it
    adds that much to the run's wall time. In a second process it uses a CPU the serial backend
    leaves idle; with every CPU busy (Ray with one worker per core) it only moves the cost.
    ``submit`` is given each rollout file as eval writes it; ``finish`` waits and returns the
    videos written, so the report stage writes only the missing ones (resumed rollouts, or any
    the background process could not write: it notes them on stderr). The process is started
    with ``spawn`` (never ``fork``: the driver may hold Ray's or torch's threads).
    """

    def __init__(self, run_dir: str | Path):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.run_dir = Path(run_dir)
        self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        self._pool.submit(_warm_job)  # start the process and its imports now, not at the first video
        self._jobs: list[tuple[Any, Path]] = []

    def submit(self, rollout_file: str | Path, scene_file: str | Path) -> None:
        """Queue the video of the rollout in ``rollout_file`` (``RUN/rollouts/<policy>/<scene_id>.npz``)."""
        f = Path(rollout_file)
        video = self.run_dir / "videos" / f.parent.name / f"{f.stem}.mp4"
        try:
            self._jobs.append((self._pool.submit(_video_job, str(f), str(scene_file), str(video)), video))
        except Exception as e:  # the process is gone (killed, cannot start): the report stage writes it
            print(f"note: background video {video} not started ({type(e).__name__}: {e})", file=sys.stderr)

    def finish(self) -> set[Path]:
        """Wait for the queued videos; returns those written (failures are noted on stderr)."""
        done: set[Path] = set()
        try:
            for job, video in self._jobs:
                try:
                    job.result()
                    done.add(video)
                except Exception as e:  # the report stage writes it again, in this process
                    print(f"note: background video {video} failed ({type(e).__name__}: {e})", file=sys.stderr)
        finally:
            self.close()
        return done

    def close(self) -> None:
        """Stop the process (queued videos that have not started are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


VIOLATION_COLUMNS = ("policy", "scene_id", "kind", "first_step", "ticks", "video", "still")


def find_violations(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rollouts of a run with an at-fault collision or an off-road state, one row per (rollout, kind)."""
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import find_scene
    from alpasim_policy.sim.rollout import Rollout

    run_dir = Path(run_dir)
    rows, memo = [], {}
    for f in sorted((run_dir / "rollouts").glob("*/*.npz"), key=lambda f: (f.stem, f.parent.name)):
        try:
            ro = Rollout.load(f)
        except AlpasimError as e:
            print(f"note: violations: {e}", file=sys.stderr)
            continue
        if ro.scene_id not in memo:
            memo.clear()
            try:
                sc = load_scene(find_scene(ro.scene_id))
            except AlpasimError as e:
                print(f"note: violations: {e}", file=sys.stderr)
                continue
            memo[ro.scene_id] = (sc, _scoring_world(sc))
        sc, world = memo[ro.scene_id]
        ev = rollout_events(ro, world)
        for key, kind in (("collision_at_fault", "at-fault collision"), ("offroad", "off-road")):
            idx = np.flatnonzero(ev[key])
            if not len(idx):
                continue
            rows.append({
                "policy": ro.policy, "scene_id": ro.scene_id, "kind": kind,
                "first_step": int(ro.steps[idx[0]]), "ticks": len(idx), "_index": int(idx[0]),
                "_rollout": ro, "_scene": sc, "_world": world,
            })  # fmt: skip
    return rows


def write_violations(run_dir: str | Path) -> Path:
    """Write ``RUN/violations/index.csv``, ``index.md`` and one BEV still per violating rollout."""
    run_dir = Path(run_dir)
    vdir = run_dir / "violations"
    rows = find_violations(run_dir)
    for r in rows:
        name = f"{_safe(r['policy'])}__{r['scene_id']}__{r['kind'].replace(' ', '_')}.jpg"
        fr = RolloutFrames(r["_rollout"], r["_scene"], cameras=False, world=r["_world"])
        ok, buf = cv2.imencode(".jpg", fr.frame(r["_index"]), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            atomic_write_bytes(vdir / name, buf.tobytes())
            r["still"] = name
        vp = video_path(run_dir, r["policy"], r["scene_id"])
        r["video"] = os.path.relpath(vp, vdir) if vp.is_file() else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(VIOLATION_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in VIOLATION_COLUMNS})
    atomic_write_text(vdir / "index.csv", buf.getvalue())
    md = [f"# Violations: {run_dir.name}", "",
          "Rollouts with an at-fault collision (NAVSIM rules) or a box corner off the drivable area; "
          "first_step is the scene step of the first one, ticks how many ticks had it.", ""]  # fmt: skip
    if rows:
        md += [
            "| policy | scene | kind | first step | ticks | still | video |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            still = f"![]({r['still']})" if r.get("still") else ""
            video = f"[mp4]({r['video']})" if r.get("video") else "(eval --videos)"
            md.append(f"| {r['policy']} | {r['scene_id']} | {r['kind']} | {r['first_step']} | {r['ticks']} | "
                      f"{still} | {video} |")  # fmt: skip
    else:
        md.append("None.")
    atomic_write_text(vdir / "index.md", "\n".join(md) + "\n")
    return vdir / "index.csv"
