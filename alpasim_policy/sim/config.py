"""Env configuration: defaults, YAML loading, validation with errors that name the key.

A config is a mapping; ``envs/default.yaml`` and ``envs/reactive.yaml`` are the shipped ones.
Anything not given falls back to :data:`DEFAULTS` (deep merge), so a user YAML may set only
what it changes. Every key is checked: an unknown key, a wrong type or an out-of-range value is a
:class:`~alpasim_policy.errors.ConfigError` naming the key (``truncate.max_distance_to_log_m``).
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from alpasim_policy.errors import ConfigError
from alpasim_policy.sim.command import LATERAL_THRESHOLD_M, LOOKAHEAD_M

DEFAULTS: dict[str, Any] = {
    "dt": 0.1,
    # The log is replayed for this long before the policy takes over, so the 16-step history
    # is full at the first observation (1.6 s = the bundled scenes' t0).
    "warmup_s": 1.6,
    "agents": "log",  # log | idm
    "idm": {},  # IDMParams overrides for reactive agents
    "tracker": {
        # See sim/tracker.py: the closed-loop variant of NAVSIM's LQR.
        "anchor": "extrapolate",
        "fit_steps": 20,
        "q_pos": 1000.0,
        "lon_horizon": 8,
        "allow_reverse": False,
    },
    "command": {"lookahead_m": LOOKAHEAD_M, "lateral_threshold_m": LATERAL_THRESHOLD_M},  # AlpaSim's rule
    "truncate": {"at_fault_collision": False, "off_road": False, "max_distance_to_log_m": None},
    "bev": {"enabled": False},
    "cameras": {"enabled": False, "preset": "alpamayo4", "width": None, "height": None},
}

_TRACKER_EXTRA = {"anchor", "fit_steps"}


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{where}{k}"
        if k not in base:
            raise ConfigError(f"env config: unknown key {key!r}; known: {sorted(base)}")
        if isinstance(base[k], dict) and k not in ("idm", "bev", "tracker"):
            if not isinstance(v, dict):
                raise ConfigError(f"env config: {key!r} must be a mapping, got {type(v).__name__}")
            out[k] = _merge(base[k], v, key + ".")
        elif isinstance(base[k], dict):
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise ConfigError(f"env config: {key!r} must be a mapping, got {type(v).__name__}")
            out[k] = {**base[k], **v}
        else:
            out[k] = v
    return out


def _num(cfg: dict, key: str, value: Any, *, lo: float | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"env config: {key!r} must be a number, got {value!r}")
    if lo is not None and not value >= lo:
        raise ConfigError(f"env config: {key!r} must be >= {lo}, got {value!r}")


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"env config: {key!r} must be true or false, got {value!r}")


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


def load_env_config(config: str | Path | dict | None = None) -> dict[str, Any]:
    """A YAML path, a mapping or None -> the full, validated config dict."""
    if config is None:
        user: dict = {}
    elif isinstance(config, dict):
        user = config
    else:
        path = find_env_config(config)
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"env config {str(path)!r}: not valid YAML: {e}") from e
        if not isinstance(user, dict):
            raise ConfigError(f"env config {str(path)!r}: must be a mapping of keys")
    cfg = _merge(DEFAULTS, user)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    from alpasim_policy.sim.agents import IDMParams
    from alpasim_policy.sim.tracker import TrackerParams

    _num(cfg, "dt", cfg["dt"], lo=1e-3)
    _num(cfg, "warmup_s", cfg["warmup_s"], lo=0.0)
    if cfg["agents"] not in ("log", "idm"):
        raise ConfigError(f"env config: 'agents' must be 'log' or 'idm', got {cfg['agents']!r}")
    IDMParams.from_dict(cfg["idm"], where="env config: 'idm'")
    tr = cfg["tracker"]
    known = {f.name for f in fields(TrackerParams)} | _TRACKER_EXTRA
    bad = sorted(set(tr) - known)
    if bad:
        raise ConfigError(
            f"env config: unknown key(s) {['tracker.' + b for b in bad]}; known: {sorted(known)}"
        )
    if tr.get("anchor") not in ("current", "extrapolate"):
        raise ConfigError(
            f"env config: 'tracker.anchor' must be 'current' or 'extrapolate', got {tr.get('anchor')!r}"
        )
    for k, v in tr.items():
        if k in ("anchor",):
            continue
        if k == "allow_reverse":
            _bool("tracker.allow_reverse", v)
        elif k == "q_lat":
            if not (isinstance(v, list | tuple) and len(v) == 3):
                raise ConfigError(f"env config: 'tracker.q_lat' must be a list of 3 numbers, got {v!r}")
            for x in v:
                _num(cfg, "tracker.q_lat", x, lo=0.0)
        elif k in ("horizon", "fit_steps", "lon_horizon"):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 2):
                raise ConfigError(f"env config: 'tracker.{k}' must be an integer >= 2, got {v!r}")
        else:
            _num(cfg, f"tracker.{k}", v, lo=0.0)
    c = cfg["command"]
    _num(cfg, "command.lookahead_m", c["lookahead_m"], lo=0.0)
    _num(cfg, "command.lateral_threshold_m", c["lateral_threshold_m"], lo=0.0)
    t = cfg["truncate"]
    _bool("truncate.at_fault_collision", t["at_fault_collision"])
    _bool("truncate.off_road", t["off_road"])
    _num(cfg, "truncate.max_distance_to_log_m", t["max_distance_to_log_m"], lo=0.0, allow_none=True)
    b = dict(cfg["bev"])
    _bool("bev.enabled", b.pop("enabled", False))
    from alpasim_policy.render.bev import BevConfig

    BevConfig.from_dict(b)
    cam = cfg["cameras"]
    _bool("cameras.enabled", cam["enabled"])
    if not isinstance(cam["preset"], str):
        raise ConfigError(f"env config: 'cameras.preset' must be a preset name, got {cam['preset']!r}")
    for k in ("width", "height"):
        if cam[k] is not None and (not isinstance(cam[k], int) or isinstance(cam[k], bool) or cam[k] < 8):
            raise ConfigError(f"env config: 'cameras.{k}' must be an integer >= 8 or null, got {cam[k]!r}")


def tracker_params(cfg: dict[str, Any]):
    from alpasim_policy.sim.tracker import TrackerParams

    kw = {k: v for k, v in cfg["tracker"].items() if k not in _TRACKER_EXTRA}
    kw.setdefault("dt", float(cfg["dt"]))
    if "q_lat" in kw:
        kw["q_lat"] = tuple(float(x) for x in kw["q_lat"])
    return TrackerParams(**kw)
