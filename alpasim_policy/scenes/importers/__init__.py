"""Scene importers (AV2 sensor, AV2 forecasting, CommonRoad) and :func:`import_sources`, which runs one over many sources.

The importer modules load lazily (pyarrow, lxml), so listing the formats stays cheap.
"""

from __future__ import annotations

from pathlib import Path

#: source format -> (module, importer function, whether it takes the ego choice options)
IMPORTERS: dict[str, tuple[str, str, bool]] = {
    "av2-sensor": ("alpasim_policy.scenes.importers.av2", "import_av2_sensor", False),
    "av2-forecasting": ("alpasim_policy.scenes.importers.av2", "import_av2_forecasting", False),
    "commonroad": ("alpasim_policy.scenes.importers.commonroad", "import_commonroad", True),
}



def import_sources(source: str, srcs: list[Path], t0_index: int = 16, max_egos: int | None = None,
                   egos: list[str] | None = None, rejected: list[str] | None = None,
                   min_steps: int | None = None) -> list:  # fmt: skip
    """Run one importer over several sources; returns the scenes in order.

    Why a candidate or a source gave no scene is appended to ``rejected``; ``min_steps``
    (default: warm-up + one scoring window, :func:`~alpasim_policy.scenes.importers.common.min_scene_steps`)
    is the shortest scene kept.
    """
    import importlib

    from alpasim_policy.errors import ConfigError

    if source not in IMPORTERS:
        raise ConfigError(f"unknown source format {source!r}; choose from {list(IMPORTERS)}")
    module, name, takes_egos = IMPORTERS[source]
    importer = getattr(importlib.import_module(module), name)
    options = {"egos": egos, "max_egos": max_egos} if takes_egos else {}
    scenes = []
    for src in srcs:
        scenes += importer(src, t0_index=t0_index, min_steps=min_steps, rejected=rejected, **options)
    return scenes
