"""``alpasim-policy train``: build training data from raw recordings, or train the model on it.

``train --stage data --out DIR`` imports every raw recording (CommonRoad XML files, AV2 sensor logs
and motion-forecasting scenarios under ``--raw``), drops the scenes that overlap the evaluation
suite (``--exclude-suite``, default ``bundled``), drives each remaining scene once on the log and
``--perturbations`` times off it (:mod:`alpasim_policy.training.build`, :mod:`alpasim_policy.training.data`), and writes one ``.npz``
shard per drive under ``DIR/data/`` plus ``DIR/data/manifest.json``. Deterministic for a seed;
a re-run skips the shards already written (resume). ``--expert idm`` labels with the rule planner
instead of the log, ``--driver CKPT`` lets a checkpoint drive (DAgger), ``--closing N`` adds drives
that close in on the lead, ``--yaw-swings N`` drives handed over mid-swerve, ``--partial-egos S``
takes cars present S seconds as egos too,
``--time-scale F ...`` also drives every scene replayed at F times its speed (slow-motion traffic);
``--close-up N`` adds drives that start close behind the lead, ``--lead-stops N`` drives in which the
lead brakes to a stop, ``--lead-creeps N`` ones in which it then goes on stop-and-go.

``train --stage speedups --data DIR/data ... --out SP`` writes copycat counter-samples
(:mod:`alpasim_policy.training.speedups`): copies of the samples that stop for a stopped lead
close ahead, with a faster past and a target braking to the same stop point (``--copies`` per
sample, ``--seed``), as ``SP/*-spd.npz`` shards plus ``SP/manifest.json``.

``train --stage imitation --preset P --data DIR/data --out DIR`` trains the model on those shards
(teacher-forced CoC + flow matching, :mod:`alpasim_policy.training.imitation`): ``DIR/checkpoint``
(``save_pretrained`` layout + optimizer state), ``DIR/log.csv``, ``DIR/loss.png``; ``--resume``
continues from the checkpoint exactly as an uninterrupted run would; ``--history-dropout P``
shows that share of the samples the history of a standing car (past-motion dropout).

``train --stage rl --init CKPT --out DIR`` post-trains a checkpoint with group-relative policy
optimisation on the open-loop EPDMS of its own sampled plans (:mod:`alpasim_policy.training.rl`;
``--steps``, ``--lr``, ``--save-every``, ``--perturbations``, ``--seed``, ``--resume`` as above;
``--driver CKPT`` takes the ticks from drives of that checkpoint, DAgger-style):
ticks and metric caches of the training scenes in ``DIR``, then ``DIR/checkpoint``,
``DIR/log.csv``, ``DIR/reward.png``, ``DIR/summary.json``.

``train --stage draft --target CKPT --data DIR/data --out DIR`` distils the routine reasoner (the
speculative decoder's draft, :mod:`alpasim_policy.training.draft`) from the trained target's own
greedy CoC on those shards: ``DIR/draft`` (the draft model), ``DIR/log.csv``, ``DIR/summary.json``
(agreement with the target and the greedy acceptance at gamma = 2, 4, 8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = ("data", "imitation", "rl", "draft", "speedups")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="build training data (--stage data), copycat counter-samples from it (--stage speedups), "
        "train the model (--stage imitation), post-train it (--stage rl) or train its draft (--stage draft)",
    )
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
    p.add_argument(
        "--expert", choices=("log", "idm"), default="log",
        help="data stage: targets from the human log (recovery-blended) or the privileged idm planner; "
        "rl stage: which of the two drives the ticks",
    )  # fmt: skip
    p.add_argument(
        "--expert-gap", type=float, default=None, metavar="M",
        help="data stage: the idm expert's standstill gap to its lead (m; default: the idm baseline's, 2)",
    )  # fmt: skip
    p.add_argument(
        "--driver", type=Path, default=None,
        help="DAgger: this alpamayo checkpoint drives (data stage: the expert still labels every step; rl "
        "stage: the ticks are the states it reaches)",
    )  # fmt: skip
    p.add_argument(
        "--closing", type=int, default=0,
        help="data stage: drives per scene that first close in on the lead (2 s of 1-2.5 m/s^2 extra)",
    )  # fmt: skip
    p.add_argument(
        "--yaw-swings", type=int, default=0, metavar="N",
        help="data stage: drives per scene handed over mid-swerve (heading swung 0.05-0.2 rad over the 0.4 s "
        "before t0)",
    )  # fmt: skip
    p.add_argument(
        "--close-up", type=int, default=0, metavar="N",
        help="data stage: drives per scene that start with the ego moved up 2-5 m (+0.3 s) behind its lead",
    )  # fmt: skip
    p.add_argument(
        "--lead-stops", type=int, default=0, metavar="N",
        help="data and rl stages: drives per scene in which the lead brakes to a stop (every other one from a "
        "close-up start)",
    )  # fmt: skip
    p.add_argument(
        "--lead-creeps", type=int, default=0, metavar="N",
        help="data stage: like --lead-stops, then the lead goes on stop-and-go (stand 0.5-1.5 s, roll 0.5-1.2 s)",
    )  # fmt: skip
    p.add_argument(
        "--partial-egos", type=float, default=None, metavar="SECONDS",
        help="data and rl stages: cars present that long (not the whole recording) are egos too",
    )  # fmt: skip
    p.add_argument(
        "--time-scale", type=float, nargs="+", default=(), metavar="F",
        help="data and rl stages: also drive every scene replayed at F times its speed (0.2: 10 m/s traffic "
        "crawls at 2)",
    )  # fmt: skip
    p.add_argument(
        "--frame-stride", type=int, default=1, metavar="N",
        help="data stage: ticks (0.1 s) between a sample's frames; train with --model-option frame_stride=N",
    )  # fmt: skip
    p.add_argument(
        "--driver-share",
        type=float,
        default=1.0,
        help="data and rl stages: share of steps the --driver's plan is executed",
    )
    g = p.add_argument_group("imitation stage")
    g.add_argument(
        "--data", type=Path, nargs="+", default=None,
        help="folder(s) of data-stage shards, used together (default: <out>/data)",
    )  # fmt: skip
    g.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default 200; draft 300; rl 600)"
    )
    g.add_argument("--batch", type=int, default=4, help="samples per step")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate, warm-up then cosine to 10 %% (default 3e-4; draft 2e-3; rl 1e-4, constant)",
    )
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
    g.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="change a preset field of the model trained from scratch (e.g. patch_size=8); repeatable",
    )  # fmt: skip
    g.add_argument(
        "--batched", action="store_true",
        help="one padded forward per step instead of one per sample: the same losses up to float "
        "rounding, about 2x faster on CPU (not bit-identical to a run without it)",
    )  # fmt: skip
    g.add_argument(
        "--speed-balance", type=float, default=0.0,
        help="share of each batch drawn evenly over 5 m/s speed bins (rare highway speeds seen more often)",
    )  # fmt: skip
    g.add_argument(
        "--history-dropout", type=float, default=0.0, metavar="P",
        help="share of samples whose prompt shows a car standing at its pose (their actions keep the "
        "real speed), so the model reads the scene from the frames, not its own past motion",
    )  # fmt: skip
    g.add_argument(
        "--ema", type=float, default=0.0, metavar="DECAY",
        help="save an exponential moving average of the weights with this decay per step (e.g. "
        "0.999) as the checkpoint's weights; 0 = the last step's weights",
    )  # fmt: skip
    g.add_argument(
        "--init", type=Path, default=None,
        help="imitation: fine-tune this checkpoint (its weights, config and action statistics) "
        "instead of a fresh preset model, e.g. after a DAgger round; rl: the checkpoint to "
        "post-train (and the KL reference)",
    )  # fmt: skip
    r = p.add_argument_group(
        "rl stage (with --steps --lr --save-every --resume --seed --perturbations --init --expert "
        "--lead-stops --time-scale --partial-egos)"
    )
    r.add_argument("--samples", type=int, default=8, help="K trajectory samples per tick (the group)")
    r.add_argument("--ticks", type=int, default=2, help="ticks per optimizer step")
    r.add_argument("--sigma", type=float, default=0.7, help="noise scale of the stochastic flow sampler")
    r.add_argument("--clip", type=float, default=0.2, help="ratio clip epsilon")
    r.add_argument("--kl-weight", type=float, default=0.2, help="weight of the KL anchor to --init")
    r.add_argument(
        "--consistency-weight", type=float, default=2.0,
        help="reward += W x the plan's agreement with its CoC's meta-action (1 both parts, 0.5 one)",
    )  # fmt: skip
    r.add_argument("--epochs", type=int, default=1, help="updates per batch of rollouts")
    r.add_argument("--stride", type=int, default=2, help="ticks: every N-th step of a training drive")
    r.add_argument("--time-limit", type=float, default=1800.0, help="seconds; checkpoint and stop after")
    r.add_argument("--profile", default="project", help="scoring profile of the reward")
    g = p.add_argument_group("speedups stage (also uses --data, --seed)")
    g.add_argument(
        "--copies", type=int, default=2,
        help="counter-samples drawn per eligible sample (a stopped lead <= --max-gap ahead, ego <= 2.5 m/s)",
    )  # fmt: skip
    g.add_argument(
        "--max-gap", type=float, default=10.0,
        help="largest bumper gap (m) to the stopped lead in a sample's CoC label for it to get copies",
    )  # fmt: skip
    g = p.add_argument_group("draft stage (also uses --data, --steps, --batch, --lr, --seed)")
    g.add_argument("--target", type=Path, default=None, help="trained target checkpoint to distil from")
    g.add_argument("--draft-layers", type=int, default=1, help="transformer layers of the draft")
    p.set_defaults(func=_cmd_train)


def _cmd_draft(args: argparse.Namespace) -> int:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.training.draft import DraftTrainConfig, train_draft

    if args.target is None:
        raise ConfigError("train --stage draft needs --target CKPT (the trained model to distil from)")
    cfg = DraftTrainConfig(
        steps=DraftTrainConfig().steps if args.steps is None else args.steps,
        batch=args.batch,
        lr=2e-3 if args.lr is None else args.lr,
        seed=args.seed,
        layers=args.draft_layers,
    )
    s = train_draft(args.target, args.data or [args.out / "data"], args.out, cfg)
    a = s["after"].get("held_out") or s["after"]["train"]
    print(
        f"draft {s['draft']} ({s['draft_params'] / 1e6:.2f} M params) from {s['samples']} sample(s) in "
        f"{s['seconds']:.0f} s; loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}; agreement with the "
        f"target {a['agreement']:.3f}, greedy acceptance gamma=4 {a['acceptance_g4']:.3f}"
    )
    return 0


def _model_options(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> model config overrides (YAML values; lists become tuples), checked
    against :class:`~alpasim_policy.model.config.AlpamayoConfig`'s fields so a typo is an error."""
    import dataclasses

    from alpasim_policy.errors import ConfigError
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.policies.registry import parse_options

    try:
        opts = parse_options(items)
    except ConfigError as e:
        raise ConfigError(str(e).replace("--policy-option", "--model-option")) from None
    known = {f.name for f in dataclasses.fields(AlpamayoConfig)} - {"preset"}
    for key, value in list(opts.items()):
        if key not in known:
            raise ConfigError(f"--model-option {key!r}: not a model config field ({', '.join(sorted(known))})")
        if isinstance(value, list):
            opts[key] = tuple(value)
    return opts


