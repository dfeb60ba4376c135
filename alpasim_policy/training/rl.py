"""RL post-training of the action expert: group-relative policy optimisation with the scorer as reward.

Why: imitation copies the log; it never sees what its *own* trajectories score. Here every tick
of a training drive is planned K times by the model, each plan is scored by the open-loop EPDMS of
the metric cache (the scorer NAVSIM-style, batched), and the action expert is pushed towards the
plans that scored above their group's mean.

Per tick (see ``training/README.md`` for the reasoning behind each choice):

* **one reasoning** -- the prompt and the greedy chain of causation of :meth:`AlpamayoR1.reason`
  (exactly what the ``alpamayo`` policy does with ``reasoning=single``); its KV prefix is shared by
  all K samples. The VLM is frozen in this stage, so the prefix of a tick never changes and is
  computed once per tick for the whole run;
* **K stochastic samples** -- the Euler flow sampler made stochastic (an SDE with the same
  marginals as the flow's ODE, as in Flow-GRPO): each denoising step is a Gaussian with a known
  mean and standard deviation, so it has a log-probability; :func:`sde_step` at ``sigma = 0`` is the
  deterministic sampler;
* **reward** -- open-loop EPDMS of each plan (``score_plans`` on the tick's metric cache, the plan
  tracked from the env's ego state at the tick, logged agents), plus ``consistency_weight`` times
  the plan's agreement with the meta-action its tick's CoC states (Alpamayo-R1's reasoning-action
  consistency reward; the CoC is fixed, so this teaches the expert to *do what the reasoning says*);
* **update** -- advantages ``(r - mean) / std`` over the K samples (GRPO), a clipped ratio
  objective per denoising step (PPO), and a KL anchor to the frozen ``--init`` model, per step
  ``||mu - mu_ref||^2 / (2 sigma^2)`` (both Gaussians share sigma).

Determinism: each step's ticks, noise and SDE draws come from generators seeded by (seed, step);
the learning rate is constant; a resumed run (weights + optimizer from ``DIR/checkpoint``)
continues bit-identically.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alpasim_policy.errors import ConfigError
from alpasim_policy.io import atomic_write_bytes, atomic_write_json
from alpasim_policy.training.run_files import read_csv_log, save_checkpoint, save_figure, write_csv_log

CSV_FIELDS = ("step", "loss", "reward_mean", "reward_std", "consistency", "kl", "clip_frac", "lr", "seconds")

#: open-loop scoring horizon (NAVSIM: 4 s); only these action rows influence the reward
SCORED_ROWS = 40


@dataclass
class RLConfig:
    """Options of the RL stage (stored in ``out/checkpoint/training_state.json``)."""

    init: str = ""  # the imitation checkpoint (policy start and frozen KL reference)
    steps: int = 600
    ticks: int = 2  # ticks per optimizer step
    samples: int = 8  # K trajectories per tick (the group)
    lr: float = 1e-4  # run 19: 3e-4 with KL weight 0.05 moved the expert too far for closed loop
    sigma: float = 0.7  # SDE noise scale a: per-step std a * sqrt((1 - t) dt)
    clip: float = 0.2  # ratio clip epsilon
    kl_weight: float = 0.2  # beta of the KL anchor (per action dimension)
    consistency_weight: float = 2.0  # reward += w * agreement of the plan with its CoC's meta-action
    epochs: int = 1  # updates per batch of rollouts (1: on-policy, ratio = 1 at the update)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 50
    time_limit_s: float = 1800.0  # stop (and checkpoint) after the step that passes it
    profile: str = "project"  # scoring profile of the reward
    stride: int = 2  # ticks: every stride-th step of a drive
    perturbations: int = 2  # off-log drives per scene (plus the one on the log), as the data stage
    max_lateral: float = 1.5
    # Which drives make the ticks, as the data stage's flags of the same names: the expert that
    # drives ("log": recovery towards the human log; "idm": the privileged rule planner), drives
    # per scene in which the lead brakes to a stop (needs "idm"), speed factors of slowed replays,
    # and cars present that many seconds as egos too.
    expert: str = "log"
    lead_stops: int = 0
    time_scales: tuple[float, ...] = ()
    partial_egos_s: float | None = None
    # DAgger ticks: this checkpoint (the data stage's --driver) drives ``driver_share`` of the steps
    # of every drive, so the ticks include the states the policy itself reaches (drift, closing in)
    driver: str | None = None
    driver_share: float = 1.0

    def validate(self) -> None:
        if not self.init:
            raise ConfigError(
                "--init: the RL stage starts from a checkpoint folder (train --stage imitation)"
            )
        if not Path(self.init).is_dir():
            raise ConfigError(f"--init {self.init}: not a checkpoint folder")
        for name in ("steps", "ticks", "save_every", "epochs", "stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.samples < 2:
            raise ConfigError(
                f"--samples must be >= 2 (advantages are relative to the group), got {self.samples}"
            )
        if not self.sigma > 0:
            raise ConfigError(
                f"--sigma must be > 0 (the SDE needs noise for log-probabilities), got {self.sigma}"
            )
        if not 0 < self.clip < 1:
            raise ConfigError(f"--clip must be in (0, 1), got {self.clip}")
        if self.kl_weight < 0 or self.lr <= 0:
            raise ConfigError(f"--kl-weight must be >= 0 and --lr > 0, got {self.kl_weight}, {self.lr}")
        if not self.consistency_weight >= 0:
            raise ConfigError(f"--consistency-weight must be >= 0, got {self.consistency_weight}")
        if self.perturbations < 0 or self.max_lateral < 0.5:
            raise ConfigError("--perturbations must be >= 0 and --max-lateral >= 0.5 m")
        from alpasim_policy.training.data import EXPERTS

        if self.expert not in EXPERTS:
            raise ConfigError(f"--expert {self.expert!r}: choose from {EXPERTS}")
        if self.lead_stops < 0:
            raise ConfigError(f"--lead-stops must be >= 0, got {self.lead_stops}")
        if self.lead_stops and self.expert != "idm":
            raise ConfigError("--lead-stops needs --expert idm: the log's driver ignores a lead that now stops")
        bad = [f for f in self.time_scales if not 0.05 <= f <= 4.0]
        if bad:
            raise ConfigError(f"--time-scale {bad[0]}: a speed factor must be in [0.05, 4]")
        if self.driver is not None and not (Path(self.driver) / "config.json").is_file():
            raise ConfigError(f"--driver {self.driver}: not a checkpoint folder (no config.json)")
        if not 0.0 <= self.driver_share <= 1.0:
            raise ConfigError(f"--driver-share must be in [0, 1], got {self.driver_share}")
        if self.partial_egos_s is not None and self.partial_egos_s < 4.0:
            raise ConfigError(f"--partial-egos must be >= 4 s, got {self.partial_egos_s}")
        from alpasim_policy.scoring.profiles import get_profile

        get_profile(self.profile)


# ----------------------------------------------------------------------------- the stochastic sampler


def sde_step(
    x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: float, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of one Euler-Maruyama step of the flow's SDE.

    The sampler's convention: noise at t = 0, actions at t = 1, ``x_t = (1 - t) x0 + t x1``, the
    expert predicts ``v = E[x1 - x0 | x_t]``. Then ``E[x0 | x_t] = x - t v`` and the score is
    ``-(x - t v) / (1 - t)``; ``dx = (v + g^2 / 2 * score) dt + g dW`` has the ODE's marginals for
    any ``g``. With ``g_t^2 = sigma^2 (1 - t)`` (noise largest at the noise end, none at the
    actions; bounded on the whole grid, which starts at t = 0) the step is

        mean = x + (v - sigma^2 / 2 * (x - t v)) dt,   std = sigma * sqrt((1 - t) dt).

    ``sigma = 0`` gives the deterministic Euler step ``x + v dt``. ``t`` is (B,) or a scalar.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 1:
        t = t[:, None, None]
    mean = x + (v - 0.5 * sigma**2 * (x - t * v)) * dt
    std = sigma * torch.sqrt((1.0 - t) * dt) * torch.ones_like(x)
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under independent Gaussians, summed over the last two dims -> (B,)."""
    var = std**2
    lp = -((x - mean) ** 2) / (2 * var) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.sum(dim=(-2, -1))


