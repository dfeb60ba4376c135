"""``alpasim-policy bench model --speculative 2,4,8``: the decode stage alone, plain vs lean vs speculative.

Why a decode-only benchmark: the speculative and static-cache changes touch only the chain-of-
causation decode, and on a small model its cost is per-step overhead that the other stages would
drown in noise. One model, one prepared input (vision encoded once), and for every variant a fresh
prefill + decode through :meth:`AlpamayoR1.reason`; only the decode is timed. The variants run
interleaved (one tick of each per round) so machine load drifts hit all alike, and the median per
variant is reported:

* ``dynamic`` — transformers' forward + ``DynamicCache`` per step (the loop before the lean decode);
* ``static`` — :class:`~alpasim_policy.model.static_decode.StaticKVDecoder` (same logits, bit for bit);
* ``spec-γ`` — speculative decoding with γ draft tokens per target forward on the static cache.

Greedy decoding, so every variant must emit the same tokens (checked; a mismatch is an error).
The drafter is the draft-model folder given by ``--draft`` (``modeling_draft.load_drafter``), else
prompt lookup (:class:`~alpasim_policy.model.speculative.NGramDrafter`), named in the rows.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any


def parse_gammas(text: str) -> list[int]:
    from alpasim_policy.errors import ConfigError

    try:
        gammas = [int(g) for g in str(text).split(",") if g.strip()]
    except ValueError as e:
        raise ConfigError(f"--speculative {text!r}: expected comma-separated integers, e.g. 2,4,8") from e
    if not gammas or any(g < 1 for g in gammas):
        raise ConfigError(f"--speculative {text!r}: every gamma must be >= 1")
    return gammas


def _load_model(args: argparse.Namespace, device: Any) -> Any:
    from pathlib import Path

    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    if args.weights:
        has_config = (Path(args.weights) / "config.json").exists()
        return AlpamayoR1.from_pretrained(
            args.weights, preset=None if has_config else args.preset, device=device
        )
    return AlpamayoR1.create(AlpamayoConfig.from_preset(args.preset), device)


def _drafter(args: argparse.Namespace, device: Any) -> tuple[Any, str]:
    """A factory of fresh drafters (one per pass over the inputs, so no pass learns from another)
    and its name for the rows."""
    from alpasim_policy.model.speculative import FallbackDrafter, NGramDrafter

    recall = int(getattr(args, "recall", 0) or 0)
    if getattr(args, "draft", None):
        from alpasim_policy.policies.alpamayo import _load_drafter

        drafter = _load_drafter(args.draft, str(device))
        if recall:
            return (
                lambda: FallbackDrafter(NGramDrafter(memory=recall, prompt=False), drafter)
            ), f"recall of the last {recall} CoCs, then draft model {args.draft}"
        return (lambda: drafter), f"draft model {args.draft}"
    if recall:
        return (lambda: NGramDrafter(memory=recall)), f"prompt lookup + recall of the last {recall} CoCs"
    return NGramDrafter, "prompt-lookup drafter (no draft model)"


def training_inputs(path: str, count: int, start: int = 0) -> list[tuple[Any, Any, float | None, int]]:
    """Up to ``count`` ticks from training shards (``.npz`` written by ``save_samples``: images,
    history, command), a shard or a folder of them, in sorted order (as training reads them),
    skipping the first ``start`` (e.g. to keep to a held-out tail): (images, history, None, command)
    with the speed estimated from the history, as the policy's default."""
    from pathlib import Path

    import numpy as np

    from alpasim_policy.errors import ConfigError

    root = Path(path)
    files = sorted(root.glob("*.npz")) if root.is_dir() else [root]
    if not files or not files[0].exists():
        raise ConfigError(f"--inputs {path}: no training shards (.npz) there")
    out: list[tuple[Any, Any, float | None, int]] = []
    for f in files:
        with np.load(f) as z:
            missing = {"images", "history", "command"} - set(z.files)
            if missing:
                raise ConfigError(
                    f"--inputs {f}: not a training shard (missing {', '.join(sorted(missing))})"
                )
            for i in range(z["images"].shape[0]):
                if start > 0:
                    start -= 1
                    continue
                out.append((z["images"][i], z["history"][i], None, int(z["command"][i])))
                if len(out) >= count:
                    return out
    return out


