"""AlpaSim in-process driver-model plugin: our Alpamayo policy behind AlpaSim's model interface.

AlpaSim's driver loads trajectory models through its plugin registry (the ``alpasim.models``
entry-point group; ours is ``alpamayo_policy``, declared in pyproject.toml). A model is built
with ``from_config(model_cfg, device, camera_ids, context_length, output_frequency_hz)`` and
asked ``predict(prediction_input)`` with camera frames, the navigation command, speed,
acceleration and the ego pose history; it answers x, y offsets and headings in the rig frame
plus optional reasoning text.

When AlpaSim's driver package is installed the class subclasses its ``BaseTrajectoryModel`` and
returns its ``ModelPrediction``; otherwise it stands alone with look-alike types, so the adapter
is testable here. The wrapped policy is ``alpasim_policy.policies.alpamayo:AlpamayoPolicy``
(imported lazily); ``model_cfg.policy`` may name any registered policy instead (testing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.base import (
    COMMAND_LEFT,
    COMMAND_RIGHT,
    COMMAND_STRAIGHT,
    HISTORY_STEPS,
    MAX_AGENTS,
    ROUTE_POINTS,
    ROUTE_SPACING_M,
    validate_plan,
)
from alpasim_policy.serve import convert

try:  # AlpaSim's driver is installed: be a real plugin of its registry
    from alpasim_driver.models.base import (  # type: ignore[import-not-found]
        BaseTrajectoryModel as _Base,
    )
    from alpasim_driver.models.base import (  # type: ignore[import-not-found]
        DriveCommand,
        ModelPrediction,
    )
except ImportError:  # standalone: the same shapes, so tests (and other hosts) can use it
    _Base = object  # type: ignore[assignment,misc]

    class DriveCommand(IntEnum):  # type: ignore[no-redef]
        """AlpaSim's canonical command values."""

        LEFT = 0
        STRAIGHT = 1
        RIGHT = 2
        UNKNOWN = 3

    @dataclass
    class ModelPrediction:  # type: ignore[no-redef]
        trajectory_xy: np.ndarray  # (T, 2) rig frame
        headings: np.ndarray  # (T,) rig frame, rad
        reasoning_text: str | None = None
        debug_metadata: dict[str, Any] | None = None


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, a dataclass / namespace, or an OmegaConf node."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        return getattr(cfg, key, default)
    except Exception:  # OmegaConf raises on missing keys in struct mode
        return default


