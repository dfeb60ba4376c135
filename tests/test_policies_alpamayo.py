"""AlpamayoPolicy: frames, options, and the tiny preset driving a real bundled scene in closed loop."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import alpasim_policy.sim.env  # noqa: F401 - registers the env
from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.alpamayo import AlpamayoPolicy, FrameBuffer
from alpasim_policy.policies.base import Policy, validate_plan
from alpasim_policy.policies.registry import make_policy

SCENE = "cr-USA_Lanker-1_1_T-1-ego1213"  # the shortest bundled scene: 24 controlled ticks
# one torch thread: never pathological on a shared CI runner (oversubscribed pools are ~10x slower)
FAST = {
    "preset": "tiny",
    "samples": 3,
    "cot_tokens": 4,
    "camera_width": 64,
    "camera_height": 36,
    "threads": 1,
}


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """``threads=1`` is process-wide; give the next test modules torch's setting back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def make_env(policy, scene: str = SCENE):
    w, h = policy.camera_size
    cfg = {"cameras": {"enabled": True, "preset": policy.camera_preset, "width": w, "height": h}}
    return gym.make("alpasim_policy/LogReplay-v0", scene=scene, config=cfg)


def drive(policy, ticks: int | None = None, seed: int = 0, scene: str = SCENE):
    env = make_env(policy, scene)
    obs, _ = env.reset(seed=seed)
    policy.reset(seed=seed, scene=env.unwrapped.scene, camera_rig=env.unwrapped.camera_rig)
    outs, infos = [], []
    while ticks is None or len(outs) < ticks:
        out = policy.act(obs)
        outs.append(out)
        obs, _, term, trunc, info = env.step(out.trajectory)
        infos.append(info)
        if term or trunc:
            break
    return outs, infos, env


# ----------------------------------------------------------------------------- frames


def test_frame_buffer_pads_with_the_first_frame_and_keeps_order():
    fb = FrameBuffer(4)
    img = {n: np.full((6, 8, 3), i, np.uint8) for i, n in enumerate(["a", "b"])}

    def frame(v):
        return {"a": np.full((6, 8, 3), v, np.uint8), "b": np.full((6, 8, 3), 100 + v, np.uint8)}

    out = fb.push(img, 16, ["a", "b"])
    assert out.shape == (2, 4, 3, 6, 8) and out.dtype == np.uint8
    assert (out[0] == 0).all() and (out[1] == 1).all()  # four copies of the first frame
    for k, v in enumerate([10, 20, 30, 40]):
        out = fb.push(frame(v), 17 + k, ["a", "b"])
    assert out[0, :, 0, 0, 0].tolist() == [10, 20, 30, 40]  # oldest first, 0.1 s apart
    assert out[1, :, 0, 0, 0].tolist() == [110, 120, 130, 140]
    out = fb.push(frame(70), 23, ["b", "a"])  # steps 21, 22 skipped: the last frame is held for them
    assert out[1, :, 0, 0, 0].tolist() == [40, 40, 40, 70] and out[0, -1, 0, 0, 0] == 170
    out = fb.push(frame(5), 16, ["a", "b"])  # step went back: a new rollout starts over
    assert out[0, :, 0, 0, 0].tolist() == [5, 5, 5, 5]


def test_frame_buffer_with_a_stride_hands_out_every_strideth_tick():
    """``frame_stride`` 3: the frames of ticks t-9, t-6, t-3, t; the start padded by the first frame."""
    fb = FrameBuffer(4, stride=3)
    seen = []
    for k in range(12):
        out = fb.push({"a": np.full((2, 2, 3), k, np.uint8)}, k, ["a"])
        seen.append(out[0, :, 0, 0, 0].tolist())
    assert seen[0] == [0, 0, 0, 0]
    assert seen[4] == [0, 0, 1, 4]  # ticks -5, -2 (padding: tick 0's frame), 1, 4
    assert seen[9] == [0, 3, 6, 9] and seen[11] == [2, 5, 8, 11]
    out = fb.push({"a": np.full((2, 2, 3), 99, np.uint8)}, 13, ["a"])  # step 12 skipped: tick 11's frame held
    assert out[0, :, 0, 0, 0].tolist() == [4, 7, 10, 99]
    out = fb.push({"a": np.full((2, 2, 3), 98, np.uint8)}, 14, ["a"])
    assert out[0, :, 0, 0, 0].tolist() == [5, 8, 11, 98]  # step 12 shows tick 11's frame
    with pytest.raises(ConfigError, match="stride"):
        FrameBuffer(4, stride=0)


