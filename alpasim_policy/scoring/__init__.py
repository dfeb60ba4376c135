"""Scoring stage: NAVSIM-style PDMS / EPDMS (open and closed loop), AlpaSim rollout metrics,
metric caches and the leaderboard. See ``alpasim_policy/scoring/README.md``.

Entry points: :func:`alpasim_policy.scoring.openloop.score_plans` (N plans at one t0),
:func:`alpasim_policy.scoring.closedloop.score_rollout` (one env rollout),
:func:`alpasim_policy.scoring.report.score_run` (a run folder -> leaderboard),
:func:`alpasim_policy.scoring.cache.load_world` (a scene's scoring data, cached).
Nothing heavy is imported here, so the CLI stays fast.
"""
