"""Choosing chain-of-causation tokens with transformers' logits processors, as NVlabs' ``generate`` does.

Why transformers' processors rather than hand-written sampling: NVlabs decodes with
``vlm.generate`` (temperature, top-p, a logits processor masking the trajectory vocabulary), so
using the same ``TemperatureLogitsWarper`` / ``TopPLogitsWarper`` gives the same filtering rules.
The decode loop itself stays in the model (it shares one prefix across K samples and controls
exactly which tokens enter the KV cache); this module only turns one step's logits into tokens.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from alpasim_policy.model.tokenizer import AlpamayoTokenizer


class TokenMask(LogitsProcessor):
    """Sets the trajectory vocabulary ``<i0>..`` (NVlabs' ``ExpertLogitsProcessor``), embedding rows past
    the tokenizer (a checkpoint may pad its embedding) and any ``extra`` ids to ``-inf``."""

    def __init__(self, traj_start: int, traj_size: int, vocab_len: int, extra: tuple[int, ...] = ()):
        self.traj_start = traj_start
        self.traj_size = traj_size
        self.vocab_len = vocab_len
        self.extra = list(extra)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.traj_start : self.traj_start + self.traj_size] = float("-inf")
        if scores.shape[-1] > self.vocab_len:
            scores[:, self.vocab_len :] = float("-inf")
        if self.extra:
            scores[:, self.extra] = float("-inf")
        return scores


def cot_logits_processors(
    tokenizer: AlpamayoTokenizer, *, forced_length: bool, temperature: float, top_p: float
) -> LogitsProcessorList:
    """The processors of one decode: the mask (plus ``<|traj_future_start|>`` when the CoC length is
    forced), then temperature and top-p when sampling (``temperature > 0``)."""
    extra = (tokenizer.ids["traj_future_start"],) if forced_length else ()
    procs = LogitsProcessorList(
        [TokenMask(tokenizer.traj_token_start, tokenizer.traj_vocab_size, len(tokenizer), extra)]
    )
    if temperature > 0:
        procs.append(TemperatureLogitsWarper(float(temperature)))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(float(top_p)))
    return procs


def next_tokens(
    logits: torch.Tensor,
    processors: LogitsProcessorList,
    sample: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(rows, V)`` logits -> ``(rows,)`` tokens: greedy (argmax) or sampled from the processed scores."""
    scores = processors(None, logits.float().clone())
    if not sample:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


__all__ = ["TokenMask", "cot_logits_processors", "next_tokens"]