def _cmd_imitation(args: argparse.Namespace) -> int:
    from alpasim_policy.training.imitation import ImitationConfig, train_imitation

    cfg = ImitationConfig(
        preset=args.preset,
        steps=ImitationConfig().steps if args.steps is None else args.steps,
        batch=args.batch,
        lr=3e-4 if args.lr is None else args.lr,
        seed=args.seed,
        save_every=args.save_every,
        lm_weight=args.lm_weight,
        flow_weight=args.flow_weight,
        flow_samples=args.flow_samples,
        action_stats=args.action_stats,
        speed_balance=args.speed_balance,
        batched=args.batched,
        ema=args.ema,
        history_dropout=args.history_dropout,
        model_options=_model_options(args.model_option),
        init=str(args.init or ""),
    )
    s = train_imitation(
        args.data or [args.out / "data"], args.out, cfg, resume=args.resume, stop_after=args.stop_after
    )
    final = s["final"] or {}
    print(
        f"{s['steps']} step(s) on {s['samples']} sample(s) in {s['seconds']:.0f} s; "
        f"checkpoint {s['checkpoint']}; final lm {final.get('lm_loss', float('nan')):.4f}, "
        f"flow {final.get('flow_loss', float('nan')):.4f}"
    )
    return 0


def _cmd_rl(args: argparse.Namespace) -> int:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scenes.suite import scenarios_root
    from alpasim_policy.training.rl import RLConfig, train_rl, training_scenes

    data_only = {"--closing": args.closing, "--yaw-swings": args.yaw_swings, "--close-up": args.close_up,
                 "--lead-creeps": args.lead_creeps, "--expert-gap": args.expert_gap}  # fmt: skip
    given = [flag for flag, value in data_only.items() if value]
    if given:
        raise ConfigError(f"{', '.join(given)}: data stage only; the rl stage's drives take --expert, "
                          "--driver, --driver-share, --lead-stops, --time-scale, --partial-egos and "
                          "--perturbations")  # fmt: skip
    cfg = RLConfig(
        init=str(args.init or ""),
        steps=RLConfig().steps if args.steps is None else args.steps,
        ticks=args.ticks,
        samples=args.samples,
        lr=RLConfig().lr if args.lr is None else args.lr,
        sigma=args.sigma,
        clip=args.clip,
        kl_weight=args.kl_weight,
        consistency_weight=args.consistency_weight,
        epochs=args.epochs,
        seed=args.seed,
        save_every=args.save_every,
        time_limit_s=args.time_limit,
        profile=args.profile,
        stride=args.stride,
        perturbations=args.perturbations,
        max_lateral=args.max_lateral,
        expert=args.expert,
        lead_stops=args.lead_stops,
        time_scales=tuple(args.time_scale),
        partial_egos_s=args.partial_egos,
        driver=None if args.driver is None else str(args.driver),
        driver_share=args.driver_share,
    )
    cfg.validate()
    scenes = training_scenes(args.raw or scenarios_root() / "raw", args.exclude_suite, cfg)
    s = train_rl(args.out, cfg, scenes, resume=args.resume)

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(
        f"{s['steps']} RL step(s) on {s['ticks']} tick(s) of {len(s['scenes'])} scene(s) in {s['seconds']:.0f} s; "
        f"checkpoint {s['checkpoint']}; deterministic-sampler EPDMS on {s['eval_ticks']} ticks: "
        f"{num(s['eval_reward_before'])} -> {num(s['eval_reward_after'])}; plans doing their CoC's "
        f"meta-action: {num(s['eval_consistency_before'])} -> {num(s['eval_consistency_after'])}"
    )
    return 0


