"""``alpasim-policy bench model``: per-stage latency of one model tick, single vs multi reasoning, graph vs eager.

Why these comparisons: single reasoning (one chain of causation shared by K trajectory samples)
should cut the tick roughly K-fold against NVlabs' one-CoC-per-sample; the CUDA-graph diffusion
removes per-kernel launch overhead of 10 Euler steps x 36 expert layers. Both are measured with
the *same forced CoC length* so decode work is identical, as medians after warm-up.
Imports of torch / transformers happen inside the handler.
"""

from __future__ import annotations

import argparse
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STAGES = ("vision", "prefill", "decode", "diffusion", "total")
_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


def synthetic_inputs(config: Any, speed: float = 8.0, seed: int = 0) -> tuple[Any, Any]:
    """Deterministic camera frames (uint8) at the model's input size and a straight 16-step history."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = config.image_hw
    images = rng.integers(0, 256, size=(config.num_images, 3, h, w), dtype=np.uint8)
    t = (np.arange(config.history_steps) - (config.history_steps - 1)) * config.dt
    history = np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], axis=1)
    return images, history


def frame_stream(config: Any, ticks: int, seed: int = 0) -> Any:
    """Closed-loop camera input: ``(C, ticks + F - 1, 3, H, W)`` uint8, one new frame per camera per
    tick; tick ``i`` sees frames ``i .. i + F - 1`` of every camera (see :class:`ClosedLoopFrames`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = config.image_hw
    shape = (config.cameras, ticks + config.frames - 1, 3, h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


class ClosedLoopFrames:
    """Consecutive closed-loop ticks' images, as the ``alpamayo`` policy hands them to the model: each
    call is the next tick, each camera's frames shift by one (the oldest drops out, one new frame
    comes in), so ``F - 1`` frames per camera were seen at the previous tick."""

    def __init__(self, config: Any, ticks: int, seed: int = 0):
        self.frames = config.frames
        self.stream = frame_stream(config, ticks, seed)
        self.tick = 0

    def __call__(self) -> Any:
        if self.tick + self.frames > self.stream.shape[1]:
            raise RuntimeError("closed-loop frame stream exhausted (size it for every timed tick)")
        images = self.stream[:, self.tick : self.tick + self.frames]
        self.tick += 1
        return images


def _median_timings(model: Any, images: Any, history: Any, repeats: int, warmup: int, **kw: Any) -> dict:
    """Medians per stage over ``repeats`` ticks after ``warmup``; ``images`` an array (the same every
    tick) or a callable giving each tick's images (:class:`ClosedLoopFrames`)."""
    import torch

    runs = []
    for i in range(warmup + repeats):
        tick_images = images() if callable(images) else images
        out = model.drive(tick_images, history, generator=torch.Generator().manual_seed(i), **kw)
        if i >= warmup:
            runs.append(out)
    med = {k: statistics.median(r.timings[k] for r in runs) for k in runs[0].timings}
    for k in STAGES:
        med[f"{k}_p95"] = _p95([r.timings.get(k, 0.0) for r in runs])
    med["decode_steps"] = runs[0].stats["decode_steps"]
    med["vision_frames_cached"] = runs[-1].stats.get("vision_frames_cached", 0)
    med["_totals"] = [r.timings["total"] for r in runs]
    med["prefix_len"] = runs[0].stats["prefix_len"]
    return med


def _compile_vs_eager(
    model: Any, images: Any, history: Any, k: int, cot: int, repeats: int
) -> dict[str, float]:
    """The lean diffusion loop with its velocity under ``torch.compile`` vs eager, on one prefix,
    alternating (so both see the same load); the first compiled run (compilation) is timed apart."""
    import time

    import torch

    from alpasim_policy.model.flow import LeanFlowSampler, prefix_capacity

    prepared = model.prepare(images, history)
    vision = model.encode_images(prepared.pixel_values, prepared.image_grid_thw)
    prefix, _ = model.reason(prepared, vision, 1, cot_tokens=cot)
    noise = torch.randn((k, model.config.n_waypoints, 2), generator=torch.Generator().manual_seed(0))
    samplers = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        samplers[label] = LeanFlowSampler(
            model.expert, model.action_in_proj, model.action_out_proj,
            steps=model.config.flow_steps, samples=k, capacity=prefix_capacity(prefix.length),
            n_waypoints=model.config.n_waypoints, device=model.device, compiled=compiled,
        )  # fmt: skip
    t0 = time.perf_counter()
    samplers["compiled"].load(prefix, noise)
    samplers["compiled"].run()
    compile_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(max(2, repeats)):
        for label, smp in samplers.items():
            model._sync()
            t1 = time.perf_counter()
            smp.load(prefix, noise)
            smp.run()
            model._sync()
            times[label].append(time.perf_counter() - t1)
    return {
        "compile_s": compile_s,
        "eager_ms": statistics.median(times["eager"]) * 1e3,
        "compiled_ms": statistics.median(times["compiled"]) * 1e3,
    }


def _p95(values: list[float]) -> float:
    """95th percentile (linear interpolation; the maximum for fewer than 20 runs)."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 95))


def _fmt(m: dict) -> str:
    return (
        f"total {m['total'] * 1e3:.1f} ms (vision {m['vision'] * 1e3:.1f}, prefill {m['prefill'] * 1e3:.1f}, "
        f"decode {m['decode'] * 1e3:.1f} ms = {m['decode_steps']} steps @ {m['decode_tok_per_s']:.0f} tok/s, "
        f"diffusion {m['diffusion'] * 1e3:.1f} ms; prefix {m['prefix_len']} tokens)"
    )


def bench_device(args: argparse.Namespace) -> torch.device:
    """``--device`` checked (a clear error where CUDA is asked for and absent), ``--threads`` applied,
    torch seeded: the common start of the model benches."""
    import torch

    from alpasim_policy.errors import ConfigError

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench model --device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return device


def run_bench(args: argparse.Namespace) -> dict:

    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    device = bench_device(args)
    if args.weights:
        from pathlib import Path

        has_config = (Path(args.weights) / "config.json").exists()  # the folder says what it is
        model = AlpamayoR1.from_pretrained(
            args.weights, preset=None if has_config else args.preset, device=device
        )
    else:
        dtype = _DTYPES.get(getattr(args, "dtype", None) or "", None)
        over = {"dtype": dtype} if dtype else {}
        model = AlpamayoR1.create(AlpamayoConfig.from_preset(args.preset, **over), device)
    images, history = synthetic_inputs(model.config)
    k = args.samples
    # "graph": the device's fastest loop (CUDA graph on CUDA, the lean loop on the CPU)
    main_diff = "graph"
    main_label = "CUDA-graph" if device.type == "cuda" else "lean"
    modes = [
        m.strip() for m in (getattr(args, "modes", None) or "multi,eager,dynamic").split(",") if m.strip()
    ]
    common = dict(num_samples=k, cot_tokens=args.cot_tokens, repeats=args.repeats, warmup=args.warmup)
    res: dict[str, dict] = {}
    res["single"] = _median_timings(model, images, history, reasoning="single", diffusion=main_diff, **common)
    if "multi" in modes:
        res["multi"] = _median_timings(
            model, images, history, reasoning="multi", diffusion=main_diff, **common
        )
    if "eager" in modes:
        res["single_eager"] = _median_timings(
            model, images, history, reasoning="single", diffusion="eager", **common
        )
    if "dynamic" in modes:
        res["single_dynamic"] = _median_timings(
            model, images, history, reasoning="single", diffusion="dynamic", **common
        )

    params = model.num_parameters()
    name = f"model {args.preset} K={k} CoC={args.cot_tokens} {device.type}" + (
        f" {args.dtype}" if getattr(args, "dtype", None) else ""
    )
    rows = [
        {
            "benchmark": f"{name}: single reasoning, {main_label} diffusion",
            "result": _fmt(res["single"]),
            "ratio": f"{params / 1e6:.1f} M params; p95 total {res['single']['total_p95'] * 1e3:.1f} ms",
        }
    ]
    ratio_sm = None
    if "multi" in res:
        ratio_sm = res["multi"]["total"] / res["single"]["total"]
        rows.append(
            {
                "benchmark": f"{name}: multi reasoning (NVlabs), {main_label} diffusion",
                "result": _fmt(res["multi"]),
                "ratio": f"single {ratio_sm:.2f}x faster per tick (target >= 4x at K=6)",
            }
        )
    if "single_dynamic" in res:
        rows.append(
            {
                "benchmark": f"{name}: single reasoning, dynamic-cache diffusion (HF reference)",
                "result": _fmt(res["single_dynamic"]),
                "ratio": f"{main_label} diffusion {res['single_dynamic']['diffusion'] / res['single']['diffusion']:.2f}x faster",
            }
        )
    ratio_ge = None
    if "single_eager" in res:
        ratio_ge = res["single_eager"]["diffusion"] / res["single"]["diffusion"]
        target = (
            f"graph {ratio_ge:.2f}x faster diffusion (target >= 3x); tick {res['single']['total'] * 1e3:.1f} ms vs 100 ms budget"
            if device.type == "cuda"
            else f"lean loop {ratio_ge:.2f}x faster diffusion than the static loop"
        )
        rows.append(
            {
                "benchmark": f"{name}: single reasoning, eager static-buffer diffusion",
                "result": _fmt(res["single_eager"]),
                "ratio": target,
            }
        )
    compile_summary: dict[str, float] = {}
    if "compile" in modes:
        compile_summary = _compile_vs_eager(model, images, history, k, args.cot_tokens, args.repeats)
        rows.append(
            {
                "benchmark": f"{name}: lean diffusion loop, torch.compile vs eager (same prefix, alternating)",
                "result": f"compiled {compile_summary['compiled_ms']:.1f} ms vs eager {compile_summary['eager_ms']:.1f} ms "
                f"(medians); first compiled run {compile_summary['compile_s']:.1f} s",
                "ratio": f"compiled {compile_summary['eager_ms'] / compile_summary['compiled_ms']:.2f}x the eager speed",
            }
        )
    flops_summary: dict[str, float] = {}
    if getattr(args, "flops", True):
        from alpasim_policy.bench.flops import diffusion_bound, stage_flops

        fl = stage_flops(model, images, history, k, args.cot_tokens, main_diff)
        bound = diffusion_bound(model, k, fl["prefix_len"])
        parts = []
        for st in ("vision", "prefill", "decode", "diffusion"):
            sec = res["single"][st]
            rate = fl[st] / sec / 1e9 if sec > 0 else 0.0
            flops_summary[f"{st}_gflop"] = fl[st] / 1e9
            flops_summary[f"{st}_gflop_per_s"] = rate
            parts.append(f"{st} {fl[st] / 1e9:.3f} GFLOP @ {rate:.1f} GFLOP/s")
        vs = res["single"]["diffusion"] / bound["bound_s"]
        flops_summary.update(
            diffusion_bound_ms=bound["bound_s"] * 1e3,
            diffusion_gflop_analytic=bound["flops"] / 1e9,
            diffusion_vs_bound=vs,
            attention_peak_gflop_per_s=bound["attention_gflops"],
            square_gemm_gflop_per_s=bound["square_gemm_gflops"],
        )
        rows.append(
            {
                "benchmark": f"{name}: FLOPs per stage (single reasoning) and the diffusion's arithmetic bound",
                "result": "; ".join(parts)
                + f". Bound: the same shapes timed alone, attention {bound['attention_gflops']:.1f}, linear "
                f"{bound['linear_gflops_min']:.1f}-{bound['linear_gflops_max']:.1f}, square GEMM "
                f"{bound['square_gemm_gflops']:.1f} GFLOP/s -> {bound['bound_s'] * 1e3:.1f} ms",
                "ratio": f"diffusion {res['single']['diffusion'] * 1e3:.1f} ms = {vs:.2f}x its arithmetic bound (target <= 1.5x)",
            }
        )
    summary = {
        "benchmark": "model",
        "preset": args.preset,
        "device": str(device),
        "samples": k,
        "cot_tokens": args.cot_tokens,
        "params": params,
        "ratio_single_vs_multi": ratio_sm,
        "ratio_graph_vs_eager_diffusion": ratio_ge,
        **flops_summary,
        **{f"compile_{k2}": v for k2, v in compile_summary.items()},
    }
    for mode, m in res.items():
        for s in STAGES:
            summary[f"{mode}_{s}_ms"] = m[s] * 1e3
            summary[f"{mode}_{s}_p95_ms"] = m[f"{s}_p95"] * 1e3
        summary[f"{mode}_decode_tok_per_s"] = m["decode_tok_per_s"]
    summary["_rows"] = rows
    return summary


# The probe runs in a subprocess with one tree first on sys.path; it uses only API both trees share
# (the model's), so it builds the inputs itself as :func:`synthetic_inputs` does (older trees keep
# that helper elsewhere).
_PROBE = """
import json, statistics, sys, torch
import numpy as np
torch.set_num_threads({threads})
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
torch.manual_seed(0)
m = AlpamayoR1.create(AlpamayoConfig.from_preset({preset!r}), {device!r})
c = m.config
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(c.num_images, 3, *c.image_hw), dtype=np.uint8)
t = (np.arange(c.history_steps) - (c.history_steps - 1)) * c.dt
history = np.stack([8.0 * t, np.zeros_like(t), np.zeros_like(t)], axis=1)
runs = []
for i in range({warmup} + {repeats}):
    out = m.drive(images, history, num_samples={samples}, reasoning="single", diffusion={diffusion!r},
                  cot_tokens={cot}, generator=torch.Generator().manual_seed(i))
    if i >= {warmup}:
        runs.append(out.timings)
print(json.dumps({{k: [r[k] for r in runs] for k in ("vision", "prefill", "decode", "diffusion", "post", "total")}}))
"""


def run_baseline_comparison(args: argparse.Namespace) -> dict:
    """Single-reasoning tick of this tree vs ``--baseline-src``, alternating subprocesses (same machine,
    same load) so the ratio is measured side by side; minima per stage are robust to other load."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from alpasim_policy.errors import ConfigError

    base = Path(args.baseline_src).resolve()
    if not (base / "alpasim_policy" / "model").is_dir():
        raise ConfigError(f"--baseline-src {base}: not an alpasim-policy source tree")
    here = Path(__file__).resolve().parents[2]
    device = args.device
    code = _PROBE.format(
        threads=args.threads or 1,
        preset=args.preset,
        device=device,
        warmup=args.warmup,
        repeats=args.repeats,
        samples=args.samples,
        diffusion="graph" if device == "cuda" else "eager",
        cot=args.cot_tokens,
    )
    samples: dict[str, dict[str, list[float]]] = {"baseline": {}, "current": {}}
    for _ in range(args.rounds):
        for label, tree in (("baseline", base), ("current", here)):
            env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args.threads or 1))
            res = subprocess.run(
                [sys.executable, "-W", "ignore", "-c", code],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise RuntimeError(f"tick probe in {tree} failed: {res.stderr[-2000:]}")
            for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items():
                samples[label].setdefault(k, []).extend(v)
    stat = {label: {k: (min(v), statistics.median(v)) for k, v in d.items()} for label, d in samples.items()}

    def fmt(label: str) -> str:
        m = stat[label]
        stages = ", ".join(
            f"{k} {m[k][0] * 1e3:.1f}" for k in ("vision", "prefill", "decode", "diffusion", "post")
        )
        n = len(samples[label]["total"])
        return f"min {m['total'][0] * 1e3:.1f} ms, median {m['total'][1] * 1e3:.1f} ms over {n} ticks (stage minima: {stages} ms)"

    name = f"model {args.preset} K={args.samples} CoC={args.cot_tokens} {device} {args.threads or 1} thread"
    r_min = stat["baseline"]["total"][0] / stat["current"]["total"][0]
    r_med = stat["baseline"]["total"][1] / stat["current"]["total"][1]
    rows = [
        {
            "benchmark": f"{name}: single-reasoning tick, baseline {base.name}",
            "result": fmt("baseline"),
            "ratio": "-",
        },
        {
            "benchmark": f"{name}: single-reasoning tick, this tree",
            "result": fmt("current"),
            "ratio": f"{r_min:.2f}x (min) / {r_med:.2f}x (median) the baseline's speed",
        },
    ]
    return {
        "benchmark": "model-baseline",
        "ratio_min": r_min,
        "ratio_median": r_med,
        "baseline_total_ms_min": stat["baseline"]["total"][0] * 1e3,
        "current_total_ms_min": stat["current"]["total"][0] * 1e3,
        "_rows": rows,
    }


def run_nvlabs_comparison(args: argparse.Namespace) -> dict:
    """The whole tick of this project vs NVlabs' own code on the same checkpoint and inputs, side by side.

    ``--weights`` must be a checkpoint folder NVlabs' code wrote (``save_pretrained``); ``--nvlabs-cmd``
    is a command that runs NVlabs' code *in its own scratch environment* (never a dependency of this
    project) with ``--weights DIR --inputs NPZ --samples K --cot-tokens N --repeats R --warmup W
    --threads T`` appended, times R ticks (images + history -> trajectories, its processor
    included) and prints a JSON line ``{"total": [seconds, ...]}`` last. This side runs
    :meth:`AlpamayoR1.drive` (single reasoning, the device's fastest diffusion) on the same images and
    history in this process. The two alternate in rounds on the same machine and load; the ratio is
    NVlabs' median tick over ours (minima also reported).

    ``--closed-loop``: this side runs *consecutive closed-loop ticks* (:class:`ClosedLoopFrames`: each
    camera's frames shift by one per tick, as the ``alpamayo`` policy feeds them) with the per-frame
    vision cache on, so a tick preprocesses and encodes only the C new frames; NVlabs' code has no
    such cache and encodes all C x F frames every tick whatever their content (it gets the first
    tick's frames). ``--speculative G`` (one gamma): this side decodes the CoC speculatively (greedy,
    token-identical to plain greedy); drafts by prompt lookup, and with ``--closed-loop`` first by
    recall of the last 4 CoCs as the ``alpamayo`` policy drafts. The rows name both.
    """
    import json
    import os
    import shlex
    import subprocess
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from alpasim_policy.errors import ConfigError
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    if not args.weights:
        raise ConfigError(
            "bench model --nvlabs-cmd needs --weights DIR (a checkpoint written by NVlabs' code)"
        )
    threads = args.threads or 1
    torch.set_num_threads(threads)
    over = {}
    if getattr(args, "image_hw", None):
        over["image_hw"] = tuple(int(v) for v in args.image_hw.split(","))
    model = AlpamayoR1.from_pretrained(args.weights, device=args.device, **over)
    images, history = synthetic_inputs(model.config)
    ks = [int(v) for v in str(args.nvlabs_samples).split(",") if v.strip()]
    closed = bool(getattr(args, "closed_loop", False))
    spec = str(getattr(args, "speculative", None) or "0").split(",")
    if len(spec) != 1:
        raise ConfigError("bench model --nvlabs-cmd --speculative: one gamma (e.g. 4)")
    gamma = int(spec[0])
    ours_images: Any = images
    if closed and gamma:
        from alpasim_policy.model.speculative import NGramDrafter

        # the alpamayo policy's drafter (without a draft model): the episode's last 4 CoCs recalled
        # first (consecutive ticks mostly reason alike), then lookup in the prompt
        model.drafter = NGramDrafter(memory=4)
    if closed:
        ticks = args.rounds * len(ks) * (args.warmup + args.repeats)
        ours_images = ClosedLoopFrames(model.config, ticks)
        first = ours_images.stream[:, : model.config.frames]  # NVlabs' input: the first tick's frames
        images = np.ascontiguousarray(first.reshape(-1, *first.shape[2:]))
    times: dict[tuple[str, int], list[float]] = {}
    stages: dict[tuple[int, str], list[float]] = {}
    cached: dict[int, int] = {}
    loads: list[float] = []
    meta: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, images=images, history=history)
        for _ in range(args.rounds):
            for k in ks:
                loads.append(os.getloadavg()[0])
                cmd = shlex.split(args.nvlabs_cmd) + [
                    "--weights", str(Path(args.weights).resolve()), "--inputs", str(inputs),
                    "--samples", str(k), "--cot-tokens", str(args.cot_tokens), "--repeats", str(args.repeats),
                    "--warmup", str(args.warmup), "--threads", str(threads),
                ]  # fmt: skip
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    raise RuntimeError(f"--nvlabs-cmd failed ({res.returncode}): {res.stderr[-2000:]}")
                out = json.loads(res.stdout.strip().splitlines()[-1])
                meta = {k2: v for k2, v in out.items() if k2 != "total"}
                times.setdefault(("nvlabs", k), []).extend(float(t) for t in out["total"])
                ours = _median_timings(
                    model, ours_images, history, args.repeats, args.warmup,
                    num_samples=k, reasoning="single", diffusion="graph", cot_tokens=args.cot_tokens,
                    vision_cache=closed, speculative=gamma,
                )  # fmt: skip
                times.setdefault(("ours", k), []).extend(ours["_totals"])
                cached[k] = ours["vision_frames_cached"]
                for st in ("preprocess", "vision", "prefill", "decode", "diffusion"):
                    stages.setdefault((k, st), []).append(ours[st])
    rows = []
    summary: dict = {
        "benchmark": "model-nvlabs",
        "nvlabs": meta,
        "load_avg": [min(loads), max(loads)],
        "closed_loop": closed,
        "speculative": gamma,
    }
    name = f"model {Path(args.weights).name} ({model.num_parameters() / 1e6:.1f} M) CoC={args.cot_tokens} {args.device} {threads} thread"
    how = []
    if closed:
        how.append(
            "this side: consecutive closed-loop ticks, per-frame vision cache "
            f"({model.config.cameras} new of {model.config.num_images} frames encoded per tick)"
        )
    if gamma:
        drafts = "recall of the last 4 CoCs, then prompt lookup, as the policy" if closed else "prompt lookup"
        how.append(f"this side: speculative CoC decode gamma={gamma} ({drafts}; greedy, token-identical)")
    if how:
        name += " [" + "; ".join(how) + "]"
    for k in ks:
        nv, us = times[("nvlabs", k)], times[("ours", k)]
        r_med = statistics.median(nv) / statistics.median(us)
        r_min = min(nv) / min(us)
        goal = {6: 8.0, 1: 2.0}.get(k)
        summary[f"k{k}_nvlabs_ms"] = statistics.median(nv) * 1e3
        summary[f"k{k}_ours_ms"] = statistics.median(us) * 1e3
        summary[f"k{k}_ratio_median"] = r_med
        summary[f"k{k}_ratio_min"] = r_min
        summary[f"k{k}_frames_cached"] = cached[k]  # at our last timed tick
        rows.append(
            {
                "benchmark": f"{name} K={k}: whole tick vs NVlabs' own code (same checkpoint and inputs, alternating)",
                "result": f"NVlabs median {statistics.median(nv) * 1e3:.0f} ms (min {min(nv) * 1e3:.0f}), this project "
                f"median {statistics.median(us) * 1e3:.0f} ms (min {min(us) * 1e3:.0f}) over {len(us)} ticks each "
                f"(our stage medians: "
                + ", ".join(
                    f"{st} {statistics.median(stages[(k, st)]) * 1e3:.0f}"
                    for st in ("preprocess", "vision", "prefill", "decode", "diffusion")
                )
                + f" ms); load avg {min(loads):.1f}-{max(loads):.1f}",
                "ratio": f"{r_med:.2f}x (median) / {r_min:.2f}x (min) faster"
                + (f" (target >= {goal:g}x)" if goal else ""),
            }
        )
    summary["_rows"] = rows
    return summary


def run(args: argparse.Namespace) -> int:
    if getattr(args, "speculative", None) and not getattr(args, "nvlabs_cmd", None):
        from alpasim_policy.bench import decode  # the decode stage alone: plain vs lean vs speculative

        return decode.run(args)
    from alpasim_policy.bench import print_summary, write_rows

    if getattr(args, "nvlabs_cmd", None):
        summary = run_nvlabs_comparison(args)
    else:
        summary = run_baseline_comparison(args) if args.baseline_src else run_bench(args)
    rows = summary.pop("_rows")
    for r in rows:
        print(f"{r['benchmark']}: {r['result']} | {r['ratio']}")
    write_rows(rows, args)
    print_summary(summary)
    return 0
