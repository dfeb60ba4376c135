"""CLI of the report stage: ``report RUN``, ``video RUN --scene S --policy P``, ``bench report|video``.

Heavy imports (matplotlib, opencv, the scenes) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
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


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "report",
        help="report.html generation time on a run (goal <= 5 s) and video writing time vs rollout time "
        "(goal <= 20 %%)",
    )
    p.add_argument("--suite", default="bundled")
    p.add_argument("--policies", default="log_replay,idm,constant_velocity")
    p.add_argument("--video-scenes", type=int, default=3, help="rollouts to time video writing on")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temp folder)")
    p.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"), help="file the rows go to")
    p.set_defaults(func=_cmd_bench)


def after_eval(run_dir: Path, *, videos: bool = False) -> None:
    """What ``eval`` does once the run is scored: videos (if asked), violations index, report.html."""
    from alpasim_policy.report.html import write_report
    from alpasim_policy.report.video import write_videos, write_violations

    if videos:
        write_videos(run_dir, progress=True)
    write_violations(run_dir)
    path = write_report(run_dir)
    print(f"report: {path}", file=sys.stderr)


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


def _cmd_bench(args: argparse.Namespace) -> int:
    from alpasim_policy.report.bench import run_bench

    return run_bench(args)
