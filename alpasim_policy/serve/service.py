"""``egodriver.EgodriverService`` around any :class:`~alpasim_policy.policies.base.Policy`.

One Policy instance per session (built by a factory), so concurrent sessions share nothing
but the process. Requests are validated up front: an unknown session is ``NOT_FOUND``, a
malformed field ``INVALID_ARGUMENT`` naming it, a policy exception ``INTERNAL`` with its message
(the session stays usable). Time only moves forward: egomotion with decreasing timestamps, or a
``drive`` whose ``time_now_us`` is more than a second from the latest egomotion, is
``INVALID_ARGUMENT`` naming the field. Too little ego history gives an empty trajectory, AlpaSim's "not
ready yet". Camera frames are decoded when submitted, not in ``drive``, so ``drive`` costs only
the policy plus a little bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from alpasim_policy.policies.base import COMMAND_NAMES, HISTORY_STEPS, MAX_AGENTS, Policy, validate_plan
from alpasim_policy.serve import convert
from alpasim_policy.serve.convert import RequestError
from alpasim_policy.serve.proto import common_pb2, egodriver_pb2, egodriver_pb2_grpc

log = logging.getLogger(__name__)

# The AlpaSim contract revision our messages are checked against (carla-driver-interface's
# vendored copy reports alpasim_grpc 0.55.0; ours is a wire-compatible superset).
ALPASIM_API_VERSION = (0, 55, 0)
# carla-driver-interface negotiates what AvailableCamera.rig_to_camera means through this
# metadata key; "2" is AlpaSim's own convention (optical frame), which is what we speak.
CONTRACT_METADATA = (("carla-driver-interface-contract", "2"),)
# 64 MiB: AlpaSim sends whole camera frames as single messages; 4 MiB (gRPC's default) is too
# small above ~1080p PNG.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def check_servable(policy: Policy, name: str) -> None:
    """Refuse, at start-up, a policy that cannot drive from what the egodriver contract carries.

    The contract sends egomotion, a route and camera images; no map, no other agents and no log.
    A policy whose ``reset`` needs the scene (``idm``: lanes, speed limits, lights; ``log_replay``:
    the logged ego) would otherwise start serving and then fail every session with INTERNAL, so
    the server probes ``reset(scene=None)`` once and refuses with the policy's own reason.
    """
    from alpasim_policy.errors import ConfigError

    try:
        policy.reset(seed=0, scene=None, camera_rig=None)
    except Exception as e:
        raise ConfigError(
            f"policy {name!r} cannot be served: it cannot drive from what AlpaSim's egodriver contract "
            f"carries (egomotion, route, camera images; no map, no other agents, no log): "
            f"{type(e).__name__}: {e}"
        ) from e


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code, self.message = code, message
        super().__init__(message)


@dataclass
class Session:
    uuid: str
    seed: int
    scene_id: str
    policy: Policy
    cameras: convert.RemoteCameraRig
    ego: convert.EgoBuffer = field(default_factory=convert.EgoBuffer)
    route: tuple[int, np.ndarray] | None = None  # (timestamp_us, (N, 2) rig-frame waypoints at that time)
    images: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # name -> (t_us, RGB)
    ground_truth: common_pb2.Trajectory | None = None
    drives: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def decode_image(data: bytes, where: str = "camera_image.image_bytes") -> np.ndarray:
    """JPEG / PNG bytes -> (H, W, 3) uint8 RGB."""
    import cv2

    if not data:
        raise RequestError(where, "empty")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RequestError(where, f"cannot decode {len(data)} bytes as JPEG or PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class EgodriverService(egodriver_pb2_grpc.EgodriverServiceServicer):
    """The servicer. ``policy_factory()`` builds a fresh Policy for every session.

    ``min_history`` is how many of the 16 history steps (0.1 s apart) must be covered by received
    egomotion before ``drive`` answers a plan; the rest are extrapolated backwards. The default
    (16) waits for a full 1.5 s of real history, like AlpaSim's drivers wait for their context.
    """

    def __init__(
        self,
        policy_factory: Callable[[], Policy],
        *,
        name: str = "policy",
        min_history: int = HISTORY_STEPS,
        on_shutdown: Callable[[], None] | None = None,
    ):
        if not 1 <= min_history <= HISTORY_STEPS:
            raise ValueError(f"min_history must be in 1..{HISTORY_STEPS}, got {min_history}")
        self._factory = policy_factory
        self.name = name
        self.min_history = min_history
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._on_shutdown = on_shutdown

    # ------------------------------------------------------------------ plumbing

    def _run(self, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` mapping our exceptions to status codes; never lets one escape as UNKNOWN."""
        try:
            return fn()
        except _Abort as e:
            context.abort(e.code, e.message)
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # a bug of ours: still a clear status, never a hang
            log.exception("internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    def _session(self, uuid: str) -> Session:
        if not uuid:
            raise RequestError("session_uuid", "empty")
        with self._lock:
            s = self._sessions.get(uuid)
        if s is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"session_uuid: unknown session {uuid!r}")
        return s

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    # ------------------------------------------------------------------ sessions

    def start_session(
        self, request: egodriver_pb2.DriveSessionRequest, context
    ) -> common_pb2.SessionRequestStatus:
        def go():
            uuid = request.session_uuid
            if not uuid:
                raise RequestError("session_uuid", "empty")
            cams = convert.RemoteCameraRig(
                [
                    convert.camera_from_proto(c, f"rollout_spec.vehicle.available_cameras[{i}]")
                    for i, c in enumerate(request.rollout_spec.vehicle.available_cameras)
                ]
            )
            if len(set(cams.names)) != len(cams.names):
                raise RequestError(
                    "rollout_spec.vehicle.available_cameras", f"duplicate logical ids {cams.names}"
                )
            with self._lock:
                if uuid in self._sessions:
                    raise _Abort(
                        grpc.StatusCode.ALREADY_EXISTS, f"session_uuid: session {uuid!r} already exists"
                    )
            try:
                policy = self._factory()
                rig = convert.to_camera_rig(cams, f"session {uuid}") if len(cams) else None
                policy.reset(seed=int(request.random_seed), scene=None, camera_rig=rig)
            except Exception as e:
                raise _Abort(grpc.StatusCode.INTERNAL, f"policy {self.name}: {type(e).__name__}: {e}") from e
            scene_id = request.debug_info.scene_id if request.HasField("debug_info") else ""
            with self._lock:
                if uuid in self._sessions:
                    raise _Abort(
                        grpc.StatusCode.ALREADY_EXISTS, f"session_uuid: session {uuid!r} already exists"
                    )
                self._sessions[uuid] = Session(uuid, int(request.random_seed), scene_id, policy, cams)
            log.info("start_session %s scene=%r cameras=%s", uuid, scene_id, cams.names)
            return common_pb2.SessionRequestStatus()

        return self._run(context, go)

    def close_session(self, request: egodriver_pb2.DriveSessionCloseRequest, context) -> common_pb2.Empty:
        def go():
            self._session(request.session_uuid)
            with self._lock:
                self._sessions.pop(request.session_uuid, None)
            return common_pb2.Empty()

        return self._run(context, go)

    def get_version(self, request: common_pb2.Empty, context) -> common_pb2.VersionId:
        from alpasim_policy import __version__

        context.send_initial_metadata(CONTRACT_METADATA)
        major, minor, patch = ALPASIM_API_VERSION
        return common_pb2.VersionId(
            version_id=f"alpasim-policy-{__version__}:{self.name}",
            git_hash="unknown",
            grpc_api_version=common_pb2.VersionId.APIVersion(major=major, minor=minor, patch=patch),
        )

    def shut_down(self, request: common_pb2.Empty, context) -> common_pb2.Empty:
        if self._on_shutdown is not None:
            # After the reply is sent: stopping the server inside its own RPC would cancel it.
            threading.Timer(0.1, self._on_shutdown).start()
        return common_pb2.Empty()

    # ------------------------------------------------------------------ observations

    def submit_image_observation(
        self, request: egodriver_pb2.RolloutCameraImage, context
    ) -> common_pb2.Empty:
        def go():
            s = self._session(request.session_uuid)
            img = request.camera_image
            if img.logical_id not in s.cameras.names:
                raise RequestError(
                    "camera_image.logical_id",
                    f"{img.logical_id!r} was not declared in start_session (declared: {s.cameras.names})",
                )
            rgb = decode_image(img.image_bytes)  # outside the lock: decoding is the slow part
            with s.lock:
                s.images[img.logical_id] = (int(img.frame_end_us or img.frame_start_us), rgb)
            return common_pb2.Empty()

        return self._run(context, go)

    def submit_egomotion_observation(
        self, request: egodriver_pb2.RolloutEgoTrajectory, context
    ) -> common_pb2.Empty:
        def go():
            s = self._session(request.session_uuid)
            if not request.trajectory.poses:
                raise RequestError("trajectory.poses", "empty")
            with s.lock:
                s.ego.add_message(request.trajectory, list(request.dynamic_states))
            return common_pb2.Empty()

        return self._run(context, go)

    def submit_route(self, request: egodriver_pb2.RouteRequest, context) -> common_pb2.Empty:
        def go():
            s = self._session(request.session_uuid)
            pts = convert.parse_waypoints(request.route.waypoints)
            with s.lock:
                # Kept in the rig frame of its timestamp; drive moves it into the current rig frame
                # through the egomotion at that time, so it may arrive before or after the egomotion.
                s.route = (int(request.route.timestamp_us), pts)
            return common_pb2.Empty()

        return self._run(context, go)

    def submit_recording_ground_truth(
        self, request: egodriver_pb2.GroundTruthRequest, context
    ) -> common_pb2.Empty:
        def go():
            s = self._session(request.session_uuid)
            with s.lock:
                s.ground_truth = request.ground_truth.trajectory  # accepted, unused by default
            return common_pb2.Empty()

        return self._run(context, go)

    # ------------------------------------------------------------------ drive

    def observation(self, s: Session) -> dict[str, Any] | None:
        """The Policy observation from the session's buffers (caller holds ``s.lock``), or None if not ready."""
        hist = s.ego.history(HISTORY_STEPS, self.min_history)
        if hist is None:
            return None
        needs_cameras = getattr(s.policy, "camera_preset", None) is not None and len(s.cameras) > 0
        if needs_cameras and any(n not in s.images for n in s.cameras.names):
            return None
        pose = hist["pose"]
        route_local = None
        if s.route is not None and len(s.route[1]):
            t_route, pts = s.route
            origin = s.ego.pose_at(t_route or hist["now_us"])  # rig pose when the route was valid
            route_local = convert.from_rig(pts, origin)
        route, command = convert.route_observation(route_local, tuple(pose))
        obs: dict[str, Any] = {
            "ego_history": hist["ego_history"],
            "speed": hist["speed"],
            "acceleration": hist["acceleration"],
            "route": route,
            "command": np.int64(command),
            "pose": pose,
            "step": np.int64(round(hist["now_us"] / convert.STEP_US)),
            # The contract carries no agent list: vision policies see agents in the cameras.
            "agents": np.zeros((MAX_AGENTS, 8), dtype=np.float32),
            "agents_mask": np.zeros((MAX_AGENTS,), dtype=bool),
        }
        if s.images:
            obs["cameras"] = {n: img for n, (_, img) in s.images.items()}
        return obs

    def drive(self, request: egodriver_pb2.DriveRequest, context) -> egodriver_pb2.DriveResponse:
        def go():
            s = self._session(request.session_uuid)
            with s.lock:  # one drive at a time per session; other sessions run in parallel
                if request.time_now_us:  # 0: not given, the latest egomotion's time is used
                    s.ego.check_time_now(int(request.time_now_us))
                obs = self.observation(s)
                if obs is None:
                    return egodriver_pb2.DriveResponse(
                        debug_info=egodriver_pb2.DriveResponse.DebugInfo(
                            unstructured_debug_info=convert.pack_debug(
                                {"policy_name": self.name, "status": "not_ready", "num_poses": len(s.ego.ts)}
                            )
                        )
                    )
                anchor_us, anchor = s.ego.latest  # type: ignore[misc]
                t0 = time.perf_counter()
                try:
                    out = s.policy.act(obs)
                    plan = validate_plan(out.trajectory, where=f"policy {self.name}")
                except Exception as e:
                    raise _Abort(
                        grpc.StatusCode.INTERNAL, f"policy {self.name}: {type(e).__name__}: {e}"
                    ) from e
                elapsed = time.perf_counter() - t0
                s.drives += 1
            now_us = int(request.time_now_us) or anchor_us
            resp = egodriver_pb2.DriveResponse()
            resp.trajectory.CopyFrom(convert.plan_to_local(plan, anchor, anchor_us, now_us))
            if out.samples is not None:
                samples = np.asarray(out.samples, dtype=np.float64)
                if samples.ndim == 3 and samples.shape[-1] == 3 and np.isfinite(samples).all():
                    for k in range(samples.shape[0]):
                        resp.debug_info.sampled_trajectories.append(
                            convert.plan_to_local(samples[k], anchor, anchor_us, now_us)
                        )
            cmd = int(obs["command"])
            resp.debug_info.unstructured_debug_info = convert.pack_debug(
                {
                    "policy_name": self.name,
                    "inference_seconds": float(elapsed),
                    "reasoning_text": out.reasoning,
                    "command": cmd,
                    "command_name": COMMAND_NAMES[cmd],
                    "num_poses": len(s.ego.ts),
                    "trajectory_points": len(resp.trajectory.poses),
                    "scalars": {
                        str(k): float(v)
                        for k, v in (out.extra or {}).items()
                        if isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
                    },
                }
            )
            return resp

        return self._run(context, go)


def build_server(
    service: EgodriverService, *, host: str = "127.0.0.1", port: int = 0, max_workers: int = 16
) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) gRPC server for ``service``; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS)
    egodriver_pb2_grpc.add_EgodriverServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server, bound


def policy_factory(spec: str, options: dict[str, Any]):
    """A zero-argument callable building a fresh policy per session (one instance per session).

    Fails now, at start-up, on a bad name or option, or on a policy that cannot drive from the
    egodriver contract (:func:`~alpasim_policy.serve.service.check_servable`).
    """
    from alpasim_policy.policies.registry import make_policy

    check_servable(make_policy(spec, **options), spec)
    return lambda: make_policy(spec, **options)
