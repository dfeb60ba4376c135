"""Imitation stage: the action inverse, the teacher-forced prefix = inference's prefix, loss goes
down on real samples, resume = uninterrupted, and the checkpoint drives as the ``alpamayo`` policy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alpasim_policy.errors import ConfigError
from alpasim_policy.model.action_space import (
    UnicycleActionSpace,
    fit_controls,
    integrate_unicycle,
    trajectory_to_controls,
)
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite

DT = 0.1
SCENE = "cr-USA_Lanker-1_1_T-1-ego1213"  # the shortest bundled scene (driving check)
DATA_SCENE = "av2s-7fab2350-w00"  # a real AV2 log with labelled steps (the shard of the tests)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- action inverse


def _plans() -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    t = torch.arange(64, dtype=torch.float64) * DT
    curved_k = 0.03 * torch.sin(t)  # S-curve, up to 0.03 1/m
    curved_a = 0.4 * torch.cos(0.5 * t)
    braking_a = torch.full((64,), -2.0, dtype=torch.float64)  # 12 -> -0.8 m/s: through zero as NVlabs does
    braking_k = torch.full((64,), 0.01, dtype=torch.float64)
    # stopping: 5 m/s braked at -2.5 m/s^2 to exactly 0 after 2 s, then standing still
    stop_a = torch.where(t < 2.0 - 1e-9, -2.5, 0.0).to(torch.float64)
    stop_k = torch.where(t < 2.0 - 1e-9, -0.02, 0.0).to(torch.float64)
    return {
        "curved": (curved_a, curved_k, 9.0),
        "braking": (braking_a, braking_k, 12.0),
        "stopping": (stop_a, stop_k, 5.0),
    }


@pytest.mark.parametrize("name", ["curved", "braking", "stopping"])
def test_trapezoid_inverse_round_trip(name):
    accel, kappa, v0 = _plans()[name]
    v0t = torch.tensor(v0, dtype=torch.float64)
    traj = integrate_unicycle(accel, kappa, v0t, DT, "nvlabs")
    ctrl = trajectory_to_controls(traj, v0t, DT, "nvlabs")
    again = integrate_unicycle(ctrl[:, 0], ctrl[:, 1], v0t, DT, "nvlabs")
    np.testing.assert_allclose(again.numpy(), traj.numpy(), atol=1e-6)
    np.testing.assert_allclose(ctrl[:, 0].numpy(), accel.numpy(), atol=1e-6)
    speed = v0 + torch.cumsum(accel, 0) * DT
    moving = (torch.cat([torch.tensor([v0]), speed[:-1]]) + speed).abs() > 1e-6
    np.testing.assert_allclose(ctrl[moving, 1].numpy(), kappa[moving].numpy(), atol=1e-6)
    if name == "stopping":
        assert (~moving).sum() > 40 and torch.all(ctrl[~moving, 1] == 0)  # standing: curvature 0


def test_action_space_inverse_is_its_integrator_inverse_and_normalised():
    space = UnicycleActionSpace(accel_std=2.0, curvature_std=0.02, method="nvlabs")
    accel, kappa, v0 = _plans()["curved"]
    action = space.normalize(torch.stack([accel, kappa], -1))
    v0t = torch.tensor([v0], dtype=torch.float64)
    traj = space.action_to_traj(action[None], v0t)
    back = space.traj_to_action(traj, v0t)
    np.testing.assert_allclose(back.numpy(), action[None].numpy(), atol=1e-6)


def test_fit_controls_is_exact_on_a_plan_and_smooth_on_a_noisy_log():
    accel, kappa, v0 = _plans()["curved"]
    v0t = torch.tensor(v0, dtype=torch.float64)
    traj = integrate_unicycle(accel, kappa, v0t, DT, "nvlabs")
    fit = fit_controls(traj, v0t, DT, "nvlabs", smooth=0.0, iterations=300)
    assert (integrate_unicycle(fit[:, 0], fit[:, 1], v0t, DT) - traj).abs().max() < 1e-3
    noisy = traj.clone()
    noisy[:, :2] += 0.02 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = trajectory_to_controls(noisy, v0t, DT, "nvlabs")
    fit = fit_controls(noisy, v0t, DT, "nvlabs", smooth=0.05)
    assert exact[:, 0].abs().max() > 5.0  # 2 cm of noise: the exact inverse swings by > 5 m/s^2
    assert fit[:, 0].abs().max() < 1.5  # the fit stays near the true 0.4 m/s^2
    err = (integrate_unicycle(fit[:, 0], fit[:, 1], v0t, DT)[:, :2] - traj[:, :2]).norm(dim=-1)
    assert err.max() < 0.15


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A real shard: the env driving a bundled scene at the tiny preset's camera size, 6 steps."""
    import alpasim_policy.sim  # noqa: F401
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.training.data import drive_samples, save_samples

    scene = load_scene(next(p for p in load_suite("bundled") if DATA_SCENE in str(p)))
    frames = AlpamayoConfig.from_preset("tiny").frames
    samples = list(
        itertools.islice(drive_samples(scene, camera_size=DEFAULT_CAMERA_SIZE["tiny"], frames=frames), 6)
    )
    d = tmp_path_factory.mktemp("imitation") / "data"
    d.mkdir()
    save_samples(samples, d / "shard.npz")
    return d


