"""The built wheel works on its own: installed into a fresh venv outside the repo, ``eval`` on a
bundled scene and the README's Python example run from another directory with the shipped data."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv outside the repo with only the wheel installed into it; the heavy dependencies
    (torch, ...) come from this test's own environment through a .pth line, so nothing is downloaded."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    # build from a copy of the sources (symlinks kept) so the checkout gets no build/ or egg-info folders
    src = root / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "runs", "raw", "*.egg-info", "__pycache__", ".*_cache"))  # fmt: skip
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(root / "dist")], cwd=root, env=env)  # fmt: skip
    wheel = next((root / "dist").glob("alpasim_policy-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).strip())
    # dependencies from this environment, after the venv's own site-packages (so the wheel wins)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_test_deps.pth").write_text("\n".join(deps) + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=root, env=env)
    return venv, env


def test_wheel_eval_and_readme_example_run_outside_the_repo(installed, tmp_path):
    venv, env = installed
    py = venv / "bin" / "python"
    where = _run([str(py), "-c", "import alpasim_policy, sys; print(alpasim_policy.__file__)"], tmp_path, env)
    assert Path(where.strip()).is_relative_to(venv), f"imported {where} instead of the installed wheel"
    # the shipped data is found inside the installed package, and the shipped metric cache is fresh
    check = (
        "from alpasim_policy.caching import IDM_REFERENCE\n"
        "from alpasim_policy.scenes.format import load_scene\n"
        "from alpasim_policy.scenes.suite import find_scene, load_suite\n"
        "from alpasim_policy.scoring.cache import read_world\n"
        "from alpasim_policy.scoring.report import DEFAULT_CACHE_DIR\n"
        "from alpasim_policy.sim.config import find_env_config\n"
        "sc = load_scene(find_scene('av2s-7fab2350-w00'))\n"
        "read_world(DEFAULT_CACHE_DIR / f'{sc.scene_id}.npz', sc.content_hash, IDM_REFERENCE)\n"
        "from alpasim_policy.policies.alpamayo import shipped_weights\n"
        "print(len(load_suite('bundled')), find_scene(sc.scene_id), DEFAULT_CACHE_DIR, find_env_config('reactive'),\n"
        "      shipped_weights('tiny') / 'model-00001-of-00001.safetensors')\n"
    )
    out = _run([str(py), "-c", check], tmp_path, env).split()
    from alpasim_policy.scenes.suite import load_suite

    assert out[0] == str(len(load_suite("bundled")))  # every bundled scene shipped
    assert all(Path(p).is_relative_to(venv) for p in out[1:]), out
    assert Path(out[-1]).is_file()  # the alpamayo policy's default (trained) weights are in the wheel
    # eval on one bundled scene, from a directory that has no scenarios/ or envs/
    (tmp_path / "one.yaml").write_text("name: one\nscenes: [av2s-7fab2350-w00]\n")
    _run([str(venv / "bin" / "alpasim-policy"), "eval", "--suite", "one.yaml", "--policy", "idm",
          "--out", "run", "--env-config", "envs/reactive.yaml"], tmp_path, env)  # fmt: skip
    board = (tmp_path / "run" / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("policy,scenes,NC") and board[1].startswith("idm,1,")
    # the README's Python example, verbatim
    readme = (REPO / "README.md").read_text()
    example = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "example.py").write_text(example + "print('steps', env.unwrapped._step)\n")
    assert "steps" in _run([str(py), "example.py"], tmp_path, env)
