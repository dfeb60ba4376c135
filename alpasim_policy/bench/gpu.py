"""``alpasim-policy bench gpu``: every GPU measurement of issue 15 in one prepared, time-boxed run.

Why one script: a GPU is lent to a session for minutes, so everything to measure there must be
ready to run in one command that ends well inside its budget and leaves its numbers in a file even
when a later section fails or runs out of time. Sections (each timed, each skipped when the time
budget ``--budget-s`` is spent, each recording its error instead of aborting the run):

1. **tick** — ``drive`` on the real-size preset (random init, ``--dtype``; default bf16), single
   reasoning, forced ``--cot-tokens`` CoC, K = ``--samples``, the device's fastest diffusion (CUDA
   graph): vision, prefill, decode, diffusion and total, p50 and p95.
2. **diffusion** — the same prefix and noise through the graph-captured loop and the eager static
   loop (and the lean loop), p50 each: the graph's speed-up (target >= 3x).
3. **decode_graph** — the CoC decode with each one-token step replayed from a CUDA graph vs the
   static-cache steps launched from Python: decode and tick p50, and whether the CoCs agree.
4. **speculative** — plain greedy decode vs speculative decoding at each ``--gammas`` value when
   this tree's ``drive`` has a ``speculative`` option (the speculative decoder is another part's;
   without it the section says so): decode p50, speed-up, acceptance when reported, and whether
   the CoC tokens are identical to plain greedy.
5. **closed_loop** — the tick as the ``alpamayo`` policy runs it: consecutive closed-loop frames
   (each camera's frames shift by one) with the per-frame vision cache, and speculative decoding
   (``--closed-loop-gamma``) with the policy's recall drafter.
6. **flops** — FLOPs per stage and achieved GFLOP/s (``bench.flops``; the graph replay is counted
   on the eager loop).

Results: one JSON file (``--json``, written atomically after every section) plus rows in
BENCHMARKS.md unless ``--no-write``. Every code path also runs on the CPU with a tiny preset
(``--device cpu --preset tiny --quick``), which CI tests.
"""

from __future__ import annotations

import argparse
import inspect
import time
import traceback
from pathlib import Path
from typing import Any