def test_frame_stride_spaces_a_samples_frames_and_training_checks_it(data_dir, tmp_path):
    """``--frame-stride 3``: a sample's frames are the frames of steps k-9, k-6, k-3, k (the same
    renders as the stride-1 drive's), the shard says so, and training a stride-1 model on it is
    refused with the shard named."""
    import alpasim_policy.sim  # noqa: F401
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.training.data import drive_samples, save_samples
    from alpasim_policy.training.imitation import iter_shards

    scene = load_scene(next(p for p in load_suite("bundled") if DATA_SCENE in str(p)))
    size = DEFAULT_CAMERA_SIZE["tiny"]
    one = {s.step: s for s in itertools.islice(drive_samples(scene, camera_size=size, frames=4), 12)}
    three = list(itertools.islice(drive_samples(scene, camera_size=size, frames=4, frame_stride=3), 12))
    s = three[-1]
    steps = [s.step - 9, s.step - 6, s.step - 3, s.step]
    assert all(k in one for k in steps)
    for j, k in enumerate(steps):
        assert np.array_equal(s.images[:, j], one[k].images[:, -1])
    path = save_samples(three, tmp_path / "fs3.npz", frame_stride=3)
    assert len(list(iter_shards(tmp_path, frame_stride=3))) == 1
    with pytest.raises(ConfigError, match="fs3.npz.*frame_stride is 1"):
        list(iter_shards(tmp_path, frame_stride=1))
    assert len(list(iter_shards(data_dir, frame_stride=1))) == 1  # old shards: stride 1
    assert path.is_file()
    from alpasim_policy.cli import main
    from alpasim_policy.model.config import AlpamayoConfig

    assert main(["train", "--stage", "data", "--out", str(tmp_path / "d"), "--frame-stride", "0"]) == 2
    assert not (tmp_path / "d" / "data").exists()  # refused before anything is driven
    for bad in (0, "5", 1.5):
        with pytest.raises(ConfigError, match="frame_stride"):
            AlpamayoConfig.from_preset("tiny", frame_stride=bad)


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    """The tensors a run's checkpoint saved (its only shard)."""
    from safetensors.torch import load_file

    return load_file(str(next((run / "checkpoint").glob("model-*.safetensors"))))


def _tiny_model(seed: int = 0):
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    torch.manual_seed(seed)
    return AlpamayoR1.create(AlpamayoConfig.from_preset("tiny"))


