"""The routine reasoner (draft model): FlatRoPE, incremental == full forward, drafter protocol, distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alpasim_policy.model.config import AlpamayoConfig
from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
from alpasim_policy.model.modeling_draft import (
    DraftModel,
    FlatRoPE,
    _rotate,
    load_drafter,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return AlpamayoR1.create(AlpamayoConfig.from_preset("tiny"))


def _inputs(cfg: AlpamayoConfig, seed: int, speed: float = 8.0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(cfg.num_images, 3, *cfg.image_hw), dtype=np.uint8)
    t = (np.arange(cfg.history_steps) - (cfg.history_steps - 1)) * cfg.dt
    history = np.stack([speed * t, 0.02 * speed * t**2, 0.01 * t], axis=1)
    return images, history


def test_flat_rope_positions_are_one_dimensional_over_the_image_free_prompt(target):
    draft = DraftModel.from_target(target, layers=1)
    images, history = _inputs(target.config, 0)
    prompt = target.prepare(images, history).input_ids[0]
    ctx = draft.context_ids(prompt)
    tk = target.tokenizer
    # the image placeholders are gone; the 48 history ids and the text remain in order
    n_img = int((prompt == tk.ids["image_pad"]).sum())
    assert n_img == target.config.num_images * target.config.tokens_per_image
    assert len(ctx) == len(prompt) - n_img - 2 * target.config.num_images
    hist = (ctx >= tk.traj_token_start) & (ctx < tk.traj_token_start + tk.traj_vocab_size)
    assert int(hist.sum()) == target.config.history_tokens
    assert ctx[-1] == tk.ids["cot_start"]
    # one position axis: 0..L-1, whereas the target's M-RoPE has 3 axes that differ on image tokens
    pos = FlatRoPE.positions(0, len(ctx))
    assert pos.dim() == 1 and torch.equal(pos, torch.arange(len(ctx)))
    pos3, _ = target.vlm.model.get_rope_index(
        prompt[None],
        (prompt == tk.ids["image_pad"]).int()[None],
        image_grid_thw=target.prepare(images, history).image_grid_thw,
    )
    assert pos3.shape[0] == 3 and not torch.equal(pos3[1], pos3[2])
    with pytest.raises(ValueError, match="1-D"):
        draft.rope(pos3[:, 0], torch.float32)
    # rotary on one axis: q.k depends only on the position difference
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    rope16 = FlatRoPE(16, 10_000.0)
    for p0, p1, s in ((0, 3, 7), (5, 40, 100), (100, 101, 1)):
        cos, sin = rope16(torch.tensor([p0, p1, p0 + s, p1 + s]), torch.float32)
        a = (_rotate(q, cos[0], sin[0]) * _rotate(k, cos[1], sin[1])).sum()
        b = (_rotate(q, cos[2], sin[2]) * _rotate(k, cos[3], sin[3])).sum()
        assert abs(float(a - b)) < 1e-4
        c = (_rotate(q, cos[0], sin[0]) * _rotate(k, cos[3], sin[3])).sum()
        assert abs(float(a - c)) > 1e-3  # a different distance changes it


def test_incremental_forward_equals_the_full_forward_and_rollback_is_exact(target):
    torch.manual_seed(1)
    draft = DraftModel.from_target(target, layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 600, (1, 90), generator=g)
    full = draft(ids)[0]  # (L, V)
    cache = draft.new_cache()
    got = [draft.extend(ids[:, :50], cache)]
    for i in range(50, 70):
        got.append(draft.extend(ids[:, i : i + 1], cache))
    got.append(draft.extend(ids[:, 70:90], cache))  # a chunk after a cached part (needs the mask)
    want = torch.stack([full[49], *full[50:70], full[89]])
    assert torch.allclose(torch.cat(got), want, atol=2e-5, rtol=1e-4)
    # rolling back to 60 tokens and feeding other ones equals a fresh forward of that sequence
    cache.length = 60
    other = torch.randint(0, 600, (1, 5), generator=g)
    roll = draft.extend(other, cache)
    fresh = draft(torch.cat([ids[:, :60], other], dim=1))[0, -1]
    assert torch.allclose(roll[0], fresh, atol=2e-5, rtol=1e-4)


def test_drafter_protocol_greedy_and_sampled(target, tmp_path):
    torch.manual_seed(2)
    draft = DraftModel.from_target(target, layers=1)
    draft.save_pretrained(tmp_path / "d")
    drafter = load_drafter(tmp_path / "d")
    loaded = drafter.model
    for k, v in draft.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    images, history = _inputs(target.config, 0)
    prompt = target.prepare(images, history).input_ids[0]
    drafter.reset(prompt)
    cot = torch.tensor([target.tokenizer.encode("keep")[0]])
    toks, probs = drafter.propose(cot, 4, temperature=0.0, top_p=1.0, generator=None)
    assert probs is None and 1 <= len(toks) <= 4
    tk = target.tokenizer
    assert not ((toks >= tk.traj_token_start) & (toks < tk.traj_token_start + tk.traj_vocab_size)).any()
    # greedy drafts are the argmax continuation of a full forward over context + CoC
    seq = torch.cat([loaded.context_ids(prompt), cot])
    for t in toks.tolist():
        nxt = int(loaded.mask_logits(loaded(seq[None])[0, -1]).argmax())
        assert nxt == t
        seq = torch.cat([seq, torch.tensor([t])])
    # accept 1, then the target's own token: the next proposal continues from the corrected CoC,
    # identical to a drafter reset and fed that CoC from scratch
    drafter.advance(1)
    cot2 = torch.cat([cot, toks[:1], torch.tensor([tk.encode("lane")[0]])])
    a, _ = drafter.propose(cot2, 3, temperature=0.0, top_p=1.0, generator=None)
    fresh = load_drafter(tmp_path / "d")
    fresh.reset(prompt)
    b, _ = fresh.propose(cot2, 3, temperature=0.0, top_p=1.0, generator=None)
    assert torch.equal(a, b)
    # sampling: rows are distributions, each token drawn from its row (non-zero probability)
    drafter.reset(prompt)
    toks, probs = drafter.propose(
        cot, 4, temperature=0.6, top_p=0.98, generator=torch.Generator().manual_seed(0)
    )
    assert probs.shape == (len(toks), loaded.config.vocab_size)
    assert torch.allclose(probs.sum(-1), torch.ones(len(toks)), atol=1e-5)
    assert all(probs[i, t] > 0 for i, t in enumerate(toks.tolist()))


def test_distillation_steps_reduce_the_loss_and_are_deterministic(target):
    from alpasim_policy.training.draft import DraftTrainConfig, distill_loss, evaluate_draft, teacher_samples

    cfg = target.config
    arrays = {"images": [], "history": [], "command": [], "coc": []}
    for i in range(3):
        images, history = _inputs(cfg, i, speed=4.0 + 3 * i)
        arrays["images"].append(images)
        arrays["history"].append(history)
        arrays["command"].append(i % 3)
        arrays["coc"].append("")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def run(seed: int) -> tuple[list[float], dict]:
        torch.manual_seed(seed)
        draft = DraftModel.from_target(target, layers=1, intermediate=64)
        teach = teacher_samples(target, draft, arrays, max_cot_tokens=10)
        assert all(
            1 <= len(s.cot) <= 10 and s.logp.shape == (len(s.cot), draft.config.vocab_size) for s in teach
        )
        dcfg = DraftTrainConfig(lr=3e-3)
        opt = torch.optim.AdamW(draft.parameters(), lr=dcfg.lr)
        pad = target.tokenizer.ids["pad"]
        losses = []
        draft.train()
        for _ in range(10):
            loss, _, _ = distill_loss(draft, teach, dcfg, pad)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        draft.eval()
        return losses, evaluate_draft(draft, teach, pad)

    losses, ev = run(0)
    assert losses[-1] < 0.6 * losses[0]
    assert 0.0 <= ev["acceptance_g4"] <= 1.0 and ev["cot_tokens"] >= 3
    assert 1.0 <= ev["tokens_per_target_step_g4"] <= 5.0
    again, _ = run(0)
    assert again == losses  # deterministic for a seed


def test_the_draft_drives_speculative_decoding_token_identically(target):
    """With the speculative decoder (issue 15's other part; skipped where this tree lacks it), the
    draft's proposals are verified by the target: greedy output equals plain greedy decoding."""
    pytest.importorskip("alpasim_policy.model.speculative")
    import inspect

    if "drafter" not in inspect.signature(target.drive).parameters:
        pytest.skip("drive() has no drafter option in this tree")
    torch.manual_seed(3)
    draft = DraftModel.from_target(target, layers=1)
    images, history = _inputs(target.config, 0)
    noise = torch.randn(2, 64, 2, generator=torch.Generator().manual_seed(0))
    plain = target.drive(images, history, num_samples=2, cot_tokens=12, noise=noise)
    spec = target.drive(
        images,
        history,
        num_samples=2,
        cot_tokens=12,
        noise=noise,
        speculative=4,
        drafter=draft.as_drafter(),
    )
    assert spec.reasoning == plain.reasoning
    assert spec.stats["draft_proposed"] > 0
    # (actions are not compared: the prefix KV is computed in chunks of gamma + 1 tokens instead of
    # one by one, equal up to float rounding that the random 100 Hz Fourier flow amplifies)
    assert np.isfinite(spec.actions).all() and spec.actions.shape == plain.actions.shape


def test_cli_train_stage_draft_writes_a_loadable_draft(target, tmp_path):
    import json

    from alpasim_policy.cli import main

    ckpt = tmp_path / "target"
    target.save_pretrained(ckpt)
    data = tmp_path / "data"
    data.mkdir()
    cfg = target.config
    images = np.stack([_inputs(cfg, i)[0] for i in range(3)])
    history = np.stack([np.concatenate([_inputs(cfg, i)[1], np.full((16, 1), 8.0)], 1) for i in range(3)])
    np.savez(
        data / "shard.npz",
        images=images,
        history=history.astype(np.float32),
        command=np.array([0, 1, 2]),
        target=np.zeros((3, 64, 3)),
        target_valid=np.ones((3, 64), bool),
        coc=np.array(["keep lane", "slow down", "turn left"]),
    )
    out = tmp_path / "run"
    args = ["train", "--stage", "draft", "--target", str(ckpt), "--data", str(data), "--out", str(out),
            "--steps", "3", "--batch", "2"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 3 and summary["held_out_samples"] == 0
    assert summary["final_loss"] < summary["first_loss"]
    drafter = load_drafter(out / "draft")
    assert drafter.model.config.vocab_size == target.vocab_size
    assert (out / "log.csv").read_text().count("\n") == 4  # header + 3 steps
    # a missing --target is a clear error (exit 2), not a traceback
    assert main(["train", "--stage", "draft", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
