"""Checkpoint folders: read NVlabs' ``config.json`` as it is, find the tokenizer, read safetensors shards.

Why here and not in the model: a folder written by NVlabs' ``save_pretrained`` (the released
Alpamayo-R1 or a user's fine-tune) describes the model in NVlabs' terms — the base VLM it names
(``vlm_name_or_path``, whose ``config.json`` gives the text / vision sizes), ``expert_cfg``
overrides of the text config, Hydra-style ``*_cfg`` blocks for the action projection, action space,
flow matching and trajectory tokenizers. :func:`config_from_nvlabs` maps those onto
:class:`AlpamayoConfig` field by field and refuses what this implementation cannot reproduce,
naming the key. Folders written by this package (``model_type`` ``alpamayo_r1`` with our field
names) load directly.

The tokenizer is the checkpoint's own (its folder, else the base-VLM folder it names, extended with
the trajectory and special tokens exactly as NVlabs extends it); a vocabulary whose size differs
from the checkpoint's embedding rows is an error, never a silent fallback to the local BPE.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alpasim_policy.errors import ConfigError, ModelWeightsError
from alpasim_policy.model.config import PRESETS, AlpamayoConfig
from alpasim_policy.model.tokenizer import AlpamayoTokenizer

WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_SINGLE = "model.safetensors"

# NVlabs' Hydra targets this implementation reproduces (class names; the module path may move)
_TARGETS = {
    "action_in_proj_cfg": "PerWaypointActionInProjV2",
    "action_out_proj_cfg": "Linear",
    "action_space_cfg": "UnicycleAccelCurvatureActionSpace",
    "diffusion_cfg": "FlowMatching",
    "hist_traj_tokenizer_cfg": "DeltaTrajectoryTokenizer",
}
# NVlabs' class defaults for the keys a config may leave out (from the classes' signatures)
_DEFAULTS = {
    "action_in_proj_cfg": {
        "num_enc_layers": 4,
        "hidden_size": 1024,
        "max_freq": 100.0,
        "num_fourier_feats": 20,
    },
    "action_space_cfg": {
        "accel_mean": 0.0,
        "accel_std": 1.0,
        "curvature_mean": 0.0,
        "curvature_std": 1.0,
        "dt": 0.1,
        "n_waypoints": 64,
        "v_lambda": 1e-6,
        "v_ridge": 1e-4,
    },
    "diffusion_cfg": {"int_method": "euler", "num_inference_steps": 10},
    "hist_traj_tokenizer_cfg": {
        "ego_xyz_min": (-4.0, -4.0, -10.0),
        "ego_xyz_max": (4.0, 4.0, 10.0),
        "num_bins": 1000,
        "predict_yaw": False,
    },
}


def is_nvlabs_config(data: dict[str, Any]) -> bool:
    return "vlm_name_or_path" in data or "action_space_cfg" in data


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelWeightsError(f"{path}: unreadable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelWeightsError(f"{path}: expected a JSON object")
    return data


def resolve_base_vlm(
    directory: Path, data: dict[str, Any], base_vlm_dir: str | Path | None = None
) -> Path | None:
    """The local folder of the base VLM the checkpoint names (absolute, relative to the checkpoint, or a
    Hub name found in the local Hugging Face cache).

    ``None`` when the checkpoint embeds the VLM config (``vlm_config`` / ``text_config`` keys)."""
    if base_vlm_dir is not None:
        p = Path(base_vlm_dir)
        if not (p / "config.json").exists():
            raise ModelWeightsError(f"base VLM folder {p}: no config.json")
        return p
    name = data.get("vlm_name_or_path")
    if name is None:
        return None
    for cand in (Path(str(name)), directory / str(name)):
        if (cand / "config.json").exists():
            return cand
    try:  # a Hub name already in the local Hugging Face cache (nothing is downloaded)
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(str(name), local_files_only=True))
        if (cached / "config.json").exists():
            return cached
    except Exception:  # noqa: BLE001 - not cached / not a repo id: fall through to the clear error
        pass
    if "vlm_config" in data or "text_config" in data:
        return None
    raise ModelWeightsError(
        f"{directory / 'config.json'}: 'vlm_name_or_path' = {name!r} is not a local folder (absolute or "
        f"relative to the checkpoint); download it and pass base_vlm_dir= (nothing is fetched)"
    )


def _cfg_block(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    block = data.get(key)
    if block is None:
        if key == "hist_traj_tokenizer_cfg":
            return {}
        raise ModelWeightsError(f"{path}: '{key}' is missing")
    target = str(block.get("_target_", ""))
    want = _TARGETS.get(key)
    if want is not None and target.rsplit(".", 1)[-1] != want:
        raise ModelWeightsError(f"{path}: '{key}._target_' = {target!r}; only {want} is implemented")
    out = dict(_DEFAULTS.get(key, {}))
    out.update({k: v for k, v in block.items() if k != "_target_"})
    return out


def _rope(text: dict[str, Any], path: Path) -> tuple[float, tuple[int, ...]]:
    params = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = params.get("rope_theta", text.get("rope_theta"))
    section = params.get("mrope_section")
    if theta is None or section is None:
        raise ModelWeightsError(f"{path}: text_config needs rope_theta and rope_scaling.mrope_section")
    if params.get("rope_type", "default") != "default" or not params.get("mrope_interleaved", True):
        raise ModelWeightsError(f"{path}: only default interleaved M-RoPE is implemented, got {params}")
    return float(theta), tuple(int(s) for s in section)


def config_from_nvlabs(
    directory: Path, data: dict[str, Any], base: dict[str, Any], **overrides: Any
) -> AlpamayoConfig:
    """Map an NVlabs checkpoint config (+ its base-VLM config ``base``) onto :class:`AlpamayoConfig`."""
    path = directory / "config.json"
    text = base.get("text_config")
    vision = base.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise ModelWeightsError(f"{path}: base VLM config has no text_config / vision_config (not Qwen3-VL?)")
    theta, section = _rope(text, path)
    # architecture choices this implementation fixes (Qwen3-VL's): refuse others instead of diverging
    for where, block, key, want in (
        ("text_config", text, "hidden_act", "silu"),
        ("text_config", text, "attention_bias", False),
        ("vision_config", vision, "hidden_act", "gelu_pytorch_tanh"),
    ):
        if block.get(key, want) != want:
            raise ModelWeightsError(
                f"{path}: base VLM {where}.{key} = {block[key]!r}; only {want!r} is implemented"
            )
    if base.get("tie_word_embeddings", text.get("tie_word_embeddings", False)):
        raise ModelWeightsError(
            f"{path}: the base VLM ties its input and output embeddings (tie_word_embeddings); not implemented"
        )
    expert = dict(data.get("expert_cfg") or {})
    for key in ("num_hidden_layers", "num_key_value_heads", "head_dim"):
        if key in expert and expert[key] != text.get(key):
            raise ModelWeightsError(
                f"{path}: expert_cfg.{key} = {expert[key]} differs from the VLM's {text.get(key)}; the "
                "expert must share the VLM's layer count and KV layout"
            )
    aip = _cfg_block(data, "action_in_proj_cfg", path)
    _cfg_block(data, "action_out_proj_cfg", path)
    space = _cfg_block(data, "action_space_cfg", path)
    diff = _cfg_block(data, "diffusion_cfg", path)
    if diff["int_method"] != "euler":
        raise ModelWeightsError(f"{path}: diffusion_cfg.int_method {diff['int_method']!r}; only euler")
    hist = _cfg_block(data, "hist_traj_tokenizer_cfg", path)
    fut = data.get("traj_tokenizer_cfg") or {}
    if not hist:  # NVlabs: no history tokenizer -> the future tokenizer encodes the history too
        hist = dict(_DEFAULTS["hist_traj_tokenizer_cfg"], **{k: v for k, v in fut.items() if k != "_target_"})
        hist_offset = 0
    else:
        hist_offset = int(fut.get("num_bins", fut.get("vocab_size", 0))) if fut else 0
    if hist.get("predict_yaw"):
        raise ModelWeightsError(f"{path}: hist_traj_tokenizer_cfg.predict_yaw is not implemented")
    tokens_hist = int(data.get("tokens_per_history_traj", 48))
    if tokens_hist % 3:
        raise ModelWeightsError(f"{path}: tokens_per_history_traj {tokens_hist} is not 3 per step (x, y, z)")
    dtype = str(data.get("model_dtype", "bfloat16"))
    patch = int(vision.get("patch_size", 16))
    merge = int(vision.get("spatial_merge_size", 2))
    fields: dict[str, Any] = dict(
        preset="nvlabs",
        text_layers=int(text["num_hidden_layers"]),
        text_hidden=int(text["hidden_size"]),
        text_heads=int(text["num_attention_heads"]),
        kv_heads=int(text["num_key_value_heads"]),
        head_dim=int(text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])),
        text_intermediate=int(text["intermediate_size"]),
        rope_theta=theta,
        mrope_section=section,
        vocab_size=int(data["vocab_size"]) if "vocab_size" in data else None,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        vision_depth=int(vision["depth"]),
        vision_hidden=int(vision["hidden_size"]),
        vision_heads=int(vision["num_heads"]),
        vision_intermediate=int(vision["intermediate_size"]),
        patch_size=patch,
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        spatial_merge_size=merge,
        deepstack_indexes=tuple(vision.get("deepstack_visual_indexes", ())),
        num_position_embeddings=int(vision.get("num_position_embeddings", 2304)),
        expert_hidden=int(expert.get("hidden_size", text["hidden_size"])),
        expert_heads=int(expert.get("num_attention_heads", text["num_attention_heads"])),
        expert_intermediate=int(expert.get("intermediate_size", text["intermediate_size"])),
        action_proj_hidden=int(aip["hidden_size"]),
        action_proj_layers=int(aip["num_enc_layers"]),
        fourier_features=int(aip["num_fourier_feats"]),
        fourier_max_freq=float(aip["max_freq"]),
        n_waypoints=int(space["n_waypoints"]),
        dt=float(space["dt"]),
        accel_mean=float(space["accel_mean"]),
        accel_std=float(space["accel_std"]),
        curvature_mean=float(space["curvature_mean"]),
        curvature_std=float(space["curvature_std"]),
        v_lambda=float(space["v_lambda"]),
        v_ridge=float(space["v_ridge"]),
        flow_steps=int(diff["num_inference_steps"]),
        history_steps=tokens_hist // 3,
        hist_bins=int(hist["num_bins"]),
        hist_xyz_min=tuple(float(v) for v in hist["ego_xyz_min"]),
        hist_xyz_max=tuple(float(v) for v in hist["ego_xyz_max"]),
        traj_vocab_size=int(data.get("traj_vocab_size", 768)),
        hist_token_offset=hist_offset,
        # NVlabs' generate stops after max_generation_length new tokens, by default the config's
        # tokens_per_future_traj (64)
        max_cot_tokens=int(data.get("tokens_per_future_traj", 64)),
        # only used without an image processor (the base-VLM folder normally provides one): the
        # release's 320 x 512 for 16 px patches merged 2 x 2
        image_hw=(10 * patch * merge, 16 * patch * merge) if patch * merge == 32 else (patch * merge,) * 2,
        dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "bfloat16",
        extra={
            "nvlabs": {
                k: data.get(k)
                for k in (
                    "add_special_tokens",
                    "traj_token_start_idx",
                    "traj_token_ids",
                    "min_pixels",
                    "max_pixels",
                )
            }
        },
    )
    fields.update(overrides)
    try:
        return AlpamayoConfig(**fields)
    except ConfigError as e:
        raise ModelWeightsError(f"{path}: {e}") from e


# ---------------------------------------------------------------------- weights
def weight_files(directory: Path) -> list[Path]:
    index = directory / WEIGHTS_INDEX
    if index.exists():
        try:
            weight_map = read_json(index)["weight_map"]
        except KeyError as e:
            raise ModelWeightsError(f"{index}: malformed index: no {e}") from e
        files = sorted({directory / name for name in weight_map.values()})
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise ModelWeightsError(f"{index}: shards listed but absent: {absent}")
        return files
    single = directory / WEIGHTS_SINGLE
    if single.exists():
        return [single]
    raise ModelWeightsError(f"{directory}: no {WEIGHTS_INDEX} or {WEIGHTS_SINGLE}")


def read_state(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of every shard, one tensor at a time (a 10 B model is never held twice)."""
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield k, sf.get_tensor(k)
        except ModelWeightsError:
            raise
        except Exception as e:  # safetensors raises SafetensorError / OSError on corruption
            raise ModelWeightsError(f"{f}: cannot read safetensors file: {e}") from e