def test_teacher_forced_prefix_is_the_prefix_inference_builds(data_dir, monkeypatch):
    """Decoding the label's tokens through ``AlpamayoR1.reason`` (the inference path, token by
    token) gives the same KV, valid length and expert position as the one training forward, and
    the sampler's first velocity equals the training velocity at t = 0 for the same noise."""
    import alpasim_policy.model.modeling_alpamayo as modeling
    from alpasim_policy.model.flow import DynamicCacheSampler
    from alpasim_policy.training.imitation import (
        flow_velocity,
        load_shards,
        prepare_samples,
        teacher_forced_prefix,
    )

    model = _tiny_model()
    sample = prepare_samples(model, load_shards(data_dir))[0]
    assert sample.prepared.pixel_values.dtype == torch.float16  # held compactly; both paths cast on read
    assert sample.target_ids[-1] == model.tokenizer.ids["traj_future_start"]
    assert sample.target_ids[-2] == model.tokenizer.ids["cot_end"]
    forced = iter(sample.target_ids)
    monkeypatch.setattr(modeling, "next_tokens", lambda logits, *a, **k: torch.tensor([next(forced)]))
    with torch.no_grad():
        vision = model.encode_images(sample.prepared.pixel_values, sample.prepared.image_grid_thw)
        inf, texts = model.reason(sample.prepared, vision, 1)
        tf, logits = teacher_forced_prefix(model, sample.prepared, sample.target_ids)
    assert texts[0] == sample.target_ids[:-1]  # the CoC + <|cot_end|>, stop excluded
    assert inf.length == tf.length == sample.prepared.input_ids.shape[1] + len(sample.target_ids)
    assert inf.valid_len.tolist() == tf.valid_len.tolist() == [tf.length]
    assert inf.rope_offset.tolist() == tf.rope_offset.tolist()
    for a, b in zip(inf.keys + inf.values, tf.keys + tf.values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert logits.shape == (len(sample.target_ids), model.vocab_size)
    noise = torch.randn(3, model.config.n_waypoints, 2, generator=torch.Generator().manual_seed(1))
    trace: list = []
    sampler = DynamicCacheSampler(model.expert, model.action_in_proj, model.action_out_proj, 1)
    sampler.sample(inf, noise, trace)
    with torch.no_grad():
        vel = flow_velocity(model, tf, noise, torch.zeros(3))
    torch.testing.assert_close(vel, trace[0][1], atol=1e-4, rtol=1e-4)


def test_batched_losses_and_gradients_are_the_per_sample_ones(data_dir):
    """One padded forward over samples with CoCs of different lengths gives each sample the loss
    and (summed) gradient of its own forward; the patch embedding as a product is the conv."""
    from alpasim_policy.training.imitation import (
        batch_losses,
        load_shards,
        patch_embed_as_matmul,
        prepare_samples,
        sample_losses,
    )

    model = _tiny_model()
    samples = prepare_samples(model, load_shards(data_dir), fit_stats=True)
    # three samples, the first with a shorter CoC (fewer tokens), so the batch needs padding
    s0 = samples[0]
    chosen = [type(s0)(s0.prepared, s0.target_ids[3:], s0.actions, s0.valid, s0.coc), *samples[1:3]]
    assert len(chosen[0].target_ids) < max(len(s.target_ids) for s in chosen)

    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)
    ref = [sample_losses(model, s, gen, 2) for s in chosen]
    torch.stack([a + b for a, b in ref]).sum().backward()
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    pixels = chosen[0].prepared.pixel_values.float()
    conv = model.vlm.model.visual.patch_embed(pixels)
    patch_embed_as_matmul(model)
    torch.testing.assert_close(model.vlm.model.visual.patch_embed(pixels), conv, atol=1e-5, rtol=1e-5)

    lm, flow = batch_losses(model, chosen, torch.Generator().manual_seed(3), 2)
    torch.testing.assert_close(lm, torch.stack([a for a, _ in ref]).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flow, torch.stack([b for _, b in ref]).detach(), atol=1e-5, rtol=1e-5)
    (lm + flow).sum().backward()
    for p, g in zip(params, ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-3)


