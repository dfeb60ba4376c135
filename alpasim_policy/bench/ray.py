"""``alpasim-policy bench ray``: eval throughput on Ray with N workers vs serial, same suite, same process.

Three measurements per repeat, one after the other on the same machine: the serial backend; two
plain Python processes (forked before Ray starts) that each run half the scenes serially, with
no Ray at all, the ceiling this machine allows two workers at that moment (on a shared machine,
well below 2x); and ``--backend ray`` with N workers. The Ray throughput is timed from the eval
call to its return on a Ray that is already up with its workers warmed; starting Ray (and
warming the workers) and stopping it are timed apart and reported, with the ratio counting them. The row gives every repeat's ratios and the 1-minute load average, because on a
shared 2-core machine the other processes' load moves these numbers more than the code does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _warm(seconds: float) -> int:
    """A Ray task that imports what a rollout needs, then holds its worker a moment (so that
    ``n`` of them occupy ``n`` different workers)."""
    import alpasim_policy.evaluate  # noqa: F401
    import alpasim_policy.policies.baselines  # noqa: F401
    import alpasim_policy.ray_backend  # noqa: F401
    import alpasim_policy.sim.env  # noqa: F401

    time.sleep(seconds)
    return os.getpid()


def _warm_workers(n: int) -> None:
    import ray

    ray.get([ray.remote(num_cpus=1)(_warm).remote(0.5) for _ in range(max(1, n))])


def _halves(suite: str, policies: list[str], n: int) -> list[list[str]]:
    """The suite's scene files split into ``n`` parts of about equal ticks (longest first)."""
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import collect_scene_files

    files, _ = collect_scene_files(suite, [])
    cost = sorted(((load_scene(f).num_steps, str(f)) for f in files), reverse=True)
    parts: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for c, f in cost:
        k = load.index(min(load))
        parts[k].append(f)
        load[k] += c
    return parts


def _eval_part(scenes: list[str], policies: list[str], out: str) -> int:
    from alpasim_policy.evaluate import evaluate

    return len(evaluate(None, policies, out, scenes=scenes, show_progress=False))


def run(args: argparse.Namespace) -> int:
    """Serial, two plain processes, then Ray, on the same suite, each into a fresh temp run folder."""
    import multiprocessing as mp

    import ray

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.evaluate import evaluate
    from alpasim_policy.ray_backend import init_ray

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    repeats = max(1, int(getattr(args, "repeats", 1)))
    parts = _halves(args.suite, policies, args.workers)
    _warm(0.0)  # the same imports the Ray workers do before their clock starts
    # the plain processes are forked now, before Ray starts threads in this process
    pool = mp.get_context("fork").Pool(args.workers)
    pool.map(_warm, [0.2] * args.workers)
    serial_s, plain_s, ray_s, init_s, stop_s, loads, errors, n = [], [], [], [], [], [], 0, 0
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                loads.append(os.getloadavg()[0])
                t = time.perf_counter()
                serial = evaluate(args.suite, policies, Path(tmp) / "serial", show_progress=False)
                serial_s.append(time.perf_counter() - t)
                n = len(serial)
                t = time.perf_counter()
                jobs = [pool.apply_async(_eval_part, (p, policies, str(Path(tmp) / f"plain{k}")))
                        for k, p in enumerate(parts)]  # fmt: skip
                assert sum(j.get() for j in jobs) == n
                plain_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                init_ray(args.ray_address, args.workers)  # startup timed on its own
                _warm_workers(args.workers)  # worker processes start and import the package: startup too
                init_s.append(time.perf_counter() - t)
                t = time.perf_counter()  # eval reuses this connection and leaves it open
                res = evaluate(args.suite, policies, Path(tmp) / "ray", backend="ray", workers=args.workers,
                               ray_address=args.ray_address, show_progress=False)  # fmt: skip
                ray_s.append(time.perf_counter() - t)
                t = time.perf_counter()  # stopped before the next serial run, so that one runs without Ray
                ray.shutdown()
                stop_s.append(time.perf_counter() - t)
                errors += sum("error" in x for x in res)
                loads.append(os.getloadavg()[0])
    finally:
        pool.terminate()
    ratios = [s / r for s, r in zip(serial_s, ray_s, strict=True)]
    ceil = [s / p for s, p in zip(serial_s, plain_s, strict=True)]
    speed = statistics.median(ratios)
    where = args.ray_address or f"local Ray, {args.workers} workers"
    ms = statistics.median(serial_s)
    mr = statistics.median(ray_s)
    mi, mt = statistics.median(init_s), statistics.median(stop_s)
    write_rows([{
        "benchmark": f"eval throughput, {args.suite} x {len(policies)} baselines ({n} rollouts): {where} vs serial",
        "result": f"serial {n / ms:.2f} rollouts/s ({ms:.1f} s); Ray {n / mr:.2f} rollouts/s ({mr:.1f} s, "
                  f"+ {mi:.1f} s Ray start + {mt:.1f} s stop, timed apart); {args.workers} plain processes without Ray "
                  f"{statistics.median(ceil):.2f}x serial (this machine's ceiling then); "
                  f"per repeat Ray/serial {', '.join(f'{x:.2f}x' for x in ratios)}, plain "
                  f"{', '.join(f'{x:.2f}x' for x in ceil)}; {errors} errors; load average "
                  f"{min(loads):.1f}-{max(loads):.1f} (median of {repeats})",
        "ratio": f"{speed:.2f}x serial (target >= 1.8x); {speed / statistics.median(ceil):.2f} of the plain-process "
                 f"ceiling; {ms / (mr + mi + mt):.2f}x counting Ray start and stop",
    }], args)  # fmt: skip
    print_summary({"serial_s": serial_s, "plain_s": plain_s, "ray_s": ray_s, "ray_init_s": init_s, "ray_stop_s": stop_s,
                   "speedup": ratios, "plain_speedup": ceil, "rollouts": n, "load": loads})  # fmt: skip
    return 0
