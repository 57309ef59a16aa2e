"""Model metadata: write it into ONNX ``metadata_props`` + a JSON sidecar, and read it back.

Keys (the runtime reads the same ones through ONNX Runtime's ``custom_metadata_map``):
``vap_format`` "1", ``task`` "detect", ``names`` JSON {"0": "person", ...}, ``imgsz`` JSON [h, w],
``stride`` "32", ``end2end`` "true", ``max_det`` K, ``precision`` "fp32", ``preprocessing`` JSON,
``dynamic_hw`` "true"/"false", ``source_sha256``, ``model`` JSON {scale, params}.

All values are stored as strings (ONNX metadata is string -> string); dicts and lists as JSON.
Reading also accepts Ultralytics-style values (Python literals such as ``{0: 'person'}``,
``[640, 640]``, ``True``) so their end-to-end exports load unchanged.

Needs only the ``onnx`` package for writing / reading ONNX files (no torch).
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("vap_format", "task", "names", "imgsz", "stride", "end2end", "max_det", "precision",
                 "preprocessing", "dynamic_hw", "source_sha256", "model")
PREPROCESSING = {"color": "RGB", "scale": "0..1", "letterbox_pad": 114, "layout": "NCHW"}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """Python values -> the string form stored in ONNX / the sidecar."""
    return {str(k): _to_str(v) for k, v in meta.items()}


def write_metadata(onnx_path: str | Path, meta: dict[str, Any], sidecar: bool = True) -> dict[str, str]:
    """Set ``meta`` as the ONNX file's metadata_props (replacing same-named keys) and write
    ``<model>.json`` next to it. Returns the string-encoded metadata."""
    import onnx

    p = Path(onnx_path)
    enc = encode_metadata(meta)
    model = onnx.load(str(p))
    keep = [prop for prop in model.metadata_props if prop.key not in enc]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in enc.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(p))
    if sidecar:
        p.with_suffix(".json").write_text(json.dumps(enc, indent=2) + "\n")
    return enc


def parse_value(raw: Any) -> Any:
    """A stored string -> Python value: JSON first, then a Python literal, else the string."""
    if not isinstance(raw, str):
        return raw
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return raw


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """Parse stored strings into values; normalise ``names`` to {"0": name} keyed by str, ``imgsz``
    to [h, w], booleans (``end2end``, ``dynamic_hw``) to bool and ints (``stride``, ``max_det``)."""
    out: dict[str, Any] = {k: parse_value(v) for k, v in raw.items()}
    if "names" in out:
        names = out["names"]
        if isinstance(names, (list, tuple)):
            names = {i: n for i, n in enumerate(names)}
        if isinstance(names, dict):
            out["names"] = {str(int(k)): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
    if "imgsz" in out:
        v = out["imgsz"]
        out["imgsz"] = [int(v), int(v)] if isinstance(v, (int, float)) else [int(x) for x in v]
    for key in ("end2end", "dynamic_hw"):
        if key in out:
            out[key] = str(out[key]).strip().lower() in ("1", "true", "yes")
    for key in ("stride", "max_det"):
        if key in out:
            v = out[key]
            out[key] = int(max(v) if isinstance(v, (list, tuple)) else v)
    if "vap_format" in out:
        out["vap_format"] = str(out["vap_format"])
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of an ONNX file (ours or Ultralytics'), parsed (see :func:`decode_metadata`)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    model = onnx.load(str(p), load_external_data=False)
    return decode_metadata({prop.key: prop.value for prop in model.metadata_props})


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Metadata from a ``<model>.json`` sidecar (pass the model path or the JSON path)."""
    p = Path(path)
    if p.suffix != ".json":
        p = p.with_suffix(".json")
    return decode_metadata(json.loads(p.read_text()))
