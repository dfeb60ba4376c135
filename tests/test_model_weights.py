"""save_pretrained / from_pretrained: sharded safetensors in NVlabs' key layout, clear key errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_helpers import frames, rig_history
from safetensors.torch import load_file, save_file

from alpasim_policy.errors import ModelWeightsError
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    model = AlpamayoR1(AlpamayoConfig.from_preset("tiny"))
    d = tmp_path_factory.mktemp("weights")
    model.save_pretrained(d, max_shard_bytes=1 << 20)  # force several shards
    return model, d


def test_key_layout_is_nvlabs(saved):
    model, d = saved
    keys = set(model.state_dict())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"vlm", "expert", "action_in_proj", "action_out_proj", "action_space"}
    assert "vlm.model.visual.patch_embed.proj.weight" in keys
    assert "vlm.model.language_model.layers.0.self_attn.q_proj.weight" in keys
    assert "vlm.lm_head.weight" in keys
    assert "expert.layers.0.self_attn.k_proj.weight" in keys
    assert not any(k.startswith("expert.embed_tokens") for k in keys)
    assert "action_in_proj.sinus.0.freqs" in keys and "action_in_proj.timestep_fourier_encoder.freqs" in keys
    assert "action_in_proj.encoder.trunk.0.weight" in keys and "action_in_proj.norm.weight" in keys
    assert "action_out_proj.weight" in keys
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == keys
    assert len(set(index["weight_map"].values())) > 1


def test_round_trip_gives_identical_model(saved):
    model, d = saved
    loaded = AlpamayoR1.from_pretrained(d)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    hist, _ = rig_history("cr-USA_Lanker-1_1_T-1-ego1213")
    imgs = frames(model.config, seed=3)
    kw = dict(num_samples=2, reasoning="multi", cot_tokens=5, diffusion="eager")
    o1 = model.drive(imgs, hist, generator=torch.Generator().manual_seed(0), **kw)
    o2 = loaded.drive(imgs, hist, generator=torch.Generator().manual_seed(0), **kw)
    assert o1.reasoning == o2.reasoning
    np.testing.assert_array_equal(o1.trajectories, o2.trajectories)


def _edit_shard(d, fn):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = index["weight_map"]["action_out_proj.weight"]
    tensors = load_file(str(d / name))
    fn(tensors)
    save_file(tensors, str(d / name))


def test_missing_unexpected_and_misshaped_keys_are_listed(saved, tmp_path):
    import shutil

    _, src = saved
    d = tmp_path / "w"
    shutil.copytree(src, d)
    _edit_shard(d, lambda t: t.pop("action_out_proj.weight"))
    with pytest.raises(ModelWeightsError, match=r"1 missing keys: action_out_proj\.weight"):
        AlpamayoR1.from_pretrained(d)
    with pytest.warns(UserWarning, match="missing"):
        m = AlpamayoR1.from_pretrained(d, strict=False)
    assert m.action_out_proj.weight.shape == (2, m.config.expert_hidden)

    shutil.rmtree(d)
    shutil.copytree(src, d)
    _edit_shard(
        d,
        lambda t: t.update({"action_out_proj.extra": torch.zeros(2), "action_out_proj.bias": torch.zeros(5)}),
    )
    with pytest.raises(ModelWeightsError) as e:
        AlpamayoR1.from_pretrained(d)
    assert "unexpected keys: action_out_proj.extra" in str(e.value)
    assert "action_out_proj.bias: file (5,) vs model (2,)" in str(e.value)


def test_missing_directory_shards_and_config(saved, tmp_path):
    _, src = saved
    with pytest.raises(ModelWeightsError, match="does not exist"):
        AlpamayoR1.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelWeightsError, match="pass preset"):
        AlpamayoR1.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelWeightsError, match="no model.safetensors"):
        AlpamayoR1.from_pretrained(tmp_path / "empty", preset="tiny")
    import shutil

    d = tmp_path / "partial"
    shutil.copytree(src, d)
    next(d.glob("model-*.safetensors")).unlink()
    with pytest.raises(ModelWeightsError, match="absent"):
        AlpamayoR1.from_pretrained(d)
    with pytest.raises(ModelWeightsError, match="not 'small'"):
        AlpamayoR1.from_pretrained(src, preset="small")


# ---------------------------------------------------------------- NVlabs-written folders
NVLABS = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"


def test_nvlabs_folder_loads_in_one_call_with_its_own_sizes():
    from alpasim_policy.model.config import PRESETS

    m = AlpamayoR1.from_pretrained(NVLABS)
    cfg = m.config
    # a size no preset has, read from NVlabs' config and the base VLM it names
    for name in PRESETS:
        p = AlpamayoConfig.from_preset(name)
        assert (p.text_hidden, p.expert_hidden, p.vocab_size) != (
            cfg.text_hidden,
            cfg.expert_hidden,
            cfg.vocab_size,
        )
    assert cfg.preset == "nvlabs" and (cfg.cameras, cfg.frames) == (4, 4)  # NVlabs' release inputs
    assert not any(p.is_meta for p in m.parameters())
    assert all(b.dtype == torch.float32 for b in m.buffers())


def test_nvlabs_folder_in_bfloat16():
    m = AlpamayoR1.from_pretrained(NVLABS, dtype="bfloat16")
    assert m.dtype == torch.bfloat16 and m.vlm.lm_head.weight.dtype == torch.bfloat16
    assert m.action_space.accel_std.dtype == torch.float32  # statistics stay float32
    hist, _ = rig_history("cr-USA_Lanker-1_1_T-1-ego1213")
    out = m.drive(frames(m.config, seed=1), hist, num_samples=2, cot_tokens=3, diffusion="eager")
    assert np.isfinite(out.trajectories).all()


def test_nvlabs_folder_with_a_foreign_tokenizer_is_refused(tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(NVLABS, d)
    torch.manual_seed(0)
    AlpamayoR1(AlpamayoConfig.from_preset("tiny")).tokenizer.save(tmp_path / "tok")  # the local BPE
    with pytest.raises(Exception, match="tokenizer|token"):
        AlpamayoR1.from_pretrained(d, tokenizer_dir=tmp_path / "tok")
    # without its base-VLM folder: a clear error naming vlm_name_or_path, no silent local tokenizer
    shutil.rmtree(d / "base_vlm")
    with pytest.raises(ModelWeightsError, match="vlm_name_or_path"):
        AlpamayoR1.from_pretrained(d)
    # the base VLM can live elsewhere
    m = AlpamayoR1.from_pretrained(d, base_vlm_dir=NVLABS / "base_vlm")
    assert len(m.tokenizer) == 791


def test_nvlabs_config_keys_this_model_cannot_reproduce_are_named(tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(NVLABS, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["expert_cfg"]["num_key_value_heads"] = 4
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelWeightsError, match="expert_cfg.num_key_value_heads"):
        AlpamayoR1.from_pretrained(d)
    cfg["expert_cfg"].pop("num_key_value_heads")
    cfg["action_space_cfg"]["_target_"] = "alpamayo_r1.action_space.Other"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelWeightsError, match="action_space_cfg._target_"):
        AlpamayoR1.from_pretrained(d)


def test_real_size_model_is_built_without_parameter_memory():
    """from_pretrained builds the model with parameters on the meta device (replaced by the loaded
    tensors), so the 10 B preset never exists twice in memory; here: 11 B parameters, none real."""
    from alpasim_policy.model.weights_io import parameters_on_meta

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with parameters_on_meta():
            m = AlpamayoR1(AlpamayoConfig.from_preset("alpamayo-r1-10b"))
    finally:
        torch.set_default_dtype(previous)
    assert m.num_parameters() > 10e9
    assert all(p.is_meta for p in m.parameters())
    assert all(not b.is_meta for b in m.buffers())  # RoPE tables, statistics: real, float32


def test_nvlabs_pixel_budget_reaches_the_image_processor(tmp_path):
    """NVlabs hands the checkpoint's ``min_pixels`` / ``max_pixels`` to the base VLM's processor."""
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(NVLABS, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(min_pixels=32 * 32, max_pixels=32 * 32 * 3)  # the 64 x 96 input is 6 x 32 x 32
    (d / "config.json").write_text(json.dumps(cfg))
    m = AlpamayoR1.from_pretrained(d, cameras=1, frames=1)
    prep = m.prepare(np.zeros((1, 3, 64, 96), np.uint8), np.zeros((16, 3)))
    (t, h, w) = prep.image_grid_thw[0].tolist()
    assert h * w * 16 * 16 <= 32 * 32 * 3  # resized into the budget (unresized it would be 24 patches)
    m2 = AlpamayoR1.from_pretrained(NVLABS, cameras=1, frames=1)
    prep2 = m2.prepare(np.zeros((1, 3, 64, 96), np.uint8), np.zeros((16, 3)))
    assert prep2.image_grid_thw[0].tolist() == [1, 4, 6]


def test_nvlabs_folder_resaved_in_our_format_round_trips(tmp_path):
    m = AlpamayoR1.from_pretrained(NVLABS, cameras=2, frames=2)
    m.save_pretrained(tmp_path / "ours")
    again = AlpamayoR1.from_pretrained(tmp_path / "ours")
    assert again.config == m.config and len(again.tokenizer) == len(m.tokenizer)
    hist, _ = rig_history("cr-USA_Lanker-1_1_T-1-ego1213")
    imgs = np.zeros((4, 3, 64, 96), np.uint8)
    kw = dict(num_samples=2, max_cot_tokens=5, diffusion="eager")
    a = m.drive(imgs, hist, generator=torch.Generator().manual_seed(0), **kw)
    b = again.drive(imgs, hist, generator=torch.Generator().manual_seed(0), **kw)
    assert a.reasoning == b.reasoning
    np.testing.assert_array_equal(a.trajectories, b.trajectories)


def test_base_vlm_choices_this_model_does_not_implement_are_refused(tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(NVLABS, d)
    base = json.loads((d / "base_vlm" / "config.json").read_text())
    base["text_config"]["hidden_act"] = "gelu"
    (d / "base_vlm" / "config.json").write_text(json.dumps(base))
    with pytest.raises(ModelWeightsError, match="text_config.hidden_act"):
        AlpamayoR1.from_pretrained(d)
    base["text_config"]["hidden_act"] = "silu"
    base["tie_word_embeddings"] = True
    (d / "base_vlm" / "config.json").write_text(json.dumps(base))
    with pytest.raises(ModelWeightsError, match="tie_word_embeddings"):
        AlpamayoR1.from_pretrained(d)
