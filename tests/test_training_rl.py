"""RL stage: the stochastic flow step is a correct Gaussian with the flow's marginals, sigma -> 0 is
the deterministic sampler, updates move log-probability towards better plans and raise the reward
on a fixed tick set, resume equals an uninterrupted run, and bad arguments are named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from alpasim_policy.errors import ConfigError
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite

SCENE = "av2s-7fab2350-w00"  # a real AV2 log (the imitation tests' scene): 81 steps, 3 ticks at stride 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- the SDE step


def test_sde_step_log_prob_is_the_gaussian_log_density():
    from alpasim_policy.training.rl import gaussian_log_prob, sde_step

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, 2, generator=g)
    v = torch.randn(5, 64, 2, generator=g)
    t = torch.tensor([0.0, 0.1, 0.5, 0.8, 0.9])
    mean, std = sde_step(x, v, t, 0.1, 0.7)
    np.testing.assert_allclose(std[:, 0, 0].numpy(), 0.7 * np.sqrt((1 - t.numpy()) * 0.1), rtol=1e-6)
    x_next = mean + std * torch.randn(5, 64, 2, generator=g)
    want = torch.distributions.Normal(mean, std).log_prob(x_next).sum(dim=(-2, -1))
    torch.testing.assert_close(gaussian_log_prob(x_next, mean, std), want, rtol=1e-5, atol=1e-4)
    # sigma = 0: the Euler step of the ODE sampler, no noise
    mean0, std0 = sde_step(x, v, t, 0.1, 0.0)
    torch.testing.assert_close(mean0, x + 0.1 * v)
    assert float(std0.abs().max()) == 0.0


def test_sde_has_the_flow_marginals_on_a_gaussian_target():
    """1-D data N(mu, s^2): the exact flow velocity is linear in x; integrating the SDE with it from
    N(0, 1) must end at N(mu, s^2) (a wrong sign or factor in the score term would not)."""
    from alpasim_policy.training.rl import sde_step

    mu, s, n, steps = 1.5, 0.4, 40000, 400
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t = float(grid[i])
        var = (1 - t) ** 2 + t**2 * s**2
        v = mu + (t * s**2 - (1 - t)) / var * (x - t * mu)
        mean, std = sde_step(x, v, torch.full((n,), t, dtype=torch.float64), 1.0 / steps, 1.0)
        x = mean + std * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert abs(float(x.mean()) - mu) < 0.02
    assert abs(float(x.std()) - s) < 0.02


# ----------------------------------------------------------------------------- with the model


def _tiny_model(seed: int = 0):
    from alpasim_policy.model.config import AlpamayoConfig
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1

    torch.manual_seed(seed)
    return AlpamayoR1.create(AlpamayoConfig.from_preset("tiny"))


@pytest.fixture(scope="module")
def scene():
    return load_scene(next(p for p in load_suite("bundled") if SCENE in str(p)))


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, scene):
    """A tiny random checkpoint, and a run folder holding the ticks and metric cache (built once)."""
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE
    from alpasim_policy.training.rl import RLConfig, prepare_run

    root = tmp_path_factory.mktemp("rl")
    model = _tiny_model()
    model.save_pretrained(root / "init")
    cfg = RLConfig(init=str(root / "init"), stride=10, perturbations=0)
    base = root / "base"
    base.mkdir()
    ticks, worlds = prepare_run(base, cfg, [scene], DEFAULT_CAMERA_SIZE["tiny"], model.config.frames, False)
    assert len(ticks) == 3 and set(worlds) == {scene.scene_id}
    return root, ticks, worlds


def _run_dir(prepared_run, name):
    root = prepared_run[0]
    d = root / name
    shutil.copytree(root / "base", d)
    return d


def test_sigma_zero_is_the_deterministic_sampler(prepared_run):
    from alpasim_policy.model.flow import DynamicCacheSampler
    from alpasim_policy.training.rl import TickContext, sde_sample

    _, ticks, worlds = prepared_run
    model = _tiny_model()
    ctx = TickContext(model, ticks, worlds)
    _, prefix, _ = ctx.get(0)
    noise = torch.randn(4, model.config.n_waypoints, 2, generator=torch.Generator().manual_seed(3))
    ode = DynamicCacheSampler(
        model.expert, model.action_in_proj, model.action_out_proj, model.config.flow_steps
    )
    want = ode.sample(prefix, noise)
    torch.testing.assert_close(sde_sample(model, prefix, noise, 0.0).xs[-1], want, atol=1e-5, rtol=1e-5)
    # sigma -> 0: each transition tends to the Euler step. (Compared per step: a random expert's flow
    # is chaotic in x through its 100-cycle Fourier features, so whole chains diverge from 1e-8.)
    trace: list = []
    ode.sample(prefix, noise, trace)
    for sigma in (1e-2, 1e-4):
        roll = sde_sample(model, prefix, noise, sigma, torch.Generator().manual_seed(1))
        first = roll.xs[1] - (trace[0][0] + 0.1 * trace[0][1])
        assert float(first.abs().max()) < 5 * sigma
    big = sde_sample(model, prefix, noise, 0.7, torch.Generator().manual_seed(1)).xs[-1]
    assert float((big - want).abs().max()) > 0.05  # the noise does explore


def test_one_update_moves_log_probability_towards_better_plans(prepared_run):
    """After one step on a fixed rollout, sum_i A_i log p(plan_i) rises (the policy gradient's
    direction) and the recomputed log-probs of the untouched policy equal the rollout's."""
    from alpasim_policy.training.rl import (
        TickContext,
        actions_to_trajectories,
        clipped_objective,
        freeze_for_rl,
        group_advantages,
        plan_rewards,
        sde_sample,
        step_terms,
    )

    _, ticks, worlds = prepared_run
    model = _tiny_model()
    params = freeze_for_rl(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("vlm."))
    ctx = TickContext(model, ticks, worlds)
    prepared, prefix, _ = ctx.get(1)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(8, model.config.n_waypoints, 2, generator=gen)
    roll = sde_sample(model, prefix, noise, 0.7, gen)
    r = plan_rewards(
        worlds[ticks[1].scene_id], ticks[1], actions_to_trajectories(model, roll.xs[-1], prepared.v0)
    )
    assert r.shape == (8,) and np.all((r >= 0) & (r <= 1)) and r.std() > 0
    adv = torch.as_tensor(group_advantages(r), dtype=torch.float32)
    assert abs(float(adv.mean())) < 1e-6 and abs(float(adv.std(unbiased=False)) - 1) < 1e-5
    lp, _ = step_terms(model, None, prefix, roll.xs, 0.7)
    torch.testing.assert_close(lp.detach(), roll.log_prob, atol=1e-4, rtol=1e-4)
    before = float((adv * roll.log_prob.sum(0)).sum())
    opt = torch.optim.SGD(params, lr=1e-2)
    loss, clipped = clipped_objective(lp, roll.log_prob, adv, 0.2)
    assert float(clipped) == 0.0
    loss.mean().backward()
    opt.step()
    with torch.no_grad():
        lp2, _ = step_terms(model, None, prefix, roll.xs, 0.7)
    assert float((adv * lp2.sum(0)).sum()) > before


