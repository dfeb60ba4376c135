"""Conversions between AlpaSim's egodriver messages and our Policy observation / plan.

Shared by the server (``service.py``), the client (``client.py``) and the in-process AlpaSim
plugin (``alpasim_plugin.py``) so the frame conventions live in one place:

* **local**: AlpaSim's fixed world frame of a rollout. Egomotion and drive-response poses are
  local -> rig transforms, i.e. the rig pose expressed in the local frame. Our client uses the
  scene frame as the local frame.
* **rig**: x forward, y left, z up, origin on the ground below the rear axle (also ours).
* Plans: ours are (T, 3) rig-frame x, y, heading at ``now + (i + 1) * 0.1 s``; AlpaSim's are
  local-frame ``PoseAtTime``s led by the current pose.
* Cameras: ``AvailableCamera.rig_to_camera`` is the pose of the camera's *optical* frame
  (x right, y down, z along the optical axis) in the rig -- the same convention as our
  ``Camera.rig_T_cam`` (4x4, optical camera frame -> rig).

Every validation failure raises :class:`RequestError` naming the offending field, which the
server maps to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import bisect
import math
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from alpasim_policy.errors import AlpasimError, ConfigError
from alpasim_policy.policies.base import (
    HISTORY_STEPS,
    ROUTE_POINTS,
    ROUTE_SPACING_M,
)
from alpasim_policy.scenes.geometry import Polyline, rig_to_scene_xy, scene_to_rig_xy, wrap_angle
from alpasim_policy.serve.proto import common_pb2, sensorsim_pb2
from alpasim_policy.sim.command import LATERAL_THRESHOLD_M, LOOKAHEAD_M
from alpasim_policy.sim.command import route_observation as route_observation_rule

if TYPE_CHECKING:  # rendering (cv2) is imported only when a session declares cameras
    from alpasim_policy.render.cameras import Camera

STEP_US = 100_000  # our 10 Hz tick
TIME_TOL_US = 1_000  # timestamps closer than 1 ms are "the same time"
# AlpaSim's route -> command rule (see alpasim_policy.sim.command).
COMMAND_LOOKAHEAD_M = LOOKAHEAD_M
COMMAND_LATERAL_M = LATERAL_THRESHOLD_M
MAX_BUFFERED_POSES = 256  # 25 s at 10 Hz: far more than any history a policy reads
# How far drive's time_now_us may lie from the latest egomotion (either way). AlpaSim and
# carla-driver-interface's loop submit the egomotion of "now" before each drive, so a gap of a
# second (10 ticks) already means the observations are stale or the clocks disagree (e.g. time
# in seconds vs microseconds); planning from them would answer with a plan for the wrong time.
MAX_TIME_GAP_US = 1_000_000


class RequestError(AlpasimError, ValueError):
    """A request field is malformed; ``field`` is its path in the message (e.g. ``trajectory.poses[3]``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# ----------------------------------------------------------------------------- poses


def quat_to_yaw(w: float, x: float, y: float, z: float) -> float:
    """Yaw (rotation about +z) of a unit quaternion, radians."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def quat_mul(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    """Hamilton product of (w, x, y, z) quaternions: rotation ``a`` then, in its frame, ``b``."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(0.5 * yaw), 0.0, 0.0, math.sin(0.5 * yaw))


def pose_proto(x: float, y: float, yaw: float, z: float = 0.0, quat: tuple | None = None) -> common_pb2.Pose:
    w, qx, qy, qz = quat if quat is not None else yaw_quat(yaw)
    return common_pb2.Pose(
        vec=common_pb2.Vec3(x=float(x), y=float(y), z=float(z)),
        quat=common_pb2.Quat(w=float(w), x=float(qx), y=float(qy), z=float(qz)),
    )


@dataclass(frozen=True)
class LocalPose:
    """A rig pose in the local frame: position, yaw, and the full quaternion (kept for roll/pitch)."""

    x: float
    y: float
    z: float
    yaw: float
    quat: tuple[float, float, float, float]


def parse_pose(p: common_pb2.Pose, where: str) -> LocalPose:
    vals = (p.vec.x, p.vec.y, p.vec.z, p.quat.w, p.quat.x, p.quat.y, p.quat.z)
    if not all(math.isfinite(v) for v in vals):
        raise RequestError(where, "pose contains NaN/inf")
    n = math.sqrt(sum(v * v for v in vals[3:]))
    if n < 1e-6:
        raise RequestError(f"{where}.quat", "quaternion has zero norm (unset?)")
    q = tuple(v / n for v in vals[3:])
    return LocalPose(vals[0], vals[1], vals[2], quat_to_yaw(*q), q)  # type: ignore[arg-type]


def to_rig(xy: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """Points (N, 2) in a frame -> the rig frame of pose ``origin`` = (x, y, yaw) in that frame."""
    return scene_to_rig_xy(xy, origin)


def from_rig(xy: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """Points (N, 2) in the rig frame of ``origin`` -> the frame ``origin`` is expressed in."""
    return rig_to_scene_xy(xy, origin)


# ----------------------------------------------------------------------------- session buffers


@dataclass
class EgoBuffer:
    """Egomotion received so far in one session: local-frame rig poses and rig-frame dynamics."""

    ts: list[int] = field(default_factory=list)
    poses: list[LocalPose] = field(default_factory=list)
    speeds: list[float | None] = field(default_factory=list)  # signed forward speed, m/s
    accels: list[float | None] = field(default_factory=list)  # longitudinal, m/s^2
    trimmed_until_us: int | None = None  # newest timestamp dropped by the buffer limit

    def add_message(self, trajectory: common_pb2.Trajectory, states: list[common_pb2.DynamicState]) -> None:
        """Validate everything first, then insert, so a bad request leaves the buffer untouched.

        Time only moves forward: within a message the timestamps must increase strictly, and a
        pose older than the latest one received must be a resend of a known time (overlapping
        history windows are fine); anything else is a ``RequestError`` naming the pose's
        ``timestamp_us``. Resends of history already dropped by the buffer limit are ignored.
        """
        if states and len(states) != len(trajectory.poses):
            raise RequestError(
                "dynamic_states",
                f"{len(states)} entries for {len(trajectory.poses)} trajectory poses (must be 1:1 or empty)",
            )
        parsed = []
        for i, pat in enumerate(trajectory.poses):
            pose = parse_pose(pat.pose, f"trajectory.poses[{i}].pose")
            speed = accel = None
            if states:
                st = states[i]
                if st.HasField("linear_velocity"):
                    v = st.linear_velocity
                    if not (math.isfinite(v.x) and math.isfinite(v.y)):
                        raise RequestError(f"dynamic_states[{i}].linear_velocity", "contains NaN/inf")
                    speed = math.copysign(math.hypot(v.x, v.y), v.x if v.x != 0 else 1.0)
                if st.HasField("linear_acceleration"):
                    a = st.linear_acceleration.x
                    if not math.isfinite(a):
                        raise RequestError(f"dynamic_states[{i}].linear_acceleration", "contains NaN/inf")
                    accel = float(a)
            t = int(pat.timestamp_us)
            where = f"trajectory.poses[{i}].timestamp_us"
            if parsed and t <= parsed[-1][0]:
                raise RequestError(
                    where,
                    f"{t} us is not after the previous pose's {parsed[-1][0]} us (must increase strictly)",
                )
            if self.ts and t < self.ts[-1] - TIME_TOL_US and not self._known(t):
                raise RequestError(
                    where,
                    f"{t} us goes back before the latest egomotion ({self.ts[-1]} us) and is not a resend "
                    "of a received pose (observations must arrive in time order)",
                )
            parsed.append((t, pose, speed, accel))
        for t, pose, speed, accel in parsed:
            if self.trimmed_until_us is not None and t <= self.trimmed_until_us + TIME_TOL_US:
                continue  # history already dropped from the buffer: nothing to update
            k = bisect.bisect_left(self.ts, t)
            if k < len(self.ts) and abs(self.ts[k] - t) <= TIME_TOL_US:  # a resend of a known time
                self.poses[k], self.speeds[k], self.accels[k] = pose, speed, accel
                continue
            for lst, v in ((self.ts, t), (self.poses, pose), (self.speeds, speed), (self.accels, accel)):
                lst.insert(k, v)
        if len(self.ts) > MAX_BUFFERED_POSES:
            drop = len(self.ts) - MAX_BUFFERED_POSES
            self.trimmed_until_us = self.ts[drop - 1]
            del self.ts[:drop], self.poses[:drop], self.speeds[:drop], self.accels[:drop]

    def _known(self, t: int) -> bool:
        """``t`` is (within 1 ms) a time already received, or older than what the buffer keeps."""
        if self.trimmed_until_us is not None and t <= self.trimmed_until_us + TIME_TOL_US:
            return True
        k = bisect.bisect_left(self.ts, t - TIME_TOL_US)
        return k < len(self.ts) and abs(self.ts[k] - t) <= TIME_TOL_US

    def check_time_now(self, now_us: int, where: str = "time_now_us") -> None:
        """Refuse a drive time far (more than :data:`MAX_TIME_GAP_US`) from the latest egomotion."""
        if not self.ts:
            return
        latest = self.ts[-1]
        if abs(int(now_us) - latest) > MAX_TIME_GAP_US:
            raise RequestError(
                where,
                f"{int(now_us)} us is {abs(int(now_us) - latest) / 1e6:.3g} s "
                f"{'after' if now_us > latest else 'before'} the latest egomotion observation "
                f"({latest} us); at most {MAX_TIME_GAP_US / 1e6:g} s apart (are both in microseconds "
                "of the same clock?)",
            )

    @property
    def latest(self) -> tuple[int, LocalPose] | None:
        return (self.ts[-1], self.poses[-1]) if self.ts else None

    def pose_at(self, t: int) -> tuple[float, float, float]:
        """(x, y, yaw) in the local frame at time ``t``, interpolated (held at the ends)."""
        ts = np.asarray(self.ts, dtype=np.float64)
        xs = np.array([p.x for p in self.poses])
        ys = np.array([p.y for p in self.poses])
        yaws = np.unwrap([p.yaw for p in self.poses])
        return (float(np.interp(t, ts, xs)), float(np.interp(t, ts, ys)), float(np.interp(t, ts, yaws)))

    def history(self, steps: int = HISTORY_STEPS, min_steps: int = HISTORY_STEPS) -> dict[str, Any] | None:
        """The observation's ``ego_history`` / ``speed`` / ``acceleration``, or None if too little history.

        Rows are at ``latest - k * 0.1 s``. Rows older than the first received pose (allowed when
        ``min_steps < steps``) are extrapolated backwards at the first pose's speed and heading.
        """
        if not self.ts:
            return None
        t_now = self.ts[-1]
        times = t_now - STEP_US * np.arange(steps - 1, -1, -1, dtype=np.int64)
        covered = int(np.sum(times >= self.ts[0] - TIME_TOL_US))
        if covered < max(1, min_steps):
            return None
        ts = np.asarray(self.ts, dtype=np.float64)
        xs = np.array([p.x for p in self.poses])
        ys = np.array([p.y for p in self.poses])
        yaws = np.unwrap([p.yaw for p in self.poses])
        speeds = self._speeds(ts, xs, ys)
        hx, hy, hyaw, hv = (np.interp(times, ts, a) for a in (xs, ys, yaws, speeds))
        early = times < self.ts[0] - TIME_TOL_US
        if early.any():  # constant-velocity extrapolation backwards
            dt = (times[early] - self.ts[0]) * 1e-6
            hx[early] = xs[0] + speeds[0] * dt * math.cos(yaws[0])
            hy[early] = ys[0] + speeds[0] * dt * math.sin(yaws[0])
            hyaw[early], hv[early] = yaws[0], speeds[0]
        cur = (hx[-1], hy[-1], hyaw[-1])
        xy = to_rig(np.stack([hx, hy], axis=1), cur)
        hist = np.zeros((steps, 4), dtype=np.float32)
        hist[:, :2] = xy
        hist[:, 2] = wrap_angle(hyaw - hyaw[-1])
        hist[:, 3] = hv
        accel = self.accels[-1]
        if accel is None:
            accel = float((hv[-1] - hv[-2]) / (STEP_US * 1e-6)) if steps >= 2 and covered >= 2 else 0.0
        return {
            "ego_history": hist,
            "speed": np.float32(hv[-1]),
            "acceleration": np.float32(accel),
            "now_us": int(t_now),
            "pose": np.array(cur, dtype=np.float64),
        }

    def _speeds(self, ts: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Reported speeds where given, else finite differences of the poses."""
        n = len(ts)
        fd = np.zeros(n)
        if n >= 2:
            d = np.hypot(np.diff(xs), np.diff(ys)) / np.maximum(np.diff(ts) * 1e-6, 1e-6)
            fd[1:] = d
            fd[0] = d[0]
        return np.array([s if s is not None else fd[i] for i, s in enumerate(self.speeds)], dtype=np.float64)


# ----------------------------------------------------------------------------- route


def parse_waypoints(waypoints, where: str = "route.waypoints") -> np.ndarray:
    pts = np.array([[w.x, w.y] for w in waypoints], dtype=np.float64).reshape(-1, 2)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise RequestError(f"{where}[{int(np.argmax(bad))}]", "contains NaN/inf")
    return pts


def route_observation(
    route_xy: np.ndarray | None, pose: tuple[float, float, float]
) -> tuple[np.ndarray, int]:
    """The observation's ``route`` and ``command`` from route points and the rig ``pose``, same frame.

    The env's own rule (:func:`alpasim_policy.sim.command.route_observation`): only the route ahead
    of the rig's projection, clamped at its end, so a policy behind AlpaSim sees what it saw in
    simulation. No route (or fewer than two distinct points) -> a straight route along the rig's x
    axis; a single point -> the segment from the rig to it.
    """
    pts = np.zeros((0, 2)) if route_xy is None else np.asarray(route_xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 1:
        pts = np.vstack([np.asarray(pose, dtype=np.float64)[:2], pts])
    try:
        route = Polyline(pts)
    except ValueError:  # no usable route: straight ahead, as far as the observation reaches
        route = Polyline(from_rig(np.array([[0.0, 0.0], [ROUTE_SPACING_M * ROUTE_POINTS, 0.0]]), pose))
    return route_observation_rule(
        route, np.asarray(pose, dtype=np.float64), COMMAND_LOOKAHEAD_M, COMMAND_LATERAL_M
    )


# ----------------------------------------------------------------------------- plans


def plan_to_local(
    plan_rig: np.ndarray, anchor: LocalPose, anchor_us: int, now_us: int, dt_us: int = STEP_US
) -> common_pb2.Trajectory:
    """A rig-frame plan (T, 3) -> AlpaSim's local-frame trajectory: the anchor pose, then the plan.

    Plan row ``i`` is at ``now + (i + 1) * dt``. Orientation composes the anchor's full quaternion
    with the planned heading change, so the anchor's roll / pitch are kept.
    """
    traj = common_pb2.Trajectory()
    traj.poses.add(
        pose=pose_proto(anchor.x, anchor.y, anchor.yaw, anchor.z, anchor.quat), timestamp_us=anchor_us
    )
    plan = np.asarray(plan_rig, dtype=np.float64)
    if len(plan) == 0:
        return traj
    xy = from_rig(plan[:, :2], (anchor.x, anchor.y, anchor.yaw))
    base = max(int(now_us), int(anchor_us))
    for i, ((x, y), h) in enumerate(zip(xy, plan[:, 2], strict=True)):
        q = quat_mul(anchor.quat, yaw_quat(float(h)))
        traj.poses.add(pose=pose_proto(x, y, 0.0, anchor.z, q), timestamp_us=base + (i + 1) * dt_us)
    return traj


def local_to_plan(
    trajectory: common_pb2.Trajectory,
    current: tuple[float, float, float],
    now_us: int,
    dt_us: int = STEP_US,
    where: str = "trajectory",
) -> np.ndarray:
    """AlpaSim's local-frame trajectory -> our rig-frame (T, 3) plan at ``now + (i + 1) * dt``.

    The poses are resampled (linear in x, y and unwrapped yaw) at our 0.1 s steps up to the last
    timestamp, whatever spacing the server used. Fewer than 2 poses -> an empty (0, 3) plan.
    """
    n = len(trajectory.poses)
    if n < 2:
        return np.zeros((0, 3))
    ts = np.array([p.timestamp_us for p in trajectory.poses], dtype=np.float64)
    if np.any(np.diff(ts) <= 0):
        raise RequestError(f"{where}.poses", "timestamps are not strictly increasing")
    poses = [parse_pose(p.pose, f"{where}.poses[{i}].pose") for i, p in enumerate(trajectory.poses)]
    xs = np.array([p.x for p in poses])
    ys = np.array([p.y for p in poses])
    yaws = np.unwrap([p.yaw for p in poses])
    q = now_us + dt_us * np.arange(1, int((ts[-1] - now_us + TIME_TOL_US) // dt_us) + 1)
    if len(q) == 0:
        return np.zeros((0, 3))
    px, py, pyaw = (np.interp(q, ts, a) for a in (xs, ys, yaws))
    out = np.zeros((len(q), 3))
    out[:, :2] = to_rig(np.stack([px, py], axis=1), current)
    out[:, 2] = wrap_angle(pyaw - current[2])
    return out


# ----------------------------------------------------------------------------- debug payload


class _BuiltinsOnly(pickle.Unpickler):
    """Unpickles only builtin containers / scalars: a peer's debug bytes must not run code here."""

    def find_class(self, module: str, name: str):  # noqa: D102
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a remote debug payload")


def pack_debug(info: dict[str, Any]) -> bytes:
    """AlpaSim's convention for ``unstructured_debug_info``: a pickled dict of builtins."""
    return pickle.dumps(info, protocol=4)


def unpack_debug(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None
    import io

    try:
        out = _BuiltinsOnly(io.BytesIO(payload)).load()
    except Exception:  # foreign format (e.g. a protobuf message): not ours to read
        return None
    return out if isinstance(out, dict) else None


# ----------------------------------------------------------------------------- cameras


@dataclass
class RemoteCameraRig:
    """The cameras a session declared (our :class:`~alpasim_policy.render.cameras.Camera`, with the
    declared projection in ``model``), before their names are checked; iterable, indexable by name."""

    cameras: list[Camera]

    def __iter__(self):
        return iter(self.cameras)

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, name: str) -> Camera:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]


def encode_jpeg(rgb: np.ndarray, quality: int = 90, where: str = "image") -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (what ``camera_image.image_bytes`` carries)."""
    import cv2

    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
    )
    if not ok:
        raise ConfigError(f"{where}: cannot JPEG-encode an image of shape {np.shape(rgb)}")
    return buf.tobytes()


def to_camera_rig(remote: RemoteCameraRig, name: str = "remote") -> Any:
    """Our ``render.cameras.CameraRig`` for the declared cameras (what ``Policy.reset`` receives).

    The declared projection models are kept in ``metadata["models"]``.
    """
    from dataclasses import replace

    from alpasim_policy.render.cameras import CameraRig

    cams = [replace(c, rig_T_cam=c.rig_T_cam.copy()) for c in remote.cameras]
    return CameraRig(name, cams, {"models": {c.name: c.model for c in remote.cameras}})


def _quat_matrix(w: float, x: float, y: float, z: float) -> np.ndarray:
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def camera_from_proto(cam: sensorsim_pb2.AvailableCamerasReturn.AvailableCamera, where: str) -> Camera:
    name = cam.logical_id or cam.intrinsics.logical_id
    if not name:
        raise RequestError(f"{where}.logical_id", "empty")
    spec = cam.intrinsics
    w, h = int(spec.resolution_w), int(spec.resolution_h)
    kind = spec.WhichOneof("camera_param")
    if kind == "opencv_pinhole_param" or kind == "opencv_fisheye_param":
        p = getattr(spec, kind)
        fx, fy, cx, cy = p.focal_length_x, p.focal_length_y, p.principal_point_x, p.principal_point_y
        model = "pinhole" if kind == "opencv_pinhole_param" else "fisheye"
    elif kind == "ftheta_param":
        p = spec.ftheta_param
        if len(p.angle_to_pixeldist_poly) > 1 and p.angle_to_pixeldist_poly[1] > 0:
            f = p.angle_to_pixeldist_poly[1]
        elif len(p.pixeldist_to_angle_poly) > 1 and p.pixeldist_to_angle_poly[1] > 0:
            f = 1.0 / p.pixeldist_to_angle_poly[1]
        else:
            raise RequestError(
                f"{where}.intrinsics.ftheta_param", "no linear polynomial term to derive a focal length"
            )
        fx = fy = f
        cx, cy = p.principal_point_x, p.principal_point_y
        model = "ftheta"
    else:
        raise RequestError(f"{where}.intrinsics", "no camera model (camera_param oneof unset)")
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise RequestError(f"{where}.intrinsics", f"invalid focal lengths ({fx}, {fy}) or principal point")
    pose = parse_pose(cam.rig_to_camera, f"{where}.rig_to_camera")
    T = np.eye(4)
    T[:3, :3] = _quat_matrix(*pose.quat)
    T[:3, 3] = (pose.x, pose.y, pose.z)
    from alpasim_policy.render.cameras import Camera

    try:
        return Camera(name, w, h, float(fx), float(fy), float(cx), float(cy), T, model)
    except ConfigError as e:
        raise RequestError(f"{where}", str(e)) from e


def camera_to_proto(cam: Any) -> sensorsim_pb2.AvailableCamerasReturn.AvailableCamera:
    """One of our ``Camera`` objects (name, width, height, fx, fy, cx, cy, rig_T_cam) -> AvailableCamera."""
    from scipy.spatial.transform import Rotation

    T = np.asarray(cam.rig_T_cam, dtype=np.float64)
    qx, qy, qz, qw = Rotation.from_matrix(T[:3, :3]).as_quat()
    out = sensorsim_pb2.AvailableCamerasReturn.AvailableCamera(logical_id=str(cam.name))
    out.rig_to_camera.CopyFrom(pose_proto(T[0, 3], T[1, 3], 0.0, T[2, 3], (qw, qx, qy, qz)))
    spec = out.intrinsics
    spec.logical_id = str(cam.name)
    spec.resolution_w, spec.resolution_h = int(cam.width), int(cam.height)
    spec.shutter_type = sensorsim_pb2.GLOBAL
    p = spec.opencv_pinhole_param
    p.focal_length_x, p.focal_length_y = float(cam.fx), float(cam.fy)
    p.principal_point_x, p.principal_point_y = float(cam.cx), float(cam.cy)
    return out


def rig_cameras(camera_rig: Any) -> list[Any]:
    """The cameras of a rig object (ours: ``.cameras``; also a dict or a plain iterable)."""
    if camera_rig is None:
        return []
    cams = getattr(camera_rig, "cameras", camera_rig)
    if isinstance(cams, dict):
        cams = list(cams.values())
    return list(cams)
