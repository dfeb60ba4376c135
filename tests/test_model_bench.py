"""``alpasim-policy bench model`` on the tiny preset: rows in the given markdown file, JSON last line."""

from __future__ import annotations

import json

from alpasim_policy.cli import main


def test_bench_model_cli(tmp_path, capsys):
    out = tmp_path / "BENCH.md"
    rc = main(
        [
            "bench",
            "model",
            "--preset",
            "tiny",
            "--samples",
            "2",
            "--cot-tokens",
            "3",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["benchmark"] == "model" and summary["samples"] == 2
    for mode in ("single", "multi", "single_dynamic"):
        for stage in ("vision", "prefill", "decode", "diffusion", "total"):
            assert summary[f"{mode}_{stage}_ms"] > 0
    assert summary["ratio_single_vs_multi"] > 0
    # CPU: "graph" is the lean loop; "eager" the static-buffer loop it is compared with
    assert summary["ratio_graph_vs_eager_diffusion"] > 0
    for stage in ("vision", "prefill", "decode", "diffusion"):
        assert summary[f"{stage}_gflop"] > 0 and summary[f"{stage}_gflop_per_s"] > 0
    # the counted FLOPs of the diffusion loop are the analytic ones its bound is computed from
    assert abs(summary["diffusion_gflop"] / summary["diffusion_gflop_analytic"] - 1) < 0.01
    assert summary["diffusion_bound_ms"] > 0 and summary["diffusion_vs_bound"] > 0
    assert summary["single_total_p95_ms"] >= summary["single_total_ms"]
    text = out.read_text()
    assert text.count("model tiny K=2 CoC=3 cpu") == 5
    assert "arithmetic bound" in text
    assert "single reasoning" in text and "multi reasoning (NVlabs)" in text


def test_bench_model_against_a_baseline_tree(tmp_path, capsys):
    """``--baseline-src``: the same tick in another source tree (here this tree itself), side by side."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "BENCH.md"
    argv = ["bench", "model", "--preset", "tiny", "--samples", "2", "--cot-tokens", "3", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--rounds", "1", "--baseline-src", str(repo), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["benchmark"] == "model-baseline" and summary["ratio_min"] > 0
    text = out.read_text()
    assert "single-reasoning tick, baseline" in text and "single-reasoning tick, this tree" in text


def test_bench_gpu_script_runs_every_section_on_cpu(tmp_path, capsys):
    """The GPU script's code paths on a tiny config: every section runs, the JSON and rows are written."""
    out, js = tmp_path / "BENCH.md", tmp_path / "gpu.json"
    argv = ["bench", "gpu", "--device", "cpu", "--preset", "tiny", "--dtype", "fp32", "--quick", "--samples", "2",
            "--cot-tokens", "3", "--gammas", "2", "--json", str(js), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(js.read_text())
    for name in ("tick", "diffusion", "decode_graph", "speculative", "closed_loop", "flops"):
        sec = res["sections"][name]
        assert "error" not in sec and "skipped" not in sec, (name, sec)
    tick = res["sections"]["tick"]
    assert tick["total_p95_ms"] >= tick["total_p50_ms"] > 0 and tick["decode_steps"] == 3
    assert res["sections"]["diffusion"]["graph_vs_eager"] > 0
    assert res["sections"]["flops"]["diffusion_gflop"] > 0
    text = out.read_text()
    assert "gpu tick tiny" in text and "graph vs eager" in text
    # a spent time budget skips sections but still leaves the file
    assert main(argv[:-4] + ["--budget-s", "0", "--json", str(js), "--no-write"]) == 0
    res = json.loads(js.read_text())
    assert all("skipped" in s for s in res["sections"].values())
    capsys.readouterr()


def test_bench_model_side_by_side_with_an_external_command(tmp_path, capsys):
    """The --nvlabs-cmd plumbing: the command gets the checkpoint, the inputs and K, its JSON is read,
    ratios are NVlabs' ticks over ours. (The real NVlabs run needs its scratch env; a stand-in here
    checks it received the same images the model ticked on.)"""
    import sys
    from pathlib import Path

    import numpy as np

    ckpt = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"
    fake = tmp_path / "fake_nvlabs.py"
    fake.write_text(
        "import argparse, json, numpy as np\n"
        "ap = argparse.ArgumentParser()\n"
        "for a in ('--weights', '--inputs', '--samples', '--cot-tokens', '--repeats', '--warmup', '--threads'):\n"
        "    ap.add_argument(a)\n"
        "a = ap.parse_args()\n"
        "z = np.load(a.inputs)\n"
        "assert z['images'].ndim == 4 and z['history'].shape == (16, 3)\n"
        "print(json.dumps({'total': [10.0] * int(a.repeats), 'k': int(a.samples), 'n_images': len(z['images'])}))\n"
    )
    out = tmp_path / "BENCH.md"
    argv = ["bench", "model", "--weights", str(ckpt), "--nvlabs-cmd", f"{sys.executable} {fake}",
            "--nvlabs-samples", "2,1", "--cot-tokens", "3", "--repeats", "1", "--warmup", "0", "--rounds", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["benchmark"] == "model-nvlabs" and summary["nvlabs"]["n_images"] == 16
    for k in (2, 1):
        assert summary[f"k{k}_nvlabs_ms"] == 10_000.0
        assert np.isclose(summary[f"k{k}_ratio_median"], 10_000.0 / summary[f"k{k}_ours_ms"])
    assert out.read_text().count("whole tick vs NVlabs' own code") == 2


def test_bench_model_side_by_side_closed_loop_and_speculative(tmp_path, capsys):
    """--closed-loop: this side ticks on shifting frames with the vision cache (12 of 16 frames reused
    per tick), NVlabs' command still gets (C*F, 3, H, W) images; --speculative G decodes this side's
    CoC speculatively; the rows say both."""
    import sys
    from pathlib import Path

    ckpt = Path(__file__).resolve().parent / "fixtures" / "nvlabs_parity" / "checkpoint"
    fake = tmp_path / "fake_nvlabs.py"
    fake.write_text(
        "import argparse, json, numpy as np\n"
        "ap = argparse.ArgumentParser()\n"
        "for a in ('--weights', '--inputs', '--samples', '--cot-tokens', '--repeats', '--warmup', '--threads'):\n"
        "    ap.add_argument(a)\n"
        "a = ap.parse_args()\n"
        "z = np.load(a.inputs)\n"
        "assert z['images'].shape[:2] == (16, 3), z['images'].shape\n"
        "print(json.dumps({'total': [10.0] * int(a.repeats)}))\n"
    )
    out = tmp_path / "BENCH.md"
    argv = ["bench", "model", "--weights", str(ckpt), "--nvlabs-cmd", f"{sys.executable} {fake}",
            "--nvlabs-samples", "2", "--cot-tokens", "3", "--repeats", "2", "--warmup", "1", "--rounds", "2",
            "--closed-loop", "--speculative", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["closed_loop"] and summary["speculative"] == 2
    assert summary["k2_frames_cached"] == 12
    text = out.read_text()
    assert "per-frame vision cache" in text and "speculative CoC decode gamma=2 (recall of the last 4" in text


def test_flop_counter_counts_grouped_query_attention_in_full():
    """Qwen3-VL's attention has fewer K/V heads than query heads; torch's counter rejects those
    shapes before torch 2.13 (seen with torch 2.11 on an H100). Counted here as every query head over its shared
    keys, on the CPU path and on each CUDA kernel's registry entry (called with meta tensors)."""
    import torch
    import torch.nn.functional as F

    from alpasim_policy.bench.flops import _flop_counter, count_flops

    q, k, v = torch.randn(1, 4, 10, 32), torch.randn(1, 2, 12, 32), torch.randn(1, 2, 12, 32)
    expected = 2 * 2 * 4 * 10 * 12 * 32
    flops, _ = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert flops == expected
    registry = _flop_counter().flop_registry
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"):
        count = registry[getattr(torch.ops.aten, name).default._overloadpacket]
        meta = [t.to("meta") for t in (q, k, v)]
        assert count(*meta, out_val=(meta[0],)) == expected, name
