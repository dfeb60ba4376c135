"""``alpasim-policy bench train``: an imitation step with one forward per sample vs ``--batched``.

Both modes run :func:`~alpasim_policy.training.imitation.optimizer_step` (forward, backward,
clipping, AdamW) from the same initial weights on the same batches, alternating in rounds so a
noisy machine slows both alike; the row gives the median seconds per step of each and their ratio.
Samples come from ``--data`` shards or, by default, from the env driving the first scenes of the
suite on the log (what ``train --stage data`` records, without perturbations).
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any


def _driven_samples(suite: str, preset: str, count: int) -> dict[str, Any]:
    """``count`` samples of the env driving the suite's scenes on the log, as shard arrays."""
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite
    from alpasim_policy.training.data import drive_samples, sample_arrays

    frames = AlpamayoConfig.from_preset(preset).frames
    out: list[Any] = []
    for path in load_suite(suite):
        scene = load_scene(path)
        gen = drive_samples(scene, camera_size=DEFAULT_CAMERA_SIZE[preset], frames=frames)
        out += list(itertools.islice(gen, count - len(out)))
        if len(out) >= count:
            break
    return sample_arrays(out)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.training.imitation import (
        ImitationConfig,
        load_shards,
        optimizer_step,
        patch_embed_as_matmul,
        prepare_samples,
    )

    for flag in ("samples", "batch", "steps", "rounds"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"bench train: --{flag} must be >= 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        arrays = load_shards(args.data)
        arrays = {k: v[: args.samples] for k, v in arrays.items()}
    else:
        arrays = _driven_samples(args.suite, args.preset, args.samples)
    runs = {}
    for batched in (False, True):
        torch.manual_seed(args.seed)
        model = AlpamayoR1.create(AlpamayoConfig.from_preset(args.preset))
        model.train()
        samples = prepare_samples(model, arrays, fit_stats=True)
        if batched:
            patch_embed_as_matmul(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        cfg = ImitationConfig(preset=args.preset, batch=args.batch, batched=batched, seed=args.seed)
        runs[batched] = (model, opt, params, samples, cfg, [])
    rng = np.random.default_rng(args.seed)
    for _ in range(args.rounds):
        batches = [rng.choice(len(arrays["coc"]), size=args.batch) for _ in range(args.steps + 1)]
        for batched in (False, True):
            model, opt, params, samples, cfg, times = runs[batched]
            gen = torch.Generator().manual_seed(args.seed)
            for j, idx in enumerate(batches):
                t0 = time.perf_counter()
                optimizer_step(model, opt, params, [samples[int(i)] for i in idx], gen, cfg)
                if j:  # the first step of a round warms the allocator
                    times.append(time.perf_counter() - t0)
    loop = float(np.median(runs[False][5]))
    fast = float(np.median(runs[True][5]))
    source = f"{len(arrays['coc'])} samples of " + (", ".join(args.data) if args.data else f"{args.suite} (driven)")
    write_rows(
        [
            {
                "benchmark": f"imitation step, {args.preset}, batch {args.batch}, one forward per sample vs "
                f"--batched ({source}; {args.rounds} alternating rounds x {args.steps} steps, "
                f"{torch.get_num_threads()} threads)",
                "result": f"per sample {loop * 1e3:.0f} ms/step, batched {fast * 1e3:.0f} ms/step",
                "ratio": f"{loop / fast:.2f}x faster batched",
            }
        ],
        args,
    )
    print_summary({"per_sample_s": loop, "batched_s": fast, "speedup": loop / fast, "threads": torch.get_num_threads()})
    return 0
