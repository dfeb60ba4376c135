"""Speculative decoding of the chain of causation: a cheap drafter proposes, the unmodified target verifies.

Why: a decode step of the target costs about as much for 1 token as for a handful (it is bound by
weight reads / per-step overhead, not arithmetic), and most CoC tokens are routine continuations a
much smaller model (or the text itself) predicts. Each round the drafter proposes ``g <= gamma``
tokens; the target feeds the last emitted token plus the ``g`` drafts in ONE forward over its static
KV cache (:class:`~alpasim_policy.model.static_decode.StaticKVDecoder`) and so scores all ``g + 1``
next-token distributions at once; the accepted prefix stays in the cache, the rest is rolled back
(the next round simply writes over those positions).

Acceptance (Leviathan et al. 2023, Chen et al. 2023), on the target's *processed* scores (the same
trajectory-vocabulary mask, temperature and top-p as plain decoding):

* greedy (``temperature == 0``): a draft is accepted iff it equals the target's argmax; the first
  mismatch is replaced by the argmax; if all ``g`` match, the argmax after the last is a bonus token.
  The output is token-identical to plain greedy decoding, whatever the drafter.
* sampling: draft ``d`` drawn from ``q`` is accepted with probability ``min(1, p(d) / q(d))``; on
  rejection the token is drawn from ``norm(max(0, p - q))``; if all are accepted a bonus token is
  drawn from ``p``. Every emitted token then has exactly the target's distribution ``p``.

The drafter is anything with the three methods of :class:`Drafter`; exactness never depends on it
(a bad drafter only lowers the acceptance rate). :class:`NGramDrafter` (prompt lookup: continue the
latest earlier occurrence of the last n tokens) needs no weights and serves until a trained draft
model is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Drafter(Protocol):
    """What the speculative decoder asks of a draft (see ``/work/scratch/h15/DRAFTER_PROTOCOL.md``)."""

    def reset(self, prompt_ids: torch.Tensor) -> None:
        """Start of one CoC: ``prompt_ids`` ``(L,)`` int64, the target's full prompt (ending with
        ``<|cot_start|>``; it contains the ego-history trajectory tokens)."""

    def propose(
        self,
        cot_ids: torch.Tensor,
        gamma: int,
        *,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to ``gamma`` next tokens after ``cot_ids`` ``(n,)`` (all CoC tokens emitted so far).

        Returns ``tokens`` ``(g,)`` int64 (``0 <= g <= gamma``) and ``probs`` ``(g, V_d)``: row ``i``
        is the distribution ``tokens[i]`` was drawn from (``V_d`` <= the target's vocabulary, padded
        with zeros), or ``None`` when the drafts are a deterministic function of the context."""

    def advance(self, accepted: int) -> None:
        """How many of the last proposal's tokens the target accepted (a cached draft rolls back
        the rest); the next ``cot_ids`` = previous + ``tokens[:accepted]`` + one target token."""


