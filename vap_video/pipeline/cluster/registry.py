"""The camera registry: every camera of a site, with a version, as YAML in a file or at a URL.

The registry is the single input of the assignment: every replica loads the same registry and
computes the same owners. The `version` is what makes an update reach the replicas: Ray Serve calls
`reconfigure` only when the deployment's `user_config` changes, so an operator (or `vap cluster up`)
puts the registry's location *and* version in it. A replica that reads a different version than
the one asked for (a ConfigMap that has not propagated yet) waits for it instead of acting on a
stale list.

    version: "2026-11-22.1"       # any string or number; change it with every edit
    cameras:
      - name: gate-01             # every key of a stream in the deployment YAML is allowed
        url: rtsp://user:${CAM_PASS}@10.0.0.11/stream1
        width: 1920               # optional load hints, used when the deployment is weighted
        height: 1080
        fps: 25
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from vap_video.pipeline.cluster.placement import camera_weight
from vap_video.pipeline.config import ConfigError, Strict, interpolate_env, redact_url
from vap_video.pipeline.settings import StreamSettings

MAX_REGISTRY_BYTES = 32 * 1024 * 1024


class RegistryError(ConfigError):
    """The registry cannot be read or is invalid; the message names the location and the problem."""


class CameraEntry(StreamSettings):
    """One camera: a stream definition plus optional load hints for weighted assignment."""

    width: int | None = Field(None, ge=16, description="Frame width in pixels (load hint)")
    height: int | None = Field(None, ge=16, description="Frame height in pixels (load hint)")
    fps: float | None = Field(None, gt=0, description="Frames per second the camera sends (load hint)")

    def stream(self) -> StreamSettings:
        """The stream definition the single-node pipeline takes (load hints removed)."""
        return StreamSettings.model_validate(self.model_dump(exclude={"width", "height", "fps"}, exclude_unset=True))

    @property
    def weight(self) -> float:
        """Relative load: pixels per second over a 1080p25 camera's."""
        return camera_weight(self.width, self.height, self.fps)


class Registry(Strict):
    """A versioned list of cameras; names are unique."""

    version: str = Field(description="Changes with every edit; travels in the Serve user_config")
    cameras: list[CameraEntry] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str) and not v.strip():
            raise ValueError("version must not be empty")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"camera name {cam.name!r} is used twice; names must be unique")
            seen.add(cam.name)
        return self

    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def weights(self, weighted: bool) -> dict[str, float]:
        """Camera -> load weight (1.0 each unless `weighted`)."""
        return {c.name: (c.weight if weighted else 1.0) for c in self.cameras}

    def by_name(self) -> dict[str, CameraEntry]:
        return {c.name: c for c in self.cameras}


def parse_registry(data: Any, source: str = "registry") -> Registry:
    """Validate a parsed registry tree (after `${ENV}` interpolation); every problem is a RegistryError."""
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: the top level must be a mapping with 'version' and 'cameras', "
                            f"got {type(data).__name__}")
    try:
        data = interpolate_env(data)
    except ConfigError as exc:
        raise RegistryError(f"{source}: {exc}") from None
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(_format(exc, source)) from None


def _format(exc: ValidationError, source: str) -> str:
    """One line per problem: key path, what is wrong, and the keys allowed where an unknown key sits."""
    n = exc.error_count()
    lines = [f"{source}: invalid registry ({n} problem{'s' if n > 1 else ''}):"]
    for err in exc.errors():
        loc = err["loc"]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            model = CameraEntry if loc[:1] == ("cameras",) and len(loc) == 3 else Registry
            lines.append(f"  - {path}: unknown key {loc[-1]!r} (allowed here: {', '.join(sorted(model.model_fields))})")
            continue
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {redact_url(str(value))!r})"
        lines.append(f"  - {path}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def read_registry_text(location: str, timeout_s: float = 10.0) -> str:
    """The registry's text from a path, `file://` URL or `http(s)://` URL."""
    shown = redact_url(location)
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=timeout_s) as resp:
                raw = resp.read(MAX_REGISTRY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"{shown}: HTTP {exc.code} {exc.reason}; check the registry URL") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"{shown}: cannot fetch the registry ({reason}); check the URL and the network") \
                from None
        if len(raw) > MAX_REGISTRY_BYTES:
            raise RegistryError(f"{shown}: larger than {MAX_REGISTRY_BYTES // 2**20} MiB; is this a registry?")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RegistryError(f"{shown}: not UTF-8 text; serve the registry YAML itself") from None
    path = Path(location[len("file://"):] if location.startswith("file://") else location)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such registry file; pass a YAML path or an http(s):// URL") from None
    except IsADirectoryError:
        raise RegistryError(f"{path}: is a directory; pass the registry YAML file inside it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the registry ({exc})") from None


def load_registry(location: str, timeout_s: float = 10.0) -> Registry:
    """Read and validate the registry at a path or URL."""
    text = read_registry_text(location, timeout_s)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RegistryError(f"{redact_url(location)}: not valid YAML{where}: "
                            f"{getattr(exc, 'problem', None) or exc}") from None
    return parse_registry(data, redact_url(location))


__all__ = ["CameraEntry", "Registry", "RegistryError", "load_registry", "parse_registry", "read_registry_text"]
