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

``graph`` mode (:meth:`StaticKVDecoder.graph_step`): on a real-size model on an H100 a one-token step
took ~31 ms, of which the weights' arithmetic and reads are a few ms: the rest is launching some
500 kernels from Python. A CUDA graph replays them in one call, but needs fixed shapes and
addresses, so the graph step is written over the *whole* buffer: the position is a device tensor,
the keys / values are written with ``index_copy_``, the cos / sin rows are gathered with
``index_select`` and attention reads every position under a ``<= position`` mask. The buffers are
then kept across ticks (zeroed once, so masked positions never hold NaN) and a graph is captured
once per (rows, capacity, tokens per step): one for plain decoding, one for speculative
verification (padded to gamma + 1 tokens). Off CUDA the same fixed-shape step runs eagerly (what CI
tests against the sliced step). The mask changes the attention kernel, so its logits agree with
the sliced step to round-off, not bit for bit (on the H100 the CoCs were identical).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

#: ``static``: :class:`StaticKVDecoder`; ``graph``: its one-token steps replayed as a CUDA graph
#: (:meth:`StaticKVDecoder.graph_step`; eager fixed-shape steps off CUDA); ``dynamic``: transformers'
#: forward + ``DynamicCache`` (reference)
DecodeMode = Literal["static", "graph", "dynamic"]

