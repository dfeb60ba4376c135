"""Ray backend for ``eval`` and ``cache build``: local Ray or an existing cluster, no shared disk.

``eval --backend ray`` (``--workers N``: a local Ray with N CPUs) or ``eval --ray-address
auto|HOST:PORT`` (join a running cluster; ``auto`` finds the one started on this machine with
``ray start``). What travels where:

* the driver reads each scene file once and puts its bytes in Ray's object store
  (``ray.put``); a task gets the bytes, not a path, and loads the scene from a file in its own
  temporary directory;
* a task drives one scene with one policy, or with all of them when the suite has at least 4
  scenes per CPU (the scene then loads once); it builds each policy from its name and options
  and returns each rollout as the bytes of its file (plus the node it ran on); tasks are
  submitted longest first, so the workers finish close together;
* only the driver writes the run folder: it writes each rollout file as it arrives, so an
  interrupted run resumes exactly like a serial one (finished files are skipped).

Every node needs alpasim-policy installed (same version; ``pip install -e .`` or the wheel) and
its dependencies; it needs neither the run folder nor the scene files. A ``module:Class``
policy must be importable on every node.

``cache build --ray-address ...`` fans out the same way: scene bytes in, cache bytes back, the
driver writes ``<out>/<scene_id>.npz``.

The env is deterministic, so Ray rollouts equal serial ones (only wall-time latencies differ).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def init_ray(address: str | None, workers: int) -> bool:
    """Join the cluster at ``address`` (``auto`` or ``HOST:PORT``) or start a local Ray with
    ``workers`` CPUs. Driver logs stay off the terminal (progress bars).

    Returns True when this call connected (the caller then shuts Ray down when done), False when
    this process was already connected (a caller above owns the connection: a benchmark, a
    notebook), which is then reused as it is.
    """
    import ray

    from alpasim_policy.errors import ConfigError

    if ray.is_initialized():
        return False

    kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "configure_logging": False}
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"--ray-address {address}: cannot join a Ray cluster there ({e}); start one with "
                "`ray start --head` (and `ray start --address HEAD:PORT` on the other machines)"
            ) from e
    else:
        ray.init(num_cpus=max(1, workers), include_dashboard=False, **kw)
    return True


def check_reachable(address: str) -> None:
    """Fail in seconds, with the address in the message, when HOST:PORT does not answer (Ray itself
    retries for minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    from alpasim_policy.errors import ConfigError

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5.0):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({e}); start the head with "
            "`ray start --head --port PORT` and pass HOST:PORT, or `auto` on the head machine"
        ) from e


def _scene_file(scene_bytes: bytes, name: str, tmp: str) -> Path:
    path = Path(tmp) / f"{name}.npz"
    path.write_bytes(scene_bytes)
    return path


def drive_scene(
    policies: list[str],
    scene_bytes: bytes,
    scene_name: str,
    seed: int,
    env_config: dict,
    options: dict[str, dict],
    deadline: dict | None,
) -> list[tuple[str, dict]]:
    """The rollouts of one scene, one per policy, from the scene file's bytes (a Ray task's body).

    Returns ``[(policy, result), ...]`` where ``result`` is ``{"archive": bytes, "summary":
    dict}`` (the file :meth:`~alpasim_policy.sim.rollout.Rollout.save` would write, packed here
    so the driver only writes bytes) or ``{"error": str}`` for a policy whose rollout raised
    (the others still run). The scene is loaded once for all the policies (its map index too).
    Writes nothing but a temporary copy of the scene.
    """
    from alpasim_policy.evaluate import _summary, run_rollout
    from alpasim_policy.scenes.format import load_scene

    out: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="alpasim-scene-") as tmp:
        scene = load_scene(_scene_file(scene_bytes, scene_name, tmp))
    for p in policies:
        try:
            ro = run_rollout(p, scene, seed=seed, env_config=env_config, policy_options=options[p],
                             deadline=deadline)  # fmt: skip
            out.append((p, {"archive": ro.to_bytes(), "summary": _summary(ro, None)}))
        except Exception as e:  # this policy's fault: report it, drive the others
            out.append((p, {"error": f"{type(e).__name__}: {e}"}))
    return out


def remote_rollouts(*args: Any) -> tuple[list[tuple[str, dict]], str]:
    """A Ray task: :func:`drive_scene` plus the id of the node it ran on."""
    import ray

    return drive_scene(*args), ray.get_runtime_context().get_node_id()


