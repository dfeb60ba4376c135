"""Rendering for the closed-loop env: a BEV raster and pinhole camera images of a flat world.

- :mod:`alpasim_policy.render.bev`: :class:`~alpasim_policy.render.bev.BevConfig`,
  :class:`~alpasim_policy.render.bev.BevRenderer` and ``render_bev(scene, *, ego_state,
  agent_states, agent_valid, step, plan_world=None, plan_rig=None, config=None)``, an
  ego-centred, heading-up (H, W, 3) uint8 RGB raster used for ``render_mode="rgb_array"`` and
  the ``bev`` observation.
- :mod:`alpasim_policy.render.cameras`: :class:`~alpasim_policy.render.cameras.Camera`,
  :class:`~alpasim_policy.render.cameras.CameraRig` (presets ``av2_ring``, ``alpamayo4``
  in ``render/rigs/*.json``), :class:`~alpasim_policy.render.cameras.CameraRenderer` and
  ``render_cameras(scene, rig, *, ego_state, agent_states, agent_valid, step)`` returning
  {camera name: (H, W, 3) uint8 RGB}.

Both renderers flatten a scene's static geometry once and are cached per scene object, so
a render every 0.1 s tick is a transform plus OpenCV fills. Heavy imports (OpenCV) happen
in the submodules only.
"""
