"""Terminal progress for ``eval``: one bar per policy and a total line with a stable ETA.

Why per policy: policies differ in speed by orders of magnitude (a rule baseline ~1 ms a tick, a
VLA model ~1 s), so one bar over everything extrapolates the rate of whichever policy runs now and
its ETA swings from seconds to hours. Here each policy's rate is its own ticks done / its own
time running (no exponential smoothing), and the total ETA sums, per policy, remaining ticks /
that policy's rate. A policy that has not started yet has no rate; the total line then says how
many policies are still unmeasured instead of guessing.

Library warnings (``warnings.warn``) and ``logging`` records raised while the bars are on screen
go through ``tqdm.write`` (:func:`bar_safe_output`), so they print above the bars instead of
breaking them.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator


def _fmt_s(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class EvalProgress:
    """Progress of an eval run in ticks, per policy.

    ``start(policy, scene)`` says which rollout the following ``update`` calls belong to;
    ``update(n)`` adds ticks to that policy. ``n`` is the total ticks done (all policies).
    """

    def __init__(self, ticks_per_policy: dict[str, int], *, disable: bool = False):
        from tqdm import tqdm

        self.disable = disable or not any(ticks_per_policy.values())
        self.totals = {p: int(t) for p, t in ticks_per_policy.items() if t}
        self.done = dict.fromkeys(self.totals, 0)
        self.busy_s = dict.fromkeys(self.totals, 0.0)  # time each policy has been running
        self._since: float | None = None
        self.current: str | None = None
        width = max((len(p) for p in self.totals), default=4)
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ticks [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        self.bars = {}
        for i, (p, t) in enumerate(self.totals.items()):
            self.bars[p] = tqdm(total=t, desc=p.ljust(width)[:40], unit="tick", position=i + 1, smoothing=0.0,
                                bar_format=fmt, disable=self.disable, leave=True)  # fmt: skip
        self.total_bar = tqdm(
            total=sum(self.totals.values()),
            desc="all".ljust(width)[:40],
            unit="tick",
            position=0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ticks [{elapsed}{postfix}]",
            disable=self.disable,
        )
        self._started: set[str] = set()
        # warnings / log records print above the bars until close()
        self._quiet = bar_safe_output() if not self.disable else contextlib.nullcontext()
        self._quiet.__enter__()

    @property
    def n(self) -> int:
        return sum(self.done.values())

    def _account(self) -> None:
        now = time.perf_counter()
        if self.current is not None and self._since is not None:
            self.busy_s[self.current] += now - self._since
        self._since = now

    def start(self, policy: str, scene: str = "") -> None:
        """The ticks that follow belong to ``policy`` (on ``scene``)."""
        self._account()
        self.current = policy
        bar = self.bars.get(policy)
        if bar is not None:
            if policy not in self._started:
                self._started.add(policy)
                bar.reset(total=self.totals[policy])  # its clock starts now, not when eval started
                bar.update(self.done[policy])
            bar.set_postfix_str(scene, refresh=False)

    def update(self, n: int = 1) -> None:
        if self.current is None or self.current not in self.done or n <= 0:
            return
        self._account()
        self.done[self.current] += n
        self.bars[self.current].update(n)
        self.total_bar.update(n)
        self.total_bar.set_postfix_str(self.eta_text(), refresh=False)

    def eta_s(self) -> tuple[float, int]:
        """(seconds left for the policies with a measured rate, number of policies not measured yet)."""
        left, unknown = 0.0, 0
        for p, total in self.totals.items():
            rem = total - self.done[p]
            if rem <= 0:
                continue
            if self.done[p] > 0 and self.busy_s[p] > 0:
                left += rem * self.busy_s[p] / self.done[p]
            else:
                unknown += 1
        return left, unknown

    def eta_text(self) -> str:
        left, unknown = self.eta_s()
        text = f"ETA {_fmt_s(left)}"
        if unknown:
            text += f" + {unknown} polic{'y' if unknown == 1 else 'ies'} not timed yet"
        return text

    def set_postfix_str(self, s: str) -> None:  # the single-bar interface eval used before
        if self.current in self.bars:
            self.bars[self.current].set_postfix_str(s)

    def close(self) -> None:
        self._account()
        for b in self.bars.values():
            b.close()
        self.total_bar.close()
        self._quiet.__exit__(None, None, None)


@contextlib.contextmanager
def bar_safe_output() -> Iterator[None]:
    """Route ``warnings`` and ``logging`` output through ``tqdm.write`` while bars are shown."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        tqdm.write(
            warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=sys.stderr
        )

    warnings.showwarning = show
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        warnings.showwarning = old