def run_decode_bench(args: argparse.Namespace) -> dict:

    from alpasim_policy.bench.model import bench_device, synthetic_inputs
    from alpasim_policy.errors import ConfigError

    gammas = parse_gammas(args.speculative)
    device = bench_device(args)
    model = _load_model(args, device)
    new_drafter, drafter_name = _drafter(args, device)
    if getattr(args, "inputs", None):
        start = int(getattr(args, "input_start", 0) or 0)
        samples = training_inputs(args.inputs, args.input_count, start)
        if not samples:
            raise ConfigError(f"--inputs {args.inputs}: no ticks after --input-start {start}")
        source = f"{len(samples)} recorded inputs" + (f" (from #{start})" if start else "")
    else:
        samples = [(*synthetic_inputs(model.config), None, 1)]
        source = "synthetic input"
    cases = []
    for images, history, speed, command in samples:
        prepared = model.prepare(images, history, speed, command)
        cases.append((prepared, model.encode_images(prepared.pixel_values, prepared.image_grid_thw)))
    limit = {"cot_tokens": args.cot_tokens} if args.cot_tokens else {"max_cot_tokens": None}

    variants: dict[str, dict[str, Any]] = {"dynamic": {"decode": "dynamic"}, "static": {"decode": "static"}}
    for g in gammas:
        variants[f"spec-{g}"] = {"decode": "static", "speculative": g}
    times: dict[str, list[float]] = {k: [] for k in variants}
    last: dict[str, dict[str, float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    for i in range(args.warmup + args.repeats):
        for name, kw in variants.items():  # interleaved: one pass over all inputs per variant
            timings: dict[str, float] = {}
            tokens[name] = []
            if "speculative" in kw:
                kw = {**kw, "drafter": new_drafter()}
            for prepared, vision in cases:
                _, (ids,) = model.reason(prepared, vision, 1, timings=timings, **limit, **kw)
                tokens[name].append(ids)
            if i >= args.warmup:
                times[name].append(timings["decode"])
            last[name] = timings
    ref = tokens["dynamic"]
    for name, ids in tokens.items():
        if ids != ref:
            raise RuntimeError(f"bench model --speculative: {name} emitted other tokens than plain greedy")

    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = last["dynamic"]["decode_steps"]
    cot = f"CoC={args.cot_tokens}" if args.cot_tokens else "free CoC"
    name = f"decode {args.preset if not args.weights else 'weights'} {cot} {device.type}, greedy, {source}"
    rows = [
        {
            "benchmark": f"{name}: transformers loop (DynamicCache) vs static-KV lean loop",
            "result": f"{n_tok} CoC tokens: dynamic {med['dynamic'] * 1e3:.1f} ms, static {med['static'] * 1e3:.1f} ms "
            f"({med['static'] / n_tok * 1e3:.2f} ms/token); same tokens",
            "ratio": f"static {med['dynamic'] / med['static']:.2f}x faster",
        }
    ]
    summary: dict[str, Any] = {
        "benchmark": "model-decode",
        "preset": args.preset,
        "weights": args.weights,
        "device": str(device),
        "cot_tokens": n_tok,
        "inputs": source,
        "drafter": drafter_name,
        "decode_ms": {k: v * 1e3 for k, v in med.items()},
        "ratio_static_vs_dynamic": med["dynamic"] / med["static"],
    }
    for g in gammas:
        t = last[f"spec-{g}"]
        acc = t["spec_accepted"] / t["spec_proposed"] if t.get("spec_proposed") else 0.0
        fwd = int(t["decode_forwards"])
        r_static = med["static"] / med[f"spec-{g}"]
        r_dyn = med["dynamic"] / med[f"spec-{g}"]
        rows.append(
            {
                "benchmark": f"{name}: speculative gamma={g}, {drafter_name}",
                "result": f"decode {med[f'spec-{g}'] * 1e3:.1f} ms, acceptance {acc:.2f} "
                f"({int(t['spec_accepted'])}/{int(t['spec_proposed'])} drafts), {fwd} target forwards "
                f"for {n_tok} tokens; token-identical to plain greedy",
                "ratio": f"{r_static:.2f}x vs static plain, {r_dyn:.2f}x vs transformers loop (goal >= 2.5x)",
            }
        )
        summary[f"spec{g}_acceptance"] = acc
        summary[f"spec{g}_forwards"] = fwd
        summary[f"spec{g}_ratio_vs_static"] = r_static
        summary[f"spec{g}_ratio_vs_dynamic"] = r_dyn
    summary["_rows"] = rows
    return summary


def run(args: argparse.Namespace) -> int:
    from alpasim_policy.bench import print_summary, write_rows

    summary = run_decode_bench(args)
    rows = summary.pop("_rows")
    for r in rows:
        print(f"{r['benchmark']}: {r['result']} | {r['ratio']}")
    write_rows(rows, args)
    print_summary(summary)
    return 0


__all__ = ["parse_gammas", "run", "run_decode_bench", "training_inputs"]
