"""The batched pixel path for a Qwen2-VL image processor equals the processor's own output bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

NVLABS = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"


def test_qwen_pixels_without_resize_equal_the_processor():
    model = AlpamayoR1.from_pretrained(NVLABS)
    proc = model.processor
    g = torch.Generator().manual_seed(0)
    n = model.config.num_images
    for h, w in ((64, 96), (224, 224), (100, 150)):
        u8 = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
        fast = proc._qwen_pixels_without_resize(u8)
        ref = proc.image_processor(images=list(u8.permute(0, 2, 3, 1).numpy()), return_tensors="pt")
        if (h, w) == (100, 150):  # needs a resize: the processor itself runs
            assert fast is None
            continue
        assert torch.equal(fast[0], ref["pixel_values"]) and torch.equal(fast[1], ref["image_grid_thw"])
    # through prepare(): float images in [0, 1] give the processor's pixels too
    imgs = torch.randint(0, 256, (n, 3, 64, 96), generator=g, dtype=torch.uint8)
    hist = torch.zeros(16, 3)
    hist[:, 0] = torch.arange(16) * 0.8 - 12.0
    p = model.prepare(imgs.float() / 255.0, hist.numpy())
    ref = proc.image_processor(images=list(imgs.permute(0, 2, 3, 1).numpy()), return_tensors="pt")
    assert torch.equal(p.pixel_values, ref["pixel_values"])