def _p(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _timed_drives(model: Any, images: Any, history: Any, n: int, warmup: int, **kw: Any) -> list[Any]:
    import torch

    outs = []
    for i in range(warmup + n):
        tick_images = images() if callable(images) else images  # ClosedLoopFrames: the next tick's
        out = model.drive(tick_images, history, generator=torch.Generator().manual_seed(i), **kw)
        if i >= warmup:
            outs.append(out)
    return outs


def _stage_stats(outs: list[Any]) -> dict[str, float]:
    res = {}
    for st in ("vision", "prefill", "decode", "diffusion", "total"):
        vals = [o.timings.get(st, 0.0) for o in outs]
        res[f"{st}_p50_ms"] = _p(vals, 50) * 1e3
        res[f"{st}_p95_ms"] = _p(vals, 95) * 1e3
    return res


def run_gpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from alpasim_policy.bench import machine_description
    from alpasim_policy.bench.model import _DTYPES, synthetic_inputs
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.io import atomic_write_json
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench gpu --device cuda: no CUDA device available")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    repeats = 2 if args.quick else args.repeats
    warmup = 1 if args.quick else args.warmup
    json_path = Path(args.json)
    result: dict[str, Any] = {
        "benchmark": "gpu-tick",
        "machine": machine_description(),
        "device": str(device),
        "preset": args.preset,
        "dtype": args.dtype,
        "samples": args.samples,
        "cot_tokens": args.cot_tokens,
        "repeats": repeats,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "sections": {},
    }

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        atomic_write_json(json_path, result)

    def section(name: str, fn: Any) -> None:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            result["sections"][name] = {
                "skipped": f"time budget spent ({elapsed:.0f} s > {args.budget_s:.0f} s)"
            }
        else:
            t0 = time.perf_counter()
            try:
                out = fn()
                out["seconds"] = time.perf_counter() - t0
                result["sections"][name] = out
            except Exception as e:  # keep the other sections' numbers
                result["sections"][name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-3000:],
                }
        print(f"[bench gpu] {name}: {result['sections'][name]}", flush=True)
        save()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    dtype = _DTYPES.get(args.dtype or "", None)
    cfg = AlpamayoConfig.from_preset(args.preset, **({"dtype": dtype} if dtype else {}))
    model = AlpamayoR1.create(cfg, device)
    result["build_s"] = time.perf_counter() - t0
    result["params"] = model.num_parameters()
    images, history = synthetic_inputs(model.config)
    k, cot = args.samples, args.cot_tokens
    save()

    def tick() -> dict[str, Any]:
        outs = _timed_drives(
            model, images, history, repeats, warmup,
            num_samples=k, reasoning="single", diffusion="graph", cot_tokens=cot,
        )  # fmt: skip
        res = _stage_stats(outs)
        res["decode_steps"] = outs[0].stats["decode_steps"]
        res["prefix_len"] = outs[0].stats["prefix_len"]
        res["graph"] = outs[0].stats["graph"]
        res["decode_mode"] = outs[0].stats.get("decode")
        res["p50_le_100ms"] = res["total_p50_ms"] <= 100.0
        return res

    def diffusion() -> dict[str, Any]:
        prepared = model.prepare(images, history)
        vision = model.encode_images(prepared.pixel_values, prepared.image_grid_thw)
        prefix, _ = model.reason(prepared, vision, 1, cot_tokens=cot)
        noise = torch.randn((k, model.config.n_waypoints, 2), generator=torch.Generator().manual_seed(0))
        res: dict[str, Any] = {}
        outs = {}
        for mode in ("graph", "eager", "lean"):
            ts = []
            for i in range(warmup + 2 + repeats):
                model._sync()
                t1 = time.perf_counter()
                outs[mode] = model.sample_actions(prefix, noise, mode)
                model._sync()
                if i >= warmup + 2:
                    ts.append(time.perf_counter() - t1)
            res[f"{mode}_p50_ms"] = _p(ts, 50) * 1e3
        res["graph_vs_eager"] = res["eager_p50_ms"] / res["graph_p50_ms"]
        res["graph_max_abs_diff_vs_eager"] = float((outs["graph"] - outs["eager"]).abs().max())
        res["graph_captured"] = device.type == "cuda"
        return res

    def decode_graph() -> dict[str, Any]:
        res: dict[str, Any] = {}
        outs = {}
        for mode in ("static", "graph"):
            outs[mode] = _timed_drives(
                model, images, history, repeats, warmup,
                num_samples=k, reasoning="single", diffusion="graph", cot_tokens=cot, decode=mode,
            )  # fmt: skip
            res[f"{mode}_decode_p50_ms"] = _p([o.timings["decode"] for o in outs[mode]], 50) * 1e3
            res[f"{mode}_total_p50_ms"] = _p([o.timings["total"] for o in outs[mode]], 50) * 1e3
        res["graph_vs_static_decode"] = res["static_decode_p50_ms"] / res["graph_decode_p50_ms"]
        res["same_cot"] = all(
            a.reasoning == b.reasoning for a, b in zip(outs["static"], outs["graph"], strict=True)
        )
        decoder = getattr(model, "_decoder", None)
        res["graph_captures"] = getattr(decoder, "graph_captures", None)
        return res

    def speculative() -> dict[str, Any]:
        params = inspect.signature(model.drive).parameters
        if "speculative" not in params:
            return {"available": False, "note": "this tree's drive() has no speculative option"}
        res: dict[str, Any] = {"available": True}
        plain = _timed_drives(
            model, images, history, repeats, warmup,
            num_samples=k, reasoning="single", diffusion="graph", cot_tokens=cot,
        )  # fmt: skip
        res["plain_decode_p50_ms"] = _p([o.timings["decode"] for o in plain], 50) * 1e3
        for g in [int(v) for v in args.gammas.split(",") if v.strip()]:
            outs = _timed_drives(
                model, images, history, repeats, warmup,
                num_samples=k, reasoning="single", diffusion="graph", cot_tokens=cot, speculative=g,
            )  # fmt: skip
            dec = _p([o.timings["decode"] for o in outs], 50) * 1e3
            row = {
                "decode_p50_ms": dec,
                "total_p50_ms": _p([o.timings["total"] for o in outs], 50) * 1e3,
                "speedup_decode": res["plain_decode_p50_ms"] / dec if dec > 0 else None,
                "same_cot_as_plain": outs[0].reasoning == plain[0].reasoning,
            }
            for key in ("acceptance", "draft_proposed", "draft_accepted"):
                if key in outs[0].stats:
                    row[key] = outs[0].stats[key]
            res[f"gamma_{g}"] = row
        return res

    def closed_loop() -> dict[str, Any]:
        from alpasim_policy.bench.model import ClosedLoopFrames
        from alpasim_policy.model.speculative import NGramDrafter

        gamma = args.closed_loop_gamma
        frames = ClosedLoopFrames(model.config, warmup + repeats)
        saved = model.drafter
        model.drafter = NGramDrafter(memory=4)  # the alpamayo policy's drafter without a draft model
        model.frame_cache.clear()
        try:
            outs = _timed_drives(
                model, frames, history, repeats, warmup,
                num_samples=k, reasoning="single", diffusion="graph", cot_tokens=cot,
                vision_cache=True, speculative=gamma,
            )  # fmt: skip
        finally:
            model.drafter = saved
            model.frame_cache.clear()
        res = _stage_stats(outs)
        res["gamma"] = gamma
        res["vision_frames_cached"] = outs[-1].stats.get("vision_frames_cached")
        res["decode_forwards"] = outs[-1].stats.get("decode_forwards")
        res["p50_le_100ms"] = res["total_p50_ms"] <= 100.0
        return res

    def flops() -> dict[str, Any]:
        from alpasim_policy.bench.flops import stage_flops

        fl = stage_flops(model, images, history, k, cot, "graph")
        tick_res = result["sections"].get("tick", {})
        out: dict[str, Any] = {}
        for st in ("vision", "prefill", "decode", "diffusion"):
            out[f"{st}_gflop"] = fl[st] / 1e9
            ms = tick_res.get(f"{st}_p50_ms")
            if ms:
                out[f"{st}_gflop_per_s"] = fl[st] / (ms / 1e3) / 1e9
        return out

    section("tick", tick)
    section("diffusion", diffusion)
    section("decode_graph", decode_graph)
    section("speculative", speculative)
    section("closed_loop", closed_loop)
    if not args.quick or args.device == "cpu":
        section("flops", flops)
    save()
    return result


