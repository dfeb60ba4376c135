"""Flow-matching samplers for the action expert: dynamic-cache (reference) and static-buffer / CUDA graph.

Flow matching (Lipman et al. 2022) as used by Alpamayo-R1: the expert predicts the velocity
``v(x_t, t)`` that carries noise ``x_0 ~ N(0, I)`` (t = 0) to an action sequence (t = 1); sampling
integrates ``dx/dt = v`` with ``flow_steps`` (10) explicit Euler steps on the uniform grid.

Every sampler takes the same :class:`Prefix` (the reasoning KV the expert attends to) and the same
noise, so they can be compared number for number:

* :class:`DynamicCacheSampler` — NVlabs' behaviour: an HF ``DynamicCache`` with one prefix copy per
  sample, grown by 64 tokens and cropped back at every step.
* :class:`StaticFlowSampler` — all tensors preallocated once (prefix K/V of a fixed capacity plus
  in-place slots for the action tokens, attention mask, RoPE tables, noise and output); the loop
  never allocates a cache, concatenates or crops. On CUDA the *whole* Euler loop (projection,
  36 expert layers, head, update) x 10 steps is captured once as a single ``torch.cuda.CUDAGraph``
  and replayed each tick; elsewhere the same code runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alpasim_policy.model.expert import (
    FusedExpertWeights,
    action_rope,
    expert_forward_dynamic,
    expert_forward_fused,
    expert_forward_lean,
    expert_forward_static,
    static_mask,
)

# Capacity granularity of the static prefix cache (tokens): headroom so that prefixes of slightly
# different CoC lengths reuse one captured graph, without much padded attention work.
PREFIX_BUCKET = 64


@dataclass
class Prefix:
    """The reasoning prefix the expert attends to.

    ``keys`` / ``values``: per VLM layer ``(Bp, kvh, L, d)``; ``Bp`` is 1 when all samples share one
    chain of causation (single reasoning) or K (one per sample). ``valid_len`` ``(Bp,)``: how many
    cache positions belong to the prefix (up to and including ``<|traj_future_start|>``);
    ``rope_offset`` ``(Bp,)``: the M-RoPE position of the first action token.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid_len: torch.Tensor
    rope_offset: torch.Tensor

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