def test_consistency_reward_credits_plans_that_do_what_the_coc_says(prepared_run):
    """The shipped checkpoint's real CoC on real ticks and 16 exploratory samples: the reward is
    EPDMS + w x agreement (1 / 0.5 / 0 per the meta-action's parts), so among samples of equal EPDMS
    the one doing the CoC's meta-action gets the larger advantage; at w = 0 the reward is the
    EPDMS alone."""
    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.policies.alpamayo import shipped_weights
    from alpasim_policy.scoring.reasoning import classify_trajectory, parse_coc
    from alpasim_policy.training.rl import (
        RLConfig,
        TickContext,
        actions_to_trajectories,
        group_advantages,
        sde_sample,
        tick_rewards,
    )

    _, ticks, worlds = prepared_run
    model = AlpamayoR1.from_pretrained(shipped_weights("tiny"))
    ctx = TickContext(model, ticks, worlds)
    ranked = 0
    # The shipped model mostly does what it says, so the exploration noise is raised until a
    # group holds samples that agree and samples that do not.
    for i in range(len(ticks)):
        prepared, prefix, text = ctx.get(i)
        said = parse_coc(text).action
        assert said is not None, text  # the trained model's CoC is in the template
        v0 = float(np.hypot(*ticks[i].ego_state[3:5]))
        for sigma in (1.5, 2.0, 3.0):
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(16, model.config.n_waypoints, 2, generator=gen)
            roll = sde_sample(model, prefix, noise, sigma, gen)
            traj = actions_to_trajectories(model, roll.xs[-1], prepared.v0)
            r, a, total = tick_rewards(ctx, i, traj, RLConfig(consistency_weight=0.5))
            done = [classify_trajectory(p, v0) for p in traj]
            want = [0.5 * (d.longitudinal == said.longitudinal) + 0.5 * (d.lateral == said.lateral) for d in done]
            np.testing.assert_array_equal(a, want)
            np.testing.assert_allclose(total, r + 0.5 * a)
            r0, _, total0 = tick_rewards(ctx, i, traj, RLConfig(consistency_weight=0.0))
            np.testing.assert_array_equal(total0, r0)
            adv = group_advantages(total)
            pairs = [(j, k) for j in range(16) for k in range(16) if r[j] == r[k] and a[j] > a[k]]
            assert all(adv[j] > adv[k] for j, k in pairs)
            ranked += len(pairs)
    assert ranked > 0  # some group had equal-EPDMS samples that the CoC told apart


