"""Bad scene files and bad source logs give one clear error naming the file (and field)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from alpasim_policy.errors import ImportSourceError, SceneFormatError
from alpasim_policy.io import pack_archive, unpack_archive
from alpasim_policy.scenes import LightState, load_scene

ROOT = Path(__file__).resolve().parents[1] / "scenarios"
SCENE = ROOT / "scenes" / "av2s-7fab2350-w00.npz"
AV2_LOG = next((ROOT / "raw" / "av2" / "sensor").iterdir())
AV2_FC = next((ROOT / "raw" / "av2" / "forecasting").iterdir())
CR_2020A = ROOT / "raw" / "commonroad" / "USA_US101-4_1_T-1.xml"


def _write_modified(tmp_path: Path, edit) -> Path:
    arrays, meta = unpack_archive(SCENE.read_bytes())
    edit(arrays, meta)
    out = tmp_path / "bad.npz"
    out.write_bytes(pack_archive(arrays, meta))
    return out


def _expect(path: Path, field: str | None, match: str):
    with pytest.raises(SceneFormatError, match=match) as ei:
        load_scene(path)
    assert str(path) in str(ei.value)
    assert ei.value.field == field
    return ei.value


def test_committed_scene_loads():
    s = load_scene(SCENE)
    assert s.content_hash and len(s.content_hash) == 64


def test_truncated_file(tmp_path):
    p = tmp_path / "trunc.npz"
    p.write_bytes(SCENE.read_bytes()[: SCENE.stat().st_size // 2])
    _expect(p, None, "truncated or corrupt")


def test_corrupt_zip(tmp_path):
    p = tmp_path / "corrupt.npz"
    data = bytearray(SCENE.read_bytes())
    data[100:400] = b"\x00" * 300  # damage the first member's compressed data
    p.write_bytes(bytes(data))
    with pytest.raises(SceneFormatError) as ei:
        load_scene(p)
    assert str(p) in str(ei.value)


def test_not_a_zip(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("hello")
    _expect(p, None, "not a readable scene archive")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.npz", None, "no such scene file")


def test_nan_field(tmp_path):
    def edit(arrays, meta):
        arrays["ego/state"][3, 0] = np.nan

    _expect(_write_modified(tmp_path, edit), "ego/state", "NaN")


def test_nan_in_map(tmp_path):
    def edit(arrays, meta):
        arrays["lanes/left_boundary/points"][5, 1] = np.inf

    _expect(_write_modified(tmp_path, edit), "lanes/left_boundary", "NaN/inf")


def test_unknown_schema_version(tmp_path):
    def edit(arrays, meta):
        meta["schema_version"] = "9.9"

    _expect(_write_modified(tmp_path, edit), "schema_version", "unknown schema version '9.9'")


def test_missing_map_field(tmp_path):
    def edit(arrays, meta):
        del arrays["lanes/centerline/points"]

    _expect(_write_modified(tmp_path, edit), "lanes/centerline/points", "missing")


def test_missing_metadata_field(tmp_path):
    def edit(arrays, meta):
        del meta["metadata"]["t0_index"]

    _expect(_write_modified(tmp_path, edit), "metadata/t0_index", "missing")


def test_non_monotonic_time(tmp_path):
    def edit(arrays, meta):
        arrays["timestamps"][[4, 5]] = arrays["timestamps"][[5, 4]]

    _expect(_write_modified(tmp_path, edit), "timestamps", "not strictly increasing")


def test_wrong_shape(tmp_path):
    def edit(arrays, meta):
        arrays["agents/state"] = arrays["agents/state"][..., :4]

    _expect(_write_modified(tmp_path, edit), "agents/state", "expected")


def test_route_names_unknown_lane(tmp_path):
    def edit(arrays, meta):
        meta["route"]["lane_ids"].append("no-such-lane")

    _expect(_write_modified(tmp_path, edit), "route/lane_ids", "no-such-lane")


# ----------------------------------------------------------------------------- importers


def _copy_log(tmp_path: Path) -> Path:
    dst = tmp_path / AV2_LOG.name
    shutil.copytree(AV2_LOG, dst)
    return dst


def test_av2_sensor_missing_map(tmp_path):
    from alpasim_policy.scenes.importers.av2 import import_av2_sensor

    log = _copy_log(tmp_path)
    shutil.rmtree(log / "map")
    with pytest.raises(ImportSourceError, match="log_map_archive") as ei:
        import_av2_sensor(log)
    assert str(log / "map") in str(ei.value)


@pytest.mark.parametrize("name", ["annotations.feather", "city_SE3_egovehicle.feather"])
def test_av2_sensor_truncated_feather(tmp_path, name):
    from alpasim_policy.scenes.importers.av2 import import_av2_sensor

    log = _copy_log(tmp_path)
    f = log / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(ImportSourceError, match="truncated or corrupt") as ei:
        import_av2_sensor(log)
    assert str(f) in str(ei.value)


def test_av2_sensor_nan_column(tmp_path):
    from alpasim_policy.scenes.importers.av2 import import_av2_sensor

    log = _copy_log(tmp_path)
    f = log / "annotations.feather"
    t = feather.read_table(f)
    tx = t.column("tx_m").to_numpy().copy()
    tx[7] = np.nan
    feather.write_feather(t.set_column(t.column_names.index("tx_m"), "tx_m", pa.array(tx)), f)
    with pytest.raises(ImportSourceError) as ei:
        import_av2_sensor(log)
    assert ei.value.field == "tx_m" and str(f) in str(ei.value)


def test_av2_map_truncated_json(tmp_path):
    from alpasim_policy.scenes.importers.av2 import import_av2_sensor

    log = _copy_log(tmp_path)
    m = next((log / "map").glob("*.json"))
    m.write_text(m.read_text()[:5000])
    with pytest.raises(ImportSourceError, match="not valid JSON") as ei:
        import_av2_sensor(log)
    assert str(m) in str(ei.value)


def test_av2_forecasting_missing_map_and_truncated_parquet(tmp_path):
    from alpasim_policy.scenes.importers.av2 import import_av2_forecasting

    d = tmp_path / AV2_FC.name
    shutil.copytree(AV2_FC, d)
    pq = next(d.glob("*.parquet"))
    pq.write_bytes(pq.read_bytes()[:2000])
    with pytest.raises(ImportSourceError, match="truncated or corrupt") as ei:
        import_av2_forecasting(d)
    assert str(pq) in str(ei.value)
    next(d.glob("log_map_archive_*.json")).unlink()
    with pytest.raises(ImportSourceError, match="map") as ei:
        import_av2_forecasting(d)
    assert str(d) in str(ei.value)


def test_commonroad_truncated_xml(tmp_path):
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    p = tmp_path / "cut.xml"
    p.write_text(CR_2020A.read_text()[:30000])
    with pytest.raises(ImportSourceError, match="not valid XML") as ei:
        import_commonroad(p)
    assert str(p) in str(ei.value)


def test_commonroad_nan_and_version(tmp_path):
    from alpasim_policy.scenes.importers.commonroad import import_commonroad

    text = CR_2020A.read_text()
    p = tmp_path / "nan.xml"
    i = text.index("<dynamicObstacle")
    j = text.index("<x>", i)
    k = text.index("</x>", j)
    p.write_text(text[: j + 3] + "nan" + text[k:])
    with pytest.raises(ImportSourceError, match="NaN") as ei:
        import_commonroad(p)
    assert str(p) in str(ei.value) and "position" in str(ei.value)
    p.write_text(text.replace('commonRoadVersion="2020a"', 'commonRoadVersion="2099z"'))
    with pytest.raises(ImportSourceError, match="unsupported version") as ei:
        import_commonroad(p)
    assert ei.value.field == "commonRoadVersion"


def test_commonroad_traffic_light_cycle(tmp_path):
    """A 2020a light (red 20, green 30, yellow 5 source steps, offset 3) becomes per-step states."""
    from alpasim_policy.scenes.importers.commonroad import ego_candidates, import_commonroad

    tree = ET.parse(CR_2020A)
    root = tree.getroot()
    ego = ego_candidates(CR_2020A)[0]
    lane = next(ln for ln in root.findall("lanelet") if ln.get("id") == "4")
    ET.SubElement(lane, "trafficLightRef", ref="900")
    tl = ET.SubElement(root, "trafficLight", id="900")
    cyc = ET.SubElement(tl, "cycle")
    for dur, col in ((20, "red"), (30, "green"), (5, "yellow")):
        ce = ET.SubElement(cyc, "cycleElement")
        ET.SubElement(ce, "duration").text = str(dur)
        ET.SubElement(ce, "color").text = col
    ET.SubElement(cyc, "timeOffset").text = "3"
    ET.SubElement(tl, "active").text = "true"
    p = tmp_path / "lights.xml"
    tree.write(p)
    s = import_commonroad(p, egos=[ego])[0]  # the first window starts at the scenario's start
    assert s.metadata.extra["window_start_step"] == 0
    assert [t.lane_id for t in s.map.traffic_lights] == ["4"]
    states = s.map.light_states[0]
    for k in range(s.num_steps):
        tc = (k - 3) % 55
        want = LightState.RED if tc < 20 else LightState.GREEN if tc < 50 else LightState.YELLOW
        assert states[k] == want, k
    # The stop line defaults to the lanelet's end, in the scene frame.
    end = 0.5 * s.map.traffic_lights[0].stop_line.sum(axis=0)
    np.testing.assert_allclose(
        end, 0.5 * (s.map.lane("4").left_boundary[-1] + s.map.lane("4").right_boundary[-1])
    )


def test_malformed_meta_structure(tmp_path):
    def edit(arrays, meta):
        del meta["lanes"][0]["id"]

    _expect(_write_modified(tmp_path, edit), None, "malformed scene content: KeyError")
