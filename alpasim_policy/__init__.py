"""alpasim-policy: closed-loop evaluation of Alpamayo-class driving policies.

Data flows one way: ``scenes`` (format, importers) -> ``sim`` (gym env) ->
``policies`` (baselines, Alpamayo adapter) -> ``model`` -> ``scoring`` -> report.
Importing the package registers the Gymnasium environment ``alpasim_policy/LogReplay-v0``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _register_envs() -> None:
    # Registration is cheap (an entry point string), so it happens on import as
    # Gymnasium users expect; the env module itself is imported lazily by gym.make.
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:  # pragma: no cover - gymnasium is a hard dependency
        return
    if "alpasim_policy/LogReplay-v0" not in registry:
        register(id="alpasim_policy/LogReplay-v0", entry_point="alpasim_policy.sim.env:LogReplayEnv")


_register_envs()
