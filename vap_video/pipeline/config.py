"""The deployment YAML: one pydantic v2 model tree, `extra="forbid"` everywhere.

Each stage that has settings owns its model (tracker, analytics); this module composes them and
adds what only the runtime needs. Loading goes YAML -> `${ENV}` interpolation -> validation, and
every error names the key path and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A stream name becomes a file name (snapshots/<stream>/...), a metric label, an MQTT topic segment
# and a track id prefix: a portable file-name alphabet, and no leading dot (".", ".." and hidden
# names would climb out of, or hide inside, the snapshot folder).
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
FILE_SUFFIXES = {".mp4", ".mkv", ".avi", ".ts", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".h264", ".h265"}


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Upper bound of every time setting, in seconds. Not a taste limit: waits far beyond it overflow the
# platform's timeout (threading.TIMEOUT_MAX, OverflowError at shutdown) or never end in practice,
# so a typo like 1e10 must be refused at load, not found when the run misbehaves.
MAX_TIMEOUT_S = 3600.0


class StreamConfig(Strict):
    """One camera or file.

    `url` forms: `rtsp://[user:pass@]host[:port]/path`, `http(s)://...` (incl. HLS `.m3u8`), a local
    file path (or `file://`), a V4L2 device (`/dev/videoN` or `v4l2:///dev/videoN`), or
    `synthetic://?seed=1&fps=25&width=1280&height=720&objects=6&frames=0` (generated scene; frames=0
    runs forever).
    """

    name: str = Field(description="Unique id, 1-64 of A-Z a-z 0-9 _ . - and no leading dot: folder name, "
                      "metric label, event `stream`, MQTT topic segment, track id prefix")
    url: str = Field(description="rtsp://, http(s):// (HLS too), a file path, /dev/videoN or synthetic://?...")
    live: bool | None = Field(
        None, description="Live semantics (drop oldest frames, bounded latency). Default: true for cameras "
        "and synthetic scenes, false for files (every frame, backpressure).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    max_fps: float | None = Field(None, gt=0, le=1000,
                                  description="Cap on frames taken per second (others dropped as 'stride')")
    keyframes_only: bool = Field(
        False, description="Decode only keyframes (I-frames) and skip the rest unread: low-rate analytics at the "
        "cost of one decode per GOP (e.g. one frame every 2 s from a camera with a 2 s GOP). Not for synthetic://")
    open_timeout_s: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S,
                                  description="Time allowed to open the stream (every time setting here: at most 3600)")
    read_timeout_s: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S,
                                  description="Time allowed for one read before the stream counts as lost")
    backoff_initial_s: float = Field(0.5, gt=0, le=MAX_TIMEOUT_S,
                                     description="First reconnect delay; doubles per failure, with jitter")
    backoff_max_s: float = Field(30.0, gt=0, le=MAX_TIMEOUT_S, description="Cap of the exponential reconnect backoff")
    probe_interval_s: float = Field(
        2.0, ge=0, le=MAX_TIMEOUT_S, description="Network cameras in backoff: check this often with a bare TCP "
        "connect whether the camera answers again, and open it at once when it does (the backoff still spaces "
        "full opens of a camera that answers but fails). 0 = off")
    stall_factor: float = Field(
        10.0, gt=1, le=1000, description="Stalled when no frame arrived for stall_factor x the observed frame interval")
    stall_min_s: float = Field(1.0, gt=0, le=MAX_TIMEOUT_S, description="Never call a stream stalled sooner than this")
    stall_recover_s: float = Field(
        1.0, ge=0, le=MAX_TIMEOUT_S, description="A stalled stream is streaming again only once frames have flowed "
        "this long without a stall-sized gap (hysteresis: a late frame or two under load does not flap the state)")
    loop: bool = Field(False, description="Files only: start again at the end instead of finishing")
    realtime: bool = Field(False, description="Files and synthetic only: pace frames at their own fps")
    queue_size: int | None = Field(
        None, ge=1, le=256, description="Frames buffered between decoder and batcher (default: 2 for live "
        "streams, keeping latency low; the per-stream batch cap for files, keeping batches full)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STREAM_NAME.match(v):
            raise ValueError("stream name must be 1-64 characters of letters, digits, '_', '.', '-', not "
                             "starting with '.' (it becomes a folder name, a metric label, an MQTT topic "
                             "segment and part of track ids); rename it, e.g. 'gate-1'")
        return v

    @model_validator(mode="after")
    def _keyframes_need_a_decoder(self) -> StreamConfig:
        if self.keyframes_only and self.url.lower().startswith("synthetic://"):
            raise ValueError("keyframes_only needs a video decoder; a synthetic:// scene has no keyframes "
                             "(use max_fps to lower its rate)")
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> StreamConfig:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"backoff_initial_s ({self.backoff_initial_s:g}) must not exceed backoff_max_s "
                             f"({self.backoff_max_s:g})")
        return self

    @property
    def kind(self) -> str:
        """'rtsp', 'http', 'file', 'v4l2' or 'synthetic', from the URL."""
        return source_kind(self.url)

    @property
    def is_live(self) -> bool:
        if self.live is not None:
            return self.live
        return self.kind not in ("file",)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def source_kind(url: str) -> str:
    """Classify a source URL; raises ValueError naming supported forms for anything else."""
    lower = url.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if lower.startswith("synthetic://"):
        return "synthetic"
    if lower.startswith("v4l2://") or lower.startswith("/dev/video"):
        return "v4l2"
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1).lower() != "file":
        # ftp://host/x.mp4 ends in .mp4 but is no local path: opening it as one fails for ever
        raise ValueError(
            f"unsupported source {redact_url(url)!r}: the URL scheme {scheme.group(1)!r} is not supported; "
            f"use rtsp://, rtsps://, "
            f"http(s):// (HLS too), file:// or a local path, v4l2:// or /dev/videoN, or synthetic://")
    if lower.startswith("file://") or Path(url).suffix.lower() in FILE_SUFFIXES or Path(url).exists():
        return "file"
    raise ValueError(
        f"unsupported source {redact_url(url)!r}: use rtsp://, http(s):// (HLS too), a video file "
        f"({', '.join(sorted(FILE_SUFFIXES))}), /dev/videoN or synthetic://")


SYNTHETIC_PARAMS: dict[str, type] = {"seed": int, "fps": float, "width": int, "height": int, "objects": int,
                                     "frames": int, "haze": float}
SYNTHETIC_DEFAULTS: dict[str, Any] = {"seed": 1, "fps": 25.0, "width": 1280, "height": 720, "objects": 6,
                                      "frames": 0, "haze": 0.0}


def parse_synthetic(url: str) -> dict[str, Any]:
    """The parameters of a `synthetic://?...` URL, defaults filled in.

    Checked at config load (not when the stream opens) so a typo'd key or an impossible value is
    an error naming it, instead of a stream that retries for ever. ValueError on any problem.
    """
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    params = dict(SYNTHETIC_DEFAULTS)
    for key, values in query.items():
        if key not in SYNTHETIC_PARAMS:
            raise ValueError(f"unknown synthetic parameter {key!r} (known: {', '.join(SYNTHETIC_PARAMS)})")
        try:
            params[key] = SYNTHETIC_PARAMS[key](values[-1])
        except ValueError:
            raise ValueError(f"{key}={values[-1]!r} is not a number") from None
    problems = []
    if not 0 < params["fps"] <= 1000:
        problems.append(f"fps > 0 and <= 1000 (got {params['fps']:g})")
    if not (32 <= params["width"] <= 7680 and 32 <= params["height"] <= 4320):
        problems.append(f"width 32..7680 and height 32..4320 (got {params['width']}x{params['height']})")
    if not 0 <= params["objects"] <= 250:
        problems.append(f"objects 0..250 (got {params['objects']})")
    if params["frames"] < 0:
        problems.append(f"frames >= 0 (0 = endless; got {params['frames']})")
    if not 0 <= params["haze"] < 1:
        problems.append(f"haze in [0, 1) (got {params['haze']:g})")
    if problems:
        raise ValueError(f"synthetic scene needs {'; '.join(problems)}")
    return params


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^\s]*@")
# Query parameter names that carry credentials (`?user=admin&password=...`, `?access_token=`, `?sig=`):
# matched anywhere in the name, case-insensitively, after percent-decoding.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|auth|api[-_.]?key|(^|[-_.])key($|[-_.])|cookie|credential|"
                         r"signature|(^|[-_.])sig($|[-_.])|session|jwt|private", re.I)
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#?]*)=([^&;]*)")


def redact_url(url: str) -> str:
    """Hide the credentials of a URL: the userinfo (`user:pass@`) and secret-looking query values.

    Everything between `scheme://` and the last `@` becomes `***`; so does the value of every query
    parameter whose name looks like a credential (password, pass, pwd, token, key, secret, auth,
    signature, ...). Never raises, and errs towards hiding too much: passwords may contain `/`, `?`,
    `#` or `:`, which defeat a URL parser, so both are cut textually (a secret value runs to the
    next `&` or `;`, fragment included).
    """
    url = _USERINFO.sub(r"\1***@", url)
    if "?" not in url:
        return url
    head, sep, query = url.partition("?")

    def mask(m: re.Match[str]) -> str:
        name = unquote_plus(m.group(2))
        return f"{m.group(1)}{m.group(2)}=***" if SECRET_NAME.search(name) else m.group(0)

    return head + _QUERY_PARAM.sub(mask, sep + query)


def check_url(url: str) -> None:
    """Reject URLs a decoder could not use (e.g. a port out of range), with a redacted message."""
    try:
        _ = urlsplit(url).port  # the property parses the port and raises ValueError when it is bad
    except ValueError as exc:
        raise ValueError(f"{redact_url(url)!r}: {exc}; check the host:port part") from None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(value: Any, path: str = "") -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a parsed YAML tree.

    A missing variable without a default is an error naming the variable and where it is used.
    """
    if isinstance(value, dict):
        return {k: interpolate_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable ${{{name}}} is not set "
                              f"(export it, or write ${{{name}:-default}})")
        return _ENV.sub(sub, value)
    return value


class ConfigError(Exception):
    """A config problem, already phrased for the operator (path, problem, what to do)."""
