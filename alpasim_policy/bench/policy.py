"""``alpasim-policy bench policy``: the Alpamayo policy driving real scenes in closed loop.

What it measures, in one run (so the variants share the machine's state):

* closed-loop ticks/s of the whole loop (env step + camera rendering + policy) with the tiny
  preset on CPU, and the share of the tick spent in the policy;
* the per-tick latency breakdown, medians over every controlled tick, from the model's own
  stage timings (preprocess, vision, prefill, decode, diffusion, post) plus the adapter's frame
  handling and sample selection;
* side by side: ``single`` vs ``multi`` reasoning and ``first`` vs ``scored`` selection, each
  with its closed-loop EPDMS / PDMS (the scorer's closed-loop mode on the rollouts) and latency.
* the real-time budget: the same model under ``--deadline-ms`` (100) with each of
  ``--latency-modes`` (``ignore``: a late plan is dropped and the previous one kept; ``delay``: the
  plan takes effect after its measured latency), so a slow configuration pays in score.

Why a forced chain-of-causation length (``--cot-tokens``, default 40): with random weights the
CoC would run to ``max_cot_tokens`` in some samples and stop early in others, so single and multi
would decode different amounts of text; forcing it compares the same work, as the model
benchmark does. The default scene set is a spread of ``--max-scenes`` scenes of the suite
(evenly spaced in suite order) to keep the run to minutes on 2 cores; ``--max-scenes 0`` runs
the whole suite. The rows name the scenes used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SUMMARY_KEYS = (
    "ticks", "ticks_per_s", "latency_p50_ms", "latency_p95_ms", "latency_max_ms", "deadline_miss_rate",
    "EPDMS", "PDMS", "collisions_at_fault", "stages_ms", "non_first_rate", "fallback_rate",
)  # fmt: skip
STAGES = ("preprocess", "vision", "prefill", "decode", "diffusion", "post", "frames", "selection")


class _Recorder:
    """Passes a policy through and keeps every tick's ``extra`` (the model's stage timings)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.name = policy.name
        self.camera_preset = policy.camera_preset
        self.camera_size = getattr(policy, "camera_size", None)
        self.extras: list[dict] = []

    def reset(self, **kw: Any) -> None:
        self.policy.reset(**kw)

    def act(self, observation: dict) -> Any:
        out = self.policy.act(observation)
        self.extras.append(out.extra)
        return out


def pick_scenes(paths: list[Path], max_scenes: int) -> list[Path]:
    """``max_scenes`` evenly spaced scenes of the suite (all when 0 or more than there are)."""
    if max_scenes <= 0 or max_scenes >= len(paths):
        return list(paths)
    if max_scenes == 1:
        return [paths[0]]
    idx = sorted({round(i * (len(paths) - 1) / (max_scenes - 1)) for i in range(max_scenes)})
    return [paths[i] for i in idx]


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


