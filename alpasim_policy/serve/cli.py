"""``alpasim-policy serve`` and ``alpasim-policy bench serve``.

Nothing heavy is imported at module import time (``--help`` stays fast); grpc and the
policy load inside the handlers.
"""

from __future__ import annotations

import argparse
from typing import Any


def policy_factory(spec: str, options: dict[str, Any]):
    """A zero-argument callable building a fresh policy per session (one instance per session).

    Fails now, at start-up, on a bad name or option, or on a policy that cannot drive from the
    egodriver contract (:func:`~alpasim_policy.serve.service.check_servable`).
    """
    from alpasim_policy.policies.registry import make_policy
    from alpasim_policy.serve.service import check_servable

    check_servable(make_policy(spec, **options), spec)
    return lambda: make_policy(spec, **options)


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from alpasim_policy.serve.service import EgodriverService, build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from alpasim_policy.policies.registry import parse_options, shorthand_options

    options = {**shorthand_options(args), **parse_options(args.policy_option)}
    stop = threading.Event()
    service = EgodriverService(
        policy_factory(args.policy, options),
        name=args.policy,
        min_history=args.min_history,
        on_shutdown=stop.set,
    )
    server, port = build_server(service, host=args.host, port=args.port, max_workers=args.max_workers)
    # SIGTERM (docker stop, AlpaSim's teardown) stops as cleanly as Ctrl-C: in-flight calls get
    # `--grace` seconds to finish, then the process exits 0.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"serving {args.policy} (egodriver.EgodriverService) on {args.host}:{port}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop(grace=args.grace).wait()
    print("server stopped", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a policy as an AlpaSim egodriver gRPC server (egodriver.EgodriverService)",
        description="Serve any registered policy over AlpaSim's egodriver gRPC contract. "
        "One policy instance per session; SIGTERM shuts down gracefully.",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="policy name as in eval --policy (idm, alpamayo, package.module:Class)",
    )
    p.add_argument(
        "--policy-option", action="append", metavar="KEY=VALUE", help="policy constructor option (repeatable)"
    )
    p.add_argument("--port", type=int, default=50051, help="TCP port (0: pick a free one and print it)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to accept remote simulators)")
    p.add_argument(
        "--min-history",
        type=int,
        default=16,
        help="history steps (0.1 s apart) that must be observed before drive answers a plan; "
        "older ones are extrapolated (default 16: wait for 1.5 s of real history)",
    )
    p.add_argument("--max-workers", type=int, default=16, help="gRPC worker threads")
    from alpasim_policy.policies.registry import add_shorthand_arguments

    add_shorthand_arguments(p)
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get at shutdown")
    p.set_defaults(func=_serve)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("serve", help="egodriver drive round-trip overhead and 32 concurrent sessions")
    p.add_argument("--ticks", type=int, default=100, help="drive calls per measurement / per session")
    p.add_argument("--sessions", type=int, default=32, help="concurrent sessions")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--cameras", type=int, default=4)
    from alpasim_policy.bench import add_output_arguments

    add_output_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from alpasim_policy.serve.bench import run_bench

        return run_bench(args)

    p.set_defaults(func=run)
