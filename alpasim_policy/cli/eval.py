"""``alpasim-policy eval``: closed-loop rollouts of policies over a suite, scored, with the report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="closed-loop rollouts of policies over a suite, then the leaderboard")
    p.add_argument("--suite", default=None,
                   help="suite name (scenarios/suites/NAME.yaml), a suite YAML (scene ids or paths), "
                        "or a folder of scene files")  # fmt: skip
    p.add_argument("--scenes", nargs="+", default=[], metavar="PATH",
                   help="scene files or folders of them (with or instead of --suite)")  # fmt: skip
    p.add_argument("--cache", default="auto",
                   help="metric caches for scoring: 'auto' (default: the package's, else built in "
                        "memory), 'none', or a folder (strict)")  # fmt: skip
    p.add_argument("--policy", required=True, help="comma-separated policy names (log_replay,idm,...)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-config", default=None, help="envs/X.yaml or a shipped name (default, reactive)")
    p.add_argument("--workers", type=int, default=1, help="Ray CPUs (with --backend ray)")
    p.add_argument("--backend", choices=("serial", "ray"), default="serial")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join an existing Ray cluster (implies --backend ray); scenes and results travel "
                        "through Ray, only this machine writes the run folder")  # fmt: skip
    p.add_argument("--policy-option", action="append", default=[], metavar="[POLICY.]KEY=VALUE",
                   help="constructor option (repeatable): KEY goes to every policy that takes it, "
                        "POLICY.KEY to that policy only")  # fmt: skip
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="per-tick budget for every policy: a late plan is dropped and the previous one "
                        "kept (shifted in time); the miss is counted")  # fmt: skip
    p.add_argument("--latency-mode", choices=("ignore", "delay"), default="ignore",
                   help="with --deadline-ms: 'delay' makes measured latency cost simulated time")  # fmt: skip
    p.add_argument("--no-score", action="store_true", help="write rollouts only, skip the scorer")
    p.add_argument("--profile", choices=("project", "navsim"), default="project",
                   help="scoring profile of the leaderboard (navsim: NAVSIM's scorer, quirks included)")  # fmt: skip
    p.add_argument("--videos", action="store_true",
                   help="also write RUN/videos/<policy>/<scene>.mp4 (BEV, plan, samples, cameras, events)")  # fmt: skip
    from alpasim_policy.policies.registry import add_shorthand_arguments

    add_shorthand_arguments(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    videos = None
    if args.videos and not args.no_score:  # each video drawn by a second process as its rollout lands
        from alpasim_policy.report.video import BackgroundVideos

        videos = BackgroundVideos(Path(args.out))
    try:
        return _eval(args, videos)
    finally:
        if videos is not None:
            videos.close()


def _eval(args: argparse.Namespace, videos) -> int:
    """The eval command; ``videos``: a :class:`~alpasim_policy.report.video.BackgroundVideos` or None."""
    from alpasim_policy.evaluate import _jsonable, _versions, evaluate
    from alpasim_policy.io import atomic_write_json
    from alpasim_policy.policies.registry import parse_options, shorthand_options

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    options = {**shorthand_options(args), **parse_options(args.policy_option)}
    deadline = (
        {"deadline_ms": args.deadline_ms, "latency_mode": args.latency_mode} if args.deadline_ms else None
    )
    out = Path(args.out)
    if args.ray_address:  # a wrong address fails here, in seconds, before any progress bar
        from alpasim_policy.ray_backend import check_reachable

        check_reachable(args.ray_address)
    t0 = time.time()
    cache = None if args.cache == "none" else args.cache
    results = evaluate(
        args.suite, policies, out, scenes=args.scenes, cache_dir=cache, seed=args.seed,
        env_config=args.env_config, workers=args.workers,
        backend="ray" if args.ray_address else args.backend, policy_options=options,
        deadline=deadline, ray_address=args.ray_address,
        on_rollout=videos.submit if videos is not None else None,
    )  # fmt: skip
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"error: {r['policy']} on {r['scene_id']}: {r['error']}", file=sys.stderr)
    failures = sum(r.get("failures", 0) for r in results)
    if failures:
        print(
            f"note: {failures} policy failures recorded (see failure_messages in the rollouts)",
            file=sys.stderr,
        )
    run = {
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "policies": policies,
        "policy_options": _jsonable(options),
        "versions": _versions(),
        "started": t0,
        "wall_s": time.time() - t0,
        "rollouts": list(results),
        "scenes": results.scenes,
        "scene_files": {s["scene_id"]: s["path"] for s in results.scenes},
        "skipped_scenes": results.skipped_scenes,
        "cache_notes": results.cache_notes,
    }
    atomic_write_json(out / "run.json", _jsonable(run))
    score_errors: list[str] = []
    if not args.no_score and results.scenes:
        from alpasim_policy.caching import IDM_REFERENCE
        from alpasim_policy.scoring.report import score_run

        board = score_run(out, cache_dir=cache, reference=IDM_REFERENCE, profile=args.profile)
        score_errors = board.errors
        print(board)
        # report stage: videos if asked, violations index, RUN/report.html
        from alpasim_policy.report import after_eval

        # the videos drawn during the run are done (scoring overlapped the last ones); the rest now
        written = videos.finish() if videos is not None else set()
        after_eval(out, videos=args.videos, written=written)
    if results.skipped_scenes:
        print(
            f"error: {len(results.skipped_scenes)} scene(s) skipped (listed in {out / 'run.json'}, "
            "'skipped_scenes'):",
            file=sys.stderr,
        )
        for sk in results.skipped_scenes:
            print(f"  {sk['reason']}", file=sys.stderr)
    return 1 if errors or score_errors or results.skipped_scenes else 0