class NGramDrafter:
    """Prompt-lookup drafter: find the latest earlier occurrence of the context's last ``n`` tokens
    (``n`` from ``max_n`` down to ``min_n``) and propose what followed it.

    With ``memory`` > 0 it also recalls the last ``memory`` CoCs it decoded (told by
    :meth:`observe` at the end of each decode), most recent first, before looking in the prompt:
    at 10 Hz consecutive ticks mostly reason alike, so the previous tick's CoC is a strong draft.
    Deterministic (``probs`` is ``None``: a point mass), no weights; an empty proposal turns the round
    into a plain target step.
    """

    def __init__(self, max_n: int = 3, min_n: int = 1, memory: int = 0, prompt: bool = True):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"NGramDrafter: need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        if memory < 0:
            raise ValueError(f"NGramDrafter: memory must be >= 0, got {memory}")
        self.max_n = max_n
        self.min_n = min_n
        self.memory = memory
        self.use_prompt = prompt  # False: recall only (e.g. in front of a draft model)
        self.prompt: list[int] = []
        # recalled CoCs, most recent first, each after the prompt's last token
        self.past: list[list[int]] = []

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self.prompt = [int(t) for t in prompt_ids.reshape(-1).tolist()]

    def forget(self) -> None:
        """Drop the recalled CoCs (a new episode)."""
        self.past = []

    def observe(self, tokens: list[int]) -> None:
        """The CoC just decoded (optional Drafter hook, called once per decode)."""
        if self.memory:
            self.past = [self.prompt[-1:] + list(tokens), *self.past][: self.memory]

    def _lookup(self, seq: list[int], tail: list[int], gamma: int, stop_before: int) -> list[int] | None:
        n = len(tail)
        for i in range(stop_before - n, -1, -1):  # latest occurrence first
            if seq[i : i + n] == tail and i + n < len(seq):
                return seq[i + n : i + n + gamma]
        return None

    def propose(
        self,
        cot_ids: torch.Tensor,
        gamma: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cot = [int(t) for t in cot_ids.reshape(-1).tolist()]
        ctx = self.prompt[-1:] + cot
        seq = self.prompt + cot
        for n in range(min(self.max_n, len(ctx)), self.min_n - 1, -1):
            tail = ctx[-n:]
            for past in self.past:
                cont = self._lookup(past, tail, gamma, len(past))
                if cont:
                    return torch.tensor(cont, dtype=torch.long), None
            cont = self._lookup(seq, tail, gamma, len(seq) - 1) if self.use_prompt else None
            if cont:  # (the search excludes the tail itself)
                return torch.tensor(cont, dtype=torch.long), None
        return torch.zeros(0, dtype=torch.long), None

    def advance(self, accepted: int) -> None:
        pass


class FallbackDrafter:
    """Asks its drafters in order and uses the first non-empty proposal (e.g. free recall of the
    previous CoC first, a draft model where recall has nothing). Every drafter sees every decode
    (``reset`` / ``observe``); ``advance`` goes to the one whose proposal was verified. The returned
    ``probs`` are that drafter's, so the sampling rule stays exact."""

    def __init__(self, *drafters: Drafter):
        if not drafters:
            raise ValueError("FallbackDrafter needs at least one drafter")
        self.drafters = drafters
        self.last: Drafter | None = None

    def reset(self, prompt_ids: torch.Tensor) -> None:
        for d in self.drafters:
            d.reset(prompt_ids)

    def propose(
        self,
        cot_ids: torch.Tensor,
        gamma: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, probs = torch.zeros(0, dtype=torch.long), None
        for d in self.drafters:
            self.last = d
            tokens, probs = d.propose(
                cot_ids, gamma, temperature=temperature, top_p=top_p, generator=generator
            )
            if tokens.numel():
                break
        return tokens, probs

    def advance(self, accepted: int) -> None:
        if self.last is not None:
            self.last.advance(accepted)

    def observe(self, tokens: list[int]) -> None:
        for d in self.drafters:
            observe = getattr(d, "observe", None)
            if callable(observe):
                observe(tokens)

    def forget(self) -> None:
        for d in self.drafters:
            forget = getattr(d, "forget", None)
            if callable(forget):
                forget()


class LogitsDrafter:
    """A drafter from any causal LM given as ``fn(ids (1, L)) -> logits (1, L, V)``, run over the whole
    context at each draft token (no cache: for tests and toy targets, not for speed).

    Greedy (``temperature == 0``): argmax, ``probs`` ``None``. Sampling: draws from
    ``softmax(logits / temperature)`` with the decoder's generator and returns those rows.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], temperature: float | None = None):
        self.fn = fn
        self.temperature = temperature  # None: the target's temperature
        self.prompt = torch.zeros(0, dtype=torch.long)

    def reset(self, prompt_ids: torch.Tensor) -> None:
        self.prompt = prompt_ids.reshape(-1).to(torch.long).cpu()

    def propose(
        self,
        cot_ids: torch.Tensor,
        gamma: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        temp = temperature if self.temperature is None else self.temperature
        ctx = torch.cat([self.prompt, cot_ids.reshape(-1).to(torch.long).cpu()])
        toks, rows = [], []
        for _ in range(gamma):
            logits = self.fn(ctx[None])[0, -1].float()
            if temp <= 0:
                t = int(logits.argmax())
            else:
                q = torch.softmax(logits / temp, dim=-1)
                dev = generator.device if generator is not None else q.device
                t = int(torch.multinomial(q.to(dev), 1, generator=generator))
                rows.append(q.cpu())
            toks.append(t)
            ctx = torch.cat([ctx, torch.tensor([t])])
        probs = torch.stack(rows) if rows else None
        return torch.tensor(toks, dtype=torch.long), probs

    def advance(self, accepted: int) -> None:
        pass


# ---------------------------------------------------------------------- acceptance rules
AcceptRule = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None, bool, torch.Generator | None], tuple[int, int]
]


def accept_standard(
    scores: torch.Tensor,
    drafts: torch.Tensor,
    draft_probs: torch.Tensor | None,
    sample: bool,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The standard rule. ``scores`` ``(g + 1, V)``: the target's processed scores (``-inf`` = banned)
    after the last emitted token and after each draft; ``drafts`` ``(g,)``; ``draft_probs`` ``(g, V')``
    or ``None`` (a point mass at each draft). Returns (accepted drafts ``a``, the next token).
    """
    g = drafts.shape[0]
    if not sample:
        best = scores.argmax(dim=-1)
        match = (best[:g] == drafts).to(torch.int64)
        a = int(match.cumprod(0).sum()) if g else 0
        return a, int(best[a])
    p = torch.softmax(scores, dim=-1)
    q = _pad_probs(draft_probs, drafts, p.shape[-1])
    dev = generator.device if generator is not None else p.device
    for i in range(g):
        d = int(drafts[i])
        pd, qd = float(p[i, d]), float(q[i, d])
        u = float(torch.rand((), generator=generator, device=dev))
        if qd > 0 and u < min(1.0, pd / qd):
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if float(residual.sum()) <= 0:  # p == q up to rounding: rejection had probability ~0
            residual = p[i]
        return i, int(torch.multinomial(residual.to(dev), 1, generator=generator))
    return g, int(torch.multinomial(p[g].to(dev), 1, generator=generator))


def _pad_probs(draft_probs: torch.Tensor | None, drafts: torch.Tensor, vocab: int) -> torch.Tensor:
    """``(g, vocab)`` draft distributions: the given rows zero-padded, or one-hot at each draft."""
    g = drafts.shape[0]
    q = torch.zeros((g, vocab), dtype=torch.float32, device=drafts.device)
    if draft_probs is None:
        if g:
            q[torch.arange(g, device=drafts.device), drafts] = 1.0
        return q
    if draft_probs.shape[0] != g or draft_probs.shape[-1] > vocab:
        raise ValueError(
            f"drafter returned probs {tuple(draft_probs.shape)} for {g} tokens (vocabulary {vocab})"
        )
    q[:, : draft_probs.shape[-1]] = draft_probs.to(q.device, torch.float32)
    return q


# ---------------------------------------------------------------------- the loop
@dataclass
class SpeculativeResult:
    """One speculative decode: ``tokens`` emitted (stop included if emitted), ``fed`` of them in the
    target cache, target forwards, drafts proposed / accepted."""

    tokens: list[int]
    fed: int
    forwards: int = 0
    proposed: int = 0
    accepted: int = 0
    rounds: list[tuple[int, int]] = field(default_factory=list)  # (proposed, accepted) per round

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def speculative_decode(
    step: Callable[[torch.Tensor, int], torch.Tensor],
    first_logits: torch.Tensor,
    processors: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor],
    drafter: Drafter,
    *,
    gamma: int,
    limit: int,
    stop: int,
    prompt_ids: torch.Tensor,
    sample: bool,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    accept: AcceptRule = accept_standard,
) -> SpeculativeResult:
    """Decode one CoC (one row) speculatively with the same stopping semantics as plain decoding.

    * ``step(ids (n,), start)`` feeds ``ids`` to the target at sequence indices ``start ..`` and
      returns their raw logits ``(n, V)``; ``first_logits`` ``(V,)``: the prefill's last logits.
    * ``processors``: transformers-style ``(input_ids, scores) -> scores`` (mask, temperature, top-p).
    * Stops after ``stop`` is emitted or ``limit`` tokens. As in plain decoding the last emitted
      token is in the cache (``fed``) only when it is the stop and the limit was not reached; the
      cache then holds ``prompt + tokens[:fed]``.
    """
    if gamma < 0:
        raise ValueError(f"speculative gamma must be >= 0, got {gamma}")
    plen = int(prompt_ids.shape[-1])
    drafter.reset(prompt_ids.reshape(-1))
    dev = first_logits.device
    vocab = int(first_logits.shape[-1])
    scores = processors(None, first_logits.float().clone()[None])
    if sample:
        first = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))
    else:
        first = int(scores.argmax(dim=-1))
    res = SpeculativeResult(tokens=[first], fed=0)
    cached = 0  # CoC tokens in the target cache
    while res.tokens[-1] != stop and len(res.tokens) < limit:
        n = len(res.tokens)
        g_max = min(gamma, limit - n - 1)
        drafts = torch.zeros(0, dtype=torch.long)
        probs = None
        if g_max > 0:
            drafts, probs = drafter.propose(
                torch.tensor(res.tokens, dtype=torch.long),
                g_max,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
            )
            drafts = drafts.reshape(-1)[:g_max].to(torch.long)
            if drafts.numel() and not 0 <= int(drafts.min()) <= int(drafts.max()) < vocab:
                raise ValueError(
                    f"{type(drafter).__name__} proposed token ids outside the vocabulary [0, {vocab}): "
                    f"{drafts.tolist()}"
                )
            probs = None if probs is None else probs[: drafts.shape[0]]
        g = int(drafts.shape[0])
        feed = torch.cat([torch.tensor([res.tokens[-1]], dtype=torch.long), drafts.cpu()]).to(dev)
        logits = step(feed, plen + n - 1)
        res.forwards += 1
        scores = processors(None, logits.float().clone())
        a, nxt = accept(scores, feed[1:], None if probs is None else probs.to(dev), sample, generator)
        acc = [int(t) for t in drafts[:a].tolist()]
        res.proposed += g
        res.accepted += a
        res.rounds.append((g, a))
        if g:
            drafter.advance(a)
        cached = n + a  # the last emitted token and the accepted drafts are now in the cache
        if stop in acc:  # the CoC ended inside the accepted drafts (the stop is cached)
            res.tokens += acc[: acc.index(stop) + 1]
            break
        res.tokens += acc + [nxt]
    observe = getattr(drafter, "observe", None)
    if callable(observe):  # optional hook: drafters that learn from what was decoded
        observe(list(res.tokens))
    n = len(res.tokens)
    cached = min(cached, n)  # drafts after an accepted stop are not part of the CoC
    want = n - 1 if n >= limit else n
    if want > cached:  # the stop came from the target: feed it (plain decoding feeds it too)
        step(torch.tensor(res.tokens[cached:want], dtype=torch.long, device=dev), plen + cached)
        res.forwards += 1
    res.fed = want
    return res


def as_drafter(obj: object) -> Drafter:
    """``obj`` if it implements :class:`Drafter`, else a clear error."""
    if not isinstance(obj, Drafter):
        missing = [m for m in ("reset", "propose", "advance") if not callable(getattr(obj, m, None))]
        raise TypeError(f"{type(obj).__name__} is not a Drafter (missing {', '.join(missing)})")
    return obj


__all__ = [
    "AcceptRule",
    "Drafter",
    "FallbackDrafter",
    "LogitsDrafter",
    "NGramDrafter",
    "SpeculativeResult",
    "accept_standard",
    "as_drafter",
    "speculative_decode",
]
