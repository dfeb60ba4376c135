"""Execute every notebook under ``notebooks/`` so the tutorials cannot rot.

Each notebook's code cells run in order in one fresh namespace, from a temporary working
directory (the notebooks must not depend on being started from the checkout) with matplotlib's
Agg backend (no display). Lines that are shell / IPython magics (``!pip ...``, ``%matplotlib``)
are skipped, so no Jupyter installation is needed: the ``.ipynb`` JSON is read with ``json``.

Notebooks are stored without outputs (small diffs, no stale results in the repository); that is
checked too. A few notebook-specific checks assert that the notebooks still show what their text
says (e.g. the slow policy really loses progress on the leaderboard).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def code_cells(path: Path) -> list[str]:
    """The code cells' sources, with shell (``!``) and magic (``%``) lines removed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else str(src)
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("!", "%"))]
        out.append("\n".join(lines) + "\n")
    return out


def _check_quickstart(ns: dict[str, Any]) -> None:
    board = ns["board"].by_policy()
    assert set(board) == {"log_replay", "idm", "constant_velocity", "slow_down"}
    assert all(row["scenes"] == 2 for row in board.values())
    # the text says capping the speed at 8 m/s on a ~27 m/s motorway costs progress
    assert board["slow_down"]["EP"] < board["idm"]["EP"]
    assert board["slow_down"]["progress_ratio"] < board["idm"]["progress_ratio"]
    assert (ns["run_dir"] / "leaderboard.md").is_file()


def _check_alpamayo(ns: dict[str, Any]) -> None:
    out = ns["out"]
    assert out.trajectories.shape == (ns["K"], 64, 3)
    assert isinstance(out.reasoning[0], str) and out.reasoning[0]
    for mode in ("single", "multi"):
        run = ns["runs"][mode]
        assert len(run["driven"]) == ns["TICKS"] + 1
        assert all(isinstance(t, str) for t in run["reasoning"])
    assert ns["reloaded_max_diff"] == 0.0


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "01_quickstart": _check_quickstart,
    "02_alpamayo_tiny": _check_alpamayo,
}


def test_code_cells_skip_magics(tmp_path: Path) -> None:
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": ["x = 1\n"]},
            {"cell_type": "code", "source": ["%matplotlib inline\n", "!pip install foo\n", "y = 2\n"]},
            {"cell_type": "code", "source": "  %time z = 3\nw = 4"},
        ]
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert code_cells(path) == ["y = 2\n", "w = 4\n"]


def test_notebooks_found() -> None:
    assert {p.stem for p in NOTEBOOKS} >= set(CHECKS), f"missing notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i}: outputs stored; clear them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution count stored"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the notebooks' scratch folders
    torch = None
    try:
        import torch  # noqa: F401 - only to restore its thread count if a notebook changes it

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    ns: dict[str, Any] = {"__name__": "__main__"}
    try:
        for i, src in enumerate(code_cells(path)):
            code = compile(src, f"{path.name}[cell {i}]", "exec")
            try:
                exec(code, ns)  # noqa: S102 - executing our own notebooks is the point
            except Exception as e:
                raise AssertionError(
                    f"{path.name}: code cell {i} failed: {type(e).__name__}: {e}\n{src}"
                ) from e
            plt.close("all")
    finally:
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
    check = CHECKS.get(path.stem)
    if check is not None:
        check(ns)
