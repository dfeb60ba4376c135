"""Resolve scene ids and suites (YAML lists of scene ids under ``scenarios/suites/``) to scene files.

A suite file looks like::

    name: bundled
    scenes: [av2s-7fab2350-w00, av2f-0a1e6f0a, cr-USA_US101-4_1_T-1-ego427, ...]

Scene ids resolve to ``<scenarios root>/scenes/<id>.npz``. The scenarios root is
``$ALPASIM_SCENARIOS`` if set, else ``./scenarios`` if it has a ``scenes/`` folder, else the
bundled scenes and suites shipped with the package (:func:`alpasim_policy.resources.data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from alpasim_policy.errors import ConfigError
from alpasim_policy.resources import data_dir


def scenarios_root() -> Path:
    env = os.environ.get("ALPASIM_SCENARIOS")
    if env:
        return Path(env)
    cwd = Path.cwd() / "scenarios"
    if (cwd / "scenes").is_dir():
        return cwd
    return data_dir("scenarios")


def find_scene(scene: str | Path) -> Path:
    """A scene id or a path -> the scene file path (raises ConfigError if absent)."""
    p = Path(scene)
    if p.suffix == ".npz" and p.is_file():
        return p
    cand = scenarios_root() / "scenes" / f"{scene}.npz"
    if cand.is_file():
        return cand
    raise ConfigError(f"scene {scene!r}: no file {p} and no {cand}")


def suite_path(suite: str | Path) -> Path:
    p = Path(suite)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    cand = scenarios_root() / "suites" / f"{suite}.yaml"
    if cand.is_file():
        return cand
    raise ConfigError(f"suite {suite!r}: no file {p} and no {cand}")


def load_suite(suite: str | Path) -> list[Path]:
    """Resolve a suite name or YAML path into the ordered list of scene files."""
    path = suite_path(suite)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("scenes"), list) or not doc["scenes"]:
        raise ConfigError(f"{path}: field 'scenes' must be a non-empty list of scene ids")
    return [find_scene(str(s)) for s in doc["scenes"]]