#: graph mode rounds the cache capacity up to a multiple of this, so ticks whose prompt + CoC
#: lengths differ a little reuse one captured graph
GRAPH_BUCKET = 64

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
        self.persistent = False  # graph mode: buffers kept across ticks
        #: graph mode: per tokens-per-step n, the captured graph, its input ids and its logits
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph | None, torch.Tensor, torch.Tensor | None]] = {}
        self._graph_key: tuple | None = None
        self.graph_captures = 0

    @classmethod
    def for_model(cls, vlm: nn.Module, cached: StaticKVDecoder | None) -> StaticKVDecoder:
        """``cached`` if it still matches ``vlm``'s current weights, else a new decoder."""
        if cached is not None and cached.vlm is vlm and _signature(cached.layers) == cached._sig:
            return cached
        return cls(vlm)

    def start(
        self,
        cache,  # noqa: ANN001
        length: int,
        rope_delta: int,
        capacity: int,
        graph: bool = False,
    ) -> None:
        """Allocate buffers for ``capacity`` positions and copy the prefill ``cache`` (``length`` tokens).

        ``cache``: transformers' ``DynamicCache`` after the prefill; ``rope_delta``: M-RoPE position
        minus sequence index for text after the images (``get_rope_index``'s delta). Without
        ``graph`` the buffers are new each tick (the returned prefix views stay valid after the next
        tick starts); with ``graph`` the capacity is rounded up to :data:`GRAPH_BUCKET` and the
        buffers (zeroed when allocated) are reused by the next tick of the same shape, so the views
        are valid until then.
        """
        if capacity <= length:
            raise ValueError(f"static KV capacity {capacity} must exceed the prompt length {length}")
        if graph:
            capacity = -(-capacity // GRAPH_BUCKET) * GRAPH_BUCKET
        layers = list(cache.layers)
        for layer in layers:
            if layer.keys.shape[2] != length:
                raise ValueError(f"prefill cache holds {layer.keys.shape[2]} positions, expected {length}")
        k0, v0 = layers[0].keys, layers[0].values
        key = (k0.shape[0], k0.shape[1], k0.shape[3], v0.shape[3], capacity, k0.dtype, str(k0.device), len(layers))
        reuse = graph and self._graph_key == key
        if not reuse:
            new = torch.zeros if graph else torch.empty
            k_bufs = [new((*lay.keys.shape[:2], capacity, lay.keys.shape[3]), dtype=lay.keys.dtype,
                          device=lay.keys.device) for lay in layers]  # fmt: skip
            v_bufs = [new((*lay.values.shape[:2], capacity, lay.values.shape[3]), dtype=lay.values.dtype,
                          device=lay.values.device) for lay in layers]  # fmt: skip
            if graph:  # the graph mode's own buffers (a static tick in between leaves them alone)
                self._g_k, self._g_v = k_bufs, v_bufs
                self._graphs = {}
                self._graph_key = key
        if graph:
            k_bufs, v_bufs = self._g_k, self._g_v
        self.k_bufs, self.v_bufs = k_bufs, v_bufs
        self.persistent = graph
        for layer, kb, vb in zip(layers, self.k_bufs, self.v_bufs, strict=True):
            kb[:, :, :length].copy_(layer.keys)
            vb[:, :, :length].copy_(layer.values)
        self.capacity = capacity
        self.length = length
        dev = self.k_bufs[0].device
        dtype = self.lm_head.weight.dtype
        # cos / sin of every decode position (sequence index s -> M-RoPE position s + delta, all axes)
        first = 0 if graph else length  # the graph step gathers rows by absolute sequence index
        pos = torch.arange(first, capacity, device=dev) + int(rope_delta)
        dummy = torch.empty(0, dtype=dtype, device=dev)
        cos, sin = self.rotary(dummy, pos[None, None].expand(3, 1, -1))
        half = cos.shape[-1] // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2] exactly (a sign flip is exact)
        cos = cos[:, None]  # (1, 1, positions, head_dim): broadcast over rows and heads
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]
        if graph:
            if reuse:  # the captured graph reads these addresses
                self.g_cos.copy_(cos)
                self.g_sin.copy_(sin)
            else:
                self.g_cos, self.g_sin = cos, sin
                self.g_rows = k0.shape[0]
                self.g_pos = torch.zeros((1,), dtype=torch.long, device=dev)
                self.g_cols = torch.arange(capacity, device=dev)
            self.cos = cos[:, :, length:]
            self.sin = sin[:, :, length:]
        else:
            self.cos, self.sin = cos, sin
        self.half = half
        # causal mask of multi-token steps: row i (sequence index length + i) sees columns <= its index
        rows = torch.arange(length, capacity, device=dev)[:, None]
        self.causal = torch.arange(capacity, device=dev)[None, :] <= rows  # (capacity - length, capacity)

    @torch.no_grad()
    def graph_step(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Feed ``ids`` ``(rows, n)`` at sequence indices ``start .. start + n - 1``; returns the
        logits of every fed token ``(rows, n, V)`` in a buffer the next call overwrites (copy it to
        keep it).

        After :meth:`start` with ``graph=True``. On CUDA the fixed-shape step is captured once per
        ``n`` and buffer shape and replayed; elsewhere it runs eagerly. Like :meth:`step`, positions
        ``>= start + n`` are neither read nor cleared, so a speculative verification may feed
        padding after its real tokens (their keys are overwritten before any query can see them)."""
        if not self.persistent:
            raise ValueError("graph_step needs start(..., graph=True)")
        rows, n = ids.shape
        if rows != self.g_rows:
            raise ValueError(f"graph_step: ids for {rows} rows, the cache holds {self.g_rows}")
        if start < self.length or start + n > self.capacity:
            raise ValueError(
                f"decode step at [{start}, {start + n}) outside the static cache [{self.length}, {self.capacity})"
            )
        graph, g_ids, logits = self._graphs.get(n, (None, None, None))
        if g_ids is None:
            g_ids = torch.zeros((rows, n), dtype=torch.long, device=ids.device)
        g_ids.copy_(ids)
        self.g_pos.fill_(start)
        if g_ids.device.type != "cuda":
            self._graphs[n] = (None, g_ids, None)
            return self._fixed_step(g_ids)
        if graph is None:
            graph, logits = self._capture(g_ids)
            self._graphs[n] = (graph, g_ids, logits)
        graph.replay()
        return logits

    def _capture(self, g_ids: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture :meth:`_fixed_step` (warm-up on a side stream first, as capture requires). The
        warm-up and capture write the tokens at ``g_pos``, i.e. the very step about to be replayed."""
        dev = g_ids.device
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._fixed_step(g_ids)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._fixed_step(g_ids)
        self.graph_captures += 1
        return graph, logits

    def _fixed_step(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``(rows, n)`` at sequence indices ``g_pos + 0 .. n - 1`` over the whole buffers
        (fixed shapes: every position is attended to under a causal ``<=`` mask)."""
        n = ids.shape[1]
        pos = self.g_pos + self.g_cols[:n]  # (n,) sequence indices
        cos = self.g_cos.index_select(2, pos)
        sin = self.g_sin.index_select(2, pos)
        mask = (self.g_cols[None, :] <= pos[:, None])[None, None]  # (1, 1, n, capacity)
        h = self.embed(ids)
        for i, w in enumerate(self.layers):
            h = h + self._attention(w, _rms(w.in_norm, h), cos, sin, i, pos, self.capacity, mask)
            h = h + self._mlp(w, _rms(w.post_norm, h))
        return self.lm_head(_rms(self.norm, h))

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
        start: int | torch.Tensor,
        end: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Self-attention of ``x`` at sequence indices ``start .. end - 1`` (an int), or at the device
        indices ``start`` (a tensor: the graph step, attending to all ``end`` positions under
        ``mask``)."""
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
        if isinstance(start, torch.Tensor):
            kb.index_copy_(2, start, k)
            vb.index_copy_(2, start, v)
        else:
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


__all__ = ["GRAPH_BUCKET", "DecodeMode", "StaticKVDecoder"]
