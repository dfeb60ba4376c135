"""``alpasim-policy bench serve``: what the egodriver server costs on top of the policy.

1. ``drive`` round-trip overhead on loopback with 4 cameras of 1920x1080 JPEG submitted every
   tick: client-measured ``drive`` round trip minus the policy's own ``act`` time (measured in
   the server and returned in the debug info). Goal: <= 5 ms. The full tick (4 image uploads +
   server-side JPEG decode, egomotion, route, drive) is reported too.
2. 32 concurrent sessions (one client thread each) driven for 100 ticks each, with 4 small
   cameras per session, counting errors (goal: none).

The policy is :class:`~alpasim_policy.serve.testing.RouteCruisePolicy` (sub-millisecond), so the
numbers are the server's, not a model's. Images are synthetic road-like pictures (sky, grey road,
lane marks, sensor noise) encoded once at quality 90, so their JPEG size is realistic.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import numpy as np


def _image(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    horizon = height // 2
    img[:horizon] = (110, 160, 220)
    img[horizon:] = (80, 80, 80)
    ys, xs = np.mgrid[horizon:height, 0:width]
    for lane in (-1.5, 0.0, 1.5):  # lane marks converging to the vanishing point
        u = width / 2 + lane * (ys - horizon) * width / height
        img[horizon:][np.abs(xs - u) < 2 + (ys - horizon) / 60] = 235
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


class _Driver:
    """One client session: submits the tick's observations and drives."""

    def __init__(self, stub: Any, rig: Any, images: dict[str, bytes], seed: int):
        from alpasim_policy.serve import convert
        from alpasim_policy.serve.proto import egodriver_pb2

        self.stub, self.images, self.sid = stub, images, str(uuid.uuid4())
        req = egodriver_pb2.DriveSessionRequest(session_uuid=self.sid, random_seed=seed)
        for cam in rig.cameras if rig is not None else []:
            req.rollout_spec.vehicle.available_cameras.append(convert.camera_to_proto(cam))
        stub.start_session(req, timeout=60)
        self.k = 0

    def tick(self) -> tuple[float, float, float]:
        """Returns (tick seconds, drive round-trip seconds, policy seconds reported by the server)."""
        from alpasim_policy.serve import convert
        from alpasim_policy.serve.proto import common_pb2, egodriver_pb2

        t = 1_000_000 + self.k * convert.STEP_US
        x = 5.0 * self.k * 0.1
        t0 = time.perf_counter()
        for name, data in self.images.items():
            msg = egodriver_pb2.RolloutCameraImage(session_uuid=self.sid)
            msg.camera_image.logical_id, msg.camera_image.image_bytes = name, data
            msg.camera_image.frame_start_us = msg.camera_image.frame_end_us = t
            self.stub.submit_image_observation(msg, timeout=60)
        ego = egodriver_pb2.RolloutEgoTrajectory(session_uuid=self.sid)
        ego.trajectory.poses.add(pose=convert.pose_proto(x, 0.0, 0.0), timestamp_us=t)
        ego.dynamic_states.add().linear_velocity.x = 5.0
        self.stub.submit_egomotion_observation(ego, timeout=60)
        wps = [common_pb2.Vec3(x=2.0 * i) for i in range(50)]
        self.stub.submit_route(
            egodriver_pb2.RouteRequest(
                session_uuid=self.sid, route=egodriver_pb2.Route(timestamp_us=t, waypoints=wps)
            ),
            timeout=60,
        )
        t1 = time.perf_counter()
        resp = self.stub.drive(egodriver_pb2.DriveRequest(session_uuid=self.sid, time_now_us=t), timeout=60)
        t2 = time.perf_counter()
        self.k += 1
        info = convert.unpack_debug(resp.debug_info.unstructured_debug_info) or {}
        if len(resp.trajectory.poses) == 0:
            return t2 - t0, t2 - t1, math.nan  # not ready yet (history filling)
        return t2 - t0, t2 - t1, float(info.get("inference_seconds", math.nan))

    def close(self) -> None:
        from alpasim_policy.serve.proto import egodriver_pb2

        self.stub.close_session(egodriver_pb2.DriveSessionCloseRequest(session_uuid=self.sid), timeout=60)