def test_rl_steps_raise_the_reward_and_write_the_run(prepared_run, scene):
    """A few steps on the fixed tick set: the deterministic sampler's mean EPDMS on the ticks
    rises; checkpoint (NVlabs layout), log, plot and summary are written."""
    import json

    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.training.rl import CSV_FIELDS, RLConfig, train_rl

    root, _, _ = prepared_run
    out = _run_dir(prepared_run, "raise")
    cfg = RLConfig(init=str(root / "init"), steps=6, ticks=2, samples=8, lr=1e-3, stride=10,
                   perturbations=0, save_every=3, kl_weight=0.05)  # fmt: skip
    s = train_rl(out, cfg, [scene], progress=False, eval_ticks=3)
    assert s["steps"] == 6 and s["ticks"] == 3
    assert s["eval_reward_after"] > s["eval_reward_before"] + 0.02, s
    # a random model's CoC states no meta-action: no plan is rated, so there is no share (not 0)
    assert s["eval_consistency_before"] is None and s["eval_consistency_after"] is None
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_FIELDS) and len(rows) == 7
    assert (out / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "checkpoint/training_state.json").read_text())
    assert state["stage"] == "rl" and state["step"] == 6
    index = json.loads((out / "checkpoint/model.safetensors.index.json").read_text())
    assert any(k.startswith("expert.") for k in index["weight_map"])
    trained = AlpamayoR1.from_pretrained(out / "checkpoint")
    init = AlpamayoR1.from_pretrained(root / "init")
    sd_t, sd_i = trained.state_dict(), init.state_dict()
    assert all(torch.equal(sd_t[k], sd_i[k]) for k in sd_t if k.startswith("vlm."))  # reasoning frozen
    assert any(not torch.equal(sd_t[k], sd_i[k]) for k in sd_t if k.startswith("expert."))


