"""Per-frame vision features kept from one tick to the next (closed-loop driving).

Why: in the closed loop each camera contributes its last ``F`` frames, 0.1 s apart, and one tick
later ``F - 1`` of them are the same frames again (Alpamayo-R1: 4 cameras x 4 frames, so 12 of
the 16 images a tick encodes were encoded at the previous tick). Qwen3-VL's vision tower treats
every image on its own: the patch embedding, the MLPs and the patch merger work row by row, the
position embedding and the rotary table come from the image's own grid, and attention is limited
to the image's own patches (``cu_seqlens`` per image). An image's features therefore do not depend
on which other images share the batch, and reusing them is exact: the features of a frame encoded
alone equal (bit for bit) those it gets in the 16-image batch (``tests/test_model_vision_cache.py``
asserts it, and that a tick with the cache gives the same CoC and trajectories as one without).

A frame is recognised by its *content*, not by its position: the key is a hash of the validated
input frame's bytes (dtype and shape included), confirmed by an exact comparison with the stored
frame, so a collision cannot reuse wrong features. The preprocessing (resize, normalisation,
patchify) is per image as well, so a cached frame skips it too. Memory stays bounded: after each
tick only the frames that tick used are kept (those of the last ``keep_ticks`` ticks when a model
spaces its frames ``frame_stride`` ticks apart: a frame then comes back ``frame_stride`` ticks later).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class FrameFeatures:
    """One frame's vision output: its merged tokens and its deep-stack features (one per layer)."""

    frame: torch.Tensor  # the validated input frame (3, H, W), kept to confirm a hash match exactly
    grid: torch.Tensor  # (3,) t, h, w patch grid of the frame
    pooled: torch.Tensor  # (tokens, hidden) merged vision tokens
    deepstack: tuple[torch.Tensor, ...]  # per deep-stack layer (tokens, hidden)


def frame_key(frame: torch.Tensor) -> tuple:
    """A content key of one frame: dtype, shape and a 128-bit BLAKE2b of its bytes."""
    arr = frame.detach().cpu().contiguous().numpy()
    digest = hashlib.blake2b(memoryview(arr).cast("B"), digest_size=16).digest()
    return (str(frame.dtype), tuple(frame.shape), digest)


class FrameFeatureCache:
    """The vision features of the frames seen at the last ``keep_ticks`` ticks, keyed by content (see
    the module doc)."""

    def __init__(self, keep_ticks: int = 1) -> None:
        self._entries: dict[tuple, FrameFeatures] = {}
        self._ticks: list[dict[tuple, FrameFeatures]] = []  # the last keep_ticks ticks' frames, oldest first
        #: how many ticks' frames are kept (``AlpamayoR1`` passes its config's ``frame_stride``)
        self.keep_ticks = keep_ticks
        self.output_type: Any = None  # transformers' vision output class (to rebuild an output)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._ticks.clear()

    def lookup(self, frames: torch.Tensor) -> tuple[list[tuple], list[FrameFeatures | None]]:
        """Keys of ``frames`` ``(N, 3, H, W)`` and the stored features of each (``None``: not stored)."""
        keys = [frame_key(f) for f in frames]
        found: list[FrameFeatures | None] = []
        for key, frame in zip(keys, frames, strict=True):
            entry = self._entries.get(key)
            if entry is not None and not torch.equal(entry.frame, frame):
                entry = None  # a hash collision: never reuse another frame's features
            found.append(entry)
        return keys, found

    def retain(self, keys: list[tuple], entries: list[FrameFeatures]) -> None:
        """Keep this tick's frames and those of the ``keep_ticks - 1`` ticks before it (older ones
        are dropped: memory stays ``keep_ticks`` ticks' worth)."""
        self._ticks.append(dict(zip(keys, entries, strict=True)))
        del self._ticks[: max(0, len(self._ticks) - max(1, self.keep_ticks))]
        self._entries = {}
        for tick in self._ticks:  # newer ticks last: an equal key maps to the same content anyway
            self._entries.update(tick)

    @staticmethod
    def split(vision: Any, frames: torch.Tensor, grid: torch.Tensor) -> list[FrameFeatures]:
        """Per-frame entries from a vision output of ``frames`` (its ``pooler_output`` and
        ``deepstack_features`` are already split per image by transformers)."""
        out = []
        for i in range(frames.shape[0]):
            out.append(
                FrameFeatures(
                    frame=frames[i].clone(),
                    grid=grid[i].clone(),
                    pooled=vision.pooler_output[i],
                    deepstack=tuple(layer[i] for layer in vision.deepstack_features),
                )
            )
        return out

    def assemble(self, entries: list[FrameFeatures]) -> Any:
        """A vision output (as ``get_image_features`` returns) of ``entries`` in their order."""
        layers = len(entries[0].deepstack)
        return self.output_type(
            pooler_output=tuple(e.pooled for e in entries),
            deepstack_features=[tuple(e.deepstack[j] for e in entries) for j in range(layers)],
        )


__all__ = ["FrameFeatureCache", "FrameFeatures", "frame_key"]
