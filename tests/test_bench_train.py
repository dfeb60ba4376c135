"""``bench train``: both imitation step modes run on driven samples and the row names their ratio."""

from __future__ import annotations

import json

import pytest
import torch

from alpasim_policy.cli import build_parser
from alpasim_policy.errors import ConfigError


def test_bench_train_times_both_modes_and_writes_the_row(tmp_path, capsys):
    out = tmp_path / "rows.md"
    args = build_parser().parse_args(
        ["bench", "train", "--samples", "3", "--batch", "2", "--steps", "1", "--rounds", "1",
         "--threads", "1", "--out", str(out)]
    )  # fmt: skip
    n = torch.get_num_threads()
    try:
        assert args.func(args) == 0
    finally:
        torch.set_num_threads(n)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["per_sample_s"] > 0 and summary["batched_s"] > 0
    assert abs(summary["speedup"] - summary["per_sample_s"] / summary["batched_s"]) < 1e-9
    row = out.read_text().splitlines()[-1]
    assert "imitation step, tiny, batch 2" in row and f"{summary['speedup']:.2f}x faster batched" in row
    assert "3 samples of bundled (driven)" in row


def test_bench_train_names_a_bad_flag():
    args = build_parser().parse_args(["bench", "train", "--steps", "0", "--no-write"])
    with pytest.raises(ConfigError, match="--steps must be >= 1, got 0"):
        args.func(args)