def test_training_steps_reduce_the_loss_and_the_checkpoint_loads(data_dir, tmp_path):
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.training.imitation import (
        ImitationConfig,
        evaluate_losses,
        load_shards,
        prepare_samples,
        train_imitation,
    )

    cfg = ImitationConfig(steps=12, batch=3, lr=3e-3, warmup=2, save_every=6, flow_samples=2)
    before = _tiny_model(cfg.seed)  # the run's initial weights (same seed)
    # and its action normalisation (the run's first act: action_stats="data"), so both models
    # are scored on the same normalised targets
    samples = prepare_samples(before, load_shards(data_dir), fit_stats=True)
    lm0, flow0 = evaluate_losses(before, samples)
    out = tmp_path / "run"
    summary = train_imitation(data_dir, out, cfg, progress=False)
    assert summary["steps"] == 12 and summary["samples"] == 6
    after = AlpamayoR1.from_pretrained(out / "checkpoint")
    assert float(after.action_space.curvature_std) == pytest.approx(float(before.action_space.curvature_std))
    assert after.config.curvature_std != 0.02  # the data's spread, saved with the checkpoint
    lm1, flow1 = evaluate_losses(after, samples)
    assert lm1 < 0.7 * lm0, (lm0, lm1)
    assert flow1 < flow0, (flow0, flow1)
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lm_loss,flow_loss,lr,seconds" and len(rows) == 13
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "checkpoint/training_state.json").read_text())
    assert state["step"] == 12 and (out / "checkpoint/optimizer.pt").is_file()
    # NVlabs key layout: the VLM under vlm.*, the expert under expert.*
    index = json.loads((out / "checkpoint/model.safetensors.index.json").read_text())
    assert any(k.startswith("vlm.model.language_model.") for k in index["weight_map"])
    assert any(k.startswith("expert.") for k in index["weight_map"])


@pytest.mark.parametrize("batched", [False, True])
def test_resume_equals_an_uninterrupted_run(data_dir, tmp_path, batched):
    from alpasim_policy.training.imitation import ImitationConfig, train_imitation

    cfg = ImitationConfig(steps=4, batch=2, lr=1e-3, warmup=1, save_every=2, flow_samples=1, batched=batched)
    train_imitation(data_dir, tmp_path / "full", cfg, progress=False)
    part = tmp_path / "part"
    train_imitation(data_dir, part, cfg, progress=False, stop_after=2)
    assert json.loads((part / "checkpoint/training_state.json").read_text())["step"] == 2
    train_imitation(data_dir, part, cfg, progress=False, resume=True)

    a, b = _checkpoint_weights(tmp_path / "full"), _checkpoint_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)

    def losses(d):
        return [line.split(",")[:5] for line in (d / "log.csv").read_text().splitlines()]

    assert losses(tmp_path / "full") == losses(part)


def test_ema_checkpoint_holds_the_average_and_resumes_exactly(data_dir, tmp_path):
    """--ema saves the running average as the checkpoint's weights without changing the training
    itself (its raw weights equal a run without --ema), and resume continues both exactly."""
    from safetensors.torch import load_file

    from alpasim_policy.errors import ConfigError
    from alpasim_policy.training.imitation import ImitationConfig, train_imitation
    from alpasim_policy.training.run_files import RAW_WEIGHTS

    base = dict(steps=4, batch=2, lr=1e-3, warmup=1, save_every=2, flow_samples=1, batched=True)
    plain, full, part = tmp_path / "plain", tmp_path / "full", tmp_path / "part"
    train_imitation(data_dir, plain, ImitationConfig(**base), progress=False)
    cfg = ImitationConfig(**base, ema=0.5)
    train_imitation(data_dir, full, cfg, progress=False)
    train_imitation(data_dir, part, cfg, progress=False, stop_after=2)
    train_imitation(data_dir, part, cfg, progress=False, resume=True)

    trained, averaged = _checkpoint_weights(plain), _checkpoint_weights(full)
    raw = load_file(str(full / "checkpoint" / RAW_WEIGHTS))
    moved = 0
    for k, w in trained.items():
        torch.testing.assert_close(raw[k], w, atol=0, rtol=0, msg=k)  # the same training
        moved += not torch.equal(averaged[k], w)
    assert moved > len(trained) // 2  # the checkpoint holds other (averaged) weights
    resumed = _checkpoint_weights(part)
    for k, w in averaged.items():
        torch.testing.assert_close(resumed[k], w, atol=0, rtol=0, msg=k)
    with pytest.raises(ConfigError, match="--ema"):
        train_imitation(data_dir, part, ImitationConfig(**base), progress=False, resume=True)
    with pytest.raises(ConfigError, match="--ema 1.0"):
        train_imitation(data_dir, tmp_path / "bad", ImitationConfig(**base, ema=1.0), progress=False)


