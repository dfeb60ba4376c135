"""Action expert: action-token projection, a Qwen3-VL text tower attending to the VLM's KV, and a head.

Why a second transformer instead of decoding trajectory tokens: the expert runs the 64 action
tokens *in parallel* (non-causal among themselves) against the frozen reasoning prefix, once per
flow-matching step; it is narrower than the VLM (2048 vs 4096 wide) but has the same layer count,
KV heads and head dim so layer ``l`` reads the VLM's layer-``l`` keys and values directly.

Two ways to run the expert layers over the prefix:

* :func:`expert_forward_dynamic` — the reference path: ``transformers``' own
  ``Qwen3VLTextModel.forward`` with a ``DynamicCache`` holding the prefix (one copy per sample),
  a 4D float mask and ``is_causal=False``; the cache is cropped back after each call.
* :func:`expert_forward_static` — the fast path: the same weights, but attention is computed
  against *static* prefix buffers. A prefix shared by all K samples (``Bp == 1``) is never
  copied: the K samples' queries are stacked as rows of one GEMM against the single prefix.
  Nothing is concatenated or cropped, so the whole sampler can be captured in one CUDA graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb


class FourierFeatures(nn.Module):
    """Scalar -> ``dim`` features: sin / cos at log-spaced frequencies 1 ... ``max_freq`` (cycles per unit)."""

    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        self.out_dim = dim
        freqs = torch.logspace(0.0, math.log10(max_freq), steps=dim // 2)
        self.register_buffer("freqs", freqs[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x[..., None] * self.freqs * (2.0 * math.pi)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1) * math.sqrt(2.0)


class MLPEncoder(nn.Module):
    """Linear -> SiLU -> [RMSNorm -> Linear -> SiLU] x (L-1) -> RMSNorm -> Linear (keys ``trunk.<i>.*``)."""

    def __init__(self, in_features: int, num_layers: int, hidden: int, out_features: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.SiLU()]
        for i in range(num_layers):
            last = i == num_layers - 1
            layers += [nn.RMSNorm(hidden, eps=1e-5), nn.Linear(hidden, out_features if last else hidden)]
            if not last:
                layers.append(nn.SiLU())
        self.trunk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class ActionInProjection(nn.Module):
    """Noisy actions ``(B, N, C)`` + flow time ``(B,)`` -> expert tokens ``(B, N, hidden)``.

    Each action channel (acceleration, curvature) gets its own Fourier encoding, the flow time
    another; the concatenation goes through an MLP and a LayerNorm. Computed in float32 (Fourier
    features of a 100 Hz frequency need the mantissa), cast to the expert's dtype at the end.
    """

    def __init__(
        self,
        action_channels: int,
        out_dim: int,
        num_layers: int = 4,
        hidden: int = 1024,
        num_fourier: int = 20,
        max_freq: float = 100.0,
    ):
        super().__init__()
        self.sinus = nn.ModuleList([FourierFeatures(num_fourier, max_freq) for _ in range(action_channels)])
        self.timestep_fourier_encoder = FourierFeatures(num_fourier, max_freq)
        n_in = num_fourier * (action_channels + 1)
        self.encoder = MLPEncoder(n_in, num_layers, hidden, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = x.float()
        feats = [enc(x[:, :, i]) for i, enc in enumerate(self.sinus)]
        tf = self.timestep_fourier_encoder(t.float().reshape(b))[:, None, :].expand(b, n, -1)
        h = torch.cat([*feats, tf], dim=-1)
        dtype = self.norm.weight.dtype
        return self.norm(self.encoder(h.to(dtype)))


def build_expert(expert_config) -> nn.Module:  # noqa: ANN001
    """A ``Qwen3VLTextModel`` without token embeddings (the expert only ever sees action embeddings)."""
    from transformers import Qwen3VLTextModel

    expert = Qwen3VLTextModel(expert_config)
    del expert.embed_tokens
    return expert


def action_rope(expert: nn.Module, offsets: torch.Tensor, n_tokens: int, dtype: torch.dtype):
    """cos / sin of the action tokens: M-RoPE positions ``offset + i`` on all three axes.

    ``offsets`` ``(B,)`` is each sample's first action position in the *rope* index space
    (cache length after ``<|traj_future_start|>`` plus the VLM's rope delta from the images).
    """
    pos = offsets.to(torch.long)[:, None] + torch.arange(n_tokens, device=offsets.device)[None, :]
    pos3 = pos[None].expand(3, -1, -1)
    dummy = torch.empty(0, dtype=dtype, device=offsets.device)
    return expert.rotary_emb(dummy, pos3)


def _mlp_block(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return h + layer.mlp(layer.post_attention_layernorm(h))


def static_attention(
    attn: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_bias: torch.Tensor,
) -> torch.Tensor:
    """Attention of ``B`` x ``T`` action tokens over (static prefix of ``Bp`` rows) + (their own T tokens).

    ``prefix_k/v``: ``(Bp, kvh, P, d)`` with ``Bp`` = 1 (shared) or B; ``prefix_bias``: ``(Bp, P)``,
    0 for valid keys and -inf for padding. The softmax over both key sets is done jointly with a
    shared running max (so it equals attention over the concatenation, without concatenating).
    """
    b, t, _ = h.shape
    d = attn.head_dim
    q = attn.q_norm(attn.q_proj(h).view(b, t, -1, d)).transpose(1, 2)  # (B, H, T, d)
    k = attn.k_norm(attn.k_proj(h).view(b, t, -1, d)).transpose(1, 2)  # (B, kvh, T, d)
    v = attn.v_proj(h).view(b, t, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    kvh = k.shape[1]
    g = q.shape[1] // kvh
    bp, _, p, _ = prefix_k.shape
    scale = attn.scaling
    qg = q.reshape(b, kvh, g * t, d)  # heads of one KV group are contiguous (GQA layout)

    # self part: every sample attends to its own T action tokens, non-causally
    s_self = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # (B, kvh, gT, T)
    if bp == 1:
        # one GEMM per KV head with all samples' queries as rows: no per-sample prefix copy
        q_rows = qg.permute(1, 0, 2, 3).reshape(kvh, b * g * t, d)
        s_pre = torch.matmul(q_rows, prefix_k[0].transpose(-1, -2)).float() * scale  # (kvh, B gT, P)
        s_pre = s_pre + prefix_bias[0][None, None, :]
        s_pre = s_pre.view(kvh, b, g * t, p).permute(1, 0, 2, 3)  # (B, kvh, gT, P) view
    else:
        s_pre = torch.matmul(qg, prefix_k.transpose(-1, -2)).float() * scale
        s_pre = s_pre + prefix_bias[:, None, None, :]
    m = torch.maximum(s_pre.amax(dim=-1, keepdim=True), s_self.amax(dim=-1, keepdim=True))
    e_pre = torch.exp(s_pre - m)
    e_self = torch.exp(s_self - m)
    denom = e_pre.sum(dim=-1, keepdim=True) + e_self.sum(dim=-1, keepdim=True)
    if bp == 1:
        e_rows = e_pre.permute(1, 0, 2, 3).reshape(kvh, b * g * t, p).to(prefix_v.dtype)
        o_pre = torch.matmul(e_rows, prefix_v[0]).view(kvh, b, g * t, d).permute(1, 0, 2, 3)
    else:
        o_pre = torch.matmul(e_pre.to(prefix_v.dtype), prefix_v)
    o_self = torch.matmul(e_self.to(v.dtype), v)
    o = (o_pre.float() + o_self.float()) / denom
    o = o.to(h.dtype).reshape(b, kvh * g, t, d).transpose(1, 2).reshape(b, t, -1)
    return attn.o_proj(o)


def expert_forward_static(
    expert: nn.Module,
    embeds: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    prefix_k: list[torch.Tensor],
    prefix_v: list[torch.Tensor],
    prefix_bias: torch.Tensor,
) -> torch.Tensor:
    """The expert's layers on static prefix buffers; returns the final-norm hidden states ``(B, T, D)``."""
    h = embeds
    for i, layer in enumerate(expert.layers):
        h = h + static_attention(
            layer.self_attn, layer.input_layernorm(h), cos, sin, prefix_k[i], prefix_v[i], prefix_bias
        )
        h = _mlp_block(layer, h)
    return expert.norm(h)


def expert_forward_dynamic(
    expert: nn.Module,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    cache,  # noqa: ANN001 - transformers DynamicCache with B rows of prefix
    attention_mask: torch.Tensor,
    prefix_len: int,
) -> torch.Tensor:
    """Reference path: HF forward over a ``DynamicCache`` (grows by T, then cropped back to the prefix)."""
    out = expert(
        inputs_embeds=embeds,
        position_ids=position_ids,
        past_key_values=cache,
        attention_mask=attention_mask,
        use_cache=True,
        is_causal=False,
    )
    cache.crop(-embeds.shape[1])  # drop the T action tokens just appended
    return out.last_hidden_state