def run(args: Any) -> int:
    import grpc

    from alpasim_policy.bench import print_summary, write_rows
    from alpasim_policy.render.cameras import CameraRig
    from alpasim_policy.serve.convert import encode_jpeg
    from alpasim_policy.serve.proto import egodriver_pb2_grpc
    from alpasim_policy.serve.service import GRPC_OPTIONS, EgodriverService, build_server
    from alpasim_policy.serve.testing import RouteCruisePolicy

    service = EgodriverService(lambda: RouteCruisePolicy(camera_preset="alpamayo4"), name="route_cruise")
    server, port = build_server(service, port=0, max_workers=max(16, args.sessions + 4))
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    stub = egodriver_pb2_grpc.EgodriverServiceStub(channel)
    try:
        # ---- 1. overhead with 4 x 1920x1080 JPEG
        rig = CameraRig.from_preset("alpamayo4", args.width, args.height)
        rig = rig.select(rig.names[: args.cameras])
        images = {c.name: encode_jpeg(_image(c.width, c.height, i)) for i, c in enumerate(rig.cameras)}
        d = _Driver(stub, rig, images, seed=0)
        warm = 16 + 5  # history fills (16 steps), then a few warm-up drives
        rows = [d.tick() for _ in range(warm + args.ticks)][warm:]
        d.close()
        tick_s, drive_s, policy_s = (np.array(c) for c in zip(*rows, strict=True))
        overhead_ms = (drive_s - policy_s) * 1e3
        tick_over_ms = (tick_s - policy_s) * 1e3
        jpeg_kb = float(np.mean([len(b) for b in images.values()]) / 1024)

        # ---- 2. N concurrent sessions x ticks
        small = CameraRig.from_preset("alpamayo4", 384, 216)
        small_imgs = {
            c.name: encode_jpeg(_image(c.width, c.height, 10 + i)) for i, c in enumerate(small.cameras)
        }
        errors: list[str] = []
        lat: list[float] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.sessions)

        def worker(i: int) -> None:
            try:
                drv = _Driver(stub, small, small_imgs, seed=i)
                barrier.wait(timeout=120)
                local = []
                for _ in range(args.ticks):
                    local.append(drv.tick()[1])
                drv.close()
                with lock:
                    lat.extend(local)
            except Exception as e:  # counted and reported, the benchmark's point
                with lock:
                    errors.append(f"session {i}: {type(e).__name__}: {e}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        left = service.session_count
    finally:
        channel.close()
        server.stop(0).wait()

    med, p95 = float(np.median(overhead_ms)), float(np.percentile(overhead_ms, 95))
    summary = {
        "drive_overhead_ms_median": round(med, 3),
        "drive_overhead_ms_p95": round(p95, 3),
        "drive_roundtrip_ms_median": round(float(np.median(drive_s) * 1e3), 3),
        "policy_ms_median": round(float(np.median(policy_s) * 1e3), 3),
        "tick_overhead_ms_median": round(float(np.median(tick_over_ms)), 3),
        "jpeg_kib_per_image": round(jpeg_kb, 1),
        "cameras": f"{args.cameras}x{args.width}x{args.height}",
        "concurrent_sessions": args.sessions,
        "concurrent_ticks_each": args.ticks,
        "concurrent_errors": len(errors),
        "concurrent_drives_per_s": round(args.sessions * args.ticks / wall, 1),
        "concurrent_drive_ms_p95": round(float(np.percentile(lat, 95) * 1e3), 2) if lat else None,
        "sessions_left_open": left,
        "overhead_goal_met": med <= 5.0,
    }
    for e in errors[:5]:
        print("error:", e)
    write_rows(
        [
            {
                "benchmark": "serve: drive round-trip overhead (loopback, policy time subtracted)",
                "result": f"median {med:.2f} ms, p95 {p95:.2f} ms (round trip {summary['drive_roundtrip_ms_median']} ms, "
                f"policy {summary['policy_ms_median']} ms); {args.cameras} cameras {args.width}x{args.height} JPEG "
                f"({jpeg_kb:.0f} KiB each) submitted per tick, full tick overhead {summary['tick_overhead_ms_median']} ms",
                "ratio": f"{med / 5.0:.2f} of the 5 ms goal",
            },
            {
                "benchmark": f"serve: {args.sessions} concurrent sessions x {args.ticks} ticks",
                "result": f"{len(errors)} errors, {summary['concurrent_drives_per_s']} drives/s, drive p95 "
                f"{summary['concurrent_drive_ms_p95']} ms (4 cameras 384x216 JPEG per tick)",
                "ratio": "no error: goal met" if not errors else "errors: goal missed",
            },
        ],
        args,
    )
    print_summary(summary)
    return 0 if not errors else 1
