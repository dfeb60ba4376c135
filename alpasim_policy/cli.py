"""The ``alpasim-policy`` command line: one parser assembled from each part's ``register(sub)``.

Each stage owns its subcommands in a small ``cli`` module exposing ``register(sub)``
(top-level commands) and optionally ``register_bench(bench_sub)`` (``bench <name>``).
Those modules import nothing heavy at import time, so ``--help`` stays fast; the
handlers import torch / ray / grpc only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from alpasim_policy.errors import AlpasimError

# Order here is the order in --help: scene -> env -> policy -> model -> scorer -> serve -> train -> report.
_COMMAND_MODULES = (
    "alpasim_policy.scenes.cli",
    "alpasim_policy.evaluate",
    "alpasim_policy.ray_backend",
    "alpasim_policy.sim.cli",
    "alpasim_policy.policies.cli",
    "alpasim_policy.model.cli",
    "alpasim_policy.caching",
    "alpasim_policy.scoring.cli",
    "alpasim_policy.serve.cli",
    "alpasim_policy.training.cli",
    "alpasim_policy.report.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpasim-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks; rows go to BENCHMARKS.md, last line is JSON")
    bench_sub = bench.add_subparsers(dest="bench_target", required=True)
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built in this checkout
                continue
            raise
        if hasattr(mod, "register"):
            mod.register(sub)
        if hasattr(mod, "register_bench"):
            mod.register_bench(bench_sub)
    return parser


def _setup_logging() -> None:
    """Library code logs (``logging.getLogger(__name__)``); the command line shows alpasim_policy's
    INFO and above on stderr, without touching other libraries' loggers."""
    logger = logging.getLogger("alpasim_policy")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AlpasimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are on disk and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
