"""``RUN/report.html``: one static page that explains a run without the docs.

Opens from disk (no server, no JavaScript, no network): the run-wide plots are PNGs embedded as data
URIs, each scene's speed profile is inline SVG, and videos (``RUN/videos/<policy>/<scene>.mp4``,
when ``eval --videos`` made them) are linked by relative path. Sections:

* the leaderboard ranked by the main score (:func:`alpasim_policy.scoring.columns.main_score`)
  with a legend for every column and the scoring profile named;
* failures and deadline misses per policy (whatever failure / miss columns the run has, plus the
  rollouts that errored in ``run.json``);
* plots: sub-metric bars per policy, a latency histogram and a latency timeline;
* one row per scene (main score of every policy, events) with its speed profile against the log
  and the videos.

Columns are read defensively: the CSVs are parsed by header name, a missing column is shown as
blank and an unknown one gets a generic legend entry, so scorer versions that add or drop
columns still produce a report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alpasim_policy.errors import AlpasimError
from alpasim_policy.io import atomic_write_text
from alpasim_policy.report.video import video_path
from alpasim_policy.scoring import columns as C

SUBMETRICS = ("NC", "DAC", "DDC", "TLC", "EP", "TTC", "C", "HC", "LK", "EC", "PDMS", "EPDMS")
_PROFILE_KEYS = ("profile", "scoring_profile")
# a scene's multiplier below 1 is an event worth naming in the scene table
_SCENE_EVENTS = (("NC", "collision (NC)"), ("DAC", "off-road (DAC)"), ("DDC", "wrong-way driving (DDC)"),
                 ("TLC", "red light (TLC)"))  # fmt: skip


@dataclass
class RunData:
    """Everything the report shows, read from one run folder."""

    run_dir: Path
    board: list[dict]  # leaderboard rows, values parsed (floats where numeric)
    board_columns: list[str]
    scenes: list[dict]  # scenes.csv rows
    run: dict
    rollouts: dict[tuple[str, str], Any] = field(default_factory=dict)  # (policy, scene) -> Rollout
    profile: str = ""


def _parse(v: str) -> Any:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        rows = [{k: _parse(v) for k, v in row.items()} for row in r]
        return list(r.fieldnames or []), rows


def _profile(run: dict, board: list[dict], run_dir: Path) -> str:
    """The scoring profile the numbers were made with, from wherever this run states it."""
    for r in board:
        for k in _PROFILE_KEYS:
            if r.get(k):
                return str(r[k])
    for src in (run, run.get("args") or {}, run.get("scoring") or {}):
        for k in _PROFILE_KEYS:
            if isinstance(src, dict) and src.get(k):
                return str(src[k])
    md = run_dir / "leaderboard.md"
    if md.is_file():
        for line in md.read_text().splitlines():
            low = line.lower()
            if "profile" in low and not line.lstrip().startswith("|"):
                text = (
                    line.split(":", 1)[1] if ":" in line and low.index("profile") < low.index(":") else line
                )
                return text.replace("**", "").replace("`", "").strip("#_ .").strip()
    return "default (the project's NAVSIM-style closed-loop scorer, alpasim_policy/scoring/README.md)"


def load_run(run_dir: str | Path, *, load_rollouts: bool = True) -> RunData:
    """Read a scored run folder; the leaderboard must exist (``eval`` or ``score`` writes it)."""
    run_dir = Path(run_dir)
    cols, board = _read_csv(run_dir / "leaderboard.csv")
    if not board:
        raise AlpasimError(
            f"{run_dir / 'leaderboard.csv'}: missing or empty; score the run first (alpasim-policy score {run_dir})"
        )
    _, scenes = _read_csv(run_dir / "scenes.csv")
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    data = RunData(run_dir=run_dir, board=board, board_columns=cols, scenes=scenes, run=run)
    data.profile = _profile(run, board, run_dir)
    if load_rollouts:
        from alpasim_policy.sim.rollout import Rollout

        for f in sorted((run_dir / "rollouts").glob("*/*.npz")):
            try:
                ro = Rollout.load(f)
            except AlpasimError as e:
                print(f"note: report: {e}", file=sys.stderr)
                continue
            data.rollouts[(ro.policy, ro.scene_id)] = ro
    return data


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # no bbox_inches="tight": it draws twice
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _colors(policies: list[str]) -> dict[str, str]:
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    return {p: cycle[i % len(cycle)] for i, p in enumerate(policies)}


def plot_metrics(board: list[dict], colors: dict[str, str]) -> str | None:
    """Grouped bars: each sub-metric and score, one bar per policy."""
    import matplotlib.pyplot as plt

    metrics = [m for m in SUBMETRICS if any(isinstance(r.get(m), float | int) for r in board)]
    if not metrics:
        return None
    fig, ax = plt.subplots(figsize=(10, 2.8), layout="constrained")
    w = 0.8 / max(len(board), 1)
    x = np.arange(len(metrics))
    for i, r in enumerate(board):
        vals = [float(r[m]) if isinstance(r.get(m), float | int) else np.nan for m in metrics]
        ax.bar(x + (i - (len(board) - 1) / 2) * w, vals, w, label=str(r["policy"]), color=colors[r["policy"]])
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over scenes")
    ax.legend(
        fontsize=8, ncol=min(len(board), 6), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False
    )
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_latency(data: RunData, policies: list[str], colors: dict[str, str]) -> str | None:
    """Histogram of policy-call latency (log scale) and the latency of every tick in run order."""
    import matplotlib.pyplot as plt

    lat: dict[str, np.ndarray] = {}
    for p in policies:
        parts = []
        for (pol, _), ro in sorted(data.rollouts.items()):
            if pol == p and ro.latency_s is not None:
                v = np.asarray(ro.latency_s, float)[np.asarray(ro.controlled, bool)]
                parts.append(v)
        v = np.concatenate(parts) if parts else np.zeros(0)
        lat[p] = v * 1e3
    if not any(np.isfinite(v).any() for v in lat.values()):
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 2.6), layout="constrained")
    allv = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in lat.values()])
    bins = np.logspace(np.log10(max(allv.min(), 1e-3)), np.log10(allv.max() * 1.01), 40) if len(allv) else 20
    for p, v in lat.items():
        ok = v[np.isfinite(v) & (v > 0)]
        if len(ok):
            a.hist(ok, bins=bins, histtype="step", lw=1.5, label=p, color=colors[p])
            b.plot(np.arange(len(v)), v, lw=0.7, color=colors[p], label=p)
    a.set_xscale("log")
    a.set_xlabel("policy call latency (ms)")
    a.set_ylabel("ticks")
    a.legend(fontsize=8)
    b.set_yscale("log")
    b.set_xlabel("tick (all scenes, in run order)")
    b.set_ylabel("latency (ms)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _png(fig)


def _speed(ego_state: np.ndarray) -> np.ndarray:
    return np.hypot(ego_state[:, 3], ego_state[:, 4])


def _nice_ticks(hi: float, n: int = 5) -> np.ndarray:
    """0 and multiples of 1, 2 or 5 x 10^k up to ``hi``, about ``n`` of them (axis ticks)."""
    hi = max(float(hi), 1e-6)
    raw = hi / n
    mag = 10.0 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    return np.arange(0.0, hi + 1e-9, step)


#: Speed-profile chart geometry (SVG user units = CSS pixels): size and plot-area margins (the
#: legend sits in the right margin, off the lines).
SPEED_SVG = {"width": 640, "height": 200, "left": 42, "right": 124, "top": 8, "bottom": 34}


def speed_series(scene_id: str, data: RunData, policies: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, time s from the first record, speed m/s) of the log and of every policy's rollout."""
    series = []
    try:
        from alpasim_policy.scenes.format import load_scene
        from alpasim_policy.scenes.suite import find_scene

        sc = load_scene(find_scene(scene_id))
        series.append(("log", np.asarray(sc.timestamps - sc.timestamps[0], float), _speed(sc.ego.state)))
    except AlpasimError:
        pass  # a scene that is not on this machine: policies only
    for p in policies:
        ro = data.rollouts.get((p, scene_id))
        if ro is not None:
            t = np.asarray(ro.times, float)
            series.append((p, t - t[0], _speed(np.asarray(ro.ego_state, float))))
    return series


