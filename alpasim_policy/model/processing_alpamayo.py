"""Inputs of the Alpamayo-R1 model: validation, Qwen3-VL patchifying, the chat prompt, history tokens.

Why a processor apart from the model (as transformers' ``processing_qwen3_vl.py``): turning camera
frames and an ego history into ``input_ids`` / ``pixel_values`` is plain data work with its own
errors (:class:`ModelInputError` naming the bad input), independent of the weights; the model
(``modeling_alpamayo.py``) only sees tensors.

* Images: (C*F, 3, H, W) or (C, F, 3, H, W), channel-last accepted, uint8 or float in [0, 1];
  resized to ``config.image_hw`` and cut into Qwen3-VL patches here, or handed to a real Qwen3-VL
  image processor (``load_image_processor``; a checkpoint's base-VLM folder provides one).
* History: (T, 3) x, y, heading (or (T, 4) with speed), oldest first, 0.1 s apart, re-expressed in
  the pose of its last row (the rig frame at "now"); optional heights (T,).
* Prompt: NVlabs' chat layout (system, user: images, ``<|traj_history_start|>`` + 48 history
  tokens + ``<|traj_history_end|>``, task text; assistant: ``<|cot_start|>``), with an optional
  navigation sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alpasim_policy.errors import ConfigError, ModelInputError
from alpasim_policy.model.action_space import estimate_v0
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.tokenizer import (
    SYSTEM_PROMPT,
    TASK_PROMPT,
    AlpamayoTokenizer,
    DeltaTrajectoryTokenizer,
)

COMMAND_TEXT = {0: "turn left", 1: "go straight", 2: "turn right"}
IMAGE_MEAN = 0.5  # Qwen3-VL normalises every channel with mean 0.5, std 0.5
IMAGE_STD = 0.5


@dataclass
class PreparedInputs:
    input_ids: torch.Tensor  # (1, L)
    mm_token_type_ids: torch.Tensor  # (1, L)
    pixel_values: torch.Tensor | None  # (patches, C * tp * ps * ps); None when the vision came from the cache
    image_grid_thw: torch.Tensor  # (N, 3)
    v0: float
    z: float = 0.0  # height carried into the plan (last history z, as NVlabs)
    history_ids: np.ndarray | None = None  # (3 T,) delta-tokenizer bins of the history


class AlpamayoProcessor:
    """Turns one tick's raw inputs into :class:`PreparedInputs` (call it like a transformers processor)."""

    def __init__(self, config: AlpamayoConfig, tokenizer: AlpamayoTokenizer, image_processor: Any = None):
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.hist_tokenizer = DeltaTrajectoryTokenizer(
            config.hist_bins, config.hist_xyz_min, config.hist_xyz_max
        )

    def load_image_processor(self, directory: str | Path, **kwargs: Any) -> None:
        """Use a real Qwen3-VL image processor from a local directory (resizing by its pixel budget);
        ``kwargs`` (e.g. NVlabs' ``min_pixels`` / ``max_pixels``) override its saved settings."""
        from transformers import AutoImageProcessor

        try:
            self.image_processor = AutoImageProcessor.from_pretrained(
                str(directory), local_files_only=True, **kwargs
            )
        except Exception as e:  # many exception types for a bad directory
            raise ConfigError(f"{directory}: cannot load image processor: {e}") from e

    def _validate_images(self, images: Any) -> torch.Tensor:
        cfg = self.config
        t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if t.ndim == 5:
            if t.shape[0] != cfg.cameras or t.shape[1] != cfg.frames:
                raise ModelInputError(
                    f"images: expected (C={cfg.cameras}, F={cfg.frames}, 3, H, W) or (C, F, H, W, 3), got {tuple(t.shape)}"
                )
            t = t.reshape(-1, *t.shape[2:])
        if t.ndim == 4 and t.shape[1] != 3 and t.shape[-1] == 3:
            t = t.permute(0, 3, 1, 2)  # channel-last (N, H, W, 3), as cameras deliver them
        if t.ndim != 4 or t.shape[1] != 3:
            raise ModelInputError(
                f"images: expected (C*F={cfg.num_images}, 3, H, W) RGB, got shape {tuple(t.shape)}"
            )
        if t.shape[0] != cfg.num_images:
            raise ModelInputError(
                f"images: got {t.shape[0]} images, the model needs cameras x frames = "
                f"{cfg.cameras} x {cfg.frames} = {cfg.num_images}"
            )
        if t.shape[2] < 16 or t.shape[3] < 16:
            raise ModelInputError(f"images: {t.shape[2]}x{t.shape[3]} pixels is too small")
        if t.dtype != torch.uint8:  # uint8 stays as it is (the pixel paths take it directly)
            t = t.float()
            if not torch.isfinite(t).all():
                raise ModelInputError("images: contain NaN or inf")
            if t.min() < -1e-3 or t.max() > 1.0 + 1e-3:
                raise ModelInputError("images: float images must be in [0, 1] (or pass uint8)")
        return t

    def validate_images(self, images: Any) -> torch.Tensor:
        """The tick's frames as one ``(C*F, 3, H, W)`` tensor, uint8 or float32 in [0, 1], checked
        (:class:`ModelInputError` naming what is wrong); the input of :meth:`pixels`."""
        return self._validate_images(images)

    def pixels(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated frames -> Qwen3-VL ``pixel_values`` and ``image_grid_thw`` (image by image: the
        rows of one frame do not depend on the other frames)."""
        return self._pixels(images)

    def _pixels(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) uint8 or float in [0, 1] -> Qwen3-VL ``pixel_values`` (patches, 3 * tp * ps * ps)
        and ``grid_thw``."""
        cfg = self.config
        if self.image_processor is not None:
            if images.dtype == torch.uint8:
                u8 = images  # what the float round trip below gives back for uint8 input
            else:
                u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
            fast = self._qwen_pixels_without_resize(u8)
            if fast is not None:
                return fast
            arr = u8.permute(0, 2, 3, 1).cpu().numpy()
            out = self.image_processor(images=list(arr), return_tensors="pt")
            return out["pixel_values"], out["image_grid_thw"]
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        h, w = cfg.image_hw
        x = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = (x - IMAGE_MEAN) / IMAGE_STD
        n, c = x.shape[:2]
        ps, tp, m = cfg.patch_size, cfg.temporal_patch_size, cfg.spatial_merge_size
        gh, gw = h // ps, w // ps
        x = x[:, None].expand(n, tp, c, h, w)  # a still image fills the temporal patch
        x = x.reshape(n, tp, c, gh // m, m, ps, gw // m, m, ps)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # n, gh/m, gw/m, m, m, c, tp, ps, ps
        pixel_values = x.reshape(n * gh * gw, c * tp * ps * ps)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long)
        return pixel_values, grid

    def _qwen_pixels_without_resize(self, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The Qwen2-VL image processor's output computed in one batched tensor pass, when its resize
        would leave the images as they are (their size already satisfies its pixel budget and patch
        grid); ``None`` otherwise (then the processor runs).

        Why: the processor works image by image through PIL / numpy; without a resize the rest is
        a rescale (float64, then float32, as its numpy backend does), a per-channel normalisation in
        float32 and a patch reshuffle — the same arithmetic in the same order here, on the whole
        batch at once, so the values are identical (tested). 16 images of 224^2 on one core: 13 ms
        CPU instead of the processor's 38 ms."""
        ip = self.image_processor
        if "Qwen2VLImageProcessor" not in type(ip).__name__:
            return None
        need = (
            "patch_size",
            "merge_size",
            "temporal_patch_size",
            "rescale_factor",
            "image_mean",
            "image_std",
        )
        if not all(getattr(ip, k, None) is not None for k in need):
            return None
        if not (getattr(ip, "do_rescale", True) and getattr(ip, "do_normalize", True)):
            return None
        ps, m, tp = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        n, c, h, w = u8.shape
        if c != 3:
            return None
        if getattr(ip, "do_resize", True):
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            size = ip.size
            lo = (
                getattr(size, "shortest_edge", None)
                if not isinstance(size, dict)
                else size.get("shortest_edge")
            )
            hi = (
                getattr(size, "longest_edge", None)
                if not isinstance(size, dict)
                else size.get("longest_edge")
            )
            lo = getattr(ip, "min_pixels", None) or lo
            hi = getattr(ip, "max_pixels", None) or hi
            if lo is None or hi is None:
                return None
            if smart_resize(h, w, factor=ps * m, min_pixels=int(lo), max_pixels=int(hi)) != (h, w):
                return None
        elif h % (ps * m) or w % (ps * m):
            return None
        mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        x = (u8.double() * float(ip.rescale_factor)).float()
        x = (x - mean) / std
        gh, gw = h // ps, w // ps
        x = x[:, None].expand(n, tp, c, h, w)  # a still image fills the temporal patch
        x = x.reshape(n, tp, c, gh // m, m, ps, gw // m, m, ps)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixel_values = x.reshape(n * gh * gw, c * tp * ps * ps)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long)
        return pixel_values, grid

    def _history(self, history: Any) -> np.ndarray:
        cfg = self.config
        arr = np.asarray(history, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] not in (2, 3, 4):
            raise ModelInputError(
                f"ego history: expected (T, 3) x, y, heading (or (T, 4) with speed), got {arr.shape}"
            )
        if arr.shape[0] < cfg.history_steps:
            raise ModelInputError(
                f"ego history: {arr.shape[0]} steps, the model needs {cfg.history_steps} (0.1 s apart)"
            )
        arr = arr[-cfg.history_steps :]
        if not np.all(np.isfinite(arr[:, :3] if arr.shape[1] > 2 else arr)):
            rows = np.unique(np.argwhere(~np.isfinite(arr))[:, 0]).tolist()
            raise ModelInputError(f"ego history: NaN/inf in rows {rows[:5]} of the last {cfg.history_steps}")
        if arr.shape[1] >= 3:
            # express the poses in the rig frame of the last row ("now"); identity for rig-frame input,
            # so callers may pass scene-frame poses too
            now = arr[-1, :3].copy()
            arr = arr.copy()
            c, s = np.cos(now[2]), np.sin(now[2])
            d = arr[:, :2] - now[:2]
            arr[:, :2] = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
            arr[:, 2] = np.unwrap(arr[:, 2] - now[2])
        return arr

    def build_prompt(self, tokens_per_image: list[int], history_ids: np.ndarray, nav_text: str) -> list[int]:
        """The chat prompt as token ids, ending with ``<|cot_start|>`` (the assistant starts reasoning)."""
        tk = self.tokenizer
        ids: list[int] = []
        ids += (
            [tk.ids["im_start"]]
            + tk.encode("system\n" + SYSTEM_PROMPT)
            + [tk.ids["im_end"]]
            + tk.encode("\n")
        )
        ids += [tk.ids["im_start"]] + tk.encode("user\n")
        for n in tokens_per_image:
            ids += [tk.ids["vision_start"]] + [tk.ids["image_pad"]] * n + [tk.ids["vision_end"]]
        hist_base = tk.traj_token_start + self.config.hist_token_offset
        ids += (
            [tk.ids["traj_history_start"]]
            + [hist_base + int(b) for b in history_ids]
            + [tk.ids["traj_history_end"]]
        )
        if nav_text:
            ids += tk.encode(nav_text + " ")
        ids += tk.encode(TASK_PROMPT) + [tk.ids["im_end"]] + tk.encode("\n")
        ids += [tk.ids["im_start"]] + tk.encode("assistant\n") + [tk.ids["cot_start"]]
        return ids

    def __call__(
        self,
        images: Any,
        history_xyh: Any,
        speed: float | None = None,
        command: int | str | None = None,
        route_text: str | None = None,
        history_z: Any = None,
    ) -> PreparedInputs:
        """Validate and convert one tick's inputs; raises :class:`ModelInputError` naming the bad input."""
        imgs = self._validate_images(images)
        self._history(history_xyh)  # the history's errors before the pixel work, as always
        pixel_values, grid = self._pixels(imgs)
        return self.complete(grid, history_xyh, speed, command, route_text, history_z, pixel_values)

    def complete(
        self,
        grid: torch.Tensor,
        history_xyh: Any,
        speed: float | None = None,
        command: int | str | None = None,
        route_text: str | None = None,
        history_z: Any = None,
        pixel_values: torch.Tensor | None = None,
    ) -> PreparedInputs:
        """Everything but the pixels: the prompt (image token counts from ``grid``), the history tokens
        and v0. ``pixel_values`` ``None``: the caller has the vision features already (per-frame
        cache of :meth:`AlpamayoR1.drive`)."""
        cfg = self.config
        hist = self._history(history_xyh)
        merge = cfg.spatial_merge_size**2
        per_image = (grid.prod(-1) // merge).tolist()
        xyz = np.zeros((hist.shape[0], 3))
        xyz[:, :2] = hist[:, :2]
        if history_z is not None:
            z = np.asarray(history_z, dtype=np.float64).reshape(-1)
            if z.shape[0] < cfg.history_steps or not np.all(np.isfinite(z[-cfg.history_steps :])):
                raise ModelInputError(
                    f"history_z: need {cfg.history_steps} finite heights (0.1 s apart), got shape {z.shape}"
                )
            xyz[:, 2] = z[-cfg.history_steps :]
        hist_ids = self.hist_tokenizer.encode(xyz)
        nav = []
        if command is not None:
            what = command if isinstance(command, str) else COMMAND_TEXT.get(int(command), str(command))
            nav.append(f"Navigation: {what}.")
        if route_text:
            nav.append(route_text.strip())
        ids = self.build_prompt(per_image, hist_ids, " ".join(nav))
        input_ids = torch.tensor([ids], dtype=torch.long)
        mm = (input_ids == self.tokenizer.ids["image_pad"]).to(torch.int32)
        if speed is not None and np.isfinite(speed):
            v0 = max(float(speed), 0.0)  # a measured speed overrides the estimate (not NVlabs)
        else:
            if hist.shape[1] >= 3:
                heading = hist[:, 2]
            else:  # positions only: the direction of motion
                d = np.gradient(hist[:, :2], axis=0)
                heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
            v0 = estimate_v0(hist[:, :2], heading, cfg.dt, cfg.v_lambda, cfg.v_ridge)
        return PreparedInputs(input_ids, mm, pixel_values, grid, v0, float(xyz[-1, 2]), hist_ids)


__all__ = ["COMMAND_TEXT", "AlpamayoProcessor", "PreparedInputs"]
