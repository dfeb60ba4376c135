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

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb


class StaticKVDecoder:
    """Decode steps of a ``Qwen3VLForConditionalGeneration`` over static per-layer K/V buffers.

    Use: :meth:`start` once per tick after the prefill (copies the prompt's cache), then
    :meth:`step` for each group of tokens to feed; :meth:`keys` / :meth:`values` give views of the
    first ``n`` cache positions (what the action expert attends to). Rows are independent sequences
    of equal length (single reasoning: 1 row; multi: K rows of the same prompt).
    """

    def __init__(self, vlm: nn.Module):
        lm = vlm.model.language_model
        self.embed = lm.embed_tokens
        self.layers = list(lm.layers)
        self.norm = lm.norm
        self.rotary = lm.rotary_emb
        self.lm_head = vlm.lm_head
        self.k_bufs: list[torch.Tensor] = []
        self.v_bufs: list[torch.Tensor] = []
        self.capacity = 0
        self.length = 0  # prompt length (first decode position)

    def start(self, cache, length: int, rope_delta: int, capacity: int) -> None:  # noqa: ANN001
        """Allocate buffers for ``capacity`` positions and copy the prefill ``cache`` (``length`` tokens).

        ``cache``: transformers' ``DynamicCache`` after the prefill; ``rope_delta``: M-RoPE position
        minus sequence index for text after the images (``get_rope_index``'s delta).
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
        self.cos, self.sin = cos, sin  # (1, capacity - length, head_dim)
        # causal mask of multi-token steps: row i (sequence index length + i) sees columns <= its index
        rows = torch.arange(length, capacity, device=dev)[:, None]
        self.causal = torch.arange(capacity, device=dev)[None, :] <= rows  # (capacity - length, capacity)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, start: int, all_logits: bool = False) -> torch.Tensor:
        """Feed ``ids`` ``(rows, n)`` at sequence indices ``start .. start + n - 1``; returns the logits
        ``(rows, n, V)`` (``all_logits``) or of the last token ``(rows, 1, V)``.

        Positions ``>= start + n`` of the buffers are neither read nor cleared: rolling back rejected
        speculative tokens is just feeding the next tokens at a smaller ``start``."""
        rows, n = ids.shape
        end = start + n
        if start < self.length or end > self.capacity:
            raise ValueError(
                f"decode step at [{start}, {end}) outside the static cache [{self.length}, {self.capacity})"
            )
        off = start - self.length
        cos = self.cos[:, off : off + n]
        sin = self.sin[:, off : off + n]
        mask = None if n == 1 else self.causal[off : off + n, :end]
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(layer.self_attn, layer.input_layernorm(h), cos, sin, i, start, end, mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.norm(h)
        return self.lm_head(h if all_logits else h[:, -1:])

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        start: int,
        end: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        rows, n, _ = x.shape
        shape = (rows, n, -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
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


__all__ = ["StaticKVDecoder"]
