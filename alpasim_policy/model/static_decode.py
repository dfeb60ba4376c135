"""A lean chain-of-causation decode: the VLM's text layers over a static, preallocated KV cache.

Why not transformers' forward per step: for a small model a decode step is dominated by Python-side
machinery (cache objects growing by ``torch.cat``, mask construction, output dataclasses, M-RoPE
index bookkeeping), not by arithmetic. After the prefill (still transformers' own forward: it
merges the image features and the deep-stack features, which decode steps never need), the prompt's
keys / values are copied once into per-layer buffers sized ``prompt + limit + headroom``; every
decode step then runs the same modules (embedding, RMS norms, q/k/v/o projections with q/k norms,
M-RoPE, SDPA, MLP, final norm, LM head) on those buffers, writing its keys / values in place. No
step allocates a cache, concatenates, crops or builds a mask; a multi-token step (speculative
verification) reads a slice of a causal mask table built once per tick.

Decode positions: after the prompt every token is text, so its M-RoPE position is the same on all
three axes, ``sequence index + rope delta`` (the delta the image grid introduced); the cos / sin of
all positions a tick can reach are computed once per tick by the model's own rotary module.

Numerics: a one-token step runs the same operations in the same order as transformers' forward
(grouped-query SDPA without a mask, as transformers' SDPA path does for one query), so the logits
are bit-identical to the reference loop (tested); multi-token steps use a boolean causal mask.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: ``static``: :class:`StaticKVDecoder`; ``dynamic``: transformers' forward + ``DynamicCache`` (reference)
DecodeMode = Literal["static", "dynamic"]

#: fuse q/k/v and gate/up weights (one matmul each) when the text layers' weights take less than
#: this many bytes: the fused copies then cost little memory, and small models are bound by per-op
#: overhead, not by weight reads (a real-size model keeps its separate projections).
FUSE_MAX_BYTES = 2 * 1024**3


class _LayerWeights:
    """Per-layer references (and fused copies) one static decode step needs."""

    def __init__(self, layer: nn.Module, fuse: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn = attn
        self.mlp = mlp
        self.in_norm = layer.input_layernorm
        self.post_norm = layer.post_attention_layernorm
        self.head_dim = attn.head_dim
        self.q_width = attn.q_proj.out_features
        self.k_width = attn.k_proj.out_features
        self.n_q = self.q_width // self.head_dim
        self.n_kv = self.k_width // self.head_dim
        self.fused = fuse and all(m.bias is None for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        self.qkv = self.gate_up = self.qk_norm = None
        if self.fused:
            with torch.no_grad():
                self.qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
                self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
                self.qk_norm = torch.cat(
                    [attn.q_norm.weight.expand(self.n_q, -1), attn.k_norm.weight.expand(self.n_kv, -1)]
                )
        self.inter = mlp.gate_proj.out_features

    def sources(self) -> list[torch.Tensor]:
        a, m = self.attn, self.mlp
        return [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.q_norm.weight, a.k_norm.weight,
                m.gate_proj.weight, m.up_proj.weight]  # fmt: skip


def _rms(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3-VL RMSNorm (float32 statistics, weight applied in the input dtype) in
    two ops instead of seven; bit-identical to the module."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def _signature(weights: list[_LayerWeights]) -> tuple:
    return tuple((t.data_ptr(), t._version) for w in weights for t in w.sources())


class StaticKVDecoder:
    """Decode steps of a ``Qwen3VLForConditionalGeneration`` over static per-layer K/V buffers.

    Use: :meth:`start` once per tick after the prefill (copies the prompt's cache), then
    :meth:`step` for each group of tokens to feed; :meth:`keys` / :meth:`values` give views of the
    first ``n`` cache positions (what the action expert attends to). Rows are independent sequences
    of equal length (single reasoning: 1 row; multi: K rows of the same prompt).

    Build it once per model (:meth:`for_model`): the fused weight copies of a small model are made
    once and rebuilt only when a weight changes (a new ``data_ptr`` or an in-place update).
    """

    def __init__(self, vlm: nn.Module, fuse: bool | None = None):
        lm = vlm.model.language_model
        self.vlm = vlm
        self.embed = lm.embed_tokens
        self.norm = lm.norm
        self.rotary = lm.rotary_emb
        self.lm_head = vlm.lm_head
        if fuse is None:
            size = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
            fuse = size < FUSE_MAX_BYTES
        self.fuse = fuse
        self.layers = [_LayerWeights(layer, fuse) for layer in lm.layers]
        self._sig = _signature(self.layers)
        self.act = lm.layers[0].mlp.act_fn
        self.k_bufs: list[torch.Tensor] = []
        self.v_bufs: list[torch.Tensor] = []
        self.capacity = 0
        self.length = 0  # prompt length (first decode position)

    @classmethod
    def for_model(cls, vlm: nn.Module, cached: StaticKVDecoder | None) -> StaticKVDecoder:
        """``cached`` if it still matches ``vlm``'s current weights, else a new decoder."""
        if cached is not None and cached.vlm is vlm and _signature(cached.layers) == cached._sig:
            return cached
        return cls(vlm)

    def start(self, cache, length: int, rope_delta: int, capacity: int) -> None:  # noqa: ANN001
        """Allocate buffers for ``capacity`` positions and copy the prefill ``cache`` (``length`` tokens).

        ``cache``: transformers' ``DynamicCache`` after the prefill; ``rope_delta``: M-RoPE position
        minus sequence index for text after the images (``get_rope_index``'s delta). The buffers are
        new each tick (the returned prefix views stay valid after the next tick starts).
        """
        if capacity <= length:
            raise ValueError(f"static KV capacity {capacity} must exceed the prompt length {length}")
        self.k_bufs, self.v_bufs = [], []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            if k.shape[2] != length:
                raise ValueError(f"prefill cache holds {k.shape[2]} positions, expected {length}")
            kb = k.new_empty((k.shape[0], k.shape[1], capacity, k.shape[3]))
            vb = v.new_empty((v.shape[0], v.shape[1], capacity, v.shape[3]))
            kb[:, :, :length].copy_(k)
            vb[:, :, :length].copy_(v)
            self.k_bufs.append(kb)
            self.v_bufs.append(vb)
        self.capacity = capacity
        self.length = length
        dev = self.k_bufs[0].device
        dtype = self.lm_head.weight.dtype
        # cos / sin of every decode position (sequence index s -> M-RoPE position s + delta, all axes)
        pos = torch.arange(length, capacity, device=dev) + int(rope_delta)
        dummy = torch.empty(0, dtype=dtype, device=dev)
        cos, sin = self.rotary(dummy, pos[None, None].expand(3, 1, -1))
        half = cos.shape[-1] // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2] exactly (a sign flip is exact)
        self.cos = cos[:, None]  # (1, 1, positions, head_dim): broadcast over rows and heads
        self.sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]
        self.half = half
        # causal mask of multi-token steps: row i (sequence index length + i) sees columns <= its index
        rows = torch.arange(length, capacity, device=dev)[:, None]
        self.causal = torch.arange(capacity, device=dev)[None, :] <= rows  # (capacity - length, capacity)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, start: int, all_logits: bool = False) -> torch.Tensor:
        """Feed ``ids`` ``(rows, n)`` at sequence indices ``start .. start + n - 1``; returns the logits
        ``(rows, n, V)`` (``all_logits``) or of the last token ``(rows, 1, V)``.

        Positions ``>= start + n`` of the buffers are neither read nor cleared: rolling back rejected
        speculative tokens is just feeding the next tokens at a smaller ``start``."""
        n = ids.shape[1]
        end = start + n
        if start < self.length or end > self.capacity:
            raise ValueError(
                f"decode step at [{start}, {end}) outside the static cache [{self.length}, {self.capacity})"
            )
        off = start - self.length
        cos = self.cos[:, :, off : off + n]
        sin = self.sin[:, :, off : off + n]
        mask = None if n == 1 else self.causal[off : off + n, :end]
        h = self.embed(ids)
        for i, w in enumerate(self.layers):
            h = h + self._attention(w, _rms(w.in_norm, h), cos, sin, i, start, end, mask)
            h = h + self._mlp(w, _rms(w.post_norm, h))
        h = _rms(self.norm, h)
        return self.lm_head(h if all_logits else h[:, -1:])

    def _mlp(self, w: _LayerWeights, x: torch.Tensor) -> torch.Tensor:
        m = w.mlp
        if not w.fused:
            return m.down_proj(self.act(m.gate_proj(x)) * m.up_proj(x))
        gate, up = F.linear(x, w.gate_up).split(w.inter, dim=-1)
        return m.down_proj(self.act(gate) * up)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(self.half, dims=-1) * sin

    def _attention(
        self,
        w: _LayerWeights,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        start: int,
        end: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        attn = w.attn
        rows, n, _ = x.shape
        d = w.head_dim
        if w.fused:
            qkv = F.linear(x, w.qkv)
            qk = qkv[..., : w.q_width + w.k_width].view(rows, n, w.n_q + w.n_kv, d)
            qk = w.qk_norm * F.rms_norm(qk.float(), (d,), eps=attn.q_norm.variance_epsilon).to(x.dtype)
            qk = self._rope(qk.transpose(1, 2), cos, sin)
            q, k = qk[:, : w.n_q], qk[:, w.n_q :]
            v = qkv[..., w.q_width + w.k_width :].view(rows, n, w.n_kv, d).transpose(1, 2)
        else:
            q = _rms(attn.q_norm, attn.q_proj(x).view(rows, n, -1, d)).transpose(1, 2)
            k = _rms(attn.k_norm, attn.k_proj(x).view(rows, n, -1, d)).transpose(1, 2)
            v = attn.v_proj(x).view(rows, n, -1, d).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        kb, vb = self.k_bufs[layer], self.v_bufs[layer]
        kb[:, :, start:end].copy_(k)
        vb[:, :, start:end].copy_(v)
        o = F.scaled_dot_product_attention(
            q, kb[:, :, :end], vb[:, :, :end], attn_mask=mask, scale=attn.scaling, enable_gqa=True
        )
        return attn.o_proj(o.transpose(1, 2).reshape(rows, n, -1))

    def keys(self, n: int) -> list[torch.Tensor]:
        """Views of the first ``n`` cache positions of every layer's keys ``(rows, kvh, n, d)``."""
        return [kb[:, :, :n] for kb in self.k_bufs]

    def values(self, n: int) -> list[torch.Tensor]:
        return [vb[:, :, :n] for vb in self.v_bufs]


__all__ = ["DecodeMode", "StaticKVDecoder"]
