"""Copycat counter-samples (``train --stage speedups``): hand-built samples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from alpasim_policy.cli import main
from alpasim_policy.errors import ConfigError
from alpasim_policy.training.speedups import MAX_DECEL_MPS2, build_speedups, speedup_copies

DT = 0.1


def _history(v: float) -> np.ndarray:
    """(16, 4) rig-frame history of a car driving straight at ``v`` (x, y, heading, speed)."""
    h = np.zeros((16, 4), np.float32)
    h[:, 0] = -v * DT * np.arange(15, -1, -1)
    h[:, 3] = v
    return h


def _stopping_target(v: float, decel: float) -> np.ndarray:
    """(64, 3) a straight target braking from ``v`` at ``decel`` and then standing."""
    t = np.arange(1, 65) * DT
    tt = np.minimum(t, v / decel)
    x = v * tt - 0.5 * decel * tt * tt
    return np.stack([x, np.zeros(64), np.zeros(64)], axis=1).astype(np.float32)


STOPPED = "Decelerate and keep lane because the lead vehicle 4 m ahead is stopped."


def _speeds(target: np.ndarray, v0: float) -> np.ndarray:
    pts = np.vstack([[0.0, 0.0], target[:, :2]])
    return np.hypot(*np.diff(pts, axis=0).T) / DT


def test_a_moving_ego_gets_a_faster_past_and_brakes_to_the_same_stop_point():
    hist, tgt = _history(1.0), _stopping_target(1.0, 0.5)  # stops after 1.0 m
    made = speedup_copies(hist, tgt, 1.0, STOPPED, np.random.default_rng(0), copies=3)
    assert len(made) == 3
    for h, t, v, coc in made:
        assert 1.4 <= v <= 3.0  # v + U(0.6, 2.0), lowered to what 4 m/s^2 can stop in 1 m
        assert coc == STOPPED.replace("Decelerate", "Stop", 1)
        assert h.dtype == np.float32 and t.dtype == np.float32
        # the same straight path, driven at v': positions and speeds scaled by v'/v
        np.testing.assert_allclose(h[:, 0], hist[:, 0] * v, rtol=1e-5)
        np.testing.assert_allclose(h[:, 3], v, rtol=1e-5)
        sp = _speeds(t, v)
        assert sp[0] == pytest.approx(v - 0.5 * (v * v / 2.0) * DT, rel=0.05)  # starts at v'
        decel = -np.diff(np.concatenate([[v], sp])) / DT
        assert decel.max() <= MAX_DECEL_MPS2 * 1.05 + 1e-6
        assert t[-1, 0] == pytest.approx(tgt[-1, 0], abs=1e-5)  # the label's stop point
        assert np.all(np.diff(t[:, 0]) >= -1e-6) and np.all(t[:, 1] == 0)
    # a draw per copy from the given generator: the same seed, the same copies
    again = speedup_copies(hist, tgt, 1.0, STOPPED, np.random.default_rng(0), copies=3)
    assert [m[2] for m in again] == [m[2] for m in made]


def test_a_standing_ego_arrives_and_stops_two_metres_short_of_the_lead():
    hist, tgt = _history(0.0), np.zeros((64, 3), np.float32)
    coc = "Stop and keep lane because the lead vehicle 6 m ahead is stopped."
    made = speedup_copies(hist, tgt, 0.0, coc, np.random.default_rng(1), copies=2)
    assert made
    for h, t, v, text in made:
        assert 1.0 <= v <= 3.0 and text == coc
        np.testing.assert_allclose(np.diff(h[:, 0]), v * DT, rtol=1e-5)  # arriving at v'
        assert t[-1, 0] == pytest.approx(6 - 2.0) and np.all(t[:, 1:] == 0)
        assert _speeds(t, v)[-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("coc", "speed"),
    [
        ("Keep speed and keep lane because the lead vehicle 4 m ahead is keeping its speed.", 1.0),
        ("Stop and keep lane because the lead vehicle 12 m ahead is stopped.", 1.0),  # too far
        (STOPPED, 3.0),  # too fast already
        ("Stop and keep lane because the light ahead is red with the stop line 4 m away.", 1.0),
    ],
)
def test_other_samples_get_no_copies_and_take_no_draws(coc, speed):
    rng = np.random.default_rng(0)
    assert speedup_copies(_history(speed), _stopping_target(speed, 0.5), speed, coc, rng) == []
    assert rng.uniform() == np.random.default_rng(0).uniform()


def _shard(path, cocs, speeds):
    n = len(cocs)
    np.savez_compressed(
        path,
        images=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1, 1, 1) * np.ones((1, 4, 4, 3, 2, 2), np.uint8),
        history=np.stack([_history(v) for v in speeds]),
        speed=np.asarray(speeds, np.float32),
        command=np.ones(n, np.int64),
        target=np.stack(
            [_stopping_target(max(v, 0.01), 0.5) if v else np.zeros((64, 3), np.float32) for v in speeds]
        ),
        target_valid=np.ones((n, 64), bool),
        coc=np.array(cocs),
        scene_id=np.array(["s"] * n),
    )


def test_cli_writes_the_counter_shards_and_a_manifest(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    keep = "Keep speed and keep lane because the road ahead is clear."
    _shard(a / "x.npz", [STOPPED, keep, STOPPED], [1.0, 5.0, 1.5])
    _shard(b / "x.npz", [STOPPED], [0.8])  # the same name in another folder: both kept
    out = tmp_path / "sp"
    assert (
        main(["train", "--stage", "speedups", "--data", str(a), str(b), "--out", str(out), "--copies", "2"])
        == 0
    )
    m = build_speedups([a, b], tmp_path / "sp2", copies=2)
    assert m["shards"] == ["x-spd.npz", "x-2-spd.npz"] and m["samples_with_copies"] == 3
    z = np.load(out / "x-spd.npz")
    assert len(z["coc"]) == 4 and set(z["coc"]) == {STOPPED.replace("Decelerate", "Stop", 1)}
    # frames and the other per-sample arrays are the source sample's: samples 0 and 2 of x.npz
    assert [int(i[0, 0, 0, 0, 0]) for i in z["images"]] == [0, 0, 2, 2]
    for k in ("history", "target", "speed"):  # the same command writes the same shards
        np.testing.assert_array_equal(z[k], np.load(tmp_path / "sp2" / "x-spd.npz")[k])
    assert main(["train", "--stage", "speedups", "--out", str(out)]) == 2  # names --data
    with pytest.raises(ConfigError, match="copies"):
        build_speedups([a], tmp_path / "sp3", copies=0)
