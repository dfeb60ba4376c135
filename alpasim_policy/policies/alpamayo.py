"""``alpamayo``: the Alpamayo-R1 model driving in the closed loop, one model call per 0.1 s tick.

What this adapter does each tick (``act``):

1. *Frames.* It keeps the last ``F`` frames (``F`` = the model's ``frames``, 4 for Alpamayo-R1)
   of every camera of the ``alpamayo4`` rig, one per tick, i.e. 0.1 s apart (the model's
   ``frame_stride`` ticks apart where that is above 1), oldest first. At the
   start of a rollout (fewer than ``F`` frames seen) the oldest frame is repeated, so the first
   tick sees ``F`` copies of the first image. If the env skips steps (the observation's ``step``
   jumps by more than one) the last frame is held for the missing steps, so the spacing stays
   0.1 s. Camera order is the rig's (the model's camera-index order).
2. *Model inputs.* ``ego_history`` (16 x (x, y, heading, speed), rig frame, oldest first) goes in
   as is; the plan's initial speed v0 is estimated from that history as NVlabs does
   (``v0=history``, default) or taken from the measured ``speed`` (``v0=measured``); ``command``
   (left / straight / right, from the route) becomes a navigation sentence in the prompt.
3. *One model call* (:meth:`AlpamayoR1.drive`) -> K trajectories (K, 64, 3) in the rig frame, the
   chain-of-causation text(s) and per-stage timings. The model's per-frame vision cache is on:
   the ``F - 1`` frames per camera already seen at the last tick are not preprocessed or encoded
   again (exact: the same outputs, :mod:`alpasim_policy.model.vision_cache`).
4. *Selection* (:mod:`alpasim_policy.policies.selection`): ``first`` (AlpaSim), ``medoid``,
   ``scored`` (t0-only EPDMS) or ``consistent`` (the first sample doing what its CoC says). The
   chosen trajectory is returned with the reasoning (the chosen sample's own text in ``multi``
   mode) and all K samples in ``PolicyOutput.samples``.

Options (keyword arguments; strings accepted, since ``--policy-option key=value`` passes them):
``preset`` tiny | small | alpamayo-r1-10b (default tiny), ``weights`` a local checkpoint folder,
NVlabs' format (as ``save_pretrained`` of NVlabs' code writes it, any size) or this package's
(:meth:`AlpamayoR1.from_pretrained`); by default the checkpoint shipped for the preset (the
``tiny`` one, trained by ``alpasim-policy train``, see ``weights/README.md``) and random weights for
presets without one; ``weights=random`` gives random weights, seeded, of the preset's size;
``base_vlm_dir`` the base Qwen3-VL folder when the checkpoint names a Hub id not in the local
cache), ``dtype`` float32 | bfloat16 | float16 (default: the checkpoint's / the preset's),
``v0`` history | measured, ``samples`` K (6),
``reasoning`` single | multi, ``diffusion`` graph | eager | lean | dynamic, ``select`` first | medoid |
scored | consistent, ``device`` cpu | cuda, ``seed`` (0), ``cot_tokens`` (force the CoC length),
``max_cot_tokens``, ``temperature``, ``noise`` fresh | held (the flow's starting noise: drawn anew each
tick, as NVlabs' code does, or drawn once per rollout and reused), ``noise_scale`` in [0, 1] (1:
unit Gaussian, NVlabs'; smaller narrows the K samples toward the flow's centre; 0 makes them
identical and the plan a deterministic function of the inputs), ``speculative`` gamma (0 = off; > 0 drafts up to gamma CoC
tokens per target forward, single reasoning only: greedy output identical, sampled output the same
distribution), ``draft`` a draft-model folder for it (drafts: recall of the episode's previous
CoCs first, then the draft model, or lookup in the prompt without one), ``threads`` (torch CPU threads, process-wide; default: torch's
choice), ``camera_width`` / ``camera_height`` (the resolution this policy asks the env to render,
``camera_size``; other sizes are area-resampled to it), and the real-time budget ``deadline_ms`` +
``latency_mode`` ignore | delay + ``assumed_latency_ms`` (see :mod:`alpasim_policy.policies.deadline`).
Bad values raise :class:`ConfigError` naming the option.

Deadline default. Without ``deadline_ms`` the plan is always the model's (AlpaSim's behaviour and
reproducible run to run); the wall time is still measured and ``extra["deadline_miss"]`` says
whether it exceeded 100 ms, so ``eval`` reports the miss rate. With ``deadline_ms=100`` a late
plan is dropped (``ignore``) or takes effect late (``delay``), which makes the score depend on
the machine's speed, as on a car.

Determinism: random weights are initialised from ``seed``; sampling (noise, multi-mode CoC
sampling) uses a generator seeded from ``seed`` and the rollout's reset seed, so a rollout with
the same seeds is identical (on one device and thread count) unless a deadline is enforced.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.base import PolicyOutput
from alpasim_policy.policies.options import parse_choice, parse_int, parse_number
from alpasim_policy.policies.selection import SampleSelector, parse_select

PRESETS = ("tiny", "small", "alpamayo-r1-10b")
REASONING_MODES = ("single", "multi")
DIFFUSION_MODES = ("graph", "eager", "lean", "dynamic")
DEVICES = ("cpu", "cuda")
# ``fresh``: new flow noise every tick (NVlabs' code draws it in each call); ``held``: one draw per
# rollout, reused every tick, so consecutive plans differ only as the inputs do (the flow's
# integration is a deterministic map of noise and prefix)
NOISE_MODES = ("fresh", "held")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DEADLINE_S = 0.1  # one 10 Hz tick
#: camera resolution asked of the env per preset (width, height); the model resizes to its input
DEFAULT_CAMERA_SIZE = {"tiny": (128, 72), "small": (384, 216), "alpamayo-r1-10b": (1920, 1080)}


#: Random-initialisation spellings of the ``weights`` option (``none`` / ``null`` / empty: the
#: behaviour before a checkpoint was shipped).
RANDOM_WEIGHTS = ("random", "none", "null", "")


def shipped_weights(preset: str) -> Path | None:
    """The checkpoint shipped with the package for ``preset`` (only ``tiny`` has one), else None.

    It lives in the package data (``weights/alpamayo-<preset>/``, see ``alpasim_policy.resources``)
    and was trained by the package's own ``alpasim-policy train``; ``weights/README.md`` says how.
    """
    from alpasim_policy.resources import data_dir

    folder = data_dir("weights") / f"alpamayo-{preset}"
    return folder if (folder / "config.json").is_file() else None


def resolve_weights(preset: str, weights: str | Path | None) -> Path | None:
    """The ``weights`` option -> a checkpoint folder, or None for seeded random weights.

    Default (None): the shipped checkpoint of the preset when there is one (``tiny``), else random;
    ``random`` (or ``none``): random weights of the preset's size, seeded by ``seed``.
    """
    if weights is None:
        return shipped_weights(preset)
    if str(weights).strip().lower() in RANDOM_WEIGHTS:
        return None
    path = Path(str(weights))
    if not path.is_dir():
        raise ConfigError(f"option 'weights': {path} is not a directory (or 'random' for random weights)")
    return path


class FrameBuffer:
    """The last ``frames`` images of each camera, ``stride`` ticks (``stride`` x 0.1 s) apart.

    It holds the last ``(frames - 1) * stride + 1`` ticks' images and hands out every
    ``stride``-th, newest included (see the module docstring for padding and skipped steps)."""

    def __init__(self, frames: int, stride: int = 1):
        if stride < 1:
            raise ConfigError(f"frame stride {stride}: must be >= 1")
        self.frames = frames
        self.stride = stride
        self.span = (frames - 1) * stride + 1  # ticks held
        self.reset()

    def reset(self) -> None:
        self._buf: dict[str, deque] = {}
        self._last_step: int | None = None

    def push(self, cameras: dict[str, np.ndarray], step: int, order: list[str]) -> np.ndarray:
        """Add this tick's images; return (C, F, 3, H, W) uint8, cameras in ``order``, frames oldest first."""
        if self._last_step is not None and step <= self._last_step:
            self.reset()  # a new rollout without reset(): start over
        gap = 1 if self._last_step is None else step - self._last_step
        for name in order:
            img = np.asarray(cameras[name])
            if img.ndim != 3 or img.shape[2] != 3:
                raise ConfigError(f"observation 'cameras/{name}': expected (H, W, 3) RGB, got {img.shape}")
            q = self._buf.setdefault(name, deque(maxlen=self.span))
            if q and q[-1].shape != img.shape:
                raise ConfigError(
                    f"observation 'cameras/{name}': image size changed from {q[-1].shape} to {img.shape}"
                )
            for _ in range(min(gap - 1, self.span)):  # hold the last frame over skipped steps
                q.append(q[-1])
            q.append(img)
        self._last_step = step
        out = []
        for name in order:
            q = list(self._buf[name])
            q = [q[0]] * (self.span - len(q)) + q  # pad the start by repeating the first frame
            out.append(np.stack(q[:: self.stride]))  # the newest is q[-1] = q[span - 1]: kept
        return np.ascontiguousarray(np.stack(out).transpose(0, 1, 4, 2, 3))  # (C, F, 3, H, W)


