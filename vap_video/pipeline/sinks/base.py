"""What every sink shares: the `Sink` interface, the event filter and the common config keys.

Each sink module (`vap_video.pipeline.sinks.<kind>`) builds on it; `vap_video.pipeline.sinks.registry` composes the
kinds into the one `sinks:` config union.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import Field

from vap_video.pipeline.config import SECRET_NAME, ConfigError, Strict, redact_url
from vap_video.pipeline.sinks.spool import SpoolConfig


class EventFilter(Strict):
    """Which events a sink receives; an empty list means all."""

    types: list[str] = Field(default_factory=list, description="Event types, e.g. ['track.start', 'line.cross']")
    streams: list[str] = Field(default_factory=list, description="Stream names")
    classes: list[str] = Field(default_factory=list, description="Only track events of these classes")

    def accepts(self, event: dict[str, Any]) -> bool:
        if self.types and event["type"] not in self.types:
            return False
        if self.streams and event["stream"] not in self.streams:
            return False
        if self.classes and "class" in event and event["class"] not in self.classes:
            return False
        return True


class SinkConfigBase(Strict):
    """Keys every sink has: a unique name, a filter and the disk spool used while it cannot deliver."""

    name: str = Field("", description="Sink name (metric label, default spool dir); unique. Default: the type")
    filter: EventFilter = Field(default_factory=EventFilter, description="Which events this sink receives")
    spool: SpoolConfig = Field(default_factory=SpoolConfig,
                               description="Disk spool for events the sink cannot deliver now (replayed in order)")

    def model_post_init(self, __context: Any) -> None:
        if not self.name:
            self.name = getattr(self, "type", "sink")


class PartialDelivery(ConnectionError):
    """A write that dealt with the first events of a batch (delivered or dead-lettered) but not the rest.

    The runner then spools only `remaining` (which must be a suffix of the batch, in order), so the
    events already dealt with are neither sent twice nor retried.
    """

    def __init__(self, message: str, remaining: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.remaining = remaining


class Sink(ABC):
    """Writes batches of events somewhere. Called from the sink's own thread only."""

    name: str
    spool_config: SpoolConfig | None = None  # set by build_sink; the runner opens the spool
    metrics: Any = None  # the pipeline's Metrics, set by the runner (for sink-specific counters)
    # Events a write dealt with without delivering them (dead-lettered, dropped as rejected); the
    # runner subtracts them from vap_sink_events_total and resets this after every write.
    not_delivered: int = 0
    # Set by the runner. A sink whose client knows when its connection comes and goes (MQTT) calls
    # it from any thread with True/False: the runner then retries at once instead of sleeping out
    # its backoff, and `vap_sink_up` follows the link instead of the last write's outcome.
    on_link: Callable[[bool], None] | None = None

    @abstractmethod
    def write(self, events: list[dict[str, Any]]) -> None:
        """Deliver events in order; raise to signal failure (the runner spools or retries them)."""

    def close(self) -> None:  # noqa: B027 (an optional hook: a sink with nothing to flush keeps it)
        """Flush and release resources."""


@dataclass(frozen=True)
class SinkKind:
    """What a sink module registers (its module-level `KIND`): the config model and the sink class.

    The `type` tag is read from the config's `type` field, so the YAML tag, the discriminated union
    and the factory cannot disagree.
    """

    config: type[SinkConfigBase]
    sink: type[Sink]

    @property
    def type(self) -> str:
        tag = self.config.model_fields["type"].default if "type" in self.config.model_fields else None
        if not isinstance(tag, str):
            raise TypeError(f"{self.config.__name__} needs a `type: Literal[...]` field with a default")
        return tag


def encode(event: dict[str, Any]) -> bytes:
    """The wire form of one event (compact UTF-8 JSON), the same for every sink."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def optional_client(module: str, sink_type: str) -> ModuleType:
    """Import a sink's client library lazily; a missing one is a config error saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"sinks: the {sink_type} sink needs the Python package {module.split('.')[0]!r}, "
                          "which is not installed; run pip install 'vap-video[sinks]'") from None


def env_secret(var: str | None) -> str | None:
    """A credential read from the environment (never from the YAML, so it cannot leak into `vap validate`)."""
    if not var:
        return None
    value = os.environ.get(var)
    return value if value else None


_SECRET_KEY = SECRET_NAME  # one list of credential-looking names for headers, options and URL queries


def looks_secret(key: str) -> bool:
    """Whether a header or option name suggests a credential (`*_env` names hold variable names, not secrets)."""
    return bool(_SECRET_KEY.search(key)) and not key.endswith("_env")


def redact_endpoint(url: str) -> str:
    """An endpoint URL fit for printing: no userinfo, query values and token-like path segments masked.

    Why so much: webhook URLs often carry their credential in the path (`/services/T0../B0../<token>`)
    or the query (`?token=`), not in `user:pass@`. Errs towards hiding too much.
    """
    url = redact_url(url)
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$", url)
    if m is None:
        return url
    base, path, query, frag = m.group(1), m.group(2), m.group(3) or "", m.group(4) or ""
    path = "/".join("***" if len(seg) >= 20 or (len(seg) >= 8 and re.search(r"\d", seg)) else seg
                    for seg in path.split("/"))
    if query:
        query = "?" + "&".join(part.split("=", 1)[0] + "=***" for part in query[1:].split("&") if part)
    return base + path + query + ("#***" if frag else "")


def redact_sink(cfg: dict[str, Any]) -> dict[str, Any]:
    """A dumped sink config with credentials masked (for `vap validate`): the URL, secret-looking
    header values (Authorization, X-Api-Key, ...) and librdkafka options (sasl.password, ...)."""
    out = dict(cfg)
    if isinstance(out.get("url"), str):
        out["url"] = redact_endpoint(out["url"])
    for field in ("headers", "options"):
        if isinstance(out.get(field), dict):
            out[field] = {k: ("***" if looks_secret(str(k)) else v) for k, v in out[field].items()}
    return out