def test_cli_trains_and_the_checkpoint_drives_as_the_alpamayo_policy(data_dir, tmp_path):
    import gymnasium as gym

    import alpasim_policy.sim  # noqa: F401
    from alpasim_policy.cli import main
    from alpasim_policy.policies.registry import make_policy

    out = tmp_path / "run"
    args = [
        "train",
        "--stage",
        "imitation",
        "--preset",
        "tiny",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch",
        "1",
        "--save-every",
        "1",
        "--flow-samples",
        "1",
        "--speed-balance",
        "0.5",
        "--model-option",
        "patch_size=8",  # a preset field changed for this run travels in the checkpoint
    ]
    assert main(args) == 0
    pol = make_policy("alpamayo", weights=str(out / "checkpoint"), samples=2, max_cot_tokens=6, threads=1)
    assert pol.model.config.patch_size == 8
    w, h = pol.camera_size
    cfg = {"cameras": {"enabled": True, "preset": pol.camera_preset, "width": w, "height": h}}
    env = gym.make("alpasim_policy/LogReplay-v0", scene=SCENE, config=cfg)
    obs, _ = env.reset(seed=0)
    pol.reset(seed=0, scene=env.unwrapped.scene, camera_rig=env.unwrapped.camera_rig)
    for _ in range(2):
        plan = pol.act(obs)
        assert plan.trajectory.shape == (64, 3) and np.isfinite(plan.trajectory).all()
        obs, *_ = env.step(plan.trajectory)
    bad = ["train", "--stage", "imitation", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]
    assert main(bad) == 2  # a clear error naming --data, not a traceback
    two = tmp_path / "second"  # --data takes several folders, used together
    two.mkdir()
    (two / "x.npz").symlink_to(next(iter(sorted(data_dir.glob("*.npz")))))
    from alpasim_policy.training.imitation import iter_shards, load_shards, prepare_samples

    n1 = len(load_shards(data_dir)["coc"])
    assert len(load_shards([data_dir, two])["coc"]) == 2 * n1
    # training reads shard by shard (memory); the samples are the ones the concatenation gives
    model = _tiny_model()
    whole = prepare_samples(model, load_shards([data_dir, two]), fit_stats=True)
    chunked = prepare_samples(model, iter_shards([data_dir, two]), fit_stats=True)
    assert len(chunked) == len(whole) == 2 * n1
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a.prepared.pixel_values, b.prepared.pixel_values) and a.target_ids == b.target_ids
        assert torch.equal(a.actions, b.actions) and torch.equal(a.valid, b.valid) and a.coc == b.coc
    typo = args[:-2] + ["--model-option", "patchsize=8"]
    assert main(typo) == 2  # names the unknown field


