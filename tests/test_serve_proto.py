"""The wire contract: our stubs match the one carla-driver-interface ships (an independent
copy of AlpaSim's), coexist with it in one process, and are current w.r.t. the .proto files."""

from __future__ import annotations

import pytest

from alpasim_policy.serve import gen_proto
from alpasim_policy.serve.proto import common_pb2, egodriver_pb2, sensorsim_pb2

theirs = pytest.importorskip("carla_driver_interface._proto.egodriver_pb2")
from carla_driver_interface._proto import common_pb2 as their_common  # noqa: E402
from carla_driver_interface._proto import sensorsim_pb2 as their_sensorsim  # noqa: E402


def _fields(desc):
    return {
        f.name: (f.number, f.type, f.message_type.full_name if f.message_type else None) for f in desc.fields
    }


def _assert_superset(ours, their, path):
    assert ours.full_name == their.full_name
    o, t = _fields(ours), _fields(their)
    for name, spec in t.items():
        assert o.get(name) == spec, f"{path}.{name}: ours {o.get(name)} vs theirs {spec}"
    for nested in their.nested_types:
        _assert_superset(ours.nested_types_by_name[nested.name], nested, f"{path}.{nested.name}")
    for enum in their.enum_types:
        assert {v.name: v.number for v in ours.enum_types_by_name[enum.name].values} == {
            v.name: v.number for v in enum.values
        }


@pytest.mark.parametrize(
    "ours,their",
    [(common_pb2, their_common), (sensorsim_pb2, their_sensorsim), (egodriver_pb2, theirs)],
    ids=["common", "sensorsim", "egodriver"],
)
def test_same_names_and_field_numbers(ours, their):
    assert ours.DESCRIPTOR.package == their.DESCRIPTOR.package
    assert ours.DESCRIPTOR.name == their.DESCRIPTOR.name  # alpasim_grpc/v0/*.proto
    for name, desc in their.DESCRIPTOR.message_types_by_name.items():
        _assert_superset(ours.DESCRIPTOR.message_types_by_name[name], desc, name)
    for name, enum in their.DESCRIPTOR.enum_types_by_name.items():
        assert {v.name: v.number for v in ours.DESCRIPTOR.enum_types_by_name[name].values} == {
            v.name: v.number for v in enum.values
        }
    for name, svc in their.DESCRIPTOR.services_by_name.items():
        mine = ours.DESCRIPTOR.services_by_name[name]
        assert mine.full_name == svc.full_name
        for m in svc.methods:
            mm = mine.methods_by_name[m.name]
            assert (mm.input_type.full_name, mm.output_type.full_name) == (
                m.input_type.full_name,
                m.output_type.full_name,
            )


def test_bytes_round_trip_between_both_stub_sets():
    req = egodriver_pb2.DriveSessionRequest(session_uuid="abc", random_seed=2**63 + 5)
    req.debug_info.scene_id = "scene"
    cam = req.rollout_spec.vehicle.available_cameras.add(logical_id="camera_front")
    cam.intrinsics.opencv_pinhole_param.focal_length_x = 1000.0
    cam.rig_to_camera.quat.w = 1.0
    parsed = theirs.DriveSessionRequest.FromString(req.SerializeToString())
    assert parsed.random_seed == 2**63 + 5 and parsed.debug_info.scene_id == "scene"
    assert parsed.rollout_spec.vehicle.available_cameras[0].intrinsics.WhichOneof("camera_param") == (
        "opencv_pinhole_param"
    )
    back = egodriver_pb2.DriveSessionRequest.FromString(parsed.SerializeToString())
    assert back == req


def test_private_pool_keeps_default_pool_free():
    from google.protobuf import descriptor_pool

    # carla-driver-interface owns these names in the default pool; ours are elsewhere.
    default = descriptor_pool.Default().FindMessageTypeByName("egodriver.DriveRequest")
    assert default is not egodriver_pb2.DriveRequest.DESCRIPTOR
    assert default.file.pool is not egodriver_pb2.DESCRIPTOR.pool


def test_committed_stubs_are_current():
    assert gen_proto.main(["--check"]) == 0


def test_check_tolerates_another_grpcio_tools_but_not_another_contract():
    files = gen_proto.generate()
    other_tools = {n: t.replace("(grpcio-tools ", "(grpcio-tools 0.0.0-other ", 1) for n, t in files.items()}
    assert gen_proto.stale_modules(other_tools) == []  # version stamps differ, descriptors equal
    changed = dict(other_tools)
    changed["egodriver_pb2.py"] = changed["egodriver_pb2.py"].replace("random_seed", "random_sead", 1)
    assert gen_proto.stale_modules(changed) == ["egodriver_pb2.py"]
    edited = dict(files)
    edited["common_pb2.py"] += "\n# hand edit\n"
    assert gen_proto.stale_modules(edited) == ["common_pb2.py"]