def flow_time_grid(num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.linspace(0.0, 1.0, num_steps + 1, device=device)


class _Heads:
    """Plain references to the modules one velocity evaluation needs (the model owns them)."""

    def __init__(self, expert: nn.Module, action_in_proj: nn.Module, action_out_proj: nn.Module):
        self.expert = expert
        self.action_in_proj = action_in_proj
        self.action_out_proj = action_out_proj


class DynamicCacheSampler:
    """Reference sampler through ``transformers``' cache machinery (per-sample prefix copies)."""

    def __init__(self, expert: nn.Module, action_in_proj: nn.Module, action_out_proj: nn.Module, steps: int):
        self.m = _Heads(expert, action_in_proj, action_out_proj)
        self.steps = steps

    @torch.no_grad()
    def sample(
        self,
        prefix: Prefix,
        noise: torch.Tensor,
        trace: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Integrate from ``noise``; ``trace`` (optional) receives ``(x_i, v_i)`` of every step."""
        from transformers import DynamicCache

        expert = self.m.expert
        b, n, _ = noise.shape
        dtype = next(expert.parameters()).dtype
        device = noise.device
        rep = b // prefix.batch
        cache = DynamicCache(config=expert.config)
        for i, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
            cache.update(
                k.repeat_interleave(rep, dim=0).to(dtype), v.repeat_interleave(rep, dim=0).to(dtype), i
            )
        p = prefix.length
        valid = prefix.valid_len.repeat_interleave(rep).to(device)
        mask = torch.zeros((b, 1, n, p + n), dtype=dtype, device=device)
        pad = torch.arange(p, device=device)[None, :] >= valid[:, None]
        mask[:, 0, :, :p] = torch.where(pad, torch.finfo(dtype).min, 0.0)[:, None, :].to(dtype)
        offsets = prefix.rope_offset.repeat_interleave(rep).to(device)
        pos = offsets[:, None] + torch.arange(n, device=device)[None, :]
        position_ids = pos[None].expand(3, -1, -1)
        grid = flow_time_grid(self.steps, device)
        x = noise.float()
        for i in range(self.steps):
            t = grid[i].expand(b)
            emb = self.m.action_in_proj(x, t)
            h = expert_forward_dynamic(expert, emb, position_ids, cache, mask, p)
            vel = self.m.action_out_proj(h).float()
            if trace is not None:
                trace.append((x.clone(), vel.clone()))
            x = x + (grid[i + 1] - grid[i]) * vel
        return x


class StaticFlowSampler:
    """Static-buffer Euler sampler for a fixed (samples, prefix rows, prefix capacity); CUDA-graph capable.

    Usage per tick: :meth:`load` (copies the prefix K/V into the static cache once, builds the
    attention mask and the RoPE tables, copies the noise) then :meth:`run`. With ``use_graph`` on
    a CUDA device the first run captures the loop (after two warm-up runs on a side stream, as
    CUDA graphs require) and every later run is one ``graph.replay()``.
    """

    def __init__(
        self,
        expert: nn.Module,
        action_in_proj: nn.Module,
        action_out_proj: nn.Module,
        *,
        steps: int,
        samples: int,
        prefix_batch: int,
        capacity: int,
        n_waypoints: int,
        action_channels: int = 2,
        device: torch.device | str = "cpu",
    ):
        if prefix_batch not in (1, samples):
            raise ValueError(f"prefix_batch must be 1 or samples={samples}, got {prefix_batch}")
        self.m = _Heads(expert, action_in_proj, action_out_proj)
        self.steps = steps
        self.samples = samples
        self.prefix_batch = prefix_batch
        self.capacity = capacity
        self.n = n_waypoints
        self.device = torch.device(device)
        cfg = expert.config
        dtype = next(expert.parameters()).dtype
        self.dtype = dtype
        kvh, d = cfg.num_key_value_heads, cfg.head_dim
        self.groups = cfg.num_attention_heads // kvh
        slots = samples * n_waypoints if prefix_batch == 1 else n_waypoints  # action K/V slots
        shape = (prefix_batch, kvh, capacity + slots, d)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        rows = self.groups * (samples if prefix_batch == 1 else 1) * n_waypoints
        self.mask = torch.zeros((prefix_batch, 1, rows, capacity + slots), dtype=dtype, device=self.device)
        self.cos = torch.zeros((samples, n_waypoints, d), dtype=dtype, device=self.device)
        self.sin = torch.zeros_like(self.cos)
        self.noise = torch.zeros(
            (samples, n_waypoints, action_channels), dtype=torch.float32, device=self.device
        )
        self.out = torch.zeros_like(self.noise)
        grid = flow_time_grid(steps, self.device)
        self.t = [grid[i].expand(samples) for i in range(steps)]  # views of one preallocated grid
        self.dt = [float(grid[i + 1] - grid[i]) for i in range(steps)]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0

    def fits(self, prefix: Prefix, samples: int) -> bool:
        return (
            samples == self.samples and prefix.batch == self.prefix_batch and prefix.length <= self.capacity
        )

    @torch.no_grad()
    def load(self, prefix: Prefix, noise: torch.Tensor) -> None:
        """Write the prefix into the static cache (once per tick) and the noise into its buffer."""
        if not self.fits(prefix, noise.shape[0]):
            raise ValueError("prefix / noise do not fit this static sampler")
        p = prefix.length
        for i in range(len(self.k)):
            self.k[i][:, :, :p].copy_(prefix.keys[i])
            self.v[i][:, :, :p].copy_(prefix.values[i])
        valid = prefix.valid_len.to(self.device)
        self.mask.copy_(static_mask(valid, self.samples, self.n, self.groups, self.capacity, self.dtype))
        rep = self.samples // self.prefix_batch
        offsets = prefix.rope_offset.to(self.device).repeat_interleave(rep)
        cos, sin = action_rope(self.m.expert, offsets, self.n, self.dtype)
        self.cos.copy_(cos)
        self.sin.copy_(sin)
        self.noise.copy_(noise)

    def velocity(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Flow velocity at step ``i`` for actions ``x`` (projection, expert layers, head)."""
        emb = self.m.action_in_proj(x, self.t[i])
        h = expert_forward_static(
            self.m.expert, emb, self.cos, self.sin, self.k, self.v, self.mask, self.capacity
        )
        return self.m.action_out_proj(h).float()

    def _loop(self) -> None:
        """The whole Euler integration; reads only static buffers, writes ``self.out``."""
        x = self.noise
        for i in range(self.steps):
            x = x + self.dt[i] * self.velocity(x, i)
        self.out.copy_(x)

    @torch.no_grad()
    def run(self, use_graph: bool = False) -> torch.Tensor:
        if use_graph and self.device.type == "cuda":
            if self.graph is None:
                self.capture()
            self.graph.replay()
            self.replays += 1
        else:
            self._loop()
        return self.out

    @torch.no_grad()
    def capture(self) -> None:
        """Capture ``_loop`` as one CUDA graph (warm-up on a side stream first, as capture requires)."""
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loop()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loop()
        self.graph = graph


class LeanFlowSampler:
    """The CPU Euler loop with every step-independent quantity computed once per tick.

    Per tick (:meth:`load`): the prefix K/V are written once, right-aligned and *expanded to one
    copy per sample* (so each sample's attention is one unmasked problem over exactly its valid
    prefix and its own action tokens, :func:`~alpasim_policy.model.expert.lean_attention`: the
    shared-prefix layout of :class:`StaticFlowSampler` instead computes ``K - 1`` other samples'
    action columns and the capacity padding and masks them away, ~30 % of the attention work at
    K = 6 on a 1,000-token prefix); the RoPE tables; the mask (only when rows differ in length); and
    per Euler step the flow time's share of the action projection
    (:meth:`~alpasim_policy.model.expert.ActionInProjection.time_term`). Per step only what depends
    on the current actions runs, with the expert's q/k/v and gate/up projections fused into one
    GEMM each (``fused``, default; :func:`~alpasim_policy.model.expert.expert_forward_fused`, the
    same actions as the plain lean forward, tested). ``compiled=True`` wraps the velocity in ``torch.compile``
    (measured by ``bench model``: whether it pays depends on the machine; eager is the default).

    The window start moves with the prefix length, so this loop is not CUDA-graph capturable; on
    CUDA the model uses :class:`StaticFlowSampler`'s graph.
    """

    def __init__(
        self,
        expert: nn.Module,
        action_in_proj: nn.Module,
        action_out_proj: nn.Module,
        *,
        steps: int,
        samples: int,
        capacity: int,
        n_waypoints: int,
        action_channels: int = 2,
        device: torch.device | str = "cpu",
        compiled: bool = False,
        fused: bool = True,
    ):
        self.m = _Heads(expert, action_in_proj, action_out_proj)
        self.steps = steps
        self.samples = samples
        self.capacity = capacity
        #: fused projections (:func:`~alpasim_policy.model.expert.expert_forward_fused`); checked
        #: against the weights at every :meth:`load` so a weight update is never missed
        self.fused: FusedExpertWeights | None = FusedExpertWeights(expert) if fused else None
        if self.fused is not None and not self.fused.usable:
            self.fused = None
        self.n = n_waypoints
        self.device = torch.device(device)
        cfg = expert.config
        dtype = next(expert.parameters()).dtype
        self.dtype = dtype
        kvh, d = cfg.num_key_value_heads, cfg.head_dim
        shape = (samples, kvh, capacity + n_waypoints, d)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.num_hidden_layers)]
        self.start = capacity
        self.mask: torch.Tensor | None = None
        self.cos = torch.zeros((samples, n_waypoints, d), dtype=dtype, device=self.device)
        self.sin = torch.zeros_like(self.cos)
        self.noise = torch.zeros(
            (samples, n_waypoints, action_channels), dtype=torch.float32, device=self.device
        )
        grid = flow_time_grid(steps, self.device)
        self.dt = [float(grid[i + 1] - grid[i]) for i in range(steps)]
        with torch.no_grad():
            # the time terms depend only on the weights and the grid: computed once here
            self.time_terms = [action_in_proj.time_term(grid[i].expand(samples)) for i in range(steps)]
        # compiled: one graph for all steps (the time term is an input, not an index to specialise on)
        self._step = torch.compile(self._velocity_at, dynamic=False) if compiled else self._velocity_at

    def fits(self, prefix: Prefix, samples: int) -> bool:
        return samples == self.samples and int(prefix.valid_len.max()) <= self.capacity

    @torch.no_grad()
    def load(self, prefix: Prefix, noise: torch.Tensor) -> None:
        """Write the valid prefix (one copy per sample, right-aligned), RoPE tables, mask and noise."""
        if not self.fits(prefix, noise.shape[0]):
            raise ValueError("prefix / noise do not fit this lean sampler")
        valid = prefix.valid_len.to(self.device)
        window = int(valid.max())
        start = self.capacity - window
        rep = self.samples // prefix.batch
        for i in range(len(self.k)):
            src_k = prefix.keys[i][:, :, :window]
            src_v = prefix.values[i][:, :, :window]
            if prefix.batch == 1:
                self.k[i][:, :, start : self.capacity].copy_(src_k.expand(self.samples, -1, -1, -1))
                self.v[i][:, :, start : self.capacity].copy_(src_v.expand(self.samples, -1, -1, -1))
            else:
                self.k[i][:, :, start : self.capacity].copy_(src_k.repeat_interleave(rep, dim=0))
                self.v[i][:, :, start : self.capacity].copy_(src_v.repeat_interleave(rep, dim=0))
        self.start = start
        rows_valid = valid.repeat_interleave(rep)
        if bool((rows_valid == window).all()):
            self.mask = None
        else:  # rows shorter than the window: their tail columns are padding
            cols = torch.arange(window + self.n, device=self.device)
            blocked = (cols[None, :] >= rows_valid[:, None]) & (cols[None, :] < window)
            neg = torch.tensor(float("-inf"), dtype=self.dtype, device=self.device)
            zero = torch.tensor(0.0, dtype=self.dtype, device=self.device)
            self.mask = torch.where(blocked, neg, zero)[:, None, None, :]
        offsets = prefix.rope_offset.to(self.device).repeat_interleave(rep)
        cos, sin = action_rope(self.m.expert, offsets, self.n, self.dtype)
        self.cos.copy_(cos)
        self.sin.copy_(sin)
        half = sin.shape[-1] // 2
        self.cos4 = cos[:, None]  # (K, 1, T, d): broadcast over the stacked q and k heads
        self.sin4 = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]
        self.noise.copy_(noise)
        if self.fused is not None:
            self.fused = FusedExpertWeights.for_expert(self.m.expert, self.fused)

    def _velocity_at(self, x: torch.Tensor, time_term: torch.Tensor) -> torch.Tensor:
        emb = self.m.action_in_proj.forward_with_time_term(x, time_term)
        if self.fused is not None:
            h = expert_forward_fused(
                self.m.expert, self.fused, emb, self.cos4, self.sin4, self.k, self.v,
                self.start, self.capacity, self.mask,
            )  # fmt: skip
        else:
            h = expert_forward_lean(
                self.m.expert, emb, self.cos, self.sin, self.k, self.v, self.start, self.capacity, self.mask
            )
        return self.m.action_out_proj(h).float()

    def velocity(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Flow velocity at Euler step ``i`` for actions ``x``."""
        return self._step(x, self.time_terms[i])

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        x = self.noise
        for i in range(self.steps):
            x = x + self.dt[i] * self._step(x, self.time_terms[i])
        return x


def prefix_capacity(length: int) -> int:
    return ((length + PREFIX_BUCKET - 1) // PREFIX_BUCKET) * PREFIX_BUCKET
