"""Per-scene metric cache format: write, read and check the file the scorer scores from.

Why: NAVSIM-style scoring spends most of its time re-deriving map geometry and agent boxes;
the cache stores them once per scene so scoring a run (or 4096 proposals) starts at once.
The scorer only reads caches: building one needs a progress reference planner, which the runner
(:mod:`alpasim_policy.caching`) hands in; this module knows it only as a :class:`ReferencePlanner`.

File ``<out>/<scene_id>.npz`` (a deterministic zip via :func:`alpasim_policy.io.pack_archive`,
written atomically). ``meta.json`` holds ``cache_version``, ``scene_id``, ``scene_hash`` (the
sha256 of the scene file, :attr:`Scene.content_hash`), ``reference`` and ``reference_version``
(the :class:`ReferencePlanner` whose closed-loop rollout is stored, e.g. ``"idm"``; ``"human"``
and null when EP is normalised by the log), ids and scalars. Arrays:

==============================  =============================================================
``timestamps``                  (T,) s
``human/state``, ``/valid``     the logged ego (T, 7) rear axle, scene frame
``reference/state``             (T, 7) the reference rollout (only when ``reference != "human"``)
``agents/state``, ``/valid``    (M, T, 5) box centres, (M, T)
``agents/corners``              (M, T, 4, 2) float32 box corners (polygon-ready)
``agents/speed``                (M, T) float32
``agents/types``, ``/size``     (M,) AgentType, (M, 2) length / width
``lanes/wkb`` + ``/offsets``    lane polygons as concatenated WKB; flags ``lanes/intersection``,
                                ``lanes/on_route``
``map/drivable_wkb``            the drivable-area union (WKB)
``route/polyline``, ``/s``      route centerline (P, 2) and its arc length (P,)
``lights/wkb`` + ``/offsets``   red-light polygons; ``lights/red`` (K, T) bool
==============================  =============================================================

The STRtree over the lanes and the prepared geometries are rebuilt at load (they are not
serialisable, and building them takes milliseconds).

A cache is *stale* when its ``scene_hash`` differs from the scene file's or it was made by another
reference (name or version), and *corrupt* when it cannot be read or lacks a field; :func:`load_world` then raises :class:`CacheError` naming the
file, or rebuilds it when ``rebuild=True``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import shapely

from alpasim_policy.errors import CacheError
from alpasim_policy.io import atomic_write_bytes, pack_archive, unpack_archive
from alpasim_policy.scenes.format import Scene, load_scene
from alpasim_policy.scoring.world import ScoringWorld

#: 2.0: the progress reference is identified by name + version (``reference_version``), no longer
#: by a hash of the source files that made it.
CACHE_VERSION = "2.0"
SUPPORTED_CACHE_VERSIONS = ("2.0",)

_REQUIRED = (
    "timestamps", "human/state", "human/valid", "agents/state", "agents/valid", "agents/types",
    "agents/size", "lanes/wkb", "lanes/offsets", "lanes/intersection", "lanes/on_route",
    "map/drivable_wkb", "route/polyline", "lights/wkb", "lights/offsets", "lights/red",
)  # fmt: skip


def cache_path(out_dir: str | Path, scene_id: str) -> Path:
    return Path(out_dir) / f"{scene_id}.npz"


def _pack_geoms(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blobs = [shapely.to_wkb(g) for g in geoms]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def _unpack_geoms(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    out = [shapely.from_wkb(raw[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    return np.array(out, dtype=object).reshape(-1)


# ----------------------------------------------------------------------------- reference


@runtime_checkable
class ReferencePlanner(Protocol):
    """The progress reference EP normalises by, handed in by whoever builds caches (the runner).

    ``name`` and ``version`` are stored in the cache: a cache made by another reference, or by
    another version of it, is not used in its place. The owner bumps ``version`` whenever the
    rollout it produces changes.
    """

    name: str
    version: str

    def rollout(self, scene: Scene) -> np.ndarray:
        """(T, 7) ego states (EGO_COLUMNS, scene frame) over the whole scene."""
        ...


def reference_id(reference: ReferencePlanner | None) -> tuple[str, str | None]:
    """(name, version) a cache made with ``reference`` carries; ``("human", None)`` for the log."""
    return ("human", None) if reference is None else (str(reference.name), str(reference.version))


def world_reference_id(world: ScoringWorld) -> tuple[str, str | None]:
    """(name, version) of the progress reference a scoring world carries."""
    return world.reference_name, world.extra.get("reference_version")


# ----------------------------------------------------------------------------- build / save


def build_world(scene: Scene, reference: ReferencePlanner | None = None) -> ScoringWorld:
    """A :class:`ScoringWorld` for ``scene``; ``reference`` drives the EP reference (None: the human log)."""
    if reference is None:
        return ScoringWorld.from_scene(scene)
    world = ScoringWorld.from_scene(scene, reference_state=reference.rollout(scene), reference_name=reference.name)
    world.extra["reference_version"] = str(reference.version)
    return world


def world_to_bytes(world: ScoringWorld) -> bytes:
    from alpasim_policy.scenes.geometry import box_corners

    st = world.agent_state
    corners = box_corners(
        st[..., 0], st[..., 1], st[..., 2], world.agent_size[:, None, 0], world.agent_size[:, None, 1]
    )
    lanes_wkb, lanes_off = _pack_geoms(world.lane_polygons)
    lights_wkb, lights_off = _pack_geoms(world.red_light_polygons)
    route = np.asarray(world.route_polyline, np.float64)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])
    arrays = {
        "timestamps": world.timestamps,
        "human/state": world.human_state,
        "human/valid": world.human_valid,
        "agents/state": world.agent_state,
        "agents/valid": world.agent_valid,
        "agents/corners": corners.astype(np.float32),
        "agents/speed": np.hypot(st[..., 3], st[..., 4]).astype(np.float32),
        "agents/types": world.agent_types.astype(np.int8),
        "agents/size": world.agent_size,
        "lanes/wkb": lanes_wkb,
        "lanes/offsets": lanes_off,
        "lanes/intersection": world.lane_is_intersection,
        "lanes/on_route": world.lane_on_route,
        "map/drivable_wkb": np.frombuffer(shapely.to_wkb(world.drivable), dtype=np.uint8),
        "route/polyline": route,
        "route/s": s,
        "lights/wkb": lights_wkb,
        "lights/offsets": lights_off,
        "lights/red": world.red_light_red,
    }
    if world.reference_state is not None:
        arrays["reference/state"] = world.reference_state
    meta = {
        "cache_version": CACHE_VERSION,
        "scene_id": world.scene_id,
        "scene_hash": world.content_hash,
        "reference": world.reference_name,
        "reference_version": world.extra.get("reference_version"),
        "dt": world.dt,
        "t0_index": world.t0_index,
        "ego": {
            "length": world.ego_length,
            "width": world.ego_width,
            "rear_axle_to_center": world.rear_axle_to_center,
            "wheelbase": world.wheelbase,
        },
        "agent_ids": list(world.agent_ids),
        "lane_ids": list(world.lane_ids),
    }
    return pack_archive(arrays, meta)


def save_world(world: ScoringWorld, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, world_to_bytes(world))
    return path


# ----------------------------------------------------------------------------- load


def read_world(
    path: str | Path,
    scene_hash: str | None = None,
    reference: ReferencePlanner | None | Literal["any"] = "any",
) -> ScoringWorld:
    """Load a cache file; CacheError (naming the file) when corrupt, of another version, or stale.

    ``scene_hash``: the sha256 of the scene file the caller is scoring; a cache built from a
    different file is stale. ``reference``: the progress reference the caller expects (None: the
    human log); a cache made by another reference or another version of it is rejected.
    ``"any"`` accepts whatever reference the cache carries.
    """
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no metric cache (build it with `alpasim-policy cache build`)")
    try:
        arrays, meta = unpack_archive(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CacheError(f"{path}: corrupt metric cache (unreadable archive: {e}); rebuild it") from e
    if meta is None:
        raise CacheError(f"{path}: corrupt metric cache: field 'meta.json' missing; rebuild it")
    version = meta.get("cache_version")
    if version not in SUPPORTED_CACHE_VERSIONS:
        raise CacheError(
            f"{path}: field 'cache_version': {version!r} is not one this build reads "
            f"{SUPPORTED_CACHE_VERSIONS}; rebuild it"
        )
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise CacheError(f"{path}: corrupt metric cache: field {missing[0]!r} missing; rebuild it")
    if scene_hash is not None and meta.get("scene_hash") != scene_hash:
        raise CacheError(
            f"{path}: stale metric cache: built for scene sha256 {str(meta.get('scene_hash'))[:12]}..., "
            f"the scene file is now {scene_hash[:12]}...; rebuild it (cache build, or rebuild=True)"
        )
    try:
        ego = meta["ego"]
        world = ScoringWorld(
            scene_id=str(meta["scene_id"]),
            content_hash=meta.get("scene_hash"),
            dt=float(meta["dt"]),
            t0_index=int(meta["t0_index"]),
            timestamps=arrays["timestamps"],
            ego_length=float(ego["length"]),
            ego_width=float(ego["width"]),
            rear_axle_to_center=float(ego["rear_axle_to_center"]),
            wheelbase=float(ego["wheelbase"]),
            human_state=arrays["human/state"],
            human_valid=arrays["human/valid"],
            agent_ids=[str(x) for x in meta["agent_ids"]],
            agent_types=arrays["agents/types"],
            agent_size=arrays["agents/size"].reshape(-1, 2),
            agent_state=arrays["agents/state"],
            agent_valid=arrays["agents/valid"],
            lane_ids=[str(x) for x in meta["lane_ids"]],
            lane_polygons=_unpack_geoms(arrays["lanes/wkb"], arrays["lanes/offsets"]),
            lane_is_intersection=arrays["lanes/intersection"].astype(bool),
            lane_on_route=arrays["lanes/on_route"].astype(bool),
            drivable=shapely.from_wkb(arrays["map/drivable_wkb"].tobytes()),
            route_polyline=arrays["route/polyline"],
            red_light_polygons=_unpack_geoms(arrays["lights/wkb"], arrays["lights/offsets"]),
            red_light_red=arrays["lights/red"].astype(bool),
            reference_state=arrays.get("reference/state"),
            reference_name=str(meta.get("reference", "human")),
        )
        if meta.get("reference_version") is not None:
            world.extra["reference_version"] = str(meta["reference_version"])
    except (KeyError, TypeError, ValueError, shapely.errors.GEOSException) as e:
        raise CacheError(f"{path}: corrupt metric cache ({type(e).__name__}: {e}); rebuild it") from e
    T = world.num_steps
    if world.human_state.shape != (T, 7) or world.agent_state.shape[1:] != (T, 5):
        raise CacheError(
            f"{path}: corrupt metric cache: field 'human/state' or 'agents/state' has the wrong shape"
        )
    if not isinstance(reference, str) and world_reference_id(world) != reference_id(reference):
        have, want = world_reference_id(world), reference_id(reference)
        raise CacheError(
            f"{path}: field 'reference': made by reference {have[0]!r} version {have[1]!r}, expected "
            f"{want[0]!r} version {want[1]!r}; rebuild it (cache build, or rebuild=True)"
        )
    return world.prepare()


def load_world(
    scene: str | Path | Scene,
    cache_dir: str | Path | None = None,
    *,
    rebuild: bool = False,
    reference: ReferencePlanner | None = None,
) -> ScoringWorld:
    """The scoring world of a scene: from ``cache_dir`` when a fresh cache is there.

    No ``cache_dir``: built in memory (nothing written). A missing cache is built with
    ``reference`` (None: the human log) and written. A stale or corrupt cache, or one made by
    another reference, raises :class:`CacheError` unless ``rebuild`` (then it is replaced).
    """
    if isinstance(scene, Scene):
        sc = scene
    else:
        from alpasim_policy.scenes.suite import find_scene

        sc = load_scene(find_scene(scene))
    if cache_dir is None:
        return build_world(sc, reference).prepare()
    path = cache_path(cache_dir, sc.scene_id)
    if path.is_file():
        try:
            return read_world(path, sc.content_hash, reference)
        except CacheError:
            if not rebuild:
                raise
    world = build_world(sc, reference)
    save_world(world, path)
    return world.prepare()
