"""Action expert: action-token projection, a Qwen3-VL text tower attending to the VLM's KV, and a head.

Why a second transformer instead of decoding trajectory tokens: the expert runs the 64 action
tokens *in parallel* (non-causal among themselves) against the frozen reasoning prefix, once per
flow-matching step; it is narrower than the VLM (2048 vs 4096 wide) but has the same layer count,
KV heads and head dim so layer ``l`` reads the VLM's layer-``l`` keys and values directly.

Two ways to run the expert layers over the prefix:

* :func:`expert_forward_dynamic` — the reference path: ``transformers``' own
  ``Qwen3VLTextModel.forward`` with a ``DynamicCache`` holding the prefix (one copy per sample),
  a 4D float mask and ``is_causal=False``; the cache is cropped back after each call.
* :func:`expert_forward_static` — the fast path: the same weights, but attention runs against
  *static* buffers (prefix written once, action slots overwritten in place). A prefix shared by
  all K samples (``Bp == 1``) is never copied: the K samples' queries are stacked as rows of one
  attention problem against the single prefix. Nothing is concatenated or cropped, so the whole
  sampler can be captured in one CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
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
        # the reference's evaluation order ((x * f) * 2) * pi: at 100 Hz the argument reaches ~1e3
        # and a different rounding order moves sin / cos by ~1e-4
        arg = x[..., None] * self.freqs * 2 * math.pi
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

    def time_term(self, t: torch.Tensor) -> torch.Tensor:
        """The flow time's share of the first linear layer, ``W_t fourier(t) + b`` ``(B, 1, hidden)``.

        Why: the first layer is linear in the concatenation [action features, time features], so
        its time columns plus the bias can be computed once per Euler step and per tick instead of
        inside every velocity evaluation (:meth:`forward_with_time_term`); equal to :meth:`forward`
        up to float rounding (the sum is split in two)."""
        first = self.encoder.trunk[0]
        dtype = self.norm.weight.dtype
        tf = self.timestep_fourier_encoder(t.float().reshape(-1)).to(dtype)
        n_x = first.in_features - tf.shape[-1]
        return F.linear(tf, first.weight[:, n_x:], first.bias)[:, None, :]

    def forward_with_time_term(self, x: torch.Tensor, time_term: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the time part precomputed by :meth:`time_term`."""
        x = x.float()
        feats = torch.cat([enc(x[:, :, i]) for i, enc in enumerate(self.sinus)], dim=-1)
        first = self.encoder.trunk[0]
        dtype = self.norm.weight.dtype
        h = F.linear(feats.to(dtype), first.weight[:, : feats.shape[-1]]) + time_term
        for layer in self.encoder.trunk[1:]:
            h = layer(h)
        return self.norm(h)


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


