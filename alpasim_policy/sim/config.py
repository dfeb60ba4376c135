"""Env configuration: frozen, typed dataclasses loaded from YAML (defaults, coercion, validation).

``envs/default.yaml`` and ``envs/reactive.yaml`` are the shipped configs. A user YAML (or mapping)
may set only what it changes; every other field keeps its default below. Every value is checked
in one place (:func:`alpasim_policy.typed_config.from_mapping`): an unknown key, a wrong type or an
out-of-range value is a :class:`~alpasim_policy.errors.ConfigError` naming the file and the field
(``truncate.max_distance_to_log_m``). :meth:`EnvConfig.to_dict` gives the plain mapping that
rollout files record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alpasim_policy.errors import ConfigError
from alpasim_policy.sim.agents import IDMParams
from alpasim_policy.sim.command import LATERAL_THRESHOLD_M, LOOKAHEAD_M
from alpasim_policy.sim.tracker import ENV_TRACKER, TrackerParams
from alpasim_policy.typed_config import from_mapping, setting, to_dict


@dataclass(frozen=True)
class TrackerConfig:
    """The env's LQR tracker (see sim/tracker.py: the closed-loop variant of NAVSIM's LQR).

    Defaults are :data:`~alpasim_policy.sim.tracker.ENV_TRACKER`'s; ``anchor`` / ``fit_steps`` say
    how the plan is anchored in time, ``dt`` None means the env's step.
    """

    anchor: Literal["current", "extrapolate"] = "extrapolate"
    fit_steps: int | None = setting(20, ge=2)
    q_lon: float = setting(ENV_TRACKER.q_lon, ge=0)
    r_lon: float = setting(ENV_TRACKER.r_lon, ge=0)
    q_lat: tuple[float, float, float] = setting(ENV_TRACKER.q_lat, ge=0)
    r_lat: float = setting(ENV_TRACKER.r_lat, ge=0)
    horizon: int = setting(ENV_TRACKER.horizon, ge=2)
    dt: float | None = setting(None, gt=0)
    jerk_penalty: float = setting(ENV_TRACKER.jerk_penalty, ge=0)
    curvature_rate_penalty: float = setting(ENV_TRACKER.curvature_rate_penalty, ge=0)
    initial_curvature_penalty: float = setting(ENV_TRACKER.initial_curvature_penalty, ge=0)
    stopping_gain: float = setting(ENV_TRACKER.stopping_gain, ge=0)
    stopping_velocity: float = setting(ENV_TRACKER.stopping_velocity, ge=0)
    q_pos: float = setting(ENV_TRACKER.q_pos, ge=0)
    lon_horizon: int | None = setting(ENV_TRACKER.lon_horizon, ge=2)
    allow_reverse: bool = ENV_TRACKER.allow_reverse


@dataclass(frozen=True)
class CommandConfig:
    """AlpaSim's navigation-command rule: the first route point >= ``lookahead_m`` away decides."""

    lookahead_m: float = setting(LOOKAHEAD_M, ge=0)
    lateral_threshold_m: float = setting(LATERAL_THRESHOLD_M, ge=0)


@dataclass(frozen=True)
class TruncateConfig:
    """When an episode is cut short (all off by default; AlpaSim ends a rollout > 4 m from the log)."""

    at_fault_collision: bool = False
    off_road: bool = False
    max_distance_to_log_m: float | None = setting(None, ge=0)


@dataclass(frozen=True)
class CameraConfig:
    """Camera images in the observation: a rig preset, optionally resized (None: the preset's size).
    ``brake_lamps``: vehicles show brake lamps, lit while braking or standing (see ``sim/README.md``)."""

    enabled: bool = False
    preset: str = "alpamayo4"
    width: int | None = setting(None, ge=8)
    height: int | None = setting(None, ge=8)
    brake_lamps: bool = True


