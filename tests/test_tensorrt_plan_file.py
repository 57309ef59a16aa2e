"""Engine files on disk: the Ultralytics 4-byte-length + JSON header, plain plans, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vap_video.engines.tensorrt.plan_file import (
    atomic_write,
    find_sidecar,
    read_engine_file,
    read_sidecar_raw,
    split_header,
    with_header,
    write_sidecar,
)
from vap_video.engines.tensorrt.runtime import ultralytics_metadata

PLAN = bytes(range(256)) * 64  # stands in for a serialized plan (binary)


def test_header_round_trip():
    meta = {"names": {"0": "person"}, "imgsz": [640, 640], "stride": 32}
    blob = with_header(PLAN, meta)
    assert int.from_bytes(blob[:4], "little") == len(json.dumps(meta, separators=(",", ":")))
    got, plan = split_header(blob)
    assert got == meta and plan == PLAN


@pytest.mark.parametrize("blob", [
    PLAN,                                                   # plain plan: length field is huge / binary
    b"",                                                    # empty file
    b"\x05\x00\x00\x00{bad}" + PLAN,                       # plausible length, not JSON
    b"\x04\x00\x00\x00[12]" + PLAN,                        # JSON but not an object
    (10**6).to_bytes(4, "little") + b"{}" + PLAN[:10],     # length beyond the file
    (-5).to_bytes(4, "little", signed=True) + PLAN,         # negative length
    b"\x03\x00\x00\x00{\xff}" + PLAN,                    # starts like JSON, not UTF-8
])
def test_not_a_header_means_plain_plan(blob: bytes):
    meta, plan = split_header(blob)
    assert meta is None and plan == blob


def test_read_engine_file(tmp_path: Path):
    p = tmp_path / "yolo.engine"
    p.write_bytes(with_header(PLAN, {"stride": 32}))
    assert read_engine_file(p) == ({"stride": 32}, PLAN)
    p.write_bytes(PLAN)
    assert read_engine_file(p) == (None, PLAN)


def test_ultralytics_header_maps_to_our_keys():
    header = {"description": "Ultralytics YOLO26n", "version": "8.4.1", "stride": 32, "task": "detect", "batch": 1,
              "imgsz": [640, 640], "names": {"0": "person"}, "end2end": True,
              "args": {"half": False, "int8": True, "max_det": 100}}
    meta = ultralytics_metadata(header)
    assert meta == {"names": {"0": "person"}, "imgsz": [640, 640], "stride": 32, "end2end": True, "task": "detect",
                    "precision": "int8", "max_det": 100, "source_model": "Ultralytics 8.4.1 export"}


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch):
    target = tmp_path / "a.engine"
    atomic_write(target, b"old")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.engine"]  # no temporary left behind


def test_sidecar_read_write(tmp_path: Path):
    engine = tmp_path / "m.engine"
    assert read_sidecar_raw(engine) is None
    write_sidecar(engine, {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.engine.json").is_file() and not (tmp_path / "m.json").exists()
    assert read_sidecar_raw(engine) == {"a": [1, 2], "b": 1}
    (tmp_path / "m.engine.json").write_text("{")
    with pytest.raises(ValueError, match="m.engine.json is not valid JSON"):
        read_sidecar_raw(engine)


def test_sidecar_does_not_clash_with_the_onnx_export_sidecar(tmp_path: Path):
    engine = tmp_path / "m.engine"
    # vap export writes m.onnx + m.json (string-encoded ONNX metadata): not a TensorRT sidecar.
    onnx_sidecar = {"vap_format": "1", "names": '{"0": "person"}', "imgsz": "[64, 64]"}
    (tmp_path / "m.json").write_text(json.dumps(onnx_sidecar))
    assert find_sidecar(engine) is None and read_sidecar_raw(engine) is None
    (tmp_path / "m.json").write_text("{ not json: some other tool's file")
    assert read_sidecar_raw(engine) is None
    # An engine built before the rename: its m.json has `format`, so it is still read...
    (tmp_path / "m.json").write_text(json.dumps({"format": "vap.trt/1", "names": {}}))
    assert find_sidecar(engine) == tmp_path / "m.json"
    assert read_sidecar_raw(engine) == {"format": "vap.trt/1", "names": {}}
    # ...until the new name exists, which wins; writing never touches m.json.
    write_sidecar(engine, {"format": "vap.trt/1", "new": True})
    assert read_sidecar_raw(engine)["new"] is True
    assert json.loads((tmp_path / "m.json").read_text()) == {"format": "vap.trt/1", "names": {}}
