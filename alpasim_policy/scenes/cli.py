"""CLI of the scenes stage: ``import``, ``scenarios {list,plot,rebuild-bundled}`` and ``bench scenes``.

Heavy imports (pyarrow, scipy, matplotlib) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpasim_policy.bench import add_output_arguments

#: source format -> (module, importer function, whether it takes the ego choice options)
IMPORTERS: dict[str, tuple[str, str, bool]] = {
    "av2-sensor": ("alpasim_policy.scenes.importers.av2", "import_av2_sensor", False),
    "av2-forecasting": ("alpasim_policy.scenes.importers.av2", "import_av2_forecasting", False),
    "commonroad": ("alpasim_policy.scenes.importers.commonroad", "import_commonroad", True),
}


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


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("scenes", help="median load time per bundled scene (goal < 50 ms)")
    p.add_argument("--suite", default="bundled")
    p.add_argument("--repeats", type=int, default=5)
    add_output_arguments(p)
    p.set_defaults(func=_cmd_bench)


# ----------------------------------------------------------------------------- handlers


def import_sources(source: str, srcs: list[Path], t0_index: int = 16, max_egos: int | None = None,
                   egos: list[str] | None = None, rejected: list[str] | None = None,
                   min_steps: int | None = None) -> list:  # fmt: skip
    """Run one importer over several sources; returns the scenes in order.

    Why a candidate or a source gave no scene is appended to ``rejected``; ``min_steps``
    (default: warm-up + one scoring window, :func:`~alpasim_policy.scenes.importers.common.min_scene_steps`)
    is the shortest scene kept.
    """
    import importlib

    from alpasim_policy.errors import ConfigError

    if source not in IMPORTERS:
        raise ConfigError(f"unknown source format {source!r}; choose from {list(IMPORTERS)}")
    module, name, takes_egos = IMPORTERS[source]
    importer = getattr(importlib.import_module(module), name)
    options = {"egos": egos, "max_egos": max_egos} if takes_egos else {}
    scenes = []
    for src in srcs:
        scenes += importer(src, t0_index=t0_index, min_steps=min_steps, rejected=rejected, **options)
    return scenes


def _cmd_import(args: argparse.Namespace) -> int:
    import sys

    from alpasim_policy.scenes.format import save_scene
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


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.geometry import MapIndex
    from alpasim_policy.scenes.suite import load_suite

    paths = load_suite(args.suite)
    load_ms, index_ms = [], []
    for p in paths:
        load_scene(p)  # warm the page cache: we time parsing, not the disk
        t_load, t_idx = [], []
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            s = load_scene(p)
            t_load.append(time.perf_counter() - t)
            t = time.perf_counter()
            MapIndex(s)
            t_idx.append(time.perf_counter() - t)
        load_ms.append(1e3 * float(np.median(t_load)))
        index_ms.append(1e3 * float(np.median(t_idx)))
    med, worst = float(np.median(load_ms)), float(np.max(load_ms))
    summary = {
        "benchmark": "scenes",
        "suite": args.suite,
        "scenes": len(paths),
        "median_load_ms": round(med, 2),
        "max_load_ms": round(worst, 2),
        "median_map_index_ms": round(float(np.median(index_ms)), 2),
        "goal_ms": 50.0,
    }
    write_rows(
        [
            {
                "benchmark": f"scene load ({args.suite}, {len(paths)} scenes)",
                "result": f"median {med:.1f} ms, max {worst:.1f} ms per scene "
                f"(+ MapIndex median {np.median(index_ms):.1f} ms)",
                "ratio": f"{med / 50.0:.2f} of the 50 ms goal",
            }
        ],
        args,
    )
    print_summary(summary)
    return 0
