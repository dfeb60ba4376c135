"""A Policy that drives an external AlpaSim egodriver server: ``eval --policy grpc://HOST:PORT``.

Each ``reset`` opens a session (the rollout seed, the env's camera rig as AlpaSim
``AvailableCamera``s); each ``act`` sends the tick's camera images (JPEG), the ego pose and
dynamic state, the route, then calls ``drive`` and turns the returned local-frame poses into
our rig-frame (T, 3) plan at 0.1 s steps (resampled when the server uses another spacing).

The local frame of the session is the scene frame, and time is ``step * 0.1 s`` plus a fixed
10 s offset (the contract's timestamps are unsigned; the offset keeps the history of the first
ticks positive).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import numpy as np

from alpasim_policy.errors import ConfigError
from alpasim_policy.policies.base import HISTORY_STEPS, MIN_PLAN_STEPS, PolicyOutput
from alpasim_policy.serve import convert

log = logging.getLogger(__name__)

TIME_OFFSET_US = 10_000_000


def _parse_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"grpc policy option {name}={v!r}: expected true/false")


class EgodriverPolicy:
    """Policy protocol over gRPC. ``target`` is ``HOST:PORT`` (a leading ``grpc://`` is accepted).

    Options (also as strings, as ``--policy-option`` passes them):

    * ``camera_preset`` (default ``alpamayo4``; ``none`` for no cameras): the rig eval enables
      and whose images are sent every tick;
    * ``jpeg_quality`` (90); ``timeout_s`` (30) per RPC;
    * ``send_history`` (true): on the first tick send the whole 1.6 s ego history (the env's
      warm-up) so the server can drive at once; false sends one pose per tick like AlpaSim's
      runtime does;
    * ``send_scene_id`` (false): fill ``DriveSessionRequest.debug_info.scene_id`` (AlpaSim omits
      it in benchmark runs to avoid leaking the scene to the driver).
    """

    camera_preset: str | None = "alpamayo4"

    def __init__(
        self,
        target: str,
        *,
        camera_preset: str | None = "alpamayo4",
        jpeg_quality: int | str = 90,
        timeout_s: float | str = 30.0,
        send_history: bool | str = True,
        send_scene_id: bool | str = False,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(
                f"grpc policy: unknown options {sorted(unknown)}; known: camera_preset, jpeg_quality, "
                "timeout_s, send_history, send_scene_id"
            )
        self.target = target.removeprefix("grpc://")
        if not self.target or ":" not in self.target:
            raise ConfigError(f"grpc policy target {target!r}: expected grpc://HOST:PORT")
        self.name = f"grpc://{self.target}"
        preset = camera_preset
        self.camera_preset = (
            None if preset is None or str(preset).lower() in ("", "none", "null") else str(preset)
        )
        try:
            self.jpeg_quality = int(jpeg_quality)
            self.timeout_s = float(timeout_s)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"grpc policy options jpeg_quality / timeout_s: {e}") from e
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"grpc policy option jpeg_quality={jpeg_quality}: expected 1..100")
        self.send_history = _parse_bool("send_history", send_history)
        self.send_scene_id = _parse_bool("send_scene_id", send_scene_id)
        self._channel = None
        self._stub = None
        self._pool = None
        self._session: str | None = None
        self.server_version: str | None = None

    # ------------------------------------------------------------------ connection

    def _connect(self):
        if self._stub is None:
            import grpc

            from alpasim_policy.serve.proto import egodriver_pb2_grpc
            from alpasim_policy.serve.service import GRPC_OPTIONS

            self._channel = grpc.insecure_channel(self.target, options=GRPC_OPTIONS)
            self._stub = egodriver_pb2_grpc.EgodriverServiceStub(self._channel)
        return self._stub

    def _call(self, method: str, request: Any, **kw: Any) -> Any:
        import grpc

        from alpasim_policy.errors import PolicyOutputError

        try:
            return getattr(self._connect(), method)(request, timeout=self.timeout_s, **kw)
        except grpc.RpcError as e:
            raise PolicyOutputError(
                f"{self.name}: {method} failed: {e.code().name}: {e.details()}"  # type: ignore[attr-defined]
            ) from e

    def _workers(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="egodriver-upload")
        return self._pool

    def close(self) -> None:
        """Close the open session (if any), the channel and the upload threads."""
        if self._session is not None and self._stub is not None:
            from alpasim_policy.serve.proto import egodriver_pb2

            try:
                self._stub.close_session(
                    egodriver_pb2.DriveSessionCloseRequest(session_uuid=self._session), timeout=self.timeout_s
                )
            except Exception as e:  # the server may be gone already; nothing left to clean up
                log.debug("close_session failed: %s", e)
        self._session = None
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> EgodriverPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable for process / Ray workers: reconnect there
        d = dict(self.__dict__)
        d["_channel"] = d["_stub"] = d["_session"] = d["_pool"] = None
        return d

    # ------------------------------------------------------------------ Policy protocol

    def reset(self, *, seed: int | None = None, scene: Any = None, camera_rig: Any = None) -> None:
        from alpasim_policy.serve.proto import common_pb2, egodriver_pb2
        from alpasim_policy.serve.service import CONTRACT_METADATA

        if self._session is not None:
            self.close()
        version = self._call("get_version", common_pb2.Empty())
        self.server_version = version.version_id
        self._session = str(uuid.uuid4())
        req = egodriver_pb2.DriveSessionRequest(
            session_uuid=self._session, random_seed=int(seed or 0) % 2**64
        )
        if self.send_scene_id and scene is not None:
            req.debug_info.scene_id = str(getattr(scene, "scene_id", ""))
        self._cameras = convert.rig_cameras(camera_rig)
        for cam in self._cameras:
            req.rollout_spec.vehicle.available_cameras.append(convert.camera_to_proto(cam))
        # Declare AlpaSim's camera convention to carla-driver-interface servers (they would otherwise
        # assume their legacy revision 1 and re-interpret rig_to_camera).
        self._call("start_session", req, metadata=CONTRACT_METADATA)
        self._first = True

    def act(self, observation: dict[str, Any]) -> PolicyOutput:
        from alpasim_policy.serve.proto import common_pb2, egodriver_pb2

        if self._session is None:
            raise ConfigError(f"{self.name}: act() before reset()")
        sid = self._session
        now = TIME_OFFSET_US + int(observation["step"]) * convert.STEP_US
        pose = tuple(float(v) for v in np.asarray(observation["pose"], dtype=np.float64)[:3])
        t0 = time.perf_counter()

        def send_image(name: str, rgb: np.ndarray) -> None:
            msg = egodriver_pb2.RolloutCameraImage(session_uuid=sid)
            msg.camera_image.logical_id = name
            msg.camera_image.frame_start_us = msg.camera_image.frame_end_us = now
            msg.camera_image.image_bytes = convert.encode_jpeg(rgb, self.jpeg_quality, self.name)
            self._call("submit_image_observation", msg)

        # Cameras are JPEG-encoded and uploaded in parallel (OpenCV and gRPC release the GIL; the
        # server decodes each in its own worker), while egomotion and route go out on this thread.
        cams = list((observation.get("cameras") or {}).items())
        pending = [self._workers().submit(send_image, n, img) for n, img in cams]

        ego = egodriver_pb2.RolloutEgoTrajectory(session_uuid=sid)
        hist = np.asarray(observation["ego_history"], dtype=np.float64)
        rows = range(len(hist)) if (self._first and self.send_history) else [len(hist) - 1]
        xy = convert.from_rig(hist[:, :2], pose)
        for k in rows:
            t = now - (len(hist) - 1 - k) * convert.STEP_US
            if t < 0:
                continue
            ego.trajectory.poses.add(
                pose=convert.pose_proto(xy[k, 0], xy[k, 1], pose[2] + hist[k, 2]), timestamp_us=t
            )
            st = ego.dynamic_states.add()
            st.linear_velocity.x = float(hist[k, 3])
            if k == len(hist) - 1:
                st.linear_acceleration.x = float(observation.get("acceleration", 0.0))
        self._call("submit_egomotion_observation", ego)
        self._first = False

        route = np.asarray(observation["route"], dtype=np.float64)
        self._call(
            "submit_route",
            egodriver_pb2.RouteRequest(
                session_uuid=sid,
                route=egodriver_pb2.Route(
                    timestamp_us=now, waypoints=[common_pb2.Vec3(x=float(x), y=float(y)) for x, y in route]
                ),
            ),
        )
        for f in pending:
            f.result()  # re-raises an upload's error; every frame is in before drive
        t_drive = time.perf_counter()
        resp = self._call(
            "drive",
            egodriver_pb2.DriveRequest(
                session_uuid=sid, time_now_us=now, time_query_us=now + convert.STEP_US
            ),
        )
        done = time.perf_counter()

        try:
            plan = convert.local_to_plan(resp.trajectory, pose, now)
        except convert.RequestError as e:
            from alpasim_policy.errors import PolicyOutputError

            raise PolicyOutputError(f"{self.name}: drive response {e}") from e
        extra: dict[str, Any] = {
            "rpc_seconds": done - t0,
            "drive_seconds": done - t_drive,
            "server_not_ready": len(plan) == 0,
            "terminate_session": bool(resp.terminate_session),
        }
        if len(plan) == 0:
            # AlpaSim's "not ready yet": hold the ego where it is (what its runtimes do).
            plan = np.zeros((max(MIN_PLAN_STEPS, HISTORY_STEPS), 3))
        samples = None
        sampled = []
        for k, tr in enumerate(resp.debug_info.sampled_trajectories):
            try:
                s = convert.local_to_plan(tr, pose, now, where=f"debug_info.sampled_trajectories[{k}]")
            except convert.RequestError:
                continue
            if len(s):
                sampled.append(s)
        if sampled:
            n = min(len(s) for s in sampled)
            samples = np.stack([s[:n] for s in sampled])
        info = convert.unpack_debug(resp.debug_info.unstructured_debug_info) or {}
        reasoning = info.get("reasoning_text") or info.get("reasoning")
        if isinstance(info.get("inference_seconds"), int | float) and math.isfinite(
            info["inference_seconds"]
        ):
            extra["server_inference_seconds"] = float(info["inference_seconds"])
        return PolicyOutput(
            plan, reasoning=reasoning if isinstance(reasoning, str) else None, samples=samples, extra=extra
        )
