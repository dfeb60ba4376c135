"""Parity with NVlabs' own Alpamayo-R1 code, stage by stage, on a folder NVlabs wrote.

The fixture (tests/fixtures/nvlabs_parity, README there) holds a small random checkpoint written by
NVlabs' ``save_pretrained`` (sharded safetensors + NVlabs config + base-VLM folder with tokenizer
and image processor) and the numbers NVlabs' ``sample_trajectories_from_data_with_vlm_rollout``
produced on it: prompt / history token ids, per-step raw logits, generated CoC ids, KV length,
expert position ids, every Euler state and velocity, the trajectories, and ``action_to_traj`` /
``estimate_t0_states`` on designed actions. Runs: K=1 and K=6 where the CoC ends with
``<|traj_future_start|>``, and K=6 where the length limit ends it first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alpasim_policy.model import AlpamayoR1
from alpasim_policy.model.action_space import UnicycleActionSpace, estimate_v0

FIX = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity"
CKPT = FIX / "checkpoint"
META = json.loads((FIX / "recording.json").read_text())
RUNS = {name: tuple(v) for name, v in META["runs"].items()}  # name -> (K, max generation length)


@pytest.fixture(scope="module")
def rec():
    return dict(np.load(FIX / "nvlabs_outputs.npz"))


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return AlpamayoR1.from_pretrained(CKPT, cameras=2, frames=2)


def _history(rec):
    xyz = rec["hist_xyz"].astype(np.float64)
    hist = np.stack([xyz[:, 0], xyz[:, 1], rec["hist_yaw"].astype(np.float64)], axis=1)
    return hist, xyz[:, 2]


def _wrap(a):
    return np.arctan2(np.sin(a), np.cos(a))


def _prepare(model, rec):
    hist, z = _history(rec)
    return model.prepare(rec["images"], hist, history_z=z)


def test_folder_loads_with_nvlabs_sizes(model):
    cfg = model.config
    # sizes come from NVlabs' config + the base VLM it names, not from a preset
    assert (cfg.text_hidden, cfg.text_layers, cfg.expert_hidden, cfg.expert_heads) == (32, 2, 24, 2)
    assert (cfg.action_proj_hidden, cfg.action_proj_layers, cfg.fourier_features) == (40, 2, 12)
    assert (cfg.hist_bins, cfg.hist_token_offset, cfg.traj_vocab_size) == (200, 40, 256)
    assert (cfg.accel_mean, cfg.accel_std, cfg.curvature_mean, cfg.curvature_std) == tuple(
        META["action_norm"]
    )
    assert len(model.tokenizer) == cfg.vocab_size == 791
    assert model.image_processor is not None  # the base-VLM folder's processor


def test_prompt_and_history_token_ids_exact(model, rec):
    prep = _prepare(model, rec)
    np.testing.assert_array_equal(
        prep.history_ids + model.tokenizer.traj_token_start + 40, rec["hist_token_ids"] + 547
    )
    for name in RUNS:
        np.testing.assert_array_equal(prep.input_ids[0].numpy(), rec[f"{name}_prompt_ids"])


@pytest.mark.parametrize("name", list(RUNS))
def test_reasoning_kv_and_expert_positions(model, rec, name):
    k, gen_len = RUNS[name]
    prep = _prepare(model, rec)
    vision = model.encode_images(prep.pixel_values, prep.image_grid_thw)
    trace: dict = {}
    prefix, cot = model.reason(prep, vision, k, max_cot_tokens=gen_len, temperature=0.0, trace=trace)
    ours = torch.stack(trace["tokens"], dim=1).numpy()
    ref = rec[f"{name}_generated"]
    stop = model.tokenizer.ids["traj_future_start"]
    # CoC ids exact up to and including the stop; NVlabs generates one more token that is never fed
    n = ours.shape[1]
    np.testing.assert_array_equal(ours, ref[:, :n])
    if (ref == stop).any():
        assert n == int(np.argmax(ref[0] == stop)) + 1 == ref.shape[1] - 1
    else:
        assert n == ref.shape[1] == gen_len
    # raw logits of every step we compute
    logits = torch.stack(trace["logits"], dim=1).numpy()
    ref_logits = rec[f"{name}_logits"][:, :n]
    # NVlabs' logits processor writes -inf over the trajectory vocabulary in place, so the recorded
    # "raw" logits carry it there; everything else is compared
    tk = model.tokenizer
    masked = ~np.isfinite(ref_logits)
    assert masked[..., tk.traj_token_start : tk.traj_token_start + tk.traj_vocab_size].all()
    assert masked.sum() == masked.shape[0] * masked.shape[1] * tk.traj_vocab_size
    np.testing.assert_allclose(logits[~masked], ref_logits[~masked], atol=1e-5, rtol=0)
    assert len(cot) == k and all(c == cot[0] for c in cot)
    # what the expert attends to, and where its positions start
    assert prefix.length == int(rec[f"{name}_kv_len"]) == int(rec[f"{name}_expert_kv_len"])
    pos = prefix.rope_offset[:, None] + torch.arange(64)[None, :]
    np.testing.assert_array_equal(pos[None].expand(3, -1, -1).numpy(), rec[f"{name}_expert_pos"])


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_teacher_forced_euler_velocities(model, rec, name, mode):
    from alpasim_policy.model.flow import DynamicCacheSampler

    k, gen_len = RUNS[name]
    prep = _prepare(model, rec)
    vision = model.encode_images(prep.pixel_values, prep.image_grid_thw)
    prefix, _ = model.reason(prep, vision, k, max_cot_tokens=gen_len, temperature=0.0)
    xs, ts, vs = rec[f"{name}_euler_x"], rec[f"{name}_euler_t"], rec[f"{name}_euler_v"]
    np.testing.assert_allclose(ts, np.linspace(0, 1, 11)[:-1], atol=1e-7)
    noise = torch.from_numpy(rec[f"{name}_noise"])
    if mode == "static":
        torch.set_grad_enabled(False)  # velocity() is the graph-captured body, called bare here
        sampler = model._static_sampler(k, prefix)
        sampler.load(prefix, noise)
        for i in range(len(ts)):
            v = sampler.velocity(torch.from_numpy(xs[i]), i)
            np.testing.assert_allclose(v.numpy(), vs[i], atol=1e-4, rtol=0, err_msg=f"step {i}")
        torch.set_grad_enabled(True)
    else:
        trace: list = []
        DynamicCacheSampler(model.expert, model.action_in_proj, model.action_out_proj, 10).sample(
            prefix, noise, trace=trace
        )
        for i, (x, v) in enumerate(trace):
            np.testing.assert_allclose(x.numpy(), xs[i], atol=1e-4, rtol=0, err_msg=f"step {i}")
            np.testing.assert_allclose(v.numpy(), vs[i], atol=1e-4, rtol=0, err_msg=f"step {i}")


@pytest.mark.parametrize("name", list(RUNS))
def test_free_running_trajectory(model, rec, name):
    k, gen_len = RUNS[name]
    hist, z = _history(rec)
    out = model.drive(
        rec["images"],
        hist,
        history_z=z,
        num_samples=k,
        reasoning="single" if name == "k1" else "multi",
        temperature=0.0,
        max_cot_tokens=gen_len,
        noise=torch.from_numpy(rec[f"{name}_noise"]),
        diffusion="eager",
    )
    ref_xyz = rec[f"{name}_pred_xyz"]
    err = np.hypot(*(out.trajectories[..., :2] - ref_xyz[..., :2]).transpose(2, 0, 1))
    assert err.max() <= 0.2, err.max()
    assert err.max() < 1e-3  # in practice float noise only
    np.testing.assert_allclose(_wrap(out.trajectories[..., 2] - rec[f"{name}_pred_yaw"]), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.z, ref_xyz[..., 2], atol=1e-6)  # the last history z, carried


def test_single_reasoning_matches_nvlabs_k6(model, rec):
    """One shared prefix for K samples gives NVlabs' K-sequence result (greedy CoCs are identical)."""
    k, gen_len = RUNS["k6"]
    hist, z = _history(rec)
    out = model.drive(
        rec["images"],
        hist,
        history_z=z,
        num_samples=k,
        reasoning="single",
        max_cot_tokens=gen_len,
        noise=torch.from_numpy(rec["k6_noise"]),
        diffusion="graph",
    )
    np.testing.assert_allclose(out.trajectories[..., :2], rec["k6_pred_xyz"][..., :2], atol=1e-3)


def test_action_to_traj_and_v0(rec):
    a_mean, a_std, k_mean, k_std = META["action_norm"]
    space = UnicycleActionSpace(64, 0.1, a_mean, a_std, k_mean, k_std)
    hist, _ = _history(rec)
    v0 = estimate_v0(hist[:, :2], hist[:, 2], 0.1)
    assert v0 == pytest.approx(float(rec["v0"][0]), abs=1e-4)
    actions = torch.from_numpy(rec["a2t_actions"])
    traj = space.action_to_traj(actions, torch.full((actions.shape[0],), v0, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(traj[..., :2], rec["a2t_xyz"][..., :2], atol=1e-4, rtol=0)
    np.testing.assert_allclose(_wrap(traj[..., 2] - rec["a2t_yaw"]), 0.0, atol=1e-5)  # NVlabs: from rotations
    # the exact-arc option is a different integrator: it does not reproduce NVlabs here
    exact = UnicycleActionSpace(64, 0.1, a_mean, a_std, k_mean, k_std, method="exact")
    other = exact.action_to_traj(actions, torch.full((actions.shape[0],), v0, dtype=torch.float64)).numpy()
    assert np.abs(other[..., :2] - rec["a2t_xyz"][..., :2]).max() > 1e-3
