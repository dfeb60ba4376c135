"""Configuration of the Alpamayo-R1-style driving model, with size presets.

Why a plain dataclass and not a ``PretrainedConfig``: the model is an ``nn.Module`` that *contains*
two transformers models (the Qwen3-VL VLM and a Qwen3-VL text tower as action expert); this config
is the single source both are derived from (:meth:`AlpamayoConfig.vlm_config`,
:meth:`AlpamayoConfig.expert_config`), and it round-trips through ``config.json`` as plain JSON.

Design facts (learned from NVlabs/alpamayo and the Alpamayo-R1 paper, re-stated here):

* VLM = Qwen3-VL (ViT with DeepStack + Qwen3 text decoder with interleaved M-RoPE).
* Inputs: ``cameras`` x ``frames`` images (4 x 4 at 0.1 s), 16 steps of ego history turned into
  48 discrete tokens (delta tokenizer: x, y, z per step, 1000 bins over +-4 m / +-4 m / +-10 m).
* The trajectory vocabulary ``<i0> ... <i{traj_vocab_size-1}>`` is appended to the text
  vocabulary; history bins start at ``hist_token_offset`` inside it (after the future tokenizer's
  bins). Those tokens are never sampled while reasoning.
* The action expert is a Qwen3-VL text tower with its own width but the VLM's layer count, KV
  heads and head dim, so each expert layer attends to the matching VLM layer's KV cache.
* Action space: unicycle (acceleration, curvature) at each of 64 future steps of 0.1 s;
  flow matching with 10 Euler steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from alpasim_policy.errors import ConfigError

#: Preset name -> the fields that differ from the dataclass defaults (the defaults are ``tiny``).
PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {
        "text_layers": 6,
        "text_hidden": 512,
        "text_heads": 8,
        "kv_heads": 4,
        "head_dim": 64,
        "text_intermediate": 1536,
        "mrope_section": (12, 10, 10),
        "vision_depth": 4,
        "vision_hidden": 256,
        "vision_heads": 4,
        "vision_intermediate": 768,
        "deepstack_indexes": (1, 2, 3),
        "expert_hidden": 256,
        "expert_heads": 8,
        "expert_intermediate": 768,
        "action_proj_hidden": 256,
        "action_proj_layers": 3,
        "image_hw": (128, 192),
    },
    # ~3 M parameters at the real input layout (4 cameras x 4 frames at 224^2, 49 tokens per image,
    # a ~950-token prompt): the CPU benchmark config of issue 15, small enough to run side by side
    # with NVlabs' own code on a 2-core machine yet with the real prompt length, so per-step
    # overhead vs arithmetic is measured at the real sequence shapes.
    "bench3m": {
        "text_layers": 4,
        "text_hidden": 128,
        "text_heads": 4,
        "kv_heads": 2,
        "head_dim": 32,
        "text_intermediate": 384,
        "mrope_section": (6, 5, 5),
        "vision_depth": 2,
        "vision_hidden": 64,
        "vision_heads": 2,
        "vision_intermediate": 192,
        "deepstack_indexes": (0,),
        "expert_hidden": 64,
        "expert_heads": 4,
        "expert_intermediate": 192,
        "action_proj_hidden": 64,
        "action_proj_layers": 2,
        "image_hw": (224, 224),
    },
    # Qwen3-VL-8B text + ViT; expert sizes per the Alpamayo-R1 release.
    "alpamayo-r1-10b": {
        "text_layers": 36,
        "text_hidden": 4096,
        "text_heads": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "text_intermediate": 12288,
        "mrope_section": (24, 20, 20),
        "vocab_size": 155_697,
        "vision_depth": 27,
        "vision_hidden": 1152,
        "vision_heads": 16,
        "vision_intermediate": 4304,
        "deepstack_indexes": (8, 16, 24),
        "num_position_embeddings": 2304,
        "expert_hidden": 2048,
        "expert_heads": 16,
        "expert_intermediate": 8256,
        "action_proj_hidden": 1024,
        "action_proj_layers": 4,
        "image_hw": (320, 512),
        "dtype": "bfloat16",
    },
}
PRESETS = tuple(PRESET_FIELDS)


@dataclass
class AlpamayoConfig:
    # a preset name, or "nvlabs" for a config mapped from an NVlabs checkpoint folder (weights_io)
    preset: str = "tiny"

    # --- VLM text decoder (Qwen3-VL text) ---
    text_layers: int = 2
    text_hidden: int = 64
    text_heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    text_intermediate: int = 128
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (4, 2, 2)  # sums to head_dim / 2
    vocab_size: int | None = None  # None: len(tokenizer); a real checkpoint fixes it
    rms_norm_eps: float = 1e-6

    # --- Vision tower (Qwen3-VL ViT) ---
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    deepstack_indexes: tuple[int, ...] = (0,)
    num_position_embeddings: int = 256

    # --- Action expert (Qwen3-VL text tower without embeddings) ---
    expert_hidden: int = 48
    expert_heads: int = 4
    expert_intermediate: int = 96

    # --- Action input projection (Fourier features + MLP) ---
    action_proj_hidden: int = 64
    action_proj_layers: int = 2
    fourier_features: int = 20
    fourier_max_freq: float = 100.0

    # --- Action space and flow matching ---
    n_waypoints: int = 64
    dt: float = 0.1
    accel_mean: float = 0.0
    accel_std: float = 1.0
    curvature_mean: float = 0.0
    curvature_std: float = 0.02  # 1/m; typical spread of driving curvature
    flow_steps: int = 10
    # trajectory integration: "nvlabs" (trapezoidal, as NVlabs' action_to_traj) or "exact" (arcs)
    integration: str = "nvlabs"
    # v0 from the history: NVlabs' regularised least squares (estimate_t0_states)
    v_lambda: float = 1e-6
    v_ridge: float = 1e-4

    # --- Inputs ---
    cameras: int = 4
    frames: int = 4
    #: ticks (0.1 s each) between a camera's consecutive frames: 1 is Alpamayo-R1's 0.1 s spacing.
    #: Larger spans more time with the same F images, so slow relative motion (a lead 3 m ahead
    #: closing at 1-2 m/s) moves further between frames; a data-and-policy setting, no weight
    #: depends on it, but a model must run with the spacing it was trained on
    frame_stride: int = 1
    image_hw: tuple[int, int] = (64, 64)  # model input size, multiple of patch * merge
    history_steps: int = 16
    hist_bins: int = 1000
    hist_xyz_min: tuple[float, float, float] = (-4.0, -4.0, -10.0)
    hist_xyz_max: tuple[float, float, float] = (4.0, 4.0, 10.0)
    traj_vocab_size: int = 4000
    hist_token_offset: int = 3000

    # --- Reasoning ---
    #: CoC length limit: NVlabs' default (``max_generation_length`` = ``tokens_per_future_traj`` = 64)
    max_cot_tokens: int = 64
    temperature: float = 0.6
    top_p: float = 0.98

    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mrope_section = tuple(self.mrope_section)
        self.deepstack_indexes = tuple(self.deepstack_indexes)
        self.image_hw = tuple(self.image_hw)
        self.hist_xyz_min = tuple(self.hist_xyz_min)
        self.hist_xyz_max = tuple(self.hist_xyz_max)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AlpamayoConfig:
        """``tiny`` (0.85 M params, CPU / CI), ``bench3m`` (~3 M, real 224^2 input layout, CPU benchmarks),
        ``small`` (39 M), ``alpamayo-r1-10b`` (real sizes, 10.9 B)."""
        if name not in PRESET_FIELDS:
            raise ConfigError(f"model preset {name!r} unknown; choose one of {', '.join(PRESETS)}")
        base = {**PRESET_FIELDS[name], **overrides}
        return cls(preset=name, **base)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model config '{key}': {msg}")

        need(self.text_heads % self.kv_heads == 0, "text_heads", "must be a multiple of kv_heads")
        need(self.expert_heads % self.kv_heads == 0, "expert_heads", "must be a multiple of kv_heads")
        need(sum(self.mrope_section) * 2 == self.head_dim, "mrope_section", "must sum to head_dim / 2")
        need(
            all(0 <= i < self.vision_depth for i in self.deepstack_indexes),
            "deepstack_indexes",
            "must index ViT blocks",
        )
        unit = self.patch_size * self.spatial_merge_size
        need(
            self.image_hw[0] % unit == 0 and self.image_hw[1] % unit == 0,
            "image_hw",
            f"must be multiples of patch_size * spatial_merge_size = {unit}",
        )
        need(self.fourier_features % 2 == 0, "fourier_features", "must be even (sin + cos)")
        need(self.history_steps >= 2, "history_steps", "need at least 2 steps to estimate speed")
        need(
            self.hist_token_offset + self.hist_bins <= self.traj_vocab_size,
            "hist_token_offset",
            "history bins must fit in traj_vocab_size",
        )
        need(self.flow_steps >= 1, "flow_steps", "must be >= 1")
        stride = self.frame_stride
        need(isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1, "frame_stride", "must be an integer >= 1")
        need(self.integration in ("nvlabs", "exact"), "integration", "nvlabs or exact")
        need(self.dtype in ("float32", "bfloat16", "float16"), "dtype", "float32, bfloat16 or float16")

    # ------------------------------------------------------------------ derived
    @property
    def num_images(self) -> int:
        return self.cameras * self.frames

    @property
    def tokens_per_image(self) -> int:
        h, w = self.image_hw
        return (h // self.patch_size) * (w // self.patch_size) // self.spatial_merge_size**2

    @property
    def history_tokens(self) -> int:
        return self.history_steps * 3

    @property
    def torch_dtype(self):  # noqa: ANN201 - torch imported lazily
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def _rope(self) -> dict[str, Any]:
        return {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "mrope_section": list(self.mrope_section),
            "mrope_interleaved": True,
        }

    def vlm_config(self, vocab_size: int, token_ids: dict[str, int]):  # noqa: ANN201
        """The ``transformers.Qwen3VLConfig`` of the VLM."""
        from transformers import Qwen3VLConfig

        text = dict(
            vocab_size=vocab_size,
            hidden_size=self.text_hidden,
            intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=self._rope(),
            max_position_embeddings=262_144,
            pad_token_id=token_ids["pad"],
        )
        vision = dict(
            depth=self.vision_depth,
            hidden_size=self.vision_hidden,
            intermediate_size=self.vision_intermediate,
            num_heads=self.vision_heads,
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            spatial_merge_size=self.spatial_merge_size,
            out_hidden_size=self.text_hidden,
            num_position_embeddings=self.num_position_embeddings,
            deepstack_visual_indexes=list(self.deepstack_indexes),
        )
        cfg = Qwen3VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=token_ids["image_pad"],
            video_token_id=token_ids["video_pad"],
            vision_start_token_id=token_ids["vision_start"],
            vision_end_token_id=token_ids["vision_end"],
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = "sdpa"
        cfg.text_config._attn_implementation = "sdpa"
        cfg.vision_config._attn_implementation = "sdpa"
        return cfg

    def expert_config(self, vocab_size: int):  # noqa: ANN201
        """The ``transformers.Qwen3VLTextConfig`` of the action expert (same layers / KV layout as the VLM)."""
        from transformers import Qwen3VLTextConfig

        cfg = Qwen3VLTextConfig(
            vocab_size=vocab_size,
            hidden_size=self.expert_hidden,
            intermediate_size=self.expert_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.expert_heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=self._rope(),
            max_position_embeddings=262_144,
        )
        cfg._attn_implementation = "sdpa"
        return cfg

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["model_type"] = "alpamayo_r1"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlpamayoConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model_type"})
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})
