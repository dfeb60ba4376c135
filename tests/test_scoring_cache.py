"""Metric cache: round trip on a real bundled scene, clear errors for corrupt / stale / foreign caches,
and the committed caches still match the reference planner that the runner hands in."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import shapely

from alpasim_policy.caching import IDM_REFERENCE, PolicyReference, build_cache, build_suite_caches
from alpasim_policy.errors import CacheError
from alpasim_policy.io import pack_archive, unpack_archive
from alpasim_policy.scenes.format import load_scene
from alpasim_policy.scenes.suite import load_suite
from alpasim_policy.scoring.cache import build_world, load_world, read_world
from alpasim_policy.scoring.openloop import score_states


@pytest.fixture(scope="module")
def scene_path():
    # the bundled scene with the most agents exercises every cached array
    paths = load_suite("bundled")
    return max(paths, key=lambda p: len(load_scene(p).agents))


def test_cache_round_trip_scores_identically(tmp_path, scene_path):
    scene = load_scene(scene_path)
    path = build_cache(scene_path, tmp_path)
    assert path.name == f"{scene.scene_id}.npz"
    cached = read_world(path, scene.content_hash, IDM_REFERENCE)
    fresh = build_world(scene, IDM_REFERENCE)
    assert cached.reference_name == "idm" and cached.reference_state.shape == (scene.num_steps, 7)
    np.testing.assert_array_equal(cached.agent_state, fresh.agent_state)
    np.testing.assert_array_equal(cached.human_state, scene.ego.state)
    assert all(shapely.equals(a, b) for a, b in zip(cached.lane_polygons, fresh.lane_polygons, strict=True))
    assert shapely.equals(cached.drivable, fresh.drivable)
    t0 = scene.metadata.t0_index
    n = min(41, scene.num_steps - t0)
    states = np.stack([scene.ego.state[t0 : t0 + n], scene.ego.state[t0 : t0 + n] + [0, 1.0, 0, 0, 0, 0, 0]])
    a = score_states(cached, states, t0).metrics
    b = score_states(fresh, states, t0).metrics
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_corrupt_cache_is_rejected_naming_the_file(tmp_path, scene_path):
    path = build_cache(scene_path, tmp_path, reference=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CacheError, match=str(path).replace(".", r"\.") + ".*corrupt"):
        read_world(path)


def test_missing_field_and_foreign_version_are_rejected(tmp_path, scene_path):
    path = build_cache(scene_path, tmp_path, reference=None)
    arrays, meta = unpack_archive(path)
    del arrays["lanes/wkb"]
    path.write_bytes(pack_archive(arrays, meta))
    with pytest.raises(CacheError, match="'lanes/wkb' missing"):
        read_world(path)
    arrays, meta = unpack_archive(build_cache(scene_path, tmp_path, reference=None))
    meta["cache_version"] = "0.1"
    path.write_bytes(pack_archive(arrays, meta))
    with pytest.raises(CacheError, match="cache_version"):
        read_world(path)


def test_stale_cache_is_rejected_then_rebuilt_on_request(tmp_path, scene_path):
    scene = load_scene(scene_path)
    path = build_cache(scene_path, tmp_path, reference=None)
    arrays, meta = unpack_archive(path)
    meta["scene_hash"] = "0" * 64  # as if built from an older version of the scene file
    path.write_bytes(pack_archive(arrays, meta))
    with pytest.raises(CacheError, match="stale"):
        load_world(scene, tmp_path)
    world = load_world(scene, tmp_path, rebuild=True, reference=None)
    assert world.content_hash == scene.content_hash
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("meta.json"))["scene_hash"] == scene.content_hash
    assert read_world(path, scene.content_hash).scene_id == scene.scene_id


def test_parallel_suite_build(tmp_path):
    suite = tmp_path / "two.yaml"
    ids = [p.stem for p in load_suite("bundled")[:2]]
    suite.write_text("name: two\nscenes: [" + ", ".join(ids) + "]\n")
    out = build_suite_caches(str(suite), tmp_path / "mc", workers=2, reference="human")
    assert [r[1] for r in out] == [str(tmp_path / "mc" / f"{i}.npz") for i in ids]
    for _, p, _ in out:
        assert read_world(p).scene_id in ids


def test_committed_metric_caches_match_the_bundled_scenes_and_the_reference():
    """metric_cache/ must be rebuilt whenever a bundled scene or the idm reference's rollout changes
    (`alpasim-policy cache build --suite bundled --out metric_cache`, after bumping
    PolicyReference.version when the env / tracker / agents / idm changed the rollout)."""
    from alpasim_policy.scoring.report import DEFAULT_CACHE_DIR

    for p in load_suite("bundled"):
        scene = load_scene(p)
        world = read_world(DEFAULT_CACHE_DIR / f"{scene.scene_id}.npz", scene.content_hash, IDM_REFERENCE)
        assert world.reference_name == "idm" and world.extra["reference_version"] == IDM_REFERENCE.version
        # the same committed file is refused to a caller expecting another reference or version
        for other in (PolicyReference("idm", IDM_REFERENCE.version + ".next"), None):
            with pytest.raises(CacheError, match="'reference'"):
                read_world(DEFAULT_CACHE_DIR / f"{scene.scene_id}.npz", scene.content_hash, other)
        # the version is a promise: re-driving the reference today gives the cached rollout
        np.testing.assert_allclose(
            IDM_REFERENCE.rollout(scene),
            world.reference_state,
            atol=1e-6,
            err_msg=f"{scene.scene_id}: the idm reference drives differently from its cache; bump "
            "PolicyReference.version in alpasim_policy/caching.py and rebuild metric_cache/",
        )


def test_cache_made_by_another_reference_or_version_is_rejected(tmp_path, scene_path):
    scene = load_scene(scene_path)
    other = PolicyReference("constant_velocity", "1")
    path = build_cache(scene_path, tmp_path, other)
    assert read_world(path, scene.content_hash, other).reference_name == "constant_velocity"
    with pytest.raises(CacheError, match="'reference'.*'constant_velocity'.*expected 'idm'"):
        read_world(path, scene.content_hash, IDM_REFERENCE)
    with pytest.raises(CacheError, match="'reference'"):
        load_world(scene, tmp_path, reference=IDM_REFERENCE)
    world = load_world(scene, tmp_path, rebuild=True, reference=IDM_REFERENCE)
    assert world.reference_name == "idm"
    arrays, meta = unpack_archive(path)
    assert (meta["reference"], meta["reference_version"]) == ("idm", IDM_REFERENCE.version)
    meta["reference_version"] = "0"  # an older idm
    path.write_bytes(pack_archive(arrays, meta))
    with pytest.raises(CacheError, match="version '0'"):
        read_world(path, scene.content_hash, IDM_REFERENCE)


def test_auto_mode_ignores_a_cache_made_by_another_reference_version(tmp_path, scene_path, monkeypatch):
    from alpasim_policy.scoring import report

    scene = load_scene(scene_path)
    path = build_cache(scene_path, tmp_path)
    arrays, meta = unpack_archive(path)
    arrays["reference/state"] = arrays["reference/state"] + 100.0  # an "old idm" that drove elsewhere
    path.write_bytes(pack_archive(arrays, meta))
    monkeypatch.setattr(report, "DEFAULT_CACHE_DIR", tmp_path)
    _, used = report._world_for(scene.scene_id, "auto", False, {}, reference=IDM_REFERENCE)
    np.testing.assert_array_equal(used.reference_state, arrays["reference/state"])  # same version: cache used
    meta["reference_version"] = "0"
    path.write_bytes(pack_archive(arrays, meta))
    _, rebuilt = report._world_for(scene.scene_id, "auto", False, {}, reference=IDM_REFERENCE)
    assert np.abs(rebuilt.reference_state - arrays["reference/state"]).min() > 50.0