def plan_tasks(todo: list[tuple[str, str]], ticks: dict[str, int], cpus: int) -> list[tuple[list[str], str]]:
    """Group the (policy, scene path) pairs into Ray tasks, longest first.

    One task per scene (all its policies: the scene travels and loads once) when there are at
    least 4 scenes per CPU, enough to keep every CPU busy and the tail short; otherwise one task
    per rollout, so a few scenes with many policies still spread over the cluster. Tasks are
    ordered by their length in ticks, longest first (LPT): the last ones to start are short, so
    the workers finish close together.
    """
    by_scene: dict[str, list[str]] = {}
    for p, s in todo:
        by_scene.setdefault(s, []).append(p)
    if len(by_scene) >= 4 * max(1, cpus):
        tasks = [(ps, s) for s, ps in by_scene.items()]
    else:
        tasks = [([p], s) for p, s in todo]
    order = sorted(range(len(tasks)), key=lambda i: (-ticks.get(tasks[i][1], 1) * len(tasks[i][0]), i))
    return [tasks[i] for i in order]


def run_eval_tasks(
    todo: list[tuple[str, str]],
    *,
    out: Path,
    seed: int,
    env_config: dict,
    per_policy: dict[str, dict],
    deadline: dict | None,
    workers: int,
    address: str | None,
    on_done: Callable[[str, str, dict], None] | None = None,
    ticks: dict[str, int] | None = None,
) -> list[dict]:
    """Run the (policy, scene path) pairs on Ray; the driver writes every rollout into ``out``.

    Returns one summary per pair (as the serial backend does, plus ``node``); a rollout that
    failed, or a task that crashed, gives ``{"policy", "scene_id", "error"}``. ``on_done(policy,
    scene_path, result)`` is called as each finishes (progress; the result is the summary, its
    ``path`` the file just written). ``ticks`` (scene path -> ticks to drive)
    orders the tasks longest first (:func:`plan_tasks`).
    """
    import ray

    from alpasim_policy.evaluate import rollout_path
    from alpasim_policy.io import atomic_write_bytes

    owned = init_ray(address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", workers))
        task = ray.remote(num_cpus=1, max_retries=1)(remote_rollouts)
        pending = {}
        for ps, s in plan_tasks(todo, ticks or {}, cpus):
            # the scene's bytes go to the object store once (Ray puts large arguments there)
            ref = task.remote(ps, Path(s).read_bytes(), Path(s).stem, seed, env_config,
                              {p: per_policy[p] for p in ps}, deadline)  # fmt: skip
            pending[ref] = (ps, s)
        results: list[dict] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                ps, s = pending.pop(ref)
                try:
                    done, node = ray.get(ref)
                except Exception as e:  # a crashed task (worker died, ...): report its rollouts, go on
                    done, node = [(p, {"error": f"{type(e).__name__}: {e}"}) for p in ps], None
                for p, r in done:
                    if "error" in r:
                        results.append({"policy": p, "scene_id": Path(s).stem, "error": r["error"]})
                    else:
                        path = rollout_path(out, p, r["summary"]["scene_id"])
                        atomic_write_bytes(path, r["archive"])  # the driver alone writes the run folder
                        results.append({**r["summary"], "path": str(path), "node": node})
                    if on_done is not None:
                        on_done(p, s, results[-1])
        return results
    finally:
        if owned:  # a connection made here is closed here; a caller's stays open
            ray.shutdown()


def remote_cache(scene_bytes: bytes, scene_name: str, reference: str) -> tuple[str, bytes]:
    """A Ray task: the metric cache of one scene, as bytes (scene id, cache file bytes)."""
    from alpasim_policy.caching import REFERENCES
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scoring.cache import build_world, world_to_bytes

    with tempfile.TemporaryDirectory(prefix="alpasim-scene-") as tmp:
        scene = load_scene(_scene_file(scene_bytes, scene_name, tmp))
    return scene.scene_id, world_to_bytes(build_world(scene, REFERENCES[reference]))


def build_caches(
    scene_paths: list[Path],
    out: Path,
    *,
    reference: str = "idm",
    workers: int = 1,
    address: str | None = None,
) -> list[tuple[str, str, float]]:
    """Build metric caches on Ray; the driver writes ``out/<scene_id>.npz``. Returns (scene, path, s)."""
    import time

    import ray

    from alpasim_policy.io import atomic_write_bytes
    from alpasim_policy.scoring.cache import cache_path

    owned = init_ray(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(remote_cache)
        t0 = time.perf_counter()
        pending = {
            task.remote(ray.put(Path(p).read_bytes()), Path(p).stem, reference): p for p in scene_paths
        }
        done = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                p = pending.pop(ref)
                scene_id, data = ray.get(ref)
                path = cache_path(out, scene_id)
                atomic_write_bytes(path, data)
                done.append((str(p), str(path), time.perf_counter() - t0))
                print(f"{path}  <- {p}", file=sys.stderr)
        return done
    finally:
        if owned:  # a connection made here is closed here; a caller's stays open
            ray.shutdown()
