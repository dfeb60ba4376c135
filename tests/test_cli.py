"""The command line's shape: one cli/ layer with uniform bench flags, light registration, ``python -m``."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from alpasim_policy.cli import build_parser, main

HEAVY = ("torch", "ray", "grpc", "transformers", "matplotlib", "cv2", "pyarrow", "shapely")


def _bench_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bench = next(a for a in sub.choices["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    return dict(bench.choices)


def test_every_bench_takes_out_file_and_no_write():
    benches = _bench_parsers()
    assert set(benches) == {
        "scenes", "env", "policy", "model", "gpu", "coc", "train", "scorer", "serve", "report", "ray"
    }
    for name, p in benches.items():
        ns = p.parse_args([])
        assert ns.out == "BENCHMARKS.md" and ns.no_write is False, name
        ns = p.parse_args(["--out", "rows.md", "--no-write"])
        assert ns.out == "rows.md" and ns.no_write is True, name
        # the old spelling of two benchmarks still lands in --out
        assert p.parse_args(["--benchmarks", "old.md"]).out == "old.md", name
        # the handler is the body module's run, imported only when it runs
        assert ns.func.__qualname__ == "_body.<locals>.run", name


def test_bench_report_run_folder_is_run_dir_and_out_folder_is_refused(tmp_path, capsys):
    ns = _bench_parsers()["report"].parse_args(["--run-dir", str(tmp_path)])
    assert ns.run_dir == str(tmp_path) and ns.out == "BENCHMARKS.md"
    # --out used to be the run folder: a folder given there is a clear error, not a write into it
    assert main(["bench", "report", "--out", str(tmp_path), "--no-write"]) == 2
    assert "--run-dir" in capsys.readouterr().err


def test_cache_reference_choices_match_the_runner():
    from alpasim_policy.caching import REFERENCES
    from alpasim_policy.cli.cache import REFERENCE_NAMES

    assert set(REFERENCE_NAMES) == set(REFERENCES)


def test_registration_imports_nothing_heavy_and_python_m_works():
    code = (
        "import sys; from alpasim_policy.cli import build_parser; build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    r = subprocess.run([sys.executable, "-m", "alpasim_policy.cli", "bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "scorer" in r.stdout and "ray" in r.stdout


@pytest.mark.parametrize("part", ["scenes", "sim", "policies", "model", "scoring", "serve", "training", "report"])
def test_parts_hold_no_cli_module(part):
    import importlib.util

    assert importlib.util.find_spec(f"alpasim_policy.{part}.cli") is None
