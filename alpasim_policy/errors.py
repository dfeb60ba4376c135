"""Exceptions that name what was wrong and where, so a user can fix their input."""

from __future__ import annotations

from pathlib import Path


class AlpasimError(Exception):
    """Base class of every error this package raises on bad input."""


class SceneFormatError(AlpasimError, ValueError):
    """A scene file (or an importer's source file) is malformed.

    The message always starts with the file and, where one is at fault, the field,
    e.g. ``scenarios/scenes/x.npz: field 'agents/state': contains NaN``.
    """

    def __init__(self, path: str | Path | None, field: str | None, message: str):
        self.path = str(path) if path is not None else None
        self.field = field
        self.message = message
        where = self.path or "<scene>"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


class ImportSourceError(SceneFormatError):
    """A source log given to an importer is missing, truncated or corrupt."""


class CacheError(AlpasimError, ValueError):
    """A metric cache is stale, corrupt or of an unknown version."""


class PolicyOutputError(AlpasimError, ValueError):
    """A policy returned a plan the env cannot execute (NaN, empty, too short, wrong shape)."""


class ConfigError(AlpasimError, ValueError):
    """An env / model / policy configuration is invalid; the message names the key."""


class ModelInputError(AlpasimError, ValueError):
    """Inputs given to the driving model are unusable (image count / shape, NaN or too-short history)."""


class ModelWeightsError(AlpasimError, ValueError):
    """A weights directory is missing, corrupt, or its keys / shapes do not fit the model config."""