class Variant:
    """One policy configuration under test and what its rollouts measured."""

    def __init__(self, name: str, options: dict):
        from alpasim_policy.policies.registry import make_policy

        self.name, self.options = name, options
        t = time.perf_counter()
        self.policy = _Recorder(make_policy("alpamayo", **options))
        self.build_s = time.perf_counter() - t
        w, h = self.policy.camera_size
        self.env_cfg = {
            "cameras": {"enabled": True, "preset": self.policy.camera_preset, "width": w, "height": h}
        }
        self.wall = 0.0
        self.latencies: list[float] = []
        self.rows: list[dict] = []

    def drive(self, scene: Path, run_dir: Path, seed: int) -> None:
        import numpy as np

        from alpasim_policy.caching import IDM_REFERENCE
        from alpasim_policy.evaluate import rollout_path, run_rollout
        from alpasim_policy.scoring.report import score_rollout_file

        ro = run_rollout(self.name, scene, seed=seed, env_config=self.env_cfg, policy=self.policy,
                         policy_options=self.options)  # fmt: skip
        out_path = rollout_path(run_dir, self.name, ro.scene_id)
        ro.save(out_path)
        self.wall += float(ro.extra["wall_s"])
        self.latencies += [float(x) for x in ro.latency_s[np.isfinite(ro.latency_s)]]
        self.rows.append(score_rollout_file(out_path, memo={}, reference=IDM_REFERENCE))

    def result(self) -> dict:
        import numpy as np

        ex, lat, rows, wall = self.policy.extras, self.latencies, self.rows, self.wall
        stage = {k: statistics.median(e["timings"].get(k, 0.0) for e in ex) for k in STAGES}
        stage["total_model"] = statistics.median(e["timings"]["total"] for e in ex)
        return {
            "variant": self.name,
            "scenes": [r["scene_id"] for r in rows],
            "ticks": len(lat),
            "wall_s": wall,
            "ticks_per_s": len(lat) / wall if wall else float("nan"),
            "policy_share": sum(lat) / wall if wall else float("nan"),
            "latency_p50_ms": _pct(lat, 50) * 1e3,
            "latency_p95_ms": _pct(lat, 95) * 1e3,
            "latency_max_ms": max(lat) * 1e3 if lat else float("nan"),
            "deadline_miss_rate": float(np.mean([bool(e.get("deadline_miss")) for e in ex])),
            # ticks whose executed plan was not (all) the new one: previous plan kept or delay splice
            "fallback_rate": float(np.mean([e.get("plan_source", "new") != "new" for e in ex])),
            "EPDMS": float(np.mean([r["EPDMS"] for r in rows])),
            "PDMS": float(np.mean([r["PDMS"] for r in rows])),
            "collisions_at_fault": int(sum(r["collisions_at_fault_count"] for r in rows)),
            "stages_ms": {k: v * 1e3 for k, v in stage.items()},
            "decode_tok_per_s": statistics.median(e["timings"]["decode_tok_per_s"] for e in ex),
            "build_s": self.build_s,
            # how often selection kept another sample than the first (0 for "first" by definition)
            "non_first_rate": float(np.mean([e.get("selected_index", 0) != 0 for e in ex])),
        }


