"""Text tokenizer with Alpamayo's special tokens, and the delta tokenizer for the ego history.

Why a local tokenizer: the model must run (CI, offline sims) without downloading Qwen's
tokenizer. :func:`build_local_tokenizer` trains a small byte-level BPE with the ``tokenizers``
library on a built-in driving corpus — deterministic, a few milliseconds — and adds the chat,
vision and Alpamayo special tokens plus the discrete trajectory vocabulary ``<i0>...``. A real
Qwen3-VL / Alpamayo tokenizer directory can be loaded instead with
:meth:`AlpamayoTokenizer.from_dir`; missing Alpamayo tokens are added the same way NVlabs does.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError, ModelInputError

# Qwen chat / vision tokens the prompt and the Qwen3-VL model rely on.
QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Alpamayo's special tokens (names from the R1 release; each is written <|name|>).
ALPAMAYO_SPECIAL_KEYS = (
    "prompt_start",
    "prompt_end",
    "image_start",
    "image_pre_tkn",
    "image_end",
    "traj_history_start",
    "traj_history_pre_tkn",
    "traj_history_end",
    "cot_start",
    "cot_end",
    "meta_action_start",
    "meta_action_end",
    "traj_future_start",
    "traj_future_pre_tkn",
    "traj_future_end",
    "traj_history",
    "traj_future",
    "image_pad",
    "vectorized_wm",
    "vectorized_wm_start",
    "vectorized_wm_end",
    "vectorized_wm_pre_tkn",
    "route_start",
    "route_pad",
    "route_end",
    "question_start",
    "question_end",
    "answer_start",
    "answer_end",
)


def special(name: str) -> str:
    return f"<|{name}|>"


SYSTEM_PROMPT = "You are a driving assistant that generates safe and accurate actions."
TASK_PROMPT = (
    "output the chain-of-thought reasoning of the driving process, then output the future trajectory."
)

# Built-in corpus for the local BPE: enough driving language that chain-of-causation text
# decodes to readable words even with random weights.
_CORPUS = """
The ego vehicle keeps its lane and maintains a safe distance to the lead vehicle.
Slow down because the traffic light ahead is red and a pedestrian is crossing the road.
Accelerate gently since the road ahead is clear and the speed limit allows it.
Yield to the cyclist on the right before turning right at the intersection.
Stop at the stop line, wait for the oncoming traffic to pass, then turn left.
Nudge to the left to keep clearance from the parked truck blocking part of the lane.
Follow the route: go straight through the junction, then merge into the left lane.
The car in front is braking, so decelerate smoothly to avoid a collision.
A construction zone narrows the road; reduce speed and stay centered in the lane.
Change lanes to the right because the left lane ends ahead.
Keep a constant speed on the highway and watch vehicles merging from the on-ramp.
The light turned green and the crosswalk is empty, so proceed through the intersection.
An emergency vehicle approaches from behind; pull over to the right and stop.
Turn right at the next intersection following the navigation command.
Drive straight, the lane is free, there is no obstacle, the weather is clear.
Children are walking near the school zone, slow down and be ready to stop.
Navigation: turn left. Navigation: go straight. Navigation: turn right.
Speed is 5 m/s, 10 m/s, 15 m/s, 20 m/s. Distance 2 m, 10 m, 25 m, 50 m, 100 m.
"""


def _alpamayo_special_tokens() -> list[str]:
    return list(QWEN_SPECIAL) + [special(k) for k in ALPAMAYO_SPECIAL_KEYS if special(k) not in QWEN_SPECIAL]


@functools.lru_cache(maxsize=4)
def _local_tokenizer_json(traj_vocab_size: int, bpe_vocab: int = 640) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    lines = [ln for ln in _CORPUS.strip().splitlines() if ln.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    # Trajectory tokens are ordinary added tokens (as in the release); chat / Alpamayo tokens are special.
    tok.add_tokens([f"<i{v}>" for v in range(traj_vocab_size)])
    tok.add_special_tokens(_alpamayo_special_tokens())
    return tok.to_str()


class AlpamayoTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` (local) or a HF tokenizer (``from_dir``).

    Exposes what the model needs: ``encode`` / ``decode``, ids of the special tokens, the id of
    ``<i0>`` (``traj_token_start``) and ``len()``.
    """

    def __init__(self, backend: Any, *, traj_vocab_size: int, is_hf: bool = False):
        self._tok = backend
        self._is_hf = is_hf
        self.builtin = False  # True for the local BPE of the random-init presets
        self.traj_vocab_size = traj_vocab_size
        self.traj_token_start = self.token_id("<i0>")
        last = self.token_id(f"<i{traj_vocab_size - 1}>")
        if last - self.traj_token_start != traj_vocab_size - 1:
            raise ConfigError("tokenizer: trajectory tokens <i0>...<iN> are not contiguous")
        self.ids = {
            "pad": self.token_id("<|endoftext|>"),
            "im_start": self.token_id("<|im_start|>"),
            "im_end": self.token_id("<|im_end|>"),
            "vision_start": self.token_id("<|vision_start|>"),
            "vision_end": self.token_id("<|vision_end|>"),
            "image_pad": self.token_id("<|image_pad|>"),
            "video_pad": self.token_id("<|video_pad|>"),
        }
        for k in ALPAMAYO_SPECIAL_KEYS:
            if k != "image_pad":
                self.ids[k] = self.token_id(special(k))

    # -------------------------------------------------------------- constructors
    @classmethod
    def local(cls, traj_vocab_size: int = 4000) -> AlpamayoTokenizer:
        from tokenizers import Tokenizer

        tok = cls(Tokenizer.from_str(_local_tokenizer_json(traj_vocab_size)), traj_vocab_size=traj_vocab_size)
        tok.builtin = True
        return tok

    @classmethod
    def from_dir(cls, path: str | Path, traj_vocab_size: int = 4000) -> AlpamayoTokenizer:
        """Load a real (Qwen3-VL / Alpamayo) tokenizer from a local directory; nothing is downloaded."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"tokenizer directory {path} does not exist")
        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises many types for a bad directory
            raise ConfigError(f"{path}: cannot load tokenizer: {e}") from e
        vocab = hf.get_vocab()
        missing_traj = [f"<i{v}>" for v in range(traj_vocab_size) if f"<i{v}>" not in vocab]
        if missing_traj:
            hf.add_tokens(missing_traj)
        missing_special = [t for t in _alpamayo_special_tokens() if t not in vocab]
        if missing_special:
            hf.add_tokens(missing_special, special_tokens=True)
        return cls(hf, traj_vocab_size=traj_vocab_size, is_hf=True)

    # -------------------------------------------------------------- API
    def __len__(self) -> int:
        return len(self._tok) if self._is_hf else self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        tid = self._tok.convert_tokens_to_ids(token) if self._is_hf else self._tok.token_to_id(token)
        if tid is None or (self._is_hf and tid == self._tok.unk_token_id):
            raise ConfigError(f"tokenizer has no token {token!r}")
        return int(tid)

    def encode(self, text: str) -> list[int]:
        if self._is_hf:
            return list(self._tok.encode(text, add_special_tokens=False))
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` so a saved model directory is self-contained."""
        directory = Path(directory)
        if self._is_hf:
            self._tok.save_pretrained(str(directory))
        else:
            from alpasim_policy.io import atomic_write_text

            atomic_write_text(directory / "tokenizer.json", self._tok.to_str())