@dataclass
class Rollout:
    """K stochastic samples of one tick: the chain ``xs`` (steps + 1, K, N, 2) and each step's
    log-probability ``log_prob`` (steps, K) under the sampling policy (scored rows, per dim)."""

    xs: torch.Tensor
    log_prob: torch.Tensor


def _velocity(model: Any, prefix: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from alpasim_policy.training.imitation import flow_velocity

    return flow_velocity(model, prefix, x, t)


@torch.no_grad()
def sde_sample(
    model: Any,
    prefix: Any,
    noise: torch.Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    rows: int = SCORED_ROWS,
) -> Rollout:
    """Integrate the flow's SDE from ``noise`` (K, N, 2); ``sigma = 0`` is the Euler ODE sampler."""
    steps = model.config.flow_steps
    grid = torch.linspace(0.0, 1.0, steps + 1)
    x = noise.float()
    xs = [x]
    lps = []
    k = x.shape[0]
    for i in range(steps):
        dt = float(grid[i + 1] - grid[i])
        v = _velocity(model, prefix, x, grid[i].expand(k))
        mean, std = sde_step(x, v, grid[i].expand(k), dt, sigma)
        if sigma > 0:
            eps = torch.randn(x.shape, generator=generator)
            x = mean + std * eps
            lps.append(gaussian_log_prob(x[:, :rows], mean[:, :rows], std[:, :rows]) / (rows * 2))
        else:
            x = mean
            lps.append(torch.zeros(k))
        xs.append(x)
    return Rollout(torch.stack(xs), torch.stack(lps))


def step_terms(
    model: Any, ref: Any, prefix: Any, xs: torch.Tensor, sigma: float, rows: int = SCORED_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per denoising step and sample (steps, K): the log-probability of the rollout's transitions
    under ``model`` (with gradients; scored rows, averaged per dimension) and the KL to ``ref``
    (all rows, per dimension). One expert forward over all steps x samples."""
    steps, k = xs.shape[0] - 1, xs.shape[1]
    grid = torch.linspace(0.0, 1.0, steps + 1)
    dt = float(grid[1] - grid[0])
    x_in = xs[:-1].reshape(steps * k, *xs.shape[2:])
    t_in = grid[:-1].repeat_interleave(k)
    v = _velocity(model, prefix, x_in, t_in)
    mean, std = sde_step(x_in, v, t_in, dt, sigma)
    x_next = xs[1:].reshape_as(x_in)
    lp = gaussian_log_prob(x_next[:, :rows], mean[:, :rows], std[:, :rows]) / (rows * 2)
    if ref is not None:
        with torch.no_grad():
            v_ref = _velocity(ref, prefix, x_in, t_in)
            mean_ref, _ = sde_step(x_in, v_ref, t_in, dt, sigma)
        kl = (((mean - mean_ref) ** 2) / (2 * std**2)).mean(dim=(-2, -1))
    else:
        kl = torch.zeros_like(lp)
    return lp.reshape(steps, k), kl.reshape(steps, k)


def group_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """GRPO: ``(r - mean) / std`` over one tick's K samples; all zero when the group is uniform."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std()
    if std < eps:
        return np.zeros_like(r)
    return (r - r.mean()) / std


def clipped_objective(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip: float):
    """PPO's clipped surrogate (to *minimise*), per (step, sample), and the clipped fraction."""
    ratio = torch.exp(log_prob - old_log_prob)
    a = adv[None, :]
    loss = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    clipped = ((ratio - 1).abs() > clip).float().mean()
    return loss, clipped


# ----------------------------------------------------------------------------- ticks


@dataclass
class Tick:
    """One observation of a training drive and what scoring needs (scene frame, rear axle)."""

    scene_id: str
    step: int
    images: np.ndarray  # (C, F, 3, H, W) uint8
    history: np.ndarray  # (16, 4) rig frame, as the policy receives it
    command: int
    ego_state: np.ndarray  # (7,) EGO_COLUMNS, the env's ego now
    ego_past: np.ndarray  # (H <= 15, 7) the env's states before now (history comfort reads them)


def collect_ticks(
    scenes: list[Any],
    *,
    camera_size: tuple[int, int],
    frames: int,
    frame_stride: int = 1,
    stride: int = 3,
    perturbations: int = 1,
    max_lateral: float = 1.5,
    seed: int = 0,
    min_future_steps: int = SCORED_ROWS,
    progress: bool = False,
    expert: str = "log",
    driver: Any = None,
    driver_share: float = 1.0,
) -> list[Tick]:
    """Drive every scene in the env along the expert (on the log, and ``perturbations`` times off
    it, the data stage's drives) and keep every ``stride``-th step with ``min_future_steps`` of log
    (``frame_stride``: the model's frame spacing, as the policy stacks them).

    ``expert="idm"``: the privileged rule planner drives instead of the recovery towards the log
    (as the data stage's ``--expert idm``), so a scene whose lead now brakes to a stop gives the
    ticks of a car stopping and standing behind it; a drive ends where it leaves the logged path by
    the data stage's limit."""
    import zlib

    import gymnasium as gym
    from tqdm import tqdm

    import alpasim_policy.sim  # noqa: F401  (registers the env)
    from alpasim_policy.policies.alpamayo import FrameBuffer
    from alpasim_policy.scenes.geometry import scene_to_rig_poses
    from alpasim_policy.scoring.metrics.comfort import HISTORY_STEPS
    from alpasim_policy.training.build import _perturbations
    from alpasim_policy.training.data import (
        TARGET_STEPS,
        executed_plan,
        idm_expert,
        logged_path,
        off_logged_path,
        recovery_target,
    )

    w, h = camera_size
    config = {"cameras": {"enabled": True, "preset": "alpamayo4", "width": int(w), "height": int(h)}}
    jobs = [(sc, None) for sc in scenes]
    jobs += [(sc, p) for sc in scenes for p in _perturbations(sc, perturbations, max_lateral, seed)]
    ticks: list[Tick] = []
    for scene, pert in tqdm(jobs, desc="rl ticks", unit="drive", disable=not progress):
        env = gym.make("alpasim_policy/LogReplay-v0", scene=scene, config=config).unwrapped
        obs, info = env.reset(seed=0)
        order = list(env.camera_rig.names)
        buf = FrameBuffer(frames, frame_stride)
        last = scene.num_steps - 1
        t0 = int(obs["step"])
        teacher = idm_expert(scene, seed) if expert == "idm" else None
        if driver is not None:
            driver.reset(seed=seed, scene=scene, camera_rig=env.camera_rig)
        rng = np.random.default_rng([seed, zlib.crc32(scene.scene_id.encode())])
        off_log = teacher is not None or driver is not None
        log_path = logged_path(scene) if off_log else None
        while True:
            k = int(obs["step"])
            pose = np.asarray(obs["pose"], dtype=np.float64)
            if off_log and off_logged_path(log_path, pose):
                break
            images = buf.push(obs["cameras"], k, order)
            if last - k >= min_future_steps and (k - t0) % stride == 0:
                past = env.trajectory()["ego_state"]
                ticks.append(
                    Tick(
                        scene.scene_id,
                        k,
                        images,
                        np.asarray(obs["ego_history"], np.float32).copy(),
                        int(obs["command"]),
                        np.asarray(info["ego_state"], np.float64).copy(),
                        np.asarray(past[:-1][-HISTORY_STEPS:], np.float64).copy(),
                    )
                )
            if k >= last:
                break
            # the driver sees every step (its frame buffer and seeded sampler advance as in closed loop)
            driven = None if driver is None else driver.act(obs).trajectory
            if teacher is not None:
                target = np.asarray(teacher.act(obs).trajectory, np.float64)[:TARGET_STEPS]
            else:
                target = scene_to_rig_poses(recovery_target(scene, k, pose, TARGET_STEPS)[0], pose)
            plan = executed_plan(scene, k, pose, float(obs["speed"]), target, pert, driven, rng, driver_share)
            obs, _, terminated, truncated, info = env.step(plan)
            if terminated or truncated:
                break
        env.close()
    return ticks


def save_ticks(ticks: list[Tick], path: Path) -> None:
    """All ticks in one compressed ``.npz`` (atomically)."""
    past_len = max(len(t.ego_past) for t in ticks)
    past = np.zeros((len(ticks), past_len, 7))
    past_n = np.array([len(t.ego_past) for t in ticks], np.int64)
    for i, t in enumerate(ticks):
        if len(t.ego_past):
            past[i, past_len - len(t.ego_past) :] = t.ego_past
    arrays = {
        "scene_id": np.array([t.scene_id for t in ticks]),
        "step": np.array([t.step for t in ticks], np.int64),
        "images": np.stack([t.images for t in ticks]),
        "history": np.stack([t.history for t in ticks]),
        "command": np.array([t.command for t in ticks], np.int64),
        "ego_state": np.stack([t.ego_state for t in ticks]),
        "ego_past": past,
        "ego_past_n": past_n,
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_ticks(path: Path) -> list[Tick]:
    """The ticks of :func:`save_ticks` (each array decompressed once: an ``NpzFile`` lookup
    decompresses the whole array again every time)."""
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    out = []
    for i in range(len(a["step"])):
        n = int(a["ego_past_n"][i])
        past = a["ego_past"][i][a["ego_past"].shape[1] - n :] if n else np.zeros((0, 7))
        out.append(
            Tick(
                str(a["scene_id"][i]),
                int(a["step"][i]),
                a["images"][i],
                a["history"][i],
                int(a["command"][i]),
                a["ego_state"][i],
                past,
            )  # fmt: skip
        )
    return out


# ----------------------------------------------------------------------------- reward


def plan_rewards(world: Any, tick: Tick, trajectories: np.ndarray, profile: str = "project") -> np.ndarray:
    """Open-loop EPDMS (K,) of rig-frame plans (K, T, 3) made at ``tick``: tracked from the env's
    ego state for 4 s and scored against the logged agents of the tick's metric cache."""
    from alpasim_policy.scenes.geometry import rig_to_scene_poses
    from alpasim_policy.scoring.openloop import score_plans

    plans = rig_to_scene_poses(np.asarray(trajectories, np.float64), tick.ego_state[:3])
    res = score_plans(
        world, plans, tick.step, start_state=tick.ego_state, agents="log", human_filter=False,
        history=tick.ego_past if len(tick.ego_past) else None, profile=profile,
    )  # fmt: skip
    return np.asarray(res.epdms, dtype=np.float64)


def plan_consistency(tick: Tick, text: str, trajectories: np.ndarray) -> np.ndarray:
    """Agreement (K,) of rig-frame plans with the meta-action of the tick's CoC ``text``
    (:func:`~alpasim_policy.scoring.reasoning.meta_action_agreement`: 1, 0.5 or 0; NaN when the text
    states none), classified from the env's speed at the tick as the leaderboard's column does."""
    from alpasim_policy.scoring.reasoning import meta_action_agreement

    v0 = float(np.hypot(tick.ego_state[3], tick.ego_state[4]))
    return meta_action_agreement(text, trajectories, v0)


def actions_to_trajectories(model: Any, actions: torch.Tensor, v0: float) -> np.ndarray:
    """Normalised actions (K, N, 2) -> rig-frame poses (K, N, 3), the model's integrator."""
    v = torch.full((actions.shape[0],), float(v0), dtype=torch.float64)
    return model.action_space.action_to_traj(actions.detach().double().cpu(), v).numpy()


# ----------------------------------------------------------------------------- training


class TickContext:
    """Per-tick cached inputs: the processor's output and the frozen reasoning prefix."""

    def __init__(self, model: Any, ticks: list[Tick], worlds: dict[str, Any]):
        self.model = model
        self.ticks = ticks
        self.worlds = worlds
        self._cache: dict[int, tuple[Any, Any, str]] = {}

    def get(self, i: int) -> tuple[Any, Any, str]:
        """(prepared inputs, prefix, CoC text) of tick ``i`` (greedy reasoning, computed once)."""
        if i not in self._cache:
            m = self.model
            t = self.ticks[i]
            prepared = m.prepare(t.images, np.asarray(t.history, np.float64)[:, :3], None, t.command)
            with torch.no_grad():
                vision = m.encode_images(prepared.pixel_values, prepared.image_grid_thw)
                prefix, ids = m.reason(prepared, vision, 1)
            text = m.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
            self._cache[i] = (prepared, prefix, text)
        return self._cache[i]


def freeze_for_rl(model: Any) -> list[torch.nn.Parameter]:
    """Freeze the VLM; return the trainable parameters (expert and action projections)."""
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("vlm."))
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def evaluate_reward(
    model: Any, ctx: TickContext, indices: list[int], samples: int, seed: int, profile: str
) -> tuple[float, float | None]:
    """Mean EPDMS of the deterministic (ODE) sampler's K plans per tick (fixed noise), and the
    share of those plans that perform their CoC's meta-action (over ticks whose CoC states one;
    None when no CoC does)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    agree: list[np.ndarray] = []
    for i in indices:
        prepared, prefix, text = ctx.get(i)
        tick = ctx.ticks[i]
        noise = torch.randn((samples, model.config.n_waypoints, 2), generator=gen)
        roll = sde_sample(model, prefix, noise, 0.0)
        traj = actions_to_trajectories(model, roll.xs[-1], prepared.v0)
        total += float(plan_rewards(ctx.worlds[tick.scene_id], tick, traj, profile).mean())
        agree.append(plan_consistency(tick, text, traj))
    a = np.concatenate(agree) if agree else np.zeros(0)
    a = a[np.isfinite(a)]
    return total / max(1, len(indices)), float(np.mean(a == 1.0)) if len(a) else None


def tick_rewards(
    ctx: TickContext, i: int, trajectories: np.ndarray, cfg: RLConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(EPDMS, agreement with the CoC's meta-action, reward) of tick ``i``'s K rig-frame plans.

    ``reward = EPDMS + consistency_weight * agreement``; a CoC that states no meta-action adds 0 to
    every sample, so it leaves the group's advantages to the EPDMS."""
    _, _, text = ctx.get(i)
    tick = ctx.ticks[i]
    r = plan_rewards(ctx.worlds[tick.scene_id], tick, trajectories, cfg.profile)
    a = plan_consistency(tick, text, trajectories)
    return r, a, r + cfg.consistency_weight * np.nan_to_num(a, nan=0.0)


def rl_step(
    model: Any,
    ref: Any,
    ctx: TickContext,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    cfg: RLConfig,
    step: int,
) -> dict[str, float]:
    """One optimizer step (``cfg.epochs`` updates) on ``cfg.ticks`` ticks drawn for ``step``."""
    rng = np.random.default_rng([cfg.seed, step])
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = rng.choice(len(ctx.ticks), size=cfg.ticks, replace=len(ctx.ticks) < cfg.ticks)
    batch = []
    rewards = []
    agree = []
    for i in idx:
        prepared, prefix, _ = ctx.get(int(i))
        noise = torch.randn((cfg.samples, model.config.n_waypoints, 2), generator=gen)
        roll = sde_sample(model, prefix, noise, cfg.sigma, gen)
        traj = actions_to_trajectories(model, roll.xs[-1], prepared.v0)
        r, a, total = tick_rewards(ctx, int(i), traj, cfg)
        rewards.append(r)
        agree.append(a)
        batch.append((prefix, roll, torch.as_tensor(group_advantages(total), dtype=torch.float32)))
    loss_v = kl_v = clip_v = 0.0
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        for prefix, roll, adv in batch:
            lp, kl = step_terms(model, ref if cfg.kl_weight > 0 else None, prefix, roll.xs, cfg.sigma)
            surr, clipped = clipped_objective(lp, roll.log_prob, adv, cfg.clip)
            loss = (surr + cfg.kl_weight * kl).mean() / len(batch)
            loss.backward()
            loss_v += float(loss.detach()) / cfg.epochs
            kl_v += float(kl.detach().mean()) / (len(batch) * cfg.epochs)
            clip_v += float(clipped) / (len(batch) * cfg.epochs)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    allr = np.concatenate(rewards)
    alla = np.concatenate(agree)
    alla = alla[np.isfinite(alla)]
    return {
        "loss": loss_v,
        "reward_mean": float(allr.mean()),
        "reward_std": float(np.mean([r.std() for r in rewards])),
        "consistency": float(np.mean(alla == 1.0)) if len(alla) else float("nan"),
        "kl": kl_v,
        "clip_frac": clip_v,
        "lr": cfg.lr,
    }


def _save_checkpoint(model: Any, opt: torch.optim.Optimizer, cfg: RLConfig, step: int, out: Path,
                     extra: dict[str, Any]) -> Path:  # fmt: skip
    """``out/checkpoint/``, swapped in whole (see :func:`~alpasim_policy.training.run_files.save_checkpoint`)."""
    return save_checkpoint(model, opt, out, {"stage": "rl", "step": step, "config": asdict(cfg), **extra})


def _write_log(rows: list[dict[str, Any]], out: Path) -> None:
    write_csv_log(rows, CSV_FIELDS, out / "log.csv")
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(steps, [r["reward_mean"] for r in rows], label="reward (EPDMS of the K SDE samples)")
    win = max(1, len(rows) // 10)
    smooth = np.convolve([r["reward_mean"] for r in rows], np.ones(win) / win, mode="valid")
    a.plot(steps[win - 1 :], smooth, label=f"running mean ({win})")
    a.plot(steps, [r.get("consistency", math.nan) for r in rows], alpha=0.6,
           label="share of samples doing their CoC's meta-action")  # fmt: skip
    a.set_xlabel("step")
    a.set_ylabel("EPDMS / share")
    a.legend(fontsize=8)
    b.plot(steps, [r["loss"] for r in rows], label="loss")
    b.plot(steps, [r["kl"] for r in rows], label="KL to init (per dim)")
    b.set_xlabel("step")
    b.legend(fontsize=8)
    fig.suptitle("RL post-training")
    fig.tight_layout()
    save_figure(fig, out / "reward.png")


def _read_log(out: Path, upto: int) -> list[dict[str, Any]]:
    return read_csv_log(out / "log.csv", upto)


def training_scenes(raw: Path, exclude_suite: str | None, cfg: RLConfig | None = None) -> list[Any]:
    """The data stage's scenes: every importable recording minus the evaluation suite's overlap,
    plus (per ``cfg``, as the data stage's flags) their slowed replays and stopping-lead variants.
    Deterministic, so a resumed run finds the scenes of its saved ticks."""
    from alpasim_policy.training.build import held_out_scenes, lead_stop_scenes

    cfg = cfg or RLConfig()
    scenes, _, _ = held_out_scenes(raw, exclude_suite, cfg.partial_egos_s, cfg.time_scales)
    return scenes + [m for sc in scenes for m in lead_stop_scenes(sc, cfg.lead_stops, cfg.seed)]


def prepare_run(
    out: Path,
    cfg: RLConfig,
    scenes: list[Any],
    camera_size: tuple[int, int],
    frames: int,
    progress: bool,
    frame_stride: int = 1,
) -> tuple[list[Tick], dict[str, Any]]:
    """``out/ticks.npz`` and ``out/metric_cache/`` (built once, reused by a resumed run)."""
    from alpasim_policy.caching import IDM_REFERENCE
    from alpasim_policy.scoring.cache import load_world
    from alpasim_policy.training.data import dagger_driver

    path = out / "ticks.npz"
    if path.is_file():
        ticks = load_ticks(path)
    else:
        ticks = collect_ticks(
            scenes, camera_size=camera_size, frames=frames, frame_stride=frame_stride, stride=cfg.stride,
            perturbations=cfg.perturbations, max_lateral=cfg.max_lateral, seed=cfg.seed, progress=progress,
            expert=cfg.expert, driver=None if cfg.driver is None else dagger_driver(cfg.driver),
            driver_share=cfg.driver_share,
        )  # fmt: skip
        if not ticks:
            raise ConfigError("no training ticks: the scenes have no step with 4 s of logged future")
        save_ticks(ticks, path)
    by_id = {s.scene_id: s for s in scenes}
    worlds = {}
    for sid in sorted({t.scene_id for t in ticks}):
        if sid not in by_id:
            raise ConfigError(f"{path}: tick of scene {sid!r}, which is not among the training scenes")
        worlds[sid] = load_world(by_id[sid], out / "metric_cache", reference=IDM_REFERENCE)
    return ticks, worlds


def train_rl(
    out: Path,
    cfg: RLConfig,
    scenes: list[Any],
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    eval_ticks: int = 16,
) -> dict[str, Any]:
    """Run the RL stage; returns a summary (also ``out/summary.json``)."""
    from tqdm import tqdm

    from alpasim_policy.model.modeling_alpamayo import AlpamayoR1
    from alpasim_policy.policies.alpamayo import DEFAULT_CAMERA_SIZE

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    start = 0
    ref = AlpamayoR1.from_pretrained(cfg.init)
    ref.requires_grad_(False)
    if resume and (ckpt / "training_state.json").is_file():
        state = json.loads((ckpt / "training_state.json").read_text())
        if state.get("stage") != "rl":
            raise ConfigError(f"--resume: {ckpt} is not an RL checkpoint")
        start = int(state["step"])
        model = AlpamayoR1.from_pretrained(ckpt)
    else:
        if resume:
            print(f"--resume: no checkpoint in {ckpt}; starting from step 0")
        model = AlpamayoR1.from_pretrained(cfg.init)
    model.eval()  # no dropout: the rollout's and the update's log-probs come from the same function
    params = freeze_for_rl(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if start:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    size = DEFAULT_CAMERA_SIZE.get(model.config.preset)
    if size is None:
        raise ConfigError(f"--init: preset {model.config.preset!r} has no camera size")
    ticks, worlds = prepare_run(out, cfg, scenes, size, model.config.frames, progress, model.config.frame_stride)
    ctx = TickContext(model, ticks, worlds)
    eval_idx = list(range(0, len(ticks), max(1, len(ticks) // eval_ticks)))[:eval_ticks]
    before = (None, None)
    if start == 0:
        before = evaluate_reward(
            ref,
            ctx,  # the VLM is frozen: same prefixes
            eval_idx,
            cfg.samples,
            cfg.seed,
            cfg.profile,
        )
    rows = _read_log(out, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc="rl", disable=not progress)
    t_run = time.perf_counter()
    done = start
    stopped_early = False
    for step in bar:
        t0 = time.perf_counter()
        row = rl_step(model, ref, ctx, opt, params, cfg, step)
        row.update(step=step + 1, seconds=time.perf_counter() - t0)
        rows.append(row)
        bar.set_postfix(r=f"{row['reward_mean']:.3f}", c=f"{row['consistency']:.2f}", kl=f"{row['kl']:.4f}")
        done = step + 1
        over = time.perf_counter() - t_run > cfg.time_limit_s
        if done % cfg.save_every == 0 or done == cfg.steps or over:
            _save_checkpoint(model, opt, cfg, done, out, {"ticks": len(ticks)})
            _write_log(rows, out)
        if over:
            stopped_early = done < cfg.steps
            break
    _write_log(rows, out)
    after, after_c = evaluate_reward(model, ctx, eval_idx, cfg.samples, cfg.seed, cfg.profile)
    prev = {}
    if (out / "summary.json").is_file() and start:
        prev = json.loads((out / "summary.json").read_text())
    summary = {
        "steps": done,
        "ticks": len(ticks),
        "scenes": sorted(worlds),
        "seconds": time.perf_counter() - t_run,
        "stopped_at_time_limit": stopped_early,
        "eval_reward_before": before[0] if start == 0 else prev.get("eval_reward_before"),
        "eval_reward_after": after,
        "eval_consistency_before": before[1] if start == 0 else prev.get("eval_consistency_before"),
        "eval_consistency_after": after_c,
        "eval_ticks": len(eval_idx),
        "final": rows[-1] if rows else None,
        "config": asdict(cfg),
        "checkpoint": str(ckpt),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = [
    "CSV_FIELDS",
    "RLConfig",
    "Rollout",
    "Tick",
    "clipped_objective",
    "collect_ticks",
    "gaussian_log_prob",
    "group_advantages",
    "plan_consistency",
    "sde_sample",
    "sde_step",
    "step_terms",
    "tick_rewards",
    "train_rl",
]
