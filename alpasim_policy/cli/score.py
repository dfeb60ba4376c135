"""``alpasim-policy score RUN``: score a run folder's rollouts closed loop and write its leaderboard.

Heavy imports happen inside the handlers so ``alpasim-policy --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "score",
        help="score the rollouts of a run folder (writes scenes.csv, leaderboard.csv/.md)",
        description="Score DIR/rollouts/<policy>/*.npz closed-loop and write the leaderboard into DIR.",
    )
    s.add_argument("run_dir", type=Path)
    s.add_argument("--cache", default="auto", help="metric cache folder, 'auto' (default) or 'none'")
    s.add_argument("--rebuild", action="store_true", help="rebuild stale or corrupt caches in --cache")
    s.add_argument("--profile", choices=("project", "navsim"), default="project",
                   help="scoring profile: project (default) or navsim (NAVSIM's scorer, quirks included)")  # fmt: skip
    s.set_defaults(func=_cmd_score)


# ----------------------------------------------------------------------------- handlers


def _cmd_score(args: argparse.Namespace) -> int:
    from alpasim_policy.caching import IDM_REFERENCE
    from alpasim_policy.scoring.report import score_run

    cache = None if args.cache == "none" else args.cache
    board = score_run(
        args.run_dir, cache_dir=cache, rebuild=args.rebuild, reference=IDM_REFERENCE, profile=args.profile
    )
    print(board)
    return 1 if board.errors else 0  # rollouts that could not be scored were reported on stderr
