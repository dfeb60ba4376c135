"""AlpamayoR1: a reasoning vision-language-action driving model (Alpamayo-R1 architecture).

One tick of driving (:meth:`AlpamayoR1.drive`):

1. **Inputs** (:mod:`~alpasim_policy.model.processing_alpamayo`) — C cameras x F frames (oldest
   first per camera) are resized, normalised and cut into Qwen3-VL patches; 16 steps of ego
   history become 48 delta-tokenizer ids placed in the ``<|traj_history|>`` slots of a chat prompt
   that ends with ``<|cot_start|>``.
2. **Vision** — the Qwen3-VL ViT encodes the images once. With ``vision_cache`` (the closed-loop
   policy's setting) frames already seen at the previous tick keep their features and only the
   new ones are preprocessed and encoded (exact: :mod:`~alpasim_policy.model.vision_cache`).
3. **Reasoning** — the VLM prefills the prompt and decodes a chain of causation (CoC) until it
   emits ``<|traj_future_start|>`` (greedy or top-p / temperature through transformers' logits
   processors, :mod:`~alpasim_policy.model.generation_alpamayo`; a length can be forced for
   benchmarks). As in NVlabs' rollout, the last generated token is never fed back: the expert
   attends to the prompt + CoC up to and including the stop token, and its positions start one
   past the stop (or past the last token when the length limit ended the CoC). ``reasoning="single"``: one CoC, one prefill, one decode; all K trajectory samples
   condition on that one KV prefix, shared without copies. ``reasoning="multi"``: NVlabs'
   behaviour, K CoCs (the prompt is prefilled and decoded as K sequences).
4. **Diffusion** — the action expert integrates flow matching over 10 Euler steps for K noise
   samples against the prefix: ``graph`` = the fastest loop of the device (CUDA: static buffers
   + one CUDA graph; CPU: the lean loop, step-independent work done once per tick), or ``eager``
   (the static-buffer loop without the graph), ``lean``, or HF's dynamic cache (``dynamic``).
5. **Kinematics** — (acceleration, curvature) x 64 -> rig-frame poses at 0.1 s by NVlabs'
   trapezoidal ``action_to_traj`` (exact arcs as an option), v0 estimated from the history as
   NVlabs' ``estimate_t0_states`` (or the measured speed), z carried from the history.

Checkpoint folders (NVlabs' as written by its ``save_pretrained``, or ours) are read by
:mod:`~alpasim_policy.model.weights_io`. Weights use NVlabs' key layout: ``vlm.*`` (a ``Qwen3VLForConditionalGeneration``), ``expert.*``
(a ``Qwen3VLTextModel`` without embeddings), ``action_in_proj.*``, ``action_out_proj.*``,
``action_space.*``.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from alpasim_policy.errors import ConfigError, ModelInputError, ModelWeightsError
from alpasim_policy.model.action_space import UnicycleActionSpace
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.expert import ActionInProjection, build_expert, cache_kwarg
from alpasim_policy.model.flow import (
    DynamicCacheSampler,
    LeanFlowSampler,
    Prefix,
    StaticFlowSampler,
    prefix_capacity,
)
from alpasim_policy.model.generation_alpamayo import cot_logits_processors, next_tokens
from alpasim_policy.model.processing_alpamayo import AlpamayoProcessor, PreparedInputs
from alpasim_policy.model.speculative import Drafter, NGramDrafter, as_drafter, speculative_decode
from alpasim_policy.model.static_decode import DecodeMode, StaticKVDecoder
from alpasim_policy.model.tokenizer import AlpamayoTokenizer, DeltaTrajectoryTokenizer
from alpasim_policy.model.vision_cache import FrameFeatureCache

ReasoningMode = Literal["single", "multi"]
DiffusionMode = Literal["graph", "eager", "lean", "dynamic"]


@dataclass
class DriveOutput:
    """What one model tick returns (all poses in the rig frame at "now")."""

    trajectories: np.ndarray  # (K, 64, 3) x, y, heading at now + (i+1) * 0.1 s
    reasoning: list[str]  # 1 text (single) or K texts (multi)
    timings: dict[str, float]  # seconds per stage: vision, prefill, decode, diffusion, post, total
    actions: np.ndarray  # (K, 64, 2) acceleration m/s^2, curvature 1/m
    v0: float  # speed at now used for integration, m/s
    stats: dict[str, Any] = field(default_factory=dict)  # prefills, decode steps, CoC lengths, KV...
    z: float = 0.0  # height of every pose (the last history z, carried as NVlabs does)


def _verify_step(static: StaticKVDecoder, width: int):  # noqa: ANN202
    """The speculative decoder's target step ``(ids (n,), start) -> logits (n, V)`` on ``static``.

    In graph mode every verification is padded to ``width`` = gamma + 1 tokens, so one captured
    graph serves them all (the padding's keys land past the real tokens, where nothing reads them
    before they are overwritten); the logits of the real tokens are returned."""

    def step(feed: torch.Tensor, start: int) -> torch.Tensor:
        n = feed.shape[0]
        if not static.persistent or n > width or start + width > static.capacity:
            return static.step(feed[None], start, all_logits=True)[0]
        if n < width:
            feed = torch.cat([feed, feed[-1:].expand(width - n)])
        return static.graph_step(feed[None], start)[0, :n]

    return step


class AlpamayoR1(nn.Module):
    """Qwen3-VL reasoning VLM + flow-matching action expert. See the module docstring for the tick."""

    def __init__(self, config: AlpamayoConfig, tokenizer: AlpamayoTokenizer | None = None):
        super().__init__()
        from transformers import Qwen3VLForConditionalGeneration

        self.config = config
        self.tokenizer = tokenizer or AlpamayoTokenizer.local(config.traj_vocab_size)
        vocab = config.vocab_size or len(self.tokenizer)
        if vocab < len(self.tokenizer):
            raise ConfigError(f"model config 'vocab_size': {vocab} < tokenizer size {len(self.tokenizer)}")
        self.vocab_size = vocab
        self.vlm = Qwen3VLForConditionalGeneration(config.vlm_config(vocab, self.tokenizer.ids))
        self.expert = build_expert(config.expert_config(vocab))
        self.action_space = UnicycleActionSpace(
            config.n_waypoints,
            config.dt,
            config.accel_mean,
            config.accel_std,
            config.curvature_mean,
            config.curvature_std,
            config.integration,
        )
        self.action_in_proj = ActionInProjection(
            2,
            config.expert_hidden,
            num_layers=config.action_proj_layers,
            hidden=config.action_proj_hidden,
            num_fourier=config.fourier_features,
            max_freq=config.fourier_max_freq,
        )
        self.action_out_proj = nn.Linear(config.expert_hidden, 2)
        self.processor = AlpamayoProcessor(config, self.tokenizer)
        #: the speculative drafter used when ``drive(speculative=...)`` gets none (None: prompt lookup)
        self.drafter: Drafter | None = None
        self._decoder: StaticKVDecoder | None = None  # the static-KV decoder (fused weights of small models)
        # parameters in the model dtype; buffers (RoPE inverse frequencies, Fourier frequencies,
        # action statistics) stay float32 because bf16 would round them.
        dtype = config.torch_dtype
        for p in self.parameters():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
        self._float32_buffers()
        self.counters: Counter[str] = Counter()
        self._static: dict[tuple, StaticFlowSampler] = {}
        self._lean: dict[tuple, LeanFlowSampler] = {}
        #: reuse the vision features of frames seen at the last tick (exact; see vision_cache.py):
        #: the default of ``drive(vision_cache=None)``; the closed-loop policy turns it on
        self.vision_cache = False
        # a frame comes back frame_stride ticks later (policies space frames by it): keep it that long
        self.frame_cache = FrameFeatureCache(keep_ticks=config.frame_stride)
        self.eval()

    @classmethod
    def create(
        cls,
        config: AlpamayoConfig,
        device: str | torch.device = "cpu",
        tokenizer: AlpamayoTokenizer | None = None,
    ) -> AlpamayoR1:
        """Build with random weights directly on ``device`` in the config's dtype.

        Why: the real-size preset has 10.9 B parameters; building it in float32 on the CPU and
        moving it would need ~44 GB of host memory and minutes of initialisation.
        """
        previous = torch.get_default_dtype()
        torch.set_default_dtype(config.torch_dtype if config.torch_dtype.is_floating_point else previous)
        try:
            with torch.device(device):
                model = cls(config, tokenizer)
        finally:
            torch.set_default_dtype(previous)
        return model

    def _float32_buffers(self) -> None:
        """Recompute the float buffers in float32 (they may have been created under a bf16 default dtype)."""
        from alpasim_policy.model.expert import FourierFeatures

        cfg = self.config
        for mod in self.action_in_proj.modules():
            if isinstance(mod, FourierFeatures):
                half = mod.freqs.shape[-1]
                freqs = torch.logspace(
                    0.0, float(np.log10(cfg.fourier_max_freq)), steps=half, dtype=torch.float32
                )
                mod.freqs = freqs[None, :].to(mod.freqs.device)
        sp = self.action_space
        for name, value in (
            ("accel_mean", cfg.accel_mean),
            ("accel_std", cfg.accel_std),
            ("curvature_mean", cfg.curvature_mean),
            ("curvature_std", cfg.curvature_std),
        ):
            setattr(
                sp, name, torch.tensor(float(value), dtype=torch.float32, device=getattr(sp, name).device)
            )
        for mod in self.modules():
            if hasattr(mod, "inv_freq") and mod.inv_freq.dtype != torch.float32:
                raise ConfigError("RoPE inverse frequencies were built in reduced precision")

    # ================================================================== properties
    @property
    def device(self) -> torch.device:
        return self.action_out_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.action_out_proj.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ================================================================== inputs (see processing_alpamayo)
    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    @property
    def hist_tokenizer(self) -> DeltaTrajectoryTokenizer:
        return self.processor.hist_tokenizer

    def load_processor(self, directory: str | Path, **kwargs: Any) -> None:
        """Use a real Qwen3-VL image processor from a local directory (resizing by its pixel budget)."""
        self.processor.load_image_processor(directory, **kwargs)

    def build_prompt(self, tokens_per_image: list[int], history_ids: np.ndarray, nav_text: str) -> list[int]:
        return self.processor.build_prompt(tokens_per_image, history_ids, nav_text)

    def prepare(
        self,
        images: Any,
        history_xyh: Any,
        speed: float | None = None,
        command: int | str | None = None,
        route_text: str | None = None,
        history_z: Any = None,
    ) -> PreparedInputs:
        """Validate and convert one tick's inputs (:class:`AlpamayoProcessor`)."""
        return self.processor(images, history_xyh, speed, command, route_text, history_z)

    def prepare_with_vision(
        self,
        images: Any,
        history_xyh: Any,
        speed: float | None = None,
        command: int | str | None = None,
        route_text: str | None = None,
        history_z: Any = None,
        timings: dict[str, float] | None = None,
    ):  # noqa: ANN201 - (PreparedInputs, vision output)
        """:meth:`prepare` + :meth:`encode_images` through the per-frame cache: only the frames not
        seen at the last tick are preprocessed and encoded, the others' features are reused (exact:
        the vision tower treats each image on its own, see :mod:`~alpasim_policy.model.vision_cache`).
        ``timings`` receives ``preprocess`` and ``vision`` seconds. ``PreparedInputs.pixel_values``
        holds only the newly encoded frames' pixels (``None`` when every frame was cached)."""
        timings = timings if timings is not None else {}
        cache = self.frame_cache
        t0 = time.perf_counter()
        frames = self.processor.validate_images(images)
        keys, found = cache.lookup(frames)
        miss = [i for i, e in enumerate(found) if e is None]
        pixel_values = grid_new = None
        if miss:
            pixel_values, grid_new = self.processor.pixels(frames[miss])
        t1 = time.perf_counter()
        if miss:
            vision = self.encode_images(pixel_values, grid_new)
            cache.output_type = type(vision)
            for i, entry in zip(miss, cache.split(vision, frames[miss], grid_new), strict=True):
                found[i] = entry
        entries = [e for e in found if e is not None]
        vision = cache.assemble(entries)
        cache.retain(keys, entries)
        cache.hits += len(keys) - len(miss)
        cache.misses += len(miss)
        self.counters["vision_frames_cached"] += len(keys) - len(miss)
        self._sync()
        t2 = time.perf_counter()
        grid = torch.stack([e.grid for e in entries])
        prepared = self.processor.complete(
            grid, history_xyh, speed, command, route_text, history_z, pixel_values
        )
        t3 = time.perf_counter()
        timings["preprocess"] = (t1 - t0) + (t3 - t2)
        timings["vision"] = t2 - t1
        return prepared, vision

    # ================================================================== reasoning
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def encode_images(self, pixel_values: torch.Tensor, grid: torch.Tensor):  # noqa: ANN201
        self.counters["vision_calls"] += 1
        return self.vlm.model.get_image_features(
            pixel_values.to(self.device, self.dtype), grid.to(self.device), return_dict=True
        )

    def _vlm_step(self, ids: torch.Tensor, pos_text: torch.Tensor, rope_delta: torch.Tensor, cache, **mm):  # noqa: ANN001, ANN003
        """One VLM forward. ``pos_text`` (B, L) cache positions; M-RoPE positions = text + rope delta."""
        b, length = ids.shape
        pos3 = mm.pop("pos3", None)
        if pos3 is None:
            pos3 = (pos_text + rope_delta)[None].expand(3, b, length)
        position_ids = torch.cat([pos_text[None], pos3], dim=0)
        return self.vlm(
            input_ids=ids,
            position_ids=position_ids,
            use_cache=True,
            **{cache_kwarg(): cache},
            logits_to_keep=1,
            **mm,
        )

    @torch.no_grad()
    def reason(
        self,
        prepared: PreparedInputs,
        vision,  # noqa: ANN001 - output of encode_images
        rows: int,
        *,
        cot_tokens: int | None = None,
        max_cot_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        timings: dict[str, float] | None = None,
        trace: dict[str, list[torch.Tensor]] | None = None,
        decode: DecodeMode = "static",
        speculative: int = 0,
        drafter: Drafter | None = None,
    ) -> tuple[Prefix, list[list[int]]]:
        """Prefill ``rows`` copies of the prompt and decode until ``<|traj_future_start|>`` is in the cache.

        ``trace`` (optional) receives the raw ``logits`` ``(rows, V)`` and the ``tokens`` ``(rows,)``
        of every decoding step (for parity checks against the reference).

        ``decode``: ``"static"`` (default) runs the steps over a preallocated KV cache
        (:class:`~alpasim_policy.model.static_decode.StaticKVDecoder`); ``"graph"`` runs its
        steps (and speculative verifications) as one CUDA graph replay each (eagerly off CUDA; the
        cache is then reused by the next tick, so the returned prefix is valid until the next call); ``"dynamic"`` is the
        reference loop through transformers' forward and ``DynamicCache`` (same tokens, same logits).
        ``speculative`` = gamma > 0 drafts up to gamma tokens per target forward with ``drafter``
        (default: ``self.drafter``, else prompt lookup) and verifies them on the static cache
        (:mod:`~alpasim_policy.model.speculative`; one row only, i.e. single reasoning)."""
        from transformers import DynamicCache

        timings = timings if timings is not None else {}
        dev = self.device
        max_tokens = max_cot_tokens or self.config.max_cot_tokens
        ids = prepared.input_ids.to(dev).expand(rows, -1)
        mm_types = prepared.mm_token_type_ids.to(dev)
        grid = prepared.image_grid_thw.to(dev)
        pos3_row, delta_row = self.vlm.model.get_rope_index(ids[:1], mm_types, image_grid_thw=grid)
        length = ids.shape[1]
        pos3 = pos3_row.expand(3, rows, length)
        rope_delta = delta_row.to(dev).reshape(1, 1).expand(rows, 1)
        pos_text = torch.arange(length, device=dev)[None].expand(rows, -1)
        if rows == 1:
            vis = vision
        else:  # the same image features for every sequence (the ViT still ran once)
            vis = type(vision)(
                pooler_output=tuple(vision.pooler_output) * rows,
                deepstack_features=[tuple(f) * rows for f in vision.deepstack_features],
            )
        cache = DynamicCache(config=self.vlm.config.text_config)
        self._sync()
        t0 = time.perf_counter()
        out = self._vlm_step(
            ids,
            pos_text,
            rope_delta,
            cache,
            pos3=pos3,
            mm_encoder_outputs={"image": vis},
            image_grid_thw=grid.repeat(rows, 1),
            mm_token_type_ids=mm_types.expand(rows, -1),
        )
        self.counters["prefill_calls"] += 1
        self.counters["prefill_sequences"] += rows
        logits = out.logits[:, -1]
        self._sync()
        t1 = time.perf_counter()
        timings["prefill"] = timings.get("prefill", 0.0) + t1 - t0

        # NVlabs' semantics (``vlm.generate`` + stop one token after ``<|traj_future_start|>``): a
        # generated token is fed back only when another one follows it, so the cache holds the
        # prompt + generated - 1 tokens; the expert attends to the cache up to and including the
        # stop token and its first position is (stop index + 1), or prompt + generated when a row
        # never emitted the stop (length limit / forced length).
        stop = self.tokenizer.ids["traj_future_start"]
        pad = self.tokenizer.ids["pad"]
        limit = cot_tokens if cot_tokens is not None else max_tokens
        if limit < 1:
            raise ConfigError(f"CoC length limit must be >= 1, got {limit}")
        procs = cot_logits_processors(
            self.tokenizer, forced_length=cot_tokens is not None, temperature=temperature, top_p=top_p
        )
        if decode not in ("static", "graph", "dynamic"):
            raise ConfigError(f"decode mode {decode!r}: choose static, graph or dynamic")
        if speculative < 0:
            raise ConfigError(f"speculative: gamma must be >= 0, got {speculative}")
        if speculative and (rows != 1 or decode == "dynamic" or trace is not None):
            raise ConfigError(
                "speculative decoding needs one reasoning row (reasoning='single'), a static-cache "
                f"decode (static or graph) and no trace (got rows={rows}, decode={decode!r})"
            )
        static = None
        if decode in ("static", "graph"):
            static = self._decoder = StaticKVDecoder.for_model(self.vlm, self._decoder)
            capacity = length + limit + speculative + 1
            static.start(cache, length, int(delta_row.reshape(-1)[0]), capacity, graph=decode == "graph")
        if speculative:
            res = speculative_decode(
                _verify_step(static, speculative + 1),
                logits[0],
                procs,
                as_drafter(drafter if drafter is not None else self.drafter or NGramDrafter()),
                gamma=speculative,
                limit=limit,
                stop=stop,
                prompt_ids=prepared.input_ids[0],
                sample=temperature > 0,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
            )
            steps, fed = len(res.tokens), res.fed
            gen = torch.tensor([res.tokens])
            stop_at = torch.tensor([length + steps - 1 if res.tokens[-1] == stop else -1])
            for key, value in (
                ("decode_forwards", res.forwards),
                ("spec_proposed", res.proposed),
                ("spec_accepted", res.accepted),
            ):
                timings[key] = timings.get(key, 0) + value
            self.counters["decode_forwards"] += res.forwards
        else:
            gen, stop_at, steps, fed = self._decode_plain(
                logits, rows, length, limit, stop, pad, procs, temperature, generator, trace,
                static if static is not None else (cache, rope_delta),
            )  # fmt: skip
            timings["decode_forwards"] = timings.get("decode_forwards", 0) + fed
        self._sync()
        t2 = time.perf_counter()
        timings["decode"] = timings.get("decode", 0.0) + t2 - t1
        timings["decode_steps"] = timings.get("decode_steps", 0) + steps
        self.counters["decode_steps"] += steps

        total = length + steps  # prompt + generated
        stop_at = stop_at.to(dev)
        offset = torch.where(stop_at >= 0, stop_at + 1, torch.full_like(stop_at, total))
        texts_ids = []
        for r, s_at in enumerate(stop_at.cpu().tolist()):
            texts_ids.append(gen[r, : (s_at - length if s_at >= 0 else steps)].tolist())
        kv_len = length + fed
        if static is not None:
            keys, values = static.keys(kv_len), static.values(kv_len)
        else:
            keys = [layer.keys for layer in cache.layers]
            values = [layer.values for layer in cache.layers]
        valid = offset.clamp(max=kv_len)
        prefix = Prefix(keys, values, valid, offset + rope_delta[:, 0])
        return prefix, texts_ids

    def _decode_plain(
        self,
        logits: torch.Tensor,
        rows: int,
        length: int,
        limit: int,
        stop: int,
        pad: int,
        procs,  # noqa: ANN001 - LogitsProcessorList
        temperature: float,
        generator: torch.Generator | None,
        trace: dict[str, list[torch.Tensor]] | None,
        target,  # noqa: ANN001 - a StaticKVDecoder, or (DynamicCache, rope_delta) for the reference loop
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """One token per step for all rows. Returns (generated ``(rows, steps)`` on the CPU, sequence
        index of each row's stop or -1, steps, tokens fed back)."""
        dev = self.device
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        stop_at = torch.full((rows,), -1, dtype=torch.long, device=dev)  # sequence index of the stop
        generated: list[torch.Tensor] = []
        cur = length  # sequence index of the token being picked
        steps = 0
        fed = 0
        while True:
            if trace is not None:
                trace.setdefault("logits", []).append(logits.float().cpu())
            tok = next_tokens(logits, procs, temperature > 0, generator)
            if trace is not None:
                trace.setdefault("tokens", []).append(tok.cpu())
            tok = torch.where(finished, torch.full_like(tok, pad), tok)
            newly = (tok == stop) & ~finished
            stop_at = torch.where(newly, torch.full_like(stop_at, cur), stop_at)
            generated.append(tok)
            steps += 1
            cur += 1
            finished |= newly
            if steps >= limit:
                break  # the last generated token is never fed
            if isinstance(target, StaticKVDecoder) and target.persistent:
                out_logits = target.graph_step(tok[:, None], cur - 1)
            elif isinstance(target, StaticKVDecoder):
                out_logits = target.step(tok[:, None], cur - 1)
            else:
                cache, rope_delta = target
                out_logits = self._vlm_step(
                    tok[:, None], torch.full((rows, 1), cur - 1, device=dev), rope_delta, cache
                ).logits
            fed += 1
            if bool(finished.all()):
                break  # the stop token is in the cache; NVlabs' one extra token is not needed
            logits = out_logits[:, -1]
        return torch.stack(generated, dim=1).cpu(), stop_at, steps, fed

    # ================================================================== diffusion
    def _static_sampler(self, samples: int, prefix: Prefix) -> StaticFlowSampler:
        """The live static sampler for (samples, prefix rows); grown (and re-captured) only when a
        prefix no longer fits, so capacity is monotonic and graphs are captured a handful of times."""
        key = (samples, prefix.batch, str(self.device), self.dtype)
        sampler = self._static.get(key)
        if sampler is None or sampler.capacity < prefix.length:
            sampler = StaticFlowSampler(
                self.expert,
                self.action_in_proj,
                self.action_out_proj,
                steps=self.config.flow_steps,
                samples=samples,
                prefix_batch=prefix.batch,
                capacity=prefix_capacity(prefix.length),
                n_waypoints=self.config.n_waypoints,
                device=self.device,
            )
            self._static[key] = sampler
        return sampler

    def _lean_sampler(self, samples: int, prefix: Prefix) -> LeanFlowSampler:
        """The live lean sampler for ``samples``; grown only when a prefix no longer fits."""
        key = (samples, str(self.device), self.dtype)
        sampler = self._lean.get(key)
        if sampler is None or not sampler.fits(prefix, samples):
            sampler = LeanFlowSampler(
                self.expert,
                self.action_in_proj,
                self.action_out_proj,
                steps=self.config.flow_steps,
                samples=samples,
                capacity=prefix_capacity(int(prefix.valid_len.max())),
                n_waypoints=self.config.n_waypoints,
                device=self.device,
            )
            self._lean[key] = sampler
        return sampler

    @torch.no_grad()
    def sample_actions(
        self, prefix: Prefix, noise: torch.Tensor, mode: DiffusionMode = "graph"
    ) -> torch.Tensor:
        """Normalised actions ``(K, 64, 2)`` from noise ``(K, 64, 2)`` conditioned on ``prefix``."""
        noise = noise.to(self.device, torch.float32)
        self.counters["diffusion_calls"] += 1
        if mode == "dynamic":
            sampler = DynamicCacheSampler(
                self.expert, self.action_in_proj, self.action_out_proj, self.config.flow_steps
            )
            return sampler.sample(prefix, noise)
        if mode not in ("graph", "eager", "lean"):
            raise ConfigError(f"diffusion mode {mode!r}: choose graph, eager, lean or dynamic")
        if mode == "lean" or (mode == "graph" and self.device.type != "cuda"):
            # no CUDA graphs off CUDA: the fastest loop there is the lean one
            lean = self._lean_sampler(noise.shape[0], prefix)
            lean.load(prefix, noise)
            return lean.run()
        sampler = self._static_sampler(noise.shape[0], prefix)
        sampler.load(prefix, noise)
        return sampler.run(use_graph=(mode == "graph")).clone()

    # ================================================================== one tick
    @torch.no_grad()
    def drive(
        self,
        images: Any,
        history_xyh: Any,
        speed: float | None = None,
        command: int | str | None = None,
        *,
        route_text: str | None = None,
        num_samples: int = 6,
        reasoning: ReasoningMode = "single",
        diffusion: DiffusionMode = "graph",
        cot_tokens: int | None = None,
        max_cot_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        history_z: Any = None,
        decode: DecodeMode | None = None,
        speculative: int = 0,
        drafter: Drafter | None = None,
        vision_cache: bool | None = None,
    ) -> DriveOutput:
        """One planning tick: images + ego history -> CoC text(s) and K trajectories (see module doc).

        * ``images``: (C*F, 3, H, W) or (C, F, 3, H, W) (channel-last (..., H, W, 3) also accepted),
          uint8 or float in [0, 1], camera-major, frames oldest first; any size (resized to
          ``config.image_hw``).
        * ``history_xyh``: (>=16, 3|4) x, y, heading (, speed), oldest first, last row = now, 0.1 s
          apart; any fixed frame (converted to the rig frame of the last row).
        * ``speed``: measured speed (m/s) to start the plan from; ``None`` (NVlabs) estimates it
          from the history (:func:`~alpasim_policy.model.action_space.estimate_v0`).
        * ``history_z``: (>=16,) heights of the history rows (tokenised with x, y; the last one is
          carried into the plan as ``DriveOutput.z``); ``None`` = flat (0).
        * ``command``: 0 left, 1 straight, 2 right (or free text); ``route_text``: extra prompt text.
        * ``temperature``: 0 = greedy (default for ``single``; ``multi`` samples with the config's
          temperature / top-p so the K reasonings differ). ``cot_tokens`` forces the CoC length.
        * ``noise`` (K, 64, 2) fixes the flow's starting point (else drawn from ``generator``).
        * ``decode``: ``static`` (preallocated KV), ``graph`` (the same, one-token steps replayed as a
          CUDA graph; the default on CUDA) or ``dynamic`` (transformers' loop); ``None``: ``graph``
          on CUDA, else ``static``;
          ``speculative`` = gamma > 0: speculative CoC decoding with ``drafter`` (or
          ``self.drafter``, else prompt lookup); single reasoning only. Greedy output is identical
          to plain decoding, sampled output has the same distribution (see :meth:`reason`).
        * ``vision_cache``: reuse the vision features of frames already seen at the last tick
          (:meth:`prepare_with_vision`; exact, the same outputs); ``None``: ``self.vision_cache``.
        """
        if reasoning not in ("single", "multi"):
            raise ConfigError(f"reasoning mode {reasoning!r}: choose single or multi")
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        cfg = self.config
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        use_cache = self.vision_cache if vision_cache is None else vision_cache
        frames_cached = 0
        if use_cache:
            hits = self.frame_cache.hits
            prepared, vision = self.prepare_with_vision(
                images, history_xyh, speed, command, route_text, history_z, timings
            )
            frames_cached = self.frame_cache.hits - hits
        else:
            prepared = self.prepare(images, history_xyh, speed, command, route_text, history_z)
            t_prep = time.perf_counter()
            timings["preprocess"] = t_prep - t_start
            vision = self.encode_images(prepared.pixel_values, prepared.image_grid_thw)
            self._sync()
            timings["vision"] = time.perf_counter() - t_prep

        rows = 1 if reasoning == "single" else num_samples
        if temperature is None:
            temperature = 0.0 if reasoning == "single" else cfg.temperature
        top_p = cfg.top_p if top_p is None else top_p
        dev_gen = _device_generator(generator, self.device)
        if decode is None:
            decode = "graph" if self.device.type == "cuda" else "static"
        prefix, cot_ids = self.reason(
            prepared,
            vision,
            rows,
            cot_tokens=cot_tokens,
            max_cot_tokens=max_cot_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=dev_gen,
            timings=timings,
            decode=decode,
            speculative=speculative,
            drafter=drafter,
        )
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in cot_ids]

        if noise is None:
            gen_device = generator.device if generator is not None else "cpu"
            noise = torch.randn((num_samples, cfg.n_waypoints, 2), generator=generator, device=gen_device)
        elif tuple(noise.shape) != (num_samples, cfg.n_waypoints, 2):
            raise ModelInputError(
                f"noise: expected ({num_samples}, {cfg.n_waypoints}, 2), got {tuple(noise.shape)}"
            )
        self._sync()
        t_d0 = time.perf_counter()
        actions = self.sample_actions(prefix, noise, diffusion)
        self._sync()
        t_d1 = time.perf_counter()
        timings["diffusion"] = t_d1 - t_d0

        v0 = torch.full((num_samples,), prepared.v0, dtype=torch.float64)
        traj = self.action_space.action_to_traj(actions.cpu(), v0)
        controls = self.action_space.denormalize(actions.cpu())
        t_end = time.perf_counter()
        timings["post"] = t_end - t_d1
        timings["total"] = t_end - t_start
        steps = int(timings.pop("decode_steps", 0))
        forwards = int(timings.pop("decode_forwards", 0))
        proposed = int(timings.pop("spec_proposed", 0))
        accepted = int(timings.pop("spec_accepted", 0))
        timings["decode_tok_per_s"] = steps / timings["decode"] if timings.get("decode") else 0.0
        stats = {
            "prefill_sequences": rows,
            "decode_steps": steps,
            "cot_tokens": [len(c) for c in cot_ids],
            "prefix_len": int(prefix.valid_len.max()),
            "kv_len": prefix.length,
            "expert_position_start": [int(p) for p in prefix.rope_offset.tolist()],
            "graph": int(diffusion == "graph" and self.device.type == "cuda"),
            "decode": decode,
            "decode_forwards": forwards,  # target forwards after the prefill (incl. verification)
            "speculative": speculative,
            "draft_proposed": proposed,
            "draft_accepted": accepted,
            "acceptance": accepted / proposed if proposed else None,
            "vision_frames_cached": frames_cached,  # frames whose features came from the last tick
        }
        return DriveOutput(
            trajectories=traj.numpy(),
            reasoning=texts,
            timings=timings,
            actions=controls.numpy(),
            v0=prepared.v0,
            stats=stats,
            z=prepared.z,
        )

    @torch.no_grad()
    def warmup(
        self,
        num_samples: int = 6,
        reasoning: ReasoningMode = "single",
        diffusion: DiffusionMode = "graph",
        cot_tokens: int = 8,
        ticks: int = 2,
    ) -> DriveOutput:
        """Run ``ticks`` ticks on synthetic inputs so allocation, kernel selection and CUDA-graph capture
        happen before the first real (deadline-bound) tick. Returns the last output."""
        cfg = self.config
        rng = np.random.default_rng(0)
        h, w = cfg.image_hw
        images = rng.integers(0, 256, size=(cfg.num_images, 3, h, w), dtype=np.uint8)
        t = (np.arange(cfg.history_steps) - (cfg.history_steps - 1)) * cfg.dt
        history = np.stack([8.0 * t, np.zeros_like(t), np.zeros_like(t)], axis=1)
        out = None
        for i in range(ticks):
            out = self.drive(
                images,
                history,
                num_samples=num_samples,
                reasoning=reasoning,
                diffusion=diffusion,
                cot_tokens=cot_tokens,
                generator=torch.Generator().manual_seed(i),
            )
        return out

    # ================================================================== weights
    def save_pretrained(self, directory: str | Path, max_shard_bytes: int = 2 * 1024**3) -> None:
        """Write ``config.json``, the tokenizer, the image processor (when one is used) and safetensors
        shards + ``model.safetensors.index.json``."""
        from alpasim_policy.io import atomic_write_json
        from alpasim_policy.model import weights_io as wio

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        wio.save_state(state, directory, max_shard_bytes)
        cfg = self.config.to_dict()
        cfg["vocab_size"] = self.vocab_size
        atomic_write_json(directory / "config.json", cfg)
        self.tokenizer.save(directory)
        if self.image_processor is not None:  # the preprocessing is part of the model's behaviour
            self.image_processor.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        preset: str | None = None,
        strict: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
        tokenizer_dir: str | Path | None = None,
        base_vlm_dir: str | Path | None = None,
        **overrides: Any,
    ) -> AlpamayoR1:
        """Load a checkpoint folder: NVlabs' (``save_pretrained`` of NVlabs' AlpamayoR1) or ours.

        * The config is read from ``config.json``: NVlabs' format is mapped field by field (sizes of
          the base VLM it names in ``vlm_name_or_path`` — a local folder, absolute or relative to
          the checkpoint, or ``base_vlm_dir`` — the expert, action projection, action space, flow
          and trajectory tokenizers; see :mod:`~alpasim_policy.model.weights_io`); ours directly;
          ``preset`` only for a folder without ``config.json``. ``overrides`` set other config
          fields (e.g. ``cameras=2, frames=2``: NVlabs' config does not fix the camera count).
        * The tokenizer is the checkpoint's (``tokenizer_dir``, the folder, or the base-VLM folder
          extended as NVlabs extends it); its size must match the checkpoint's vocabulary. When the
          base-VLM folder has an image processor it is used (Qwen3-VL resizing by pixel budget).
        * Weights: ``model.safetensors`` or shards + ``model.safetensors.index.json``, read one
          tensor at a time into a model built with parameters on the meta device, in ``dtype``
          (``float32`` / ``bfloat16`` / ``float16``; default: the checkpoint's).
        * Missing, unexpected or mis-shaped keys raise :class:`ModelWeightsError` listing them
          (``strict``), or warn (``strict=False``; missing weights then keep a random init).
        """
        from alpasim_policy.model import weights_io as wio

        directory = Path(directory)
        if not directory.is_dir():
            raise ModelWeightsError(f"{directory}: weights directory does not exist")
        config, base_dir = wio.load_folder_config(directory, preset, base_vlm_dir, overrides)
        if dtype is not None:
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"dtype {dtype!r}: choose float32, bfloat16 or float16")
            config.dtype = dtype
        tokenizer = wio.load_folder_tokenizer(directory, tokenizer_dir, base_dir, config)
        files = wio.weight_files(directory)
        shapes = wio.shard_keys(files)
        emb = shapes.get("vlm.model.language_model.embed_tokens.weight")
        if emb is not None and getattr(tokenizer, "builtin", False) and emb[0] != len(tokenizer):
            raise ModelWeightsError(
                f"{directory}: no tokenizer in the folder, and the built-in one of preset {config.preset!r} "
                f"has {len(tokenizer)} tokens, not the checkpoint's {emb[0]}; pass tokenizer_dir="
            )
        if emb is not None and emb[0] < len(tokenizer):
            raise ModelWeightsError(
                f"{directory}: the tokenizer has {len(tokenizer)} tokens but the embedding only {emb[0]} rows; "
                "this tokenizer does not belong to these weights"
            )
        if emb is not None and config.vocab_size is None:
            config.vocab_size = emb[0]
        previous = torch.get_default_dtype()
        torch.set_default_dtype(config.torch_dtype)
        try:
            with wio.parameters_on_meta():
                model = cls(config, tokenizer)
        finally:
            torch.set_default_dtype(previous)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        mismatched = sorted(
            f"{k}: file {shapes[k]} vs model {expected[k]}"
            for k in set(expected) & set(shapes)
            if shapes[k] != expected[k]
        )
        problems = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                problems.append(f"{len(items)} {label} keys: {shown}")
        if problems:
            msg = f"{directory}: weights do not match the model ({config.preset}): " + "; ".join(problems)
            if strict:
                raise ModelWeightsError(msg)
            warnings.warn(msg, stacklevel=2)
        params = dict(model.named_parameters())
        state = {}
        for k, v in wio.read_state(files):
            if k not in expected or tuple(v.shape) != expected[k]:
                continue
            # parameters in the model dtype; buffers (statistics, Fourier frequencies) stay float32
            # into fresh (aligned) storage: a tensor read from a file may sit at an odd address, and
            # BLAS then takes other kernels whose rounding differs in the last bit
            want = config.torch_dtype if k in params else torch.float32
            state[k] = torch.empty(v.shape, dtype=want).copy_(v)
        model.load_state_dict(state, strict=False, assign=True)
        still_meta = [n for n, p in model.named_parameters() if p.is_meta]
        for name in still_meta:  # strict=False: random init for what the file lacks
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            real = torch.empty(getattr(mod, attr).shape, dtype=config.torch_dtype).normal_(0.0, 0.02)
            setattr(mod, attr, nn.Parameter(real, requires_grad=False))
        model.to(device)
        model.eval()
        if (directory / "preprocessor_config.json").exists():
            model.load_processor(directory)
        elif base_dir is not None and (base_dir / "preprocessor_config.json").exists():
            # NVlabs passes the checkpoint's min_pixels / max_pixels to the base VLM's processor
            nv = config.extra.get("nvlabs", {})
            pixels = {k: int(nv[k]) for k in ("min_pixels", "max_pixels") if nv.get(k) is not None}
            model.load_processor(base_dir, **pixels)
        return model


# ---------------------------------------------------------------------- helpers
def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` derived deterministically from ``generator`` (multinomial needs one there)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


__all__ = ["AlpamayoR1", "DriveOutput", "PreparedInputs"]
