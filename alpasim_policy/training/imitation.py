"""Imitation stage: teacher-forced chain of causation (language-model loss) + flow matching on actions.

Why it reuses the model's own pieces: a model trained on a prefix built differently from the one
``AlpamayoR1.drive`` builds is evaluated on inputs it never saw. So per sample:

* the prompt is ``model.prepare(images, history[:, :3], None, command)`` — exactly the policy's
  call (``v0`` estimated from the history, as the ``alpamayo`` policy's default ``v0=history``);
* the CoC label's tokens, then ``<|cot_end|><|traj_future_start|>`` (NVlabs' assistant layout
  ``<|cot_start|>cot<|cot_end|><|traj_future_start|>``), are appended and teacher-forced; the
  language-model loss (cross-entropy) covers the CoC tokens and these two closing tokens — the
  model must learn to emit ``<|traj_future_start|>`` or inference decodes to the length limit and
  the expert sees a prefix it was never trained on;
* the VLM runs once over prompt + CoC + stop token with M-RoPE positions from
  ``get_rope_index`` (the same positions inference's prefill + decode give token by token); its KV
  cache is the prefix the expert attends to, all of it valid, and the expert's first position is
  one past ``<|traj_future_start|>`` plus the rope delta — :class:`~alpasim_policy.model.flow.Prefix`
  exactly as :meth:`AlpamayoR1.reason` returns it after a greedy decode of the same tokens;
* flow matching with the sampler's convention (:mod:`alpasim_policy.model.flow`): noise at t = 0,
  actions at t = 1, ``x_t = (1 - t) noise + t actions``, target velocity ``actions - noise``; ``t``
  uniform on [0, 1) per flow sample (NVlabs' ``train_timestep_sampler="uniform"``); MSE over the
  target's valid rows. The actions are the normalised controls that reproduce the logged target
  from the model's own ``v0`` through the model's integrator (:func:`fit_controls`; the exact
  inverse amplifies log noise, see there).

Determinism: the weights are initialised from ``seed`` (or loaded from ``init``, a fine-tune);
each step's samples, noise and times come from generators seeded by (seed, step), and the learning
rate is a function of the step, so a run resumed from a checkpoint continues exactly as an
uninterrupted one (the optimizer state is saved beside the weights).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alpasim_policy.errors import ConfigError
from alpasim_policy.io import atomic_write_json
from alpasim_policy.training.run_files import (
    RAW_WEIGHTS,
    read_csv_log,
    save_checkpoint,
    save_figure,
    write_csv_log,
)
from alpasim_policy.training.shards import shard_files

CSV_FIELDS = ("step", "loss", "lm_loss", "flow_loss", "lr", "seconds")


@dataclass
class ImitationConfig:
    """Options of the imitation stage (stored in ``out/checkpoint/training_state.json``)."""

    preset: str = "tiny"
    steps: int = 200
    batch: int = 4
    lr: float = 3e-4
    warmup: int = 10  # steps of linear warm-up, then cosine decay to 10 % of lr
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    lm_weight: float = 1.0
    flow_weight: float = 1.0
    flow_samples: int = 4  # (noise, t) pairs per sample, sharing its prefix
    seed: int = 0
    save_every: int = 50
    fit_smooth: float = 0.05  # smoothing of the action fit (see fit_controls)
    # "data": action normalisation from the training actions; "preset": keep the preset's
    action_stats: str = "data"
    # share of each batch drawn evenly over 5 m/s speed bins instead of evenly over samples: city
    # drives outnumber highway ones many times, and a model that rarely sees 25 m/s drifts there
    speed_balance: float = 0.0
    # one padded forward per step instead of one forward per sample (batch_losses): the same
    # losses up to float rounding, in far fewer operator calls
    batched: bool = False
    # decay of an exponential moving average of the weights, updated after every step and saved
    # as the checkpoint's weights (the raw ones kept for --resume); 0 = off. The action expert is
    # a flow-matching (diffusion) model, and those are sampled from averaged weights as a rule:
    # the average moves less with the last few batches (training README, run 13: it halved the
    # spread between training seeds)
    ema: float = 0.0
    # preset fields changed for this run (e.g. {"patch_size": 8}); saved in the checkpoint's config
    model_options: dict[str, Any] = field(default_factory=dict)
    # a checkpoint folder whose weights, config and action statistics start the run instead of a
    # fresh preset model ("" = from scratch). Why: a DAgger round adds drives of the states a
    # trained model reaches; fine-tuning that model on the grown data keeps what it learned (and
    # costs a fraction of a run from scratch) where a new run from scratch is a new draw of the
    # training seed, which alone moves the closed-loop score by ~0.1 (training README, run 12)
    init: str = ""
    # share of samples (seeded, fixed for the run) whose prompt shows the history of a car standing
    # at its current pose; their actions are still fitted from the real speed. Why: a model that
    # reads its own speed from the history learns "keep doing what I did" (the copycat problem:
    # training README, run 22); without the history it has to read the scene from the frames
    history_dropout: float = 0.0

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): a pure function of the step, so resume is exact."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        u = min(1.0, (step - self.warmup) / span)
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * u)))


@dataclass
class Sample:
    """One training sample as the model sees it (the processor's output, cached) plus its targets."""

    prepared: Any  # PreparedInputs
    target_ids: list[int]  # CoC tokens + <|cot_end|> + <|traj_future_start|>
    actions: torch.Tensor  # (N, 2) normalised
    valid: torch.Tensor  # (N,) bool
    coc: str


SHARD_KEYS = ("images", "history", "command", "target", "target_valid", "coc")


def iter_shards(
    data: Path | Sequence[Path], frame_stride: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of every ``*.npz`` shard under ``data`` (one folder or several, each sorted), one
    shard at a time: :func:`prepare_samples` reads them this way so a run never holds every raw
    frame and every processed frame at once (13000 samples did not fit in 24 GB that way).

    ``frame_stride``: the model's frame spacing; a shard stacked with another one is refused (its
    frames would mean other times than the model's policy will feed it)."""
    for f in shard_files(data):
        with np.load(f) as z:
            missing = [k for k in SHARD_KEYS if k not in z.files]
            if missing:
                raise ConfigError(f"{f}: not a training shard (missing {', '.join(missing)})")
            stride = int(z["frame_stride"]) if "frame_stride" in z.files else 1
            if frame_stride is not None and stride != frame_stride:
                raise ConfigError(
                    f"{f}: frames {stride} tick(s) apart, the model's frame_stride is {frame_stride} "
                    f"(data stage --frame-stride / --model-option frame_stride must agree)"
                )
            yield {k: z[k] for k in SHARD_KEYS}


def load_shards(data: Path | Sequence[Path], frame_stride: int | None = None) -> dict[str, np.ndarray]:
    """Every ``*.npz`` shard under ``data`` (one folder or several, each sorted), concatenated
    (``frame_stride``: as :func:`iter_shards`)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SHARD_KEYS}
    for shard in iter_shards(data, frame_stride):
        for k in SHARD_KEYS:
            parts[k].append(shard[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Why: preparing a sample allocates a 1.6 MB float32 temporary and keeps a 0.8 MB float16 copy,
    and glibc keeps the freed temporaries' pages between the live copies. Measured on 125 real
    samples: 1.6 MB resident per sample without trimming, 0.87 with it. A run of 13000 samples
    held 21 GB of this 24 GB machine for 10 GB of pixels and an OOM kill came close.
    """
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        name = ctypes.util.find_library("c")
        fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        _MALLOC_TRIM = fn if fn is not None else False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def prepare_samples(
    model: Any,
    arrays: dict[str, np.ndarray] | Iterable[dict[str, np.ndarray]],
    fit_smooth: float = 0.05,
    fit_stats: bool = False,
    history_dropout: float = 0.0,
    seed: int = 0,
) -> list[Sample]:
    """Run the model's processor on each sample and turn its expert target into normalised actions.

    ``arrays``: the shard arrays (:func:`load_shards`), or chunks of them in order
    (:func:`iter_shards`, which lets each chunk's raw frames go once processed); the samples are
    the same either way.

    ``fit_stats``: first set the model's action normalisation from these actions
    (:func:`set_action_stats`; a run's first step does, a resumed run keeps its checkpoint's).

    The processed pixels are held as float16: they are most of a run's memory (1.6 MB per sample
    in float32, so 8000 samples filled this 24 GB machine), and float16's rounding (< 5e-4
    relative) is far below the uint8 quantisation the rendered frames already carry. The
    model casts them to its own dtype when it reads them. After each chunk the heap's free
    pages go back to the system (:func:`release_free_heap`).

    ``history_dropout``: that share of the samples (drawn from ``seed``, so a run and its resume
    drop the same ones) get the prompt of a car standing still at its current pose (every history
    row = the last one) while their start speed ``v0``, and so their target actions, stay the real
    ones (ChauffeurNet's past-motion dropout)."""

    from alpasim_policy.model.action_space import fit_controls

    tk = model.tokenizer
    tail = [tk.ids["cot_end"], tk.ids["traj_future_start"]]
    chunks = [arrays] if isinstance(arrays, dict) else arrays
    if not 0.0 <= history_dropout <= 1.0:
        raise ConfigError(f"--history-dropout must be in [0, 1], got {history_dropout}")
    drop_rng = np.random.default_rng([seed, 0x4D0D])
    prepared = []
    targets, valids, cocs = [], [], []
    for chunk in chunks:
        for i in range(len(chunk["coc"])):
            hist = np.asarray(chunk["history"][i], dtype=np.float64)[:, :3]
            p = model.prepare(chunk["images"][i], hist, None, int(chunk["command"][i]))
            if history_dropout and drop_rng.random() < history_dropout:
                standing = np.repeat(hist[-1:], len(hist), axis=0)
                ps = model.prepare(chunk["images"][i], standing, None, int(chunk["command"][i]))
                p = replace(ps, v0=p.v0)
            if p.pixel_values is not None and p.pixel_values.dtype == torch.float32:
                p = replace(p, pixel_values=p.pixel_values.to(torch.float16))
            prepared.append(p)
        targets.append(chunk["target"])
        valids.append(chunk["target_valid"])
        cocs += [str(c) for c in chunk["coc"]]
        del chunk
        release_free_heap()
    v0 = torch.tensor([p.v0 for p in prepared], dtype=torch.float64)
    valid = torch.as_tensor(np.concatenate(valids)).bool()
    controls = fit_controls(
        torch.as_tensor(np.concatenate(targets)), v0, model.config.dt, model.action_space.method, valid, fit_smooth
    )
    if fit_stats:
        set_action_stats(model, controls, valid)
    actions = model.action_space.normalize(controls).float()
    out = []
    for i, p in enumerate(prepared):
        text = cocs[i]
        out.append(Sample(p, tk.encode(text) + tail, actions[i], valid[i], text))
    release_free_heap()
    return out


SPEED_BIN_MPS = 5.0


def speed_balanced_weights(speeds: list[float], balance: float) -> np.ndarray | None:
    """Sampling probabilities: ``1 - balance`` spread evenly over samples, ``balance`` evenly over
    the occupied 5 m/s speed bins (then evenly within a bin). None (uniform) when ``balance`` is 0,
    so a run without it draws exactly the batches it always drew."""
    if not 0.0 <= balance <= 1.0:
        raise ConfigError(f"--speed-balance must be in [0, 1], got {balance}")
    if balance == 0.0:
        return None
    bins = np.floor(np.asarray(speeds, np.float64) / SPEED_BIN_MPS).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    n = len(bins)
    w = (1.0 - balance) / n + balance / (len(counts) * counts[inverse])
    return w / w.sum()


def set_action_stats(model: Any, controls: torch.Tensor, valid: torch.Tensor) -> None:
    """Set the model's action normalisation to the spread of the training actions ``controls``.

    Why: the flow is learnt and sampled in normalised units, and its residual error is of the order
    of those units. The tiny preset's curvature scale (0.02 1/m) is four times the spread of real
    driving (about 0.005 1/m on the training data), so a normalised error of 0.1 was 0.002 1/m:
    15 m sideways after 4 s at 30 m/s. Normalising by the data's own standard deviation (NVlabs
    keeps such statistics in the action space too) spends the model's precision where the data is.
    The means stay 0 (left and right, speeding up and slowing down, are symmetric a priori). The
    values go to ``config.json`` with the checkpoint, so inference denormalises the same way.
    """
    sp = model.action_space
    rows = controls[valid]
    accel_std = float(f"{float(rows[:, 0].std()):.3g}")
    curvature_std = float(f"{float(rows[:, 1].std()):.3g}")
    model.config.accel_std = accel_std
    model.config.curvature_std = curvature_std
    sp.accel_std.fill_(accel_std)
    sp.curvature_std.fill_(curvature_std)


def _forced_sequence(
    model: Any, prepared: Any, target_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample's prompt + ``target_ids``: ids ``(1, L)``, multimodal token types ``(1, L)``, and
    the M-RoPE positions ``(3, 1, L)`` and rope delta that ``get_rope_index`` gives the sequence."""
    dev = model.device
    tgt = torch.tensor([target_ids], dtype=torch.long, device=dev)
    ids = torch.cat([prepared.input_ids.to(dev), tgt], dim=1)
    mm_prompt = prepared.mm_token_type_ids.to(dev)
    mm = torch.cat([mm_prompt, torch.zeros_like(tgt, dtype=mm_prompt.dtype)], 1)
    pos3, delta = model.vlm.model.get_rope_index(ids, mm, image_grid_thw=prepared.image_grid_thw.to(dev))
    return ids, mm, pos3, delta


def teacher_forced_prefix(model: Any, prepared: Any, target_ids: list[int]) -> tuple[Any, torch.Tensor]:
    """One VLM forward over prompt + ``target_ids`` (with gradients).

    Returns the :class:`~alpasim_policy.model.flow.Prefix` the expert attends to — the whole
    sequence's KV (``target_ids`` end with ``<|traj_future_start|>``, so every cached position is
    valid) and the first action position one past it plus the rope delta, as
    :meth:`AlpamayoR1.reason` builds it — and the logits ``(len(target_ids), V)`` that predict
    ``target_ids``.
    """
    from transformers import DynamicCache

    from alpasim_policy.model.expert import cache_kwarg
    from alpasim_policy.model.flow import Prefix

    dev = model.device
    ids, mm, pos3, delta = _forced_sequence(model, prepared, target_ids)
    length = ids.shape[1]
    grid = prepared.image_grid_thw.to(dev)
    pos_text = torch.arange(length, device=dev)[None]
    vision = model.vlm.model.get_image_features(
        prepared.pixel_values.to(dev, model.dtype), grid, return_dict=True
    )
    cache = DynamicCache(config=model.vlm.config.text_config)
    out = model.vlm(
        input_ids=ids,
        position_ids=torch.cat([pos_text[None], pos3], dim=0),
        use_cache=True,
        **{cache_kwarg(): cache},
        mm_encoder_outputs={"image": vision},
        image_grid_thw=grid,
        mm_token_type_ids=mm,
    )
    start = prepared.input_ids.shape[1]
    logits = out.logits[0, start - 1 : length - 1]
    offset = length + delta.reshape(-1)[:1].to(dev)  # one past <|traj_future_start|>, + rope delta
    prefix = Prefix(
        [layer.keys for layer in cache.layers],
        [layer.values for layer in cache.layers],
        torch.tensor([length], device=dev),
        offset.long(),
    )
    return prefix, logits


def teacher_forced_prefix_batch(
    model: Any, prepared: Sequence[Any], targets: Sequence[list[int]]
) -> tuple[Any, list[torch.Tensor]]:
    """:func:`teacher_forced_prefix` for several samples in one VLM forward (with gradients).

    Why: the tiny model's per-sample forward is a few hundred tokens, so a step spent most of its
    time in per-operator overhead, not arithmetic; one right-padded forward over the batch does
    the same work in far fewer, larger operations. Each row's M-RoPE positions are computed alone
    (:func:`get_rope_index` on its unpadded sequence), so every valid position, KV and logit is the
    one the single-sample forward gives; padding sits after a row's ``<|traj_future_start|>``,
    where the causal mask hides it from the row's own tokens and ``valid_len`` hides it from the
    expert. Returns the batched :class:`~alpasim_policy.model.flow.Prefix` (``Bp`` = batch) and,
    per sample, the logits ``(len(target), V)`` that predict its target."""
    from transformers import DynamicCache

    from alpasim_policy.model.expert import cache_kwarg
    from alpasim_policy.model.flow import Prefix

    dev = model.device
    pad = model.tokenizer.ids["pad"]
    seqs = [_forced_sequence(model, p, t) for p, t in zip(prepared, targets, strict=True)]
    lengths = [ids.shape[1] for ids, _, _, _ in seqs]
    b, length = len(seqs), max(lengths)
    ids = torch.full((b, length), pad, dtype=torch.long, device=dev)
    mm = torch.zeros((b, length), dtype=seqs[0][1].dtype, device=dev)
    pos3 = torch.zeros((3, b, length), dtype=seqs[0][2].dtype, device=dev)
    attention = torch.zeros((b, length), dtype=torch.long, device=dev)
    for i, (row_ids, row_mm, row_pos, _) in enumerate(seqs):
        n = lengths[i]
        ids[i, :n], mm[i, :n], attention[i, :n] = row_ids[0], row_mm[0], 1
        pos3[:, i, :n] = row_pos[:, 0]
        # padding continues the row's positions (never attended by a valid token)
        pos3[:, i, n:] = row_pos[:, 0, -1:] + torch.arange(1, length - n + 1, device=dev)
    pos_text = torch.arange(length, device=dev)[None].expand(b, -1)
    grid = torch.cat([p.image_grid_thw for p in prepared]).to(dev)
    pixels = torch.cat([p.pixel_values for p in prepared]).to(dev, model.dtype)
    vision = model.vlm.model.get_image_features(pixels, grid, return_dict=True)
    # logits only where a target is predicted: the LM head over every prompt position (and the
    # zeroed gradient of those logits) cost more than the whole text stack
    starts = [p.input_ids.shape[1] for p in prepared]
    first = min(starts) - 1
    cache = DynamicCache(config=model.vlm.config.text_config)
    out = model.vlm(
        input_ids=ids,
        attention_mask=attention,
        logits_to_keep=length - first,
        position_ids=torch.cat([pos_text[None], pos3], dim=0),
        use_cache=True,
        **{cache_kwarg(): cache},
        mm_encoder_outputs={"image": vision},
        image_grid_thw=grid,
        mm_token_type_ids=mm,
    )
    spans = enumerate(zip(starts, lengths, strict=True))
    logits = [out.logits[i, st - 1 - first : n - 1 - first] for i, (st, n) in spans]
    valid = torch.tensor(lengths, device=dev)
    deltas = torch.cat([delta.reshape(-1)[:1].to(dev) for _, _, _, delta in seqs]).long()
    prefix = Prefix(  # first action position one past <|traj_future_start|>, + rope delta
        [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], valid, valid + deltas
    )
    return prefix, logits


def flow_velocity(model: Any, prefix: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The expert's velocity ``(K, N, 2)`` at noisy actions ``x_t`` and times ``t`` ``(K,)``, with
    gradients; the same cache, mask and positions as one step of ``DynamicCacheSampler``."""
    from transformers import DynamicCache

    from alpasim_policy.model.expert import expert_forward_dynamic

    dev = model.device
    k, n, _ = x_t.shape
    dtype = model.dtype
    rep = k // prefix.batch
    cache = DynamicCache(config=model.expert.config)
    for i, (kk, vv) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
        cache.update(kk.repeat_interleave(rep, 0).to(dtype), vv.repeat_interleave(rep, 0).to(dtype), i)
    p = prefix.length
    valid = prefix.valid_len.repeat_interleave(rep).to(dev)
    mask = torch.zeros((k, 1, n, p + n), dtype=dtype, device=dev)
    pad = torch.arange(p, device=dev)[None, :] >= valid[:, None]
    mask[:, 0, :, :p] = torch.where(pad, torch.finfo(dtype).min, 0.0)[:, None, :].to(dtype)
    pos = prefix.rope_offset.repeat_interleave(rep).to(dev)[:, None] + torch.arange(n, device=dev)[None]
    emb = model.action_in_proj(x_t, t)
    h = expert_forward_dynamic(model.expert, emb, pos[None].expand(3, -1, -1), cache, mask, p)
    return model.action_out_proj(h).float()


def sample_losses(
    model: Any, sample: Sample, generator: torch.Generator, flow_samples: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(language-model loss, flow-matching loss) of one sample, with gradients."""
    dev = model.device
    prefix, logits = teacher_forced_prefix(model, sample.prepared, sample.target_ids)
    tgt = torch.tensor(sample.target_ids, dtype=torch.long, device=dev)
    lm = F.cross_entropy(logits.float(), tgt)
    k = flow_samples
    n = model.config.n_waypoints
    actions = sample.actions.to(dev)[None].expand(k, -1, -1)
    noise = torch.randn((k, n, 2), generator=generator).to(dev)
    t = torch.rand((k,), generator=generator).to(dev)
    x_t = (1.0 - t)[:, None, None] * noise + t[:, None, None] * actions
    vel = flow_velocity(model, prefix, x_t, t)
    w = sample.valid.to(dev, torch.float32)[None, :, None]
    flow = ((vel - (actions - noise)) ** 2 * w).sum() / (w.sum() * 2 * k).clamp(min=1.0)
    return lm, flow


def patch_embed_as_matmul(model: Any) -> None:
    """Compute the vision patch embedding of ``model`` as one matrix product (in place).

    The patch embedding is a Conv3d whose stride equals its kernel, so it is exactly a linear map of
    each flattened ``(channels, frames, patch, patch)`` patch — the order the processor flattens
    pixels in and the order the conv weight flattens in. On CPU the conv's backward (the weight
    gradient over every patch of the batch) took a tenth of a training step; the product's takes
    a millisecond. Same weights and state dict; only how the forward is computed changes."""
    embed = model.vlm.model.visual.patch_embed
    proj = embed.proj
    if tuple(proj.stride) != tuple(proj.kernel_size) or any(proj.padding):
        raise ValueError("patch embedding is not a non-overlapping conv; cannot compute it as a product")

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        w = proj.weight
        flat = hidden_states.reshape(-1, w[0].numel()).to(w.dtype)
        return F.linear(flat, w.reshape(w.shape[0], -1), proj.bias)

    embed.forward = forward


def batch_losses(
    model: Any, samples: Sequence[Sample], generator: torch.Generator, flow_samples: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (language-model, flow-matching) losses ``(B,)``, ``(B,)`` of ``samples`` from one
    padded forward (:func:`teacher_forced_prefix_batch`) and one expert forward over all their flow
    samples. Noise and times are drawn from ``generator`` sample by sample in the order
    :func:`sample_losses` draws them, so both give the same losses up to float rounding."""
    dev = model.device
    prefix, logits = teacher_forced_prefix_batch(
        model, [s.prepared for s in samples], [s.target_ids for s in samples]
    )
    n = model.config.n_waypoints
    k = flow_samples
    lm, noises, times = [], [], []
    for s, lg in zip(samples, logits, strict=True):
        lm.append(F.cross_entropy(lg.float(), torch.tensor(s.target_ids, dtype=torch.long, device=dev)))
        noises.append(torch.randn((k, n, 2), generator=generator))
        times.append(torch.rand((k,), generator=generator))
    actions = torch.stack([s.actions for s in samples]).to(dev).repeat_interleave(k, 0)
    noise = torch.cat(noises).to(dev)
    t = torch.cat(times).to(dev)
    x_t = (1.0 - t)[:, None, None] * noise + t[:, None, None] * actions
    vel = flow_velocity(model, prefix, x_t, t)
    err = ((vel - (actions - noise)) ** 2).reshape(len(samples), k, n, 2)
    w = torch.stack([s.valid for s in samples]).to(dev, torch.float32)[:, None, :, None]
    flow = (err * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * 2 * k).clamp(min=1.0)
    return torch.stack(lm), flow


def _step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


def optimizer_step(
    model: Any,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: Sequence[Sample],
    generator: torch.Generator,
    cfg: ImitationConfig,
) -> tuple[float, float]:
    """One optimizer step on ``batch`` (losses averaged over it, gradients clipped); returns the
    summed (LM, flow) losses. ``cfg.batched``: one padded forward (:func:`batch_losses`), else one
    forward and backward per sample (:func:`sample_losses`)."""
    opt.zero_grad(set_to_none=True)
    lm_sum = flow_sum = 0.0
    if cfg.batched:
        lm, flow = batch_losses(model, batch, generator, cfg.flow_samples)
        loss = (cfg.lm_weight * lm.sum() + cfg.flow_weight * flow.sum()) / cfg.batch
        loss.backward()
        lm_sum, flow_sum = lm.detach().sum().item(), flow.detach().sum().item()
    else:
        for sample in batch:
            lm, flow = sample_losses(model, sample, generator, cfg.flow_samples)
            loss = (cfg.lm_weight * lm + cfg.flow_weight * flow) / cfg.batch
            loss.backward()
            lm_sum += lm.item()
            flow_sum += flow.item()
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return lm_sum, flow_sum


def _save_checkpoint(
    model: Any, opt: torch.optim.Optimizer, cfg: ImitationConfig, step: int, out: Path, ema: Any = None
) -> Path:
    """``out/checkpoint/``, swapped in whole (see :func:`~alpasim_policy.training.run_files.save_checkpoint`):
    the averaged weights when ``ema`` is given (the raw ones beside them), else the raw ones."""
    state = {"step": step, "config": asdict(cfg)}
    if ema is None:
        return save_checkpoint(model, opt, out, state)
    return save_checkpoint(ema.module, opt, out, state, raw=model)


def _write_log(rows: list[dict[str, Any]], out: Path) -> None:
    write_csv_log(rows, CSV_FIELDS, out / "log.csv")
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "lm_loss", "flow_loss"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("imitation training")
    fig.tight_layout()
    save_figure(fig, out / "loss.png")


def _read_log(out: Path, upto: int) -> list[dict[str, Any]]:
    return read_csv_log(out / "log.csv", upto)


def train_imitation(
    data: Path | Sequence[Path],
    out: Path,
    cfg: ImitationConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run the imitation stage; returns a summary (also ``out/summary.json``).

    ``stop_after`` ends the run after that many steps *without* the final save of a finished run
    (used to test that ``resume`` continues exactly)."""
    from tqdm import tqdm

    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    if cfg.steps < 1 or cfg.batch < 1 or cfg.save_every < 1 or cfg.flow_samples < 1:
        raise ConfigError("--steps, --batch, --save-every and flow samples must be >= 1")
    if cfg.action_stats not in ("data", "preset"):
        raise ConfigError(f"--action-stats {cfg.action_stats!r}: choose 'data' or 'preset'")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError(f"--ema {cfg.ema}: a decay in [0, 1) (0 = no average), e.g. 0.999")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    start = 0
    if resume and (ckpt / "training_state.json").is_file():
        state = json.loads((ckpt / "training_state.json").read_text())
        start = int(state["step"])
        saved_ema = float(state["config"].get("ema", 0.0))
        if saved_ema != cfg.ema:
            raise ConfigError(f"--resume: {ckpt} was trained with --ema {saved_ema}, not {cfg.ema}")
        model = AlpamayoR1.from_pretrained(ckpt)  # the averaged weights when cfg.ema
    elif cfg.init:
        if resume:
            print(f"--resume: no checkpoint in {ckpt}; starting from step 0 with --init {cfg.init}")
        init = Path(cfg.init)
        if not (init / "config.json").is_file():
            raise ConfigError(f"--init {init}: not a checkpoint folder (no config.json)")
        if cfg.model_options:
            raise ConfigError("--model-option changes a model trained from scratch; --init keeps its checkpoint's config")
        torch.manual_seed(cfg.seed)
        model = AlpamayoR1.from_pretrained(init)  # the averaged weights of an --ema checkpoint
    else:
        if resume:
            print(f"--resume: no checkpoint in {ckpt}; starting from step 0")
        torch.manual_seed(cfg.seed)
        model = AlpamayoR1.create(AlpamayoConfig.from_preset(cfg.preset, **cfg.model_options))
    model.train()
    # a resumed run keeps its checkpoint's action statistics, a fine-tuned one its --init's (the
    # weights were trained on those normalised actions)
    fit = start == 0 and cfg.action_stats == "data" and not cfg.init
    samples = prepare_samples(
        model, iter_shards(data, model.config.frame_stride), cfg.fit_smooth, fit_stats=fit,
        history_dropout=cfg.history_dropout, seed=cfg.seed,
    )  # fmt: skip
    ema = None
    if cfg.ema:
        from safetensors.torch import load_model
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # a copy of the model as it stands (fresh: its first update copies the first step's
        # weights; resumed: the saved average), taken before the patch below so the copy keeps
        # its own forward; buffers (the action statistics) are set already and never change
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=False)
        if start:
            ema.n_averaged.fill_(start)
            load_model(model, str(ckpt / RAW_WEIGHTS))
    if cfg.batched:
        patch_embed_as_matmul(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if start:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    weights = speed_balanced_weights([p.prepared.v0 for p in samples], cfg.speed_balance)
    rows = _read_log(out, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc="imitation", disable=not progress)
    t_run = time.perf_counter()
    step = start
    for step in bar:
        t0 = time.perf_counter()
        rng, gen = _step_generators(cfg.seed, step)
        idx = rng.choice(len(samples), size=cfg.batch, replace=len(samples) < cfg.batch, p=weights)
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        lm_sum, flow_sum = optimizer_step(model, opt, params, [samples[int(i)] for i in idx], gen, cfg)
        if ema is not None:
            ema.update_parameters(model)
        row = {
            "step": step + 1,
            "loss": (cfg.lm_weight * lm_sum + cfg.flow_weight * flow_sum) / cfg.batch,
            "lm_loss": lm_sum / cfg.batch,
            "flow_loss": flow_sum / cfg.batch,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        bar.set_postfix(lm=f"{row['lm_loss']:.3f}", flow=f"{row['flow_loss']:.3f}")
        done = step + 1
        if done % cfg.save_every == 0 or done == cfg.steps:
            _save_checkpoint(model, opt, cfg, done, out, ema)
            _write_log(rows, out)
    step = end
    _write_log(rows, out)
    summary = {
        "steps": step,
        "samples": len(samples),
        "seconds": time.perf_counter() - t_run,
        "final": rows[-1] if rows else None,
        "config": asdict(cfg),
        "checkpoint": str(ckpt),
    }
    atomic_write_json(out / "summary.json", summary)
    model.eval()
    return summary


@torch.no_grad()
def evaluate_losses(
    model: Any, samples: list[Sample], seed: int = 0, flow_samples: int = 4
) -> tuple[float, float]:
    """Mean (LM, flow) losses over ``samples`` with fixed noise and times (for comparing weights)."""
    gen = torch.Generator().manual_seed(seed)
    lm = flow = 0.0
    for s in samples:
        a, b = sample_losses(model, s, gen, flow_samples)
        lm += float(a)
        flow += float(b)
    return lm / len(samples), flow / len(samples)
