"""The ``alpasim-policy`` command line: one parser assembled from the command modules of this package.

The top layer: each module here (``scenes``, ``eval``, ``cache``, ``score``, ``serve``, ``train``,
``report``, ``bench``) registers its subcommands with ``register(sub)`` and/or
``register_bench(bench_sub)`` and holds their handlers; the parts below keep only library
functions, and the benchmarks' bodies live in :mod:`alpasim_policy.bench`. Nothing heavy is imported
at registration, so ``--help`` stays fast; handlers import torch / ray / grpc only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from alpasim_policy.errors import AlpasimError

# Order here is the order in --help: scene -> eval -> cache -> score -> serve -> train -> report; then bench.
_COMMAND_MODULES = (
    "alpasim_policy.cli.scenes",
    "alpasim_policy.cli.eval",
    "alpasim_policy.cli.cache",
    "alpasim_policy.cli.score",
    "alpasim_policy.cli.serve",
    "alpasim_policy.cli.train",
    "alpasim_policy.cli.report",
    "alpasim_policy.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpasim-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks; rows go to BENCHMARKS.md, last line is JSON")
    bench_sub = bench.add_subparsers(dest="bench_target", required=True)
    for name in _COMMAND_MODULES:
        mod = importlib.import_module(name)
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
