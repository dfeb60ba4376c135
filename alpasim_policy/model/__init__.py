"""model stage: the Alpamayo-R1-style reasoning VLA (Qwen3-VL + flow-matching action expert).

Public API (imported lazily so ``alpasim-policy --help`` does not load torch / transformers)::

    from alpasim_policy.model import AlpamayoConfig, AlpamayoR1, DriveOutput

    model = AlpamayoR1(AlpamayoConfig.from_preset("tiny"))          # random weights, local tokenizer
    model = AlpamayoR1.from_pretrained("weights/", device="cuda")    # a folder NVlabs' save_pretrained
                                                                    # wrote (or ours), any size
    out = model.drive(images, history_xyh, speed, command, num_samples=6,
                      reasoning="single", diffusion="graph", generator=g)
    out.trajectories  # (K, 64, 3) rig frame; out.reasoning: list[str]; out.timings: dict
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AlpamayoConfig": "alpasim_policy.model.config",
    "PRESETS": "alpasim_policy.model.config",
    "AlpamayoR1": "alpasim_policy.model.modeling_alpamayo",
    "DriveOutput": "alpasim_policy.model.modeling_alpamayo",
    "AlpamayoProcessor": "alpasim_policy.model.processing_alpamayo",
    "AlpamayoTokenizer": "alpasim_policy.model.tokenizer",
    "DeltaTrajectoryTokenizer": "alpasim_policy.model.tokenizer",
    "integrate_unicycle": "alpasim_policy.model.action_space",
    "estimate_speed": "alpasim_policy.model.action_space",
    "estimate_v0": "alpasim_policy.model.action_space",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
