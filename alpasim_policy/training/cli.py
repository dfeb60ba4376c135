"""``alpasim-policy train``: build training data from raw recordings (the stages after it follow).

``train --stage data --out DIR`` imports every raw recording (CommonRoad XML files, AV2 sensor logs
and motion-forecasting scenarios under ``--raw``), drops the scenes that overlap the evaluation
suite (``--exclude-suite``, default ``bundled``), drives each remaining scene once on the log and
``--perturbations`` times off it (:mod:`alpasim_policy.training.data`), and writes one ``.npz``
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
from typing import Any

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
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("imitation stage")
    g.add_argument("--data", type=Path, default=None, help="shards of the data stage (default: <out>/data)")
    g.add_argument("--steps", type=int, default=200, help="optimizer steps")
    g.add_argument("--batch", type=int, default=4, help="samples per step")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warm-up, cosine to 10 %%)")
    g.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    g.add_argument("--lm-weight", type=float, default=1.0, help="weight of the CoC language-model loss")
    g.add_argument("--flow-weight", type=float, default=1.0, help="weight of the flow-matching loss")
    g.add_argument("--flow-samples", type=int, default=4, help="(noise, t) pairs per sample and step")
    p.set_defaults(func=_cmd_train)


def raw_scenes(raw: Path) -> list[Any]:
    """Every scene the importers make of the recordings under ``raw`` (sorted, deterministic)."""
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.scenes.importers.av2 import import_av2_forecasting, import_av2_sensor
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    if not raw.is_dir():
        raise ConfigError(f"--raw {raw}: not a folder of raw recordings")
    scenes: list[Any] = []
    for xml in sorted(raw.glob("commonroad/*.xml")):
        scenes += import_commonroad(xml)
    for log in sorted(p for p in raw.glob("av2/sensor/*") if p.is_dir()):
        scenes += import_av2_sensor(log)
    for sc in sorted(p for p in raw.glob("av2/forecasting/*") if p.is_dir()):
        scenes += import_av2_forecasting(sc)
    if not scenes:
        raise ConfigError(f"--raw {raw}: no CommonRoad XML or AV2 log found (commonroad/*.xml, av2/...)")
    return scenes


def _perturbations(scene: Any, count: int, max_lateral: float, seed: int) -> list[Any]:
    """``count`` perturbations drawn from a generator seeded by (seed, scene id): reproducible."""
    import zlib

    import numpy as np

    from alpasim_policy.training.data import Perturbation

    rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode())])
    t0 = scene.metadata.t0_index
    out = []
    for _ in range(count):
        lateral = float(rng.uniform(0.5, max_lateral) * rng.choice([-1.0, 1.0]))
        start = int(rng.integers(t0, max(t0 + 1, min(t0 + 20, scene.num_steps - 45))))
        out.append(Perturbation(lateral_m=round(lateral, 3), start_step=start))
    return out


def build_data(
    out: Path,
    raw: Path,
    exclude_suite: str | None,
    preset: str,
    perturbations: int,
    max_lateral: float,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``data`` stage; returns the manifest (also written to ``out/data/manifest.json``)."""
    from tqdm import tqdm

    import alpasim_policy.sim  # noqa: F401  (registers the env)
    from alpasim_policy.io import atomic_write_json
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite
    from alpasim_policy.training.data import drive_samples, held_out_filter, save_samples

    frames = AlpamayoConfig.from_preset(preset).frames
    camera_size = DEFAULT_CAMERA_SIZE.get(preset)
    if camera_size is None:
        from alpasim_policy.errors import ConfigError

        raise ConfigError(
            f"--preset {preset!r}: no camera size known; choose from {sorted(DEFAULT_CAMERA_SIZE)}"
        )
    candidates = raw_scenes(raw)
    suite = [load_scene(p) for p in load_suite(exclude_suite)] if exclude_suite else []
    scenes = held_out_filter(candidates, suite)
    jobs = [(sc, None) for sc in scenes]
    jobs += [(sc, p) for sc in scenes for p in _perturbations(sc, perturbations, max_lateral, seed)]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = tqdm(jobs, desc="train data", unit="drive", disable=not progress)
    for scene, pert in bar:
        name = (
            f"{scene.scene_id}-{'log' if pert is None else f'p{pert.lateral_m:+.3f}@{pert.start_step}'}.npz"
        )
        path = data / name
        if not path.is_file():  # resume: shards are written atomically, so one that exists is whole
            samples = list(drive_samples(scene, camera_size=camera_size, frames=frames, perturbation=pert))
            if not samples:
                continue
            save_samples(samples, path)
        shards.append(name)
    manifest = {
        "stage": "data",
        "preset": preset,
        "camera_size": list(camera_size),
        "frames": frames,
        "seed": seed,
        "perturbations_per_scene": perturbations,
        "max_lateral_m": max_lateral,
        "excluded_suite": exclude_suite,
        "candidate_scenes": len(candidates),
        "held_out_dropped": len(candidates) - len(scenes),
        "scenes": [sc.scene_id for sc in scenes],
        "shards": shards,
    }
    atomic_write_json(data / "manifest.json", manifest)
    return manifest


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
    )
    s = train_imitation(args.data or args.out / "data", args.out, cfg, resume=args.resume)
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
    if args.max_lateral < 0.5:
        raise ConfigError(f"--max-lateral must be >= 0.5 m, got {args.max_lateral}")
    raw = args.raw or scenarios_root() / "raw"
    m = build_data(
        args.out, raw, args.exclude_suite, args.preset, args.perturbations, args.max_lateral, args.seed
    )
    print(
        f"{len(m['shards'])} shard(s) from {len(m['scenes'])} scene(s) in {args.out / 'data'} "
        f"({m['held_out_dropped']} of {m['candidate_scenes']} imported scenes overlap suite "
        f"{m['excluded_suite']!r} and were left out)"
    )
    print(json.dumps({"shards": len(m["shards"]), "scenes": len(m["scenes"])}))
    return 0
