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
from urllib.parse import unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

STREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FILE_SUFFIXES = {".mp4", ".mkv", ".avi", ".ts", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".h264", ".h265"}


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StreamConfig(Strict):
    """One camera or file.

    `url` forms: `rtsp://[user:pass@]host[:port]/path`, `http(s)://...` (incl. HLS `.m3u8`), a local
    file path (or `file://`), a V4L2 device (`/dev/videoN` or `v4l2:///dev/videoN`), or
    `synthetic://?seed=1&fps=25&width=1280&height=720&objects=6&frames=0` (generated scene; frames=0
    runs forever).
    """

    name: str = Field(description="Unique id: metric label, event `stream`, track id prefix")
    url: str = Field(description="rtsp://, http(s):// (HLS too), a file path, /dev/videoN or synthetic://?...")
    live: bool | None = Field(
        None, description="Live semantics (drop oldest frames, bounded latency). Default: true for cameras "
        "and synthetic scenes, false for files (every frame, backpressure).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    max_fps: float | None = Field(None, gt=0, description="Cap on frames taken per second (others dropped as 'stride')")
    open_timeout_s: float = Field(10.0, gt=0, description="Time allowed to open the stream")
    read_timeout_s: float = Field(5.0, gt=0, description="Time allowed for one read before the stream counts as lost")
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles per failure, with jitter")
    backoff_max_s: float = Field(30.0, gt=0, description="Cap of the exponential reconnect backoff")
    stall_factor: float = Field(
        10.0, gt=1, description="Stalled when no frame arrived for stall_factor x the observed frame interval")
    stall_min_s: float = Field(1.0, gt=0, description="Never call a stream stalled sooner than this")
    loop: bool = Field(False, description="Files only: start again at the end instead of finishing")
    realtime: bool = Field(False, description="Files and synthetic only: pace frames at their own fps")
    queue_size: int | None = Field(
        None, ge=1, le=256, description="Frames buffered between decoder and batcher (default: 2 for live "
        "streams, keeping latency low; the per-stream batch cap for files, keeping batches full)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STREAM_NAME.match(v):
            raise ValueError("stream name must be 1-64 characters of letters, digits, '_', '.', '-' "
                             "(it becomes a metric label and part of track ids)")
        return v

    @property
    def kind(self) -> str:
        """'rtsp', 'http', 'file', 'v4l2' or 'synthetic', from the URL."""
        return source_kind(self.url)

    @property
    def is_live(self) -> bool:
        if self.live is not None:
            return self.live
        return self.kind not in ("file",)


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
    if lower.startswith("file://") or Path(url).suffix.lower() in FILE_SUFFIXES or Path(url).exists():
        return "file"
    raise ValueError(
        f"unsupported source {redact_url(url)!r}: use rtsp://, http(s):// (HLS too), a video file "
        f"({', '.join(sorted(FILE_SUFFIXES))}), /dev/videoN or synthetic://")


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
        urlsplit(url).port
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