def shard_keys(files: list[Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():  # noqa: SIM118
                    out[k] = tuple(sf.get_slice(k).get_shape())
        except Exception as e:
            raise ModelWeightsError(f"{f}: cannot read safetensors file: {e}") from e
    return out


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create module parameters on the meta device (buffers stay real: RoPE tables, statistics).

    Why: building a 10 B model with real storage and then loading the checkpoint over it would need
    twice its memory and minutes of random initialisation; meta parameters cost nothing and are
    replaced by the loaded tensors (``load_state_dict(assign=True)``)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def save_state(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    """Write ``state`` as safetensors shards of at most ``max_shard_bytes`` + ``model.safetensors.index.json``
    (each file written to a temporary name and renamed, so a crash leaves no half-written shard)."""
    from safetensors.torch import save_file

    from alpasim_policy.io import atomic_write_json

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tmp = directory / f".{name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write_json(
        directory / WEIGHTS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def load_folder_config(
    directory: Path, preset: str | None, base_vlm_dir: str | Path | None, overrides: dict[str, Any]
) -> tuple[AlpamayoConfig, Path | None]:
    """The model config of a checkpoint folder and the base-VLM folder it names (NVlabs format)."""
    path = directory / "config.json"
    if path.exists():
        data = read_json(path)
        if is_nvlabs_config(data):
            base_dir = resolve_base_vlm(directory, data, base_vlm_dir)
            if base_dir is not None:
                base = read_json(base_dir / "config.json")
            else:
                base = data.get("vlm_config") or {
                    k: data[k] for k in ("text_config", "vision_config") if k in data
                }
            return config_from_nvlabs(directory, data, base, **overrides), base_dir
        try:
            cfg = AlpamayoConfig.from_dict({**data, **overrides})
        except ConfigError as e:
            raise ModelWeightsError(f"{path}: {e}") from None
        if preset is not None and preset != cfg.preset:
            raise ModelWeightsError(f"{path}: weights are preset {cfg.preset!r}, not {preset!r}")
        return cfg, None
    if preset is None:
        raise ModelWeightsError(
            f"{directory}: no config.json; pass preset= to say which model these weights are"
        )
    return AlpamayoConfig.from_preset(preset, **overrides), None


def load_folder_tokenizer(
    directory: Path, tokenizer_dir: str | Path | None, base_dir: Path | None, config: AlpamayoConfig
) -> AlpamayoTokenizer:
    """The checkpoint's tokenizer; its size and trajectory-token ids must match the checkpoint's."""
    traj_vocab = config.traj_vocab_size
    if tokenizer_dir is not None:
        tok = AlpamayoTokenizer.from_dir(tokenizer_dir, traj_vocab)
        where = Path(tokenizer_dir)
    elif (directory / "tokenizer_config.json").exists():
        tok = AlpamayoTokenizer.from_dir(directory, traj_vocab)
        where = directory
    elif (directory / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = AlpamayoTokenizer(
            Tokenizer.from_file(str(directory / "tokenizer.json")), traj_vocab_size=traj_vocab
        )
        where = directory
    elif base_dir is not None and (
        (base_dir / "tokenizer.json").exists() or (base_dir / "tokenizer_config.json").exists()
    ):
        nv = config.extra.get("nvlabs", {})
        if nv.get("add_special_tokens") is False:
            raise ModelWeightsError(
                f"{directory / 'config.json'}: add_special_tokens is false, so the tokenizer lacks "
                "<|cot_start|> and the other Alpamayo special tokens this prompt uses; not supported"
            )
        tok = AlpamayoTokenizer.from_dir(base_dir, traj_vocab)
        where = base_dir
    elif not config.extra.get("nvlabs") and config.preset in PRESETS:
        # a bare folder of a random-init preset: the preset's built-in tokenizer, accepted only
        # when its size is exactly the checkpoint's embedding size (checked by the caller)
        tok = AlpamayoTokenizer.local(traj_vocab)
        where = directory
    else:
        raise ModelWeightsError(
            f"{directory}: no tokenizer (tokenizer.json / tokenizer_config.json) in the checkpoint folder"
            + (f" or its base-VLM folder {base_dir}" if base_dir is not None else "")
            + "; pass tokenizer_dir= (the built-in tokenizer is only for random-init presets)"
        )
    if config.vocab_size is not None and len(tok) > config.vocab_size:
        raise ModelWeightsError(
            f"{where}: the tokenizer has {len(tok)} tokens, more than the checkpoint's vocabulary "
            f"({config.vocab_size}); it does not belong to these weights"
        )
    nv = config.extra.get("nvlabs", {})
    if nv:
        if config.vocab_size is not None and len(tok) != config.vocab_size:
            raise ModelWeightsError(
                f"{where}: the tokenizer has {len(tok)} tokens but the checkpoint's vocab_size is {config.vocab_size}"
            )
        start = nv.get("traj_token_start_idx")
        if start is not None and int(start) != tok.traj_token_start:
            raise ModelWeightsError(
                f"{where}: <i0> is token {tok.traj_token_start}, the checkpoint expects {start}"
            )
        for key, tid in (nv.get("traj_token_ids") or {}).items():
            name = "traj_" + key if not key.startswith("traj_") else key
            have = tok.ids.get(name)
            if have is not None and have != int(tid):
                raise ModelWeightsError(f"{where}: token {name} is {have}, the checkpoint expects {tid}")
    return tok


__all__ = [
    "WEIGHTS_INDEX",
    "WEIGHTS_SINGLE",
    "config_from_nvlabs",
    "is_nvlabs_config",
    "load_folder_config",
    "load_folder_tokenizer",
    "save_state",
    "parameters_on_meta",
    "read_json",
    "read_state",
    "resolve_base_vlm",
    "shard_keys",
    "weight_files",
]
