"""Shared helpers for the model tests: a real ego history from a bundled scene, synthetic frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpasim_policy.scenes.format import load_scene

SCENES = Path(__file__).resolve().parents[1] / "scenarios" / "scenes"


def rig_history(scene_name: str, t: int | None = None, steps: int = 16) -> tuple[np.ndarray, float]:
    """Logged ego poses of the ``steps`` steps ending at ``t`` in the rig frame at ``t``; and the logged speed."""
    scene = load_scene(SCENES / f"{scene_name}.npz")
    t = scene.metadata.t0_index if t is None else t
    st = scene.ego.state[t - steps + 1 : t + 1]
    x0, y0, h0 = scene.ego.state[t, :3]
    c, s = np.cos(h0), np.sin(h0)
    dx, dy = st[:, 0] - x0, st[:, 1] - y0
    hist = np.stack([c * dx + s * dy, -s * dx + c * dy, np.unwrap(st[:, 2] - h0)], axis=1)
    return hist, float(scene.ego.speed[t])


def frames(config, seed: int = 0) -> np.ndarray:  # noqa: ANN001
    """Deterministic uint8 camera frames (C*F, 3, H, W) with structure (gradients + noise), not a real camera."""
    rng = np.random.default_rng(seed)
    h, w = 72, 96  # deliberately not the model size: the model resizes
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], axis=0)
    out = [np.clip(base + rng.integers(-20, 20, size=base.shape), 0, 255) for _ in range(config.num_images)]
    return np.stack(out).astype(np.uint8)
