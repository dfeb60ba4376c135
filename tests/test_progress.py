"""eval's progress: per-policy rates give a stable total ETA; warnings print above the bars."""

from __future__ import annotations

import warnings

import pytest

from alpasim_policy import progress as prog


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_uses_each_policys_own_rate(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(prog.time, "perf_counter", clock)
    bar = prog.EvalProgress({"fast": 100, "slow": 10}, disable=True)
    bar.start("fast", "s1")
    for _ in range(50):  # 1 ms a tick
        clock.t += 0.001
        bar.update(1)
    left, unknown = bar.eta_s()
    assert left == pytest.approx(0.05) and unknown == 1  # the slow one has no rate yet: not guessed
    for _ in range(50):
        clock.t += 0.001
        bar.update(1)
    bar.start("slow", "s1")
    etas = []
    for _ in range(5):  # 2 s a tick, steady: the ETA falls by 2 s a tick and never swings
        clock.t += 2.0
        bar.update(1)
        etas.append(bar.eta_s()[0])
    assert etas == pytest.approx([18.0, 16.0, 14.0, 12.0, 10.0])
    assert "ETA 00:10" in bar.eta_text() and bar.n == 105
    bar.close()


def test_warnings_print_above_the_bars(capsys):
    before = warnings.showwarning
    bar = prog.EvalProgress({"p": 10}, disable=False)
    bar.start("p", "scene")
    bar.update(3)
    warnings.warn("a library complains", UserWarning, stacklevel=1)
    bar.update(3)
    bar.close()
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "a library complains" in ln)
    # the warning has a line of its own (tqdm.write clears the bars first), not glued to a bar
    assert "UserWarning" in line and "ticks" not in line
    assert warnings.showwarning is before  # the normal hook is back afterwards
