"""TensorRT engine files on disk: the plan bytes, an optional embedded header, and our JSON sidecar.

Two layouts are read:

* ours: ``model.engine`` holds the serialized plan exactly as TensorRT wrote it (so ``trtexec
  --loadEngine`` and other tools open it too) and ``model.engine.json`` next to it holds the
  engine contract metadata plus what the plan was built for (TensorRT version, GPU, profiles).
  The full file name is kept (not ``model.json``) because ``vap export``/``vap quantize`` write
  ``model.json`` next to ``model.onnx``: the two sidecars must not overwrite each other when an
  engine sits next to its ONNX model. Engines from before that change have ``model.json``; it is
  still read, but only when it is a vap TensorRT sidecar (has ``format``).
* Ultralytics ``.engine`` exports: a 4-byte little-endian length, that many bytes of UTF-8 JSON
  metadata (names, imgsz, stride, ...), then the plan. Users already have these files, so they
  load unchanged.

Telling the two apart needs no TensorRT: a header is only accepted when the length is plausible
and the bytes after it parse as a JSON object; a plain plan starts with binary data that fails
one of those tests.

Writes are atomic (temporary file, then rename), because a build interrupted half-way must not
leave a truncated engine that a later ``vap run`` would try to deserialize.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 16 << 20  # a metadata header is a few KiB; anything bigger is plan data


def split_header(blob: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """Split an engine file's bytes into (header metadata or None, plan bytes)."""
    if len(blob) < 6:
        return None, blob
    n = int.from_bytes(blob[:4], "little", signed=True)
    if n <= 1 or n > min(MAX_HEADER_BYTES, len(blob) - 4):
        return None, blob
    raw = blob[4:4 + n]
    if raw[:1] != b"{":
        return None, blob
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, blob
    if not isinstance(meta, dict):
        return None, blob
    return meta, blob[4 + n:]


def read_engine_file(path: str | Path) -> tuple[dict[str, Any] | None, bytes]:
    """(embedded header metadata or None, plan bytes) of an engine file."""
    return split_header(Path(path).read_bytes())


def with_header(plan: bytes, meta: dict[str, Any]) -> bytes:
    """Plan bytes prefixed with the 4-byte length + JSON header (the Ultralytics layout)."""
    raw = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    return len(raw).to_bytes(4, "little", signed=True) + raw + plan


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (where sidecars are written)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def legacy_sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.json``: where engines built before the rename have their sidecar."""
    return Path(engine).with_suffix(".json")


def write_sidecar(engine: str | Path, meta: dict[str, Any]) -> Path:
    """Write the engine's JSON sidecar (values as JSON types, not strings, for people reading it)."""
    return atomic_write(sidecar_path(engine), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def _load_json_object(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p} does not hold a JSON object")
    return data


def find_sidecar(engine: str | Path) -> Path | None:
    """The sidecar file of `engine`: ``<name>.json``, else a legacy ``<stem>.json`` that is a vap
    TensorRT sidecar (has ``format``; an ONNX export's ``<stem>.json`` is not one), else None."""
    p = sidecar_path(engine)
    if p.is_file():
        return p
    old = legacy_sidecar_path(engine)
    if old != p and old.is_file():
        try:
            if "format" in _load_json_object(old):
                return old
        except (OSError, ValueError):
            return None  # not ours to judge: some other tool's file
    return None


def read_sidecar_raw(engine: str | Path) -> dict[str, Any] | None:
    """The sidecar as written, or None when there is none; a broken one is a ValueError."""
    p = find_sidecar(engine)
    return None if p is None else _load_json_object(p)
