"""The tiny Alpamayo model end to end on CPU: real ego history in, CoC text + K trajectories out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import frames, rig_history

from alpasim_policy.errors import ModelInputError
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

K = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AlpamayoR1(AlpamayoConfig.from_preset("tiny"))


@pytest.fixture(scope="module")
def real_inputs(model):
    hist, speed = rig_history("av2s-7fab2350-w00", t=40)
    return frames(model.config), hist, speed


class PrefillCounter:
    """Counts VLM text-decoder forwards by (batch, sequence length) with a pre-hook on the token
    embedding (every forward starts there: transformers' prefill and the static-cache decode steps)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        emb = model.vlm.model.language_model.embed_tokens
        self.handle = emb.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        ids = args[0]
        self.calls.append((ids.shape[0], ids.shape[1]))

    @property
    def prefills(self):
        return [c for c in self.calls if c[1] > 1]

    @property
    def decodes(self):
        return [c for c in self.calls if c[1] == 1]

    def close(self):
        self.handle.remove()


def test_end_to_end_real_history(model, real_inputs):
    images, hist, speed = real_inputs
    out = model.drive(images, hist, command=1, num_samples=K, generator=torch.Generator().manual_seed(0))
    assert out.trajectories.shape == (K, 64, 3) and np.all(np.isfinite(out.trajectories))
    assert out.actions.shape == (K, 64, 2) and np.all(np.isfinite(out.actions))
    assert len(out.reasoning) == 1 and isinstance(out.reasoning[0], str) and out.reasoning[0]
    assert out.v0 == pytest.approx(speed, abs=0.3)  # estimated from the real history
    for stage in ("vision", "prefill", "decode", "diffusion", "total"):
        assert out.timings[stage] > 0
    # distinct noise -> distinct samples; all start next to the car (0.1 s at v0)
    assert not np.allclose(out.trajectories[0], out.trajectories[1])
    first = np.hypot(out.trajectories[:, 0, 0], out.trajectories[:, 0, 1])
    assert np.all(first <= out.v0 * 0.1 + 0.5 * 0.1**2 * np.abs(out.actions[:, 0, 0]) + 1e-6)
    # headings stay the integral of curvature x distance: recomputing the plan from its controls
    from alpasim_policy.model.action_space import integrate_unicycle

    again = integrate_unicycle(
        torch.from_numpy(out.actions[..., 0]),
        torch.from_numpy(out.actions[..., 1]),
        torch.full((K,), out.v0),
        method=model.config.integration,
    )
    np.testing.assert_allclose(again.numpy(), out.trajectories, atol=1e-9)


def test_single_prefills_once_multi_prefills_k(model, real_inputs):
    images, hist, _ = real_inputs
    counter = PrefillCounter(model)
    try:
        out = model.drive(images, hist, num_samples=K, reasoning="single", cot_tokens=6, diffusion="eager")
        assert counter.prefills == [(1, counter.prefills[0][1])]  # one prefill of one sequence
        # NVlabs: the last generated token is never fed back, so 6 forced CoC tokens cost 5 decodes
        assert all(b == 1 for b, _ in counter.decodes) and len(counter.decodes) == 5
        assert len(out.reasoning) == 1 and out.stats["cot_tokens"] == [6]
        prompt = counter.prefills[0][1]
        assert out.stats["kv_len"] == prompt + 5 and out.stats["prefix_len"] == prompt + 5
        assert out.trajectories.shape == (K, 64, 3)
        # the static sampler holds ONE copy of the prefix for all K samples
        (sampler,) = [s for key, s in model._static.items() if key[:2] == (K, 1)]
        assert sampler.k[0].shape[0] == 1 and sampler.samples == K

        counter.calls.clear()
        out = model.drive(
            images,
            hist,
            num_samples=K,
            reasoning="multi",
            cot_tokens=6,
            generator=torch.Generator().manual_seed(3),
        )
        assert [b for b, _ in counter.prefills] == [K]  # K sequences prefilled
        assert all(b == K for b, _ in counter.decodes)
        assert len(out.reasoning) == K and out.stats["cot_tokens"] == [6] * K
        assert len(set(out.reasoning)) > 1  # sampled: the K chains of causation differ
    finally:
        counter.close()


def test_unforced_reasoning_stops_at_traj_future_start(model, real_inputs):
    images, hist, _ = real_inputs
    out = model.drive(images, hist, num_samples=2, max_cot_tokens=9, diffusion="eager")
    # random weights rarely emit the stop token; NVlabs' rule either way: the KV holds
    # prompt + generated - 1 tokens (up to and including the stop when there is one)
    n = out.stats["cot_tokens"][0]
    steps = out.stats["decode_steps"]
    assert 0 <= n <= 9
    assert steps == (n + 1 if n < 9 else 9)
    prompt = out.stats["kv_len"] - (steps - 1)
    assert out.stats["prefix_len"] == out.stats["kv_len"]
    rope_delta = out.stats["expert_position_start"][0] - (prompt + steps)
    assert rope_delta < 0  # images take fewer M-RoPE positions than tokens


def test_same_seed_same_output(model, real_inputs):
    images, hist, _ = real_inputs
    a = model.drive(
        images,
        hist,
        num_samples=3,
        reasoning="multi",
        cot_tokens=4,
        generator=torch.Generator().manual_seed(7),
    )
    b = model.drive(
        images,
        hist,
        num_samples=3,
        reasoning="multi",
        cot_tokens=4,
        generator=torch.Generator().manual_seed(7),
    )
    assert a.reasoning == b.reasoning
    np.testing.assert_array_equal(a.trajectories, b.trajectories)


def test_bad_inputs_raise_clear_errors(model, real_inputs):
    images, hist, _ = real_inputs
    with pytest.raises(ModelInputError, match="cameras x frames"):
        model.drive(images[:15], hist)
    with pytest.raises(ModelInputError, match="RGB"):
        model.drive(images[:, :1], hist)
    with pytest.raises(ModelInputError, match=r"\(C=4, F=4"):
        model.drive(images.reshape(2, 8, *images.shape[1:]), hist)
    with pytest.raises(ModelInputError, match=r"\[0, 1\]"):
        model.drive(images.astype(np.float32), hist)
    bad = hist.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ModelInputError, match="NaN"):
        model.drive(images, bad)
    with pytest.raises(ModelInputError, match="needs 16"):
        model.drive(images, hist[-10:])
    with pytest.raises(ModelInputError, match="expected"):
        model.drive(images, hist[:, :1])
    with pytest.raises(ModelInputError, match="noise"):
        model.drive(images, hist, num_samples=2, noise=torch.zeros(3, 64, 2))


