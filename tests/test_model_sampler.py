"""Flow samplers agree: HF dynamic cache (reference) vs static buffers (eager) vs CUDA graph replay.

Stated tolerance: 1e-4 absolute on normalised actions (float32). The full 10-step comparison uses a
smooth velocity field (``fourier_max_freq=2``): with the default 100-cycle Fourier features and
*random* weights the Euler map amplifies float round-off ~35x per step, so at the default config
the samplers are compared step by step on the same states (teacher forcing) instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_helpers import frames, rig_history

from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.flow import DynamicCacheSampler, StaticFlowSampler, prefix_capacity
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

K = 3
TOL = 1e-4
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _setup(max_freq: float, device: str = "cpu"):
    torch.manual_seed(0)
    model = AlpamayoR1(AlpamayoConfig.from_preset("tiny", fourier_max_freq=max_freq)).to(device)
    hist, _ = rig_history("av2f-0a1e6f0a", t=30)
    prep = model.prepare(frames(model.config), hist)
    vision = model.encode_images(prep.pixel_values, prep.image_grid_thw)
    return model, prep, vision


@pytest.fixture(scope="module")
def smooth():
    return _setup(2.0)


def _ragged(prefix):
    """Give the K rows of a multi prefix different lengths (padding must be masked identically)."""
    cut = torch.tensor([0, 3, 7], device=prefix.valid_len.device)
    return dataclasses.replace(prefix, valid_len=prefix.valid_len - cut, rope_offset=prefix.rope_offset - cut)


def _samplers(model, prefix, samples=K):
    dyn = DynamicCacheSampler(
        model.expert, model.action_in_proj, model.action_out_proj, model.config.flow_steps
    )
    static = StaticFlowSampler(
        model.expert,
        model.action_in_proj,
        model.action_out_proj,
        steps=model.config.flow_steps,
        samples=samples,
        prefix_batch=prefix.batch,
        capacity=prefix_capacity(prefix.length),
        n_waypoints=64,
        device=model.device,
    )
    return dyn, static


@pytest.mark.parametrize("rows", [1, K])
def test_static_equals_dynamic_full_loop(smooth, rows):
    model, prep, vision = smooth
    prefix, _ = model.reason(prep, vision, rows, cot_tokens=5)
    if rows > 1:
        prefix = _ragged(prefix)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(rows))
    dyn, static = _samplers(model, prefix)
    ref = dyn.sample(prefix, noise)
    static.load(prefix, noise)
    out = static.run(use_graph=True)  # on CPU: the same static code, eagerly
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.5
    assert (out - ref).abs().max().item() < TOL
    # and through the model's public entry points
    np.testing.assert_allclose(
        model.sample_actions(prefix, noise, "eager").numpy(),
        model.sample_actions(prefix, noise, "dynamic").numpy(),
        atol=TOL,
    )


def test_padding_really_masked(smooth):
    """Changing the K/V *beyond* a row's valid length must not change its samples."""
    model, prep, vision = smooth
    prefix, _ = model.reason(prep, vision, K, cot_tokens=5)
    prefix = _ragged(prefix)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(5))
    a = model.sample_actions(prefix, noise, "eager")
    junk = [k.clone() for k in prefix.keys]
    for k in junk:
        k[2, :, -7:] = 1e3  # row 2 is 7 tokens shorter
    b = model.sample_actions(dataclasses.replace(prefix, keys=junk), noise, "eager")
    torch.testing.assert_close(a, b)
    # ... whereas the valid part matters
    for k in junk:
        k[2, :, 10] = 1e3
    c = model.sample_actions(dataclasses.replace(prefix, keys=junk), noise, "eager")
    assert (c[2] - a[2]).abs().max() > 1e-3


def test_shared_prefix_samples_are_independent(smooth):
    """Single reasoning: a sample attends to the shared prefix and only its own action tokens, so
    changing one sample's noise leaves the others' trajectories bit-for-bit unchanged."""
    model, prep, vision = smooth
    prefix, _ = model.reason(prep, vision, 1, cot_tokens=5)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(6))
    _, static = _samplers(model, prefix)
    static.load(prefix, noise)
    a = static.run().clone()
    other = noise.clone()
    other[1] = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    static.load(prefix, other)
    b = static.run()
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=0, atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-2