def run_bench(args: argparse.Namespace) -> tuple[list[dict], dict]:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.policies.alpamayo import REASONING_MODES
    from alpasim_policy.policies.selection import SELECT_METHODS
    from alpasim_policy.scenes.suite import load_suite

    reasonings = [r.strip() for r in args.reasoning.split(",") if r.strip()]
    selections = [s.strip() for s in args.select.split(",") if s.strip()]
    for r in reasonings:
        if r not in REASONING_MODES:
            raise ConfigError(f"--reasoning: {r!r} is not one of {', '.join(REASONING_MODES)}")
    for s in selections:
        if s not in SELECT_METHODS:
            raise ConfigError(f"--select: {s!r} is not one of {', '.join(SELECT_METHODS)}")
    modes = [m.strip() for m in args.latency_modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("ignore", "delay"):
            raise ConfigError(f"--latency-modes: {m!r} is not one of ignore, delay")
    scenes = pick_scenes(load_suite(args.suite), args.max_scenes)
    base = {"preset": args.preset, "samples": args.samples, "device": args.device, "seed": args.seed}
    if args.weights:
        base["weights"] = args.weights
    if args.cot_tokens:
        base["cot_tokens"] = args.cot_tokens
    if args.threads:
        base["threads"] = args.threads
    tmp = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-policy-")
        run_dir = Path(tmp.name)
    load_before = os.getloadavg()[0]
    try:
        variants = [
            Variant(f"alpamayo-{r}-{s}", {**base, "reasoning": r, "select": s})
            for r in reasonings
            for s in selections
        ]
        # the same model under a real-time budget: late plans dropped (ignore) or applied late (delay)
        variants += [
            Variant(
                f"alpamayo-{r}-first-{m}{args.deadline_ms:g}ms",
                {
                    **base,
                    "reasoning": r,
                    "select": "first",
                    "deadline_ms": args.deadline_ms,
                    "latency_mode": m,
                },
            )
            for r in reasonings
            for m in modes
        ]
        # scene by scene, every variant in turn: load changes on a shared machine hit all alike
        for scene in scenes:
            for v in variants:
                v.drive(scene, run_dir, args.seed)
            print(f"{scene.stem}: " + ", ".join(f"{v.name} EPDMS {v.rows[-1]['EPDMS']:.3f}" for v in variants),
                  flush=True)  # fmt: skip
        results = [v.result() for v in variants]
    finally:
        if tmp is not None:
            tmp.cleanup()
    load_after = os.getloadavg()[0]
    for r in results:
        r["load"] = (load_before, load_after)
    summary = {
        "benchmark": "policy",
        "load_average_1min": [load_before, load_after],
        "preset": args.preset,
        "samples": args.samples,
        "cot_tokens": args.cot_tokens,
        "device": args.device,
        "scenes": [p.stem for p in scenes],
        "variants": {r["variant"]: {k: r[k] for k in SUMMARY_KEYS} for r in results},
    }
    return results, summary


def bench_rows(results: list[dict], args: argparse.Namespace) -> list[dict]:
    tag = f"{args.preset} K={args.samples} CoC={args.cot_tokens or 'free'} {args.device}"
    if args.threads:
        tag += f" {args.threads} thread{'s' if args.threads > 1 else ''}"
    n_sc = len(results[0]["scenes"])
    names = results[0]["scenes"]
    scenes = ", ".join(names) if len(names) <= 6 else f"suite {args.suite}: {names[0]} ... {names[-1]}"
    ref = results[0]
    rows = [
        {
            "benchmark": f"policy closed loop ticks/s ({tag}, {ref['variant']})",
            "result": f"{ref['ticks_per_s']:.2f} ticks/s over {ref['ticks']} ticks on {n_sc} scenes ({scenes}); "
            f"policy {ref['policy_share'] * 100:.0f}% of the loop, env + 4 cameras the rest; shared machine, "
            f"1-min load average {ref['load'][0]:.1f} -> {ref['load'][1]:.1f}",
            "ratio": f"{ref['ticks_per_s'] / 10.0:.2f}x real time (10 Hz)",
        }
    ]
    for r in results:
        if "ms" in r["variant"].rsplit("-", 1)[-1]:
            continue  # deadline variants: same model work as their plain twin
        st = r["stages_ms"]
        rows.append(
            {
                "benchmark": f"policy per-tick latency breakdown ({tag}, {r['variant']})",
                "result": f"p50 {r['latency_p50_ms']:.1f} ms, p95 {r['latency_p95_ms']:.1f}, max "
                f"{r['latency_max_ms']:.1f}; stage medians: "
                + ", ".join(f"{k} {st[k]:.1f}" for k in STAGES)
                + f" ms (decode {r['decode_tok_per_s']:.0f} tok/s; model total {st['total_model']:.1f} ms; "
                f"1-min load average {r['load'][0]:.1f} -> {r['load'][1]:.1f})",
                "ratio": f"deadline 100 ms missed on {r['deadline_miss_rate'] * 100:.0f}% of ticks",
            }
        )
    by = {r["variant"]: r for r in results}
    for sel in ("first", "scored"):
        one, many = by.get(f"alpamayo-single-{sel}"), by.get(f"alpamayo-multi-{sel}")
        if one and many:
            a, b = one["stages_ms"]["total_model"], many["stages_ms"]["total_model"]
            rows.append(
                {
                    "benchmark": f"policy single vs multi reasoning, model time per tick ({tag}, select={sel})",
                    "result": f"single {a:.1f} ms, multi {b:.1f} ms (medians over {one['ticks']} closed-loop "
                    f"ticks); EPDMS single {one['EPDMS']:.3f}, multi {many['EPDMS']:.3f}",
                    "ratio": f"single {b / a:.2f}x faster",
                }
            )
    for r in results:
        rows.append(
            {
                "benchmark": f"policy closed-loop score ({tag}, {r['variant']}, {n_sc} scenes)",
                "result": f"EPDMS {r['EPDMS']:.3f}, PDMS {r['PDMS']:.3f}, at-fault collisions "
                f"{r['collisions_at_fault']}, latency p50 {r['latency_p50_ms']:.1f} ms; selection kept a sample "
                f"other than the first on {r['non_first_rate'] * 100:.0f}% of ticks; deadline missed on "
                f"{r['deadline_miss_rate'] * 100:.0f}%, plan not (all) new on {r['fallback_rate'] * 100:.0f}%",
                "ratio": f"vs {ref['variant']}: latency x{r['latency_p50_ms'] / ref['latency_p50_ms']:.2f}, "
                f"EPDMS {r['EPDMS'] - ref['EPDMS']:+.3f}",
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from alpasim_policy.bench import print_summary, write_rows

    results, summary = run_bench(args)
    rows = bench_rows(results, args)
    for r in rows:
        print(f"{r['benchmark']}: {r['result']} [{r['ratio']}]")
    write_rows(rows, args)
    print_summary(summary)
    return 0