def test_channel_last_camera_layout_is_the_same_input(model, real_inputs):
    images, hist, _ = real_inputs
    c, f = model.config.cameras, model.config.frames
    hwc = images.transpose(0, 2, 3, 1).reshape(c, f, *images.shape[2:], 3)
    kw = dict(num_samples=2, cot_tokens=3, diffusion="eager")
    a = model.drive(images, hist, generator=torch.Generator().manual_seed(0), **kw)
    b = model.drive(hwc, hist, generator=torch.Generator().manual_seed(0), **kw)
    assert a.reasoning == b.reasoning
    np.testing.assert_array_equal(a.trajectories, b.trajectories)


def test_warmup_prepares_the_static_sampler(model):
    model._static.clear()
    model._lean.clear()
    out = model.warmup(num_samples=2, diffusion="graph", ticks=1)
    assert out.trajectories.shape == (2, 64, 3)
    if model.device.type == "cuda":  # graph mode: the static sampler and its CUDA graph
        assert any(key[:2] == (2, 1) for key in model._static)
    else:  # no graphs off CUDA: graph mode runs the lean loop
        assert any(key[0] == 2 for key in model._lean)


def test_scene_frame_history_equals_rig_frame_history(model, real_inputs):
    images, hist, _ = real_inputs
    # the same real poses placed in a rotated, shifted frame
    a, (tx, ty) = 0.8, (120.0, -45.0)
    c, s = np.cos(a), np.sin(a)
    scene = np.stack(
        [c * hist[:, 0] - s * hist[:, 1] + tx, s * hist[:, 0] + c * hist[:, 1] + ty, hist[:, 2] + a], 1
    )
    kw = dict(num_samples=2, cot_tokens=3, diffusion="eager")
    o1 = model.drive(images, hist, generator=torch.Generator().manual_seed(0), **kw)
    o2 = model.drive(images, scene, generator=torch.Generator().manual_seed(0), **kw)
    assert o1.reasoning == o2.reasoning
    assert o1.v0 == pytest.approx(o2.v0, abs=1e-9)
    np.testing.assert_allclose(o1.trajectories, o2.trajectories, atol=1e-6)


def test_no_deprecated_cache_argument(model, real_inputs):
    """transformers 5.x deprecates ``past_key_values=`` (removed in 5.40): no forward may use it."""
    import warnings

    images, hist, _ = real_inputs
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*", category=FutureWarning)
        for mode in ("eager", "dynamic"):
            model.drive(images, hist, num_samples=2, cot_tokens=3, diffusion=mode)


def test_model_package_imports_no_higher_layer():
    """Layering: the model sees tensors in the rig frame; it imports nothing of scenes / sim / policies."""
    import subprocess
    import sys

    code = (
        "import sys, alpasim_policy.model.modeling_alpamayo, alpasim_policy.model.weights_io;"
        "print(' '.join(m for m in sys.modules if m.startswith('alpasim_policy.')))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    mods = out.stdout.split()
    assert "alpasim_policy.model.modeling_alpamayo" in mods
    bad = [
        m
        for m in mods
        if not m.startswith(("alpasim_policy.model", "alpasim_policy.errors", "alpasim_policy.io"))
    ]
    assert bad == []


def test_history_in_any_frame_is_re_referenced_to_its_last_pose(model, real_inputs):
    """The model re-expresses a history given in another frame in the pose of its last row itself."""
    images, hist, _ = real_inputs
    a = model.prepare(images, hist)
    th = 0.7
    c, s = np.cos(th), np.sin(th)
    moved = hist.copy()
    moved[:, 0] = 12.0 + c * hist[:, 0] - s * hist[:, 1]
    moved[:, 1] = -3.0 + s * hist[:, 0] + c * hist[:, 1]
    moved[:, 2] = hist[:, 2] + th
    b = model.prepare(images, moved)
    np.testing.assert_array_equal(a.history_ids, b.history_ids)
    assert a.v0 == pytest.approx(b.v0, abs=1e-9)
