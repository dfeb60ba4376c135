"""``alpasim-policy report RUN`` and ``alpasim-policy video RUN``: the static HTML page and rollout videos of a run.

Heavy imports (matplotlib, opencv, the scenes) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "report",
        help="write RUN/report.html (static page: leaderboard, legend, failures, plots, scenes, videos)",
        description="Write RUN/report.html from a scored run folder (eval writes it too).",
    )
    r.add_argument("run_dir", type=Path)
    r.add_argument("--violations", action="store_true", help="also (re)write RUN/violations/")
    r.set_defaults(func=_cmd_report)
    v = sub.add_parser(
        "video",
        help="render rollout videos (BEV, plan, samples, cameras, reasoning, event timeline) to RUN/videos/",
        description="Write RUN/videos/<policy>/<scene>.mp4 for the chosen rollouts (default: all).",
    )
    v.add_argument("run_dir", type=Path)
    v.add_argument("--scene", action="append", default=None, help="scene id (repeatable; default all)")
    v.add_argument("--policy", action="append", default=None, help="policy (repeatable; default all)")
    v.add_argument("--no-cameras", action="store_true", help="BEV only, even when cameras can be drawn")
    v.set_defaults(func=_cmd_video)


def _cmd_report(args: argparse.Namespace) -> int:
    from alpasim_policy.report.html import write_report

    if args.violations:
        from alpasim_policy.report.video import write_violations

        write_violations(args.run_dir)
    print(write_report(args.run_dir))
    return 0


def _cmd_video(args: argparse.Namespace) -> int:
    from alpasim_policy.report.video import write_videos

    paths = write_videos(
        args.run_dir, scenes=args.scene, policies=args.policy, cameras=not args.no_cameras, progress=True
    )
    for p in paths:
        print(p)
    return 0
