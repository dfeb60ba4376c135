"""Scenes: the versioned scene format, its loader, suites and importers."""

from alpasim_policy.scenes.format import (
    AGENT_COLUMNS,
    DT,
    EGO_COLUMNS,
    SCHEMA_VERSION,
    Agents,
    AgentType,
    EgoLog,
    Lane,
    LightState,
    RoadMap,
    Route,
    Scene,
    SceneMetadata,
    TrafficLight,
    load_scene,
    save_scene,
)
from alpasim_policy.scenes.suite import find_scene, load_suite, scenarios_root

__all__ = [
    "AGENT_COLUMNS", "DT", "EGO_COLUMNS", "SCHEMA_VERSION", "AgentType", "Agents", "EgoLog", "Lane",
    "LightState", "RoadMap", "Route", "Scene", "SceneMetadata", "TrafficLight", "find_scene", "load_scene",
    "load_suite", "save_scene", "scenarios_root",
]  # fmt: skip