def _tick_text(t: dict[str, Any]) -> str:
    """A tick's stage summary (the caller closes the parenthesis, after any extra facts)."""
    return (
        f"total p50 {t['total_p50_ms']:.1f} / p95 {t['total_p95_ms']:.1f} ms (vision {t['vision_p50_ms']:.1f}, "
        f"prefill {t['prefill_p50_ms']:.1f}, decode {t['decode_p50_ms']:.1f}, diffusion {t['diffusion_p50_ms']:.1f} ms p50"
    )


def _target_text(t: dict[str, Any]) -> str:
    return "p50 <= 100 ms target: " + ("met" if t["p50_le_100ms"] else "not met")


def _rows(result: dict[str, Any]) -> list[dict]:
    s = result["sections"]
    name = f"gpu tick {result['preset']} {result['dtype'] or ''} K={result['samples']} CoC={result['cot_tokens']} {result['device']}"
    rows = []
    t = s.get("tick", {})
    if "total_p50_ms" in t:
        rows.append(
            {
                "benchmark": f"{name}: single reasoning, graph diffusion",
                "result": _tick_text(t) + ")",
                "ratio": _target_text(t),
            }
        )
    d = s.get("diffusion", {})
    if "graph_vs_eager" in d:
        rows.append(
            {
                "benchmark": f"{name}: diffusion, graph vs eager",
                "result": f"graph {d['graph_p50_ms']:.2f} ms, eager {d['eager_p50_ms']:.2f} ms, lean {d['lean_p50_ms']:.2f} ms (p50)",
                "ratio": f"graph {d['graph_vs_eager']:.2f}x faster (target >= 3x)",
            }
        )
    dg = s.get("decode_graph", {})
    if "graph_vs_static_decode" in dg:
        rows.append(
            {
                "benchmark": f"{name}: CoC decode, CUDA-graph steps vs static-cache steps",
                "result": f"decode graph {dg['graph_decode_p50_ms']:.1f} ms, static {dg['static_decode_p50_ms']:.1f} ms "
                f"(p50; tick {dg['graph_total_p50_ms']:.1f} vs {dg['static_total_p50_ms']:.1f} ms); same CoC {dg['same_cot']}",
                "ratio": f"graph {dg['graph_vs_static_decode']:.2f}x faster decode",
            }
        )
    sp = s.get("speculative", {})
    for key, row in sp.items():
        if key.startswith("gamma_") and isinstance(row, dict):
            rows.append(
                {
                    "benchmark": f"{name}: speculative decode {key.replace('_', ' = ')}",
                    "result": f"decode {row['decode_p50_ms']:.1f} ms vs plain {sp['plain_decode_p50_ms']:.1f} ms; "
                    f"same CoC {row['same_cot_as_plain']}",
                    "ratio": f"{row['speedup_decode']:.2f}x decode",
                }
            )
    c = s.get("closed_loop", {})
    if "total_p50_ms" in c:
        rows.append(
            {
                "benchmark": f"{name}: closed-loop tick as the policy runs it (consecutive frames, vision cache, "
                f"speculative gamma = {c['gamma']} with the recall drafter)",
                "result": _tick_text(c)
                + f"; {c['vision_frames_cached']} frames cached, {c['decode_forwards']} decode forwards)",
                "ratio": _target_text(c),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from alpasim_policy.bench import print_summary, write_rows

    result = run_gpu_bench(args)
    rows = _rows(result)
    for r in rows:
        print(f"{r['benchmark']}: {r['result']} | {r['ratio']}")
    write_rows(rows, args)
    print_summary({"benchmark": "gpu-tick", "json": str(args.json), "elapsed_s": result.get("elapsed_s")})
    return 0


__all__ = ["run", "run_gpu_bench"]
