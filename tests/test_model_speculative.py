"""Speculative decoding and the static-cache decode: exactness against plain decoding.

* The static-cache decode gives the same logits (bit for bit), tokens and reasoning prefix as the
  reference loop through transformers' forward.
* Greedy speculative decoding is token-identical to plain greedy decoding on the tiny model for
  gamma = 1, 2, 4, 8, several inputs and drafters that are always right, always wrong or in between.
* Sampled speculative decoding draws CoCs from exactly the target's distribution: on a toy target
  (5 tokens, a context-dependent table, temperature + top-p, a stop token) the empirical distribution
  of whole sequences passes a chi-square test against the exact enumeration, and the same test
  rejects two classic wrong acceptance rules.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from model_helpers import frames, rig_history
from scipy import stats
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from alpasim_policy.errors import ConfigError
from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
from alpasim_policy.model.speculative import (
    FallbackDrafter,
    LogitsDrafter,
    NGramDrafter,
    accept_standard,
    speculative_decode,
)

K = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AlpamayoR1(AlpamayoConfig.from_preset("tiny"))


def _inputs(model, scene: str, t: int, seed: int):
    hist, _ = rig_history(scene, t=t)
    prep = model.prepare(frames(model.config, seed), hist, None, 1)
    return prep, model.encode_images(prep.pixel_values, prep.image_grid_thw)


INPUTS = [("av2s-7fab2350-w00", 40, 0), ("av2s-7fab2350-w00", 60, 1)]


class OracleDrafter:
    """Proposes the known plain-greedy continuation ``answer``, except at CoC indices where
    ``wrong(i)`` holds: there a token that differs from it."""

    def __init__(self, answer: list[int], wrong=lambda i: False):  # noqa: ANN001
        self.answer = answer
        self.wrong = wrong

    def reset(self, prompt_ids):
        pass

    def propose(self, cot_ids, gamma, *, temperature, top_p, generator):
        n = cot_ids.shape[0]
        toks = []
        for i, t in enumerate(self.answer[n : n + gamma], start=n):
            toks.append(t + 1 if self.wrong(i) else t)
        return torch.tensor(toks, dtype=torch.long), None

    def advance(self, accepted):
        pass


def _random_lm(ids: torch.Tensor) -> torch.Tensor:
    """Logits of a 'model' that is noise seeded by its context (a deterministic, mostly wrong draft)."""
    return torch.randn(1, ids.shape[1], 300, generator=torch.Generator().manual_seed(int(ids.sum())))


# ---------------------------------------------------------------- static cache == reference decode
@pytest.mark.parametrize("rows,limits", [(1, {"max_cot_tokens": 24}), (K, {"cot_tokens": 10})])
def test_static_decode_equals_transformers_loop(model, rows, limits):
    prep, vision = _inputs(model, *INPUTS[0])
    ref_trace, trace = {}, {}
    ref, ref_ids = model.reason(prep, vision, rows, decode="dynamic", trace=ref_trace, **limits)
    out, ids = model.reason(prep, vision, rows, decode="static", trace=trace, **limits)
    assert ids == ref_ids
    assert torch.equal(torch.stack(trace["logits"]), torch.stack(ref_trace["logits"]))
    assert out.length == ref.length
    assert torch.equal(out.valid_len, ref.valid_len) and torch.equal(out.rope_offset, ref.rope_offset)
    for a, b, c, d in zip(out.keys, ref.keys, out.values, ref.values, strict=True):
        assert torch.equal(a, b) and torch.equal(c, d)


def test_unfused_static_decode_and_weight_changes(model):
    """The per-module projections (what a real-size model uses) give the same logits too, and the
    fused weight copies follow an in-place weight update."""
    from alpasim_policy.model.static_decode import StaticKVDecoder

    m = copy.deepcopy(model)
    prep, vision = _inputs(m, *INPUTS[0])
    ref_trace, trace = {}, {}
    m._decoder = StaticKVDecoder(m.vlm, fuse=False)
    m.reason(prep, vision, 1, cot_tokens=8, decode="dynamic", trace=ref_trace)
    m.reason(prep, vision, 1, cot_tokens=8, decode="static", trace=trace)
    assert not m._decoder.fuse
    assert torch.equal(torch.stack(trace["logits"]), torch.stack(ref_trace["logits"]))

    m._decoder = None
    m.reason(prep, vision, 1, cot_tokens=2)
    fused = m._decoder
    assert fused.fuse and StaticKVDecoder.for_model(m.vlm, fused) is fused
    with torch.no_grad():
        m.vlm.model.language_model.layers[1].mlp.up_proj.weight.mul_(1.5)
    assert StaticKVDecoder.for_model(m.vlm, fused) is not fused
    ref_trace, trace = {}, {}
    m.reason(prep, vision, 1, cot_tokens=8, decode="dynamic", trace=ref_trace)
    m.reason(prep, vision, 1, cot_tokens=8, decode="static", trace=trace)
    assert m._decoder is not fused
    assert torch.equal(torch.stack(trace["logits"]), torch.stack(ref_trace["logits"]))


@pytest.mark.parametrize("rows,limits", [(1, {"max_cot_tokens": 24}), (K, {"cot_tokens": 10})])
def test_graph_decode_equals_static_decode_across_ticks(model, rows, limits):
    """``decode="graph"``'s fixed-shape step (whole buffer, device position, masked attention; on
    CUDA replayed from one captured graph, here run eagerly) gives the sliced step's tokens and
    logits to round-off, also on a second tick of another input that reuses the same buffers
    (stale keys from the first tick must stay masked) after a static tick in between."""
    m = copy.deepcopy(model)
    bufs = []
    for scene, t, seed in INPUTS:
        prep, vision = _inputs(m, scene, t, seed)
        ref_trace, trace = {}, {}
        ref, ref_ids = m.reason(prep, vision, rows, decode="static", trace=ref_trace, **limits)
        ref_keys = [k.clone() for k in ref.keys]
        out, ids = m.reason(prep, vision, rows, decode="graph", trace=trace, **limits)
        assert m._decoder.persistent and m._decoder.capacity % 64 == 0
        assert ids == ref_ids
        torch.testing.assert_close(torch.stack(trace["logits"]), torch.stack(ref_trace["logits"]), rtol=0, atol=1e-5)
        assert torch.equal(out.valid_len, ref.valid_len) and torch.equal(out.rope_offset, ref.rope_offset)
        for a, b in zip(out.keys, ref_keys, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        bufs.append(m._decoder.k_bufs[0])
    assert bufs[0] is bufs[1]  # same shape: reused (a static tick in between), not reallocated
    with pytest.raises(ValueError, match="outside the static cache"):
        m._decoder.graph_step(torch.zeros((rows, 1), dtype=torch.long), m._decoder.capacity)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_decode_on_cuda_is_captured_once_and_matches_static():
    torch.manual_seed(0)
    m = AlpamayoR1.create(AlpamayoConfig.from_preset("tiny"), "cuda")
    for scene, t, seed in INPUTS:
        prep, vision = _inputs(m, scene, t, seed)
        ref_trace, trace = {}, {}
        _, ref_ids = m.reason(prep, vision, 1, decode="static", trace=ref_trace, max_cot_tokens=24)
        _, ids = m.reason(prep, vision, 1, decode="graph", trace=trace, max_cot_tokens=24)
        assert ids == ref_ids
        torch.testing.assert_close(torch.stack(trace["logits"]), torch.stack(ref_trace["logits"]), rtol=0, atol=1e-4)
    assert m._decoder.graph_captures == 1
    right = ref_ids[0]
    for drafter in (OracleDrafter(right), OracleDrafter(right, wrong=lambda i: i % 2 == 1), NGramDrafter()):
        _, spec = m.reason(prep, vision, 1, decode="graph", max_cot_tokens=24, speculative=4, drafter=drafter)
        assert spec == ref_ids
    assert m._decoder.graph_captures == 2  # one more graph: the 5-token verification


def test_static_decode_sampling_equals_transformers_loop(model):
    prep, vision = _inputs(model, *INPUTS[1])
    kw = dict(max_cot_tokens=12, temperature=0.8, top_p=0.9)
    _, ref = model.reason(prep, vision, K, decode="dynamic", generator=torch.Generator().manual_seed(5), **kw)
    _, ids = model.reason(prep, vision, K, decode="static", generator=torch.Generator().manual_seed(5), **kw)
    assert ids == ref and len({tuple(i) for i in ids}) > 1


# ---------------------------------------------------------------- greedy: token-identical
def _with_stop_after(model: AlpamayoR1, token: int) -> AlpamayoR1:
    """A copy whose LM head scores ``<|traj_future_start|>`` a bit above ``token``: the CoC then ends
    where plain greedy decoding would have emitted ``token`` (tests the stop inside drafts)."""
    m = copy.deepcopy(model)
    stop = m.tokenizer.ids["traj_future_start"]
    with torch.no_grad():
        m.vlm.lm_head.weight[stop] = m.vlm.lm_head.weight[token] * 1.05
    return m


@pytest.mark.parametrize("decode", ["static", "graph"])
@pytest.mark.parametrize("gamma", [1, 2, 4, 8])
@pytest.mark.parametrize("inputs", INPUTS)
def test_greedy_speculative_is_token_identical(model, gamma, inputs, decode):
    """Against plain greedy static decoding; ``graph`` verifies with the fixed-shape step padded to
    gamma + 1 tokens (what is captured on CUDA)."""
    prep, vision = _inputs(model, *inputs)
    for limits in ({"cot_tokens": 17}, {"max_cot_tokens": 30}):
        ref, (ref_ids,) = model.reason(prep, vision, 1, **limits)
        _, (full,) = model.reason(prep, vision, 1, cot_tokens=40)  # the greedy continuation
        drafters = {
            "right": OracleDrafter(full),
            "wrong": OracleDrafter(full, wrong=lambda i: True),
            "every other wrong": OracleDrafter(full, wrong=lambda i: i % 2 == 1),
            "ngram": NGramDrafter(),
            "random lm": LogitsDrafter(_random_lm),
            "recall, then wrong": FallbackDrafter(
                NGramDrafter(memory=2, prompt=False), OracleDrafter(full, wrong=lambda i: i % 3 == 0)
            ),
        }
        for name, drafter in drafters.items():
            timings: dict = {}
            out, (ids,) = model.reason(
                prep, vision, 1, speculative=gamma, drafter=drafter, timings=timings, decode=decode, **limits
            )
            assert ids == ref_ids, (name, gamma, limits)
            assert out.length == ref.length
            assert torch.equal(out.valid_len, ref.valid_len) and torch.equal(out.rope_offset, ref.rope_offset)
            for a, b in zip(out.keys, ref.keys, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            n = len(ids)
            if name == "right":
                assert timings["spec_accepted"] == timings["spec_proposed"] > 0
                # every forward after the first token emits gamma + 1 tokens (until the limit)
                assert timings["decode_forwards"] <= -(-(n - 1) // (gamma + 1)) + 1
            if name == "wrong":
                assert timings["spec_accepted"] == 0 and timings["decode_forwards"] == n - 1


@pytest.mark.parametrize("decode", ["static", "graph"])
@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_greedy_speculative_stops_like_plain_decoding(model, gamma, decode):
    prep, vision = _inputs(model, *INPUTS[0])
    _, (full,) = model.reason(prep, vision, 1, cot_tokens=30)
    stopping = _with_stop_after(model, full[9])
    ref, (ref_ids,) = stopping.reason(prep, vision, 1, max_cot_tokens=30)
    assert len(ref_ids) < 29  # the CoC ended at the stop
    _, (cont,) = stopping.reason(prep, vision, 1, cot_tokens=30)
    stop = model.tokenizer.ids["traj_future_start"]
    right = ref_ids + [stop] + cont  # drafts that run through the stop and past it
    for drafter in (OracleDrafter(right), OracleDrafter(right, wrong=lambda i: True), NGramDrafter()):
        out, (ids,) = stopping.reason(
            prep, vision, 1, max_cot_tokens=30, speculative=gamma, drafter=drafter, decode=decode
        )
        assert ids == ref_ids
        assert out.length == ref.length and torch.equal(out.valid_len, ref.valid_len)
        assert torch.equal(out.rope_offset, ref.rope_offset)


def test_recall_drafter_drafts_the_previous_coc(model):
    prep, vision = _inputs(model, *INPUTS[1])
    _, (ref,) = model.reason(prep, vision, 1, max_cot_tokens=30)
    drafter = NGramDrafter(memory=2)
    first, second = {}, {}
    _, (ids,) = model.reason(
        prep, vision, 1, max_cot_tokens=30, speculative=4, drafter=drafter, timings=first
    )
    assert ids == ref and drafter.past[0][1 : len(ids) + 1] == ids  # remembered after the prompt's last token
    _, (ids,) = model.reason(
        prep, vision, 1, max_cot_tokens=30, speculative=4, drafter=drafter, timings=second
    )
    assert ids == ref
    assert second["spec_accepted"] == second["spec_proposed"] > first["spec_accepted"]
    assert second["decode_forwards"] <= -(-(len(ref) - 1) // 5) + 1 < first["decode_forwards"]


def test_drive_speculative_same_plan_and_stats(model):
    hist, speed = rig_history(*INPUTS[0][:1], t=40)
    images = frames(model.config)
    noise = torch.randn(K, 64, 2, generator=torch.Generator().manual_seed(1))
    plain = model.drive(images, hist, speed, 1, num_samples=K, cot_tokens=20, noise=noise, diffusion="eager")
    spec = model.drive(images, hist, speed, 1, num_samples=K, cot_tokens=20, noise=noise, diffusion="eager",
                       speculative=4)  # fmt: skip
    assert spec.reasoning == plain.reasoning
    assert spec.stats["kv_len"] == plain.stats["kv_len"]
    assert spec.stats["expert_position_start"] == plain.stats["expert_position_start"]
    # not compared number for number: verification computes the prefix K/V in multi-token
    # forwards (~1e-6 apart from one-token steps), and the random tiny expert's 10 Euler steps
    # amplify a 1e-6 perturbation of its prefix to ~0.1 in the normalised actions
    assert spec.trajectories.shape == (K, 64, 3) and np.all(np.isfinite(spec.trajectories))
    assert spec.stats["speculative"] == 4 and spec.stats["draft_proposed"] >= spec.stats["draft_accepted"]
    assert plain.stats["decode_forwards"] == 19 and spec.stats["decode_forwards"] <= 19
    with pytest.raises(ConfigError, match="single"):
        model.drive(images, hist, num_samples=K, reasoning="multi", cot_tokens=4, speculative=2)


def test_out_of_vocabulary_drafts_are_a_clear_error():
    table, _ = _toy_tables()
    bad = OracleDrafter([0, 99, 1, 2])
    with pytest.raises(ValueError, match="OracleDrafter proposed token ids outside"):
        speculative_decode(
            ToyTarget(table, PROMPT).step, table[1, 2], _toy_processors(), bad, gamma=2, limit=LIMIT,
            stop=STOP, prompt_ids=torch.tensor(PROMPT), sample=False,
        )  # fmt: skip


def test_accept_rule_greedy_cases():
    scores = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    assert accept_standard(scores, torch.tensor([1, 0]), None, False) == (2, 2)  # all right + bonus
    assert accept_standard(scores, torch.tensor([1, 2]), None, False) == (1, 0)  # second wrong
    assert accept_standard(scores, torch.tensor([0, 0]), None, False) == (0, 1)  # first wrong
    assert accept_standard(scores[:1], torch.zeros(0, dtype=torch.long), None, False) == (0, 1)


# ---------------------------------------------------------------- sampling: the target's distribution
V, STOP, LIMIT, GAMMA = 5, 4, 4, 3


def _toy_tables(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(V, V, V, generator=g) * 1.5  # logits of the next token given the last two
    draft = torch.randn(V, V, generator=g) * 1.5  # a worse model: only the last token
    return target, draft


def _toy_processors():
    return LogitsProcessorList([TemperatureLogitsWarper(0.8), TopPLogitsWarper(0.9)])


class ToyTarget:
    """A 'model' whose next-token logits depend on the last two tokens, with a position-indexed cache
    (feeding at a smaller start overwrites rolled-back positions, as the static KV cache does)."""

    def __init__(self, table: torch.Tensor, prompt: list[int]):
        self.table = table
        self.seq = list(prompt)

    def step(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        del self.seq[start:]
        out = []
        for t in ids.tolist():
            self.seq.append(int(t))
            out.append(self.table[self.seq[-2], self.seq[-1]])
        return torch.stack(out)


PROMPT = [1, 2]


def _exact_distribution(table: torch.Tensor) -> dict[tuple[int, ...], float]:
    procs = _toy_processors()

    def p_next(seq):
        return torch.softmax(procs(None, table[seq[-2], seq[-1]][None].clone()), -1)[0]

    dist: dict[tuple[int, ...], float] = {}

    def walk(seq, prob):
        cot = tuple(seq[len(PROMPT) :])
        if cot and (cot[-1] == STOP or len(cot) == LIMIT):
            dist[cot] = dist.get(cot, 0.0) + prob
            return
        p = p_next(seq)
        for t in range(V):
            if p[t] > 0:
                walk(seq + [t], prob * float(p[t]))

    walk(PROMPT, 1.0)
    return dist


def _sample_counts(accept, n: int, seed: int = 0, recall: bool = False) -> Counter:
    table, draft_table = _toy_tables()
    gen = torch.Generator().manual_seed(seed)
    drafter = LogitsDrafter(lambda ids: draft_table[ids[0]][None], temperature=1.0)
    if recall:  # deterministic recall of the last two sequences first, the sampled draft otherwise
        drafter = FallbackDrafter(NGramDrafter(memory=2, prompt=False), drafter)
    counts: Counter = Counter()
    for _ in range(n):
        target = ToyTarget(table, PROMPT)
        first = table[PROMPT[-2], PROMPT[-1]]
        res = speculative_decode(
            target.step, first, _toy_processors(), drafter, gamma=GAMMA, limit=LIMIT, stop=STOP,
            prompt_ids=torch.tensor(PROMPT), sample=True, temperature=0.8, top_p=0.9, generator=gen,
            accept=accept,
        )  # fmt: skip
        counts[tuple(res.tokens)] += 1
    return counts


def _chi_square_p(counts: Counter, exact: dict) -> float:
    """p-value of the chi-square test of ``counts`` against the exact distribution."""
    n = sum(counts.values())
    if not set(counts) <= set(exact):
        return 0.0  # sampled a sequence the target gives probability 0
    keys = sorted(exact, key=lambda k: exact[k])
    obs, exp, o_acc, e_acc = [], [], 0, 0.0
    for k in keys:  # pool the rarest cells until each expects >= 5
        o_acc += counts.get(k, 0)
        e_acc += exact[k] * n
        if e_acc >= 5:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc, e_acc = 0, 0.0
    obs[-1] += o_acc
    exp[-1] += e_acc
    exp = np.asarray(exp) * (n / sum(exp))  # float32 probabilities sum to 1 only within ~1e-7
    return float(stats.chisquare(obs, exp).pvalue)


N_SAMPLES = 3000


@pytest.mark.parametrize("recall", [False, True])
def test_sampled_speculative_matches_target_distribution(recall):
    exact = _exact_distribution(_toy_tables()[0])
    assert abs(sum(exact.values()) - 1) < 1e-5 and len(exact) > 20
    counts = _sample_counts(accept_standard, N_SAMPLES, recall=recall)
    assert set(counts) <= set(exact)  # never a sequence outside the target's (top-p) support
    assert _chi_square_p(counts, exact) > 1e-3  # measured 0.94 with these seeds


def _accept_resample_from_p(scores, drafts, draft_probs, sample, generator=None):
    """A classic bug: on rejection resample from p instead of norm(max(0, p - q))."""
    p = torch.softmax(scores, -1)
    for i in range(drafts.shape[0]):
        d = int(drafts[i])
        q = float(draft_probs[i, d])
        if float(torch.rand((), generator=generator)) < min(1.0, float(p[i, d]) / q):
            continue
        return i, int(torch.multinomial(p[i], 1, generator=generator))
    return drafts.shape[0], int(torch.multinomial(p[-1], 1, generator=generator))


def _accept_always(scores, drafts, draft_probs, sample, generator=None):
    p = torch.softmax(scores, -1)
    return drafts.shape[0], int(torch.multinomial(p[-1], 1, generator=generator))


@pytest.mark.parametrize("wrong_rule", [_accept_resample_from_p, _accept_always])
def test_distribution_test_rejects_wrong_acceptance_rules(wrong_rule):
    exact = _exact_distribution(_toy_tables()[0])
    counts = _sample_counts(wrong_rule, N_SAMPLES)
    assert _chi_square_p(counts, exact) < 1e-6  # measured 1.4e-9 (resample from p) and 0 (always)


def test_exact_enumeration_matches_plain_sampling():
    """The reference distribution itself is right: gamma = 0 (plain sampling) passes."""
    exact = _exact_distribution(_toy_tables()[0])
    table, _ = _toy_tables()
    gen = torch.Generator().manual_seed(1)
    counts: Counter = Counter()
    for _ in range(N_SAMPLES):
        target = ToyTarget(table, PROMPT)
        res = speculative_decode(
            target.step, table[1, 2], _toy_processors(), NGramDrafter(), gamma=0, limit=LIMIT, stop=STOP,
            prompt_ids=torch.tensor(PROMPT), sample=True, generator=gen,
        )  # fmt: skip
        counts[tuple(res.tokens)] += 1
    assert _chi_square_p(counts, exact) > 1e-3
    assert all(len(k) <= LIMIT for k in itertools.chain(exact, counts))


def test_bench_model_speculative_rows(tmp_path, capsys):
    import json

    from alpasim_policy.cli import main

    out = tmp_path / "BENCH.md"
    argv = ["bench", "model", "--preset", "tiny", "--speculative", "2,4", "--cot-tokens", "12",
            "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["benchmark"] == "model-decode" and summary["cot_tokens"] == 12
    assert set(summary["decode_ms"]) == {"dynamic", "static", "spec-2", "spec-4"}
    assert 0 <= summary["spec4_acceptance"] <= 1 and 1 <= summary["spec4_forwards"] <= 11
    text = out.read_text()
    assert text.count("decode tiny CoC=12 cpu, greedy") == 3 and "speculative gamma=4" in text
    assert main(["bench", "model", "--speculative", "0,2", "--no-write"]) == 2
    assert "every gamma must be >= 1" in capsys.readouterr().err
