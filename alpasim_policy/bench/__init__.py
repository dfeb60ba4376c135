"""The benchmarks' bodies (one module per benchmark) and their shared plumbing: machine description and BENCHMARKS.md rows.

Why one table: every stage has its benchmark (``alpasim_policy.bench.<name>.run``; the flags are
in :mod:`alpasim_policy.cli.bench`), but all rows land in one table with the same
columns (benchmark, command, machine, result, ratio, date) so numbers stay comparable.
Speed targets live only in benchmarks, never in timed unit tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

HEADER = "| date | benchmark | command | machine | result | ratio / target |\n|---|---|---|---|---|---|\n"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # torch missing or broken: the CPU line is still right
        pass
    return desc


def command_line() -> str:
    return "alpasim-policy " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_rows(rows: list[dict], args: Any) -> None:
    """Append ``rows`` to ``args.out`` unless ``--no-write``."""
    if not getattr(args, "no_write", False):
        append_rows(rows, args.out)


def append_rows(rows: list[dict], path: str | Path = "BENCHMARKS.md") -> None:
    """Append rows (dicts with benchmark, result, ratio and optional command/machine) to BENCHMARKS.md."""
    path = Path(path)
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nRows appended by `alpasim-policy bench ...`.\n\n"
    )
    if HEADER.splitlines()[0] not in text:
        text += "\n" + HEADER
    today = _dt.date.today().isoformat()
    for r in rows:
        cells = [
            today,
            r["benchmark"],
            f"`{r.get('command', command_line())}`",
            r.get("machine", machine_description()),
            str(r["result"]),
            str(r.get("ratio", "")),
        ]
        text += "| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n"
    from alpasim_policy.io import atomic_write_text

    atomic_write_text(path, text)


def print_summary(summary: dict) -> None:
    """The last line of every bench command: one JSON object."""
    print(json.dumps(summary, sort_keys=True, default=float))
