"""Placeholder until the scorer lands: ``score_run(run_dir)`` scores every rollout in a run dir."""

from __future__ import annotations

from pathlib import Path


def score_run(run_dir: str | Path) -> None:
    """Replaced by the scorer (issue 4); returns None meaning 'no scores yet'."""
    return None
