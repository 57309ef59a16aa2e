"""The whole deployment YAML, composed from the stage configs, and its loader.

Separate from `vap_video.pipeline.config` (which holds the base model and stream settings) so stage modules
can import `Strict` without import cycles. `load_settings` turns every YAML or validation problem
into a `ConfigError` naming the key path and what is allowed.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, Tag, ValidationError, field_validator, model_validator

from vap_video.pipeline.analytics import AnalyticsConfig
from vap_video.pipeline.batcher import BatchConfig
from vap_video.pipeline.config import (MAX_TIMEOUT_S, ConfigError, StreamConfig, Strict, check_url, interpolate_env,
                             parse_synthetic, redact_url, source_kind)
from vap_video.pipeline.dehaze import DehazeConfig
from vap_video.pipeline.model_config import ModelConfig
from vap_video.pipeline.snapshots import SnapshotConfig
from vap_video.pipeline.sinks.base import redact_sink
from vap_video.pipeline.sinks import JsonlSinkConfig, SinkConfig
from vap_video.pipeline.tracking import TrackerConfig



class StreamSettings(StreamConfig):
    """A stream plus its optional per-stream overrides of the global tracker/analytics settings."""

    tracker: TrackerConfig | None = Field(None, description="Overrides the global tracker settings")
    analytics: AnalyticsConfig | None = Field(None, description="Zones, lines and timing for this stream")
    dehaze: DehazeConfig | None = Field(None, description="Overrides the global dehazing settings")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if source_kind(v) == "synthetic":  # raises with the list of supported forms
            parse_synthetic(v)              # a typo'd key or fps=0 is an error now, not a retry loop
        check_url(v)
        return v


class AnnotateConfig(Strict):
    """Annotated video per stream (tracks, ids, classes, zones and lines drawn), for `vap run`."""

    enabled: bool = Field(False, description="Write DIR/<stream>.mp4 with the tracks drawn on every processed frame")
    dir: Path = Field(Path("annotated"), description="Folder of the annotated videos")
    streams: list[str] | None = Field(None, description="Only these streams (None: every stream, also those "
                                      "added at runtime)")


SourceScheme = Literal["rtsp", "rtsps", "http", "https", "synthetic", "v4l2"]
NETWORK_SCHEMES: tuple[SourceScheme, ...] = ("rtsp", "rtsps", "http", "https")


def _default_sinks() -> list[SinkConfig]:
    return [JsonlSinkConfig()]


class ServerConfig(Strict):
    """The HTTP surface: metrics, health, the control API and the console.

    Why these limits: the server may be reachable by anything on the network (or, through a
    browser, by any web page), so every resource a client can hold (threads, memory, streams) is
    bounded and every mutation needs the token once the server is exposed.
    """

    enabled: bool = Field(True, description="Serve the HTTP endpoints")
    host: str = Field("127.0.0.1", description="Bind address of /metrics, /healthz, /readyz, /streams and the "
                      "console; anything but a loopback address needs the API token")
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")
    token_env: str = Field("VAP_API_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="Environment variable holding the API token (never the token itself: the "
                           "YAML is printed by `vap validate`). When set, the console, /streams and the frame "
                           "endpoints need it (Authorization: Bearer, or the console's login cookie)")
    public_metrics: bool = Field(True, description="Serve /metrics, /healthz and /readyz without the token "
                                 "(for Prometheus and probes)")
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra names clients may use in the Host "
                                     "header (DNS names of this machine); the bound address and, on loopback, "
                                     "localhost are always allowed. Guards against DNS rebinding")
    allowed_schemes: list[SourceScheme] = Field(
        default_factory=lambda: list(NETWORK_SCHEMES),
        description="Source kinds POST /streams accepts; files also need media_roots")
    media_roots: list[Path] = Field(default_factory=list, description="Folders whose video files POST /streams may "
                                    "open (none by default: no local file can be named over the API)")
    max_streams: int = Field(200, ge=1, description="POST /streams refuses a stream beyond this many")
    max_connections: int = Field(64, ge=2, le=4096, description="Concurrent HTTP connections; more get 503 at once")
    max_viewers: int = Field(8, ge=1, description="Concurrent live views and event feeds (MJPEG, SSE)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest request body")
    read_timeout_s: float = Field(10.0, gt=0, le=300, description="A client that sends nothing for this long "
                                  "is disconnected (slow or stuck clients cannot hold threads)")
    request_timeout_s: float = Field(30.0, gt=0, le=600, description="A request's line, headers and body must "
                                     "all arrive within this (a client trickling bytes cannot hold a connection)")
    live_fps: float = Field(10.0, gt=0, le=60, description="Frame rate cap of the console's live view")
    grafana_url: str | None = Field(None, description="Link shown in the console (e.g. http://127.0.0.1:3000)")


class Settings(Strict):
    """One deployment: streams, model, batching, tracking, analytics, sinks, server."""

    streams: list[StreamSettings] = Field(default_factory=list, description="Cameras and files (more can be "
                                          "added at runtime through POST /streams)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The engine and its thresholds")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Deadline batching across streams")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracker defaults for every stream")
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig,
                                       description="Zones/lines/timing defaults for streams without their own")
    dehaze: DehazeConfig = Field(default_factory=DehazeConfig,
                                 description="Dehazing defaults for every stream (off unless enabled)")
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks, description="Where events go")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig,
                                      description="JPEG of frame and crop for chosen events; paths go in the event")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig,
                                     description="Annotated video per stream (H.264 MP4, the stream's own timing)")
    server: ServerConfig = Field(default_factory=ServerConfig, description="/metrics, /healthz, /readyz, /streams")
    shutdown_timeout_s: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S,
                                      description="Drain in-flight frames and flush sinks within this (at most 3600)")

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for s in self.streams:
            if s.name in seen:
                raise ValueError(f"stream name {s.name!r} is used twice; names must be unique")
            seen.add(s.name)
        unknown = sorted(set(self.annotate.streams or []) - seen)
        if unknown:
            raise ValueError(f"annotate.streams names streams that are not configured: {unknown}")
        sinks = [s.name for s in self.sinks]
        if len(set(sinks)) != len(sinks):
            raise ValueError(f"sink names must be unique, got {sinks}")
        return self

    def queue_size_for(self, stream: StreamConfig) -> int:
        if stream.queue_size is not None:
            return stream.queue_size
        return 2 if stream.is_live else max(2, self.batch.per_stream_cap or self.batch.max_batch)

    def stream_tracker(self, stream: StreamSettings) -> TrackerConfig:
        return stream.tracker or self.tracker

    def stream_analytics(self, stream: StreamSettings) -> AnalyticsConfig:
        return stream.analytics or self.analytics

    def stream_dehaze(self, stream: StreamSettings) -> DehazeConfig:
        return stream.dehaze or self.dehaze


def _tagged_members(ann: Any) -> dict[str, type[BaseModel]]:
    """Members of a discriminated union (`Annotated[Model, Tag("x")]`) by tag, found anywhere in `ann`."""
    out: dict[str, type[BaseModel]] = {}
    if typing.get_origin(ann) is typing.Annotated:
        model, *extras = typing.get_args(ann)
        for extra in extras:
            if isinstance(extra, Tag) and isinstance(model, type) and issubclass(model, BaseModel):
                out[extra.tag] = model
    for arg in typing.get_args(ann) or ():
        out.update(_tagged_members(arg))
    return out


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """The readable path of `loc` (list indices as [i], union tags dropped) and the model it ends in."""
    out = ""
    current: type[BaseModel] | None = model
    tags: dict[str, type[BaseModel]] = {}
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if str(part).startswith(("function-", "function_")):
            continue
        if part in tags:                       # pydantic puts the union member's tag in the path
            current, tags = tags[part], {}
            continue
        out += f".{part}" if out else str(part)
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            current = None
            continue
        ann = fields[part].annotation
        tags = _tagged_members(ann)
        current = _model_in(ann)
    return out or "(top level)", current


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model that sits at `loc` (for 'unknown key' messages)."""
    current = _walk(model, loc)[1]
    return sorted(current.model_fields) if current is not None else None


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """One readable line per problem. `root` is the model that was validated (default: the whole
    Settings), so unknown-key hints list the keys allowed there, e.g. a stream's for POST /streams."""
    root = root or Settings
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
            lines.append(f"  - {_walk(root, loc)[0]}: unknown key {loc[-1]!r}{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {redact_url(str(value))!r})"
            lines.append(f"  - {_walk(root, loc)[0]}: {msg}{shown}")
    return "\n".join(lines)


def parse_settings(data: Any, source: str = "config") -> Settings:
    """Validate an already-parsed YAML tree (after `${ENV}` interpolation)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (streams, model, ...), "
                          f"got {type(data).__name__}")
    data = interpolate_env(data)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_settings(path: str | Path) -> Settings:
    """Read, interpolate and validate a deployment YAML; every problem is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file, so not a deployment YAML; to run a video directly: "
                          f"vap run {path} --save out/") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; pass a deployment YAML, or run the videos in it: "
                          f"vap run {path} --save out/") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the path of a deployment YAML (see configs/)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None or data == {}:
        raise ConfigError(f"{path}: the file is empty; a deployment needs at least a `streams:` list (see "
                          f"configs/demo.yaml), or run sources directly: vap run clip.mp4 --save out/")
    return parse_settings(data, str(path))


def resolved_yaml(settings: Settings) -> str:
    """The config with every default filled in and credentials redacted (for `vap validate`)."""
    data = settings.model_dump(mode="json")
    for s in data.get("streams", []):
        s["url"] = redact_url(s["url"])
    data["sinks"] = [redact_sink(s) for s in data.get("sinks", [])]
    for s, model in zip(data.get("streams", []), settings.streams):
        s["live"] = model.is_live
        s["kind"] = model.kind
        s["queue_size"] = settings.queue_size_for(model)
    data["batch"]["per_stream_cap"] = settings.batch.per_stream_cap or settings.batch.max_batch
    return yaml.safe_dump(data, sort_keys=False)
