"""The AlpaSim in-process plugin: entry point, from_config, predict's frames and resampling."""

from __future__ import annotations

import math
import types
from importlib.metadata import entry_points

import numpy as np
import pytest

from alpasim_policy.serve import convert
from alpasim_policy.serve.alpasim_plugin import AlpamayoDriverModel, DriveCommand
from alpasim_policy.serve.proto import common_pb2
from alpasim_policy.serve.testing import RouteCruisePolicy


def test_entry_point_loads_the_adapter():
    (ep,) = [e for e in entry_points(group="alpasim.models") if e.name == "alpamayo_policy"]
    assert ep.load() is AlpamayoDriverModel


def _input(command=DriveCommand.LEFT, yaw=0.3, speed=5.0, n=20, cams=("camera_front_wide_120fov",)):
    history = []
    for k in range(n):
        d = speed * 0.1 * k
        history.append(
            common_pb2.PoseAtTime(
                pose=convert.pose_proto(100 + d * math.cos(yaw), -50 + d * math.sin(yaw), yaw, 1.5),
                timestamp_us=1_000_000 + 100_000 * k,
            )
        )
    frame = types.SimpleNamespace(
        timestamp_us=history[-1].timestamp_us, image=np.zeros((54, 96, 3), np.uint8)
    )
    return types.SimpleNamespace(
        camera_images={c: [frame] for c in cams},
        command=command,
        speed=speed,
        acceleration=0.0,
        ego_pose_history=history,
        planner_context=None,
    )


def test_predict_maps_frames_command_and_resamples_the_plan():
    policy = RouteCruisePolicy(cruise_speed=5.0, noise_m=0.0)
    model = AlpamayoDriverModel(policy, ["camera_front_wide_120fov"], output_frequency_hz=2, seed=4)
    assert (
        policy.seed == 4
        and model.camera_ids == ["camera_front_wide_120fov"]
        and model.output_frequency_hz == 2
    )
    pred = model.predict(_input())
    seen = policy.seen[-1]
    assert seen["command"] == 0  # AlpaSim LEFT -> our left
    assert seen["cameras"] == {"camera_front_wide_120fov": (54, 96, 3)}
    # History expressed in the newest rig frame: straight behind the rig at 0.5 m per step.
    np.testing.assert_allclose(seen["ego_history"][:, 0], -0.5 * np.arange(15, -1, -1), atol=1e-3)
    np.testing.assert_allclose(seen["ego_history"][:, 1:3], 0.0, atol=1e-4)
    assert seen["speed"] == pytest.approx(5.0)
    # 2 Hz output: rows at 0.5 s, 1.0 s, ... = our 10 Hz rows 4, 9, ...
    plan = seen["plan"]
    assert pred.trajectory_xy.shape == (8, 2) and pred.headings.shape == (8,)
    np.testing.assert_allclose(pred.trajectory_xy, plan[4::5, :2], atol=1e-9)
    np.testing.assert_allclose(pred.headings, plan[4::5, 2], atol=1e-9)
    assert pred.reasoning_text.startswith("follow the route")
    assert model._encode_command(DriveCommand.UNKNOWN) == 1 and model._encode_command(DriveCommand.RIGHT) == 2


def test_from_config_uses_the_registry_for_other_policies(monkeypatch):
    built = {}

    def make_policy(spec, **options):
        built["spec"], built["options"] = spec, options
        return RouteCruisePolicy(**options)

    import alpasim_policy.policies.registry as registry

    monkeypatch.setattr(registry, "make_policy", make_policy)
    cfg = {
        "policy": "route_cruise",
        "policy_options": {"cruise_speed": 3.0},
        "seed": 9,
        "camera_preset": "alpamayo4",
    }
    model = AlpamayoDriverModel.from_config(
        cfg, device="cpu", camera_ids=None, context_length=None, output_frequency_hz=10
    )
    assert built == {"spec": "route_cruise", "options": {"cruise_speed": 3.0}}  # no device for baselines
    assert model._policy.seed == 9 and model.context_length == 1
    assert len(model.camera_ids) == 4  # the alpamayo4 preset's cameras
    assert model._policy.camera_rig.names == model.camera_ids
    pred = model.predict(_input(command=DriveCommand.STRAIGHT, cams=model.camera_ids))
    assert pred.trajectory_xy.shape == (40, 2)
    assert np.all(np.diff(pred.trajectory_xy[:, 0]) > 0)


def test_predict_rejects_empty_history():
    model = AlpamayoDriverModel(RouteCruisePolicy(), [])
    inp = _input()
    inp.ego_pose_history = []
    with pytest.raises(ValueError, match="ego_pose_history"):
        model.predict(inp)


def test_from_config_builds_a_real_baseline_through_the_registry():
    model = AlpamayoDriverModel.from_config(
        {"policy": "constant_velocity"}, device="cpu", camera_ids=[], context_length=1, output_frequency_hz=10
    )
    pred = model.predict(_input(command=DriveCommand.STRAIGHT, speed=5.0, cams=()))
    # Constant velocity at 5 m/s straight ahead in the rig frame: 0.5 m per 0.1 s row.
    np.testing.assert_allclose(pred.trajectory_xy[:10, 0], 0.5 * np.arange(1, 11), atol=1e-3)
    np.testing.assert_allclose(pred.trajectory_xy[:, 1], 0.0, atol=1e-3)


def test_default_plugin_wraps_our_alpamayo_policy():
    """The entry point's default: AlpamayoPolicy (tiny preset, random seeded weights) behind AlpaSim's
    interface, with AlpaSim's camera ids (the alpamayo4 names) and a torch-style device string."""
    names = [
        "camera_cross_left_120fov",
        "camera_front_wide_120fov",
        "camera_cross_right_120fov",
        "camera_front_tele_30fov",
    ]
    model = AlpamayoDriverModel.from_config(
        {"policy_options": {"preset": "tiny", "samples": 1, "cot_tokens": 4}},
        device="cpu:0",
        camera_ids=names,
        context_length=4,
        output_frequency_hz=10,
    )
    assert type(model._policy).__name__ == "AlpamayoPolicy" and model.camera_map == {}
    inp = _input(command=DriveCommand.LEFT, cams=names)
    for c in names:
        inp.camera_images[c][0].image = np.zeros((72, 128, 3), np.uint8)
    pred = model.predict(inp)
    assert pred.trajectory_xy.shape == (64, 2) and pred.headings.shape == (64,)
    assert np.isfinite(pred.trajectory_xy).all() and isinstance(pred.reasoning_text, str)
    assert pred.debug_metadata["num_samples"] == 1