def test_static_sampler_reused_across_prefix_lengths(smooth):
    """One static sampler (one graph) serves ticks of different CoC length: stale slots are masked."""
    model, prep, vision = smooth
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(9))
    long_prefix, _ = model.reason(prep, vision, 1, cot_tokens=12)
    short_prefix, _ = model.reason(prep, vision, 1, cot_tokens=3)
    assert short_prefix.length < long_prefix.length
    _, static = _samplers(model, long_prefix)
    static.load(long_prefix, noise)
    static.run()
    static.load(short_prefix, noise)
    reused = static.run().clone()
    dyn, fresh = _samplers(model, short_prefix)
    fresh.load(short_prefix, noise)
    torch.testing.assert_close(reused, fresh.run())
    assert (reused - dyn.sample(short_prefix, noise)).abs().max().item() < TOL


def test_per_step_velocity_matches_at_default_config():
    model, prep, vision = _setup(100.0)
    for rows in (1, K):
        prefix, _ = model.reason(prep, vision, rows, cot_tokens=4)
        noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(11))
        dyn, static = _samplers(model, prefix)
        trace: list = []
        dyn.sample(prefix, noise, trace=trace)
        static.load(prefix, noise)
        assert len(trace) == model.config.flow_steps
        for i, (x, v_ref) in enumerate(trace):
            v = static.velocity(x, i)
            assert (v - v_ref).abs().max().item() < TOL, f"step {i}, rows {rows}"


@pytest.mark.gpu
@cuda
def test_cuda_graph_replay_matches_eager_and_dynamic():
    model, prep, vision = _setup(2.0, "cuda")
    for rows in (1, K):
        prefix, _ = model.reason(prep, vision, rows, cot_tokens=5)
        noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(rows)).cuda()
        dyn, static = _samplers(model, prefix)
        ref = dyn.sample(prefix, noise)
        static.load(prefix, noise)
        eager = static.run(use_graph=False).clone()
        graph = static.run(use_graph=True).clone()
        assert static.graph is not None and static.replays == 1
        assert (graph - eager).abs().max().item() < 1e-5
        assert (graph - ref).abs().max().item() < TOL
        # replay with new noise and a new prefix reuses the graph without allocating
        mem = torch.cuda.memory_allocated()
        noise2 = torch.randn_like(noise)
        static.load(prefix, noise2)
        graph2 = static.run(use_graph=True).clone()
        assert torch.cuda.memory_allocated() - mem < 1 << 20
        static.load(prefix, noise2)
        torch.testing.assert_close(graph2, static.run(use_graph=False))


def test_model_keeps_one_growing_static_sampler(smooth):
    model, prep, vision = smooth
    model._static.clear()
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(2))
    long_prefix, _ = model.reason(prep, vision, 1, cot_tokens=80)
    short_prefix, _ = model.reason(prep, vision, 1, cot_tokens=2)
    model.sample_actions(short_prefix, noise, "eager")
    (first,) = model._static.values()
    model.sample_actions(long_prefix, noise, "eager")  # does not fit: grows
    (grown,) = model._static.values()
    assert grown is not first and grown.capacity >= long_prefix.length > first.capacity
    model.sample_actions(short_prefix, noise, "eager")  # fits the grown one: reused
    (again,) = model._static.values()
    assert again is grown


