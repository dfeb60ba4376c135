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
    return [find_scene(str(s)) for s in _suite_scenes(suite_path(suite), "scene ids")]


def _suite_scenes(path: Path, what: str) -> list:
    """The ``scenes`` list of a suite YAML; ConfigError naming the file for bad YAML or a bad field."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("scenes"), list) or not doc["scenes"]:
        raise ConfigError(f"{path}: field 'scenes' must be a non-empty list of {what}")
    return doc["scenes"]


def _suite_entries(suite: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The scene files a suite names: a folder (every ``*.npz`` under it), or a suite YAML /
    name whose entries are scene ids or paths (relative paths from the YAML's folder first, then
    the working directory). Entries that resolve to nothing become ``(entry, reason)`` problems."""
    p = Path(suite)
    if p.is_dir():
        files = sorted(p.rglob("*.npz"))
        return files, ([] if files else [(str(p), "folder holds no .npz scene files")])
    path = suite_path(suite)
    entries = _suite_scenes(path, "scene ids or paths")
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        e = Path(str(entry))
        where = f"{path}: scenes[{i}] {str(entry)!r}"
        rel = e if e.is_absolute() else path.parent / e
        if rel.is_dir() or (not e.is_absolute() and e.is_dir()):
            sub, bad = _suite_entries(rel if rel.is_dir() else e)
            files += sub
            problems += [(where, r) for _, r in bad]
        elif rel.suffix == ".npz" and rel.is_file():
            files.append(rel)
        else:
            try:
                files.append(find_scene(str(entry)))
            except ConfigError as err:
                problems.append((where, str(err)))
    return files, problems


def collect_scene_files(
    suite: str | Path | None = None, scenes: list[str | Path] | tuple = ()
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Scene files from a suite (name, YAML of ids / paths, or folder) and explicit ``scenes``
    (files, folders or ids), in order, each file once.

    Unlike :func:`load_suite` nothing here raises for one bad entry: entries that resolve to no
    file come back as ``(entry, reason)`` so a caller (``eval``, ``scenarios list``) can report
    them, go on with the rest and fail at the end. Whether a file is a valid scene is the
    caller's check (:func:`alpasim_policy.scenes.format.load_scene`).
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    if suite is not None:
        f, p = _suite_entries(suite)
        files += f
        problems += p
    for s in scenes:
        p = Path(s)
        if p.is_dir():
            f, bad = _suite_entries(p)
            files += f
            problems += bad
        elif p.is_file():
            files.append(p)
        else:
            try:
                files.append(find_scene(str(s)))
            except ConfigError as err:
                problems.append((str(s), str(err)))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems
