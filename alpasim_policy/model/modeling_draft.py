"""The routine reasoner: a small text-only draft model for speculative decoding of the chain of causation.

Why a separate, text-only model: most CoC tokens are routine continuations ("keep lane", "the lead
vehicle is ...", the stop token) predictable from the ego history, the command and the CoC so far;
only a few need fresh visual evidence. A draft that reads only those tokens costs a tiny fraction of
a target step, and speculative decoding (``alpasim_policy.model.speculative``) keeps the target's
output exact — a bad draft only lowers the acceptance rate.

What it reads: the target's prompt with the image placeholders removed (``<|image_pad|>``,
``<|video_pad|>`` and the ``<|vision_start|>`` / ``<|vision_end|>`` brackets — the draft has no
vision tower), i.e. the chat text, the 48 ``<|traj_history|>`` trajectory-vocabulary ids and the
navigation command, then the CoC so far. Same tokenizer ids as the target (it shares the vocabulary;
its embeddings and head can be initialised from the target's, :meth:`DraftModel.from_target`).

Positions: **FlatRoPE** — ordinary 1-D rotary positions ``0, 1, 2, ...`` over the draft's own
(image-free) sequence, instead of the target's 3-D interleaved M-RoPE whose temporal / height /
width axes index image patches. So the history and the CoC sit next to each other in the draft's
position space (the history is ~60 positions behind the CoC, not ~800 image tokens behind it).

Why hand-written layers rather than a ``transformers`` causal LM: the draft's per-token cost must be
far below the target's, and a draft step is called once per proposed token. The layers here run
on a *static* KV cache (preallocated, rolled back by resetting a length — no concatenation, crop or
cache object per step) and the forward has no generate machinery. The blocks themselves are the
standard pre-norm GQA transformer (RMSNorm, SwiGLU) with ``torch``'s SDPA.

Weights: ``save_pretrained`` / ``from_pretrained`` write / read ``config.json`` +
``model.safetensors`` (safetensors, like the target).

:class:`DraftDrafter` implements the speculative decoder's ``Drafter`` protocol (``reset`` /
``propose`` / ``advance``); :func:`load_drafter` builds one from a folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alpasim_policy.errors import ConfigError, ModelWeightsError

DRAFT_MODEL_TYPE = "alpamayo_draft"


@dataclass
class DraftConfig:
    """Sizes of the draft and the target-vocabulary facts it needs at decode time."""

    vocab_size: int
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 256
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    max_positions: int = 512  # static KV capacity: image-free prompt (~200) + CoC (<= 64) + drafts
    # token ids removed from the target prompt (image placeholders and their brackets)
    drop_ids: tuple[int, ...] = ()
    # never proposed (the target never emits them while reasoning): the trajectory vocabulary and
    # embedding rows past the tokenizer, as the target's TokenMask
    mask_start: int = 0
    mask_size: int = 0
    vocab_len: int = 0  # tokenizer length (rows past it are masked); 0 = vocab_size
    stop_id: int = -1  # <|traj_future_start|>: drafting stops after proposing it
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.drop_ids = tuple(int(i) for i in self.drop_ids)
        need = {
            "heads": self.heads % self.kv_heads == 0,
            "head_dim": self.head_dim % 2 == 0,
            "layers": self.layers >= 1,
            "max_positions": self.max_positions >= 8,
            "dtype": self.dtype in ("float32", "bfloat16", "float16"),
        }
        bad = [k for k, ok in need.items() if not ok]
        if bad:
            raise ConfigError(f"draft config: invalid {', '.join(bad)} ({self})")

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["drop_ids"] = list(self.drop_ids)
        d["model_type"] = DRAFT_MODEL_TYPE
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DraftConfig:
        if d.get("model_type") != DRAFT_MODEL_TYPE:
            raise ConfigError(f"draft config: model_type {d.get('model_type')!r} is not {DRAFT_MODEL_TYPE!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model_type"})
        if unknown:
            raise ConfigError(f"draft config: unknown keys {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})


class FlatRoPE(nn.Module):
    """1-D rotary position embedding: position ``p`` rotates pair ``i`` by ``p * theta^(-2i/d)``.

    Unlike the target's M-RoPE (three position axes — time, height, width — interleaved over the
    frequency pairs), every token gets one scalar position: its index in the draft's sequence.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    @staticmethod
    def positions(start: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The positions of ``length`` tokens appended at ``start``: ``(length,)``, one axis."""
        return torch.arange(start, start + length, device=device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` ``(L,)`` -> cos, sin ``(L, head_dim)`` (halves repeated, rotate-half layout)."""
        if positions.dim() != 1:
            raise ValueError(f"FlatRoPE takes 1-D positions, got shape {tuple(positions.shape)}")
        ang = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class DraftBlock(nn.Module):
    """Pre-norm GQA attention (q / k RMS-normed per head, as Qwen3) + SwiGLU MLP."""

    def __init__(self, c: DraftConfig):
        super().__init__()
        self.heads, self.kvh, self.d = c.heads, c.kv_heads, c.head_dim
        self.attn_norm = nn.RMSNorm(c.hidden, eps=c.rms_norm_eps)
        self.q_proj = nn.Linear(c.hidden, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)
        self.q_norm = nn.RMSNorm(c.head_dim, eps=c.rms_norm_eps)
        self.k_norm = nn.RMSNorm(c.head_dim, eps=c.rms_norm_eps)
        self.mlp_norm = nn.RMSNorm(c.hidden, eps=c.rms_norm_eps)
        self.gate = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down = nn.Linear(c.intermediate, c.hidden, bias=False)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> torch.Tensor:
        """``h`` ``(B, L, D)``. ``kv``: static buffers ``(B, kvh, capacity, d)`` — the new keys / values
        are written at ``[start, start + L)`` and attention runs over ``[0, start + L)``; without
        ``kv`` (training) plain causal attention over the L tokens (``mask`` for right padding)."""
        b, n, _ = h.shape
        x = self.attn_norm(h)
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, self.d)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, self.kvh, self.d)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kvh, self.d).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if kv is not None:
            kb, vb = kv
            kb[:, :, start : start + n].copy_(k)
            vb[:, :, start : start + n].copy_(v)
            k, v = kb[:, :, : start + n], vb[:, :, : start + n]
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and n > 1, enable_gqa=self.heads != self.kvh
        )
        h = h + self.o_proj(o.transpose(1, 2).reshape(b, n, self.heads * self.d))
        x = self.mlp_norm(h)
        return h + self.down(F.silu(self.gate(x)) * self.up(x))


class DraftCache:
    """Static KV buffers for one sequence; ``length`` tokens are valid. Rolling back = lowering ``length``."""

    def __init__(self, c: DraftConfig, device: torch.device | str, dtype: torch.dtype, batch: int = 1):
        shape = (batch, c.kv_heads, c.max_positions, c.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.layers)]
        self.capacity = c.max_positions
        self.length = 0


class DraftModel(nn.Module):
    """Embeddings -> ``layers`` x :class:`DraftBlock` -> RMSNorm -> head over the target's vocabulary."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.hidden)
        self.blocks = nn.ModuleList([DraftBlock(c) for _ in range(c.layers)])
        self.norm = nn.RMSNorm(c.hidden, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)
        self.rope = FlatRoPE(c.head_dim, c.rope_theta)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
        self.to(c.torch_dtype)
        self.rope.inv_freq = self.rope.inv_freq.float()
        self._mask_bias: torch.Tensor | None = None
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self.eval()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_target(cls, target: Any, **sizes: Any) -> DraftModel:
        """A draft for ``target`` (an :class:`~alpasim_policy.model.modeling_alpamayo.AlpamayoR1`):
        its vocabulary, image-token ids and reasoning mask; ``sizes`` override :class:`DraftConfig`
        fields. When the widths agree the embeddings and head start as copies of the target's
        (the draft then starts from the target's token geometry instead of noise)."""
        tk = target.tokenizer
        cfg = DraftConfig(
            vocab_size=target.vocab_size,
            hidden=sizes.pop("hidden", target.config.text_hidden),
            drop_ids=tuple(tk.ids[k] for k in ("image_pad", "video_pad", "vision_start", "vision_end")),
            mask_start=tk.traj_token_start,
            mask_size=tk.traj_vocab_size,
            vocab_len=len(tk),
            stop_id=tk.ids["traj_future_start"],
            **sizes,
        )
        model = cls(cfg)
        emb = target.vlm.model.language_model.embed_tokens.weight
        head = target.vlm.lm_head.weight
        if emb.shape == model.embed.weight.shape:
            with torch.no_grad():
                model.embed.weight.copy_(emb.float())
                model.lm_head.weight.copy_(head.float())
        return model

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def context_ids(self, prompt_ids: torch.Tensor | list[int]) -> torch.Tensor:
        """The draft's view of a target prompt: the same ids with the image placeholders dropped."""
        ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
        if self.config.drop_ids:
            keep = ~torch.isin(ids, torch.tensor(self.config.drop_ids, dtype=torch.long))
            ids = ids[keep]
        return ids

    # ----------------------------------------------------------------- forwards
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Training / reference forward: ``ids`` ``(B, L)`` (right-padded: causal attention never
        lets a pad reach an earlier position) -> logits ``(B, L, V)`` (float32). Positions 0..L-1."""
        b, n = ids.shape
        cos, sin = self.rope(FlatRoPE.positions(0, n, ids.device), self.dtype)
        h = self.embed(ids)
        for blk in self.blocks:
            h = blk(h, cos, sin, None, None, 0)
        return self.lm_head(self.norm(h)).float()

    def new_cache(self, batch: int = 1) -> DraftCache:
        return DraftCache(self.config, self.device, self.dtype, batch)

    @torch.no_grad()
    def extend(self, ids: torch.Tensor, cache: DraftCache) -> torch.Tensor:
        """Incremental forward: append ``ids`` ``(B, L)`` at ``cache.length``; returns the logits of
        the last new token ``(B, V)`` (float32). No allocation beyond the activations."""
        b, n = ids.shape
        start = cache.length
        if start + n > cache.capacity:
            raise ConfigError(f"draft: sequence of {start + n} tokens exceeds max_positions={cache.capacity}")
        if self._rope_table is None or self._rope_table[0].device != ids.device:
            # every position's rotation once (a draft step then only slices it)
            self._rope_table = self.rope(FlatRoPE.positions(0, cache.capacity, ids.device), self.dtype)
        cos, sin = self._rope_table[0][start : start + n], self._rope_table[1][start : start + n]
        mask = None
        if n > 1 and start > 0:  # chunk after a cached part: row i sees columns <= start + i
            cols = torch.arange(start + n, device=ids.device)
            mask = cols[None, :] <= (start + torch.arange(n, device=ids.device))[:, None]
        h = self.embed(ids)
        for blk, kb, vb in zip(self.blocks, cache.k, cache.v, strict=True):
            h = blk(h, cos, sin, mask, (kb, vb), start)
        cache.length = start + n
        return self.lm_head(self.norm(h[:, -1])).float()

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's reasoning mask: trajectory vocabulary and rows past the tokenizer to -inf
        (one add of a precomputed 0 / -inf row: this runs once per drafted token)."""
        bias = self._mask_bias
        if bias is None or bias.device != logits.device:
            c = self.config
            bias = torch.zeros(c.vocab_size, dtype=torch.float32, device=logits.device)
            if c.mask_size:
                bias[c.mask_start : c.mask_start + c.mask_size] = float("-inf")
            if c.vocab_len and c.vocab_size > c.vocab_len:
                bias[c.vocab_len :] = float("-inf")
            self._mask_bias = bias
        return logits + bias

    # ----------------------------------------------------------------- weights
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` (written atomically)."""
        from safetensors.torch import save as st_save

        from alpasim_policy.io import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / "model.safetensors", st_save(state, metadata={"format": "pt"}))
        atomic_write_json(directory / "config.json", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> DraftModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ModelWeightsError(f"{directory}: draft folder has no {p.name}")
        try:
            cfg = DraftConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError) as e:
            raise ModelWeightsError(f"{cfg_path}: not a draft config ({e})") from e
        model = cls(cfg)
        state = load_file(str(w_path))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
        if missing or unexpected or bad:
            raise ModelWeightsError(
                f"{w_path}: weights do not match the draft config (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]})"
            )
        model.load_state_dict(state)
        return model.to(device).eval()

    def as_drafter(self) -> DraftDrafter:
        return DraftDrafter(self)


class DraftDrafter:
    """The speculative decoder's ``Drafter``: ``reset(prompt)``, ``propose(cot, gamma)``, ``advance(n)``.

    Keeps the draft's static KV cache in step with the CoC: the cache holds the image-free prompt
    then the CoC tokens it has seen; each :meth:`propose` first rolls the cache back to the longest
    common prefix with the CoC it is given (drafts the target rejected fall off), feeds the new CoC
    tokens in one chunk, then drafts up to ``gamma`` tokens one step each. It stops after proposing
    ``<|traj_future_start|>`` (nothing follows the stop).
    """

    def __init__(self, model: DraftModel):
        self.model = model
        self.cache = model.new_cache()
        self.ctx_len = 0
        self.seen: list[int] = []  # CoC tokens (and drafts) whose keys are in the cache, in order
        self.proposed = 0
        self.accepted = 0

    def reset(self, prompt_ids: torch.Tensor) -> None:
        ctx = self.model.context_ids(torch.as_tensor(prompt_ids).cpu())
        self.cache.length = 0
        self.model.extend(ctx[None].to(self.model.device), self.cache)
        self.ctx_len = self.cache.length
        self.seen = []

    @torch.no_grad()
    def propose(
        self,
        cot_ids: torch.Tensor,
        gamma: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.model
        cot = [int(t) for t in torch.as_tensor(cot_ids).reshape(-1).tolist()]
        common = 0
        for a, b in zip(self.seen, cot, strict=False):
            if a != b:
                break
            common += 1
        # the last CoC token must be fed (its logits predict the first draft)
        common = min(common, len(cot) - 1) if cot else 0
        self.cache.length = self.ctx_len + common
        self.seen = self.seen[:common]
        room = self.cache.capacity - self.ctx_len - len(cot)
        gamma = max(0, min(gamma, room))
        new = cot[common:]
        if not new or gamma == 0:
            return torch.zeros(0, dtype=torch.long), (
                None if temperature <= 0 else torch.zeros(0, m.config.vocab_size)
            )
        logits = m.extend(torch.tensor([new], dtype=torch.long, device=m.device), self.cache)
        self.seen += new
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        for i in range(gamma):
            scores = m.mask_logits(logits[0])
            if temperature > 0:
                probs = _warp(scores, temperature, top_p)
                tok = int(torch.multinomial(probs, 1, generator=generator))
                rows.append(probs.cpu())
            else:
                tok = int(scores.argmax())
            tokens.append(tok)
            if tok == m.config.stop_id or i == gamma - 1:
                break
            logits = m.extend(torch.tensor([[tok]], device=m.device), self.cache)
            self.seen.append(tok)
        self.proposed += len(tokens)
        out = torch.tensor(tokens, dtype=torch.long)
        return out, (torch.stack(rows) if temperature > 0 else None)

    def advance(self, accepted: int) -> None:
        """Counts acceptance; the rollback itself happens lazily in the next :meth:`propose`."""
        self.accepted += int(accepted)


def _warp(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature + top-p (nucleus) on one row of logits -> probabilities (transformers' rule:
    drop the smallest-probability tokens whose cumulative mass is <= 1 - top_p, keep at least one)."""
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        sp, idx = torch.sort(probs, descending=False)
        cum = sp.cumsum(-1)
        drop = cum <= (1.0 - top_p)
        drop[-1] = False
        probs = probs.clone()
        probs[idx[drop]] = 0.0
        probs = probs / probs.sum()
    return probs


def load_drafter(path: str | Path, device: str | torch.device = "cpu") -> DraftDrafter:
    """A ready ``Drafter`` from a draft folder (``save_pretrained`` layout)."""
    return DraftModel.from_pretrained(path, device).as_drafter()


__all__ = [
    "DraftCache",
    "DraftConfig",
    "DraftDrafter",
    "DraftModel",
    "FlatRoPE",
    "load_drafter",
]
