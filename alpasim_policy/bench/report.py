"""``alpasim-policy bench report``: report.html generation time and video writing vs rollout time.

Three rows, each measured in this one run:

* ``report.html`` on a scored run of the suite (``--run-dir`` reuses one; otherwise the baselines are
  evaluated into a temp folder first, untimed). Target: <= 5 s for the bundled suite.
* video writing, in this process: for ``--video-scenes`` scenes and each baseline, the rollout is
  run and then its video written, alternately, so both see the same machine load; the ratio is
  total video time / total rollout time (the CPU a video costs; split into drawing and encoding
  by drawing the frames once more without the encoder).
* what ``eval --videos`` adds to the wall time: the same scenes and baselines evaluated without
  videos and with :class:`~alpasim_policy.report.video.BackgroundVideos` (each video drawn by a
  second process while eval drives on, waited for at the end), alternately, ``--repeats`` times.
  Target: video writing <= 20 % of the rollouts' time. On a 2-core machine the second process
  uses the core the serial backend leaves idle; when every core is busy (other jobs, Ray with a
  worker per core) it saves nothing, which is why the CPU row above is reported too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _load() -> str:
    """The 1-minute load average: on a shared machine the wall times above depend on it."""
    try:
        import os

        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def run(args: argparse.Namespace) -> int:
    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.evaluate import evaluate, run_rollout
    from alpasim_policy.report.html import write_report
    from alpasim_policy.report.video import BackgroundVideos, RolloutFrames, _scoring_world, write_video
    from alpasim_policy.scenes.format import load_scene
    from alpasim_policy.scenes.suite import load_suite
    from alpasim_policy.scoring.report import score_run

    if Path(args.out).is_dir():  # --out was the run folder before the bench flags were made uniform
        from alpasim_policy.errors import ConfigError

        raise ConfigError(f"--out {args.out}: a folder; --out is the rows file now, the run folder is --run-dir")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    scenes = load_suite(args.suite)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        evaluate(args.suite, policies, out, show_progress=False)
        if not (out / "leaderboard.csv").is_file():
            from alpasim_policy.caching import IDM_REFERENCE

            score_run(out, reference=IDM_REFERENCE)  # as eval scores (the committed caches' reference)
        write_report(out)  # warm-up: imports, matplotlib font cache
        times, cpu = [], []
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            write_report(out)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        report_s, report_cpu = statistics.median(times), statistics.median(cpu)
        n_ro = len(list((out / "rollouts").glob("*/*.npz")))
        # video writing against rollout time, side by side
        roll_s: dict[str, float] = dict.fromkeys(policies, 0.0)
        vid_s: dict[str, float] = dict.fromkeys(policies, 0.0)
        frames, draw_s, roll_cpu, vid_cpu = 0, 0.0, 0.0, 0.0
        for sp in scenes[: args.video_scenes]:
            sc = load_scene(sp)
            world = _scoring_world(sc)
            for p in policies:
                t, c = time.perf_counter(), time.process_time()
                ro = run_rollout(p, sp, seed=0)
                roll_s[p] += time.perf_counter() - t
                roll_cpu += time.process_time() - c
                t, c = time.perf_counter(), time.process_time()
                write_video(ro, sc, Path(tmp) / "v" / f"{p}_{sc.scene_id}.mp4", world=world)
                vid_s[p] += time.perf_counter() - t
                vid_cpu += time.process_time() - c
                frames += len(ro.times)
                t = time.perf_counter()  # the drawing alone (the rest of the video time is the encoder)
                fr = RolloutFrames(ro, sc, world=world)
                for i in range(fr.n):
                    fr._draw(i)
                draw_s += time.perf_counter() - t
        # eval with the videos drawn in the background vs eval alone, alternately
        paths = [str(sp) for sp in scenes[: args.video_scenes]]
        plain, with_videos = [], []
        for r in range(max(1, args.repeats)):
            for videos in ((False, True) if r % 2 == 0 else (True, False)):
                run = Path(tmp) / f"overlap{r}{int(videos)}"
                t = time.perf_counter()
                bg = BackgroundVideos(run) if videos else None
                evaluate(None, policies, run, scenes=paths, show_progress=False,
                         on_rollout=bg.submit if bg else None)  # fmt: skip
                if bg is not None:
                    assert len(bg.finish()) == len(paths) * len(policies)
                (with_videos if videos else plain).append(time.perf_counter() - t)
    ratio = {p: vid_s[p] / roll_s[p] for p in policies if roll_s[p] > 0}
    total_ratio = sum(vid_s.values()) / max(sum(roll_s.values()), 1e-9)
    per = ", ".join(f"{p} {vid_s[p]:.2f} s video / {roll_s[p]:.2f} s rollout = {ratio[p]:.0%}" for p in ratio)
    rows = [
        {
            "benchmark": f"report.html, {args.suite} ({n_ro} rollouts, {len(policies)} policies)",
            "result": f"{report_s:.2f} s wall, {report_cpu:.2f} s CPU (median of 3; load average {_load()})",
            "ratio": f"{report_s / 5.0:.2f} of the 5 s target",
        },
        {
            "benchmark": f"video writing vs rollout, {args.video_scenes} scenes x {len(policies)} baselines "
            f"({frames} frames)",
            "result": per,
            "ratio": f"{total_ratio:.0%} of rollout time, CPU {vid_cpu / max(roll_cpu, 1e-9):.0%} "
            f"(target <= 20 %; load average {_load()})",
        },
    ]
    vid_ms = 1e3 * sum(vid_s.values()) / max(frames, 1)
    draw_ms = 1e3 * draw_s / max(frames, 1)
    rows[1]["result"] += f"; {vid_ms:.2f} ms per frame = drawing {draw_ms:.2f} + encoding {vid_ms - draw_ms:.2f}"
    added = [w / p - 1.0 for w, p in zip(with_videos, plain, strict=True)]
    rows.append({
        "benchmark": f"eval --videos: wall time added by the videos (drawn in a second process during eval), "
                     f"{args.video_scenes} scenes x {len(policies)} baselines, serial backend",
        "result": f"eval {statistics.median(plain):.2f} s, with videos {statistics.median(with_videos):.2f} s "
                  f"(per repeat {', '.join(f'{a:+.0%}' for a in added)}; the video CPU is the row above); "
                  f"load average {_load()}",
        "ratio": f"{statistics.median(added):+.0%} wall time (target <= 20 %; median of {len(added)})",
    })  # fmt: skip
    write_rows(rows, args)
    print_summary(
        {
            "report_s": report_s,
            "report_cpu_s": report_cpu,
            "video_over_rollout": total_ratio,
            "video_over_rollout_per_policy": ratio,
            "video_ms_per_frame": vid_ms,
            "draw_ms_per_frame": draw_ms,
            "eval_s": plain,
            "eval_with_videos_s": with_videos,
            "video_cpu_over_rollout_cpu": vid_cpu / max(roll_cpu, 1e-9),
        }
    )
    return 0