class AlpamayoDriverModel(_Base):  # type: ignore[misc,valid-type]
    """Adapter: AlpaSim ``predict`` inputs -> our Policy observation -> AlpaSim ``ModelPrediction``.

    Frames: AlpaSim hands the ego pose history as local-frame ``PoseAtTime``s (its rig poses);
    we resample them at our 0.1 s steps ending at the newest pose and express them in that rig
    frame. Our 10 Hz plan is resampled to ``output_frequency_hz``.
    """

    DEFAULT_POLICY = "alpamayo"

    def __init__(
        self,
        policy: Any,
        camera_ids: list[str],
        context_length: int = 1,
        output_frequency_hz: int = 10,
        seed: int | None = 0,
        camera_rig: Any = None,
    ):
        self._policy = policy
        self._camera_ids = list(camera_ids)
        self.camera_map: dict[str, str] = {}  # AlpaSim camera id -> our camera name (identity if absent)
        self._context_length = int(context_length)
        self._output_frequency_hz = int(output_frequency_hz)
        if self._output_frequency_hz <= 0:
            raise ConfigError(f"output_frequency_hz must be > 0, got {output_frequency_hz}")
        policy.reset(seed=seed, scene=None, camera_rig=camera_rig)

    # ------------------------------------------------------------------ AlpaSim's factory

    @classmethod
    def from_config(
        cls,
        model_cfg: Any,
        device: Any = None,
        camera_ids: list[str] | None = None,
        context_length: int | None = None,
        output_frequency_hz: int = 10,
    ) -> AlpamayoDriverModel:
        """Build from AlpaSim's model config.

        Keys read from ``model_cfg``: ``policy`` (default: our Alpamayo policy), ``policy_options``
        (dict, passed to the policy; for our Alpamayo policy AlpaSim's ``checkpoint_path`` becomes
        ``weights`` and the torch device its ``device``), ``camera_map`` (AlpaSim camera id -> our
        rig's camera name; default: the same names, else AlpaSim's ``camera_ids`` in order onto the
        rig's), ``seed`` (default 0), ``camera_preset`` (our rig preset whose cameras AlpaSim's ids map to).
        """
        name = _cfg_get(model_cfg, "policy", cls.DEFAULT_POLICY)
        options = dict(_cfg_get(model_cfg, "policy_options", None) or {})
        if name == cls.DEFAULT_POLICY:
            # Only our model takes these; registry baselines reject unknown options.
            ckpt = _cfg_get(model_cfg, "checkpoint_path")
            if ckpt is not None and "weights" not in options:
                options["weights"] = str(ckpt)
            dev = _cfg_get(model_cfg, "device", device)
            if dev is not None and "device" not in options:
                options["device"] = str(dev).split(":")[0]  # torch.device("cuda:0") -> "cuda"
            from alpasim_policy.policies.alpamayo import AlpamayoPolicy

            policy = AlpamayoPolicy(**options)
        else:
            from alpasim_policy.policies.registry import make_policy

            policy = make_policy(name, **options)
        camera_rig = None
        preset = _cfg_get(model_cfg, "camera_preset", getattr(policy, "camera_preset", None))
        if preset:
            from alpasim_policy.render.cameras import CameraRig

            camera_rig = CameraRig.from_preset(preset)
        ids = list(camera_ids) if camera_ids else (camera_rig.names if camera_rig is not None else [])
        camera_map = dict(_cfg_get(model_cfg, "camera_map", None) or {})
        if camera_rig is not None and not camera_map and set(ids) != set(camera_rig.names):
            if len(ids) != len(camera_rig):
                raise ConfigError(
                    f"camera_ids {ids} do not match the {preset} rig {camera_rig.names}; set model_cfg.camera_map"
                )
            camera_map = dict(zip(ids, camera_rig.names, strict=True))
        model = cls(
            policy,
            ids,
            context_length=context_length or 1,
            output_frequency_hz=output_frequency_hz,
            seed=_cfg_get(model_cfg, "seed", 0),
            camera_rig=camera_rig,
        )
        model.camera_map = camera_map
        return model

    # ------------------------------------------------------------------ AlpaSim's model interface

    @property
    def camera_ids(self) -> list[str]:
        return list(self._camera_ids)

    @property
    def num_cameras(self) -> int:
        return len(self._camera_ids)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def output_frequency_hz(self) -> int:
        return self._output_frequency_hz

    def _encode_command(self, command: Any) -> int:
        """AlpaSim's DriveCommand (LEFT 0, STRAIGHT 1, RIGHT 2, UNKNOWN 3) -> ours (unknown: straight)."""
        value = int(command)
        return {0: COMMAND_LEFT, 1: COMMAND_STRAIGHT, 2: COMMAND_RIGHT}.get(value, COMMAND_STRAIGHT)

    def observation(self, prediction_input: Any) -> dict[str, Any]:
        """Our Policy observation for one AlpaSim ``PredictionInput``."""
        history = list(_cfg_get(prediction_input, "ego_pose_history", None) or [])
        if not history:
            raise ConfigError("prediction_input.ego_pose_history: empty; need at least the current pose")
        buf = convert.EgoBuffer()
        from alpasim_policy.serve.proto import common_pb2

        traj = common_pb2.Trajectory()
        for p in history:  # AlpaSim PoseAtTime (any protobuf with pose / timestamp_us)
            q = p.pose.quat
            traj.poses.add(
                pose=convert.pose_proto(p.pose.vec.x, p.pose.vec.y, 0.0, p.pose.vec.z, (q.w, q.x, q.y, q.z)),
                timestamp_us=int(p.timestamp_us),
            )
        try:
            buf.add_message(traj, [])
        except convert.RequestError as e:
            raise ConfigError(f"prediction_input.ego_pose_history: {e}") from e
        hist = buf.history(HISTORY_STEPS, min_steps=1)
        if hist is None:  # unreachable with min_steps=1 and a non-empty history
            raise ConfigError("prediction_input.ego_pose_history: no usable pose")
        speed = float(_cfg_get(prediction_input, "speed", hist["speed"]))
        hist["ego_history"][-1, 3] = speed
        cameras = {}
        for cam_id, frames in (_cfg_get(prediction_input, "camera_images", None) or {}).items():
            if frames:
                last = frames[-1]
                image = getattr(last, "image", last[1] if isinstance(last, tuple) else last)
                cameras[self.camera_map.get(cam_id, cam_id)] = np.asarray(image)
        # AlpaSim gives a command but no route polyline to the model: straight ahead, and the command.
        route = np.zeros((ROUTE_POINTS, 2), dtype=np.float32)
        route[:, 0] = ROUTE_SPACING_M * np.arange(ROUTE_POINTS)
        obs = {
            "ego_history": hist["ego_history"],
            "speed": np.float32(speed),
            "acceleration": np.float32(_cfg_get(prediction_input, "acceleration", hist["acceleration"])),
            "route": route,
            "command": np.int64(
                self._encode_command(_cfg_get(prediction_input, "command", DriveCommand.STRAIGHT))
            ),
            "pose": hist["pose"],
            "step": np.int64(round(hist["now_us"] / convert.STEP_US)),
            "agents": np.zeros((MAX_AGENTS, 8), dtype=np.float32),
            "agents_mask": np.zeros((MAX_AGENTS,), dtype=bool),
        }
        if cameras:
            obs["cameras"] = cameras
        return obs

    def predict(self, prediction_input: Any) -> ModelPrediction:
        out = self._policy.act(self.observation(prediction_input))
        plan = validate_plan(out.trajectory, where=f"policy {getattr(self._policy, 'name', '?')}")
        # Resample our 0.1 s plan at the requested output frequency (rows at (i + 1) / f seconds).
        t_ours = 0.1 * np.arange(1, len(plan) + 1)
        dt = 1.0 / self._output_frequency_hz
        t_out = dt * np.arange(1, int(np.floor(t_ours[-1] / dt + 1e-9)) + 1)
        xs = np.interp(t_out, t_ours, plan[:, 0])
        ys = np.interp(t_out, t_ours, plan[:, 1])
        hs = convert.wrap_angle(np.interp(t_out, t_ours, np.unwrap(plan[:, 2])))
        meta = {k: v for k, v in (out.extra or {}).items() if isinstance(v, int | float | str | bool)}
        if out.samples is not None:
            meta["num_samples"] = int(np.shape(out.samples)[0])
        return ModelPrediction(
            trajectory_xy=np.stack([xs, ys], axis=1),
            headings=np.asarray(hs, dtype=np.float64),
            reasoning_text=out.reasoning,
            debug_metadata=meta or None,
        )

    def predict_batch(self, prediction_inputs: list[Any]) -> list[ModelPrediction]:
        return [self.predict(p) for p in prediction_inputs]
