"""Locate the data shipped with the package (env configs, bundled scenes and suites, metric caches).

The data stays in the repository's top-level folders (``envs/``, ``scenarios/``, ``metric_cache/``,
``weights/``);
``alpasim_policy/_data/`` holds relative symlinks to them, so one lookup,
``importlib.resources.files("alpasim_policy") / "_data" / ...``, finds them in a source checkout,
an editable install and an installed wheel alike: building the wheel follows the links and copies
the files in as package data (the patterns are ``[tool.setuptools.package-data]`` in
``pyproject.toml``; ``tests/test_wheel.py`` installs the wheel outside the repo and runs from there).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alpasim_policy.errors import ConfigError

#: name -> folder under ``_data`` (the top-level folder of the repository it links to)
_DATA = {
    "envs": "envs",
    "scenes": "scenarios/scenes",
    "suites": "scenarios/suites",
    "scenarios": "scenarios",
    "metric_cache": "metric_cache",
    "weights": "weights",
}


def data_dir(name: str) -> Path:
    """The folder of shipped data ``name`` (one of ``envs, scenes, suites, scenarios, metric_cache, weights``)."""
    if name not in _DATA:
        raise ConfigError(f"packaged data {name!r}: unknown, expected one of {sorted(_DATA)}")
    root = files("alpasim_policy") / "_data" / _DATA[name]
    if not isinstance(root, Path):  # e.g. imported from a zip archive: no folder to hand out
        raise ConfigError(f"packaged data {name!r}: alpasim_policy is not installed as plain files ({root})")
    return root
