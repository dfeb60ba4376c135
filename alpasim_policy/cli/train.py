"""``alpasim-policy train``: build training data from raw recordings, or train the model on it.

``train --stage data --out DIR`` imports every raw recording (CommonRoad XML files, AV2 sensor logs
and motion-forecasting scenarios under ``--raw``), drops the scenes that overlap the evaluation
suite (``--exclude-suite``, default ``bundled``), drives each remaining scene once on the log and
``--perturbations`` times off it (:mod:`alpasim_policy.training.build`, :mod:`alpasim_policy.training.data`), and writes one ``.npz``
shard per drive under ``DIR/data/`` plus ``DIR/data/manifest.json``. Deterministic for a seed;
a re-run skips the shards already written (resume).

``train --stage imitation --preset P --data DIR/data --out DIR`` trains the model on those shards
(teacher-forced CoC + flow matching, :mod:`alpasim_policy.training.imitation`): ``DIR/checkpoint``
(``save_pretrained`` layout + optimizer state), ``DIR/log.csv``, ``DIR/loss.png``; ``--resume``
continues from the checkpoint exactly as an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = ("data", "imitation")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="build training data (--stage data) or train the model (--stage imitation)")
    p.add_argument("--stage", choices=STAGES, default="data", help="which stage to run")
    p.add_argument("--out", type=Path, required=True, help="training folder (data/ goes inside)")
    p.add_argument("--raw", type=Path, default=None, help="raw recordings (default: <scenarios root>/raw)")
    p.add_argument("--exclude-suite", default="bundled", help="evaluation suite never trained on")
    p.add_argument("--preset", default="tiny", help="model preset: camera size and frame count")
    p.add_argument("--perturbations", type=int, default=2, help="off-log drives per scene")
    p.add_argument("--max-lateral", type=float, default=1.5, help="largest perturbation (m)")
    p.add_argument(
        "--min-future", type=int, default=20, help="logged future steps a sample needs (the rest is masked)"
    )
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("imitation stage")
    g.add_argument("--data", type=Path, default=None, help="shards of the data stage (default: <out>/data)")
    g.add_argument("--steps", type=int, default=200, help="optimizer steps")
    g.add_argument("--batch", type=int, default=4, help="samples per step")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warm-up, cosine to 10 %%)")
    g.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="end after N steps of this call (the schedule still spans --steps; checkpoints at --save-every)",
    )
    g.add_argument("--lm-weight", type=float, default=1.0, help="weight of the CoC language-model loss")
    g.add_argument("--flow-weight", type=float, default=1.0, help="weight of the flow-matching loss")
    g.add_argument(
        "--action-stats",
        choices=("data", "preset"),
        default="data",
        help="action normalisation: the training actions' spread (data) or the preset's",
    )
    g.add_argument("--flow-samples", type=int, default=4, help="(noise, t) pairs per sample and step")
    p.set_defaults(func=_cmd_train)


def _cmd_imitation(args: argparse.Namespace) -> int:
    from alpasim_policy.training.imitation import ImitationConfig, train_imitation

    cfg = ImitationConfig(
        preset=args.preset,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        save_every=args.save_every,
        lm_weight=args.lm_weight,
        flow_weight=args.flow_weight,
        flow_samples=args.flow_samples,
        action_stats=args.action_stats,
    )
    s = train_imitation(
        args.data or args.out / "data", args.out, cfg, resume=args.resume, stop_after=args.stop_after
    )
    final = s["final"] or {}
    print(
        f"{s['steps']} step(s) on {s['samples']} sample(s) in {s['seconds']:.0f} s; "
        f"checkpoint {s['checkpoint']}; final lm {final.get('lm_loss', float('nan')):.4f}, "
        f"flow {final.get('flow_loss', float('nan')):.4f}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scenes.suite import scenarios_root

    if args.stage == "imitation":
        return _cmd_imitation(args)

    if args.perturbations < 0:
        raise ConfigError(f"--perturbations must be >= 0, got {args.perturbations}")
    if not 1 <= args.min_future <= 64:
        raise ConfigError(f"--min-future must be in 1..64 steps, got {args.min_future}")
    if args.max_lateral < 0.5:
        raise ConfigError(f"--max-lateral must be >= 0.5 m, got {args.max_lateral}")
    from alpasim_policy.training.build import build_data

    raw = args.raw or scenarios_root() / "raw"
    m = build_data(
        args.out,
        raw,
        args.exclude_suite,
        args.preset,
        args.perturbations,
        args.max_lateral,
        args.seed,
        min_future_steps=args.min_future,
    )
    print(
        f"{len(m['shards'])} shard(s) from {len(m['scenes'])} scene(s) in {args.out / 'data'} "
        f"({m['held_out_dropped']} of {m['candidate_scenes']} imported scenes overlap suite "
        f"{m['excluded_suite']!r} and were left out)"
    )
    print(json.dumps({"shards": len(m["shards"]), "scenes": len(m["scenes"]), "samples": m["samples"]}))
    return 0
