"""``alpasim-policy bench <name>``: the benchmarks' flags, one place; their bodies are :mod:`alpasim_policy.bench`.

Every benchmark takes the same output flags: ``--out FILE`` (the markdown file its rows are appended
to, default ``BENCHMARKS.md``) and ``--no-write`` (print only). The body module
(``alpasim_policy.bench.<name>``) is imported only when its benchmark runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The output flags every ``bench`` command shares: ``--out FILE`` and ``--no-write``."""
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file the rows are appended to")
    parser.add_argument("--no-write", action="store_true", help="print only, do not append rows")
    # the name two benchmarks used for --out before the flags were made uniform; kept for old scripts
    parser.add_argument("--benchmarks", dest="out", help=argparse.SUPPRESS)


def _body(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler of ``bench <name>``: ``alpasim_policy.bench.<name>.run``, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"alpasim_policy.bench.{name}").run(args)

    return run


def _add(bench_sub: argparse._SubParsersAction, name: str, module: str, **kw: str) -> argparse.ArgumentParser:
    p = bench_sub.add_parser(name, **kw)
    p.set_defaults(func=_body(module))
    return p


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    # Order: scene -> env -> policy -> model -> scorer -> serve -> report -> ray.
    p = _add(bench_sub, "scenes", "scenes", help="median load time per bundled scene (goal < 50 ms)")
    p.add_argument("--suite", default="bundled")
    p.add_argument("--repeats", type=int, default=5)
    add_output_arguments(p)

    p = _add(
        bench_sub, "env", "env", help="env ticks/s without rendering (goal >= 2,000), with BEV, per camera"
    )
    p.add_argument("--suite", default="bundled")
    p.add_argument("--render-ticks", type=int, default=60, help="ticks timed with BEV / cameras")
    p.add_argument("--camera-preset", default="alpamayo4")
    p.add_argument("--camera-width", type=int, default=None, help="default: the preset's resolution")
    p.add_argument("--camera-height", type=int, default=None)
    add_output_arguments(p)

    p = _add(bench_sub, "policy", "policy",
             help="Alpamayo policy in closed loop: ticks/s, latency breakdown, single/multi x first/scored")  # fmt: skip
    p.add_argument("--suite", default="bundled", help="suite name or YAML path")
    p.add_argument("--max-scenes", type=int, default=4, help="evenly spaced scenes of the suite (0 = all)")
    p.add_argument("--preset", default="tiny", help="tiny | small | alpamayo-r1-10b")
    p.add_argument("--weights", default=None, help="local weights directory (default: random weights)")
    p.add_argument("--samples", type=int, default=6, help="trajectory samples K per tick")
    p.add_argument("--cot-tokens", type=int, default=40, help="forced CoC length (0 = free)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reasoning", default="single,multi", help="reasoning modes to compare")
    p.add_argument("--select", default="first,scored", help="selection methods to compare")
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=100.0,
        help="budget of the deadline variants (select=first under each --latency-modes)",
    )
    p.add_argument("--latency-modes", default="ignore,delay",
                   help="deadline variants to add (ignore | delay; empty = none)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="keep the rollouts here (default: a temporary dir)")
    add_output_arguments(p)

    p = _add(bench_sub, "coc", "coc",
             help="CoC vs the auto-labeler on never-trained scenes: causal-factor and meta-action match, consistency")  # fmt: skip
    p.add_argument("--suite", default="bundled", help="suite name or YAML path (never trained on)")
    p.add_argument("--scenes", default=None, help="comma-separated scene ids of the suite (default: all)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--weights", default=None, help="checkpoint folder (default: the shipped one; 'random')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ablations", action="store_true",
                   help="also drive each step with the frames reversed in time, with grey images, without brake lamps and with a 1.5 m/s faster history (5x the time)")  # fmt: skip
    add_output_arguments(p)

    p = _add(bench_sub, "train", "train",
             help="imitation step time: one forward per sample vs --batched, side by side on the same samples")  # fmt: skip
    p.add_argument("--data", type=str, nargs="*", default=None,
                   help="training shard folders (default: the env driving bundled scenes, --samples of them)")  # fmt: skip
    p.add_argument("--suite", default="bundled", help="scenes driven when --data is not given")
    p.add_argument("--samples", type=int, default=32, help="samples drawn from (default data: driven)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=4, help="samples per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (per-sample, batched, ...)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    add_output_arguments(p)

    p = _add(
        bench_sub,
        "model",
        "model",
        help="Alpamayo model tick latency: stages, single vs multi, graph vs eager",
    )
    p.add_argument(
        "--preset", default="tiny", help="tiny | bench3m | small | alpamayo-r1-10b (random weights)"
    )
    p.add_argument("--weights", default=None, help="local weights directory instead of random weights")
    p.add_argument("--samples", type=int, default=6, help="trajectory samples K per tick")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cot-tokens", type=int, default=40, help="forced chain-of-causation length (tokens)")
    p.add_argument("--repeats", type=int, default=5, help="timed ticks per configuration (median reported)")
    p.add_argument("--speculative", default=None, metavar="G1,G2,...",
                   help="time the decode stage alone: transformers loop vs static-KV loop vs speculative "
                        "decoding at each gamma (greedy, token-identical; acceptance rates); with "
                        "--nvlabs-cmd one gamma: this side's tick decodes speculatively")  # fmt: skip
    p.add_argument("--draft", default=None,
                   help="draft-model folder for --speculative (default: prompt lookup)")  # fmt: skip
    p.add_argument("--inputs", default=None,
                   help="with --speculative: training shards (.npz file or folder) as inputs, not synthetic")  # fmt: skip
    p.add_argument("--input-count", type=int, default=16, help="ticks read from --inputs")
    p.add_argument("--input-start", type=int, default=0,
                   help="ticks of --inputs skipped first (held-out tail)")  # fmt: skip
    p.add_argument("--recall", type=int, default=0,
                   help="without --draft: prompt-lookup drafts also recall the last N CoCs of the pass "
                        "(consecutive --inputs ticks, as the policy does within an episode)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2, help="untimed ticks first (graph capture, allocator)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--baseline-src",
        default=None,
        help="another source tree (e.g. `git archive` of an older commit): the single-reasoning tick "
        "of both trees is timed in alternating subprocesses and a before/after row written",
    )
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds for --baseline-src")
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (random weights; default: the preset's)")
    p.add_argument(
        "--modes",
        default="multi,eager,dynamic",
        help="comparisons beside the single-reasoning tick: multi (NVlabs' K CoCs), eager (static loop, "
        "no graph), dynamic (HF cache), compile (the lean loop under torch.compile); empty = none",
    )
    p.add_argument(
        "--no-flops", dest="flops", action="store_false", help="skip FLOPs per stage and the bound"
    )
    p.add_argument(
        "--nvlabs-cmd",
        default=None,
        help="side by side with NVlabs' own code: a command running it in a scratch env (see bench/model.py "
        "run_nvlabs_comparison and BENCHMARKS.md); needs --weights (an NVlabs-written checkpoint)",
    )
    p.add_argument("--nvlabs-samples", default="6,1", help="K values for --nvlabs-cmd")
    p.add_argument("--closed-loop", action="store_true",
                   help="with --nvlabs-cmd: this side runs consecutive closed-loop ticks (each camera's "
                        "frames shift by one) with the per-frame vision cache on")  # fmt: skip
    p.add_argument(
        "--image-hw", default=None, help="H,W model input size override for --weights (e.g. 224,224)"
    )
    add_output_arguments(p)

    p = _add(bench_sub, "gpu", "gpu",
             help="issue 15's GPU tick in one time-boxed run: stages p50/p95, graph vs eager, speculative vs plain")  # fmt: skip
    p.add_argument("--preset", default="alpamayo-r1-10b", help="model preset (random weights)")
    p.add_argument("--device", default="cuda", help="cuda (or cpu for the CI check)")
    p.add_argument("--dtype", default="bf16", help="fp32 | bf16 | fp16")
    p.add_argument("--samples", type=int, default=6, help="trajectory samples K")
    p.add_argument("--cot-tokens", type=int, default=40, help="forced CoC length")
    p.add_argument("--repeats", type=int, default=20, help="timed ticks per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed ticks first (graph capture)")
    p.add_argument("--gammas", default="2,4,8", help="speculative draft lengths (when the tree has them)")
    p.add_argument("--closed-loop-gamma", type=int, default=4,
                   help="speculative gamma of the closed-loop tick section (0: plain decode)")  # fmt: skip
    p.add_argument(
        "--budget-s", type=float, default=420.0, help="skip sections once this many seconds passed"
    )
    p.add_argument("--json", default="gpu_tick.json", help="result file (written after every section)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (cpu device)")
    p.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up (CI / smoke)")
    add_output_arguments(p)

    p = _add(bench_sub, "scorer", "scorer",
             help="4096 proposals x 41 states on one bundled scene (goal <= 2 s); cache build per scene")  # fmt: skip
    p.add_argument("--suite", default="bundled")
    p.add_argument("--scene", default=None, help="scene for the proposal benchmark (default: most agents)")
    p.add_argument("--proposals", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    add_output_arguments(p)
    p.add_argument(
        "--navsim-cmd",
        default=None,
        help="command that times NAVSIM's own simulate + score on the 3-lane case file appended as its last "
        "argument and prints a JSON line (run in a scratch env; see bench/scorer.py)",
    )
    p.add_argument("--navsim-only", action="store_true", help="only the side-by-side run against NAVSIM")

    p = _add(
        bench_sub, "serve", "serve", help="egodriver drive round-trip overhead and 32 concurrent sessions"
    )
    p.add_argument("--ticks", type=int, default=100, help="drive calls per measurement / per session")
    p.add_argument("--sessions", type=int, default=32, help="concurrent sessions")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--cameras", type=int, default=4)
    add_output_arguments(p)

    p = _add(bench_sub, "report", "report",
             help="report.html generation time on a run (goal <= 5 s) and video writing time vs rollout time "
             "(goal <= 20 %%)")  # fmt: skip
    p.add_argument("--suite", default="bundled")
    p.add_argument("--policies", default="log_replay,idm,constant_velocity")
    p.add_argument("--video-scenes", type=int, default=3, help="rollouts to time video writing on")
    p.add_argument("--repeats", type=int, default=3, help="eval with / without background videos rounds")
    p.add_argument("--run-dir", default=None, help="scored run folder to reuse (default: a temp folder)")
    add_output_arguments(p)

    p = _add(bench_sub, "ray", "ray",
             help="eval throughput: Ray with N workers vs serial on the baselines (goal >= 1.8x with 2 workers)")  # fmt: skip
    p.add_argument("--suite", default="bundled")
    p.add_argument("--policies", default="log_replay,idm,constant_velocity")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray-address", default=None, help="measure on this cluster instead of a local Ray")
    p.add_argument("--repeats", type=int, default=3,
                   help="serial / plain processes / Ray rounds, one after the other (median reported)")  # fmt: skip
    add_output_arguments(p)
