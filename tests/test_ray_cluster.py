"""``eval --ray-address`` on a real two-node Ray cluster started here on loopback.

Two ``ray start`` nodes (head + one joined with ``--address``), each with its own temp dir and
working directory and 1 CPU, so the four rollouts must spread over both. The driver (this
process) joins with ``ray_address``; results must equal the serial run exactly. The nodes run in
their own sessions and are stopped by killing exactly those process groups (never ``ray stop``,
which would stop every Ray on the machine). The cluster uses its own random auth token (Ray's
token authentication), passed in the environment, so it touches no shared Ray state.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from alpasim_policy.evaluate import evaluate, rollout_path
from alpasim_policy.sim.rollout import Rollout

SCENES = ["av2s-7fab2350-w01", "cr-USA_US101-4_1_T-1-ego427"]
POLICIES = ["idm", "constant_velocity"]
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_exe() -> str | None:
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.is_file() else shutil.which("ray")


def _stop(proc: subprocess.Popen | None) -> None:
    """Stop one `ray start --block` node: its whole process group, TERM then KILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        t = time.monotonic()
        while time.monotonic() - t < wait:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(timeout=5)
                return
            time.sleep(0.2)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"


def test_eval_on_a_two_node_cluster_equals_serial(tmp_path):
    pytest.importorskip("ray")
    exe = _ray_exe()
    if exe is None:
        pytest.skip("the `ray` command is not installed (pip install 'alpasim-policy[ray]')")
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own secret
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    suite = tmp_path / "two.yaml"
    suite.write_text("name: two\nscenes: [" + ", ".join(SCENES) + "]\n")
    one = tmp_path / "one.yaml"
    one.write_text(f"name: one\nscenes: [{SCENES[0]}]\n")
    gcs = _free_port()
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    head = node = None
    logs = {n: tmp_path / f"{n}.log" for n in ("head", "node")}
    # Ray's unix sockets live under --temp-dir and must fit 107 bytes: short dirs, not pytest's
    short = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        (tmp_path / "head_wd").mkdir()
        head = subprocess.Popen(
            [exe, "start", "--head", f"--port={gcs}", f"--temp-dir={short / 'h'}",
             "--include-dashboard=false", f"--dashboard-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}", *common],
            cwd=tmp_path / "head_wd", env=env, start_new_session=True,
            stdout=open(logs["head"], "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in _tail(logs["head"]):
            assert head.poll() is None, f"ray head exited:\n{_tail(logs['head'])}"
            assert time.monotonic() < deadline, f"ray head did not start:\n{_tail(logs['head'])}"
            time.sleep(0.5)
        (tmp_path / "node_wd").mkdir()
        node = subprocess.Popen(
            [exe, "start", f"--address=127.0.0.1:{gcs}", f"--temp-dir={short / 'n'}",
             f"--dashboard-agent-listen-port={_free_port()}", *common],
            cwd=tmp_path / "node_wd", env=env, start_new_session=True,
            stdout=open(logs["node"], "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        # the driver is a separate process with the cluster's token in its environment (Ray caches
        # the auth settings per process): first wait for both nodes, then the eval command itself
        wait = (
            "import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "t = time.monotonic()\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() - t < float(sys.argv[2]):\n"
            "    time.sleep(0.5)\n"
            "print('nodes', sum(n['Alive'] for n in ray.nodes()))\n"
        )
        left = max(5.0, deadline - time.monotonic())
        out = subprocess.run([sys.executable, "-c", wait, f"127.0.0.1:{gcs}", str(left)], env=env,
                             capture_output=True, text=True, timeout=left + 60)  # fmt: skip
        assert "nodes 2" in out.stdout, f"{out.stdout}\n{out.stderr[-2000:]}\n{_tail(logs['node'])}"
        cmd = [sys.executable, "-m", "alpasim_policy.cli", "eval", "--suite", str(suite), "--policy",
               ",".join(POLICIES), "--out", str(tmp_path / "ray"), "--ray-address", f"127.0.0.1:{gcs}", "--no-score"]  # fmt: skip
        for attempt in ("run", "resume"):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            rollouts = json.loads((tmp_path / "ray" / "run.json").read_text())["rollouts"]
            if attempt == "run":
                assert not any("error" in x for x in rollouts), rollouts
                assert len({x["node"] for x in rollouts}) == 2  # the rollouts ran on both nodes
            else:  # resumable: the second call finds every rollout on disk and runs nothing
                assert all(x.get("skipped") for x in rollouts) and "resuming" in r.stderr
        # metric caches fan out the same way: one scene's cache built on the cluster, written here
        r = subprocess.run([sys.executable, "-m", "alpasim_policy.cli", "cache", "build", "--suite", str(one),
                            "--out", str(tmp_path / "cache"), "--ray-address", f"127.0.0.1:{gcs}"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        _stop(node)
        _stop(head)
        shutil.rmtree(short, ignore_errors=True)
    evaluate(str(suite), POLICIES, tmp_path / "serial", show_progress=False)
    for p in POLICIES:
        for sid in SCENES:
            a = Rollout.load(rollout_path(tmp_path / "serial", p, sid))
            b = Rollout.load(rollout_path(tmp_path / "ray", p, sid))
            for field in ("steps", "ego_state", "plans", "agent_state", "agent_valid", "controlled"):
                np.testing.assert_array_equal(
                    getattr(a, field), getattr(b, field), err_msg=f"{p} {sid} {field}"
                )
            assert a.reasoning == b.reasoning and a.extra["collisions"] == b.extra["collisions"]
    # the run folder was written by the driver only: the nodes' working directories stay empty
    assert not any((tmp_path / "node_wd").iterdir()) and not any((tmp_path / "head_wd").iterdir())
    from alpasim_policy.caching import build_cache
    from alpasim_policy.scenes.suite import find_scene

    serial_cache = build_cache(find_scene(SCENES[0]), tmp_path / "cache_serial")
    assert (tmp_path / "cache" / serial_cache.name).read_bytes() == serial_cache.read_bytes()


def test_unreachable_ray_address_is_a_clear_error(tmp_path, capsys):
    from alpasim_policy.cli import main as cli_main

    suite = tmp_path / "one.yaml"
    suite.write_text(f"name: one\nscenes: [{SCENES[0]}]\n")
    addr = f"127.0.0.1:{_free_port()}"  # nothing listens there
    t = time.monotonic()
    rc = cli_main(
        [
            "eval",
            "--suite",
            str(suite),
            "--policy",
            "idm",
            "--out",
            str(tmp_path / "r"),
            "--ray-address",
            addr,
        ]
    )
    assert rc == 2 and time.monotonic() - t < 30
    assert f"--ray-address {addr}: nothing answers there" in capsys.readouterr().err
    assert not (tmp_path / "r" / "rollouts").exists()