def _action_qkv(
    attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The action tokens' rotated queries ``(B, H, T, d)``, keys and values ``(B, kvh, T, d)``
    (shared by the static and the lean sampler's attention, which differ only in the KV layout)."""
    b, t, _ = h.shape
    d = attn.head_dim
    q = attn.q_norm(attn.q_proj(h).view(b, t, -1, d)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(h).view(b, t, -1, d)).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def static_attention(
    attn: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    mask: torch.Tensor,
    capacity: int,
) -> torch.Tensor:
    """Attention of ``B`` x ``T`` action tokens over a static prefix plus their own tokens.

    ``k_buf`` / ``v_buf``: ``(Bp, kvh, capacity + S, d)``; positions ``[0, capacity)`` hold the
    prefix (written once per tick), ``[capacity, capacity + S)`` are slots for the action tokens'
    keys / values, overwritten in place here (no concatenation, no crop).

    * ``Bp == 1`` (shared prefix): ``S = B * T``; all samples' queries become rows of one attention
      problem against the single prefix copy, and ``mask`` (``(1, 1, g*B*T, capacity + B*T)``)
      lets each row see the valid prefix and only its own sample's T action slots.
    * ``Bp == B``: ``S = T``; an ordinary batched attention, ``mask`` ``(B, 1, g*T, capacity + T)``.

    KV groups are folded into query rows (``g`` = heads per KV head), so the kernel is plain
    multi-head SDPA with ``kvh`` heads — every SDPA backend supports it.
    """
    b, t, _ = h.shape
    d = attn.head_dim
    q, k, v = _action_qkv(attn, h, cos, sin)
    kvh = k.shape[1]
    g = q.shape[1] // kvh
    if k_buf.shape[0] == 1:
        k_buf[0, :, capacity:].view(kvh, b, t, d).copy_(k.transpose(0, 1))
        v_buf[0, :, capacity:].view(kvh, b, t, d).copy_(v.transpose(0, 1))
        rows = q.view(b, kvh, g, t, d).permute(1, 2, 0, 3, 4).reshape(1, kvh, g * b * t, d)
        o = F.scaled_dot_product_attention(rows, k_buf, v_buf, attn_mask=mask, scale=attn.scaling)
        o = o.view(kvh, g, b, t, d).permute(2, 3, 0, 1, 4)
    else:
        k_buf[:, :, capacity:].copy_(k)
        v_buf[:, :, capacity:].copy_(v)
        rows = q.reshape(b, kvh, g * t, d)
        o = F.scaled_dot_product_attention(rows, k_buf, v_buf, attn_mask=mask, scale=attn.scaling)
        o = o.view(b, kvh, g, t, d).permute(0, 3, 1, 2, 4)
    return attn.o_proj(o.reshape(b, t, kvh * g * d))


def expert_forward_static(
    expert: nn.Module,
    embeds: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_bufs: list[torch.Tensor],
    v_bufs: list[torch.Tensor],
    mask: torch.Tensor,
    capacity: int,
) -> torch.Tensor:
    """The expert's layers on static buffers; returns the final-norm hidden states ``(B, T, D)``."""
    h = embeds
    for i, layer in enumerate(expert.layers):
        h = h + static_attention(
            layer.self_attn, layer.input_layernorm(h), cos, sin, k_bufs[i], v_bufs[i], mask, capacity
        )
        h = _mlp_block(layer, h)
    return expert.norm(h)


def lean_attention(
    attn: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    start: int,
    capacity: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of ``B`` x ``T`` action tokens, one problem per sample, with no padded columns.

    ``k_buf`` / ``v_buf``: ``(B, kvh, capacity + T, d)``; the prefix is *right-aligned* so that it
    ends at ``capacity`` (written once per tick, one copy per sample) and the sample's own T action
    slots follow it: the columns ``[start, capacity + T)`` are exactly (valid prefix, own tokens), so
    the kernel runs unmasked over ``valid + T`` columns — no padding, no other samples' slots (which
    the shared-prefix layout of :func:`static_attention` computes and masks away). ``mask`` only when
    the rows' prefixes differ in length ((B, 1, 1, cols) additive). KV groups folded into query rows.
    """
    b, t, _ = h.shape
    d = attn.head_dim
    q, k, v = _action_qkv(attn, h, cos, sin)
    kvh = k.shape[1]
    g = q.shape[1] // kvh
    k_buf[:, :, capacity:].copy_(k)
    v_buf[:, :, capacity:].copy_(v)
    rows = q.reshape(b, kvh, g * t, d)
    o = F.scaled_dot_product_attention(
        rows, k_buf[:, :, start:], v_buf[:, :, start:], attn_mask=mask, scale=attn.scaling
    )
    o = o.view(b, kvh, g, t, d).permute(0, 3, 1, 2, 4)
    return attn.o_proj(o.reshape(b, t, kvh * g * d))


def expert_forward_lean(
    expert: nn.Module,
    embeds: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_bufs: list[torch.Tensor],
    v_bufs: list[torch.Tensor],
    start: int,
    capacity: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The expert's layers with :func:`lean_attention`; returns the final-norm hidden states."""
    h = embeds
    for i, layer in enumerate(expert.layers):
        h = h + lean_attention(
            layer.self_attn, layer.input_layernorm(h), cos, sin, k_bufs[i], v_bufs[i], start, capacity, mask
        )
        h = _mlp_block(layer, h)
    return expert.norm(h)


def _weight_signature(expert: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in expert.layers.parameters())


class FusedExpertWeights:
    """The expert layers' q/k/v and gate/up weights concatenated (one GEMM each instead of three and
    two) and the q/k norm weights stacked, for :func:`expert_forward_fused`.

    Why: the lean loop runs 10 Euler steps x L layers on only K x 64 rows; at that size each GEMM
    and each small op costs mostly fixed overhead. Built once per sampler and rebuilt when a weight
    changes (a new ``data_ptr`` or an in-place update, e.g. a training step), as the static decoder
    does. ``usable`` is False when a projection has a bias (Qwen3-VL has none): then the plain lean
    forward runs."""

    def __init__(self, expert: nn.Module):
        self.expert = expert
        self.signature = _weight_signature(expert)
        self.layers: list[dict[str, torch.Tensor | int]] = []
        self.usable = True
        with torch.no_grad():
            for layer in expert.layers:
                a, m = layer.self_attn, layer.mlp
                if any(p.bias is not None for p in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)):
                    self.usable = False
                    self.layers = []
                    return
                d = a.head_dim
                n_q, n_kv = a.q_proj.out_features // d, a.k_proj.out_features // d
                self.layers.append(
                    {
                        "qkv": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                        "gate_up": torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                        "qk_norm": torch.cat(
                            [a.q_norm.weight.expand(n_q, -1), a.k_norm.weight.expand(n_kv, -1)]
                        ),
                        "n_q": n_q,
                        "n_kv": n_kv,
                        "inter": m.gate_proj.out_features,
                    }
                )

    @classmethod
    def for_expert(cls, expert: nn.Module, cached: FusedExpertWeights | None) -> FusedExpertWeights:
        """``cached`` while it still matches ``expert``'s weights, else a fresh copy."""
        if cached is not None and cached.expert is expert and _weight_signature(expert) == cached.signature:
            return cached
        return cls(expert)


def _rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3-VL RMSNorm (float32 statistics, weight in the input dtype) in two ops."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def expert_forward_fused(
    expert: nn.Module,
    fused: FusedExpertWeights,
    embeds: torch.Tensor,
    cos: torch.Tensor,
    sin_signed: torch.Tensor,
    k_bufs: list[torch.Tensor],
    v_bufs: list[torch.Tensor],
    start: int,
    capacity: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`expert_forward_lean` with fewer, larger ops: fused q/k/v and gate/up GEMMs, the q and k
    norms as one RMS norm over the stacked heads, RoPE on q and k together as
    ``x * cos + roll(x, d/2) * sin_signed`` (``sin_signed`` = [-sin_1, sin_2]: the same products as
    ``rotate_half``, a sign flip being exact), the same SDPA over the same KV layout. Equal to the
    lean forward up to float rounding (a GEMM's summation order may differ in the last bit).
    ``cos`` / ``sin_signed``: ``(B, 1, T, d)``."""
    h = embeds
    b, t, _ = h.shape
    half = cos.shape[-1] // 2
    for i, layer in enumerate(expert.layers):
        w = fused.layers[i]
        attn = layer.self_attn
        d = attn.head_dim
        n_q, n_kv = int(w["n_q"]), int(w["n_kv"])
        x = _rms(layer.input_layernorm, h)
        qkv = F.linear(x, w["qkv"])
        qk = qkv[..., : (n_q + n_kv) * d].view(b, t, n_q + n_kv, d)
        qk = w["qk_norm"] * F.rms_norm(qk.float(), (d,), eps=attn.q_norm.variance_epsilon).to(x.dtype)
        qk = qk.transpose(1, 2)
        qk = qk * cos + qk.roll(half, dims=-1) * sin_signed
        k_buf, v_buf = k_bufs[i], v_bufs[i]
        k_buf[:, :, capacity:].copy_(qk[:, n_q:])
        v_buf[:, :, capacity:].copy_(qkv[..., (n_q + n_kv) * d :].view(b, t, n_kv, d).transpose(1, 2))
        g = n_q // n_kv
        rows = qk[:, :n_q].reshape(b, n_kv, g * t, d)
        o = F.scaled_dot_product_attention(
            rows, k_buf[:, :, start:], v_buf[:, :, start:], attn_mask=mask, scale=attn.scaling
        )
        o = o.view(b, n_kv, g, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, n_q * d)
        h = h + attn.o_proj(o)
        x = _rms(layer.post_attention_layernorm, h)
        gate, up = F.linear(x, w["gate_up"]).split(int(w["inter"]), dim=-1)
        h = h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
    return _rms(expert.norm, h)


def static_mask(
    valid_len: torch.Tensor, samples: int, n_tokens: int, groups: int, capacity: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask for :func:`static_attention` (0 = attend, -inf = blocked), built once per tick."""
    device = valid_len.device
    bp = valid_len.shape[0]
    neg = torch.tensor(float("-inf"), dtype=dtype, device=device)
    zero = torch.tensor(0.0, dtype=dtype, device=device)
    cols = torch.arange(capacity, device=device)
    prefix = torch.where(cols[None, :] < valid_len[:, None], zero, neg)  # (Bp, capacity)
    if bp == 1:
        sample_of_row = torch.arange(samples, device=device).repeat_interleave(n_tokens)  # (B*T,)
        sample_of_slot = sample_of_row
        own = torch.where(sample_of_row[:, None] == sample_of_slot[None, :], zero, neg)  # (B*T, B*T)
        block = torch.cat([prefix.expand(samples * n_tokens, -1), own], dim=1)  # rows (B, T)
        return block.repeat(groups, 1)[None, None]  # rows (g, B, T)
    own = torch.zeros((bp, n_tokens, n_tokens), dtype=dtype, device=device)
    block = torch.cat([prefix[:, None, :].expand(-1, n_tokens, -1), own], dim=2)  # (B, T, cap + T)
    return block.repeat(1, groups, 1)[:, None]  # (B, 1, g*T, cap + T), rows (g, T)


@functools.cache
def cache_kwarg() -> str:
    """Name of the KV-cache argument of transformers' Qwen3-VL forwards: ``cache`` from 5.x
    (``past_key_values`` is deprecated there and goes in 5.40), ``past_key_values`` before."""
    import inspect

    from transformers import Qwen3VLTextModel

    return "cache" if "cache" in inspect.signature(Qwen3VLTextModel.forward).parameters else "past_key_values"


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
        attention_mask=attention_mask,
        **{cache_kwarg(): cache},
        use_cache=True,
        is_causal=False,
    )
    cache.crop(-embeds.shape[1])  # drop the T action tokens just appended
    return out.last_hidden_state
