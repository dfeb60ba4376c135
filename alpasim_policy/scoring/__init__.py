"""Scorer: NAVSIM-style PDMS / EPDMS, AlpaSim rollout metrics and the leaderboard, read from metric caches.

Open and closed loop; see ``alpasim_policy/scoring/README.md``. The scorer knows no driver: cache
building (with a reference planner) is the runner's (:mod:`alpasim_policy.caching`).

Entry points: :func:`alpasim_policy.scoring.openloop.score_plans` (N plans at one t0),
:func:`alpasim_policy.scoring.closedloop.score_rollout` (one env rollout),
:func:`alpasim_policy.scoring.report.score_run` (a run folder -> leaderboard),
:func:`alpasim_policy.scoring.cache.load_world` (a scene's scoring data, cached).
Nothing heavy is imported here, so the CLI stays fast.
"""
