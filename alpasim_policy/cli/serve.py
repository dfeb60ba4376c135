"""``alpasim-policy serve``: any registered policy as an AlpaSim egodriver gRPC server.

Nothing heavy is imported at module import time (``--help`` stays fast); grpc and the
policy load inside the handlers.
"""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from alpasim_policy.serve.service import EgodriverService, build_server, policy_factory

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