def test_a_checkpoint_with_a_frame_stride_drives_with_its_spacing(tmp_path):
    """``frame_stride`` travels in ``config.json``: the policy stacks that checkpoint's frames that far
    apart and its vision cache keeps them until they come back, in the env's closed loop."""
    import torch

    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    torch.manual_seed(0)
    AlpamayoR1.create(AlpamayoConfig.from_preset("tiny", frame_stride=2)).save_pretrained(tmp_path / "fs2")
    pol = AlpamayoPolicy(**{**FAST, "weights": str(tmp_path / "fs2")})
    assert pol.core.frames.stride == 2 and pol.model.frame_cache.keep_ticks == 2
    env = make_env(pol)
    obs, _ = env.reset(seed=0)
    pol.reset(seed=0, scene=env.unwrapped.scene, camera_rig=env.unwrapped.camera_rig)
    cached = []
    for _ in range(6):
        before = pol.model.counters["vision_frames_cached"]
        out = pol.act(obs)
        validate_plan(out.trajectory)
        cached.append(pol.model.counters["vision_frames_cached"] - before)
        obs, *_ = env.step(out.trajectory)
    env.close()
    # from tick 2 on, each camera's frames are ticks t-6, t-4, t-2 (the start padded with tick 0's
    # frame) and t: all but the newest were seen at tick t-1 or t-2, so all but 4 are reused
    assert cached[2:] == [4 * 3] * 4


def test_frame_buffer_rejects_a_changing_image_size():
    fb = FrameBuffer(2)
    fb.push({"a": np.zeros((6, 8, 3), np.uint8)}, 0, ["a"])
    with pytest.raises(ConfigError, match="cameras/a"):
        fb.push({"a": np.zeros((7, 8, 3), np.uint8)}, 1, ["a"])


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"),
    [("preset", "huge"), ("select", "best"), ("reasoning", "double"), ("diffusion", "magic"),
     ("samples", 0), ("samples", "six"), ("device", "tpu"), ("weights", "/nonexistent/dir"),
     ("deadline_ms", "-5"), ("latency_mode", "later"), ("seed", "1.5"), ("threads", "0"),
     ("speculative", "-1"), ("speculative", "two"), ("draft", "/nonexistent/dir"), ("noise", "sometimes")],
)  # fmt: skip
def test_bad_options_raise_config_error_naming_the_option(option, value):
    with pytest.raises(ConfigError, match=option):
        make_policy("alpamayo", **{option: value})


def test_unknown_option_is_named_by_the_registry():
    with pytest.raises(ConfigError, match="samplez"):
        make_policy("alpamayo", samplez=3)


def test_missing_cameras_is_a_clear_error():
    pol = AlpamayoPolicy(**FAST)
    env = gym.make("alpasim_policy/LogReplay-v0", scene=SCENE)  # cameras off
    obs, _ = env.reset(seed=0)
    pol.reset(seed=0, scene=env.unwrapped.scene)
    with pytest.raises(ConfigError, match="camera"):
        pol.act(obs)


# ----------------------------------------------------------------------------- closed loop


@pytest.fixture(scope="module")
def first_run():
    pol = make_policy("alpamayo", **FAST)  # string-free kwargs; the CLI path is tested below
    outs, infos, env = drive(pol)
    return pol, outs, infos, env


def test_tiny_preset_drives_a_real_scene_to_the_end(first_run):
    pol, outs, infos, env = first_run
    assert isinstance(pol, Policy) and pol.camera_preset == "alpamayo4"
    scene = env.unwrapped.scene
    assert len(outs) == scene.num_steps - 1 - env.unwrapped.start_step  # every controlled tick
    assert infos[-1]["step"] == scene.num_steps - 1
    for out in outs:
        validate_plan(out.trajectory)
        assert out.trajectory.shape == (64, 3)
        assert out.samples.shape == (3, 64, 3) and np.isfinite(out.samples).all()
        np.testing.assert_array_equal(out.trajectory, out.samples[out.extra["selected_index"]])
        assert out.extra["selected_index"] == 0  # select=first, AlpaSim's rule
        assert isinstance(out.reasoning, str)
        t = out.extra["timings"]
        assert {"vision", "prefill", "decode", "diffusion", "total"} <= set(t)
        assert out.extra["latency_s"] >= t["total"] > 0
        assert out.extra["cot_tokens"] == [4]
    # the samples differ (independent noise) and the car moved
    assert np.ptp(outs[0].samples[:, -1, :2], axis=0).max() > 0
    assert (
        np.hypot(*(infos[-1]["ego_state"][:2] - env.unwrapped.ego_traj[env.unwrapped.start_step, :2])) > 1.0
    )


