"""``alpasim-policy import`` and ``alpasim-policy scenarios {list,plot,rebuild-bundled}``: scene files from logs, and the bundled scenes.

Heavy imports (pyarrow, scipy, matplotlib) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpasim_policy.scenes.importers import IMPORTERS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert source logs (AV2 sensor / AV2 forecasting / CommonRoad XML) into scene files",
        description="Convert source logs into scene files (<out>/<scene id>.npz). AV2 sensor: a log folder "
        "(annotations.feather, city_SE3_egovehicle.feather, map/); AV2 forecasting: a scenario folder "
        "(scenario_*.parquet + log_map_archive_*.json); CommonRoad: a 2018b / 2020a .xml file.",
    )
    p.add_argument("source", choices=tuple(IMPORTERS), help="source format")
    p.add_argument("src", nargs="+", type=Path, help="log folders / scenario folders / XML files")
    p.add_argument("--out", type=Path, required=True, help="folder for the .npz scene files")
    p.add_argument("--t0-index", type=int, default=16, help="history steps before the first controlled step")
    p.add_argument("--max-egos", type=int, default=None, help="CommonRoad: at most this many egos per file")
    p.add_argument("--egos", default=None, help="CommonRoad: comma-separated obstacle ids to use as egos")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="shortest scene kept (default: the env's warm-up + one full scoring window: 5.6 s, 57 steps)",
    )
    p.add_argument("--verbose", action="store_true", help="list why each skipped candidate was not imported")
    p.set_defaults(func=_cmd_import)

    sc = sub.add_parser("scenarios", help="list, plot and rebuild bundled scenes")
    scs = sc.add_subparsers(dest="scenarios_command", required=True)
    ls = scs.add_parser("list", help="scene id, source, duration, agent count")
    ls.add_argument("--suite", default=None, help="suite name, YAML or folder (default: every scene file)")
    ls.set_defaults(func=_cmd_list)
    pl = scs.add_parser("plot", help="bird's-eye PNG of a scene (map, route, ego log, agents at t0)")
    pl.add_argument("scene", help="scene id or .npz path")
    pl.add_argument("--out", type=Path, required=True, help="PNG path")
    pl.add_argument("--radius", type=float, default=None, help="least half-size of the view (m)")
    pl.set_defaults(func=_cmd_plot)
    rb = scs.add_parser(
        "rebuild-bundled", help="re-import scenarios/raw into scenarios/scenes + suites/bundled.yaml"
    )
    rb.add_argument("--raw", type=Path, default=None, help="raw data folder (default: <scenarios root>/raw)")
    rb.add_argument("--root", type=Path, default=None, help="scenarios root to write (default: detected)")
    rb.set_defaults(func=_cmd_rebuild)


# ----------------------------------------------------------------------------- handlers


def _cmd_import(args: argparse.Namespace) -> int:
    import sys

    from alpasim_policy.scenes.format import save_scene
    from alpasim_policy.scenes.importers import import_sources
    from alpasim_policy.scenes.importers.common import min_scene_steps

    egos = [e.strip() for e in args.egos.split(",") if e.strip()] if args.egos else None
    rejected: list[str] = []
    min_steps = (
        min_scene_steps(args.t0_index) if args.min_seconds is None else int(round(args.min_seconds / 0.1)) + 1
    )
    scenes = import_sources(args.source, args.src, args.t0_index, args.max_egos, egos, rejected, min_steps)
    for sc in scenes:
        path = save_scene(sc, args.out / f"{sc.scene_id}.npz")
        print(f"{path}  {sc.duration:.1f} s  {len(sc.agents)} agents  {len(sc.map.lanes)} lanes")
    if not scenes:
        print(f"wrote no scene to {args.out}; why each candidate was rejected:", file=sys.stderr)
        for r in rejected or ["(no candidate found)"]:
            print(f"  {r}", file=sys.stderr)
        return 1
    if rejected and args.verbose:
        print("not imported:")
        for r in rejected:
            print(f"  {r}")
    elif rejected:
        print(f"({len(rejected)} candidate(s) not imported; --verbose lists why)")
    print(f"wrote {len(scenes)} scene(s) to {args.out}")
    return 0


def _scene_paths(suite: str | None) -> tuple[list[Path], list[tuple[str, str]]]:
    from alpasim_policy.scenes.suite import collect_scene_files, scenarios_root

    if suite:
        return collect_scene_files(suite)
    return sorted((scenarios_root() / "scenes").glob("*.npz")), []


def _cmd_list(args: argparse.Namespace) -> int:
    """One row per scene; a bad file or entry is reported on stderr and skipped (exit 1 at the end)."""
    import sys

    from alpasim_policy.errors import AlpasimError
    from alpasim_policy.scenes.format import load_scene

    rows = []
    paths, bad = _scene_paths(args.suite)
    for p in paths:
        try:
            s = load_scene(p)
        except AlpasimError as e:
            bad.append((str(p), str(e)))
            continue
        rows.append((s.scene_id, s.metadata.source_dataset, f"{s.duration:.1f}", str(len(s.agents))))
    head = ("scene_id", "source", "duration_s", "agents")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for where, reason in bad:
        print(f"error: skipped {where}: {reason}" if where not in reason else f"error: skipped {reason}",
              file=sys.stderr)  # fmt: skip
    return 1 if bad else 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.plot import plot_scene
    from alpasim_policy.scenes.suite import find_scene

    out = plot_scene(load_scene(find_scene(args.scene)), args.out, radius=args.radius)
    print(out)
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from alpasim_policy.scenes.bundled import rebuild_bundled
    from alpasim_policy.scenes.suite import scenarios_root

    root = args.root or scenarios_root()
    raw = args.raw or root / "raw"
    paths = rebuild_bundled(raw, root)
    for p in paths:
        print(p)
    print(f"rebuilt {len(paths)} bundled scenes under {root}")
    return 0
