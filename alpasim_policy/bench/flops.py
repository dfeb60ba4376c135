"""FLOPs per tick stage and the diffusion stage's arithmetic bound on this machine (used by ``bench model``).

Why count and bound: a stage's latency alone does not say whether it is limited by arithmetic or by
per-step overhead. FLOPs are counted with ``torch.utils.flop_counter`` (matmuls and attention; on
the CPU the flash-attention kernel is registered here because the counter does not know it, and on
every attention kernel grouped-query K/V heads are expanded because the counter rejects them; causal
attention is counted in full, as the counter does). The diffusion stage's *arithmetic bound* is the
time its matmuls and attention would take at the best rate this machine reaches *on the very same
shapes*: each linear layer's GEMM and the attention problem are timed alone in a tight loop (best of
several runs), and the bound is the sum over the loop of FLOPs / rate. ``time / bound`` is then the
overhead factor (1.0 = nothing but arithmetic). A square 1024^3 GEMM gives the machine's headline
peak for reference.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F


def _flop_counter():  # noqa: ANN202
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa_any(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003, ARG001
        # grouped-query attention (``enable_gqa``, fewer K/V heads than query heads) is counted as
        # the full attention it computes: every query head against the keys it shares
        heads = query_shape[1]
        key_shape = (key_shape[0], heads, *key_shape[2:])
        value_shape = (value_shape[0], heads, *value_shape[2:])
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {}
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",  # unknown to the counter
        "_scaled_dot_product_flash_attention",  # known, but the counter rejects GQA shapes
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = sdpa_any
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Any) -> tuple[int, Any]:
    """FLOPs of ``fn()`` (matmuls + attention) and its result."""
    with _flop_counter() as fc:
        out = fn()
    return int(fc.get_total_flops()), out


@torch.no_grad()
def stage_flops(
    model: Any, images: Any, history: Any, samples: int, cot_tokens: int, diffusion: str
) -> dict[str, int]:
    """FLOPs of vision, prefill, decode (``cot_tokens`` forced, single reasoning) and diffusion.

    Prefill is a decode limited to one token (no token is fed back), decode = the full reasoning
    minus that. A CUDA graph replay is invisible to the counter, so ``graph`` on CUDA is counted on
    the same loop run eagerly."""
    prepared = model.prepare(images, history)
    f_vis, vision = count_flops(lambda: model.encode_images(prepared.pixel_values, prepared.image_grid_thw))
    f_pre, _ = count_flops(lambda: model.reason(prepared, vision, 1, cot_tokens=1))
    f_rsn, (prefix, _) = count_flops(lambda: model.reason(prepared, vision, 1, cot_tokens=cot_tokens))
    noise = torch.randn((samples, model.config.n_waypoints, 2), generator=torch.Generator().manual_seed(0))
    mode = "eager" if (diffusion == "graph" and model.device.type == "cuda") else diffusion
    f_dif, _ = count_flops(lambda: model.sample_actions(prefix, noise, mode))
    return {
        "vision": f_vis,
        "prefill": f_pre,
        "decode": f_rsn - f_pre,
        "diffusion": f_dif,
        "prefix_len": int(prefix.valid_len.max()),
    }


def _best_seconds(fn: Any, repeats: int, sync: Any) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def diffusion_bound(
    model: Any, samples: int, prefix_len: int, repeats: int = 7, fused: bool | None = None
) -> dict[str, Any]:
    """The diffusion loop's arithmetic bound at ``samples`` and ``prefix_len`` on this machine.

    ``fused`` (default: what the model's CPU lean loop runs): the expert's q/k/v and gate/up GEMMs
    timed as the fused shapes the loop multiplies (the FLOPs are the same either way).

    The loop's arithmetic per Euler step: the action projection's MLP and the expert's linear
    layers on ``samples * 64`` rows (the time term is precomputed once per tick, so not counted),
    the head, and per layer one attention problem of ``samples`` x (q heads x 64) queries over
    ``prefix_len + 64`` keys. Each shape is timed alone; returns FLOPs, bound seconds, the rates.
    """
    dev, dtype = model.device, model.dtype
    cfg = model.expert.config
    if fused is None:
        from alpasim_policy.model.expert import FusedExpertWeights

        fused = dev.type != "cuda" and FusedExpertWeights(model.expert).usable
    rows = samples * model.config.n_waypoints
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    linears: list[torch.nn.Linear] = []
    mlp = [m for m in model.action_in_proj.encoder.modules() if isinstance(m, torch.nn.Linear)]
    linears += mlp
    for layer in model.expert.layers:
        a, m = layer.self_attn, layer.mlp
        linears += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    linears.append(model.action_out_proj)
    shapes: list[tuple[int, int]] = []
    for lin in linears:
        shape = (lin.in_features, lin.out_features)
        if lin is mlp[0]:
            n_in = lin.in_features - model.action_in_proj.timestep_fourier_encoder.out_dim
            shape = (n_in, lin.out_features)  # the time columns are precomputed
        shapes.append(shape)
    if fused:  # the lean loop's GEMMs: q/k/v as one, gate/up as one (same FLOPs, fewer GEMMs)
        shapes = shapes[: len(mlp)]
        for layer in model.expert.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = a.q_proj.out_features + a.k_proj.out_features + a.v_proj.out_features
            shapes += [(a.q_proj.in_features, qkv), (a.o_proj.in_features, a.o_proj.out_features)]
            shapes += [(m.gate_proj.in_features, 2 * m.gate_proj.out_features)]
            shapes += [(m.down_proj.in_features, m.down_proj.out_features)]
        shapes.append((model.action_out_proj.in_features, model.action_out_proj.out_features))
    rates: dict[tuple[int, int], float] = {}
    flops_lin = 0
    t_lin = 0.0
    for shape in shapes:
        f = 2 * rows * shape[0] * shape[1]
        if shape not in rates:
            x = torch.randn(rows, shape[0], device=dev, dtype=dtype)
            w = torch.randn(shape[1], shape[0], device=dev, dtype=dtype)
            rates[shape] = f / _best_seconds(lambda x=x, w=w: F.linear(x, w), repeats, sync)
        flops_lin += f
        t_lin += f / rates[shape]
    kvh, d, heads = cfg.num_key_value_heads, cfg.head_dim, cfg.num_attention_heads
    t = model.config.n_waypoints
    q = torch.randn(samples, kvh, heads // kvh * t, d, device=dev, dtype=dtype)
    k = torch.randn(samples, kvh, prefix_len + t, d, device=dev, dtype=dtype)
    f_att = 4 * samples * heads * t * (prefix_len + t) * d
    v = torch.randn_like(k)  # its own values, as the loop has
    r_att = f_att / _best_seconds(lambda: F.scaled_dot_product_attention(q, k, v), repeats, sync)
    steps = model.config.flow_steps
    n_layers = len(model.expert.layers)
    flops = steps * (flops_lin + n_layers * f_att)
    bound = steps * (t_lin + n_layers * f_att / r_att)
    a = torch.randn(1024, 1024, device=dev, dtype=dtype)
    peak = 2 * 1024**3 / _best_seconds(lambda: a @ a, repeats, sync)
    return {
        "flops": flops,
        "bound_s": bound,
        "attention_gflops": r_att / 1e9,
        "linear_gflops_min": min(rates.values()) / 1e9,
        "linear_gflops_max": max(rates.values()) / 1e9,
        "square_gemm_gflops": peak / 1e9,
    }


__all__ = ["count_flops", "diffusion_bound", "stage_flops"]