def test_same_seed_same_rollout_different_seed_different_samples(first_run):
    _, outs, _, _ = first_run
    again, _, _ = drive(make_policy("alpamayo", **{k: str(v) for k, v in FAST.items()}), ticks=3)
    for a, b in zip(outs[:3], again, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.reasoning == b.reasoning
    other, _, _ = drive(make_policy("alpamayo", **FAST), ticks=1, seed=1)
    assert not np.array_equal(other[0].samples, outs[0].samples)


def test_closed_loop_reuses_the_vision_of_frames_seen_last_tick(first_run):
    """The policy's per-frame vision cache: after the first ticks each tick encodes only the C new
    frames, and the rollout is the one without the cache (exact)."""
    pol, outs, _, _ = first_run
    cfg = pol.model.config
    reused_per_tick = cfg.cameras * (cfg.frames - 1)
    assert pol.model.vision_cache and pol.model.frame_cache.hits >= (len(outs) - 4) * reused_per_tick
    plain = make_policy("alpamayo", **FAST)
    plain.model.vision_cache = False
    again, _, _ = drive(plain, ticks=5)
    assert plain.model.frame_cache.hits == 0
    for a, b in zip(outs[:5], again, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.reasoning == b.reasoning


def test_held_noise_is_one_draw_per_rollout_and_steadies_the_plan(first_run):
    """``noise=held``: every tick of a rollout starts the flow from the same draw (a new rollout
    seed, a new draw), so consecutive plans differ only as the inputs do; ``fresh`` (the default)
    lets the model draw anew each tick."""
    _, fresh_outs, _, _ = first_run
    pol = make_policy("alpamayo", **FAST, noise="held")
    drive(pol, ticks=1)  # the first reset's warm-up calls the model too
    seen = []
    drive_fn = pol.model.drive

    def recording(*args, **kwargs):
        seen.append(kwargs.get("noise"))
        return drive_fn(*args, **kwargs)

    pol.model.drive = recording
    held_outs, _, _ = drive(pol, ticks=8)
    assert all(n is not None and n.shape == (3, 64, 2) for n in seen)
    assert all(torch_equal(n, seen[0]) for n in seen[1:])
    first = seen[0]
    seen.clear()
    drive(pol, ticks=2, seed=1)
    assert torch_equal(seen[0], seen[1]) and not torch_equal(seen[0], first)
    seen.clear()
    again, _, _ = drive(pol, ticks=2)  # the same rollout seed draws the same noise
    assert torch_equal(seen[0], first)
    np.testing.assert_array_equal(again[1].samples, held_outs[1].samples)

    def tick_to_tick(outs):  # how far the chosen plan's 3 s point moves from one tick to the next
        ends = np.stack([o.trajectory[29, :2] for o in outs])
        return float(np.median(np.hypot(*np.diff(ends, axis=0).T)))

    assert tick_to_tick(held_outs) < tick_to_tick(fresh_outs[:8])


def test_noise_scale_narrows_the_samples_and_zero_makes_them_one_plan(first_run):
    """``noise_scale`` multiplies the unit-Gaussian draw the model would have made: the first tick's
    K samples spread less at 0.5 than at 1 (the default, whose draw it is), and at 0 they are one
    deterministic plan."""
    _, outs, _, _ = first_run

    def spread(samples):
        return float(np.ptp(samples[:, -1, :2], axis=0).max())

    half, _, _ = drive(make_policy("alpamayo", **FAST, noise_scale="0.5"), ticks=1)
    zero, _, _ = drive(make_policy("alpamayo", **FAST, noise_scale=0), ticks=1)
    assert 0 < spread(half[0].samples) < spread(outs[0].samples)
    assert spread(zero[0].samples) < 1e-9
    with pytest.raises(ConfigError, match="noise_scale"):
        make_policy("alpamayo", **FAST, noise_scale=1.5)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_speculative_option_keeps_the_greedy_reasoning():
    spec, _, _ = drive(make_policy("alpamayo", **{**FAST, "cot_tokens": None, "max_cot_tokens": 12,
                                                  "speculative": "3"}), ticks=2)  # fmt: skip
    plain, _, _ = drive(
        make_policy("alpamayo", **{**FAST, "cot_tokens": None, "max_cot_tokens": 12}), ticks=2
    )
    for a, b in zip(spec, plain, strict=True):
        assert a.reasoning == b.reasoning  # greedy speculative decoding is token-identical
        assert a.extra["draft_proposed"] >= a.extra["draft_accepted"] >= 0
    with pytest.raises(ConfigError, match="speculative"):
        make_policy("alpamayo", **{**FAST, "reasoning": "multi", "speculative": 2})


def test_multi_reasoning_gives_the_chosen_sample_its_own_text():
    pol = AlpamayoPolicy(**{**FAST, "reasoning": "multi", "select": "medoid"})
    outs, _, _ = drive(pol, ticks=2)
    for out in outs:
        texts = out.extra["reasoning_all"]
        assert len(texts) == 3 and out.extra["cot_tokens"] == [4, 4, 4]
        assert out.reasoning == texts[out.extra["selected_index"]]
        assert out.extra["selection"] == "medoid" and len(out.extra["selection_scores"]) == 3


def test_consistent_selection_in_the_loop_uses_the_coc_it_returns():
    """The shipped weights (FAST's default) write template CoCs; the chosen sample is the first
    whose trajectory performs the stated meta-action, judged from the tick's own v0."""
    from alpasim_policy.scoring.reasoning import classify_trajectory, parse_coc

    pol = AlpamayoPolicy(**{**FAST, "select": "consistent", "cot_tokens": None})
    outs, _, _ = drive(pol, ticks=3)
    for out in outs:
        scores = out.extra["selection_scores"]
        said = parse_coc(out.reasoning).action
        agree = [said is not None and classify_trajectory(x, out.extra["v0"]) == said for x in out.samples]
        assert scores == [float(a) for a in agree]
        assert out.extra["selected_index"] == (agree.index(True) if any(agree) else 0)
    assert all(parse_coc(o.reasoning).action is not None for o in outs)  # the trained model's template


def test_scored_selection_in_the_loop_keeps_the_best_epdms():
    pol = AlpamayoPolicy(**{**FAST, "select": "scored"})
    outs, _, _ = drive(pol, ticks=2)
    for out in outs:
        scores = np.asarray(out.extra["selection_scores"])
        assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
        assert scores[out.extra["selected_index"]] == scores.max()


def test_deadline_options_fall_back_and_splice():
    # a 1 microsecond deadline: every tick misses; the car keeps its previous plan (coast at first)
    pol = AlpamayoPolicy(**FAST, deadline_ms="0.001")
    outs, _, _ = drive(pol, ticks=3)
    assert all(o.extra["deadline_miss"] and o.extra["deadline_enforced"] for o in outs)
    assert all(o.extra["plan_source"] == "previous" for o in outs)
    assert outs[0].samples is not None  # the late model output is still recorded
    np.testing.assert_allclose(outs[0].trajectory[:, 1:], 0.0)  # coasting straight ahead
    # delay mode with an assumed 250 ms: the first 2 rows follow the previous plan, the rest the model's
    pol = AlpamayoPolicy(**FAST, deadline_ms=1000, latency_mode="delay", assumed_latency_ms=250)
    outs, _, _ = drive(pol, ticks=2)
    for o in outs:
        assert o.extra["previous_rows"] == 2 and o.extra["plan_source"] == "spliced"
        assert not o.extra["deadline_miss"]
        np.testing.assert_array_equal(o.trajectory[2:], o.samples[0][2:])


# ----------------------------------------------------------------------------- bench policy


def test_bench_scene_spread():
    from pathlib import Path

    from alpasim_policy.bench.policy import pick_scenes

    paths = [Path(f"s{i}.npz") for i in range(21)]
    assert [p.stem for p in pick_scenes(paths, 4)] == ["s0", "s7", "s13", "s20"]
    assert pick_scenes(paths, 0) == paths and pick_scenes(paths, 50) == paths
    assert pick_scenes(paths, 1) == paths[:1]


def test_bench_policy_runs_and_prints_a_json_summary(tmp_path, capsys):
    import json

    from alpasim_policy.cli import main

    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    rc = main(["bench", "policy", "--suite", str(suite), "--samples", "2", "--cot-tokens", "4", "--threads", "1",
               "--reasoning", "single", "--select", "first", "--latency-modes", "ignore", "--deadline-ms", "0",
               "--no-write"])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["scenes"] == [SCENE]
    variants = summary["variants"]
    assert set(variants) == {"alpamayo-single-first", "alpamayo-single-first-ignore0ms"}
    for v in variants.values():
        assert v["ticks"] == 24 and 0.0 <= v["EPDMS"] <= 1.0
        assert v["stages_ms"]["decode"] > 0 and v["latency_p50_ms"] > 0
    assert variants["alpamayo-single-first"]["non_first_rate"] == 0.0
    # a 0 ms budget: every tick misses and the car keeps its previous (first: coast) plan
    assert variants["alpamayo-single-first-ignore0ms"]["deadline_miss_rate"] == 1.0
    assert variants["alpamayo-single-first-ignore0ms"]["fallback_rate"] == 1.0
    assert any("latency breakdown" in line for line in lines)


def test_larger_camera_frames_are_downsampled_to_the_policy_size():
    pol = AlpamayoPolicy(**FAST)
    env = gym.make(
        "alpasim_policy/LogReplay-v0",
        scene=SCENE,
        config={"cameras": {"enabled": True, "preset": "alpamayo4", "width": 256, "height": 144}},
    )
    obs, _ = env.reset(seed=0)
    pol.reset(seed=0, scene=env.unwrapped.scene, camera_rig=env.unwrapped.camera_rig)
    images = pol.core._images(obs)
    assert images.shape == (4, 4, 3, 36, 64)
    # area averaging: the mean colour of the front camera survives the 4x downsampling
    front = list(obs["cameras"])[1]
    np.testing.assert_allclose(
        images[1, -1].mean(axis=(1, 2)), obs["cameras"][front].mean(axis=(0, 1)), atol=1.0
    )


def test_eval_cli_records_reasoning_samples_and_latency(tmp_path):
    """``alpasim-policy eval --policy alpamayo,constant_velocity --policy-option ...`` through the registry."""
    from alpasim_policy.cli import main
    from alpasim_policy.sim.rollout import Rollout

    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    out = tmp_path / "run"
    opts = ["alpamayo.preset=tiny", "alpamayo.samples=2", "alpamayo.cot_tokens=4", "alpamayo.threads=1",
            "alpamayo.camera_width=64", "alpamayo.camera_height=36"]  # fmt: skip
    argv = ["eval", "--suite", str(suite), "--policy", "alpamayo,constant_velocity", "--out", str(out)]
    for o in opts:
        argv += ["--policy-option", o]
    assert main(argv) == 0
    ro = Rollout.load(out / "rollouts" / "alpamayo" / f"{SCENE}.npz")
    ticks = np.flatnonzero(np.isfinite(ro.latency_s))
    assert len(ticks) == 24 and not ro.policy_failure.any()
    assert all(ro.reasoning[k] for k in ticks)  # a chain-of-causation text at every tick
    assert ro.samples is not None and ro.samples.shape[1:] == (2, 64, 3)
    assert np.isfinite(ro.samples[ticks]).all()
    # the executed plan of each tick is one of its samples (select=first: sample 0), in the scene frame
    np.testing.assert_allclose(ro.plans[ticks, :, :2], ro.samples[ticks, 0, :, :2], atol=1e-6)
    assert ro.deadline_miss.dtype == bool and (ro.latency_s[ticks] > 0).all()
    board = (out / "leaderboard.csv").read_text()
    assert "latency_p50_ms" in board and "alpamayo" in board and "constant_velocity" in board


def test_eval_drives_an_nvlabs_written_folder(tmp_path):
    """``--policy-option alpamayo.weights=DIR`` with a folder NVlabs' save_pretrained wrote (a size no
    preset has): loads in one call and drives a scene in ``eval``."""
    from pathlib import Path

    from alpasim_policy.cli import main
    from alpasim_policy.sim.rollout import Rollout

    ckpt = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"
    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENE}]\n")
    out = tmp_path / "run"
    opts = [f"alpamayo.weights={ckpt}", "alpamayo.samples=2", "alpamayo.max_cot_tokens=6",
            "alpamayo.threads=1", "alpamayo.camera_width=64", "alpamayo.camera_height=36"]  # fmt: skip
    argv = ["eval", "--suite", str(suite), "--policy", "alpamayo", "--out", str(out)]
    for o in opts:
        argv += ["--policy-option", o]
    assert main(argv) == 0
    ro = Rollout.load(out / "rollouts" / "alpamayo" / f"{SCENE}.npz")
    ticks = np.flatnonzero(np.isfinite(ro.latency_s))
    assert len(ticks) == 24 and not ro.policy_failure.any()
    assert (
        ro.samples is not None and ro.samples.shape[1:] == (2, 64, 3) and np.isfinite(ro.samples[ticks]).all()
    )
    np.testing.assert_allclose(ro.plans[ticks, :, :2], ro.samples[ticks, 0, :, :2], atol=1e-6)


def test_policy_options_weights_dtype_and_v0():
    from pathlib import Path

    ckpt = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"
    pol = AlpamayoPolicy(weights=str(ckpt), dtype="bfloat16", samples=1, threads=1)
    assert pol.model.config.preset == "nvlabs" and pol.model.dtype.__repr__() == "torch.bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        AlpamayoPolicy(dtype="int8")
    with pytest.raises(ConfigError, match="v0"):
        AlpamayoPolicy(v0="guess")