def _check_bev(value: dict[str, Any], where: str) -> dict[str, Any]:
    """``bev``: ``enabled`` plus any :class:`~alpasim_policy.render.bev.BevConfig` field."""
    from alpasim_policy.render.bev import BevConfig

    out = {"enabled": False, **value}
    if not isinstance(out["enabled"], bool):
        raise ConfigError(f"{where}: field 'enabled' must be true or false, got {out['enabled']!r}")
    try:
        BevConfig.from_dict({k: v for k, v in out.items() if k != "enabled"})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return out


@dataclass(frozen=True)
class EnvConfig:
    """The closed-loop env's configuration (``LogReplay-v0``'s ``config``)."""

    dt: float = setting(0.1, ge=1e-3)
    # The log is replayed for this long before the policy takes over, so the 16-step history
    # is full at the first observation (1.6 s = the bundled scenes' t0).
    warmup_s: float = setting(1.6, ge=0)
    agents: Literal["log", "idm"] = "log"
    idm: IDMParams = field(default_factory=IDMParams)  # constants of the reactive (idm) agents
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    command: CommandConfig = field(default_factory=CommandConfig)
    truncate: TruncateConfig = field(default_factory=TruncateConfig)
    bev: Mapping[str, Any] = setting({"enabled": False}, check=_check_bev)
    cameras: CameraConfig = field(default_factory=CameraConfig)

    @property
    def bev_enabled(self) -> bool:
        return bool(self.bev.get("enabled", False))

    def bev_config(self):
        """The :class:`~alpasim_policy.render.bev.BevConfig` of the ``bev`` fields."""
        from alpasim_policy.render.bev import BevConfig

        return BevConfig.from_dict({k: v for k, v in self.bev.items() if k != "enabled"})

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with ``changes`` (values may be mappings; checked like a YAML file's)."""
        merged = {**self.to_dict(), **{k: _merge_one(getattr(self, k), v) for k, v in changes.items()}}
        return from_mapping(EnvConfig, merged, "env config")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready mapping (what rollout files record)."""
        return to_dict(self)


def _merge_one(current: Any, new: Any) -> Any:
    if isinstance(new, Mapping) and (dataclasses.is_dataclass(current) or isinstance(current, Mapping)):
        return {**to_dict(current), **new}
    return to_dict(new)


#: The defaults (a config file only lists what it changes).
DEFAULTS = EnvConfig()


def find_env_config(name: str | Path) -> Path:
    """A YAML path, or a shipped config name (``default``, ``reactive``) -> the file.

    A name is looked up in ``./envs`` and then in the configs shipped with the package; so is a
    relative ``envs/<name>.yaml`` that does not exist from the current directory (the README's
    spelling then works from any directory).
    """
    from alpasim_policy.resources import data_dir

    path = Path(name)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml"):
        stem = str(name)
    elif not path.is_absolute() and path.parent == Path("envs"):
        stem = path.stem
    else:
        stem = None
    if stem is not None:
        for root in (Path.cwd() / "envs", data_dir("envs")):
            cand = root / f"{stem}.yaml"
            if cand.is_file():
                return cand
    raise ConfigError(f"env config {str(name)!r}: no such file (nor a shipped config of that name in envs/)")


def load_env_config(config: str | Path | Mapping | EnvConfig | None = None) -> EnvConfig:
    """A YAML path or shipped name, a mapping, an :class:`EnvConfig` or None -> the validated config."""
    if isinstance(config, EnvConfig):
        return config
    if config is None:
        return DEFAULTS
    if isinstance(config, Mapping):
        return from_mapping(EnvConfig, config, "env config")
    path = find_env_config(config)
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"env config {str(path)!r}: not valid YAML: {e}") from e
    return from_mapping(EnvConfig, user, f"env config {str(path)!r}")


def tracker_params(cfg: EnvConfig) -> TrackerParams:
    """The :class:`TrackerParams` of an env config (the tracker's own step defaults to the env's)."""
    kw = {f.name: getattr(cfg.tracker, f.name) for f in dataclasses.fields(TrackerParams)}
    kw["dt"] = float(cfg.dt if cfg.tracker.dt is None else cfg.tracker.dt)
    return TrackerParams(**kw)
