"""Event records (`vap.event/1`): construction, ids and the JSON Schema they must satisfy.

Events are plain dicts so sinks can serialise them without a translation layer; `make_event` is
the one place that stamps the envelope (schema, id, type, stream, ts) so no producer can forget a
field. Ids are UUIDv7: time-ordered, so consumers can sort and deduplicate by id alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

SCHEMA_ID = "vap.event/1"

# Every type an event may carry; the JSON Schema enumerates the same set.
EVENT_TYPES = (
    "track.start",
    "track.update",
    "track.end",
    "zone.enter",
    "zone.exit",
    "zone.loiter",
    "line.cross",
    "object.stationary",
    "stream.up",
    "stream.down",
    "stream.stalled",
    "stream.gap",
)

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_event_id() -> str:
    """A UUIDv7 string, strictly increasing within this process.

    48 bits of Unix milliseconds, then a 12-bit sequence that breaks ties inside one millisecond
    (so ids sort in creation order even at thousands of events per ms), then 62 random bits.
    """
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # sequence exhausted: borrow the next millisecond
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = 0
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def iso_utc(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a `Z` suffix."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def make_event(event_type: str, stream: str, ts: float, **fields: Any) -> dict[str, Any]:
    """Build one event. `ts` is the capture time (Unix seconds) of the frame that caused it.

    Fields whose value is None are left out, so optional fields are absent rather than null.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    event: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "id": new_event_id(),
        "type": event_type,
        "stream": stream,
        "ts": iso_utc(ts),
    }
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


def load_schema() -> dict[str, Any]:
    """The JSON Schema of `vap.event/1`, shipped inside the package."""
    text = resources.files("vap_video.pipeline").joinpath("schemas/event.schema.json").read_text("utf-8")
    return json.loads(text)