def _cmd_speedups(args: argparse.Namespace) -> int:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.training.speedups import build_speedups

    if not args.data:
        raise ConfigError("train --stage speedups needs --data (the data-stage shard folders to copy from)")
    m = build_speedups(args.data, args.out, copies=args.copies, seed=args.seed, max_gap=args.max_gap)
    print(
        f"{m['samples_written']} counter-sample(s) from {m['samples_with_copies']} sample(s) in "
        f"{len(m['shards'])} shard(s): {args.out}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scenes.suite import scenarios_root

    if args.stage == "imitation":
        return _cmd_imitation(args)
    if args.stage == "rl":
        return _cmd_rl(args)
    if args.stage == "draft":
        return _cmd_draft(args)
    if args.stage == "speedups":
        return _cmd_speedups(args)

    if args.perturbations < 0:
        raise ConfigError(f"--perturbations must be >= 0, got {args.perturbations}")
    if not 1 <= args.min_future <= 64:
        raise ConfigError(f"--min-future must be in 1..64 steps, got {args.min_future}")
    if args.max_lateral < 0.5:
        raise ConfigError(f"--max-lateral must be >= 0.5 m, got {args.max_lateral}")
    if args.closing < 0:
        raise ConfigError(f"--closing must be >= 0, got {args.closing}")
    if args.yaw_swings < 0:
        raise ConfigError(f"--yaw-swings must be >= 0, got {args.yaw_swings}")
    if args.close_up < 0:
        raise ConfigError(f"--close-up must be >= 0, got {args.close_up}")
    if args.close_up and args.expert != "idm":
        raise ConfigError("--close-up needs --expert idm: the log's future does not fit a car moved off its place")
    if args.lead_stops < 0:
        raise ConfigError(f"--lead-stops must be >= 0, got {args.lead_stops}")
    if args.lead_creeps < 0:
        raise ConfigError(f"--lead-creeps must be >= 0, got {args.lead_creeps}")
    if (args.lead_stops or args.lead_creeps) and args.expert != "idm":
        raise ConfigError("--lead-stops / --lead-creeps need --expert idm: the log's future ignores a lead that now stops")
    if args.expert_gap is not None and not 0.5 <= args.expert_gap <= 20.0:
        raise ConfigError(f"--expert-gap must be in [0.5, 20] m, got {args.expert_gap}")
    if args.expert_gap is not None and args.expert != "idm":
        raise ConfigError("--expert-gap needs --expert idm: the log's driver keeps the gap they kept")
    if args.partial_egos is not None and args.partial_egos < 4.0:
        raise ConfigError(f"--partial-egos must be >= 4 s (warm-up + 2 s of future), got {args.partial_egos}")
    bad = [f for f in args.time_scale if not 0.05 <= f <= 4.0]
    if bad:
        raise ConfigError(f"--time-scale {bad[0]}: a speed factor must be in [0.05, 4]")
    if not 0.0 <= args.driver_share <= 1.0:
        raise ConfigError(f"--driver-share must be in [0, 1], got {args.driver_share}")
    if args.driver is not None and not (args.driver / "config.json").is_file():
        raise ConfigError(f"--driver {args.driver}: not a checkpoint folder (no config.json)")
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
        expert=args.expert,
        driver=args.driver,
        driver_share=args.driver_share,
        closing=args.closing,
        yaw_swings=args.yaw_swings,
        partial_egos_s=args.partial_egos,
        time_scales=tuple(args.time_scale),
        close_up=args.close_up,
        lead_stops=args.lead_stops,
        lead_creeps=args.lead_creeps,
        expert_gap=args.expert_gap,
        frame_stride=args.frame_stride,
    )
    print(
        f"{len(m['shards'])} shard(s) from {len(m['scenes'])} scene(s) in {args.out / 'data'} "
        f"({m['held_out_dropped']} of {m['candidate_scenes']} imported scenes overlap suite "
        f"{m['excluded_suite']!r} and were left out)"
    )
    print(json.dumps({"shards": len(m["shards"]), "scenes": len(m["scenes"]), "samples": m["samples"]}))
    return 0
