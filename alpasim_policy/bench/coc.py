"""``alpasim-policy bench coc``: does the model's chain of causation say what the labeler says?

On scenes never trained on (a suite's scenes: ``train --stage data`` leaves every suite scene
out), the ego drives the log (:func:`~alpasim_policy.training.data.drive_samples`, no
perturbation), so at each step the auto-labeler's CoC is exactly the one training would have used.
The model gets that step's inputs the way the ``alpamayo`` policy passes them (cameras, 16-step
history, v0 from the history, command) and makes one greedy CoC and one trajectory. Per step:

* **causal-factor match**: the CoC's factor kind (lead vehicle, red light, curve, free road, ...)
  equals the labeler's;
* **meta-action match**: the CoC's meta-action equals the labeler's (what the *log* did);
* **reasoning-action consistency**: the CoC's meta-action is what the model's own trajectory does
  (the leaderboard column's rule, here on the log's states).

Open loop on purpose: in closed loop the ego leaves the log and the labeler's facts at a step
(the logged ego's route position) no longer describe the car; consistency in closed loop is the
leaderboard's ``reasoning_consistency``.
"""

from __future__ import annotations

import argparse
from typing import Any


def coc_agreement(model: Any, scenes: list[Any], camera_size: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    """Per-scene and total counts of factor / meta-action matches and consistency (see the module doc)."""
    import numpy as np
    import torch

    from alpasim_policy.scoring.reasoning import classify_trajectory, parse_coc
    from alpasim_policy.training.data import drive_samples

    per_scene = []
    tot = {"steps": 0, "parsed": 0, "factor": 0, "action": 0, "consistent": 0}
    for scene in scenes:
        c = {"scene": scene.scene_id, "steps": 0, "parsed": 0, "factor": 0, "action": 0, "consistent": 0}
        gen = torch.Generator().manual_seed(seed)
        gen_samples = drive_samples(
            scene,
            camera_size=camera_size,
            frames=model.config.frames,
            frame_stride=model.config.frame_stride,
            min_future_steps=20,
        )
        for s in gen_samples:
            out = model.drive(
                s.images, np.asarray(s.history, np.float64)[:, :3], None, s.command, num_samples=1, generator=gen
            )
            said, truth = parse_coc(out.reasoning[0]), parse_coc(s.coc)
            c["steps"] += 1
            if said.action is None:
                continue
            c["parsed"] += 1
            c["factor"] += int(said.factor == truth.factor)
            c["action"] += int(said.action == truth.action)
            traj = np.asarray(out.trajectories, np.float64)[0]
            c["consistent"] += int(classify_trajectory(traj[:40], s.speed) == said.action)
        per_scene.append(c)
        for k in tot:
            tot[k] += c[k]
    n = max(1, tot["steps"])
    return {
        **tot,
        "factor_match": tot["factor"] / n,
        "action_match": tot["action"] / n,
        "consistency": tot["consistent"] / max(1, tot["parsed"]),
        "per_scene": per_scene,
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE, resolve_weights
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite

    torch.set_num_threads(args.threads)
    from alpasim_policy.model import AlpamayoConfig, AlpamayoR1

    weights = resolve_weights(args.preset, args.weights)
    if weights is None:
        torch.manual_seed(args.seed)
        model = AlpamayoR1.create(AlpamayoConfig.from_preset(args.preset))
    else:
        model = AlpamayoR1.from_pretrained(weights)
    model.eval()
    paths = load_suite(args.suite)
    if args.scenes:
        wanted = set(args.scenes.split(","))
        paths = [p for p in paths if p.stem in wanted]
    scenes = [load_scene(p) for p in paths]
    with torch.no_grad():
        r = coc_agreement(model, scenes, DEFAULT_CAMERA_SIZE[args.preset], args.seed)
    label = "random weights" if weights is None else str(args.weights or "shipped weights")
    write_rows(
        [
            {
                "benchmark": f"CoC vs the auto-labeler, open loop on the log of {len(scenes)} never-trained "
                f"scenes of {args.suite} ({args.preset}, {label})",
                "result": f"causal factor {r['factor_match']:.1%}, meta-action {r['action_match']:.1%}, "
                f"reasoning-action consistency {r['consistency']:.1%} over {r['steps']} steps "
                f"({r['parsed']} CoCs on template)",
                "ratio": f"factor {r['factor_match'] / 0.70:.2f} of the 70 % target, consistency "
                f"{r['consistency'] / 0.80:.2f} of the 80 % target",
            }
        ],
        args,
    )
    print_summary({k: v for k, v in r.items() if k != "per_scene"})
    return 0
