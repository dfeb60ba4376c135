"""NAVSIM-style sub-metrics, one module each, all batched over B proposals; :mod:`.registry` wires them.

Each metric is registered in :mod:`.registry` as one ``compute(ctx) -> MetricResult(value, valid)``
with its role (multiplier or weighted term) and weight per score; PDMS / EPDMS are derived from
those entries. Profile switches (``project`` / ``navsim``) reach the metrics through
``EgoGeometry.profile`` (:mod:`alpasim_policy.scoring.profiles`).

Every metric takes an :class:`~alpasim_policy.scoring.metrics._common.EgoGeometry` (the
simulated ego over S states, rear axle, scene frame) and, where needed, the
:class:`~alpasim_policy.scoring.metrics._common.AgentWindow` (agents over the same steps) or
the :class:`~alpasim_policy.scoring.world.ScoringWorld`, and returns a (B,) array.

======  ==========================================  =============  ======
name    module                                      range          role
======  ==========================================  =============  ======
NC      :mod:`.nc` no at-fault collisions            {0, 1/2, 1}    x
DAC     :mod:`.dac` drivable-area compliance         {0, 1}         x
DDC     :mod:`.ddc` driving-direction compliance     {0, 1/2, 1}    x
TLC     :mod:`.tlc` traffic-light compliance         {0, 1}         x
EP      :mod:`.ep` ego progress                      [0, 1]         weight 5
TTC     :mod:`.ttc` time to collision within bound   {0, 1}         weight 5
C / HC  :mod:`.comfort` comfort / history comfort    {0, 1}         weight 2
LK      :mod:`.lk` lane keeping                      {0, 1}         weight 2
EC      :mod:`.ec` extended comfort                  {0, 1}         weight 2
======  ==========================================  =============  ======
"""
