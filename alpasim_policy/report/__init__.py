"""What people look at after a run: the static HTML report, rollout videos, the violations index.

The top layer (scene -> env -> policy -> model -> scorer -> report): it reads a run folder
(``rollouts/``, ``scenes.csv``, ``leaderboard.csv``, ``run.json``) and the scene files, and writes
``report.html``, ``videos/`` and ``violations/`` into it. Nothing below imports it.
"""

from alpasim_policy.report.html import write_report

__all__ = ["write_report"]