def plot_speed(scene_id: str, data: RunData, policies: list[str], colors: dict[str, str]) -> str | None:
    """Speed of every policy's ego over time against the logged human (dashed), as inline SVG.

    Why SVG and not matplotlib: a run has one such chart per scene, and a matplotlib figure costs
    about 0.1-0.3 s to lay out and rasterise; 29 of them were two thirds of the report's time. A
    line chart is a few ``<polyline>``s, drawn by the browser, crisp at any zoom.
    """
    series = [x for x in speed_series(scene_id, data, policies) if len(x[1])]
    if not any(lbl != "log" for lbl, _, _ in series):
        return None
    g = SPEED_SVG
    x0, x1 = g["left"], g["width"] - g["right"]
    y0, y1 = g["height"] - g["bottom"], g["top"]  # y0: speed 0 (bottom), y1: the top
    t_max = max(float(np.nanmax(t)) for _, t, _ in series) or 1.0
    v_hi = max(float(np.nanmax(v)) if np.isfinite(v).any() else 0.0 for _, _, v in series)
    vt, tt = _nice_ticks(max(v_hi * 1.05, 1.0)), _nice_ticks(t_max)
    v_top = max(vt[-1], v_hi * 1.05)

    def px(t: np.ndarray, v: np.ndarray) -> str:
        xs = x0 + (x1 - x0) * t / t_max
        ys = y0 + (y1 - y0) * v / v_top
        ok = np.isfinite(xs) & np.isfinite(ys)
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs[ok], ys[ok], strict=True))

    label = f"speed profile {scene_id}"
    out = [f"<svg class='speed' role='img' aria-label='{_e(label)}' width='{g['width']}' height='{g['height']}' "
           f"viewBox='0 0 {g['width']} {g['height']}' font-size='10' font-family='sans-serif'>"
           f"<title>{_e(label)} (m/s against s; log dashed)</title>"]  # fmt: skip
    for v in vt:  # horizontal grid + speed labels
        y = y0 + (y1 - y0) * v / v_top
        out.append(f"<line x1='{x0}' x2='{x1}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                   f"<text x='{x0 - 4}' y='{y + 3:.1f}' text-anchor='end'>{v:g}</text>")  # fmt: skip
    for t in tt:  # vertical grid + time labels
        x = x0 + (x1 - x0) * t / t_max
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y0}' y2='{y1}' stroke='#eee'/>"
                   f"<text x='{x:.1f}' y='{y0 + 12}' text-anchor='middle'>{t:g}</text>")  # fmt: skip
    out.append(f"<rect x='{x0}' y='{y1}' width='{x1 - x0}' height='{y0 - y1}' fill='none' stroke='#888'/>")
    out.append(f"<text x='{(x0 + x1) / 2:.0f}' y='{g['height'] - 4}' text-anchor='middle'>time (s)</text>"
               f"<text transform='translate(11 {(y0 + y1) / 2:.0f}) rotate(-90)' text-anchor='middle'>"
               "speed (m/s)</text>")  # fmt: skip
    for k, (lbl, t, v) in enumerate(series):
        color = "#000" if lbl == "log" else colors.get(lbl, "#555")
        dash = " stroke-dasharray='5 3'" if lbl == "log" else ""
        out.append(f"<polyline class='series' data-label='{_e(lbl)}' fill='none' stroke='{color}' "
                   f"stroke-width='1.4'{dash} points='{px(t, v)}'/>")  # fmt: skip
        ly = y1 + 10 + 13 * k  # legend, right of the plot area
        out.append(f"<line x1='{x1 + 6}' x2='{x1 + 24}' y1='{ly - 3}' y2='{ly - 3}' stroke='{color}' "
                   f"stroke-width='1.4'{dash}/><text x='{x1 + 28}' y='{ly}'>{_e(lbl)}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:1.5em;color:#222;max-width:1300px}
h1{margin-bottom:0.1em} .sub{color:#555;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#f0f0f0}
td.name,th.name{text-align:left} th.main,td.main{background:#fff5d6;font-weight:bold}
.bad{background:#fde0e0} .good{background:#e3f6e3}
dl.legend{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:12px}
dl.legend dt{font-weight:bold} dl.legend dd{margin:0}
img{max-width:100%} details{margin:0.3em 0} summary{cursor:pointer}
.scroll{overflow-x:auto} .videos{display:flex;flex-wrap:wrap;gap:8px} .videos figure{margin:0}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _cell(col: str, v: Any, main: str | None) -> str:
    cls = []
    if col == main:
        cls.append("main")
    if col in ("policy", "scene_id"):
        cls.append("name")
    f = v if isinstance(v, float | int) and not isinstance(v, bool) else None
    if f is not None and col in ("NC", "DAC", "DDC", "TLC") and f < 1:
        cls.append("bad")
    if f is not None and col.endswith("_rate") and f > 0:
        cls.append("bad")
    text = C.fmt(col, float(v)) if isinstance(v, int | float) and not isinstance(v, bool) and col not in (
        "scenes", "ticks", "policy_failures", "collisions_at_fault_count", "windows") else C.fmt(col, v)  # fmt: skip
    return f'<td class="{" ".join(cls)}">{_e(text)}</td>'


def _leaderboard_html(data: RunData, main: str | None) -> str:
    cols = data.board_columns
    rows = C.sort_rows(data.board, main)
    head = "".join(
        f'<th class="{"main" if c == main else ("name" if c == "policy" else "")}" title="{_e(C.describe(c))}">{_e(c)}</th>'
        for c in cols
    )
    body = "".join("<tr>" + "".join(_cell(c, r.get(c), main) for c in cols) + "</tr>" for r in rows)
    legend = "".join(f"<dt>{_e(c)}</dt><dd>{_e(C.describe(c))}</dd>" for c in cols)
    return (
        f'<div class="scroll"><table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        f"<p>Ranked by <b>{_e(main)}</b> (higher is better). Scores are the equal-weight mean over scenes; "
        f"latencies pool every controlled tick.</p>"
        f'<details open><summary>Legend: every column</summary><dl class="legend" id="legend">{legend}</dl></details>'
    )


def _failures_html(data: RunData, policies: list[str]) -> str:
    """Failure and deadline-miss rates per policy, from whatever columns this run has."""
    extra = [c for c in data.board_columns if any(k in c for k in ("fail", "miss", "deadline", "error"))]
    errored: dict[str, list[str]] = {}
    for r in data.run.get("rollouts", []) or []:
        if isinstance(r, dict) and r.get("error"):
            errored.setdefault(str(r.get("policy")), []).append(f"{r.get('scene_id')}: {r['error']}")
    by = {r["policy"]: r for r in data.board}
    head = (
        "<th class='name'>policy</th>"
        + "".join(f"<th title='{_e(C.describe(c))}'>{_e(c)}</th>" for c in extra)
        + "<th title='rollouts that crashed outside the policy (env / scene fault)'>errored rollouts</th>"
    )
    rows = []
    for p in policies:
        r = by.get(p, {})
        rows.append(
            f"<tr><td class='name'>{_e(p)}</td>"
            + "".join(_cell(c, r.get(c), None) for c in extra)
            + f"<td class='{'bad' if errored.get(p) else ''}'>{len(errored.get(p, []))}</td></tr>"
        )
    msgs = []
    for (p, s), ro in sorted(data.rollouts.items()):
        for m in (ro.failure_messages or [])[:3]:
            msgs.append(f"<li>{_e(p)} on {_e(s)}: {_e(m)}</li>")
    for p, errs in errored.items():
        msgs += [f"<li>{_e(p)} errored: {_e(m)}</li>" for m in errs]
    more = f"<details><summary>{len(msgs)} messages</summary><ul>{''.join(msgs[:200])}</ul></details>" if msgs else (
        "<p>No policy failures and no errored rollouts.</p>")  # fmt: skip
    return f'<table id="failures"><tr>{head}</tr>{"".join(rows)}</table>{more}'


def _events(ro) -> list[str]:
    ev = []
    coll = (ro.extra or {}).get("collisions", [])
    atf = sum(bool(c.get("at_fault")) for c in coll)
    if atf:
        ev.append(f"{atf} at-fault collision(s)")
    elif coll:
        ev.append(f"{len(coll)} contact(s), not at fault")
    if ro.policy_failure is not None and np.any(ro.policy_failure):
        ev.append(f"{int(np.sum(ro.policy_failure))} failed ticks")
    if ro.deadline_miss is not None and np.any(ro.deadline_miss):
        ev.append(f"{int(np.sum(ro.deadline_miss))} deadline misses")
    return ev


def _scenes_html(data: RunData, policies: list[str], main: str | None, colors: dict[str, str]) -> str:
    by_scene: dict[str, dict[str, dict]] = {}
    for r in data.scenes:
        by_scene.setdefault(str(r.get("scene_id")), {})[str(r.get("policy"))] = r
    for p, s in data.rollouts:
        by_scene.setdefault(s, {}).setdefault(p, {"policy": p, "scene_id": s})
    score_col = main if any(main in r for r in data.scenes) else "scene_score"
    head = "<th class='name'>scene</th>" + "".join(f"<th>{_e(p)}<br>{_e(score_col)}</th>" for p in policies)
    head += "<th class='name'>events</th>"
    parts = [f"<table id='scenes'><tr>{head}</tr>"]
    details = []
    for s in sorted(by_scene):
        row = by_scene[s]
        cells, events = [], []
        for p in policies:
            r = row.get(p)
            v = r.get(score_col) if r else None
            cls = ""
            if isinstance(v, float | int):
                cls = "bad" if v < 0.5 else ("good" if v >= 0.9 else "")
            cells.append(f"<td class='{cls}'>{_e(C.fmt(score_col or '', v)) if v is not None else ''}</td>")
            ro = data.rollouts.get((p, s))
            if ro is not None:
                events += [f"{p}: {e}" for e in _events(ro)]
            for col, what in _SCENE_EVENTS:
                if r and isinstance(r.get(col), float | int) and r[col] < 1:
                    events.append(f"{p}: {what}")
        parts.append(
            f"<tr><td class='name'><a href='#scene-{_e(s)}'>{_e(s)}</a></td>{''.join(cells)}"
            f"<td class='name'>{_e('; '.join(events))}</td></tr>"
        )
        img = plot_speed(s, data, policies, colors)
        vids = []
        for p in policies:
            vp = video_path(data.run_dir, p, s)
            if vp.is_file():
                rel = vp.relative_to(data.run_dir).as_posix()
                still = vp.with_suffix(".jpg")
                img_tag = (f"<img class='still' width='336' alt='video still {_e(p)}' "
                           f"src='{_e(still.relative_to(data.run_dir).as_posix())}'>") if still.is_file() else ""  # fmt: skip
                vids.append(
                    f"<figure class='video'><a href='{_e(rel)}'>{img_tag}</a>"
                    f"<figcaption>{_e(p)}: <a href='{_e(rel)}'>video (mp4)</a></figcaption></figure>"
                )
        sub = [
            c for c in SUBMETRICS if any(isinstance((row.get(p) or {}).get(c), float | int) for p in policies)
        ]
        tbl = "<table><tr><th class='name'>policy</th>" + "".join(f"<th>{_e(c)}</th>" for c in sub) + "</tr>"
        for p in policies:
            r = row.get(p) or {}
            tbl += (
                f"<tr><td class='name'>{_e(p)}</td>"
                + "".join(_cell(c, r.get(c), main) for c in sub)
                + "</tr>"
            )
        tbl += "</table>"
        opened = " open" if events or len(by_scene) <= 4 else ""
        details.append(
            f"<details id='scene-{_e(s)}' class='scene'{opened}><summary>{_e(s)}</summary>{tbl}"
            + (img or "")
            + (f"<div class='videos'>{''.join(vids)}</div>" if vids else "")
            + "</details>"
        )
    parts.append("</table>")
    return (
        "".join(parts)
        + "<h3>Scene details (speed against the log, sub-metrics, videos)</h3>"
        + "".join(details)
    )


def _violations_html(run_dir: Path) -> str:
    """The violations index (at-fault collisions, off-road) as a table, when the run has one."""
    idx = run_dir / "violations" / "index.csv"
    _, rows = _read_csv(idx)
    if not idx.is_file():
        return ""
    out = "<h2>Violations</h2>"
    if not rows:
        return out + "<p id='violations'>No at-fault collision and no off-road in any rollout.</p>"
    out += ("<table id='violations'><tr><th class='name'>policy</th><th class='name'>scene</th>"
            "<th class='name'>kind</th><th>first step</th><th>ticks</th><th class='name'>still</th></tr>")  # fmt: skip
    for r in rows:
        still = f"violations/{r.get('still')}" if r.get("still") else ""
        img = f"<a href='{_e(still)}'>still</a>" if still else ""
        out += (f"<tr><td class='name'>{_e(r.get('policy'))}</td><td class='name'><a href='#scene-{_e(r.get('scene_id'))}'>"
                f"{_e(r.get('scene_id'))}</a></td><td class='name'>{_e(r.get('kind'))}</td><td>{_e(r.get('first_step'))}</td>"
                f"<td>{_e(r.get('ticks'))}</td><td class='name'>{img}</td></tr>")  # fmt: skip
    return out + "</table><p>Full list: <a href='violations/index.md'>violations/index.md</a></p>"


def render_report(data: RunData) -> str:
    """The HTML text of the report."""
    import matplotlib

    matplotlib.use("Agg")
    main = C.main_score(data.board_columns)
    policies = [str(r["policy"]) for r in C.sort_rows(data.board, main)]
    policies += sorted({p for p, _ in data.rollouts} - set(policies))
    colors = _colors(policies)
    args = data.run.get("args") or {}
    title = f"alpasim-policy run: {data.run_dir.name}"
    meta = []
    if args.get("suite"):
        meta.append(f"suite <b>{_e(args['suite'])}</b>")
    meta.append(f"{len({s for _, s in data.rollouts}) or len(data.scenes)} scenes, {len(policies)} policies")
    if data.run.get("wall_s"):
        meta.append(f"last eval call {data.run['wall_s']:.0f} s")
    if args.get("deadline_ms"):
        meta.append(f"deadline {args['deadline_ms']} ms ({_e(args.get('latency_mode', ''))})")
    if args.get("env_config"):
        meta.append(f"env {_e(args['env_config'])}")
    metrics_img = plot_metrics(C.sort_rows(data.board, main), colors)
    latency_img = plot_latency(data, policies, colors)
    versions = data.run.get("versions") or {}
    out = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><p class='sub'>{' · '.join(meta)}</p>",
        f"<p id='profile'>Scoring profile: <b>{_e(data.profile)}</b></p>",
        "<h2>Leaderboard</h2>",
        _leaderboard_html(data, main),
        "<h2>Failures and deadline misses</h2>",
        _failures_html(data, policies),
        "<h2>Plots</h2>",
        f"<h3>Sub-metrics per policy</h3><img id='plot-metrics' alt='sub-metric bars' src='{metrics_img}'>"
        if metrics_img
        else "",
        f"<h3>Latency</h3><img id='plot-latency' alt='latency histogram and timeline' src='{latency_img}'>"
        if latency_img
        else "<p>No latency recorded.</p>",
        _violations_html(data.run_dir),
        "<h2>Scenes</h2>",
        "<p>Videos (when eval ran with <code>--videos</code> or after <code>alpasim-policy video RUN</code>): "
        "bird's-eye view with lanes, light states, agents, the executed path, the plan and the samples; the "
        "cameras the policy saw; its reasoning; and a timeline of collisions, off-road, red lights, failures "
        "and deadline misses. Click a still to open the mp4.</p>",
        _scenes_html(data, policies, main, colors),
        "<hr><p class='sub'>"
        + _e(", ".join(f"{k} {v}" for k, v in versions.items()))
        + f" · report written {time.strftime('%Y-%m-%d %H:%M:%S')}</p></body></html>",
    ]
    return "\n".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from a scored run folder; returns its path."""
    data = load_run(run_dir)
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, render_report(data))
    return path
