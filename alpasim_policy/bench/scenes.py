"""``alpasim-policy bench scenes``: median load time of a suite's scene files and their map index (goal < 50 ms)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
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
