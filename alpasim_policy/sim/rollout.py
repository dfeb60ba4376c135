"""The on-disk record of one closed-loop rollout: the contract between ``eval`` and the scorer.

One file per (policy, scene): ``<run dir>/rollouts/<policy>/<scene_id>.npz``, written
atomically, so an interrupted ``eval`` resumes by skipping files that exist. All poses
are in the scene frame (see :mod:`alpasim_policy.scenes.format`); plans and samples are
converted from the rig frame at the tick they were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import AlpasimError
from alpasim_policy.io import atomic_write_bytes, pack_archive, unpack_archive

ROLLOUT_VERSION = "1.0"


@dataclass
class Rollout:
    scene_id: str
    policy: str
    seed: int
    scene_hash: str | None
    env_config: dict[str, Any]
    times: np.ndarray  # (N,) s, the scene timestamps of each recorded step
    steps: np.ndarray  # (N,) int, scene step index of each record
    ego_state: np.ndarray  # (N, 7) scene frame, EGO_COLUMNS (rear axle)
    controlled: np.ndarray  # (N,) bool: False during the log warm-up
    plans: np.ndarray  # (N, T, 3) scene frame; NaN where no plan was made
    agent_state: np.ndarray  # (M, N, 5) the agents as simulated (log or IDM)
    agent_valid: np.ndarray  # (M, N) bool
    samples: np.ndarray | None = None  # (N, K, T, 3) scene frame, when the policy samples
    reasoning: list[str] = field(default_factory=list)  # per record ("" where none)
    latency_s: np.ndarray | None = None  # (N,) wall time of the policy call
    deadline_miss: np.ndarray | None = None  # (N,) bool
    policy_failure: np.ndarray | None = None  # (N,) bool: invalid plan, last valid one kept
    failure_messages: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, as bytes (Ray workers pack it, the driver writes it)."""
        n = len(self.times)
        arrays = {
            "times": self.times, "steps": self.steps, "ego_state": self.ego_state,
            "controlled": self.controlled, "plans": self.plans, "agent_state": self.agent_state,
            "agent_valid": self.agent_valid,
            "latency_s": self.latency_s if self.latency_s is not None else np.full(n, np.nan),
            "deadline_miss": self.deadline_miss if self.deadline_miss is not None else np.zeros(n, bool),
            "policy_failure": self.policy_failure if self.policy_failure is not None else np.zeros(n, bool),
        }  # fmt: skip
        if self.samples is not None:
            arrays["samples"] = self.samples
        meta = {
            "rollout_version": ROLLOUT_VERSION, "scene_id": self.scene_id, "policy": self.policy,
            "seed": int(self.seed), "scene_hash": self.scene_hash, "env_config": self.env_config,
            "reasoning": list(self.reasoning), "failure_messages": list(self.failure_messages),
            "extra": self.extra,
        }  # fmt: skip
        return pack_archive(arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> Rollout:
        try:
            arrays, meta = unpack_archive(Path(path))
        except Exception as e:
            raise AlpasimError(f"{path}: unreadable rollout file: {e}") from e
        if not meta or meta.get("rollout_version") != ROLLOUT_VERSION:
            raise AlpasimError(f"{path}: field 'rollout_version': expected {ROLLOUT_VERSION!r}")
        return cls(
            scene_id=meta["scene_id"], policy=meta["policy"], seed=meta["seed"], scene_hash=meta["scene_hash"],
            env_config=meta["env_config"], times=arrays["times"], steps=arrays["steps"],
            ego_state=arrays["ego_state"], controlled=arrays["controlled"], plans=arrays["plans"],
            agent_state=arrays["agent_state"], agent_valid=arrays["agent_valid"], samples=arrays.get("samples"),
            reasoning=meta.get("reasoning", []), latency_s=arrays["latency_s"],
            deadline_miss=arrays["deadline_miss"], policy_failure=arrays["policy_failure"],
            failure_messages=meta.get("failure_messages", []), extra=meta.get("extra", {}),
        )  # fmt: skip
