"""The per-frame vision cache is exact: a frame's features do not depend on the other frames of the
batch (beyond float round-off of batch-dependent CPU kernels), and closed-loop ticks (each camera's
frames shifted by one) give the same outputs with the cache as without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import rig_history

from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

NVLABS = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"


def _stream(config: AlpamayoConfig, ticks: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(C, ticks + F - 1, 3, H, W) uint8: one new frame per camera per tick."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(config.cameras, ticks + config.frames - 1, 3, *hw), dtype=np.uint8)


@pytest.fixture(scope="module", params=["tiny", "nvlabs"])
def model(request) -> AlpamayoR1:  # noqa: ANN001
    torch.manual_seed(0)
    if request.param == "tiny":  # the package's own resize path
        return AlpamayoR1(AlpamayoConfig.from_preset("tiny"))
    return AlpamayoR1.from_pretrained(NVLABS)  # a Qwen2-VL image processor (the batched pixel path)


def test_a_frame_encoded_alone_equals_its_features_in_the_batch(model):
    """Bit for bit where the CPU's matrix kernels do not depend on the batch (seen on AMD EPYC);
    on an Intel Xeon a frame's 16 patch rows multiplied alone round differently from the same rows
    inside the 256-row batch (3e-8 seen), so the comparison allows float32 round-off."""
    cfg = model.config
    imgs = _stream(cfg, 1, (64, 96))[:, : cfg.frames].reshape(-1, 3, 64, 96)
    frames = model.processor.validate_images(imgs)
    pv, grid = model.processor.pixels(frames)
    full = model.encode_images(pv, grid)
    for sub in ([0], [1, cfg.num_images - 1]):
        pv_s, grid_s = model.processor.pixels(frames[sub])
        part = model.encode_images(pv_s, grid_s)
        for j, i in enumerate(sub):
            torch.testing.assert_close(part.pooler_output[j], full.pooler_output[i], rtol=0, atol=1e-6)
            for layer_full, layer_part in zip(full.deepstack_features, part.deepstack_features, strict=True):
                torch.testing.assert_close(layer_part[j], layer_full[i], rtol=0, atol=1e-6)


def test_closed_loop_ticks_with_the_cache_equal_ticks_without(model):
    cfg = model.config
    ticks = 3
    stream = _stream(cfg, ticks, (64, 96), seed=1)
    hist, _ = rig_history("cr-DEU_A9-3_1_T-1-ego3603")
    outs = {}
    for cache in (False, True):
        model.frame_cache.clear()
        outs[cache] = [
            model.drive(
                stream[:, i : i + cfg.frames],
                hist,
                num_samples=2,
                cot_tokens=5,
                generator=torch.Generator().manual_seed(i),
                vision_cache=cache,
            )
            for i in range(ticks)
        ]
    for a, b in zip(outs[False], outs[True], strict=True):
        assert a.reasoning == b.reasoning
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.trajectories, b.trajectories)
    reused = cfg.cameras * (cfg.frames - 1)
    assert [o.stats["vision_frames_cached"] for o in outs[True]] == [0] + [reused] * (ticks - 1)
    assert all(o.stats["vision_frames_cached"] == 0 for o in outs[False])
    assert len(model.frame_cache) == cfg.num_images  # only the last tick's frames are kept


def test_the_cache_is_keyed_by_content_not_by_position(model):
    cfg = model.config
    imgs = _stream(cfg, 1, (64, 96), seed=2)[:, : cfg.frames].reshape(-1, 3, 64, 96)
    hist, _ = rig_history("cr-DEU_A9-3_1_T-1-ego3603")
    model.frame_cache.clear()
    model.drive(imgs, hist, num_samples=1, cot_tokens=2, vision_cache=True)
    changed = imgs.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one frame
    flipped = changed[::-1].copy()  # the same frames in another order: all reused
    out = model.drive(changed, hist, num_samples=1, cot_tokens=2, vision_cache=True)
    assert out.stats["vision_frames_cached"] == cfg.num_images - 1
    out = model.drive(flipped, hist, num_samples=1, cot_tokens=2, vision_cache=True)
    assert out.stats["vision_frames_cached"] == cfg.num_images
    ref = model.drive(flipped, hist, num_samples=1, cot_tokens=2, vision_cache=False)
    assert out.reasoning == ref.reasoning


def test_float_frames_are_cached_by_their_own_bytes(model):
    """Frames given as float in [0, 1] are keyed by their float values: the same floats hit, and the
    outputs equal the uncached tick's."""
    cfg = model.config
    imgs = (
        _stream(cfg, 1, (64, 96), seed=3)[:, : cfg.frames].reshape(-1, 3, 64, 96).astype(np.float32) / 255.0
    )
    hist, _ = rig_history("cr-DEU_A9-3_1_T-1-ego3603")
    model.frame_cache.clear()
    model.drive(imgs, hist, num_samples=1, cot_tokens=2, vision_cache=True)
    out = model.drive(imgs, hist, num_samples=1, cot_tokens=2, vision_cache=True)
    assert out.stats["vision_frames_cached"] == cfg.num_images
    ref = model.drive(imgs, hist, num_samples=1, cot_tokens=2, vision_cache=False)
    assert out.reasoning == ref.reasoning


def test_a_frame_stride_keeps_each_frame_until_it_comes_back():
    """With frames 2 ticks apart (``frame_stride`` 2) a frame is seen again 2 ticks later, not at the
    next tick: the cache keeps two ticks' frames, every frame but the newest is reused, and the
    outputs equal the uncached ticks'."""
    torch.manual_seed(0)
    cfg = AlpamayoConfig.from_preset("tiny", frame_stride=2)
    model = AlpamayoR1(cfg)
    assert model.frame_cache.keep_ticks == 2
    span = (cfg.frames - 1) * 2 + 1
    ticks = 4
    stream = _stream(cfg, ticks + span - cfg.frames, (64, 96), seed=4)  # (C, ticks + span - 1, ...)
    hist, _ = rig_history("cr-DEU_A9-3_1_T-1-ego3603")
    outs = {}
    for cache in (False, True):
        model.frame_cache.clear()
        outs[cache] = [
            model.drive(stream[:, i : i + span : 2], hist, num_samples=1, cot_tokens=3,
                        generator=torch.Generator().manual_seed(i), vision_cache=cache)
            for i in range(ticks)
        ]  # fmt: skip
    for a, b in zip(outs[False], outs[True], strict=True):
        assert a.reasoning == b.reasoning and np.array_equal(a.trajectories, b.trajectories)
    reused = cfg.cameras * (cfg.frames - 1)
    assert [o.stats["vision_frames_cached"] for o in outs[True]] == [0, 0, reused, reused]
    assert len(model.frame_cache) == 2 * cfg.num_images  # two ticks' frames, none shared
