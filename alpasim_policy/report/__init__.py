"""What people look at after a run: the static HTML report, rollout videos, the violations index.

The top layer (scene -> env -> policy -> model -> scorer -> report): it reads a run folder
(``rollouts/``, ``scenes.csv``, ``leaderboard.csv``, ``run.json``) and the scene files, and writes
``report.html``, ``videos/`` and ``violations/`` into it. Nothing below imports it.
"""

import sys
from pathlib import Path

from alpasim_policy.report.html import write_report

__all__ = ["after_eval", "write_report"]


def after_eval(run_dir: Path, *, videos: bool = False, written: set[Path] | None = None) -> None:
    """What ``eval`` does once the run is scored: videos (if asked; ``written``: those already
    written during the run, :class:`~alpasim_policy.report.video.BackgroundVideos`), violations
    index, report.html."""
    from alpasim_policy.report.video import write_videos, write_violations

    if videos:
        write_videos(run_dir, progress=True, skip=written)
    write_violations(run_dir)
    path = write_report(run_dir)
    print(f"report: {path}", file=sys.stderr)