class DeltaTrajectoryTokenizer:
    """Discretises a trajectory as per-step deltas: ``num_bins`` uniform bins per axis.

    A trajectory of T points (x, y, z) becomes 3T integers in ``[0, num_bins)``: the delta from
    the previous point (the first point's delta is from the origin), scaled from
    ``[xyz_min, xyz_max]`` to ``[0, num_bins - 1]``, rounded and clamped. With 1000 bins over
    +-4 m a history step is resolved to 8 mm.
    """

    def __init__(
        self,
        num_bins: int = 1000,
        xyz_min: tuple[float, float, float] = (-4.0, -4.0, -10.0),
        xyz_max: tuple[float, float, float] = (4.0, 4.0, 10.0),
    ):
        self.num_bins = num_bins
        self.lo = np.asarray(xyz_min, dtype=np.float64)
        self.hi = np.asarray(xyz_max, dtype=np.float64)

    def encode(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ModelInputError(f"history trajectory: expected shape (T, 3), got {xyz.shape}")
        delta = np.diff(xyz, axis=0, prepend=np.zeros((1, 3)))
        u = (delta - self.lo) / (self.hi - self.lo)
        bins = np.clip(np.rint(u * (self.num_bins - 1)), 0, self.num_bins - 1).astype(np.int64)
        return bins.reshape(-1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        bins = np.asarray(tokens, dtype=np.float64).reshape(-1, 3)
        delta = bins / (self.num_bins - 1) * (self.hi - self.lo) + self.lo
        return np.cumsum(delta, axis=0)
