"""``alpasim-policy bench ray``: eval throughput on Ray with N workers vs serial, same suite, same process."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _warm(seconds: float) -> int:
    """A Ray task that imports what a rollout needs, then holds its worker a moment (so that
    ``n`` of them occupy ``n`` different workers)."""
    import os
    import time

    import alpasim_policy.evaluate  # noqa: F401
    import alpasim_policy.policies.baselines  # noqa: F401
    import alpasim_policy.sim.env  # noqa: F401

    time.sleep(seconds)
    return os.getpid()


def _warm_workers(n: int) -> None:
    import ray

    ray.get([ray.remote(num_cpus=1)(_warm).remote(0.5) for _ in range(max(1, n))])


def run(args: argparse.Namespace) -> int:
    """Serial then Ray on the same suite, same process, each into a fresh temp run folder."""
    import os
    import time

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.evaluate import evaluate
    from alpasim_policy.ray_backend import init_ray

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()[0]
        _warm(0.0)  # the same imports the Ray workers do before their clock starts
        t = time.perf_counter()
        serial = evaluate(args.suite, policies, Path(tmp) / "serial", show_progress=False)
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        init_ray(args.ray_address, args.workers)  # startup timed on its own; run_eval_tasks reuses it
        _warm_workers(args.workers)  # worker processes start and import the package: startup too
        init_s = time.perf_counter() - t
        t = time.perf_counter()
        res = evaluate(args.suite, policies, Path(tmp) / "ray", backend="ray", workers=args.workers,
                       ray_address=args.ray_address, show_progress=False)  # fmt: skip
        ray_s = time.perf_counter() - t
        load1 = os.getloadavg()[0]
    n = len(serial)
    errors = sum("error" in r for r in res)
    speed = serial_s / ray_s
    where = args.ray_address or f"local Ray, {args.workers} workers"
    write_rows([{
        "benchmark": f"eval throughput, {args.suite} x {len(policies)} baselines ({n} rollouts): {where} vs serial",
        "result": f"serial {n / serial_s:.2f} rollouts/s ({serial_s:.1f} s); Ray {n / ray_s:.2f} rollouts/s "
                  f"({ray_s:.1f} s, + {init_s:.1f} s Ray start); {errors} errors; load average {load0:.1f} -> {load1:.1f}",
        "ratio": f"{speed:.2f}x serial (target >= 1.8x); {speed * ray_s / (ray_s + init_s):.2f}x counting Ray start",
    }], args)  # fmt: skip
    print_summary(
        {"serial_s": serial_s, "ray_s": ray_s, "ray_init_s": init_s, "speedup": speed, "rollouts": n}
    )
    return 0