def test_resume_equals_an_uninterrupted_run(prepared_run, scene):
    from safetensors.torch import load_file

    from alpasim_policy.training.rl import RLConfig, train_rl

    root, _, _ = prepared_run
    cfg = RLConfig(init=str(root / "init"), steps=4, ticks=1, samples=4, lr=1e-3, stride=10,
                   perturbations=0, save_every=2, kl_weight=0.1, epochs=2)  # fmt: skip
    full = _run_dir(prepared_run, "full")
    train_rl(full, cfg, [scene], progress=False, eval_ticks=1)
    part = _run_dir(prepared_run, "part")
    train_rl(part, cfg, [scene], progress=False, stop_after=2, eval_ticks=1)
    train_rl(part, cfg, [scene], resume=True, progress=False, eval_ticks=1)
    a = load_file(str(next((full / "checkpoint").glob("model-*.safetensors"))))
    b = load_file(str(next((part / "checkpoint").glob("model-*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(path):
        return [",".join(r.split(",")[:-1]) for r in path.read_text().splitlines()]  # all but seconds

    assert strip(full / "log.csv") == strip(part / "log.csv")


def test_idm_expert_drives_the_ticks_behind_a_braking_lead():
    """``expert="idm"``: the rule planner drives the ticks, so on an A9 drive whose lead now brakes
    (from step 26 at 2.5 m/s^2) the car slows behind it, where the log's drive keeps its 27 m/s."""
    from alpasim_policy.training.build import lead_stop_scenes
    from alpasim_policy.training.rl import collect_ticks

    base = load_scene(next(p for p in load_suite("bundled") if "ego3536" in str(p)))
    stop = next(s for s in lead_stop_scenes(base, 2, 0) if s.scene_id.endswith("stop4a2.5@26"))
    speeds = {}
    for expert in ("log", "idm"):
        ticks = collect_ticks([stop], camera_size=(128, 72), frames=4, stride=4, perturbations=0,
                              expert=expert, min_future_steps=5)  # fmt: skip
        assert [t.step for t in ticks] == list(range(16, 53, 4))
        speeds[expert] = np.array([np.hypot(*t.ego_state[3:5]) for t in ticks])
    np.testing.assert_allclose(speeds["idm"][0], speeds["log"][0])  # same start
    assert speeds["log"][-1] > 27.0 and speeds["idm"][-1] < speeds["log"][-1] - 2.0
    assert np.all(np.diff(speeds["idm"]) < 0)


def test_driver_ticks_are_the_states_the_driver_reaches():
    """DAgger ticks: on the A9 drive whose lead now brakes, a driver that keeps its speed (constant
    velocity) closes in on the lead, and the ticks are those states, not the idm expert's slowing
    drive; with ``driver_share=0`` the driver never acts and the ticks are the expert's."""
    from alpasim_policy.policies.baselines import ConstantVelocityPolicy
    from alpasim_policy.training.build import lead_stop_scenes
    from alpasim_policy.training.rl import collect_ticks

    base = load_scene(next(p for p in load_suite("bundled") if "ego3536" in str(p)))
    stop = next(s for s in lead_stop_scenes(base, 2, 0) if s.scene_id.endswith("stop4a2.5@26"))

    def ticks(**kw):
        return collect_ticks([stop], camera_size=(128, 72), frames=4, stride=4, perturbations=0,
                             expert="idm", min_future_steps=5, **kw)  # fmt: skip

    def speed(ts):
        return np.array([np.hypot(*t.ego_state[3:5]) for t in ts])

    expert = ticks()
    driven = ticks(driver=ConstantVelocityPolicy(), driver_share=1.0)
    unused = ticks(driver=ConstantVelocityPolicy(), driver_share=0.0)
    assert [t.step for t in driven] == [t.step for t in expert]
    assert np.ptp(speed(driven)) < 0.5 and speed(driven)[-1] > speed(expert)[-1] + 2.0
    np.testing.assert_array_equal(np.stack([t.ego_state for t in unused]), np.stack([t.ego_state for t in expert]))
    # the driven car is further up the road, where the expert never took it
    def travelled(ts):
        return float(np.hypot(*(ts[-1].ego_state[:2] - ts[0].ego_state[:2])))

    assert travelled(driven) > travelled(expert) + 2.0


def test_bad_arguments_are_named(tmp_path, prepared_run, capsys):
    from alpasim_policy.cli import main
    from alpasim_policy.training.rl import RLConfig

    init = str(prepared_run[0] / "init")
    with pytest.raises(ConfigError, match="--init"):
        RLConfig().validate()
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        RLConfig(init=str(tmp_path / "nope")).validate()
    with pytest.raises(ConfigError, match="--samples"):
        RLConfig(init=init, samples=1).validate()
    with pytest.raises(ConfigError, match="--sigma"):
        RLConfig(init=init, sigma=0.0).validate()
    with pytest.raises(ConfigError, match="--clip"):
        RLConfig(init=init, clip=1.5).validate()
    with pytest.raises(ConfigError, match="--steps"):
        RLConfig(init=init, steps=0).validate()
    with pytest.raises(ConfigError, match="--consistency-weight"):
        RLConfig(init=init, consistency_weight=-1.0).validate()
    with pytest.raises(ConfigError, match="--expert"):
        RLConfig(init=init, expert="nope").validate()
    with pytest.raises(ConfigError, match="--lead-stops needs --expert idm"):
        RLConfig(init=init, lead_stops=1).validate()
    with pytest.raises(ConfigError, match="--time-scale"):
        RLConfig(init=init, time_scales=(0.01,)).validate()
    with pytest.raises(ConfigError, match="--driver .*not a checkpoint folder"):
        RLConfig(init=init, driver=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="--driver-share"):
        RLConfig(init=init, driver=init, driver_share=1.5).validate()
    with pytest.raises(ValueError, match="profile"):
        RLConfig(init=init, profile="nope").validate()
    assert main(["train", "--stage", "rl", "--out", str(tmp_path / "x")]) != 0
    assert main(["train", "--stage", "rl", "--init", init, "--out", str(tmp_path / "y"), "--closing", "1"]) == 2
    assert "--closing: data stage only" in capsys.readouterr().err