def test_history_dropout_shows_a_standing_car_and_keeps_the_real_actions(data_dir):
    """``history_dropout``: a seeded share of the samples get the prompt of a car standing at its
    pose; pixels, CoC, v0 and the target actions stay the real sample's."""
    from alpasim_policy.training.imitation import load_shards, prepare_samples

    model = _tiny_model()
    arrays = load_shards(data_dir)
    plain = prepare_samples(model, arrays)
    dropped = prepare_samples(model, arrays, history_dropout=0.5, seed=3)
    again = prepare_samples(model, arrays, history_dropout=0.5, seed=3)
    standing_ids = None
    changed = moved = 0
    for a, b, c in zip(plain, dropped, again, strict=True):
        assert torch.equal(b.prepared.input_ids, c.prepared.input_ids)  # the seed fixes the draw
        assert torch.equal(a.actions, b.actions) and a.prepared.v0 == b.prepared.v0 and a.coc == b.coc
        assert torch.equal(a.prepared.pixel_values, b.prepared.pixel_values)
        if not torch.equal(a.prepared.input_ids, b.prepared.input_ids):
            changed += 1
            # every history step of a standing car is the zero delta
            rows = {tuple(r) for r in b.prepared.history_ids.reshape(-1, 3).tolist()}
            assert len(rows) == 1 and (standing_ids is None or rows == standing_ids)
            standing_ids = rows
            moved += a.prepared.v0 > 0.5  # the real car moves; its actions are fitted from that
    assert 0 < changed < len(plain) and moved > 0
    with pytest.raises(ConfigError, match="history-dropout"):
        prepare_samples(model, arrays, history_dropout=1.5)


def test_speed_balanced_weights_share_the_batch_between_speed_bins():
    from alpasim_policy.training.imitation import speed_balanced_weights

    speeds = [1.0] * 90 + [26.0] * 10  # city drives outnumber the highway 9 to 1
    assert speed_balanced_weights(speeds, 0.0) is None  # the old uniform draw, bit for bit
    w = speed_balanced_weights(speeds, 1.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[:90].sum() == pytest.approx(0.5) and w[90:].sum() == pytest.approx(0.5)
    half = speed_balanced_weights(speeds, 0.5)
    assert half[90:].sum() == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)
    with pytest.raises(ConfigError, match="speed-balance"):
        speed_balanced_weights(speeds, 1.5)


def test_init_fine_tunes_a_checkpoint_keeping_its_action_statistics(data_dir, tmp_path):
    """--init starts from a checkpoint's weights and action normalisation (a DAgger fine-tune)
    instead of a fresh preset model; with a zero learning rate the weights come out unchanged."""
    from alpasim_policy.errors import ConfigError
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.training.imitation import ImitationConfig, train_imitation

    base = dict(steps=3, batch=2, lr=3e-3, warmup=1, save_every=3, flow_samples=1, batched=True)
    first = tmp_path / "first"
    train_imitation(data_dir, first, ImitationConfig(**base, action_stats="preset"), progress=False)
    ckpt = first / "checkpoint"

    start = _checkpoint_weights(first)
    frozen = tmp_path / "frozen"
    # seed 1: the init's weights, not the seed's; action_stats "data" would refit a fresh model
    train_imitation(data_dir, frozen, ImitationConfig(**{**base, "lr": 0.0}, seed=1, init=str(ckpt)), progress=False)
    for k, w in _checkpoint_weights(frozen).items():
        torch.testing.assert_close(w, start[k], atol=0, rtol=0, msg=k)
    kept = AlpamayoR1.from_pretrained(frozen / "checkpoint")
    assert kept.config.curvature_std == AlpamayoR1.from_pretrained(ckpt).config.curvature_std == 0.02  # not refit

    tuned = tmp_path / "tuned"
    train_imitation(data_dir, tuned, ImitationConfig(**base, init=str(ckpt)), progress=False)
    moved = _checkpoint_weights(tuned)
    assert any(not torch.equal(moved[k], w) for k, w in start.items())
    state = json.loads((tuned / "checkpoint/training_state.json").read_text())
    assert state["config"]["init"] == str(ckpt)

    with pytest.raises(ConfigError, match="--init .*not a checkpoint"):
        train_imitation(data_dir, tmp_path / "bad", ImitationConfig(**base, init=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="--model-option"):
        cfg = ImitationConfig(**base, init=str(ckpt), model_options={"patch_size": 8})
        train_imitation(data_dir, tmp_path / "bad2", cfg, progress=False)
