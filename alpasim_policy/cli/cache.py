"""``alpasim-policy cache build``: one metric cache per scene of a suite, locally or on a Ray cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

#: the names of :data:`alpasim_policy.caching.REFERENCES`, spelled out so that registering the flags
#: imports no scorer (shapely); ``tests/test_cli.py`` checks the two agree.
REFERENCE_NAMES = ("idm", "human")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cache", help="metric caches for the scorer")
    cs = c.add_subparsers(dest="cache_command", required=True)
    b = cs.add_parser(
        "build",
        help="build one metric cache per scene of a suite (map polygons, agent boxes, idm reference)",
        description="Build <out>/<scene_id>.npz for every scene of the suite, in parallel over scenes.",
    )
    b.add_argument("--suite", required=True, help="suite name or YAML path")
    b.add_argument("--out", type=Path, required=True, help="cache folder (e.g. metric_cache/)")
    b.add_argument("--workers", type=int, default=1, help="processes (one scene each)")
    b.add_argument(
        "--reference", choices=REFERENCE_NAMES, default="idm", help="progress reference for EP (default idm)"
    )
    b.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="build on a Ray cluster (scene bytes out, cache bytes back; this machine writes --out)")  # fmt: skip
    b.set_defaults(func=_cmd_cache_build)


def _cmd_cache_build(args: argparse.Namespace) -> int:
    if args.ray_address:  # fan out on Ray (alpasim_policy/ray_backend.py)
        from alpasim_policy.ray_backend import build_caches
        from alpasim_policy.scenes.suite import load_suite

        results = build_caches(load_suite(args.suite), args.out, reference=args.reference, address=args.ray_address)
    else:
        from alpasim_policy.caching import build_suite_caches

        results = build_suite_caches(args.suite, args.out, args.workers, args.reference)
    for scene, path, secs in results:
        print(f"{path}  ({secs:.2f} s)  <- {scene}")
    print(f"{len(results)} caches in {args.out}")
    return 0