class AlpamayoCore:
    """The model policy without a deadline wrapper (see :class:`AlpamayoPolicy`)."""

    name = "alpamayo"
    camera_preset: str | None = "alpamayo4"

    def __init__(
        self,
        preset: str = "tiny",
        weights: str | None = None,
        dtype: str | None = None,
        base_vlm_dir: str | None = None,
        v0: str = "history",
        samples: int | str = 6,
        reasoning: str = "single",
        diffusion: str = "graph",
        select: str = "first",
        device: str = "cpu",
        seed: int | str = 0,
        cot_tokens: int | str | None = None,
        max_cot_tokens: int | str | None = None,
        temperature: float | str | None = None,
        camera_width: int | str | None = None,
        camera_height: int | str | None = None,
        threads: int | str | None = None,
        speculative: int | str = 0,
        draft: str | None = None,
        noise: str = "fresh",
        noise_scale: float | str = 1.0,
    ):
        self.preset = parse_choice("preset", preset, PRESETS)
        self.samples = parse_int("samples", samples, minimum=1)
        self.reasoning = parse_choice("reasoning", reasoning, REASONING_MODES)
        self.diffusion = parse_choice("diffusion", diffusion, DIFFUSION_MODES)
        self.select = parse_select(select)
        self.device = parse_choice("device", device, DEVICES)
        self.seed = parse_int("seed", seed)
        self.cot_tokens = parse_int("cot_tokens", cot_tokens, minimum=1, allow_none=True)
        self.max_cot_tokens = parse_int("max_cot_tokens", max_cot_tokens, minimum=1, allow_none=True)
        self.temperature = parse_number("temperature", temperature, allow_none=True)
        self.speculative = parse_int("speculative", speculative, minimum=0)
        if self.speculative and self.reasoning != "single":
            raise ConfigError("option 'speculative': needs reasoning=single (one CoC per tick)")
        self.draft = None if draft in (None, "", "none", "null") else Path(str(draft))
        if self.draft is not None and not self.draft.is_dir():
            raise ConfigError(f"option 'draft': {self.draft} is not a directory")
        w, h = DEFAULT_CAMERA_SIZE[self.preset]
        self.camera_size = (
            parse_int("camera_width", camera_width if camera_width is not None else w, minimum=16),
            parse_int("camera_height", camera_height if camera_height is not None else h, minimum=16),
        )
        self.weights = resolve_weights(self.preset, weights)
        self.base_vlm_dir = None if base_vlm_dir in (None, "", "none", "null") else Path(str(base_vlm_dir))
        self.dtype = None if dtype in (None, "", "none", "null") else parse_choice("dtype", dtype, DTYPES)
        self.v0 = parse_choice("v0", v0, ("history", "measured"))
        self.noise = parse_choice("noise", noise, NOISE_MODES)
        self.noise_scale = parse_number("noise_scale", noise_scale)
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ConfigError(f"option 'noise_scale': must be in [0, 1], got {self.noise_scale}")
        self.threads = parse_int("threads", threads, minimum=1, allow_none=True)
        import torch

        if self.threads is not None:
            # process-wide: torch has one intra-op pool. On a shared or small machine more threads
            # than free cores make every op wait for stragglers (10x slower ticks were measured).
            torch.set_num_threads(self.threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("option 'device': 'cuda' requested but no CUDA device is available")
        self.model = self._build_model()
        # F - 1 of each camera's F frames were encoded at the last tick: reuse their vision
        # features (exact, content-keyed; alpasim_policy/model/vision_cache.py)
        self.model.vision_cache = True
        if self.speculative or self.draft is not None:
            from alpasim_policy.model.speculative import FallbackDrafter, NGramDrafter

            # recall of this episode's previous CoCs first (free; forgotten at reset so runs stay
            # independent of scene order), then the draft model, else lookup in the prompt
            if self.draft is not None:
                recall = NGramDrafter(memory=4, prompt=False)
                self.model.drafter = FallbackDrafter(recall, _load_drafter(self.draft, self.device))
            else:
                self.model.drafter = NGramDrafter(memory=4)
        self.frames = FrameBuffer(self.model.config.frames, self.model.config.frame_stride)
        self.selector = SampleSelector(self.select)
        self._camera_order: list[str] | None = None
        self._generator = torch.Generator().manual_seed(self.seed)
        self._held_noise: Any = None
        self._warm = False

    def _build_model(self):  # noqa: ANN202 - torch types imported lazily
        import torch

        from alpasim_policy.model import AlpamayoConfig, AlpamayoR1

        if self.weights is not None:
            # the folder's config.json says what the model is; the preset only names a bare folder
            has_config = (self.weights / "config.json").exists()
            return AlpamayoR1.from_pretrained(
                self.weights,
                preset=None if has_config else self.preset,
                device=self.device,
                dtype=self.dtype,
                base_vlm_dir=self.base_vlm_dir,
            )
        overrides = {} if self.dtype is None else {"dtype": self.dtype}
        with torch.random.fork_rng(devices=[]):  # random weights, reproducible from the seed
            torch.manual_seed(self.seed)
            model = AlpamayoR1.create(AlpamayoConfig.from_preset(self.preset, **overrides))
        return model.to(self.device)

    # ------------------------------------------------------------------ protocol

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        import torch

        self.frames.reset()
        self._camera_order = list(camera_rig.names) if camera_rig is not None else None
        state = np.random.SeedSequence([self.seed, 0 if seed is None else int(seed)]).generate_state(2)
        self._generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        self._held_noise = None  # a new rollout draws its own at its first tick
        if self.select == "scored":
            self.selector.reset(scene)
        if not self._warm:
            self._warmup()
        forget = getattr(self.model.drafter, "forget", None)
        if callable(forget):  # recalled CoCs of the last episode (and the warm-up)
            forget()

    def _warmup(self) -> None:
        """One throw-away tick so one-time costs (allocation, static buffers) are not in tick 1's latency."""
        import torch

        cfg = self.model.config
        w, h = self.camera_size  # what _images hands the model, whatever the env renders
        images = np.zeros((cfg.cameras, cfg.frames, 3, h, w), np.uint8)
        history = np.zeros((cfg.history_steps, 4))
        self.model.drive(images, history, 0.0, 1, num_samples=self.samples, reasoning=self.reasoning,
                         diffusion=self.diffusion, cot_tokens=self.cot_tokens or 4,
                         generator=torch.Generator().manual_seed(0), speculative=self.speculative)  # fmt: skip
        self._warm = True

    def _images(self, observation: dict[str, Any]) -> np.ndarray:
        cams = observation.get("cameras")
        if not cams:
            raise ConfigError(
                "policy 'alpamayo': the observation has no camera images; run the env with cameras "
                f"enabled (preset {self.camera_preset!r}, e.g. {self.camera_size[0]}x{self.camera_size[1]})"
            )
        order = self._camera_order or list(cams)
        missing = [n for n in order if n not in cams]
        if missing:
            raise ConfigError(f"observation 'cameras': missing {missing}; the model needs {order}")
        need = self.model.config.cameras
        if len(order) != need:
            raise ConfigError(
                f"observation 'cameras': {len(order)} cameras ({order}), preset {self.preset!r} needs {need}"
            )
        w, h = self.camera_size
        sized = {}
        for n in order:
            img = np.asarray(cams[n])
            if img.ndim == 3 and img.shape[:2] != (h, w):
                # the env may render larger than this preset needs (its default is 1920x1080): area
                # downsampling here is far cheaper than the model resizing 4 x F full frames each tick
                import cv2

                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            sized[n] = img
        return self.frames.push(sized, int(np.asarray(observation["step"])), order)

    def _tick_noise(self) -> Any:
        """The flow's starting noise for this tick: None (the model draws it) or the rollout's."""
        import torch

        if self.noise == "fresh" and self.noise_scale == 1.0:
            return None
        shape = (self.samples, self.model.config.n_waypoints, 2)
        if self.noise == "fresh":
            return torch.randn(shape, generator=self._generator) * self.noise_scale
        if self._held_noise is None:
            self._held_noise = torch.randn(shape, generator=self._generator) * self.noise_scale
        return self._held_noise

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        t0 = time.perf_counter()
        images = self._images(observation)
        out = self.model.drive(
            images,
            np.asarray(observation["ego_history"], dtype=np.float64)[:, :3],
            float(np.asarray(observation["speed"])) if self.v0 == "measured" else None,
            int(np.asarray(observation.get("command", 1))),
            num_samples=self.samples,
            reasoning=self.reasoning,
            diffusion=self.diffusion,
            cot_tokens=self.cot_tokens,
            max_cot_tokens=self.max_cot_tokens,
            temperature=self.temperature,
            generator=self._generator,
            noise=self._tick_noise(),
            speculative=self.speculative,
        )
        t1 = time.perf_counter()
        samples = np.asarray(out.trajectories, dtype=np.float64)
        chosen = self.selector.select(samples, observation, list(out.reasoning), float(out.v0))
        t2 = time.perf_counter()
        texts = out.reasoning
        reasoning = texts[chosen.index] if len(texts) == len(samples) and len(texts) > 1 else texts[0]
        timings = {k: float(v) for k, v in out.timings.items()}
        timings["model"] = t1 - t0
        timings["selection"] = t2 - t1
        timings["frames"] = timings["model"] - timings.get("total", 0.0)
        extra = {
            "timings": timings,
            "selected_index": chosen.index,
            "selection": chosen.method,
            "selection_scores": None if chosen.scores is None else chosen.scores.tolist(),
            "reasoning_all": list(texts) if len(texts) > 1 else None,
            "cot_tokens": out.stats.get("cot_tokens"),
            "v0": out.v0,
        }
        if self.speculative:  # drafts proposed / accepted this tick
            extra["draft_proposed"] = out.stats.get("draft_proposed")
            extra["draft_accepted"] = out.stats.get("draft_accepted")
        return PolicyOutput(
            trajectory=samples[chosen.index], reasoning=reasoning, samples=samples, extra=extra
        )


class AlpamayoPolicy:
    """The ``alpamayo`` policy: :class:`AlpamayoCore`, optionally under a real-time deadline."""

    name = "alpamayo"
    camera_preset: str | None = "alpamayo4"

    def __init__(
        self,
        *args: Any,
        deadline_ms: float | str | None = None,
        latency_mode: str = "ignore",
        assumed_latency_ms: float | str | None = None,
        **options: Any,
    ):
        """The model options (``preset``, ``samples``, ...) are :class:`AlpamayoCore`'s, passed on
        unchanged; the three deadline options are this wrapper's (see ``__signature__`` below)."""
        from alpasim_policy.policies.deadline import DeadlinePolicy, parse_latency_mode

        latency_mode = parse_latency_mode(latency_mode)
        deadline = parse_number("deadline_ms", deadline_ms, allow_none=True)
        assumed = parse_number("assumed_latency_ms", assumed_latency_ms, allow_none=True)
        if assumed is not None and deadline is None:
            raise ConfigError("option 'assumed_latency_ms': only meaningful with 'deadline_ms'")
        self.core = AlpamayoCore(*args, **options)
        self.camera_size = self.core.camera_size
        self.deadline_s = DEFAULT_DEADLINE_S if deadline is None else deadline / 1000.0
        self.enforce_deadline = deadline is not None
        self.wrapper = (
            DeadlinePolicy(
                self.core, self.deadline_s, latency_mode, None if assumed is None else assumed / 1000.0
            )  # fmt: skip
            if self.enforce_deadline
            else None
        )

    @property
    def model(self):  # noqa: ANN201
        return self.core.model

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        (self.wrapper or self.core).reset(seed=seed, scene=scene, camera_rig=camera_rig)

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        if self.wrapper is not None:
            return self.wrapper.act(observation)
        t0 = time.perf_counter()
        out = self.core.act(observation)
        latency = time.perf_counter() - t0
        out.extra.update(
            latency_s=latency,
            deadline_s=self.deadline_s,
            deadline_miss=bool(latency > self.deadline_s),
            plan_source="new",
            deadline_enforced=False,
        )
        return out


def _load_drafter(path: Path, device: str):  # noqa: ANN202 - a Drafter
    """The draft model in ``path`` as a speculative drafter (``modeling_draft.load_drafter``)."""
    from alpasim_policy.model.modeling_draft import load_drafter

    return load_drafter(path, device)


def _policy_signature() -> inspect.Signature:
    """AlpamayoCore's options followed by the deadline options: the policy registry reads a
    constructor's signature to reject unknown ``--policy-option`` keys and to route plain keys to
    the policies that take them, so AlpamayoPolicy must show every option it accepts."""
    core = [p for name, p in inspect.signature(AlpamayoCore).parameters.items() if name != "self"]
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(AlpamayoPolicy.__init__).parameters.values()
        if p.kind == inspect.Parameter.KEYWORD_ONLY
    ]
    return inspect.Signature([*core, *own])


AlpamayoPolicy.__signature__ = _policy_signature()