@pytest.mark.gpu
@cuda
def test_drive_with_graph_on_cuda_matches_eager():
    model, _, _ = _setup(2.0, "cuda")
    hist, _ = rig_history("av2f-0a1e6f0a", t=30)
    imgs = frames(model.config)
    kw = dict(
        num_samples=K, cot_tokens=6, noise=torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(4))
    )
    eager = model.drive(imgs, hist, diffusion="eager", **kw)
    graph = model.drive(imgs, hist, diffusion="graph", **kw)
    assert graph.stats["graph"] == 1 and eager.reasoning == graph.reasoning
    np.testing.assert_allclose(graph.actions, eager.actions, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.heavy
@cuda
@pytest.mark.skipif(not __import__("os").environ.get("ALPASIM_HEAVY"), reason="set ALPASIM_HEAVY=1")
def test_real_size_tick_on_cuda():
    torch.manual_seed(0)
    model = AlpamayoR1.create(AlpamayoConfig.from_preset("alpamayo-r1-10b"), "cuda")
    hist, _ = rig_history("av2s-7fab2350-w00", t=40)
    out = model.drive(frames(model.config), hist, num_samples=6, cot_tokens=40, diffusion="graph")
    assert out.trajectories.shape == (6, 64, 3) and np.isfinite(out.trajectories).all()
    assert out.stats["graph"] == 1 and out.stats["prefix_len"] > 2000


@pytest.mark.parametrize("rows", [1, K])
def test_lean_loop_equals_the_static_loop(smooth, rows):
    """The lean CPU loop (time terms once per tick, per-sample unmasked windows) = the static loop
    and the HF reference, for a shared prefix and for ragged per-sample prefixes."""
    model, prep, vision = smooth
    prefix, _ = model.reason(prep, vision, rows, cot_tokens=5)
    if rows > 1:
        prefix = _ragged(prefix)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(20 + rows))
    lean = model.sample_actions(prefix, noise, "lean")
    static = model.sample_actions(prefix, noise, "eager")
    ref = model.sample_actions(prefix, noise, "dynamic")
    assert (lean - static).abs().max().item() < 1e-5
    assert (lean - ref).abs().max().item() < TOL
    # on CPU "graph" is the lean loop
    torch.testing.assert_close(model.sample_actions(prefix, noise, "graph"), lean, rtol=0, atol=0)
    (sampler,) = [s for key, s in model._lean.items() if key[0] == K]
    assert (sampler.mask is None) == (rows == 1)


def test_lean_velocity_matches_per_step_at_default_config():
    from alpasim_policy.model.flow import LeanFlowSampler

    model, prep, vision = _setup(100.0)
    for rows in (1, K):
        prefix, _ = model.reason(prep, vision, rows, cot_tokens=4)
        if rows > 1:
            prefix = _ragged(prefix)
        noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(12))
        dyn, _ = _samplers(model, prefix)
        lean = LeanFlowSampler(
            model.expert,
            model.action_in_proj,
            model.action_out_proj,
            steps=model.config.flow_steps,
            samples=K,
            capacity=prefix_capacity(prefix.length),
            n_waypoints=64,
        )
        trace: list = []
        dyn.sample(prefix, noise, trace=trace)
        lean.load(prefix, noise)
        for i, (x, v_ref) in enumerate(trace):
            assert (lean.velocity(x, i) - v_ref).abs().max().item() < TOL, f"step {i}, rows {rows}"
        # the time term is the flow time's share of the projection: same embedding as the plain forward
        t = torch.full((K,), 0.3)
        x = noise
        a = model.action_in_proj(x, t)
        b = model.action_in_proj.forward_with_time_term(x, model.action_in_proj.time_term(t))
        assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("rows", [1, K])
def test_fused_lean_loop_equals_the_plain_lean_loop(smooth, rows):
    """The lean loop's fused projections (q/k/v and gate/up as one GEMM each, q/k norms and RoPE on
    the stacked heads) give the plain lean loop's actions (same operations, regrouped), and a weight
    update after the first tick is picked up (the fused copies are rebuilt, never stale)."""
    from alpasim_policy.model.flow import LeanFlowSampler

    model, prep, vision = smooth
    prefix, _ = model.reason(prep, vision, rows, cot_tokens=5)
    if rows > 1:
        prefix = _ragged(prefix)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(30 + rows))
    kw = dict(
        steps=model.config.flow_steps, samples=K, capacity=prefix_capacity(prefix.length), n_waypoints=64
    )
    heads = (model.expert, model.action_in_proj, model.action_out_proj)
    fused = LeanFlowSampler(*heads, fused=True, **kw)
    plain = LeanFlowSampler(*heads, fused=False, **kw)
    assert fused.fused is not None and plain.fused is None

    def run(sampler):
        sampler.load(prefix, noise)
        return sampler.run().clone()

    assert (run(fused) - run(plain)).abs().max().item() < 1e-6
    weight = model.expert.layers[0].mlp.up_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)  # an in-place update, as an optimiser step does
        changed = run(plain)
        assert (run(fused) - changed).abs().max().item() < 1e-6
        assert (changed - run(LeanFlowSampler(*heads, fused=False, **kw))).abs().max().item() == 0.0
    finally:
        with torch.no_grad():
            weight.copy_(saved)
