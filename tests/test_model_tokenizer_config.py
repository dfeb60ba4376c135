"""Local tokenizer, delta history tokenizer and config presets."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import rig_history

from alpasim_policy.errors import ConfigError, ModelInputError
from alpasim_policy.model.config import PRESETS, AlpamayoConfig
from alpasim_policy.model.tokenizer import (
    ALPAMAYO_SPECIAL_KEYS,
    AlpamayoTokenizer,
    DeltaTrajectoryTokenizer,
    _local_tokenizer_json,
    special,
)


def test_local_tokenizer_is_deterministic_and_complete():
    a = AlpamayoTokenizer.local(4000)
    _local_tokenizer_json.cache_clear()
    b = AlpamayoTokenizer.local(4000)
    assert a._tok.to_str() == b._tok.to_str()
    for k in ALPAMAYO_SPECIAL_KEYS:
        assert a.token_id(special(k)) >= 0
    assert a.token_id("<i3999>") - a.traj_token_start == 3999
    text = "Slow down because the pedestrian is crossing, then turn left at the intersection."
    ids = a.encode(text)
    assert a.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges, not bytes
    # special tokens are single ids and are skipped when decoding
    cot = a.encode("Keep lane.") + [a.ids["traj_future_start"]]
    assert a.decode(cot) == "Keep lane."


def test_tokenizer_round_trips_through_hf_directory(tmp_path):
    from transformers import PreTrainedTokenizerFast

    local = AlpamayoTokenizer.local(4000)
    hf = PreTrainedTokenizerFast(tokenizer_object=local._tok)
    hf.save_pretrained(tmp_path)
    loaded = AlpamayoTokenizer.from_dir(tmp_path, 4000)
    assert loaded.ids == local.ids
    assert loaded.traj_token_start == local.traj_token_start
    with pytest.raises(ConfigError):
        AlpamayoTokenizer.from_dir(tmp_path / "absent")


def test_delta_tokenizer_on_real_history():
    hist, _ = rig_history("av2s-7fab2350-w00", t=40)
    tok = DeltaTrajectoryTokenizer(1000, (-4, -4, -10), (4, 4, 10))
    xyz = np.zeros((16, 3))
    xyz[:, :2] = hist[:, :2]
    # deltas from the origin: the first point is far behind the car, so encode relative to it
    ids = tok.encode(xyz - xyz[0])
    assert ids.shape == (48,) and ids.min() >= 0 and ids.max() < 1000
    back = tok.decode(ids)
    half_bin = np.array([8.0, 8.0, 20.0]) / 999 / 2
    # every step's delta is quantised to within half a bin (x, y: 4 mm, z: 10 mm) ...
    step_err = np.abs(np.diff(back, axis=0, prepend=0) - np.diff(xyz - xyz[0], axis=0, prepend=0))
    assert np.all(step_err <= half_bin + 1e-9)
    # ... so the decoded positions drift by at most 16 half bins
    assert np.abs(back - (xyz - xyz[0]))[:, :2].max() <= 16 * half_bin[0] + 1e-9
    # deltas beyond +-4 m clamp to the edge bins
    far = tok.encode(np.array([[10.0, -10.0, 0.0]]))
    assert far.tolist() == [999, 0, 500]
    with pytest.raises(ModelInputError):
        tok.encode(np.zeros((16, 2)))


def test_presets_and_real_size_dimensions():
    for name in PRESETS:
        AlpamayoConfig.from_preset(name)
    big = AlpamayoConfig.from_preset("alpamayo-r1-10b")
    ex = big.expert_config(big.vocab_size)
    assert (ex.hidden_size, ex.num_attention_heads, ex.intermediate_size) == (2048, 16, 8256)
    assert (ex.num_hidden_layers, ex.num_key_value_heads, ex.head_dim) == (36, 8, 128)
    vlm = big.vlm_config(big.vocab_size, AlpamayoTokenizer.local(4000).ids)
    assert (vlm.text_config.hidden_size, vlm.text_config.num_hidden_layers) == (4096, 36)
    assert vlm.text_config.num_key_value_heads == ex.num_key_value_heads
    assert vlm.vision_config.depth == 27
    assert big.cameras * big.frames == 16 and big.history_steps == 16 and big.n_waypoints == 64
    with pytest.raises(ConfigError, match="preset"):
        AlpamayoConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="mrope_section"):
        AlpamayoConfig(head_dim=32)
    cfg = AlpamayoConfig.from_preset("small")
    assert AlpamayoConfig.from_dict(cfg.to_dict()) == cfg


def test_real_size_parameter_count_on_meta_device():
    import torch

    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    with torch.device("meta"):
        model = AlpamayoR1(AlpamayoConfig.from_preset("alpamayo-r1-10b", dtype="float32"))
    n_vlm = sum(p.numel() for p in model.vlm.parameters())
    n_expert = sum(p.numel() for p in model.expert.parameters())
    assert 8.5e9 < n_vlm < 9.0e9  # Qwen3-VL-8B with the enlarged vocabulary
    assert 2.0e9 < n_expert < 2.5e9  # the ~2.3 B action expert
    assert 10.5e9 < model.num_parameters() < 11.5e9
